"""The training loop shared by the teacher and distillation recipes: DDP, EMA, resumable checkpoints, logs.

    torchrun --nproc-per-node N run.py train teacher --data ... --run-dir runs/teacher

Runs as one process or under `torchrun` (DDP: gloo on CPU, nccl on CUDA; the environment variables
torchrun sets decide). Every rank draws its own batches and noise (seed + rank); DDP averages the
gradients, so every rank holds the same weights after every step. Rank 0 writes
`run_dir/log.jsonl` (one JSON object per logged step), `run_dir/checkpoint.pt` (model, EMA, optimiser,
step, RNG: a restarted run continues where it stopped) and shows a tqdm bar.

A recipe is a `loss_fn(net, batch_rng, step) -> (loss, metrics)`; `net` is the DDP-wrapped
`ChunkCausalNet` whose forward is `WorldModel.forward_chunk_causal`.
"""
from __future__ import annotations

import copy
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from model import ModelConfig, WorldModel


@dataclass(frozen=True)
class LoopConfig:
    """Optimisation settings of one run."""

    run_dir: str
    steps: int = 1000
    minutes: float = 0.0  # wall-clock budget; 0 = none (steps decide)
    lr: float = 3e-4
    warmup_steps: int = 50
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.995
    log_every: int = 10
    checkpoint_every_s: float = 120.0
    seed: int = 0
    progress: bool = True
    # (name substring, lr multiplier): a parameter whose name contains the substring (first match) trains at
    # lr × multiplier, e.g. (("plucker", 10.0),) lets a branch that starts at zero catch up with trained weights
    lr_scales: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        for pattern, scale in self.lr_scales:
            if not pattern or not scale > 0:
                raise ValueError(f"lr_scales entries need a non-empty name and a multiplier > 0, got {pattern!r}: {scale}")
        if self.steps < 1 or self.minutes < 0:
            raise ValueError(f"steps must be >= 1 and minutes >= 0, got steps={self.steps}, minutes={self.minutes}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if not self.lr > 0 or self.warmup_steps < 0:
            raise ValueError(f"need lr > 0 and warmup_steps >= 0, got lr={self.lr}, warmup_steps={self.warmup_steps}")


class ChunkCausalNet(nn.Module):
    """`WorldModel.forward_chunk_causal` as a module's forward, so DDP sees (and syncs) the call."""

    def __init__(self, model: WorldModel, kv_window_chunks: int | None, sink: bool):
        super().__init__()
        self.model = model
        self.kv_window_chunks = kv_window_chunks
        self.sink = sink

    def forward(self, x, timestep, camera_conditions, chunk_plucker, chunk_sizes, *, live_sampler=None,
                continue_stream=None, loss_before_copy: bool = False):
        """Velocity [B, C, T, h, w]. With `live_sampler` = (σ list, noise [B, C, T, h, w]) the chunks stream
        one by one instead, each against the model's own earlier chunks (`train.recipes.self_forced_stream`).

        With `continue_stream` = (σ list, noise, state, starts_clip, warm_start) as well, the chunks continue the
        stream `state` (None: a new one) and the result is (velocity, the state after every chunk, detached, the
        inputs the chunks ran on), for a long walk trained a window at a time
        (`train.recipes.RollingSelfForcedLoss`; `warm_start` and `loss_before_copy` as in
        `train.recipes.stream_window`)."""
        if continue_stream is not None:
            from train.recipes import stream_window

            sigmas, noise, state, starts_clip, warm_start = continue_stream
            if state is None:
                state = self.model.init_stream_state(x.shape[0], latent_hw=tuple(x.shape[-2:]),
                                                     kv_window_chunks=self.kv_window_chunks, sink=self.sink)
            window = stream_window(self.model, x, timestep, camera_conditions, chunk_plucker, chunk_sizes, sigmas,
                                   noise, state, starts_clip=starts_clip, commit_last=True, warm_start=warm_start,
                                   loss_before_copy=loss_before_copy)
            return window.velocity, window.state.detach(), window.inputs
        if live_sampler is not None:
            from train.recipes import self_forced_stream

            sigmas, noise = live_sampler
            return self_forced_stream(self.model, x, timestep, camera_conditions, chunk_plucker, chunk_sizes, sigmas,
                                      noise, self.kv_window_chunks, self.sink)
        text, mask = self.model.null_text(x.shape[0])
        return self.model.forward_chunk_causal(
            x, timestep, text, mask, camera_conditions, chunk_plucker,
            chunk_sizes=chunk_sizes, kv_window_chunks=self.kv_window_chunks, sink=self.sink)


def distributed() -> tuple[int, int, torch.device]:
    """(rank, world size, device), starting the process group when torchrun launched us."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
    rank = dist.get_rank() if dist.is_initialized() else 0
    if torch.cuda.is_available():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def _lr_at(step: int, cfg: LoopConfig, elapsed_s: float) -> float:
    """Linear warm-up, then cosine decay to lr/10 over the steps or the time budget, whichever ends first."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
    if cfg.minutes:
        progress = max(progress, elapsed_s / (cfg.minutes * 60))
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress))))


