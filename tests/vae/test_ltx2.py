"""The LTX-2 VAE adapter: latent normalisation, strides, exact causal stream decoding and strict loading.

Stream decode tolerance: the concatenated chunks equal diffusers' causal whole-clip decode within
float32 rounding (max abs difference < 1e-5 on outputs of magnitude ~1).
"""
from __future__ import annotations

import logging

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import CheckpointError
from model.vae.ltx2 import LTX2VideoVAE
from tests.pipeline.tiny_release import random_ltx2_vae

STREAM_ATOL = 1e-5


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def causal_vae():
    return LTX2VideoVAE(random_ltx2_vae(causal=True, seed=1))


def test_strides_and_channels_follow_the_layer_pattern(causal_vae):
    assert (causal_vae.temporal_stride, causal_vae.spatial_stride, causal_vae.latent_channels) == (8, 32, 8)
    video = torch.rand(1, 3, 17, 64, 96) * 2 - 1
    assert causal_vae.encode(video).shape == (1, 8, 3, 2, 3)
    assert causal_vae.decode(torch.randn(1, 8, 3, 2, 3)).shape == (1, 3, 17, 64, 96)


def test_encode_normalises_the_posterior_mode_per_channel(causal_vae):
    inner = causal_vae.vae
    video = torch.rand(1, 3, 9, 64, 64) * 2 - 1
    with torch.no_grad():
        mode = inner.encode(video).latent_dist.mode()
    mean = inner.latents_mean.view(1, -1, 1, 1, 1)
    std = inner.latents_std.view(1, -1, 1, 1, 1)
    expected = (mode - mean) * inner.config.scaling_factor / std
    torch.testing.assert_close(causal_vae.encode(video), expected)


def test_decode_undoes_the_normalisation(causal_vae):
    inner = causal_vae.vae
    z = torch.randn(1, 8, 2, 2, 2)
    mean = inner.latents_mean.view(1, -1, 1, 1, 1)
    std = inner.latents_std.view(1, -1, 1, 1, 1)
    with torch.no_grad():
        expected = inner.decode(z * std / inner.config.scaling_factor + mean).sample.clamp(-1, 1)
    torch.testing.assert_close(causal_vae.decode(z), expected)


@pytest.mark.parametrize("splits", [[1, 1, 1, 1, 1, 1], [3, 2, 1], [1, 5], [4, 2]], ids=lambda s: "-".join(map(str, s)))
def test_stream_decode_equals_whole_clip_decode(causal_vae, splits):
    z = torch.randn(1, 8, sum(splits), 2, 2)
    whole = causal_vae.decode(z)
    decoder = causal_vae.stream_decoder(1)
    parts, start = [], 0
    for n in splits:
        parts.append(decoder.decode_chunk(z[:, :, start:start + n]))
        expected_frames = 1 + 8 * (n - 1) if start == 0 else 8 * n
        assert parts[-1].shape[2] == expected_frames
        start += n
    streamed = torch.cat(parts, dim=2)
    assert streamed.shape == whole.shape
    assert (streamed - whole).abs().max().item() < STREAM_ATOL


def test_stream_decoder_clone_continues_independently(causal_vae):
    z = torch.randn(1, 8, 4, 2, 2)
    decoder = causal_vae.stream_decoder(1)
    decoder.decode_chunk(z[:, :, :2])
    snapshot = decoder.clone()
    first = decoder.decode_chunk(z[:, :, 2:])
    decoder.decode_chunk(torch.randn(1, 8, 2, 2, 2))
    again = snapshot.decode_chunk(z[:, :, 2:])
    torch.testing.assert_close(first, again)


def test_non_causal_decoder_warns_when_streamed(caplog):
    vae = LTX2VideoVAE(random_ltx2_vae(causal=False, seed=2))
    with caplog.at_level(logging.WARNING):
        vae.stream_decoder(1)
    assert "non-causal decoder" in caplog.text


def test_bad_inputs_raise(causal_vae):
    with pytest.raises(ValueError, match="8·k \\+ 1"):
        causal_vae.encode(torch.zeros(1, 3, 4, 64, 64))
    with pytest.raises(ValueError, match="spatial stride 32"):
        causal_vae.encode(torch.zeros(1, 3, 1, 48, 64))
    with pytest.raises(ValueError, match="latents must be"):
        causal_vae.decode(torch.zeros(1, 4, 1, 2, 2))
    decoder = causal_vae.stream_decoder(1)
    decoder.decode_chunk(torch.zeros(1, 8, 1, 2, 2))
    with pytest.raises(ValueError, match="grid"):
        decoder.decode_chunk(torch.zeros(1, 8, 1, 2, 3))


