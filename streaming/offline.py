"""Offline generation: one video from a start image and a camera trajectory, in any of SANA-WM's modes.

    video = generate_video(release, "photo.jpg", trajectory, mode="bidirectional", seconds=5.0, seed=0)
    video.frames [F, H, W, 3] uint8, video.world_T_cams [F, 4, 4], video.intrinsics [4], video.fps

Preparation (as the official pipeline): the image is resized to cover the release's frame size and
centre-cropped (`controls.camera.resize_crop_geometry`); a trajectory stored for another image size
gets the same resize-crop applied to its intrinsics (`Trajectory.resized_to`); a file that does not
store its image size (RealEstate10K's intrinsics are normalised) is read at the start image's size,
the frames it was made for, or at `trajectory_size`. Frame counts are
stride·k + 1: `seconds` snaps to the nearest such count (a preset is rolled out that long), no length
means the trajectory's own (snapped down). Frame 0 is the start image's reconstruction and has pose world_T_cams[0]; unlike the
official script, it is kept, so every frame has exactly one pose.

Modes:
- `bidirectional`: the whole clip at once, flow-Euler over `bidirectional_sigmas(steps)` (60, shift
  9.8), classifier-free guidance `cfg_scale` (5.0) against the negative prompt; latent 0 is the
  encoded image, its timestep 0, never updated.
- `chunk_causal`: the teacher's staggered diffusion-forcing schedule (`staggered_schedule`): chunks of
  `release.chunk_latents` latents (the first one has the image latent in front), chunk i starting at
  global step ⌊i·steps/num_chunks⌋, all chunks in flight denoised by one `forward_chunk_causal` over
  the chunks so far (finished chunks at t = 0).
- `distilled`: the live app's `ChunkGenerator` run as the release's profile says (`release.profile`: the
  few-step list `release.sampler_sigmas`, the official 4 steps 1000, 960, 889, 727 → 0 unless the model
  ships its own; commit pass; KV window sink + 1 recent chunk for the streaming release, 2 + sink
  otherwise; fp32 sampling and the refiner for the streaming release), driven with the trajectory's
  poses. Frame 0 is kept here too.

The first two modes decode the finished latents at the end; a causal LTX-2 decoder does it in chunks
of 8 latents through its stream decoder (the same frames, bounded memory for 60 s clips).

Without a text encoder, prompts must be empty: the DiT's null caption conditions both CFG branches,
which makes guidance the identity, so it is skipped. Errors (an unreadable image, a trajectory too
short for the requested length or longer than the model can take, an unknown mode) raise ValueError
before any model work.
"""
from __future__ import annotations

import io
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.schedulers import (
    BIDIRECTIONAL_CFG,
    BIDIRECTIONAL_SHIFT,
    BIDIRECTIONAL_STEPS,
    bidirectional_sigmas,
    euler_chunk,
    euler_step,
    guided,
    staggered_schedule,
)

logger = logging.getLogger(__name__)

MODES = ("bidirectional", "chunk_causal", "distilled")
MAX_IMAGE_PIXELS = 64_000_000
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class OfflineVideo:
    """A generated clip: frames [F, H, W, 3] uint8 with one pose each (world_T_cams [F, 4, 4], the
    trajectory's world) and the intrinsics (fx, fy, cx, cy) in pixels of the frames."""

    frames: np.ndarray
    world_T_cams: np.ndarray
    intrinsics: np.ndarray
    fps: float
    mode: str


