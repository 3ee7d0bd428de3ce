"""Flow-matching schedules of SANA-WM's three samplers, as plain σ lists (no scheduler objects).

Convention (the project's): x_σ = (1 − σ)·x₀ + σ·ε, the model returns v = ε − x₀ and sees the
timestep σ·1000 per latent frame; one Euler step is x ← x + (σ' − σ)·v. A latent frame whose
timestep is 0 (the start image) is never updated.

- Bidirectional (`bidirectional_sigmas`): the official `LTXFlowEuler` (diffusers'
  `FlowMatchEulerDiscreteScheduler(shift=9.8)`, 60 steps). That scheduler shifts twice: its training
  table is shifted once, `set_timesteps` spaces `steps` values linearly from the table's largest σ to
  its smallest (shift(1/1000)) and shifts them again. The last nonzero σ is therefore ≈ 0.088, not
  ≈ 0.0098; we reproduce what the released sampler ran.
- Chunk-causal teacher (`staggered_schedule`): diffusion forcing; chunk i starts at global step
  ⌊i·steps/num_chunks⌋ and then runs the same `steps`-step σ list; chunks in flight are denoised
  jointly by one chunk-causal forward.
- Distilled student (`DISTILLED_TIMESTEPS`): 1000, 960, 889, 727, 0 (σ = t / 1000).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

NUM_TRAIN_TIMESTEPS = 1000
BIDIRECTIONAL_SHIFT = 9.8
BIDIRECTIONAL_STEPS = 60
BIDIRECTIONAL_CFG = 5.0
DISTILLED_TIMESTEPS: tuple[int, ...] = (1000, 960, 889, 727, 0)


def shift_sigma(sigma: float, shift: float) -> float:
    """The flow shift σ ↦ shift·σ / (1 + (shift − 1)·σ)."""
    return shift * sigma / (1.0 + (shift - 1.0) * sigma)


def _check_steps(steps: object, name: str = "steps") -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or not 1 <= steps <= 10_000:
        raise ValueError(f"{name} must be an int in [1, 10000], got {steps!r}")
    return steps


def bidirectional_sigmas(steps: int = BIDIRECTIONAL_STEPS, shift: float = BIDIRECTIONAL_SHIFT,
                         num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[float, ...]:
    """σ list of the official bidirectional sampler: `steps` values from 1 down, then 0 (steps + 1 in all)."""
    steps = _check_steps(steps)
    if not (isinstance(shift, (int, float)) and math.isfinite(shift) and shift > 0):
        raise ValueError(f"shift must be a positive finite number, got {shift!r}")
    # The training table's extremes, already shifted once.
    sigma_max = shift_sigma(1.0, shift)
    sigma_min = shift_sigma(1.0 / num_train_timesteps, shift)
    if steps == 1:
        linear = [sigma_max]
    else:
        linear = [sigma_max + (sigma_min - sigma_max) * i / (steps - 1) for i in range(steps)]
    return tuple(shift_sigma(s, shift) for s in linear) + (0.0,)


def distilled_sigmas(timesteps: tuple[int, ...] = DISTILLED_TIMESTEPS,
                     num_train_timesteps: int = NUM_TRAIN_TIMESTEPS) -> tuple[float, ...]:
    """σ = t / 1000 of the distilled list (strictly decreasing, ending at 0)."""
    if len(timesteps) < 2 or timesteps[-1] != 0 or any(a <= b for a, b in zip(timesteps, timesteps[1:])):
        raise ValueError(f"distilled timesteps must decrease strictly and end at 0, got {list(timesteps)}")
    return tuple(t / num_train_timesteps for t in timesteps)


def check_sampler_sigmas(sigmas: Any, where: str = "sampler") -> tuple[float, ...]:
    """A few-step sampler's σ list as floats: at least one step, strictly decreasing in [0, 1], ending at 0."""
    try:
        values = tuple(float(s) for s in sigmas)
    except (TypeError, ValueError) as error:
        raise ValueError(f"sampler sigmas of {where} must be a list of numbers, got {sigmas!r}") from error
    if (len(values) < 2 or values[-1] != 0.0 or any(not 0.0 <= s <= 1.0 for s in values)
            or any(a <= b for a, b in zip(values, values[1:]))):
        raise ValueError(f"sampler sigmas of {where} must decrease strictly within [0, 1] and end at 0, got {list(values)}")
    return values


def euler_step(x: torch.Tensor, velocity: torch.Tensor, sigma: float, sigma_next: float) -> torch.Tensor:
    """One flow-Euler step x + (σ' − σ)·v (same shapes in and out)."""
    return x + (sigma_next - sigma) * velocity


