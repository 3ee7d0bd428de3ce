"""Recipes: the chunk-causal flow-matching teacher and its few-step ODE-trajectory distillation.

Self-forcing (`SelfForcedLoss`), the last stage: the student streams a clip chunk by chunk as the app
does, committing the clean chunks its live few-step sampler makes, and learns every chunk against the
ground truth at a live σ, with exactly that self-made context (`self_forced_stream`). Streaming
conditions on the model's own outputs, never on the data, so this trains the situation the app is in
(exposure bias) on the metric it is judged by (MSE to what the camera would really see).

Teacher (`TeacherLoss`): a clip of T latents in the streaming layout [1 + c, c, ...]; every chunk gets
its own shifted logit-normal σ (diffusion forcing), some context chunks are clean as in streaming,
frame 0 is the clean image; the model runs `forward_chunk_causal` with the streaming KV window and
regresses v = ε − x₀ on the noisy frames.

Distillation: the teacher rolls each clip out chunk by chunk through the streaming API
(`teacher_rollout`: many Euler steps per chunk on a grid containing every σ of the distilled list,
committing its own clean chunk as a live walk does), keeping x at each distilled σ and the final x₀.
The student (`DistilLoss`) sees chunk inputs taken from those trajectories at a random distilled σ
(or the teacher's clean chunk as context) and regresses the velocity that jumps straight to the
teacher's x₀: v* = (x_σ − x₀_teacher) / σ. Then the live loop's few Euler steps follow the teacher's
many-step ODE.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from model import schedulers
from train.data import LatentClips, crop_batch
from train.flow import (add_noise, chunk_index_of_frames, chunk_layout, frame_mean_mse, masked_mse, per_chunk_sigmas,
                        shift_sigmas)


def draw_clip_batch(clips: LatentClips, batch_size: int, crops: tuple[int, ...], frames: int | None,
                    rng: torch.Generator, step: int, refresh_every: int) -> dict[str, torch.Tensor]:
    """A random batch of cached clips, cut to one random `crops` window and the first `frames` latents.

    Training on random latent windows (one size drawn per step) and the first `frames` latents makes a CPU
    step several times cheaper; the full size stays among the crops. Every `refresh_every` steps the cache
    picks up clips encoded since it was read.
    """
    if step and step % refresh_every == 0:
        clips.refresh()
    indices = torch.randint(len(clips), (batch_size,), generator=rng).tolist()
    batch = clips.batch(indices)
    if crops or frames:
        crop = crops[int(torch.randint(len(crops), (1,), generator=rng))] if crops else min(batch["latents"].shape[-2:])
        batch = crop_batch(batch, crop, frames, rng)
    return batch


class TeacherLoss:
    """Flow matching with per-chunk noise levels on cached latents (see the module docstring)."""

    def __init__(self, clips: LatentClips, batch_size: int, chunk_latents: int, shift: float,
                 p_clean_context: float, refresh_every: int = 200, crops: tuple[int, ...] = (),
                 frames: int | None = None, channel_weights: torch.Tensor | None = None):
        if len(clips) == 0:
            raise ValueError(f"no encoded clips in {clips.directory}")
        self.clips, self.batch_size, self.chunk_latents = clips, batch_size, chunk_latents
        self.shift, self.p_clean_context, self.refresh_every = shift, p_clean_context, refresh_every
        self.crops, self.frames = tuple(crops), frames  # see draw_clip_batch
        self.channel_weights = channel_weights  # [C] or None (see train.flow.pixel_channel_weights)

    def __call__(self, net, rng: torch.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = draw_clip_batch(self.clips, self.batch_size, self.crops, self.frames, rng, step, self.refresh_every)
        x0 = batch["latents"]  # [B, C, T, h, w]
        sizes = chunk_layout(x0.shape[2], self.chunk_latents)
        sigma = per_chunk_sigmas(x0.shape[0], sizes, self.shift, self.p_clean_context, rng)  # [B, T]
        noise = torch.randn(x0.shape, generator=rng)
        device = next(net.parameters()).device
        x_t = add_noise(x0, sigma, noise)
        v = net(x_t.to(device), (sigma * 1000.0)[:, None].to(device), batch["camera_conditions"].to(device),
                batch["chunk_plucker"].to(device), sizes)
        loss = masked_mse(v, (noise - x0).to(device), (sigma > 0).float().to(device), self.channel_weights)
        return loss, {"clips": len(self.clips)}


def teacher_grid(distilled: Sequence[float], steps: int, shift: float) -> list[float]:
    """A `steps`-step shifted grid from 1 to 0, merged with every σ of `distilled` (descending, unique)."""
    base = shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift).tolist()
    merged = sorted({round(s, 6) for s in base} | {round(float(s), 6) for s in distilled}, reverse=True)
    return merged


@torch.no_grad()
def teacher_rollout(model, image_latent: torch.Tensor, camera: torch.Tensor, plucker: torch.Tensor,
                    chunk_sizes: Sequence[int], grid: Sequence[float], keep: Sequence[float],
                    noise: torch.Tensor, kv_window_chunks: int, sink: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunk-by-chunk streaming rollout of a batch from its clean image latent.

    Args:
        image_latent: [B, C, 1, h, w]; camera [B, T, 20]; plucker [B, 6s, T, h, w]; noise [B, C, T, h, w]
            (frame 0's is unused).
        grid: descending σ from 1 to 0 (Euler steps); keep: the σ (all in grid, 0 excluded) to record.
    Returns:
        trajectory [B, K, C, T, h, w] (x at each σ of `keep`; frame 0 = the image) and x0 [B, C, T, h, w].
    """
    batch = image_latent.shape[0]
    keep_index = {round(float(s), 6): k for k, s in enumerate(keep)}
    grid = [round(float(s), 6) for s in grid]
    missing = [s for s in keep_index if s not in grid]
    if missing:
        raise ValueError(f"σ {missing} to record are not on the teacher grid")
    text, mask = model.null_text(batch)
    state = model.init_stream_state(batch, latent_hw=tuple(image_latent.shape[-2:]), kv_window_chunks=kv_window_chunks, sink=sink)
    trajectory = noise.new_zeros((batch, len(keep)) + tuple(noise.shape[1:]))
    x0 = noise.new_zeros(noise.shape)
    trajectory[:, :, :, :1] = image_latent[:, None]
    x0[:, :, :1] = image_latent
    start = 0
    for c, size in enumerate(chunk_sizes):
        sl = slice(start, start + size)
        cam, pl = camera[:, sl], plucker[:, :, sl]

        def record(sigma: float, x: torch.Tensor) -> None:
            if sigma in keep_index:
                trajectory[:, keep_index[sigma], :, sl] = x

        x = euler_chunk(model, noise[:, :, sl], image_latent if c == 0 else None, cam, pl, text, mask, state, grid,
                        record)
        x0[:, :, sl] = x
        state = model.stream_commit(x, text, mask, cam, pl, state)
        start += size
    return trajectory, x0