def _param_groups(model: nn.Module, cfg: LoopConfig) -> list[dict]:
    """One AdamW group per lr multiplier of `cfg.lr_scales` (matched by name, first match wins), plus the rest at 1."""
    groups: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        scale = next((s for pattern, s in cfg.lr_scales if pattern in name), 1.0)
        groups.setdefault(scale, []).append(param)
    unmatched = [pattern for pattern, _ in cfg.lr_scales if not any(pattern in n for n, _ in model.named_parameters())]
    if unmatched:
        raise ValueError(f"lr_scales names {unmatched} match no parameter of the model")
    return [{"params": params, "lr_scale": scale} for scale, params in sorted(groups.items())]


@torch.no_grad()
def revive_plucker_branch(model: WorldModel, seed: int) -> bool:
    """Give the Plücker embedder random weights when the whole Plücker branch sits at its zero saddle.

    The official init zeroes both `plucker_embedder` and every block's `plucker_proj` (so step 0 is the
    model without the branch). Two stacked zero linears never learn: each one's gradient is the other's
    weight times the upstream gradient, i.e. zero. With the embedder random and the projections still
    zero the output is unchanged, bit for bit, and the projections get a gradient from the first step.
    Only when every one of those weights is zero; returns whether it re-initialised. Seeded, so every
    rank of a run draws the same weights.
    """
    embedder = model.plucker_embedder.proj.weight
    if embedder.any() or any(block.plucker_proj.weight.any() for block in model.blocks):
        return False
    generator = torch.Generator().manual_seed(seed)
    fan_in = embedder[0].numel()
    bound = fan_in ** -0.5  # the default Conv3d weight range, U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    embedder.copy_((torch.rand(embedder.shape, generator=generator) * 2 - 1) * bound)
    return True


@torch.no_grad()
def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1.0 - decay)


