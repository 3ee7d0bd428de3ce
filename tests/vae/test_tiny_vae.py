"""TinyVAE: the T = (F−1)/stride + 1 rule, bad input, causality, and streaming == whole decode."""
from __future__ import annotations

import pytest
import torch

from model.vae import TinyVAE, TinyVAEConfig


pytestmark = pytest.mark.usefixtures("one_torch_thread")


SMALL = TinyVAEConfig(latent_channels=8, spatial_stride=8, temporal_stride=4, widths=(4, 8, 16), temporal_blocks=2)
SMALL_S16_T8 = TinyVAEConfig(latent_channels=6, spatial_stride=16, temporal_stride=8, widths=(4, 4, 8, 8), temporal_blocks=1)
SMALL_REFINE = TinyVAEConfig(latent_channels=8, spatial_stride=8, temporal_stride=4, widths=(4, 8, 16), temporal_blocks=2, refine_width=6)
SMALL_NARROW = TinyVAEConfig(latent_channels=8, spatial_stride=8, temporal_stride=4, widths=(4, 8, 16), decoder_widths=[2, 4, 6],
                             temporal_blocks=2)


def _vae(cfg: TinyVAEConfig) -> TinyVAE:
    vae = TinyVAE(cfg).eval()
    # Zero-initialised output layers would hide paths from the tests; give every weight a value.
    with torch.no_grad():
        for p in vae.parameters():
            if not p.any():
                p.normal_(0, 0.05)
    # Non-trivial normalisation so the tests also cover the (de)normalisation path.
    vae.latents_mean.copy_(torch.randn(cfg.latent_channels) * 0.1)
    vae.latents_std.copy_(torch.rand(cfg.latent_channels) + 0.5)
    return vae


@pytest.mark.parametrize("cfg", [SMALL, SMALL_S16_T8], ids=["s8t4", "s16t8"])
@pytest.mark.parametrize("k", [0, 1, 3])
def test_shapes_follow_the_first_frame_alone_rule(cfg, k):
    vae = _vae(cfg)
    s, st = cfg.spatial_stride, cfg.temporal_stride
    video = torch.rand(2, 3, st * k + 1, 2 * s, 3 * s) * 2 - 1
    with torch.no_grad():
        z = vae.encode(video)
        assert z.shape == (2, cfg.latent_channels, k + 1, 2, 3)
        out = vae.decode(z)
    assert out.shape == video.shape
    assert out.min() >= -1 and out.max() <= 1
    assert (vae.latent_channels, vae.temporal_stride, vae.spatial_stride) == (cfg.latent_channels, st, s)


@pytest.mark.parametrize(
    "shape, match",
    [
        ((1, 3, 4, 16, 16), "F=4"),
        ((1, 3, 6, 16, 16), "F=6"),
        ((1, 3, 0, 16, 16), "F=0"),
        ((1, 4, 5, 16, 16), r"\[B, 3, F, H, W\]"),
        ((1, 3, 5, 12, 16), r"\(12, 16\)"),
        ((3, 5, 16, 16), r"\[B, 3, F, H, W\]"),
    ],
)
def test_bad_video_raises(shape, match):
    vae = _vae(SMALL)
    with pytest.raises(ValueError, match=match):
        vae.encode(torch.zeros(shape))


