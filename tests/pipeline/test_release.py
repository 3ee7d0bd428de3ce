"""Tiny random releases in each official folder layout, loaded through `load_release` (the path
`run.py generate --model` takes) and generated from in every mode; broken folders fail naming file and keys."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch

from model.checkpoint import CheckpointError
from model.release import load_release
from model.vae.ltx2 import LTX2VideoVAE
from streaming.offline import generate_video

# release folder -> (kind, the VAE folder it uses)
LAYOUTS = {
    "SANA-WM_bidirectional": ("bidirectional", "vae"),
    "SANA-WM_chunk_causal": ("chunk_causal", "ltx2_causal_vae"),
    "SANA-WM_streaming": ("streaming", "ltx2_causal_vae"),
}


@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_each_layout_loads_as_its_kind(releases, name):
    kind, vae_name = LAYOUTS[name]
    release = load_release(releases / name)
    assert release.kind == kind
    assert isinstance(release.vae, LTX2VideoVAE) and release.sources["VAE"].endswith(vae_name)
    assert release.text_encoder is None
    assert (release.height, release.width, release.chunk_latents) == (64, 64, 1)
    assert release.default_mode == {"streaming": "distilled"}.get(kind, kind)
    # The chunk-causal teacher ships no VAE: the streaming release's causal one beside it is used.
    if kind == "chunk_causal":
        assert "SANA-WM_streaming" in release.sources["VAE"]


@pytest.mark.parametrize("mode", ["bidirectional", "chunk_causal", "distilled"])
@pytest.mark.parametrize("name", sorted(LAYOUTS))
def test_every_layout_generates_in_every_mode(releases, image, name, mode):
    release = load_release(releases / name)
    calls = []
    video = generate_video(release, image, "w-8,jl-8", mode=mode, steps=None if mode == "distilled" else 2, seed=3,
                           progress=lambda done, total: calls.append((done, total)))
    assert video.frames.shape == (17, 64, 64, 3) and video.frames.dtype == np.uint8
    assert video.world_T_cams.shape == (17, 4, 4)
    assert np.allclose(video.world_T_cams[0], np.eye(4)) and video.world_T_cams[8, 2, 3] > 0.3  # walked forward
    assert video.frames.std() > 1.0  # not a constant picture
    assert calls and calls[-1][0] == calls[-1][1]


def test_generation_is_reproducible_by_seed(releases, image):
    release = load_release(releases / "SANA-WM_bidirectional")
    a = generate_video(release, image, "w-16", mode="bidirectional", steps=2, seed=5).frames
    b = generate_video(release, image, "w-16", mode="bidirectional", steps=2, seed=5).frames
    c = generate_video(release, image, "w-16", mode="bidirectional", steps=2, seed=6).frames
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_chunk_causal_teacher_without_a_vae_anywhere_names_the_fix(tmp_path, releases):
    lonely = tmp_path / "alone" / "SANA-WM_chunk_causal"
    shutil.copytree(releases / "SANA-WM_chunk_causal", lonely)
    with pytest.raises(CheckpointError, match=r"no LTX-2 VAE for the chunk_causal release .*--vae"):
        load_release(lonely)
    release = load_release(lonely, vae_folder=releases / "SANA-WM_bidirectional" / "vae")
    assert release.kind == "chunk_causal" and release.sources["VAE"].endswith("SANA-WM_bidirectional/vae")


def test_truncated_dit_file_names_the_file(tmp_path, releases):
    broken = tmp_path / "SANA-WM_bidirectional"
    shutil.copytree(releases / "SANA-WM_bidirectional", broken)
    weights = broken / "dit" / "sana_wm_tiny.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match=r"cannot read weights file .*dit/sana_wm_tiny\.safetensors"):
        load_release(broken)


def test_streaming_checkpoint_missing_a_key_names_the_file_and_key(tmp_path, releases):
    broken = tmp_path / "SANA-WM_streaming"
    shutil.copytree(releases / "SANA-WM_streaming", broken)
    path = broken / "sana_dit" / "model.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["generator"]["model.blocks.1.attn.A_log"]
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match=r"sana_dit/model\.pt.*missing key\(s\): blocks\.1\.attn\.A_log"):
        load_release(broken)


def test_vae_with_wrong_latent_channels_is_refused(tmp_path, releases):
    from diffusers import AutoencoderKLLTX2Video

    from tests.pipeline.tiny_release import VAE_CONFIG

    broken = tmp_path / "SANA-WM_bidirectional"
    shutil.copytree(releases / "SANA-WM_bidirectional", broken)
    shutil.rmtree(broken / "vae")
    AutoencoderKLLTX2Video(**{**VAE_CONFIG, "latent_channels": 16}).save_pretrained(str(broken / "vae"))
    with pytest.raises(ValueError, match=r"takes 8 latent channels but the VAE has 16 .*vae"):
        load_release(broken)


def test_vae_with_another_temporal_stride_is_refused(tmp_path, releases):
    from diffusers import AutoencoderKLLTX2Video

    from tests.pipeline.tiny_release import VAE_CONFIG

    broken = tmp_path / "SANA-WM_streaming"
    shutil.copytree(releases / "SANA-WM_streaming", broken)
    shutil.rmtree(broken / "ltx2_causal_vae")
    config = {**VAE_CONFIG, "downsample_type": ("spatial", "spatial", "spatiotemporal", "spatiotemporal")}
    AutoencoderKLLTX2Video(**config).save_pretrained(str(broken / "ltx2_causal_vae"))
    with pytest.raises(ValueError, match=r"Plücker input has 48 channels, but the VAE's temporal stride 4 needs"):
        load_release(broken)


def test_unknown_roam_json_key_is_refused(tmp_path, releases):
    broken = tmp_path / "SANA-WM_streaming"
    shutil.copytree(releases / "SANA-WM_streaming", broken)
    (broken / "roam.json").write_text(json.dumps({"height": 64, "widht": 64}))
    with pytest.raises(CheckpointError, match=r"roam\.json.*unknown keys \['widht'\]"):
        load_release(broken)


def test_not_a_release_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(CheckpointError, match="no SANA-WM weights found"):
        load_release(tmp_path)


@pytest.mark.parametrize("mode", ["distilled", "bidirectional"])
def test_a_bf16_release_generates(releases, image, mode):
    release = load_release(releases / "SANA-WM_streaming", dtype=torch.bfloat16)
    assert release.dit.dtype == torch.bfloat16 and release.vae.dtype == torch.bfloat16
    video = generate_video(release, image, "w-16", mode=mode, steps=None if mode == "distilled" else 2)
    assert video.frames.shape == (17, 64, 64, 3) and video.frames.std() > 1.0
