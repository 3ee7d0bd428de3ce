"""Refine the TinyVAE decoder on the world model's own rollouts: the embedded model's decode-side refiner.

SANA-WM's official pipeline refines long videos with a second stage. The embedded model's latents drift
off the autoencoder's manifold as a walk goes on (blurred, with colours that wander), and the TinyVAE's
decoder, trained on clean latents only, paints such latents as a mosaic of 8×8 cells: its linear path
maps each latent cell to its own 8×8 pixels. The sim gives the true frames of every generated one, so
the decoder is fine-tuned on pairs (the model's streamed latents, the frames the camera really saw),
mixed with clean latents of the same clips so that the round trip of real frames (the start image)
stays as it was. It costs nothing at run time: same network, new weights.

    rollouts   the world model streams each encoded training walk from its image with its live sampler
               (`train.recipes.teacher_rollout`), as the app does -> run_dir/rollouts/<clip>.pt
    decoder    fine-tune the decoder (encoder and latent statistics frozen, so the latent space is
               unchanged) on windows of those latents against the rendered frames: L1 on pixels plus
               L1 on their spatial gradients (edges where the truth has them)

The result is a whole TinyVAE file whose metadata names the latent space it decodes (`latent_space`,
the `vae_tag` of the VAE it was refined from): `model.release.embedded_vae_path` takes it for the
model trained in that space.

The decoder is also the one per-frame cost a streaming walk pays besides the world model, so it can
be made narrower (`distil_decoder`): a decoder of smaller `decoder_widths` beside the same encoder,
trained to give the frames the wide one gives for the same latents. It starts from the wide decoder's
linear path (the 1×1 map from a latent to its own pixels, which carries most of the picture) and
learns the rest from the wide decoder's output on encoded walks, some of them perturbed the way the
model's drifted latents are, so it paints off-manifold latents as the wide one does too.
"""
from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

# The decoder's causal temporal receptive field in latents: temporal_blocks × (kernel − 1). A window
# decoded from a zero context after this many warm-up latents equals the streamed decode exactly.
def warmup_latents(vae) -> int:
    return vae.cfg.temporal_blocks * (vae.cfg.temporal_kernel - 1)


@torch.no_grad()
def make_rollouts(model, latents_dir: Path, out_dir: Path, sigmas, kv_window_chunks: int, sink: bool,
                  chunk_latents: int, count: int, batch_size: int = 4, seed: int = 0, progress: bool = True) -> int:
    """Stream the first `count` encoded clips of `latents_dir` with the model's live sampler; store each
    rollout's latents [C, T, h, w] (f16, frame 0 = the clip's image) as out_dir/<clip>.pt. Resumable."""
    from train.flow import chunk_layout
    from train.recipes import teacher_rollout

    names = sorted(p.stem for p in latents_dir.glob("*.pt"))[:count]
    todo = [n for n in names if not (out_dir / f"{n}.pt").exists()]
    out_dir.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    generator = torch.Generator().manual_seed(seed)
    batches = range(0, len(todo), batch_size)
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="rollouts")
    for start in batches:
        group = todo[start:start + batch_size]
        items = [torch.load(latents_dir / f"{n}.pt", weights_only=True) for n in group]
        lat = torch.stack([i["latents"] for i in items]).float()
        camera = torch.stack([i["camera_conditions"] for i in items]).float()
        plucker = torch.stack([i["chunk_plucker"] for i in items]).float()
        noise = torch.randn(lat.shape, generator=generator)
        _, own = teacher_rollout(model, lat[:, :, :1], camera, plucker, chunk_layout(lat.shape[2], chunk_latents),
                                 list(sigmas), [], noise, kv_window_chunks, sink)
        for name, latents in zip(group, own):
            tmp = out_dir / f"{name}.tmp"
            torch.save(latents.to(torch.float16).clone(), tmp)
            os.replace(tmp, out_dir / f"{name}.pt")
    return len(names)


class RolloutPairs:
    """(rollout latents, clean latents, true frames) of every clip that has a rollout, held in memory."""

    def __init__(self, rollouts_dir: Path, latents_dir: Path, clips_dir: Path):
        self.rollouts, self.clean, self.frames, self.names = [], [], [], []
        for path in sorted(Path(rollouts_dir).glob("*.pt")):
            clip = Path(clips_dir) / f"{path.stem}.npz"
            if not clip.is_file():
                raise FileNotFoundError(f"rollout {path} has no rendered clip {clip}")
            with np.load(clip) as f:
                frames = torch.from_numpy(np.ascontiguousarray(f["frames"]))  # [F, H, W, 3] uint8
            self.rollouts.append(torch.load(path, weights_only=True))
            self.clean.append(torch.load(Path(latents_dir) / path.name, weights_only=True)["latents"])
            self.frames.append(frames)
            self.names.append(path.stem)
        if not self.names:
            raise ValueError(f"no rollouts in {rollouts_dir}: run the rollouts stage first")

    def __len__(self) -> int:
        return len(self.names)


