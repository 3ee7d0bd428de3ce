"""Small models, VAEs and latent caches for the train tests."""
from __future__ import annotations

from pathlib import Path

import torch

from model import ModelConfig, WorldModel
from model.vae import TinyVAE, TinyVAEConfig, save_tiny_vae

LATENT_CHANNELS = 8
STRIDE = 4


def tiny_config() -> ModelConfig:
    return ModelConfig.preset("tiny").replace(in_channels=LATENT_CHANNELS, out_channels=LATENT_CHANNELS,
                                              hidden_size=32, head_dim=16, num_cross_heads=2, depth=2,
                                              softmax_every_n=2, plucker_channels=6 * STRIDE)


def tiny_model(seed: int = 0) -> WorldModel:
    torch.manual_seed(seed)
    return WorldModel(tiny_config())


def write_vae(path: Path) -> Path:
    torch.manual_seed(0)
    vae = TinyVAE(TinyVAEConfig(latent_channels=LATENT_CHANNELS, widths=(4, 8, 8), temporal_stride=STRIDE))
    return save_tiny_vae(vae.eval(), path)


def write_latent_clips(directory: Path, n: int, frames: int = 5, hw: int = 4, seed: int = 0) -> Path:
    """Smooth, learnable latent clips: a per-clip pattern drifting along a per-clip direction."""
    directory.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    for i in range(n):
        base = torch.randn(LATENT_CHANNELS, 1, hw, hw, generator=gen)
        drift = torch.randn(LATENT_CHANNELS, 1, 1, 1, generator=gen) * 0.3
        t = torch.arange(frames).float()[None, :, None, None]
        latents = base + drift * t  # [C, T, h, w]
        camera = torch.zeros(frames, 20)
        camera[:, :16] = torch.eye(4).flatten()
        camera[:, 16:20] = torch.tensor([4.0, 4.0, 2.0, 2.0])
        camera[:, 11] = 0.1 * torch.arange(frames) * (i % 2 * 2 - 1)  # forward or backward walk
        plucker = torch.randn(6 * STRIDE, frames, hw, hw, generator=gen) * 0.1
        torch.save({"latents": latents.half(), "camera_conditions": camera, "chunk_plucker": plucker.half()},
                   directory / f"{i:04d}.pt")
    return directory