@torch.no_grad()
def euler_chunk(model, noise: torch.Tensor, image_latent: torch.Tensor | None, camera: torch.Tensor,
                plucker: torch.Tensor, text: torch.Tensor, mask: torch.Tensor, state, grid: Sequence[float],
                record: Callable[[float, torch.Tensor], None] | None = None) -> torch.Tensor:
    """One chunk of the live sampler: Euler steps over `grid` (descending, ending at 0) from `noise`
    [B, C, Tc, h, w] against the read-only `state` -> the clean chunk. With `image_latent` [B, C, 1, h, w]
    (chunk 0) its frame 0 is that image at t = 0 throughout. `record(σ, x)` sees x before each step."""
    return schedulers.euler_chunk(
        lambda x, timestep: model.stream_forward(x, timestep, text, mask, camera, plucker, state),
        noise, grid, image_latent=image_latent, record=record,
    )


def self_forced_stream(model, x: torch.Tensor, timestep: torch.Tensor, camera: torch.Tensor, plucker: torch.Tensor,
                       chunk_sizes: Sequence[int], sigmas: Sequence[float], noise: torch.Tensor,
                       kv_window_chunks: int | None, sink: bool) -> torch.Tensor:
    """The velocity [B, C, T, h, w] of every chunk of `x`, each streamed against the model's own past.

    Chunk by chunk, with gradients: v_c = stream_forward(x_c, timestep_c) against the state of the clean
    chunks the live sampler (`sigmas`, Euler from `noise` [B, C, T, h, w], no gradient through its chunks)
    made before c; that sampler's chunk c is then committed, with gradients through the commit pass (the
    context's keys, values and recurrent states are trained), none through the chunk's values. So v_c is what
    the app's call at chunk c gives, and equals the chunk-causal forward over [own chunks 0..c−1 at t = 0,
    x_c] (tests/train): one rollout trains every chunk instead of one. Frame 0 of `x` is the clean image
    (t = 0). With the one-step sampler (σ 1, 0) and x_c = noise_c at t = 1000, the sampler's forward is the
    training forward, and its output is reused: own chunk = x_c − v_c.
    """
    state = model.init_stream_state(x.shape[0], latent_hw=tuple(x.shape[-2:]), kv_window_chunks=kv_window_chunks,
                                    sink=sink)
    return stream_window(model, x, timestep, camera, plucker, chunk_sizes, sigmas, noise, state,
                         starts_clip=True, commit_last=False).velocity


