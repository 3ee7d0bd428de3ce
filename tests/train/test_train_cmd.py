"""`python run.py train` stages end to end on a tiny VAE and latent cache: teacher (warm-started with
--init), self-forcing, export."""
from __future__ import annotations

import argparse
import json

import numpy as np
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
    # --export-weights live ships what the optimiser last wrote instead (in warm-up the EMA equals it, so shift it)
    selfforce["model"] = {key: value + 1.0 if value.is_floating_point() else value for key, value in selfforce["model"].items()}
    torch.save(selfforce, tmp_path / "runs" / "selfforce" / "checkpoint.pt")
    assert train_cmd.main(_args(tmp_path, vae, "export", export_weights="live")) == 0
    for key, value in load_weights(out).state_dict().items():
        assert torch.equal(value, selfforce["model"][key]), key


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


@pytest.mark.timeout(240)
def test_a_one_step_sampler_trains_ships_and_is_what_every_entry_point_runs(tmp_path, monkeypatch):
    """--sigmas 1,0: self-forcing warm-started (--init) from roam weights trains its context with one step,
    export records the list, and the release, the app's generator and the offline distilled mode run it."""
    import numpy as np

    from app.config import AppConfig, StreamConfig
    from app.runtime import build_runtime
    from model.release import load_embedded
    from streaming import offline
    from streaming.generator import ChunkGenerator
    from train import recipes

    vae = write_vae(tmp_path / "vae.safetensors")
    write_latent_clips(tmp_path / "data" / "latents" / vae_tag(vae) / "train", 2, frames=5)
    assert train_cmd.main(_args(tmp_path, vae, "teacher", teacher_steps=1)) == 0
    assert train_cmd.main(_args(tmp_path, vae, "export", run_dir=str(tmp_path / "runs"),
                                out=str(tmp_path / "base" / "m.safetensors"))) == 0
    base = tmp_path / "base" / "m.safetensors"

    rollouts = []
    real_stream = recipes.self_forced_stream
    monkeypatch.setattr(recipes, "self_forced_stream", lambda *a, **k: rollouts.append(a[6]) or real_stream(*a, **k))
    args = _args(tmp_path, vae, "selfforce", selfforce_steps=6, init=str(base), sigmas="1,0",
                 run_dir=str(tmp_path / "sf"))
    assert train_cmd.main(args) == 0
    assert rollouts and all(list(s) == [1.0, 0.0] for s in rollouts)  # the context is made with the one-step sampler
    saved = torch.load(tmp_path / "sf" / "selfforce" / "checkpoint.pt", weights_only=False)
    assert saved["step"] == 6
    # warm start: the first step's weights came from `base`, not a fresh model
    start = load_weights(base).state_dict()
    moved = max(float((saved["model"][k] - start[k]).abs().max()) for k in start)
    assert 0 < moved < 0.1

    out = tmp_path / "out" / "m.safetensors"
    assert train_cmd.main(_args(tmp_path, vae, "export", run_dir=str(tmp_path / "sf"), sigmas="1,0")) == 0
    assert read_info(out)["generator"]["sigmas"] == [1.0, 0.0]
    (tmp_path / "out" / "m_vae.safetensors").write_bytes(vae.read_bytes())

    release = load_embedded(height=32, width=32, fps=16, hfov_deg=60.0, weights=out)
    assert release.sampler_sigmas == (1.0, 0.0)

    # the app: StreamConfig leaves the sampler to the model, an explicit list still wins
    monkeypatch.setattr("model.release.load_embedded", lambda **kw: load_embedded(**kw, weights=out))
    runtime = build_runtime(AppConfig(stream=StreamConfig(width=32, height=32)))
    assert runtime.make_generator().config.sigmas == (1.0, 0.0)
    runtime = build_runtime(AppConfig(stream=StreamConfig(width=32, height=32, sigmas=(1.0, 0.5, 0.0))))
    assert runtime.make_generator().config.sigmas == (1.0, 0.5, 0.0)

    # offline distilled mode: one model call per chunk, and --steps must match the model's list
    calls = []
    real_step = ChunkGenerator.step
    monkeypatch.setattr(ChunkGenerator, "step", lambda self, poses: calls.append(self.config.sigmas) or real_step(self, poses))
    image = np.full((32, 32, 3), 120, dtype=np.uint8)
    video = offline.generate_video(release, image, "w-16", mode="distilled", seconds=1.0)
    assert calls and all(s == (1.0, 0.0) for s in calls) and len(video.frames) == 17
    with pytest.raises(ValueError, match="1-step list"):
        offline.generate_video(release, image, "w-16", mode="distilled", seconds=1.0, steps=4)


