"""Training recipe for the tiny causal video autoencoder, on clips of the procedural world.

    python -m train.vae --out model/vae/weights/tiny_vae.safetensors --minutes 60
    python -m train.vae --compare-shapes    # linear-bottleneck PSNR of the candidate latent shapes
    python -m train.vae --eval-weights [PATH]   # PSNR of saved weights on eval-split clips

Recipe: clips of `clip_frames` frames at `resolution`² rendered by `sim.clips` from training-split
scenes fill a replay pool (a fresh clip replaces an old one every `fresh_every` steps, so rendering
costs little); each step takes random `crop`² windows with random horizontal flips. The linear path
of the model (pixels of a latent <-> latent) is initialised by PCA of the pool, so training starts
from the best linear autoencoder instead of noise: on a CPU hour that head start is most of the
result. The loss is L1 + MSE + an L1 on image gradients (edges), with small relative Gaussian noise
added to the latents so the decoder tolerates the imperfect latents a diffusion model produces. Adam
(the PCA-initialised path at a lower rate), warm-up then cosine decay over the time budget.
`--init-from` starts from saved weights instead (how the shipped post-filter was trained on top of
the first run; docs/vae.md). Every `checkpoint_every_s` the run directory gets a resumable checkpoint; every
`eval_every_s` the PSNR on fixed eval-split clips at full resolution is logged. At the end the latent
mean/std per channel are measured on training clips, stored as buffers, and the weights saved.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from model.vae import TinyVAE, TinyVAEConfig, save_tiny_vae

log = logging.getLogger("train.vae")

# (split, index, n_frames, size, clips_per_scene) -> uint8 frames [F, H, W, 3]
ClipFn = Callable[[str, int, int, int, int], torch.Tensor]


@dataclass(frozen=True)
class VAETrainConfig:
    out: str = "model/vae/weights/tiny_vae.safetensors"
    run_dir: str = "runs/vae"
    minutes: float = 60.0
    model: TinyVAEConfig = field(default_factory=TinyVAEConfig)
    resolution: int = 128
    clip_frames: int = 9
    crop: int = 64
    batch_size: int = 4
    pool_size: int = 128
    fresh_every: int = 2
    clips_per_scene: int = 8
    lr: float = 1e-3
    linear_lr: float = 1e-4
    pca_init: bool = True
    init_from: str | None = None
    warmup_steps: int = 200
    mse_weight: float = 1.0
    edge_weight: float = 0.5
    latent_noise: float = 0.02
    eval_clips: int = 4
    eval_frames: int = 17
    eval_every_s: float = 300.0
    checkpoint_every_s: float = 120.0
    stats_clips: int = 32
    threads: int = 1
    seed: int = 0
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        m = self.model
        if self.minutes <= 0:
            raise ValueError(f"minutes must be > 0, got {self.minutes}")
        if (self.clip_frames - 1) % m.temporal_stride or self.clip_frames < 1:
            raise ValueError(f"clip_frames={self.clip_frames} must be {m.temporal_stride}·k + 1")
        if (self.eval_frames - 1) % m.temporal_stride or self.eval_frames < 1:
            raise ValueError(f"eval_frames={self.eval_frames} must be {m.temporal_stride}·k + 1")
        if self.resolution % m.spatial_stride or self.crop % m.spatial_stride or not 0 < self.crop <= self.resolution:
            raise ValueError(
                f"resolution={self.resolution} and crop={self.crop} must be multiples of spatial stride {m.spatial_stride}, crop <= resolution"
            )
        if self.batch_size < 1 or self.pool_size < self.batch_size or self.fresh_every < 1 or self.clips_per_scene < 1:
            raise ValueError(
                f"need 1 <= batch_size ({self.batch_size}) <= pool_size ({self.pool_size}), fresh_every ({self.fresh_every}) >= 1, "
                f"clips_per_scene ({self.clips_per_scene}) >= 1"
            )


def sim_clip(split: str, index: int, n_frames: int, size: int, clips_per_scene: int = 1) -> torch.Tensor:
    """Clip `index` of the sim's `split`: scene index // clips_per_scene, clip seed index; uint8 [F, H, W, 3]."""
    from sim.clips import ClipDataset, sample_clip

    scene_seed = ClipDataset.scene_seed(split, index // clips_per_scene)
    clip = sample_clip(scene_seed, index, n_frames, size, size, scene=_scene(scene_seed))
    return torch.as_tensor(clip.frames)


@functools.lru_cache(maxsize=4)
def _scene(seed: int):
    from sim.world import Scene

    return Scene.from_seed(seed)


def to_video(frames: torch.Tensor) -> torch.Tensor:
    """uint8 [..., F, H, W, 3] -> float [..., 3, F, H, W] in [-1, 1]."""
    x = frames.float().div(127.5).sub(1.0)
    return x.movedim(-1, -4)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of videos in [-1, 1] (peak-to-peak 2)."""
    mse = (a.float().clamp(-1, 1) - b.float()).pow(2).mean().item()
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def reconstruction_loss(vae: TinyVAE, video: torch.Tensor, cfg: VAETrainConfig) -> tuple[torch.Tensor, dict[str, float]]:
    e = vae.encode_raw(video)  # [B, C, T, h, w]
    if cfg.latent_noise > 0:
        scale = e.detach().std(dim=(0, 2, 3, 4), keepdim=True)
        e = e + cfg.latent_noise * scale * torch.randn_like(e)
    recon = vae.decode_raw(e)
    l1 = (recon - video).abs().mean()
    mse = (recon - video).pow(2).mean()
    edge = sum((recon.diff(dim=d) - video.diff(dim=d)).abs().mean() for d in (-1, -2))
    loss = l1 + cfg.mse_weight * mse + cfg.edge_weight * edge
    return loss, {"l1": round(l1.detach().item(), 5), "mse": round(mse.detach().item(), 6), "edge": round(edge.detach().item(), 5)}


@torch.no_grad()
def evaluate(vae: TinyVAE, clips: list[torch.Tensor]) -> float:
    """Mean PSNR (dB) of whole-clip reconstructions, latents normalised or not (the round trip is the same)."""
    vae.eval()
    scores = [psnr(vae.decode_raw(vae.encode_raw(to_video(c)[None])), to_video(c)[None]) for c in clips]
    vae.train()
    return sum(scores) / len(scores)


@torch.no_grad()
def measure_latent_stats(vae: TinyVAE, clips: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of unnormalised latents over clips."""
    vae.eval()
    e = torch.cat([vae.encode_raw(to_video(c)[None]).movedim(1, -1).reshape(-1, vae.latent_channels) for c in clips])
    return e.mean(0), e.std(0).clamp_min(1e-6)


@torch.no_grad()
def init_linear_path(vae: TinyVAE, clips: list[torch.Tensor]) -> None:
    """Set the linear path to the PCA of the clips' latent pixel groups (whitened: unit-std latents).

    Each latent sees a group of temporal_stride frames × spatial_stride² pixels × 3 colours (frame 0's
    group is frame 0 repeated); the encoder's skip projects a group onto the top latent_channels
    principal directions divided by their std, the decoder's skip maps back and adds the mean.
    """
    from model.vae.tiny_vae import _frames_from_2d, _frames_to_2d, _group_frames

    groups = []
    for clip in clips:
        video = to_video(clip)[None]  # [1, 3, F, H, W]
        pixels = _frames_from_2d(F.pixel_unshuffle(_frames_to_2d(video), vae.spatial_stride), 1)
        g = _group_frames(pixels, vae.temporal_stride)  # [T, D, h, w]
        groups.append(g.permute(0, 2, 3, 1).reshape(-1, g.shape[1]))
    x = torch.cat(groups).double()  # [N, D]
    c = vae.latent_channels
    if x.shape[0] <= c:
        raise ValueError(f"PCA needs more than {c} pixel groups, got {x.shape[0]}")
    mean = x.mean(0)
    _, sv, vt = torch.linalg.svd(x - mean, full_matrices=False)
    basis, std = vt[:c], sv[:c] / math.sqrt(x.shape[0] - 1)  # [C, D], [C]
    enc, dec = vae.encoder.skip, vae.decoder.skip
    enc.weight.copy_((basis / std[:, None])[:, :, None, None])
    enc.bias.copy_(-(basis @ mean) / std)
    dec.weight.copy_((basis.T * std)[:, :, None, None])
    dec.bias.copy_(mean)


@torch.no_grad()
def evaluate_weights(path: str | Path | None = None, n_clips: int = 8, n_frames: int = 17, resolution: int = 128,
                     clip_fn: ClipFn | None = None) -> dict[str, float]:
    """PSNR (dB) of saved weights on the first `n_clips` eval-split clips: whole clips, frame 0 (which
    its latent encodes alone) and the later frames (stride frames per latent)."""
    from model.vae import load_tiny_vae

    clip_fn = clip_fn or sim_clip
    vae = load_tiny_vae(path)
    whole, first, later = [], [], []
    for i in range(n_clips):
        video = to_video(clip_fn("eval", i, n_frames, resolution, 1))[None]
        recon = vae.decode(vae.encode(video))
        whole.append(psnr(recon, video))
        first.append(psnr(recon[:, :, :1], video[:, :, :1]))
        later.append(psnr(recon[:, :, 1:], video[:, :, 1:]))
    mean = lambda xs: round(sum(xs) / len(xs), 2)  # noqa: E731
    return {"clips": n_clips, "frames": n_frames, "resolution": resolution, "psnr_db": mean(whole), "frame0_psnr_db": mean(first),
            "later_frames_psnr_db": mean(later), "min_clip_psnr_db": round(min(whole), 2), "max_clip_psnr_db": round(max(whole), 2)}


SHAPE_CANDIDATES: list[tuple[int, int, int, int]] = [
    # (spatial_stride, temporal_stride, latent_channels, resolution)
    (8, 4, 16, 128),
    (8, 4, 32, 128),
    (8, 8, 32, 128),
    (16, 4, 32, 256),
]


@torch.no_grad()
def compare_latent_shapes(n_train: int = 24, n_eval: int = 4, n_frames: int = 17, clip_fn: ClipFn | None = None) -> list[dict]:
    """Eval-split PSNR of the PCA-initialised linear path alone, for each candidate latent shape.

    This is the information bottleneck of a shape: what its best linear autoencoder keeps (the trained
    network adds to it). PCA is fitted on `n_train` training clips, scored on `n_eval` eval clips.
    """
    clip_fn = clip_fn or sim_clip
    rows = []
    for spatial, temporal, channels, resolution in SHAPE_CANDIDATES:
        widths = (8,) * int(math.log2(spatial))
        vae = TinyVAE(TinyVAEConfig(latent_channels=channels, spatial_stride=spatial, temporal_stride=temporal, widths=widths))
        train_clips = [clip_fn("train", i, n_frames, resolution, 8) for i in range(n_train)]
        eval_clips = [clip_fn("eval", i, n_frames, resolution, 1) for i in range(n_eval)]
        init_linear_path(vae, train_clips)
        rows.append({
            "spatial_stride": spatial, "temporal_stride": temporal, "latent_channels": channels, "resolution": resolution,
            "tokens_per_latent_frame": (resolution // spatial) ** 2, "linear_psnr_db": round(evaluate(vae, eval_clips), 2),
        })
        log.info("%s", rows[-1])
    return rows


def _lr(cfg: VAETrainConfig, step: int, fraction: float) -> float:
    warm = min(1.0, (step + 1) / cfg.warmup_steps)
    return cfg.lr * warm * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(fraction, 1.0))))


