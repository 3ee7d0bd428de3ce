"""The embedded default ships as a pair: the tiny world model and the TinyVAE whose latent space it was trained in."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import torch

from model.release import embedded_vae_path, latent_space_tag, load_embedded, vae_tag
from model.vae import load_tiny_vae

WEIGHTS = Path(__file__).resolve().parent.parent / "model" / "weights"


def test_the_shipped_model_names_a_shipped_vae_with_its_latent_space():
    info = json.loads((WEIGHTS / "roam_tiny.json").read_text())
    vae = embedded_vae_path(WEIGHTS / "roam_tiny.safetensors")
    assert vae.is_file()
    assert latent_space_tag(vae) == info["vae_tag"], f"{vae} does not decode the latent space the model was trained in"
    # the refined decoder shares the training VAE's encoder and latent statistics, so encoding a start image is unchanged
    trained = load_tiny_vae(WEIGHTS / "roam_tiny_vae.safetensors")
    assert vae_tag(WEIGHTS / "roam_tiny_vae.safetensors") == info["vae_tag"]
    shipped = load_tiny_vae(vae)
    for name, value in trained.state_dict().items():
        if not name.startswith("decoder."):
            torch.testing.assert_close(shipped.state_dict()[name], value, msg=name)
    assert shipped.cfg.deblock_step > 0  # the cell-seam filter is on for the shipped decoder


def test_the_shipped_narrow_decoder_paints_what_the_training_vaes_decoder_paints():
    """The shipped decoder is distilled narrower than the training VAE's (`train decoder --decoder-widths`, for
    real-time headroom): on a held-out scene, clean and with its latents perturbed as a drifted rollout's are, it
    gives the frames the wide decoder (with the same seam filter) gives, within 40 dB, at under 60 % of its weights."""
    from dataclasses import replace

    from tests.conftest import ci_size
    from train.vae import psnr, sim_clip, to_video

    shipped = load_tiny_vae(embedded_vae_path(WEIGHTS / "roam_tiny.safetensors"))
    wide = load_tiny_vae(WEIGHTS / "roam_tiny_vae.safetensors")
    wide.cfg = replace(wide.cfg, deblock_step=shipped.cfg.deblock_step, deblock_flat=shipped.cfg.deblock_flat)
    assert shipped.cfg.decoder_widths is not None and shipped.cfg.widths == wide.cfg.widths
    count = sum(p.numel() for p in shipped.decoder.parameters())
    assert count < 0.6 * sum(p.numel() for p in wide.decoder.parameters())
    frames = ci_size(17, 9)
    clip = to_video(sim_clip("eval", 5, frames, 128))[None]
    with torch.no_grad():
        z = wide.encode(clip)
        for noise in (0.0, 0.3):
            drifted = z + noise * torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
            score = psnr(shipped.decode(drifted), wide.decode(drifted))
            assert score > 40.0, (noise, score)


def test_training_tags_latents_with_the_function_loading_reads():
    import train.data

    assert train.data.vae_tag is vae_tag


def test_every_entry_point_gets_the_trained_pair():
    release = load_embedded(height=128, width=128, fps=16, hfov_deg=60.0)
    assert release.name == "roam-tiny"
    assert release.sources["DiT"].endswith("roam_tiny.safetensors")
    assert release.sources["VAE"] == str(embedded_vae_path())
    assert release.vae.latent_channels == release.dit.config.in_channels
    # the decoder runs in bf16 where this CPU has it natively (as `run.py eval` scores it), the encoder in float32
    from model.vae import cpu_decoder_dtype

    assert release.vae.decoder.inp.weight.dtype == cpu_decoder_dtype()
    assert release.vae.encoder.out.weight.dtype == torch.float32
    forced = load_embedded(height=128, width=128, fps=16, hfov_deg=60.0, decoder_dtype=torch.float32)
    assert forced.vae.decoder.inp.weight.dtype == torch.float32


def test_a_vae_of_another_latent_space_is_not_picked_when_the_right_one_exists(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"vae_tag": vae_tag(WEIGHTS / "roam_tiny_vae.safetensors")}))
    (tmp_path / "m.safetensors").write_bytes(b"")
    (tmp_path / "m_vae.safetensors").write_bytes((WEIGHTS / "roam_tiny_vae.safetensors").read_bytes())
    assert embedded_vae_path(tmp_path / "m.safetensors") == tmp_path / "m_vae.safetensors"
    (tmp_path / "m.json").write_text(json.dumps({"vae_tag": "000000000000"}))
    # no match anywhere: the sibling is still used (with a warning), so the app starts
    assert embedded_vae_path(tmp_path / "m.safetensors") == tmp_path / "m_vae.safetensors"
    # Weights with no VAE beside them, trained in the shipped model's latent space, find the shipped decoder.
    (tmp_path / "m_vae.safetensors").unlink()
    (tmp_path / "m.json").write_text((WEIGHTS / "roam_tiny.json").read_text())
    assert embedded_vae_path(tmp_path / "m.safetensors") == embedded_vae_path(WEIGHTS / "roam_tiny.safetensors")


def test_the_candidate_weights_load_in_the_shipped_latent_space():
    """The candidates (docs/training.md) are whole roam weights: they load, run warm-started, and decode through
    the shipped decoder."""
    for name in ("roam_tiny_warm05", "roam_tiny_warm05adv", "roam_tiny_step12more", "roam_tiny_anchorcopy", "roam_tiny_grow6"):
        weights = WEIGHTS / "candidates" / f"{name}.safetensors"
        release = load_embedded(height=128, width=128, fps=16, hfov_deg=60.0, weights=weights)
        assert release.profile.warm_start and release.sampler_sigmas == (0.5, 0.0)
        assert release.sources["VAE"] == str(embedded_vae_path())


def test_the_anchor_candidate_trained_its_input_and_gate():
    """Step 13 (docs/training.md), shipped and kept as a candidate: both zero-initialised additions moved in
    training, else they would be dead weight on every chunk."""
    from train.embedded import load_weights

    for weights in (WEIGHTS / "candidates" / "roam_tiny_anchorcopy.safetensors", WEIGHTS / "roam_tiny.safetensors"):
        model = load_weights(weights)
        assert model.config.anchor_input and model.config.anchor_copy, weights
        assert model.anchor_embedder.proj.weight.abs().mean() > 1e-3
        assert model.copy_gate.weight.abs().mean() > 1e-3


def test_the_shipped_still_term_copies_while_standing():
    """Step 14 (docs/training.md): the shipped gate copies the warped anchor outright where the camera has not
    moved across a ray (c = 1), and lets go within a few tenths of a metre of parallax."""
    from train.embedded import load_weights

    model = load_weights()
    assert model.config.anchor_copy_still
    assert float(model.copy_still.detach().clamp(0, 1)) > 0.9
    assert 0.01 < float(model.copy_still_log_metres.detach().exp()) < 1.0


def test_the_shipped_depth_head_predicts_the_ground():
    """Step 15 (docs/training.md): the depth copy is half open, and its head was fitted: on the first frame of an
    eval scene (never trained on) its inverse depth per latent pixel is within half the error of the best constant."""
    from sim.clips import sample_clip
    from train.data import encode_clip
    from train.embedded import load_weights
    from model.anchor_depth import inverse_depth_targets

    model = load_weights()
    assert model.config.anchor_depth_copy and abs(float(model.copy_depth.detach()) - 0.5) < 1e-6
    clip = sample_clip(1_000_003, 0, 1, 128, 128)
    item = encode_clip(load_tiny_vae(WEIGHTS / "roam_tiny_vae.safetensors"), clip.frames, clip.world_T_cams, clip.K)
    with torch.no_grad():
        inverse = model.anchor_depth(item["latents"][None, :, :1].float(), item["camera_conditions"][None, :1])[0, 0]
    truth = inverse_depth_targets(torch.from_numpy(clip.depth[0]), 8)
    error, constant = float((inverse - truth).abs().mean()), float((truth - truth.mean()).abs().mean())
    assert error < 0.5 * constant, (error, constant)


def test_the_shipped_start_copy_is_open_and_recorded():
    """Step 16 (docs/training.md): the start copy is fully open with a 10 m fade, and the json names the grow."""
    from train.embedded import load_weights

    model = load_weights()
    assert model.config.anchor_start_fade_m == 10.0 and float(model.copy_start.detach()) == 1.0
    grown = [v for k, v in json.loads((WEIGHTS / "roam_tiny.json").read_text()).items() if k.startswith("grown")]
    assert any(g.get("anchor_start_fade_m") == 10.0 and g.get("copy_start_c") == 1.0 for g in grown)


def test_the_shipped_sampler_is_the_one_the_json_records():
    info = json.loads((WEIGHTS / "roam_tiny.json").read_text())
    release = load_embedded(height=128, width=128, fps=16, hfov_deg=60.0)
    assert list(release.sampler_sigmas) == info["generator"]["sigmas"]
    # step 12 ships a warm-started sampler: every entry point must start chunks as the weights were trained to
    assert release.profile.warm_start is info["generator"].get("warm_start", False)


@pytest.mark.parametrize("sigmas", [[1.0, 0.5], [0.5, 1.0, 0.0], [1.0], "fast", [1.5, 0.0]])
def test_a_bad_sampler_in_the_json_is_refused_by_name(tmp_path, sigmas):
    info = json.loads((WEIGHTS / "roam_tiny.json").read_text())
    info["generator"]["sigmas"] = sigmas
    (tmp_path / "m.json").write_text(json.dumps(info))
    (tmp_path / "m.safetensors").write_bytes((WEIGHTS / "roam_tiny.safetensors").read_bytes())
    with pytest.raises(ValueError, match="generator.sigmas"):
        load_embedded(height=128, width=128, fps=16, hfov_deg=60.0, weights=tmp_path / "m.safetensors")


def test_the_shipped_plucker_branch_is_trained():
    """Both halves of the Plücker branch carry weights: at the official zero init neither gets a gradient
    (train.trainer.revive_plucker_branch), and the weights shipped before stop 14 had both exactly zero."""
    from train.embedded import load_weights

    model = load_weights()
    assert model.plucker_embedder.proj.weight.abs().mean() > 0.01
    assert all(block.plucker_proj.weight.abs().mean() > 1e-3 for block in model.blocks)


def test_the_grown_softmax_block_of_the_shipped_model_is_trained():
    """`train grow` appended block 4 with its writes into the residual stream zeroed (output unchanged); the
    shipped weights must have trained those writers, or the block would be dead weight on every chunk."""
    from train.embedded import load_weights
    from train.grow import RESIDUAL_WRITERS

    info = json.loads((WEIGHTS / "roam_tiny.json").read_text())
    model = load_weights()
    # the `grown` entry `train grow` writes: depth [before, after] and the kinds appended
    before, after = info["grown"]["depth"]
    assert model.config.depth == after and info["grown"]["appended"] == ["softmax"]
    assert list(model.config.softmax_layers) == [3, 4]
    grown = model.blocks[before:]
    assert len(grown) == 1
    weights = {name: p for name, p in grown[0].named_parameters()
               if name in RESIDUAL_WRITERS and name.endswith("weight")}
    assert set(weights) == {"attn.proj.weight", "plucker_proj.weight", "cross_attn.proj.weight",
                            "mlp.point_conv.conv.weight"}
    for name, weight in weights.items():
        assert weight.detach().abs().mean() > 1e-3, f"grown block writer {name} is still (near) zero"