def draw_windows(pairs: RolloutPairs, batch_size: int, window: int, warmup: int, p_clean: float, stride: int,
                 rng: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Latents [B, C, warmup + window, h, w] (rollout, or clean with probability p_clean) starting `warmup`
    latents before a random latent k ≥ 1, and the true frames [B, 3, stride·window, H, W] in [-1, 1] of
    latents k … k + window − 1 (latent i ≥ 1 holds frames stride·(i−1)+1 … stride·i)."""
    latents, frames = [], []
    for _ in range(batch_size):
        i = int(torch.randint(len(pairs), (1,), generator=rng))
        total = pairs.rollouts[i].shape[1]
        k = int(torch.randint(max(1, warmup), total - window + 1, (1,), generator=rng))
        source = pairs.clean[i] if float(torch.rand((), generator=rng)) < p_clean else pairs.rollouts[i]
        latents.append(source[:, k - warmup: k + window].float())
        frames.append(pairs.frames[i][stride * (k - 1) + 1: stride * (k + window - 1) + 1])
    video = torch.stack(frames).permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0  # [B, 3, F, H, W]
    return torch.stack(latents), video


def decode_window(vae, latents: torch.Tensor, warmup: int) -> torch.Tensor:
    """Frames [B, 3, stride·(T − warmup), H, W] of latents [B, C, T, h, w] (none of them latent 0), with
    the first `warmup` latents only as causal context (not clamped: the training path)."""
    mean, std = vae._stats()
    frames, _ = vae.decoder(latents * std + mean, None, first=False)
    return frames[:, :, vae.temporal_stride * warmup:]


def refine_loss(pred: torch.Tensor, target: torch.Tensor, gradient_weight: float) -> torch.Tensor:
    """L1 on pixels plus `gradient_weight` × L1 on horizontal and vertical differences, [B, 3, F, H, W]."""
    loss = (pred - target).abs().mean()
    if gradient_weight:
        for dim in (-1, -2):
            loss = loss + gradient_weight * (pred.diff(dim=dim) - target.diff(dim=dim)).abs().mean()
    return loss


@dataclass(frozen=True)
class RefineConfig:
    run_dir: str
    steps: int = 4000
    minutes: float = 30.0
    lr: float = 2e-4
    batch_size: int = 4
    window: int = 3  # latents of loss per sample (12 frames)
    p_clean: float = 0.25
    gradient_weight: float = 1.0
    ema_decay: float = 0.99
    warmup_steps: int = 0  # read by train.trainer._lr_at, the schedule shared with the world model's stages
    checkpoint_every_s: float = 120.0
    seed: int = 0
    progress: bool = True


def refine_decoder(vae, pairs: RolloutPairs, cfg: RefineConfig):
    """Fine-tune `vae`'s decoder in place on `pairs`; returns the EMA copy. Resumes from run_dir/checkpoint.pt."""
    warmup = warmup_latents(vae)

    def loss_of(rng: torch.Generator) -> torch.Tensor:
        latents, target = draw_windows(pairs, cfg.batch_size, cfg.window, warmup, cfg.p_clean, vae.temporal_stride, rng)
        return refine_loss(decode_window(vae, latents, warmup), target, cfg.gradient_weight)

    ema, _, _ = fit_decoder(vae, loss_of, cfg, "decoder")
    return ema


def fit_decoder(vae, loss_of, cfg, desc: str, must_match: tuple[str, ...] = ()):
    """Train `vae`'s decoder in place (encoder frozen) on `loss_of(rng)`, the loss of one drawn batch, for
    `cfg.steps` or `cfg.minutes` (counted across resumes), whichever ends first: AdamW at `cfg.lr` on the
    shared cosine schedule, clipped gradients, an EMA of the decoder, a log every 10 steps and a checkpoint
    every `cfg.checkpoint_every_s` and at the end. Resumes from run_dir/checkpoint.pt; a checkpoint whose
    config differs in a `must_match` field raises ValueError. Returns (the EMA TinyVAE, steps, seconds)."""
    from train.trainer import _ema_update, _lr_at

    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    vae.train()
    vae.encoder.requires_grad_(False)
    ema = copy.deepcopy(vae).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(vae.decoder.parameters(), lr=cfg.lr, weight_decay=0.0, betas=(0.9, 0.99))
    rng = torch.Generator().manual_seed(cfg.seed)
    checkpoint = run_dir / "checkpoint.pt"
    step, seconds_before = 0, 0.0
    if checkpoint.exists():
        saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
        ours = asdict(cfg)
        for name in must_match:
            if saved["config"][name] != ours[name]:
                raise ValueError(f"{checkpoint} was made with {name}={saved['config'][name]!r}, not {ours[name]!r}: "
                                 "use another run dir")
        vae.load_state_dict(saved["vae"])
        ema.load_state_dict(saved["ema"])
        optimizer.load_state_dict(saved["optimizer"])
        step, seconds_before = int(saved["step"]), float(saved.get("seconds", 0.0))
        rng.set_state(saved["rng"])
    start = last_save = time.monotonic()
    bar = None
    if cfg.progress:
        from tqdm import tqdm

        bar = tqdm(total=cfg.steps, initial=step, desc=desc, dynamic_ncols=True)

    def elapsed() -> float:
        return seconds_before + time.monotonic() - start

    def save() -> None:
        tmp = checkpoint.with_suffix(".tmp")
        torch.save({"vae": vae.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
                    "step": step, "seconds": elapsed(), "rng": rng.get_state(), "config": asdict(cfg)}, tmp)
        os.replace(tmp, checkpoint)

    with open(run_dir / "log.jsonl", "a") as log:
        while step < cfg.steps and not (cfg.minutes and elapsed() >= cfg.minutes * 60):
            lr = _lr_at(step, cfg, elapsed())  # cosine to lr/10 over the steps or the minutes
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = loss_of(rng)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.decoder.parameters(), 1.0)
            optimizer.step()
            _ema_update(ema.decoder, vae.decoder, cfg.ema_decay)
            step += 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.3e}")
            if step % 10 == 0:
                log.write(json.dumps({"step": step, "loss": loss.item(), "lr": lr, "elapsed_s": round(elapsed(), 1)}) + "\n")
                log.flush()
            if time.monotonic() - last_save >= cfg.checkpoint_every_s:
                save()
                last_save = time.monotonic()
        save()
    if bar is not None:
        bar.close()
    return ema.eval(), step, elapsed()