def _random_batch(pool: list[torch.Tensor], cfg: VAETrainConfig, rng: random.Random) -> torch.Tensor:
    videos = []
    for clip in rng.sample(pool, cfg.batch_size):
        y = rng.randrange(cfg.resolution - cfg.crop + 1)
        x = rng.randrange(cfg.resolution - cfg.crop + 1)
        v = clip[:, y : y + cfg.crop, x : x + cfg.crop]
        if rng.random() < 0.5:
            v = v.flip(2)
        videos.append(to_video(v))
    return torch.stack(videos)  # [B, 3, F, crop, crop]


def train_vae(cfg: VAETrainConfig, clip_fn: ClipFn = sim_clip) -> Path:
    """Train for cfg.minutes (resuming from cfg.run_dir if a checkpoint is there); returns the weights path."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    run_dir = Path(cfg.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _log_to(run_dir / "train.log")
    ckpt_path = run_dir / "checkpoint.pt"
    vae = TinyVAE(cfg.model)
    linear = [p for name, p in vae.named_parameters() if name.split(".")[1] == "skip"]
    deep = [p for name, p in vae.named_parameters() if name.split(".")[1] != "skip"]
    opt = torch.optim.Adam([{"params": linear, "base_lr": cfg.linear_lr}, {"params": deep, "base_lr": cfg.lr}], lr=cfg.lr)
    resumed = False
    step, elapsed, next_clip = 0, 0.0, 0
    rng = random.Random(cfg.seed)
    if cfg.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, weights_only=False)
        if ckpt["model_config"] != cfg.model.to_dict():
            raise ValueError(f"{ckpt_path} was made for model {ckpt['model_config']}, not {cfg.model.to_dict()}")
        vae.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        step, elapsed, next_clip = ckpt["step"], ckpt["elapsed"], ckpt["next_clip"]
        rng.setstate(ckpt["rng"])
        resumed = True
        log.info("resumed from %s at step %d (%.1f min)", ckpt_path, step, elapsed / 60)
    n_params = sum(p.numel() for p in vae.parameters())
    log.info("config %s; %.2fM parameters", json.dumps(asdict(cfg)), n_params / 1e6)

    eval_set = [clip_fn("eval", i, cfg.eval_frames, cfg.resolution, 1) for i in range(cfg.eval_clips)]
    pool = []
    for _ in range(cfg.pool_size):
        pool.append(clip_fn("train", next_clip, cfg.clip_frames, cfg.resolution, cfg.clips_per_scene))
        next_clip += 1
    if cfg.init_from is not None and not resumed:
        _init_from(vae, cfg.init_from)
        log.info("initialised from %s: eval PSNR %.2f dB", cfg.init_from, evaluate(vae, eval_set))
    elif cfg.pca_init and not resumed:
        init_linear_path(vae, pool)
        log.info("linear path initialised by PCA of %d clips: eval PSNR %.2f dB", len(pool), evaluate(vae, eval_set))
    budget = cfg.minutes * 60
    last_ckpt = last_eval = time.perf_counter()
    started = time.perf_counter() - elapsed
    bar = _progress(cfg, budget, elapsed)
    vae.train()
    while elapsed < budget:
        if step % cfg.fresh_every == 0:
            pool[rng.randrange(cfg.pool_size)] = clip_fn("train", next_clip, cfg.clip_frames, cfg.resolution, cfg.clips_per_scene)
            next_clip += 1
        lr = _lr(cfg, step, elapsed / budget)
        for group in opt.param_groups:
            group["lr"] = lr * group["base_lr"] / cfg.lr
        loss, parts = reconstruction_loss(vae, _random_batch(pool, cfg, rng), cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        now = time.perf_counter()
        if bar is not None:
            bar.update(now - started - elapsed)
            bar.set_postfix(step=step, loss=f"{loss.detach().item():.4f}", lr=f"{lr:.1e}")
        elapsed = now - started
        if step % 50 == 0:
            log.info("step %d %.1f min loss %.4f %s lr %.2e", step, elapsed / 60, loss.detach().item(), parts, lr)
        if now - last_eval >= cfg.eval_every_s:
            log.info("step %d eval PSNR %.2f dB", step, evaluate(vae, eval_set))
            last_eval = time.perf_counter()
        if now - last_ckpt >= cfg.checkpoint_every_s:
            _save_checkpoint(ckpt_path, vae, opt, cfg, step, elapsed, next_clip, rng)
            last_ckpt = time.perf_counter()
    if bar is not None:
        bar.close()
    _save_checkpoint(ckpt_path, vae, opt, cfg, step, elapsed, next_clip, rng)

    eval_psnr = evaluate(vae, eval_set)
    stats_set = [clip_fn("train", next_clip + i, cfg.eval_frames, cfg.resolution, cfg.clips_per_scene) for i in range(cfg.stats_clips)]
    mean, std = measure_latent_stats(vae, stats_set)
    vae.latents_mean.copy_(mean)
    vae.latents_std.copy_(std)
    out = save_tiny_vae(
        vae.eval(),
        cfg.out,
        {"train_steps": str(step), "train_minutes": f"{elapsed / 60:.1f}", "eval_psnr_db": f"{eval_psnr:.2f}", "resolution": str(cfg.resolution)},
    )
    log.info("done: %d steps, %.1f min, eval PSNR %.2f dB, weights %s", step, elapsed / 60, eval_psnr, out)
    return out


def _init_from(vae: TinyVAE, path: str) -> None:
    """Start from saved weights; only the decoder's post-filter (absent there) may be new."""
    from safetensors.torch import load_file

    state = load_file(path)
    result = vae.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
    new = [k for k in result.missing_keys if not k.startswith("decoder.refine.")]
    if new or result.unexpected_keys:
        raise ValueError(f"{path} does not fit this model: missing {new}, unexpected {result.unexpected_keys}")