def test_prepare_starts_at_first_clip(tmp_path):
    """`prepare --first-clip` renders and encodes clips first..first+clips−1 (scenes the default range skips)."""
    from sim.clips import ClipDataset
    from train.data import clip_name

    vae = write_vae(tmp_path / "vae.safetensors")
    args = _args(tmp_path, vae, "prepare", first_clip=3, clips=2, frames=9, size=32)
    train_cmd.main(args)
    latents = sorted(p.stem for p in (tmp_path / "data" / "latents" / vae_tag(vae) / "train").glob("*.pt"))
    expected = sorted(clip_name(ClipDataset.scene_seed("train", i // 2), i % 2) for i in (3, 4))
    assert latents == expected
    train_cmd.main(_args(tmp_path, vae, "prepare", first_clip=3, clips=1, frames=9, size=32, speed=0.0))
    standing = tmp_path / "data" / "clips" / "train" / f"{expected[0]}_v0.npz"
    with np.load(standing) as f:  # a standing walk beside the moving one, with its own name
        assert np.array_equal(f["world_T_cams"], np.repeat(f["world_T_cams"][:1], 9, axis=0))
    assert (tmp_path / "data" / "latents" / vae_tag(vae) / "train" / f"{expected[0]}_v0.pt").is_file()
    with pytest.raises(ValueError, match="--first-clip"):
        train_cmd.main(_args(tmp_path, vae, "prepare", first_clip=-1))


def test_lr_scale_flag():
    assert train_cmd._lr_scales("plucker=10, blocks.4.=3") == (("plucker", 10.0), ("blocks.4.", 3.0))
    assert train_cmd._lr_scales("") == ()
    for bad in ("plucker", "plucker=x", "=3"):
        with pytest.raises(ValueError, match="name=multiplier"):
            train_cmd._lr_scales(bad)


@pytest.mark.timeout(240)
def test_a_warm_start_sampler_trains_ships_and_is_what_every_entry_point_runs(tmp_path, monkeypatch):
    """--warm-start --sigmas 0.6,0: rolling self-forcing trains for it, export records it, and the release's
    profile, the app's generator and the offline distilled mode start chunks from the last latent."""
    from app.config import AppConfig, StreamConfig
    from app.runtime import build_runtime
    from model.release import load_embedded
    from streaming import offline
    from streaming.generator import ChunkGenerator

    vae = write_vae(tmp_path / "vae.safetensors")
    write_latent_clips(tmp_path / "data" / "latents" / vae_tag(vae) / "train", 2, frames=9)
    assert train_cmd.main(_args(tmp_path, vae, "teacher", teacher_steps=1, train_latents=9)) == 0
    with pytest.raises(ValueError, match="--warm-start needs --sigmas"):
        train_cmd.main(_args(tmp_path, vae, "selfforce", selfforce_steps=1, warm_start=True))
    with pytest.raises(ValueError, match="rolling"):
        train_cmd.main(_args(tmp_path, vae, "selfforce", selfforce_steps=1, warm_start=True, sigmas="0.6,0"))
    with pytest.raises(ValueError, match="rolling"):
        train_cmd.main(_args(tmp_path, vae, "selfforce", selfforce_steps=1, adversarial_weight=0.2))
    with pytest.raises(ValueError, match="rolling"):
        train_cmd.main(_args(tmp_path, vae, "selfforce", selfforce_steps=1, adversarial_conditional=True))
    with pytest.raises(ValueError, match="--adversarial-conditional needs --adversarial-weight"):
        train_cmd.main(_args(tmp_path, vae, "selfforce", selfforce_steps=1, warm_start=True, sigmas="0.6,0",
                             selfforce_rolling=2, adversarial_conditional=True))
    with pytest.raises(ValueError, match="--selfforce-loss-before-copy is a rolling self-forcing option"):
        train_cmd.main(_args(tmp_path, vae, "selfforce", selfforce_steps=1, selfforce_loss_before_copy=True))
    args = _args(tmp_path, vae, "selfforce", selfforce_steps=3, warm_start=True, sigmas="0.6,0", selfforce_rolling=2,
                 train_latents=9, adversarial_weight=0.2)
    assert train_cmd.main(args) == 0
    assert train_cmd.main(_args(tmp_path, vae, "export", warm_start=True, sigmas="0.6,0")) == 0
    out = tmp_path / "out" / "m.safetensors"
    assert read_info(out)["generator"]["warm_start"] is True
    (tmp_path / "out" / "m_vae.safetensors").write_bytes(vae.read_bytes())

    release = load_embedded(height=32, width=32, fps=16, hfov_deg=60.0, weights=out)
    assert release.profile.warm_start and release.sampler_sigmas == (0.6, 0.0)
    assert "warm start" in release.profile.describe()
    monkeypatch.setattr("model.release.load_embedded", lambda **kw: load_embedded(**kw, weights=out))
    runtime = build_runtime(AppConfig(stream=StreamConfig(width=32, height=32)))
    assert runtime.make_generator().config.warm_start

    configs = []
    real_step = ChunkGenerator.step
    monkeypatch.setattr(ChunkGenerator, "step", lambda self, poses: configs.append(self.config) or real_step(self, poses))
    video = offline.generate_video(release, np.full((32, 32, 3), 120, dtype=np.uint8), "w-16", mode="distilled",
                                   seconds=1.0)
    assert configs and all(c.warm_start and c.sigmas == (0.6, 0.0) for c in configs) and len(video.frames) == 17

    # A json whose warm_start is not a bool is refused by name.
    info = out.with_suffix(".json")
    data = json.loads(info.read_text())
    data["generator"]["warm_start"] = "yes"
    info.write_text(json.dumps(data))
    from model.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="generator.warm_start must be a bool"):
        load_embedded(height=32, width=32, fps=16, hfov_deg=60.0, weights=out)