@dataclass(frozen=True)
class DistilConfig:
    """How `distil_decoder` trains a narrower decoder against a wide one."""

    run_dir: str
    widths: tuple[int, ...]  # the narrow decoder's 2D stage widths (TinyVAEConfig.decoder_widths)
    steps: int = 100_000
    minutes: float = 10.0
    lr: float = 2e-3
    batch_size: int = 4
    window: int = 5  # latents per sample
    crop: int = 8  # latent cells per side of a sample (the decoder is convolutional)
    p_perturbed: float = 0.5  # share of samples with Gaussian noise added to their latents, as drifted ones have
    max_perturbation: float = 0.5  # its std on the normalised latents is drawn from U(0, max)
    held_out: int = 6  # the last walks, kept out of training and scored at the end
    ema_decay: float = 0.99
    warmup_steps: int = 0  # read by train.trainer._lr_at
    checkpoint_every_s: float = 120.0
    seed: int = 0
    progress: bool = True


def narrow_decoder(wide, widths: tuple[int, ...]):
    """A TinyVAE with `wide`'s encoder, latent statistics and decoder linear path (`decoder.skip`), and
    fresh decoder stages of `widths`: before training it decodes every latent to its linear image."""
    from dataclasses import replace

    from model.vae import TinyVAE

    narrow = TinyVAE(replace(wide.cfg, decoder_widths=tuple(widths)))
    narrow.encoder.load_state_dict(wide.encoder.state_dict())
    narrow.decoder.skip.load_state_dict(wide.decoder.skip.state_dict())
    narrow.latents_mean.copy_(wide.latents_mean)
    narrow.latents_std.copy_(wide.latents_std)
    return narrow