def _save_checkpoint(path: Path, vae, opt, cfg, step, elapsed, next_clip, rng) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": vae.state_dict(),
            "opt": opt.state_dict(),
            "model_config": cfg.model.to_dict(),
            "step": step,
            "elapsed": elapsed,
            "next_clip": next_clip,
            "rng": rng.getstate(),
        },
        tmp,
    )
    tmp.replace(path)


def _progress(cfg: VAETrainConfig, budget: float, elapsed: float):
    if not cfg.progress:
        return None
    from tqdm import tqdm

    return tqdm(total=round(budget), initial=round(elapsed), unit="s", desc="train vae", mininterval=5)


def _log_to(path: Path) -> None:
    """Send this module's log to `path` (only: a previous run's file handler is closed)."""
    log.setLevel(logging.INFO)
    for handler in [h for h in log.handlers if isinstance(h, logging.FileHandler)]:
        log.removeHandler(handler)
        handler.close()
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
    log.addHandler(handler)


def parse_args(argv: list[str] | None = None) -> VAETrainConfig:
    d = VAETrainConfig()
    m = d.model
    p = argparse.ArgumentParser(prog="python -m train.vae", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=d.out)
    p.add_argument("--run-dir", default=d.run_dir)
    p.add_argument("--minutes", type=float, default=d.minutes)
    p.add_argument("--latent-channels", type=int, default=m.latent_channels)
    p.add_argument("--spatial-stride", type=int, default=m.spatial_stride)
    p.add_argument("--temporal-stride", type=int, default=m.temporal_stride)
    p.add_argument("--widths", default=",".join(map(str, m.widths)), help="comma-separated channels per 2D stage")
    p.add_argument("--temporal-blocks", type=int, default=m.temporal_blocks)
    p.add_argument("--refine-width", type=int, default=m.refine_width, help="decoder post-filter width (0: none)")
    p.add_argument("--init-from", default=None, help="start from these TinyVAE weights instead of PCA")
    p.add_argument("--resolution", type=int, default=d.resolution)
    p.add_argument("--clip-frames", type=int, default=d.clip_frames)
    p.add_argument("--crop", type=int, default=d.crop)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--latent-noise", type=float, default=d.latent_noise)
    p.add_argument("--eval-every-s", type=float, default=d.eval_every_s)
    p.add_argument("--threads", type=int, default=d.threads)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    a = p.parse_args(argv)
    model = TinyVAEConfig(
        latent_channels=a.latent_channels,
        spatial_stride=a.spatial_stride,
        temporal_stride=a.temporal_stride,
        widths=tuple(int(w) for w in a.widths.split(",")),
        temporal_blocks=a.temporal_blocks,
        refine_width=a.refine_width,
    )
    return VAETrainConfig(
        out=a.out, run_dir=a.run_dir, minutes=a.minutes, model=model, resolution=a.resolution, clip_frames=a.clip_frames,
        crop=a.crop, batch_size=a.batch_size, lr=a.lr, latent_noise=a.latent_noise, eval_every_s=a.eval_every_s,
        threads=a.threads, seed=a.seed, resume=not a.no_resume, progress=not a.no_progress, init_from=a.init_from,
    )


if __name__ == "__main__":
    import sys

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if sys.argv[1:] == ["--compare-shapes"]:
        torch.set_num_threads(1)
        for row in compare_latent_shapes():
            print(json.dumps(row))
    elif sys.argv[1:2] == ["--eval-weights"]:
        torch.set_num_threads(1)
        print(json.dumps(evaluate_weights(*sys.argv[2:3])))
    else:
        train_vae(parse_args())
