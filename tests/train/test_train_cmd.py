"""`python run.py train` stages end to end on a tiny VAE and latent cache: teacher (warm-started with
--init), self-forcing, export."""
from __future__ import annotations

import argparse

import pytest
import torch

from tests.train.helpers import write_latent_clips, write_vae
from train import train_cmd
from train.data import vae_tag
from train.embedded import load_weights, read_info


def _args(tmp_path, vae, stage: str, **overrides) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    args = parser.parse_args([stage, "--vae", str(vae), "--data", str(tmp_path / "data"), "--run-dir",
                              str(tmp_path / "runs"), "--out", str(tmp_path / "out" / "m.safetensors"),
                              "--crops", "", "--selfforce-crops", "", "--train-latents", "5", "--batch-size", "2", "--no-progress"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.mark.timeout(240)
def test_teacher_init_selfforce_and_export(tmp_path):
    vae = write_vae(tmp_path / "vae.safetensors")
    write_latent_clips(tmp_path / "data" / "latents" / vae_tag(vae) / "train", 3, frames=5)

    assert train_cmd.main(_args(tmp_path, vae, "teacher", teacher_steps=2)) == 0
    teacher = tmp_path / "runs" / "teacher" / "checkpoint.pt"
    saved = torch.load(teacher, weights_only=False)
    assert saved["step"] == 2

    # --init warm-starts from that checkpoint's EMA (exactly), and a run with it trains on
    from model.vae import load_tiny_vae

    config = train_cmd._model_config(load_tiny_vae(vae))
    warm = train_cmd._initial_model(_args(tmp_path, vae, "teacher", init=str(teacher)), config)
    for key, value in warm.state_dict().items():
        assert torch.equal(value, saved["ema"][key]), key
    assert warm.training
    args = _args(tmp_path, vae, "teacher", teacher_steps=1, init=str(teacher), run_dir=str(tmp_path / "runs2"))
    assert train_cmd.main(args) == 0
    with pytest.raises(ValueError, match="config"):
        train_cmd._initial_model(_args(tmp_path, vae, "teacher", init=str(teacher)), config.replace(mlp_ratio=4.0))

    # self-forcing starts from the latest student (here the teacher) and export ships its EMA
    assert train_cmd.main(_args(tmp_path, vae, "selfforce", selfforce_steps=2)) == 0
    selfforce = torch.load(tmp_path / "runs" / "selfforce" / "checkpoint.pt", weights_only=False)
    assert selfforce["step"] == 2
    assert train_cmd.main(_args(tmp_path, vae, "export")) == 0
    out = tmp_path / "out" / "m.safetensors"
    model = load_weights(out)
    for key, value in model.state_dict().items():
        assert torch.equal(value, selfforce["ema"][key]), key
    info = read_info(out)
    assert info["vae_tag"] == vae_tag(vae) and info["selfforce_steps"] == 2 and info["teacher_steps"] == 2


@pytest.mark.timeout(240)
def test_model_size_picks_a_sweep_candidate_that_later_stages_keep(tmp_path):
    from model import ModelConfig
    from model.vae import load_tiny_vae

    vae = write_vae(tmp_path / "vae.safetensors")
    tiny_vae = load_tiny_vae(vae)
    # the default size is the `tiny` preset (the shipped weights' numbers) in the VAE's latent space
    assert train_cmd._model_config(tiny_vae) == ModelConfig.preset("tiny").replace(
        in_channels=tiny_vae.latent_channels, out_channels=tiny_vae.latent_channels,
        plucker_channels=6 * tiny_vae.temporal_stride)

    write_latent_clips(tmp_path / "data" / "latents" / vae_tag(vae) / "train", 2, frames=5)
    assert train_cmd.main(_args(tmp_path, vae, "teacher", teacher_steps=1, model_size="h96-d4")) == 0
    assert train_cmd.main(_args(tmp_path, vae, "selfforce", selfforce_steps=1)) == 0
    assert train_cmd.main(_args(tmp_path, vae, "export")) == 0
    model = load_weights(tmp_path / "out" / "m.safetensors")
    assert model.config.hidden_size == 96 and model.config.num_cross_heads == 3
    with pytest.raises(ValueError, match="unknown sweep candidate 'h7'"):
        train_cmd.main(_args(tmp_path, vae, "teacher", teacher_steps=1, model_size="h7", run_dir=str(tmp_path / "r2")))