def test_folder_round_trip_and_strict_errors(tmp_path):
    inner = random_ltx2_vae(causal=True, seed=3)
    inner.save_pretrained(str(tmp_path / "vae"))
    loaded = LTX2VideoVAE.from_folder(tmp_path / "vae")
    z = torch.randn(1, 8, 2, 2, 2)
    torch.testing.assert_close(loaded.decode(z), LTX2VideoVAE(inner).decode(z))

    weights = tmp_path / "vae" / "diffusion_pytorch_model.safetensors"
    state = load_file(str(weights))
    state.pop("latents_std")
    save_file(state, str(weights))
    with pytest.raises(CheckpointError, match=r"diffusion_pytorch_model\.safetensors.*missing key\(s\): latents_std"):
        LTX2VideoVAE.from_folder(tmp_path / "vae")
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="cannot read weights file .*diffusion_pytorch_model.safetensors"):
        LTX2VideoVAE.from_folder(tmp_path / "vae")
    with pytest.raises(CheckpointError, match="no config.json"):
        LTX2VideoVAE.from_folder(tmp_path / "missing")


def test_normalisation_equals_the_diffusers_sana_wm_pipeline(causal_vae):
    from types import SimpleNamespace

    from diffusers.pipelines.sana_wm.pipeline_sana_wm import SanaWMPipeline

    pipe = SimpleNamespace(vae=causal_vae.vae, _execution_device=torch.device("cpu"))
    image = torch.rand(1, 3, 64, 96) * 2 - 1
    with torch.no_grad():
        reference = SanaWMPipeline._encode_first_frame(pipe, image, torch.device("cpu"), torch.float32)
        z = torch.randn(1, 8, 3, 2, 3)
        decoded = SanaWMPipeline._decode_latents(pipe, z)
    torch.testing.assert_close(causal_vae.encode(image[:, :, None]), reference)
    torch.testing.assert_close(causal_vae.decode(z), decoded.clamp(-1, 1))


@pytest.mark.parametrize("splits", [[4, 3, 3, 3], [1] * 13], ids=["release-chunks-4-3-3-3", "per-latent-frame"])
def test_chunked_causal_decode_agrees_with_the_whole_clip_decode_as_the_release_decodes(causal_vae, splits):
    """The decode check of the streaming release. Source: the official streaming code decodes with its
    `ltx2_causal_vae` through `decode_per_frame_with_cache` (one latent frame at a time, with a per-layer feature
    cache) and drops the first decoded frame (`drop_first_pixel=True`) (NVlabs/Sana @0d2318a; sana_wm.md,
    "Streaming as the official code runs it"). roam decodes with diffusers' causal LTX-2 decoder given a cache.

    On a tiny random causal LTX-2 VAE (the release's layer pattern), roam's chunked causal decode in the release's
    chunks (4, 3, 3, ...) and one latent frame at a time equals diffusers' whole-clip causal decode within
    STREAM_ATOL, with and without the first frame. The official class's own code is not run here (it is not a
    dependency); what is checked is that chunking, and per-frame decoding like the official one, changes nothing."""
    z = torch.randn(1, 8, sum(splits), 2, 2, generator=torch.Generator().manual_seed(7))
    whole = causal_vae.decode(z)  # [1, 3, 1 + 8·12, 64, 64]
    decoder = causal_vae.stream_decoder(1)
    parts, start = [], 0
    for n in splits:
        parts.append(decoder.decode_chunk(z[:, :, start:start + n]))
        start += n
    streamed = torch.cat(parts, dim=2)
    assert streamed.shape == whole.shape == (1, 3, 97, 64, 64)
    assert (streamed - whole).abs().max().item() < STREAM_ATOL
    shown = torch.cat([parts[0][:, :, 1:], *parts[1:]], dim=2)  # the first decoded frame dropped
    assert shown.shape[2] == 96 and (shown - whole[:, :, 1:]).abs().max().item() < STREAM_ATOL