class StreamedWindow(NamedTuple):
    """What `stream_window` streamed: velocity [B, C, T, h, w], the state after it, and the inputs [B, C, T, h, w]
    the chunks were run on (`x` itself, or the warm starts built from the model's own latents)."""

    velocity: torch.Tensor
    state: object
    inputs: torch.Tensor


def stream_window(model, x: torch.Tensor, timestep: torch.Tensor, camera: torch.Tensor, plucker: torch.Tensor,
                  chunk_sizes: Sequence[int], sigmas: Sequence[float], noise: torch.Tensor, state, *,
                  starts_clip: bool, commit_last: bool, warm_start: bool = False,
                  loss_before_copy: bool = False) -> StreamedWindow:
    """`self_forced_stream` over consecutive chunks of a stream that may have begun before them.

    `state` holds what the stream committed before `x`'s first chunk; `starts_clip` says that chunk is the
    clip's first (its frame 0 is the clean image, t = 0). The state is the one after the last chunk
    committed, or before it when not `commit_last`. The last chunk's commit only feeds chunks after this
    window, so it runs without gradients.

    `warm_start` (one-step samplers [σ₀, 0] only): each chunk's new latents are not taken from `x` but
    built as the live sampler builds them, `schedulers.warm_start` from the newest latent committed before
    the chunk (the image on the clip's first chunk) and that chunk's `noise` at σ₀; `inputs` returns them
    (the training target is v* = (input − x₀)/σ₀).

    `loss_before_copy`: `velocity` is the network's velocity before the copy blends (model.anchor), while the
    chunks committed are still the blended sampler's: the network is trained as if there were no copy, so it
    cannot learn to make up for the copy where the copy is wrong, and its context is what the app streams.
    """
    batch = x.shape[0]
    text, mask = model.null_text(batch)
    grid = [float(s) for s in sigmas]
    one_step = len(grid) == 2
    if warm_start and not one_step:
        raise ValueError(f"warm-start training needs a one-step sampler [σ0, 0], got {grid}")
    velocities, inputs = [], []
    start = 0
    for c, size in enumerate(chunk_sizes):
        sl = slice(start, start + size)
        cam, pl = camera[:, sl], plucker[:, :, sl]
        with_image = starts_clip and c == 0
        first = 1 if with_image else 0  # the clip's chunk 0 starts with the image
        x_c = x[:, :, sl]
        if warm_start:
            anchor = x[:, :, :1] if with_image else state.last_latent
            if anchor is None:
                raise ValueError("warm start needs the stream's last committed latent (or starts_clip on a clip's first chunk)")
            x_c = x_c.clone()
            x_c[:, :, first:] = schedulers.warm_start(anchor, noise[:, :, sl][:, :, first:], grid[0])
        inputs.append(x_c)
        if loss_before_copy:
            v, trained = model.stream_forward(x_c, timestep[:, :, sl], text, mask, cam, pl, state, before_copy=True)
        else:
            v = trained = model.stream_forward(x_c, timestep[:, :, sl], text, mask, cam, pl, state)  # [B, C, Tc, h, w]
        velocities.append(trained)
        last = c == len(chunk_sizes) - 1
        if last and not commit_last:
            break  # nothing streams after the last chunk
        # With one step from the sampler's own start, the training forward is the sampler's forward.
        reuse = one_step and bool((timestep[:, :, sl][:, :, first:] == grid[0] * 1000.0).all()) and (
            warm_start or torch.equal(x_c[:, :, first:], noise[:, :, sl][:, :, first:]))
        if reuse:
            own = (x_c - grid[0] * v).detach()
            if with_image:
                own[:, :, :1] = x[:, :, :1]
        else:
            own = euler_chunk(model, noise[:, :, sl], x[:, :, :1] if with_image else None, cam, pl, text, mask, state,
                              grid)
        if last:
            with torch.no_grad():
                state = model.stream_commit(own, text, mask, cam, pl, state)
        else:
            state = model.stream_commit(own, text, mask, cam, pl, state)
        start += size
    return StreamedWindow(torch.cat(velocities, dim=2), state, torch.cat(inputs, dim=2))