def test_bad_latents_and_stream_use_raise():
    vae = _vae(SMALL)
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 7, 2, 2, 2))
    with pytest.raises(ValueError, match="latents must be"):
        vae.decode(torch.zeros(1, 8, 0, 2, 2))
    dec = vae.stream_decoder(2)
    with pytest.raises(ValueError, match="batch 1"):
        dec.decode_chunk(torch.zeros(1, 8, 1, 2, 2))
    dec.decode_chunk(torch.zeros(2, 8, 1, 2, 2))
    with pytest.raises(ValueError, match="grid"):
        dec.decode_chunk(torch.zeros(2, 8, 1, 3, 2))
    with pytest.raises(ValueError, match="batch_size"):
        vae.stream_decoder(0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"spatial_stride": 12}, "power of two"),
        ({"spatial_stride": 16}, r"widths needs log2\(spatial_stride\)=4"),
        ({"temporal_stride": 0}, "temporal_stride"),
        ({"latent_channels": 0}, "latent_channels"),
        ({"widths": (4, 0, 8)}, "positive"),
        ({"refine_width": -1}, "refine_width"),
        ({"decoder_widths": (4, 8)}, r"decoder_widths needs log2\(spatial_stride\)=3"),
        ({"decoder_widths": (4, 8, -1)}, "decoder_widths must be positive"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TinyVAEConfig(**kwargs)


@pytest.mark.parametrize(
    "cfg, splits",
    [(SMALL, [1, 1, 1, 1, 1, 1]), (SMALL, [1, 5]), (SMALL, [2, 4]), (SMALL, [6]), (SMALL_REFINE, [3, 1, 2]), (SMALL_REFINE, [1, 5]),
     (SMALL_NARROW, [2, 1, 3])],
    ids=["plain-1x6", "plain-1+5", "plain-2+4", "plain-6", "refine-3+1+2", "refine-1+5", "narrow-decoder-2+1+3"],
)
def test_stream_decode_equals_whole_decode(cfg, splits):
    vae = _vae(cfg)
    z = torch.randn(2, 8, sum(splits), 3, 2)
    with torch.no_grad():
        whole = vae.decode(z)
        dec = vae.stream_decoder(2)
        chunks, start = [], 0
        for i, n in enumerate(splits):
            frames = dec.decode_chunk(z[:, :, start : start + n])
            expected = 1 + 4 * (n - 1) if i == 0 else 4 * n
            assert frames.shape[2] == expected
            chunks.append(frames)
            start += n
    torch.testing.assert_close(torch.cat(chunks, dim=2), whole, atol=1e-5, rtol=0)
    dec.reset()
    with torch.no_grad():
        torch.testing.assert_close(dec.decode_chunk(z[:, :, :2]), whole[:, :, :5], atol=1e-5, rtol=0)


@pytest.mark.parametrize("cfg", [SMALL, SMALL_REFINE], ids=["plain", "refine"])
def test_cpu_decoder_frames_in_passes_equal_one_pass(cfg, monkeypatch):
    """The CPU decoder runs its per-frame stages a few frames at a time (cache locality); the frames
    are those of one pass over all of them, for a stacked stream decode as for a whole one."""
    import model.vae.tiny_vae as tiny_vae

    vae = _vae(cfg)
    z = torch.randn(3, 8, 4, 3, 2)  # 3 rows of 13 frames: passes of 4 split rows and end ragged
    with torch.no_grad():
        monkeypatch.setattr(tiny_vae, "_CPU_FRAMES_PER_PASS", 10**9)
        one_pass = vae.decode(z), vae.stream_decoder(3).decode_chunk(z[:, :, :2])
        monkeypatch.setattr(tiny_vae, "_CPU_FRAMES_PER_PASS", 4)
        in_passes = vae.decode(z), vae.stream_decoder(3).decode_chunk(z[:, :, :2])
    for a, b in zip(in_passes, one_pass):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_a_narrow_decoder_has_its_own_widths_and_the_config_round_trips():
    """decoder_widths size the decoder only (the encoder keeps widths), and the config survives the JSON of a
    weights file (lists back to tuples); a config without it is the encoder's widths throughout."""
    import json

    vae = TinyVAE(SMALL_NARROW)
    assert SMALL_NARROW.decoder_widths == (2, 4, 6) and SMALL_NARROW.decoder_stage_widths == (2, 4, 6)
    assert vae.decoder.inp.out_channels == 6 and vae.encoder.out.in_channels == 16
    assert TinyVAEConfig(**json.loads(json.dumps(SMALL_NARROW.to_dict()))) == SMALL_NARROW
    assert SMALL.decoder_stage_widths == SMALL.widths and TinyVAE(SMALL).decoder.inp.out_channels == 16
    narrow_params = sum(p.numel() for p in vae.decoder.parameters())
    assert narrow_params < sum(p.numel() for p in TinyVAE(SMALL).decoder.parameters())


def test_a_decoder_in_bf16_paints_the_float32_frames_and_leaves_the_encoder():
    """`decode_in(bf16)` runs only the decoder in bf16: frames come back in the VAE's float32, close to the
    float32 decoder's, streamed equal to whole; encoding is bit for bit unchanged."""
    from model.vae import cpu_decoder_dtype
    from train.vae import psnr

    vae = _vae(SMALL_NARROW)
    video = torch.rand(1, 3, 9, 16, 24) * 2 - 1
    z = torch.randn(1, 8, 5, 2, 3)
    with torch.no_grad():
        wide_z, full = vae.encode(video), vae.decode(z)
        assert vae.decode_in(torch.bfloat16) is vae
        assert vae.decoder.inp.weight.dtype == torch.bfloat16 and vae.encoder.out.weight.dtype == torch.float32
        torch.testing.assert_close(vae.encode(video), wide_z, atol=0, rtol=0)
        half = vae.decode(z)
        assert half.dtype == torch.float32 and half.shape == full.shape
        assert psnr(half, full) > 35.0
        dec = vae.stream_decoder(1)
        streamed = torch.cat([dec.decode_chunk(z[:, :, :2]), dec.decode_chunk(z[:, :, 2:])], dim=2)
        torch.testing.assert_close(streamed, half, atol=1e-2, rtol=0)
    assert cpu_decoder_dtype() in (torch.bfloat16, torch.float32)


def test_stream_decode_equals_whole_decode_s16_t8():
    vae = _vae(SMALL_S16_T8)
    z = torch.randn(1, 6, 4, 2, 2)
    with torch.no_grad():
        whole = vae.decode(z)
        dec = vae.stream_decoder(1)
        parts = [dec.decode_chunk(z[:, :, :1]), dec.decode_chunk(z[:, :, 1:3]), dec.decode_chunk(z[:, :, 3:])]
    assert [p.shape[2] for p in parts] == [1, 16, 8]
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, atol=1e-5, rtol=0)