def load_image(image: Any) -> np.ndarray:
    """A path, bytes, PIL image or uint8 [H, W, 3] array -> uint8 [H, W, 3]; ValueError if it is not an image."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3 or 0 in image.shape:
            raise ValueError(f"image array must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
        return image
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"image {str(path)!r} does not exist")
        data = path.read_bytes()
        name = str(path)
    elif isinstance(image, (bytes, bytearray)):
        data, name = bytes(image), "<bytes>"
    else:
        raise ValueError(f"image must be a path, bytes, PIL image or uint8 array, got {type(image).__name__}")
    try:
        with Image.open(io.BytesIO(data)) as probe:
            probe.verify()
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"image {name} of {img.width}x{img.height} pixels is too large")
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except UnidentifiedImageError:
        # PIL's own message names its BytesIO object, not the file.
        raise ValueError(f"{name} is not a readable image: not in any image format PIL reads") from None
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{name} is not a readable image: {error}") from None


def fit_image(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Aspect-preserving resize covering (width, height), then a centre crop -> uint8 [height, width, 3]."""
    from PIL import Image

    from controls.camera import resize_crop_geometry

    (rw, rh), (left, top) = resize_crop_geometry((image.shape[1], image.shape[0]), (width, height))
    resized = Image.fromarray(image).resize((rw, rh), Image.Resampling.BICUBIC)
    return np.asarray(resized.crop((left, top, left + width, top + height)), dtype=np.uint8).copy()