class DistilLoss:
    """ODE-trajectory distillation onto the distilled σ list (see the module docstring).

    `pairs`: {"trajectory" [N, K, C, T, h, w], "x0" [N, C, T, h, w], "camera_conditions" [N, T, 20],
    "chunk_plucker" [N, 6s, T, h, w], "sigmas" [K]} from `teacher_rollout`.
    """

    def __init__(self, pairs: dict[str, torch.Tensor], batch_size: int, chunk_latents: int, p_clean_context: float,
                 channel_weights: torch.Tensor | None = None):
        self.pairs, self.batch_size, self.chunk_latents = pairs, batch_size, chunk_latents
        self.p_clean_context = p_clean_context
        self.channel_weights = channel_weights
        self.sigmas = pairs["sigmas"].float()  # [K]
        if not bool((self.sigmas > 0).all()):
            raise ValueError(f"distillation σ must all be > 0 (0 is the clean end), got {self.sigmas.tolist()}")

    def __call__(self, net, rng: torch.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        n = self.pairs["x0"].shape[0]
        idx = torch.randint(n, (self.batch_size,), generator=rng)
        traj = self.pairs["trajectory"][idx].float()  # [B, K, C, T, h, w]
        x0 = self.pairs["x0"][idx].float()  # [B, C, T, h, w]
        batch, n_levels, _, frames = traj.shape[:4]
        sizes = chunk_layout(frames, self.chunk_latents)
        level = torch.randint(n_levels, (batch, len(sizes)), generator=rng)  # [B, K_chunks]
        clean = torch.rand((batch, len(sizes)), generator=rng) < self.p_clean_context
        clean[:, -1] = False
        chunk_of = chunk_index_of_frames(sizes)
        level_f, clean_f = level[:, chunk_of], clean[:, chunk_of]  # [B, T]
        x_in = torch.gather(traj, 1, level_f[:, None, None, :, None, None].expand(-1, 1, *traj.shape[2:]).contiguous())[:, 0]
        x_in = torch.where(clean_f[:, None, :, None, None], x0, x_in)
        sigma = torch.where(clean_f, torch.zeros(()), self.sigmas[level_f])  # [B, T]
        sigma[:, 0] = 0.0
        x_in[:, :, :1] = x0[:, :, :1]
        target = (x_in - x0) / sigma.clamp_min(1e-6)[:, None, :, None, None]
        device = next(net.parameters()).device
        v = net(x_in.to(device), (sigma * 1000.0)[:, None].to(device), self.pairs["camera_conditions"][idx].float().to(device),
                self.pairs["chunk_plucker"][idx].float().to(device), sizes)
        loss = masked_mse(v, target.to(device), (sigma > 0).float().to(device), self.channel_weights)
        return loss, {}


def make_pairs(model, clips: LatentClips, count: int, batch_size: int, chunk_latents: int, distilled: Sequence[float],
               teacher_steps: int, shift: float, kv_window_chunks: int, sink: bool, seed: int = 0,
               progress: bool = True, crop: int | None = None, frames: int | None = None) -> dict[str, torch.Tensor]:
    """Teacher rollouts of the first `count` clips (optionally of a random `crop`² window and the first
    `frames` latents) -> the `DistilLoss` pairs (stored as float16)."""
    keep = [float(s) for s in distilled if s > 0]
    grid = teacher_grid(distilled, teacher_steps, shift)
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, list[torch.Tensor]] = {"trajectory": [], "x0": [], "camera_conditions": [], "chunk_plucker": []}
    model = model.eval()
    batches = range(0, min(count, len(clips)), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="teacher rollouts")
    for start in batches:
        indices = list(range(start, min(start + batch_size, count, len(clips))))
        b = clips.batch(indices)
        if crop or frames:
            b = crop_batch(b, crop or min(b["latents"].shape[-2:]), frames, gen)
        lat = b["latents"]
        sizes = chunk_layout(lat.shape[2], chunk_latents)
        noise = torch.randn(lat.shape, generator=gen)
        traj, x0 = teacher_rollout(model, lat[:, :, :1], b["camera_conditions"], b["chunk_plucker"], sizes, grid, keep,
                                   noise, kv_window_chunks, sink)
        out["trajectory"].append(traj.half())
        out["x0"].append(x0.half())
        out["camera_conditions"].append(b["camera_conditions"])
        out["chunk_plucker"].append(b["chunk_plucker"].half())
    pairs = {k: torch.cat(v) for k, v in out.items()}
    pairs["sigmas"] = torch.tensor(keep)
    return pairs