@pytest.mark.parametrize("changed_frame", [1, 4, 5, 8, 12])
def test_encoder_is_causal(changed_frame):
    vae = _vae(SMALL)
    video = torch.rand(1, 3, 13, 16, 16) * 2 - 1
    edited = video.clone()
    edited[:, :, changed_frame] = -edited[:, :, changed_frame]
    with torch.no_grad():
        z, z_edit = vae.encode(video), vae.encode(edited)
    latent = (changed_frame + 3) // 4  # frame f (>= 1) belongs to latent ceil(f / 4)
    torch.testing.assert_close(z_edit[:, :, :latent], z[:, :, :latent], atol=0, rtol=0)
    assert not torch.allclose(z_edit[:, :, latent], z[:, :, latent])


@pytest.mark.parametrize(
    "cfg, changed_latent", [(SMALL, 1), (SMALL, 2), (SMALL, 3), (SMALL_REFINE, 2)], ids=["plain-1", "plain-2", "plain-3", "refine-2"]
)
def test_decoder_is_causal(cfg, changed_latent):
    vae = _vae(cfg)
    z = torch.randn(1, 8, 4, 2, 2)
    edited = z.clone()
    edited[:, :, changed_latent] += 3.0
    with torch.no_grad():
        out, out_edit = vae.decode(z), vae.decode(edited)
    first_frame = 1 + 4 * (changed_latent - 1)
    torch.testing.assert_close(out_edit[:, :, :first_frame], out[:, :, :first_frame], atol=0, rtol=0)
    assert not torch.allclose(out_edit[:, :, first_frame:], out[:, :, first_frame:])


def test_latent_normalisation_round_trips_through_buffers():
    vae = _vae(SMALL)
    video = torch.rand(1, 3, 5, 16, 16) * 2 - 1
    with torch.no_grad():
        raw = vae.encode_raw(video)
        z = vae.encode(video)
        std = vae.latents_std.view(1, -1, 1, 1, 1)
        mean = vae.latents_mean.view(1, -1, 1, 1, 1)
        torch.testing.assert_close(z * std + mean, raw)
        torch.testing.assert_close(vae.decode(z), vae.decode_raw(raw).clamp(-1, 1))


def test_low_precision_latents_run_in_the_vae_dtype():
    vae = _vae(SMALL)
    z = torch.randn(1, 8, 2, 2, 2).to(torch.bfloat16)
    with torch.no_grad():
        out = vae.decode(z)
        streamed = vae.stream_decoder(1).decode_chunk(z)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, vae.decode(z.float()))
        torch.testing.assert_close(streamed, out)
        assert vae.encode(torch.zeros(1, 3, 5, 16, 16, dtype=torch.bfloat16)).dtype == torch.float32