def draw_latent_windows(walks: list[torch.Tensor], batch_size: int, window: int, crop: int, p_perturbed: float,
                        max_perturbation: float, rng: torch.Generator) -> tuple[torch.Tensor, bool]:
    """Normalised latents [B, C, window, c, c], c = min(crop, h, w), cut from random places of random walks
    [C, T, h, w] (all of one grid), and whether they start at latent 0 (then decoded as a sequence's first chunk, else from a zero context).
    All samples of a batch share their start kind; a `p_perturbed` share get N(0, σ²) noise, σ ~ U(0, max)."""
    first = bool(float(torch.rand((), generator=rng)) < 0.1)
    out = []
    for _ in range(batch_size):
        walk = walks[int(torch.randint(len(walks), (1,), generator=rng))]
        _, total, h, w = walk.shape
        if total < window:
            raise ValueError(f"a walk of {total} latents is shorter than a window of {window}")
        crop = min(crop, h, w)
        t0 = 0 if first else int(torch.randint(total - window + 1, (1,), generator=rng))
        y0 = int(torch.randint(h - crop + 1, (1,), generator=rng))
        x0 = int(torch.randint(w - crop + 1, (1,), generator=rng))
        z = walk[:, t0:t0 + window, y0:y0 + crop, x0:x0 + crop].float()
        if float(torch.rand((), generator=rng)) < p_perturbed:
            sigma = float(torch.rand((), generator=rng)) * max_perturbation
            z = z + sigma * torch.randn(z.shape, generator=rng)
        out.append(z)
    return torch.stack(out), first


def raw_decode(vae, latents: torch.Tensor, first: bool) -> torch.Tensor:
    """Frames [B, 3, F, H, W] of normalised latents, neither seam-filtered nor clamped (what is distilled)."""
    mean, std = vae._stats()
    return vae.decoder(latents * std + mean, None, first=first)[0]


@torch.no_grad()
def decoder_fidelity(narrow, wide, walks: list[torch.Tensor], window: int = 9, perturbation: float = 0.0,
                     seed: int = 0) -> list[float]:
    """PSNR (dB, frames on [-1, 1]) of `narrow`'s decode to `wide`'s, as shown (`TinyVAE.decode`), over a
    whole-grid window from the middle of each walk, its latents perturbed by N(0, perturbation²) noise."""
    rng = torch.Generator().manual_seed(seed)
    scores = []
    for walk in walks:
        start = max(0, (walk.shape[1] - window) // 2)
        z = walk[None, :, start:start + window].float()
        z = z + perturbation * torch.randn(z.shape, generator=rng)
        error = (narrow.decode(z) - wide.decode(z)).pow(2).mean().clamp_min(1e-12)
        scores.append(float(10 * torch.log10(4.0 / error)))
    return scores


def distil_decoder(wide, walks: list[torch.Tensor], cfg: DistilConfig):
    """Train a decoder of `cfg.widths` to give `wide`'s frames for the latents of `walks` ([C, T, h, w] each,
    normalised), keeping `wide`'s encoder and latent space. Resumes from run_dir/checkpoint.pt.

    Returns (the EMA narrow TinyVAE, a report: steps, seconds, and the median PSNR to `wide` on the
    `cfg.held_out` last walks, clean and perturbed by noise of std 0.25)."""
    import statistics

    if len(walks) <= cfg.held_out:
        raise ValueError(f"need more than held_out={cfg.held_out} walks to distil a decoder, got {len(walks)}")
    train_walks, held_walks = walks[:len(walks) - cfg.held_out], walks[len(walks) - cfg.held_out:]
    wide = wide.eval().requires_grad_(False)
    narrow = narrow_decoder(wide, cfg.widths)

    def loss_of(rng: torch.Generator) -> torch.Tensor:
        latents, first = draw_latent_windows(train_walks, cfg.batch_size, cfg.window, cfg.crop, cfg.p_perturbed,
                                             cfg.max_perturbation, rng)
        with torch.no_grad():
            target = raw_decode(wide, latents, first)
        return (raw_decode(narrow, latents, first) - target).pow(2).mean()

    ema, step, seconds = fit_decoder(narrow, loss_of, cfg, "distil decoder", must_match=("widths",))
    report = {"steps": step, "seconds": round(seconds, 1),
              "held_out_walks": len(held_walks),
              "held_out_psnr_db": round(statistics.median(decoder_fidelity(ema, wide, held_walks)), 2),
              "held_out_perturbed_psnr_db": round(statistics.median(
                  decoder_fidelity(ema, wide, held_walks, perturbation=0.25)), 2)}
    return ema, report


def load_walk_latents(latents_dir: Path) -> list[torch.Tensor]:
    """The normalised latents [C, T, h, w] of every encoded walk under `latents_dir`, in name order."""
    paths = sorted(Path(latents_dir).glob("*.pt"))
    if not paths:
        raise FileNotFoundError(f"no encoded walks (*.pt) under {latents_dir}: run `python run.py train prepare` first")
    return [torch.load(path, weights_only=True)["latents"] for path in paths]