def snap_frames(seconds: float, fps: float, stride: int) -> int:
    """Frames of a clip lasting about `seconds`: the nearest stride·k + 1 with k >= 1."""
    if not (isinstance(seconds, (int, float)) and math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds must be a positive number, got {seconds!r}")
    return max(1, round((seconds * fps - 1) / stride)) * stride + 1


def _frame_count(release, trajectory, seconds: float | None, n_frames: int | None) -> int:
    stride = release.vae.temporal_stride
    if seconds is not None and n_frames is not None:
        raise ValueError("give seconds or n_frames, not both")
    if seconds is not None:
        n = snap_frames(seconds, release.fps, stride)
    elif n_frames is not None:
        if isinstance(n_frames, bool) or not isinstance(n_frames, int) or n_frames < 1 or (n_frames - 1) % stride:
            raise ValueError(f"n_frames must be {stride}·k + 1 with k >= 1 (VAE temporal stride {stride}), got {n_frames!r}")
        n = n_frames
    else:
        n = (trajectory.n_frames - 1) // stride * stride + 1
    if n < stride + 1:
        raise ValueError(f"the trajectory has {trajectory.n_frames} poses; a clip needs at least {stride + 1} "
                         f"frames (the start image and one latent of {stride})")
    if n > release.max_frames:
        raise ValueError(f"{n} frames ({n / release.fps:.1f} s at {release.fps:g} fps) is longer than the model can take: "
                         f"at most {release.max_frames} frames = {release.max_latent_frames} latents")
    if n > trajectory.n_frames:
        raise ValueError(f"the trajectory has {trajectory.n_frames} poses but {n} frames were asked for "
                         f"({n / release.fps:.2f} s at {release.fps:g} fps)")
    return n


def _text_pair(release, prompt: str, negative_prompt: str):
    """((cond, cond_mask), (uncond, uncond_mask) | None); None when both branches would be equal."""
    encoder = release.text_encoder
    if encoder is None:
        if prompt or negative_prompt:
            raise ValueError(f"a prompt was given but {release.name} has no text encoder (add a Gemma-2 folder, "
                             "e.g. text_encoder/, to the release or pass its path)")
        return release.dit.null_text(1), None
    return encoder.encode(prompt), encoder.encode_negative(negative_prompt)


def _velocity(call, x, timestep, text, uncond, cfg_scale: float, **kwargs) -> torch.Tensor:
    """One model call, guided when there is an unconditional branch and cfg_scale != 1."""
    if uncond is None or cfg_scale == 1.0:
        return call(x, timestep, text[0], text[1], **kwargs)
    hidden = torch.cat([uncond[0], text[0]])  # [2, L, C_text]
    mask = torch.cat([uncond[1], text[1]])  # [2, L]
    doubled = {k: torch.cat([v, v]) for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
    both = call(torch.cat([x, x]), torch.cat([timestep, timestep]), hidden, mask,
                **{**kwargs, **doubled})  # [2, C, T, h, w]
    v_uncond, v_cond = both.chunk(2)
    return guided(v_uncond, v_cond, cfg_scale)


def _bidirectional(release, z0, frames, camera, plucker, text, uncond, sigmas, cfg_scale, rng, progress) -> torch.Tensor:
    dit = release.dit
    _, channels, _, h, w = z0.shape
    # Latents are integrated in fp32 whatever the model's dtype (it casts its input itself).
    x = torch.randn((1, channels, frames, h, w), generator=rng).to(dit.device)  # [1, C, T, h, w]
    x[:, :, :1] = z0

    def velocity(x_t: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        return _velocity(dit, x_t, timestep, text, uncond, cfg_scale, camera_conditions=camera, chunk_plucker=plucker)

    return euler_chunk(velocity, x, sigmas, image_latent=z0, progress=progress)


def chunk_sizes_for(latents: int, chunk_latents: int) -> list[int]:
    """AR chunk sizes in latents: the image latent + chunk_latents, then chunk_latents each (the last may be short)."""
    rest = latents - 1
    sizes = [1 + min(chunk_latents, rest)]
    rest -= sizes[0] - 1
    while rest > 0:
        sizes.append(min(chunk_latents, rest))
        rest -= sizes[-1]
    return sizes


def _chunk_causal(release, z0, frames, camera, plucker, text, uncond, sigmas, cfg_scale, rng, progress) -> torch.Tensor:
    dit = release.dit
    _, channels, _, h, w = z0.shape
    x = torch.randn((1, channels, frames, h, w), generator=rng).to(dit.device)  # [1, C, T, h, w] fp32
    x[:, :, :1] = z0
    sizes = chunk_sizes_for(frames, release.chunk_latents)
    bounds = np.cumsum([0] + sizes)
    schedule = staggered_schedule(len(sizes), len(sigmas) - 1)
    sigma_now = [1.0] * len(sizes)
    for step in schedule:
        last = max(step.active)
        end = int(bounds[last + 1])
        for i, j in step.active.items():
            sigma_now[i] = sigmas[j]
        timestep = torch.zeros((1, 1, end), device=dit.device)  # [1, 1, T_prefix]
        for i in range(last + 1):
            # finished chunks sit at σ = 0: clean context for the chunks after them
            timestep[:, :, bounds[i]:bounds[i + 1]] = sigma_now[i] * 1000.0
        timestep[:, :, 0] = 0.0

        def call(xs, ts, hidden, mask, **kw):
            return dit.forward_chunk_causal(xs, ts, hidden, mask, chunk_sizes=sizes[:last + 1], **kw)

        v = _velocity(call, x[:, :, :end], timestep, text, uncond, cfg_scale,
                      camera_conditions=camera[:, :end], chunk_plucker=plucker[:, :, :end])
        for i, j in step.active.items():
            a, b = int(bounds[i]), int(bounds[i + 1])
            x[:, :, a:b] = euler_step(x[:, :, a:b], v[:, :, a:b], sigmas[j], sigmas[j + 1])
            sigma_now[i] = sigmas[j + 1]
        x[:, :, :1] = z0
        if progress is not None:
            progress(step.index + 1, len(schedule))
    return x


def _distilled(release, image, poses, intrinsics, n, seed, text, progress, prompt: str = "") -> np.ndarray:
    from model.prompts import EncodedPrompt
    from streaming.generator import ChunkGenerator, GeneratorConfig

    dit = release.dit
    profile = release.profile
    # The release's profile (KV window, fp32 sampling, refiner), but frame 0 is kept: every frame has a pose.
    config = GeneratorConfig(chunk_latents=release.chunk_latents, sigmas=release.sampler_sigmas, seed=seed,
                             kv_window_chunks=profile.kv_window_chunks, sink=profile.sink,
                             fp32_sampling=profile.fp32_sampling, warm_start=profile.warm_start)
    refiner_text = refiner_mask = None
    if release.refiner is not None:
        refiner_text, refiner_mask = release.refiner.encode_prompt(prompt)
    # The distilled model has guidance baked in: one conditional branch with the prompt.
    encoded = EncodedPrompt(prompt=prompt, text=text[0], mask=text[1], refiner_text=refiner_text, refiner_mask=refiner_mask)
    generator = ChunkGenerator(dit, release.vae, config, tuple(float(v) for v in intrinsics),
                               device=dit.device, dtype=dit.dtype, prompt=lambda: encoded, refiner=release.refiner)
    generator.start(image, poses[0])
    per_chunk = release.vae.temporal_stride * release.chunk_latents
    chunks = math.ceil((n - 1) / per_chunk)
    # Poses past the clip's end only feed frames that are dropped; the last pose is held.
    padded = np.concatenate([poses, np.repeat(poses[-1:], 1 + chunks * per_chunk - n, axis=0)])
    out, start = [], 0
    for c in range(chunks):
        count = generator.frames_for_next_chunk()
        out.append(generator.step(padded[start:start + count]))
        start += count
        if progress is not None:
            progress(c + 1, chunks)
    return np.concatenate(out)[:n]


DECODE_CHUNK_LATENTS = 8


def decode_latents(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents [1, C, T, h, w] -> video [1, 3, F, H, W]. A causal LTX-2 decoder runs chunk by chunk through
    its stream decoder (the same frames, bounded activation memory for long clips); others decode at once."""
    if not getattr(vae, "causal_decoder", False) or latents.shape[2] <= DECODE_CHUNK_LATENTS:
        return vae.decode(latents)
    decoder = vae.stream_decoder(latents.shape[0])
    parts = [decoder.decode_chunk(latents[:, :, i:i + DECODE_CHUNK_LATENTS])
             for i in range(0, latents.shape[2], DECODE_CHUNK_LATENTS)]
    return torch.cat(parts, dim=2)


def _check_size(size: Any, name: str) -> tuple[int, int]:
    """(width, height) as positive ints; ValueError naming `name` otherwise."""
    try:
        width, height = size
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be (width, height), got {size!r}") from None
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= 16384 for v in (width, height)):
        raise ValueError(f"{name} must be two integers in [1, 16384], got {size!r}")
    return width, height


def _load_trajectory(source: Any, release, n_frames: int | None = None, file_size: tuple[int, int] | None = None):
    """A trajectory source sized for the release: files keep their own image size where they store one
    (resized later); a file that does not (RealEstate10K, a bare benchmark npz) is read at `file_size`
    (width, height): the size of the frames its intrinsics describe. Presets and action strings get the
    release's size and default field of view; a preset lasts `n_frames` when given."""
    from controls.formats import ImageSizeMissing
    from controls.trajectory import PRESETS, load

    if isinstance(source, str) and source in PRESETS:
        return load(source, width=release.width, height=release.height, fps=release.fps, hfov_deg=release.hfov_deg,
                    n_frames=n_frames)
    if isinstance(source, (str, Path)) and Path(source).is_file():
        try:
            return load(source, fps=release.fps)
        except ImageSizeMissing:
            if file_size is None:
                raise
        return load(source, width=file_size[0], height=file_size[1], fps=release.fps)
    return load(source, width=release.width, height=release.height, fps=release.fps, hfov_deg=release.hfov_deg)


def generate_video(
    release,
    image: Any,
    trajectory,
    *,
    mode: str | None = None,
    seconds: float | None = None,
    n_frames: int | None = None,
    steps: int | None = None,
    seed: int = 0,
    cfg_scale: float | None = None,
    prompt: str = "",
    negative_prompt: str = "",
    progress: Progress | None = None,
    trajectory_size: tuple[int, int] | None = None,
) -> OfflineVideo:
    """Generate a clip (see the module docstring). `release` is a `model.release.Release`; `trajectory` a
    `controls.trajectory.Trajectory` or anything `controls.trajectory.load` takes (sized to the release);
    `progress(done, total)` is called after every denoising step (every chunk in distilled mode).
    `trajectory_size` (width, height): the frame size a trajectory file's intrinsics describe when the
    file does not store it (RealEstate10K's are normalised); default: the start image's size."""
    from controls.camera import prepare_camera
    from controls.trajectory import Trajectory
    from streaming.generator import image_to_video_tensor, video_tensor_to_frames

    mode = release.default_mode if mode is None else mode
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if mode == "distilled" and steps is not None and steps != len(release.sampler_sigmas) - 1:
        raise ValueError(f"distilled mode runs the model's fixed {len(release.sampler_sigmas) - 1}-step list "
                         f"{list(release.sampler_sigmas)}; got steps={steps}")
    if cfg_scale is not None and not (isinstance(cfg_scale, (int, float)) and math.isfinite(cfg_scale) and cfg_scale >= 0):
        raise ValueError(f"cfg_scale must be a finite number >= 0, got {cfg_scale!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an int >= 0, got {seed!r}")
    if not isinstance(prompt, str) or not isinstance(negative_prompt, str):
        raise ValueError("prompt and negative_prompt must be strings")
    if release.kind == "streaming" and mode != "distilled" or release.kind in ("bidirectional", "chunk_causal") and mode == "distilled":
        logger.warning("running a %s release in %s mode: it was not trained for it", release.kind, mode)

    width, height = release.width, release.height
    source = load_image(image)
    if trajectory_size is not None:
        trajectory_size = _check_size(trajectory_size, "trajectory_size")
    if not isinstance(trajectory, Trajectory):
        wanted = n_frames
        if seconds is not None and n_frames is None:
            wanted = snap_frames(seconds, release.fps, release.vae.temporal_stride)
        # The start image is a frame of the video the file was made for: its size is the file's.
        file_size = trajectory_size or (source.shape[1], source.shape[0])
        trajectory = _load_trajectory(trajectory, release, wanted, file_size)
    if (trajectory.width, trajectory.height) != (width, height):
        trajectory = trajectory.resized_to(width, height)
    if abs(trajectory.fps - release.fps) > 1e-6:
        logger.warning("the trajectory runs at %g fps, the model at %g fps: poses are used frame by frame",
                       trajectory.fps, release.fps)
    n = _frame_count(release, trajectory, seconds, n_frames)
    start = fit_image(source, width, height)
    poses = np.asarray(trajectory.world_T_cams[:n])
    intrinsics = np.asarray(trajectory.intrinsics[:n])

    dit, vae = release.dit, release.vae
    stride = vae.temporal_stride
    with torch.inference_mode():
        text, uncond = _text_pair(release, prompt, negative_prompt)
        if mode == "distilled":
            if not np.allclose(intrinsics, intrinsics[0]):
                logger.warning("distilled mode uses frame 0's intrinsics for the whole clip")
            if release.profile.prompt_required and release.text_encoder is None:
                logger.warning("%s conditions every chunk on a prompt through Gemma-2 and never saw the null caption; "
                               "without a text encoder it gets the null caption", release.name)
            frames = _distilled(release, start, poses, intrinsics[0], n, seed, text, progress, prompt)
        else:
            cfg = BIDIRECTIONAL_CFG if cfg_scale is None else float(cfg_scale)
            sigmas = bidirectional_sigmas(BIDIRECTIONAL_STEPS if steps is None else steps, BIDIRECTIONAL_SHIFT)
            cond = prepare_camera(poses, intrinsics, (height, width), (stride, vae.spatial_stride, vae.spatial_stride))
            camera = cond["camera_conditions"][None].to(dit.device, dit.dtype)  # [1, T, 20]
            plucker = cond["chunk_plucker"][None].to(dit.device, dit.dtype)  # [1, 6s, T, h, w]
            z0 = vae.encode(image_to_video_tensor(start).to(dit.device)).float()  # [1, C, 1, h, w]
            latents = (n - 1) // stride + 1
            rng = torch.Generator(device="cpu").manual_seed(seed)
            sample = _bidirectional if mode == "bidirectional" else _chunk_causal
            x = sample(release, z0, latents, camera, plucker, text, uncond, sigmas, cfg, rng, progress)
            frames = video_tensor_to_frames(decode_latents(vae, x))  # [n, H, W, 3]
    if frames.shape[0] != n:
        raise RuntimeError(f"generation returned {frames.shape[0]} frames for {n} poses")
    return OfflineVideo(frames=frames, world_T_cams=poses.copy(), intrinsics=intrinsics[0].copy(),
                        fps=float(release.fps), mode=mode)


def read_episode_trajectory(folder: str | Path):
    """The camera path of a recorded episode folder as a `controls.trajectory.Trajectory`, read by the
    recorder's own reader (`streaming.episode.Episode`: an incomplete episode up to its last durable
    chunk); `EpisodeError` (a ValueError) names the file and line of anything missing or malformed."""
    from streaming.episode import Episode

    return Episode.open(folder).trajectory()
