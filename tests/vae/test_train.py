"""The training recipe runs end to end on synthetic clips, saves loadable weights and resumes."""
from __future__ import annotations

import pytest
import torch

from model.vae import TinyVAE, TinyVAEConfig, load_tiny_vae
from train.vae import VAETrainConfig, evaluate, init_linear_path, psnr, to_video, train_vae


pytestmark = pytest.mark.usefixtures("one_torch_thread")


TINY = TinyVAEConfig(latent_channels=4, spatial_stride=8, temporal_stride=4, widths=(4, 8, 8), temporal_blocks=1)


def _moving_stripes(split: str, index: int, n_frames: int, size: int, clips_per_scene: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(2 * index + (split == "eval"))
    freq, phase = torch.rand(3, generator=g) * 0.3 + 0.05, torch.rand(3, generator=g) * 6
    x = torch.arange(size).float()
    t = torch.arange(n_frames).float()[:, None, None, None]
    rgb = torch.sin(freq * (x[None, :, None, None] + x[None, None, :, None] * 0.5 + 2 * t) + phase)  # [F, H, W, 3]
    return ((rgb * 0.5 + 0.5) * 255).to(torch.uint8)


def _cfg(tmp_path, **kw) -> VAETrainConfig:
    base = dict(
        out=str(tmp_path / "w.safetensors"), run_dir=str(tmp_path / "run"), minutes=0.02, model=TINY, resolution=32,
        clip_frames=5, crop=16, batch_size=2, pool_size=8, eval_clips=1, eval_frames=5, stats_clips=2,
        checkpoint_every_s=1e9, eval_every_s=1e9, progress=False, warmup_steps=5,
    )
    base.update(kw)
    return VAETrainConfig(**base)


def test_train_saves_loadable_normalised_weights_and_resumes(tmp_path):
    cfg = _cfg(tmp_path)
    out = train_vae(cfg, _moving_stripes)
    vae = load_tiny_vae(out)
    assert vae.cfg == TINY
    assert not torch.allclose(vae.latents_std, torch.ones(4))
    clip = to_video(_moving_stripes("eval", 0, 5, 32))[None]
    with torch.no_grad():
        z = vae.encode(clip)
        assert z.shape == (1, 4, 2, 4, 4)
        assert psnr(vae.decode(z), clip) > 0
    first_steps = int(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"])
    train_vae(_cfg(tmp_path, minutes=0.04), _moving_stripes)
    assert int(torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["step"]) > first_steps


def test_resume_with_another_model_raises(tmp_path):
    train_vae(_cfg(tmp_path), _moving_stripes)
    other = TinyVAEConfig(latent_channels=6, spatial_stride=8, temporal_stride=4, widths=(4, 8, 8), temporal_blocks=1)
    with pytest.raises(ValueError, match="was made for model"):
        train_vae(_cfg(tmp_path, model=other), _moving_stripes)


@pytest.mark.parametrize(
    "kw, match",
    [({"clip_frames": 8}, "clip_frames=8"), ({"crop": 12}, "crop=12"), ({"minutes": 0}, "minutes"), ({"pool_size": 1}, "pool_size")],
)
def test_bad_train_config_raises(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        _cfg(tmp_path, **kw)


def test_pca_init_whitens_latents_and_beats_a_fresh_model():
    clips = [_moving_stripes("train", i, 5, 32) for i in range(6)]
    vae = TinyVAE(TINY)
    fresh_db = evaluate(vae, clips)
    init_linear_path(vae, clips)
    with torch.no_grad():
        z = torch.cat([vae.encode_raw(to_video(c)[None]).movedim(1, -1).reshape(-1, 4) for c in clips]).double()
    torch.testing.assert_close(z.mean(0), torch.zeros(4, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(0), torch.ones(4, dtype=torch.float64), atol=1e-3, rtol=0)
    assert evaluate(vae, clips) > fresh_db + 5
