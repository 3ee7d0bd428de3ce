"""Flow-matching pieces shared by every recipe: σ sampling, chunk layouts, noising, Euler rollouts.

Convention (the model's): x_σ = (1 − σ)·x₀ + σ·ε, the model predicts v = ε − x₀ and sees timestep σ·1000
per latent frame; an Euler step is x ← x + (σ_next − σ)·v. Latent frame 0 is the clean start image
(σ = 0 always, never in the loss).

Streaming layout: chunk 0 = the image latent + `chunk_latents` latents, every later chunk
`chunk_latents` latents, so a clip of T latents splits as [1 + c, c, c, ...] (`chunk_layout`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch


def shift_sigmas(sigma: torch.Tensor, shift: float) -> torch.Tensor:
    """σ' = sσ / (1 + (s − 1)σ): s > 1 moves mass towards pure noise (needed as resolution grows)."""
    if not shift > 0:
        raise ValueError(f"shift must be > 0, got {shift!r}")
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def sample_sigmas(shape: Sequence[int], shift: float, generator: torch.Generator | None = None,
                  mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
    """Shifted logit-normal σ of `shape`: σ = shift(sigmoid(u)), u ~ N(mean, std)."""
    u = torch.randn(tuple(shape), generator=generator) * std + mean
    return shift_sigmas(torch.sigmoid(u), shift)


def chunk_layout(n_latents: int, chunk_latents: int) -> list[int]:
    """[1 + c, c, c, ...] summing to `n_latents`; ValueError unless n_latents = 1 + c·k, k ≥ 1."""
    if chunk_latents < 1 or n_latents < 1 + chunk_latents or (n_latents - 1) % chunk_latents:
        raise ValueError(f"{n_latents} latents do not split into [1 + {chunk_latents}, {chunk_latents}, ...]")
    return [1 + chunk_latents] + [chunk_latents] * ((n_latents - 1) // chunk_latents - 1)


def chunk_index_of_frames(chunk_sizes: Sequence[int]) -> torch.Tensor:
    """The chunk each latent frame belongs to: [T] long."""
    return torch.repeat_interleave(torch.arange(len(chunk_sizes)), torch.tensor(list(chunk_sizes)))


def per_chunk_sigmas(batch: int, chunk_sizes: Sequence[int], shift: float, p_clean_context: float,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Diffusion-forcing noise levels: one independent σ per chunk, broadcast to its frames -> [B, T].

    Frame 0 (the image) is always 0. With probability `p_clean_context` a chunk other than the last is
    made clean (σ = 0): streaming commits clean chunks, so the model must also learn from clean context.
    The last chunk always carries noise, so every sample has a loss.
    """
    n_chunks = len(chunk_sizes)
    sigma = sample_sigmas((batch, n_chunks), shift, generator)  # [B, K]
    clean = torch.rand((batch, n_chunks), generator=generator) < p_clean_context
    clean[:, -1] = False
    sigma = torch.where(clean, torch.zeros_like(sigma), sigma)
    frames = sigma[:, chunk_index_of_frames(chunk_sizes)]  # [B, T]
    frames[:, 0] = 0.0
    return frames


def add_noise(x0: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """x_σ = (1 − σ)x₀ + σε for latents [B, C, T, h, w] and per-frame σ [B, T]."""
    s = sigma[:, None, :, None, None].to(x0)
    return (1.0 - s) * x0 + s * noise


def masked_mse(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, channel_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean squared error over frames with weight [B, T] > 0 (latents [B, C, T, h, w]).

    channel_weights [C] (mean 1) rescales each latent channel's error, e.g. by its share of the
    decoded pixels (`pixel_channel_weights`); None weighs channels alike.
    """
    w = weight[:, None, :, None, None].to(pred)
    per = (pred.float() - target.float()).pow(2) * w
    denom = w.expand_as(pred).sum().clamp_min(1.0)
    if channel_weights is not None:
        if channel_weights.shape != (pred.shape[1],):
            raise ValueError(f"channel_weights must have shape ({pred.shape[1]},), got {tuple(channel_weights.shape)}")
        per = per * channel_weights.to(per)[None, :, None, None, None]
    return per.sum() / denom


def frame_mean_mse(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, channel_weights: torch.Tensor | None = None
) -> torch.Tensor:
    """Squared error of each frame's spatial mean per channel, over frames with weight [B, T] > 0.

    A per-element MSE weighs a whole-frame offset of a channel (the frame's mean colour) like any other
    error, yet over a long walk such offsets compound into colours that wander off the scene's; this
    term weighs that one component on its own. latents [B, C, T, h, w]; channel_weights as `masked_mse`.
    """
    pred_mean = pred.float().mean(dim=(-2, -1), keepdim=True)  # [B, C, T, 1, 1]
    target_mean = target.float().mean(dim=(-2, -1), keepdim=True)
    return masked_mse(pred_mean, target_mean, weight, channel_weights)


def pixel_channel_weights(decoder_skip: torch.Tensor, latents_std: torch.Tensor, mix: float) -> torch.Tensor:
    """Per-channel loss weights [C] (mean 1): `mix` of each normalised channel's share of the decoded pixel
    energy, the rest uniform.

    The TinyVAE decodes a latent through a linear path (PCA-initialised, so its columns are nearly
    orthogonal) plus a deep residual; through the linear path a unit error in normalised channel c
    costs ‖W[:, c]‖² · std_c² of pixel error. With whitened PCA latents that share is very uneven (the
    luminance component carries ~80% of the pixels, the last 20 channels ~1% each), while a plain
    latent MSE weighs them alike, so a small model spends most of its capacity on channels that barely
    show. decoder_skip [3·s², C] (the linear path's 1×1 weights, squeezed), latents_std [C].
    """
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    share = decoder_skip.detach().float().pow(2).sum(0) * latents_std.detach().float().pow(2)  # [C]
    share = share / share.mean()
    return mix * share + (1.0 - mix)


def refine_sigmas(coarse: Sequence[float], substeps: int) -> list[float]:
    """A fine σ grid containing every σ of `coarse`: each interval split into `substeps` equal steps."""
    if substeps < 1:
        raise ValueError(f"substeps must be >= 1, got {substeps}")
    fine = [float(coarse[0])]
    for a, b in zip(coarse[:-1], coarse[1:]):
        fine += [a + (b - a) * (i + 1) / substeps for i in range(substeps)]
    return fine