def _unwrap(net):
    """The WorldModel inside a ChunkCausalNet, DDP-wrapped or not."""
    inner = net.module if hasattr(net, "module") else net
    return inner.model


def live_sigmas(sigmas: Sequence[float]) -> list[float]:
    """The live sampler's σ list as floats; ValueError unless it decreases strictly and ends at 0."""
    live = [float(s) for s in sigmas]
    if live[-1] != 0.0 or any(a <= b for a, b in zip(live[:-1], live[1:])):
        raise ValueError(f"sigmas must decrease strictly and end at 0, got {live}")
    return live


def noised_at_live_sigmas(x0: torch.Tensor, chunk_sizes: Sequence[int], sigmas: Sequence[float],
                          rng: torch.Generator, starts_clip: bool):
    """Each chunk of x0 [B, C, T, h, w] noised to its own σ drawn from the live list (0 excluded); with
    `starts_clip`, frame 0 is the clean image (σ = 0). Returns (σ [B, T], noise, x_σ, target v* = (x_σ − x0)/σ)."""
    live = torch.tensor(list(sigmas)[:-1])
    sigma_chunk = live[torch.randint(len(live), (x0.shape[0], len(chunk_sizes)), generator=rng)]  # [B, K]
    sigma = sigma_chunk[:, chunk_index_of_frames(chunk_sizes)]  # [B, T]
    if starts_clip:
        sigma[:, 0] = 0.0
    noise = torch.randn(x0.shape, generator=rng)
    x_in = add_noise(x0, sigma, noise)
    velocity_target = (x_in - x0) / sigma.clamp_min(1e-6)[:, None, :, None, None]
    return sigma, noise, x_in, velocity_target


