"""Train the anchor's depth head (model.anchor_depth) on the sim's true depth.

    python run.py train depth-head --init W --out W2 [--clips 240] [--minutes 15]

`prepare_depth_set` renders `clips` random walks of training-split scenes (scenes the DiT's data never
used: clip i is scene DEPTH_FIRST_SCENE + i), encodes them with the TinyVAE and keeps, for every latent
frame, the latent [C, h, w], its camera row [20] and the mean inverse depth of each latent pixel's
8×8 cell [h, w] at that latent's camera frame. `train_depth_head` fits the head alone (the DiT is
frozen and unused) with an L1 loss on inverse depth, then writes W2 = W with the head's weights.
The sets are cached in `--data`/depth/<vae tag>/ (never committed).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import torch

# the first training-split scene of the depth set; the DiT's clips used scenes below 4 400
DEPTH_FIRST_SCENE = 20_000


def encode_depth_clip(vae, scene_seed: int, clip_seed: int, n_frames: int, size: int) -> dict[str, torch.Tensor]:
    """One walk -> {"latents" [T, C, h, w] f16, "camera_conditions" [T, 20] f32, "inverse_depth" [T, h, w] f32}."""
    from model.anchor_depth import inverse_depth_targets
    from sim.clips import sample_clip
    from train.data import encode_clip

    clip = sample_clip(scene_seed, clip_seed, n_frames, size, size)
    item = encode_clip(vae, clip.frames, clip.world_T_cams, clip.K)
    frames = np.arange(item["latents"].shape[1]) * vae.temporal_stride  # latent i has the camera of frame t·i
    inverse = inverse_depth_targets(torch.from_numpy(clip.depth[frames]), vae.spatial_stride)
    return {"latents": item["latents"].transpose(0, 1).contiguous(), "camera_conditions": item["camera_conditions"],
            "inverse_depth": inverse.float()}


def prepare_depth_set(vae, out_dir: Path, clips: int, n_frames: int, size: int, log=print) -> list[Path]:
    """Render and encode `clips` walks into out_dir (one .pt each, skipped when present); returns their paths."""
    from sim.clips import ClipDataset

    out_dir.mkdir(parents=True, exist_ok=True)
    paths, start = [], time.monotonic()
    for i in range(clips):
        scene_seed = ClipDataset.scene_seed("train", DEPTH_FIRST_SCENE + i)
        path = out_dir / f"{scene_seed:07d}.pt"
        if not path.exists():
            with torch.no_grad():
                item = encode_depth_clip(vae, scene_seed, 0, n_frames, size)
            tmp = path.with_suffix(".tmp")
            torch.save(item, tmp)
            tmp.replace(path)
        paths.append(path)
        if (i + 1) % 20 == 0:
            log(f"depth set: {i + 1}/{clips} walks ({time.monotonic() - start:.0f} s)")
    return paths


def load_depth_set(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> latents [N, C, h, w] f32, camera rows [N, 20], inverse depth [N, h, w] over every latent frame."""
    items = [torch.load(p) for p in paths]
    return (torch.cat([it["latents"] for it in items]).float(), torch.cat([it["camera_conditions"] for it in items]).float(),
            torch.cat([it["inverse_depth"] for it in items]).float())


def depth_error(head, latents: torch.Tensor, cameras: torch.Tensor, inverse_depth: torch.Tensor, batch: int = 256) -> float:
    """Mean |predicted − true| inverse depth (1/m) over the set."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, len(latents), batch):
            pred = head(latents[i:i + batch, :, None], cameras[i:i + batch, None])[:, 0]
            total += float((pred - inverse_depth[i:i + batch]).abs().sum())
    return total / inverse_depth.numel()


def train_depth_head(head, train: tuple, held_out: tuple, steps: int, minutes: float, lr: float, batch: int,
                     seed: int, log=print) -> dict:
    """Fit the head with AdamW on L1 inverse depth (cosine lr over `steps`, stopped early at `minutes`).
    Returns figures: steps run, minutes, held-out mean |error| before and after, and the same for a
    constant prediction (the training mean) as the floor to beat."""
    latents, cameras, target = train
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=1e-4)
    before = depth_error(head, *held_out)
    constant = float((held_out[2] - target.mean()).abs().mean())
    start, step = time.monotonic(), 0
    head.train()
    while step < steps and (minutes <= 0 or time.monotonic() - start < minutes * 60):
        for group in optimiser.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        index = torch.randint(0, len(latents), (batch,), generator=generator)
        pred = head(latents[index, :, None], cameras[index, None])[:, 0]
        loss = (pred - target[index]).abs().mean()
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        step += 1
        if step % 200 == 0:
            log(f"depth head step {step}: train L1 {loss.item():.4f} 1/m")
    head.eval()
    after = depth_error(head, *held_out)
    return {"steps": step, "minutes": round((time.monotonic() - start) / 60, 1), "held_out_l1_before": round(before, 4),
            "held_out_l1_after": round(after, 4), "held_out_l1_constant": round(constant, 4)}


def run(args) -> Path:
    """`train depth-head`: the set, the fit, and --out = --init with the depth copy (its head trained,
    c_depth = --copy-depth-c) and a record of the fit in its json."""
    from train.embedded import read_info, save_weights
    from train.grow import add_anchor_depth_copy
    from train.train_cmd import _load_init, _vae_path
    from model.release import vae_tag
    from model.vae import load_tiny_vae

    if args.init is None or args.out is None:
        raise ValueError("train depth-head needs --init (the weights to add the depth copy to) and --out")
    init, out = Path(args.init), Path(args.out)
    if out.resolve() == init.resolve():
        raise ValueError(f"train depth-head would overwrite its --init {init}: pass another --out")
    torch.manual_seed(args.seed)
    vae_path = _vae_path(args)
    folder = Path(args.data) / "depth" / vae_tag(vae_path)
    paths = prepare_depth_set(load_tiny_vae(vae_path), folder, args.depth_clips, args.depth_frames, args.size)
    held = max(1, len(paths) // 10)
    train, held_out = load_depth_set(paths[held:]), load_depth_set(paths[:held])
    model = add_anchor_depth_copy(_load_init(init), args.copy_depth_c)
    figures = train_depth_head(model.anchor_depth, train, held_out, args.depth_steps, args.depth_minutes, args.depth_lr,
                               args.depth_batch, args.seed)
    print(f"depth head: {json.dumps(figures)}")
    info = {k: v for k, v in read_info(init).items() if k != "model"} if init.suffix != ".pt" else {}
    info["depth_head"] = {
        **figures, "walks": len(paths), "held_out_walks": held, "first_scene": DEPTH_FIRST_SCENE, "copy_depth_c": args.copy_depth_c,
        "command": (f"python run.py train depth-head --init {init} --out {out} --depth-clips {args.depth_clips} "
                    f"--depth-frames {args.depth_frames} --depth-steps {args.depth_steps} --depth-minutes {args.depth_minutes:g} "
                    f"--depth-lr {args.depth_lr:g} --depth-batch {args.depth_batch} --copy-depth-c {args.copy_depth_c:g} "
                    f"--seed {args.seed} --threads {args.threads}"),
    }
    return save_weights(model.eval(), out, info)