def warm_start(anchor: torch.Tensor, noise: torch.Tensor, sigma: float) -> torch.Tensor:
    """A chunk's sampler start at σ < 1 from the stream's newest clean latent: (1 − σ)·anchor + σ·noise.

    The one-step sampler from pure noise (σ = 1) regresses each new view from context alone, which is
    what blurs it; starting at σ < 1 from the newest committed latent puts that frame's detail at every
    position of the input, so what stays in view is there to keep and the model learns what to move.
    anchor [B, C, 1, h, w] (broadcast over the chunk's frames), noise [B, C, Tc, h, w] -> [B, C, Tc, h, w].
    """
    if anchor.ndim != 5 or anchor.shape[2] != 1 or anchor.shape[:2] != noise.shape[:2] or anchor.shape[3:] != noise.shape[3:]:
        raise ValueError(f"warm_start needs anchor [B, C, 1, h, w] matching noise {tuple(noise.shape)}, "
                         f"got {tuple(anchor.shape)}")
    if not 0.0 < sigma <= 1.0:
        raise ValueError(f"warm_start σ must be in (0, 1], got {sigma}")
    return (1.0 - sigma) * anchor.to(noise.dtype) + sigma * noise


def euler_chunk(
    velocity: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    sigmas: Sequence[float],
    *,
    image_latent: torch.Tensor | None = None,
    record: Callable[[float, torch.Tensor], None] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> torch.Tensor:
    """Integrate one chunk along `sigmas` (descending, ending at 0): the few-step sampler of every
    chunk-causal or bidirectional path (live generator, offline sampler, training rollouts).

    Args:
        velocity: `velocity(x, timestep)` -> v, with x [B, C, T, h, w] and timestep [B, 1, T] = σ·1000
            in x's dtype on x's device; v is cast to x's dtype before the update.
        x: [B, C, T, h, w] at σ = sigmas[0] (noise; frame 0 is overwritten when `image_latent` is given).
        image_latent: [B, C, 1, h, w] or None. Given, frame 0 is the clean start image: its timestep is
            0 and its value is imposed before the first step and after every step, so it never moves.
        record: called as record(σ, x) before each step (a trajectory for distillation).
        progress: called as progress(steps done, steps in all) after each step.
    Returns:
        x [B, C, T, h, w] at σ = sigmas[-1]; the input tensor is not modified.
    """
    if x.ndim != 5:
        raise ValueError(f"euler_chunk needs x [B, C, T, h, w], got shape {tuple(x.shape)}")
    if image_latent is not None and (image_latent.ndim != 5 or image_latent.shape[2] != 1
                                     or image_latent.shape[:2] != x.shape[:2] or image_latent.shape[3:] != x.shape[3:]):
        raise ValueError(f"image_latent must be [B, C, 1, h, w] matching x {tuple(x.shape)}, got {tuple(image_latent.shape)}")
    batch, frames = x.shape[0], x.shape[2]
    x = x.clone()
    if image_latent is not None:
        x[:, :, :1] = image_latent
    total = len(sigmas) - 1
    for done, (sigma, sigma_next) in enumerate(zip(sigmas[:-1], sigmas[1:]), start=1):
        if record is not None:
            record(sigma, x)
        timestep = torch.full((batch, 1, frames), sigma * 1000.0, device=x.device, dtype=x.dtype)  # [B, 1, T]
        if image_latent is not None:
            timestep[:, :, 0] = 0.0
        x = euler_step(x, velocity(x, timestep).to(x.dtype), sigma, sigma_next)
        if image_latent is not None:
            x[:, :, :1] = image_latent
        if progress is not None:
            progress(done, total)
    return x


def guided(uncond: torch.Tensor, cond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance uncond + scale·(cond − uncond)."""
    return uncond + scale * (cond - uncond)


@dataclass(frozen=True)
class StaggeredStep:
    """One global step of the chunk-causal teacher.

    `active` maps chunk index -> its local step j (it moves from sigmas[j] to sigmas[j + 1]);
    chunks below min(active) are clean (σ = 0); chunks above max(active) have not started.
    """

    index: int
    active: dict[int, int]


def staggered_schedule(num_chunks: int, steps: int) -> list[StaggeredStep]:
    """Global steps of the diffusion-forcing schedule: chunk i runs local steps 0..steps−1 at global
    steps start_i..start_i + steps − 1, with start_i = ⌊i·steps / num_chunks⌋ (k = 1 / num_chunks)."""
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1:
        raise ValueError(f"num_chunks must be an int >= 1, got {num_chunks!r}")
    steps = _check_steps(steps)
    starts = chunk_starts(num_chunks, steps)
    total = starts[-1] + steps
    schedule = []
    for g in range(total):
        active = {i: g - s for i, s in enumerate(starts) if s <= g < s + steps}
        schedule.append(StaggeredStep(index=g, active=active))
    return schedule


def chunk_starts(num_chunks: int, steps: int) -> list[int]:
    """The global step at which each chunk starts denoising, ⌊i·steps / num_chunks⌋."""
    return [(i * steps) // num_chunks for i in range(num_chunks)]
