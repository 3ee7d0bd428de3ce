"""Training data on disk: sim clips rendered once, encoded once to VAE latents with their camera tensors.

    data/clips/<split>/<scene>_<clip>.npz        frames uint8 [F, H, W, 3], world_T_cams [F, 4, 4], K [3, 3]
    data/latents/<vae tag>/<split>/<scene>_<clip>.pt
        {"latents": [C, T, h, w] f16, "camera_conditions": [T, 20] f32, "chunk_plucker": [6s, T, h, w] f16}

The VAE tag is a hash of the VAE weights file, so latents of a different autoencoder never mix.
Training reads only the latent files (`LatentClips`), which keeps a CPU step to the transformer alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from controls.camera import intrinsics_vec4, prepare_camera
# Training writes the tag and loading picks the VAE by it: one definition, in model.release.
from model.release import vae_tag  # noqa: F401  (train.data.vae_tag is what the training commands use)


def clip_name(scene_seed: int, clip_seed: int) -> str:
    return f"{scene_seed:07d}_{clip_seed:04d}"


def render_clip_file(out_dir: Path, split: str, index: int, n_frames: int, size: int, clips_per_scene: int = 2,
                     speed: float = 1.0) -> Path:
    """Render clip `index` of `split` (scene index // clips_per_scene) to an npz; skip if it exists.

    `speed` retimes the walk (`sim.clips.sample_trajectory`, 0 = standing); a clip at speed != 1 is named
    `<scene>_<clip>_v<speed>`, so it sits beside the clip of the same walk at full speed."""
    from sim.clips import ClipDataset, check_speed, sample_clip

    speed = check_speed(speed)
    scene_seed = ClipDataset.scene_seed(split, index // clips_per_scene)
    clip_seed = index % clips_per_scene
    name = clip_name(scene_seed, clip_seed) + ("" if speed == 1.0 else f"_v{speed:g}")
    path = out_dir / split / f"{name}.npz"
    if path.exists():
        return path
    clip = sample_clip(scene_seed, clip_seed, n_frames, size, size, speed=speed)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, frames=clip.frames, world_T_cams=clip.world_T_cams, K=clip.K)
    os.replace(tmp, path)
    return path


def encode_clip(vae, frames: np.ndarray, world_T_cams: np.ndarray, K: np.ndarray) -> dict[str, torch.Tensor]:
    """frames uint8 [F, H, W, 3] + poses -> latents [C, T, h, w] and camera tensors (see module docstring)."""
    height, width = frames.shape[1:3]
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1.0  # [1, 3, F, H, W]
    with torch.no_grad():
        latents = vae.encode(video)[0]  # [C, T, h, w]
    stride = (vae.temporal_stride, vae.spatial_stride, vae.spatial_stride)
    cam = prepare_camera(world_T_cams, intrinsics_vec4(K), target_size=(height, width), vae_stride=stride)
    return {
        "latents": latents.to(torch.float16),
        "camera_conditions": cam["camera_conditions"].float(),
        "chunk_plucker": cam["chunk_plucker"].to(torch.float16),
    }


def encode_clip_file(vae, clip_path: Path, out_path: Path) -> Path:
    if out_path.exists():
        return out_path
    with np.load(clip_path) as f:
        item = encode_clip(vae, f["frames"], f["world_T_cams"], f["K"])
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_suffix(".tmp")
    torch.save(item, tmp)
    os.replace(tmp, out_path)
    return out_path


class LatentClips:
    """The encoded clips of one directory, stacked in memory. `refresh()` picks up files written since."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        self.names: list[str] = []
        self.latents: list[torch.Tensor] = []
        self.cameras: list[torch.Tensor] = []
        self.pluckers: list[torch.Tensor] = []
        self.refresh()

    def refresh(self) -> int:
        """Load files not yet loaded; returns the number of clips."""
        known = set(self.names)
        for path in sorted(self.directory.glob("*.pt")):
            if path.stem in known:
                continue
            item = torch.load(path, map_location="cpu", weights_only=True)
            if self.latents and item["latents"].shape != self.latents[0].shape:
                raise ValueError(f"{path}: latents {tuple(item['latents'].shape)} differ from the others' "
                                 f"{tuple(self.latents[0].shape)}")
            self.names.append(path.stem)
            self.latents.append(item["latents"])
            self.cameras.append(item["camera_conditions"])
            self.pluckers.append(item["chunk_plucker"])
        return len(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def batch(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """float32 latents [B, C, T, h, w], camera_conditions [B, T, 20], chunk_plucker [B, 6s, T, h, w]."""
        return {
            "latents": torch.stack([self.latents[i] for i in indices]).float(),
            "camera_conditions": torch.stack([self.cameras[i] for i in indices]).float(),
            "chunk_plucker": torch.stack([self.pluckers[i] for i in indices]).float(),
        }


def crop_batch(batch: dict[str, torch.Tensor], size: int, frames: int | None, rng: torch.Generator) -> dict[str, torch.Tensor]:
    """A random `size`² window of the latent grid (one per sample) and the first `frames` latents.

    Cropping an image moves the principal point: cx, cy (columns 18, 19 of camera_conditions, in latent
    cells) shift by the window's offset; the Plücker rays of the kept cells are unchanged.
    """
    latents = batch["latents"]
    b, _, t, h, w = latents.shape
    frames = t if frames is None else frames
    if not (1 <= size <= min(h, w)) or not 1 <= frames <= t:
        raise ValueError(f"crop {size}² × {frames} frames does not fit latents of {h}×{w} × {t}")
    oy = torch.randint(h - size + 1, (b,), generator=rng).tolist()
    ox = torch.randint(w - size + 1, (b,), generator=rng).tolist()
    out = {
        "latents": torch.stack([latents[i, :, :frames, y:y + size, x:x + size] for i, (y, x) in enumerate(zip(oy, ox))]),
        "chunk_plucker": torch.stack([batch["chunk_plucker"][i, :, :frames, y:y + size, x:x + size]
                                      for i, (y, x) in enumerate(zip(oy, ox))]),
    }
    camera = batch["camera_conditions"][:, :frames].clone()
    camera[:, :, 18] -= torch.tensor(ox, dtype=camera.dtype)[:, None]
    camera[:, :, 19] -= torch.tensor(oy, dtype=camera.dtype)[:, None]
    out["camera_conditions"] = camera
    return out