class SelfForcedLoss:
    """Ground-truth targets on the student's own streamed context (see the module docstring).

    `targets="all"` (the default): one streamed rollout per step trains every chunk. Each chunk c gets the
    ground truth noised to its own σ from the live list and is run, with gradients, against the state of
    the clean chunks the live sampler made before it (`self_forced_stream`); the loss is the
    (channel-weighted) MSE to v* = (x_σ − x₀)/σ over all chunks.

    `targets="one"`: one target chunk c per step (uniform over the clip's chunks). Chunks 0..c−1 are
    generated by the live sampler without gradient (the `teacher_rollout` loop), then the chunk-causal
    forward over [own chunks (t = 0), noisy chunk c] (the streaming call the app makes at that step,
    streaming == chunk-causal, tested in tests/model) is trained on chunk c only. Same objective per
    chunk; it spends a whole rollout and a forward over the prefix on one chunk's loss.
    """

    def __init__(self, clips: LatentClips, batch_size: int, chunk_latents: int, sigmas: Sequence[float],
                 kv_window_chunks: int, sink: bool, crops: tuple[int, ...] = (), frames: int | None = None,
                 channel_weights: torch.Tensor | None = None, refresh_every: int = 200, targets: str = "all"):
        if len(clips) == 0:
            raise ValueError(f"no encoded clips in {clips.directory}")
        if targets not in ("all", "one"):
            raise ValueError(f"targets must be 'all' or 'one', got {targets!r}")
        self.targets = targets
        live = live_sigmas(sigmas)
        self.clips, self.batch_size, self.chunk_latents = clips, batch_size, chunk_latents
        self.sigmas, self.kv_window_chunks, self.sink = live, kv_window_chunks, sink
        self.crops, self.frames, self.channel_weights = tuple(crops), frames, channel_weights
        self.refresh_every = refresh_every

    def __call__(self, net, rng: torch.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        batch = draw_clip_batch(self.clips, self.batch_size, self.crops, self.frames, rng, step, self.refresh_every)
        x0 = batch["latents"]  # [B, C, T, h, w]
        camera, plucker = batch["camera_conditions"], batch["chunk_plucker"]
        sizes = chunk_layout(x0.shape[2], self.chunk_latents)
        if self.targets == "all":
            return self._all_chunks(net, rng, x0, camera, plucker, sizes)
        target = int(torch.randint(len(sizes), (1,), generator=rng))
        start = sum(sizes[:target])
        end = start + sizes[target]
        device = next(net.parameters()).device
        x_in = x0[:, :, :end].clone()
        if target > 0:
            model = _unwrap(net)
            was_training = model.training
            model.eval()
            noise = torch.randn(x0[:, :, :start].shape, generator=rng)
            _, own = teacher_rollout(model, x0[:, :, :1].to(device), camera[:, :start].to(device),
                                     plucker[:, :, :start].to(device), sizes[:target], self.sigmas, [],
                                     noise.to(device), self.kv_window_chunks, self.sink)
            model.train(was_training)
            x_in[:, :, :start] = own.to(x_in)
        live = torch.tensor(self.sigmas[:-1])
        sigma_chunk = live[torch.randint(len(live), (x0.shape[0],), generator=rng)]  # [B]
        sigma = torch.zeros(x0.shape[0], end)
        sigma[:, start:] = sigma_chunk[:, None]
        sigma[:, 0] = 0.0
        noisy = add_noise(x0[:, :, start:end], sigma[:, start:], torch.randn(x0[:, :, start:end].shape, generator=rng))
        x_in[:, :, start:end] = noisy  # frame 0 has σ = 0, so it stays the clean image
        velocity_target = (x_in - x0[:, :, :end]) / sigma.clamp_min(1e-6)[:, None, :, None, None]
        v = net(x_in.to(device), (sigma * 1000.0)[:, None].to(device), camera[:, :end].to(device),
                plucker[:, :, :end].to(device), sizes[:target + 1])
        loss = masked_mse(v, velocity_target.to(device), (sigma > 0).float().to(device), self.channel_weights)
        return loss, {"target_chunk": target}

    def _all_chunks(self, net, rng, x0, camera, plucker, sizes) -> tuple[torch.Tensor, dict[str, float]]:
        sigma, noise, x_in, velocity_target = noised_at_live_sigmas(x0, sizes, self.sigmas, rng, starts_clip=True)
        device = next(net.parameters()).device
        v = net(x_in.to(device), (sigma * 1000.0)[:, None].to(device), camera.to(device), plucker.to(device), sizes,
                live_sampler=(self.sigmas, noise.to(device)))
        loss = masked_mse(v, velocity_target.to(device), (sigma > 0).float().to(device), self.channel_weights)
        return loss, {"chunks": len(sizes)}


@dataclass
class _Walk:
    """A batch of long walks being streamed across training steps (`RollingSelfForcedLoss`)."""

    batch: dict[str, torch.Tensor]  # one draw_clip_batch: latents [B, C, T, h, w], camera tensors
    sizes: list[int]  # chunk_layout of the whole walk
    next_chunk: int = 0
    next_latent: int = 0
    state: object = None  # the StreamState after chunk next_chunk − 1 (None before the first)


class RollingSelfForcedLoss:
    """Self-forcing over walks as long as the app's, a window of chunks per step (truncated backpropagation).

    The short-walk recipe (`SelfForcedLoss`) streams a whole clip per step, so its horizon is the clip's
    (6 s), while the app streams for minutes and its drift (colours that wander, the decoder's 8×8 cells
    coming apart) grows with time. Here a batch of long walks (e.g. 30 s, 60 chunks) is streamed across
    consecutive steps: each step continues the stream by `window_chunks` chunks, against the state the
    model's own one-step rollout left (detached: no gradient flows back into earlier windows), trains
    each of them against the ground truth (so a drifted context learns to come back, not to amplify), and
    keeps the state for the next step. When a walk ends, the next batch of walks starts from its image.
    Every window costs what a `window_chunks`-chunk clip costs `SelfForcedLoss`, with no prefix to
    recompute, yet over an episode every horizon from 0 to the walk's length is trained equally often.
    The state is at most `window_chunks` optimiser steps stale. Streaming windows of one walk gives the
    same velocities as `self_forced_stream` over the whole walk (without updates in between; tests/train).
    """

    def __init__(self, clips: LatentClips, batch_size: int, chunk_latents: int, sigmas: Sequence[float],
                 kv_window_chunks: int, sink: bool, window_chunks: int, crops: tuple[int, ...] = (),
                 frames: int | None = None, channel_weights: torch.Tensor | None = None, refresh_every: int = 200,
                 frame_mean_weight: float = 0.0, warm_start: bool = False, adversarial=None,
                 loss_before_copy: bool = False):
        if len(clips) == 0:
            raise ValueError(f"no encoded clips in {clips.directory}")
        if frame_mean_weight < 0:
            raise ValueError(f"frame_mean_weight must be >= 0, got {frame_mean_weight}")
        if window_chunks < 1:
            raise ValueError(f"window_chunks must be >= 1, got {window_chunks}")
        live = live_sigmas(sigmas)
        if warm_start and len(live) != 2:
            raise ValueError(f"warm-start training needs a one-step sampler [σ0, 0], got {live}")
        self.clips, self.batch_size, self.chunk_latents = clips, batch_size, chunk_latents
        self.sigmas, self.kv_window_chunks, self.sink = live, kv_window_chunks, sink
        self.warm_start = warm_start
        self.adversarial = adversarial  # a train.adversarial.AdversarialTerm, or None
        self.window_chunks, self.crops, self.frames = window_chunks, tuple(crops), frames
        self.channel_weights, self.refresh_every = channel_weights, refresh_every
        self.frame_mean_weight = frame_mean_weight
        self.loss_before_copy = loss_before_copy  # see `stream_window`
        self.walk: _Walk | None = None
        self.walks_started = 0

    def state_dict(self) -> dict:
        """What a resumed run needs besides the model (the discriminator; walks restart)."""
        return {"adversarial": self.adversarial.state_dict()} if self.adversarial is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.adversarial is not None and "adversarial" in state:
            self.adversarial.load_state_dict(state["adversarial"])

    def _next_window(self, rng: torch.Generator, step: int) -> tuple[_Walk, list[int], int, int]:
        if self.walk is None or self.walk.next_chunk >= len(self.walk.sizes):
            batch = draw_clip_batch(self.clips, self.batch_size, self.crops, self.frames, rng, step, self.refresh_every)
            self.walk = _Walk(batch, chunk_layout(batch["latents"].shape[2], self.chunk_latents))
            self.walks_started += 1
        walk = self.walk
        sizes = walk.sizes[walk.next_chunk: walk.next_chunk + self.window_chunks]
        return walk, sizes, walk.next_latent, walk.next_latent + sum(sizes)

    def __call__(self, net, rng: torch.Generator, step: int) -> tuple[torch.Tensor, dict[str, float]]:
        walk, sizes, start, end = self._next_window(rng, step)
        starts_clip = walk.next_chunk == 0
        x0 = walk.batch["latents"][:, :, start:end]  # [B, C, Tw, h, w]
        camera, plucker = walk.batch["camera_conditions"][:, start:end], walk.batch["chunk_plucker"][:, :, start:end]
        sigma, noise, x_in, _ = noised_at_live_sigmas(x0, sizes, self.sigmas, rng, starts_clip)
        device = next(net.parameters()).device
        v, state, inputs = net(x_in.to(device), (sigma * 1000.0)[:, None].to(device), camera.to(device),
                               plucker.to(device), sizes,
                               continue_stream=(self.sigmas, noise.to(device), walk.state, starts_clip, self.warm_start),
                               loss_before_copy=self.loss_before_copy)
        # v* = (input − x₀)/σ on what the chunks ran on: x_in itself, or the warm starts built from the model's latents.
        velocity_target = (inputs.detach().cpu() - x0) / sigma.clamp_min(1e-6)[:, None, :, None, None]
        live = (sigma > 0).float().to(device)
        loss = masked_mse(v, velocity_target.to(device), live, self.channel_weights)
        logs = {}
        if self.frame_mean_weight:
            mean_term = frame_mean_mse(v, velocity_target.to(device), live, self.channel_weights)
            loss = loss + self.frame_mean_weight * mean_term
            logs["frame_mean"] = float(mean_term.detach())
        if self.adversarial is not None:
            # The chunks' one-step latents x₀ = input − σ·v against the true ones, on the frames the loss covers.
            new = sigma[0] > 0  # frame 0 of a walk's first window is the given image
            s = sigma[:, new].to(device)[:, None, :, None, None]
            predicted = inputs.to(device)[:, :, new] - s * v[:, :, new]
            # The walk's start latent (its given image), for a discriminator that judges a frame beside it.
            start = walk.batch["latents"][:, :, 0].to(device) if self.adversarial.conditional else None
            logs.update(self.adversarial.update(x0[:, :, new].to(device), predicted.detach(), start))
            adversarial = self.adversarial.generator_loss(predicted, start)
            loss = loss + adversarial
            logs["adversarial"] = float(adversarial.detach())
        first_chunk = walk.next_chunk
        walk.state, walk.next_chunk, walk.next_latent = state, walk.next_chunk + len(sizes), end
        return loss, {"chunk": first_chunk, "walks": self.walks_started, **logs}