def train_loop(
    model: WorldModel,
    loss_fn: Callable[[nn.Module, torch.Generator, int], tuple[torch.Tensor, dict[str, float]]],
    cfg: LoopConfig,
    *,
    kv_window_chunks: int | None,
    sink: bool,
    extra_state: dict | None = None,
) -> tuple[WorldModel, WorldModel, list[dict]]:
    """Train `model` in place; returns (model, EMA copy, logged records of this process).

    Resumes from `run_dir/checkpoint.pt` when it exists. The loop stops at `cfg.steps` or when
    `cfg.minutes` of wall clock have passed (the stop decision is rank 0's, broadcast to all ranks).
    """
    rank, world, device = distributed()
    run_dir = Path(cfg.run_dir)
    if rank == 0:
        run_dir.mkdir(parents=True, exist_ok=True)
    model = model.to(device).train()
    if revive_plucker_branch(model, cfg.seed) and rank == 0:
        print("train: the Plücker branch was at its zero saddle (embedder and projections all zero); "
              "the embedder now has random weights, the output is unchanged", flush=True)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.99))
    rng = torch.Generator().manual_seed(cfg.seed * 1000 + rank)
    step = 0
    checkpoint = run_dir / "checkpoint.pt"
    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if ModelConfig.from_dict(saved["model_config"]) != model.config:
            raise ValueError(f"{checkpoint} holds a model of config {saved['model_config']}, not {model.config.to_dict()}")
        model.load_state_dict(saved["model"])
        ema.load_state_dict(saved["ema"])
        optimizer.load_state_dict(saved["optimizer"])
        step = int(saved["step"])
        if hasattr(loss_fn, "load_state_dict"):
            loss_fn.load_state_dict(saved.get("loss_state", {}))
        if rank < len(saved["rng"]):
            rng.set_state(saved["rng"][rank])
        else:
            # resumed with more processes than saved: a fresh stream per new rank (reusing rank 0's
            # would make that rank draw rank 0's batches)
            rng.manual_seed(cfg.seed * 1000 + rank + 1_000_003 * step)
    net: nn.Module = ChunkCausalNet(model, kv_window_chunks, sink)
    if world > 1:
        # The up/latitude raymap branch is in the checkpoint but unused by the release path.
        net = nn.parallel.DistributedDataParallel(net, find_unused_parameters=True)

    records: list[dict] = []
    start = time.monotonic()
    last_checkpoint = start
    bar = None
    if rank == 0 and cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=run_dir.name, dynamic_ncols=True)
    log_file = open(run_dir / "log.jsonl", "a") if rank == 0 else None
    try:
        while step < cfg.steps:
            elapsed = torch.tensor([time.monotonic() - start])
            if world > 1:
                dist.broadcast(elapsed, 0)
            lr = _lr_at(step, cfg, float(elapsed))
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)  # a checkpoint from before lr_scales has none
            loss, metrics = loss_fn(net, rng, step)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip))
            optimizer.step()
            _ema_update(ema, model, cfg.ema_decay if step >= cfg.warmup_steps else 0.0)
            step += 1
            record = {"step": step, "loss": float(loss.detach()), "lr": lr, "grad_norm": grad_norm,
                      "elapsed_s": round(time.monotonic() - start, 2), "rank": rank, **metrics}
            records.append(record)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if log_file is not None and (step % cfg.log_every == 0 or step == cfg.steps):
                log_file.write(json.dumps(record) + "\n")
                log_file.flush()
            # Rank 0's clock decides stopping and checkpointing, so every rank takes the same branch.
            now = time.monotonic()
            flags = torch.tensor([int(bool(cfg.minutes) and now - start >= cfg.minutes * 60),
                                  int(now - last_checkpoint >= cfg.checkpoint_every_s)])
            if world > 1:
                dist.broadcast(flags, 0)
            stop = bool(flags[0])
            if flags[1] or stop or step == cfg.steps:
                _save(checkpoint, model, ema, optimizer, step, rng, world, cfg, extra_state, rank,
                      loss_fn.state_dict() if hasattr(loss_fn, "state_dict") else {})
                last_checkpoint = now
            if stop:
                break
    finally:
        if bar is not None:
            bar.close()
        if log_file is not None:
            log_file.close()
    return model, ema, records


def _save(path: Path, model, ema, optimizer, step, rng, world, cfg, extra_state, rank, loss_state: dict) -> None:
    states = [rng.get_state()]
    if world > 1:
        gathered = [None] * world
        dist.all_gather_object(gathered, rng.get_state())
        states = gathered
    if rank != 0:
        return
    tmp = path.with_suffix(".tmp")
    torch.save({
        "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
        "step": step, "rng": states, "model_config": model.config.to_dict(), "loop": asdict(cfg),
        "extra": extra_state or {}, "loss_state": loss_state,
    }, tmp)
    os.replace(tmp, path)


def build_model(config: ModelConfig, init: str | Path | None = None, seed: int = 0) -> WorldModel:
    """A fresh model (seeded, so every rank starts equal) or one loaded from roam weights `init`."""
    if init is not None:
        from train.embedded import load_weights

        return load_weights(init)
    torch.manual_seed(seed)
    return WorldModel(config)
