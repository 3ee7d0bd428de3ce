"""Evaluation against the procedural world: rollouts of the live generator vs ground truth and baselines.

For each held-out (eval-split) scene a random walk of 1 + 16·seconds frames is rendered with depth.
The model starts from the walk's first rendered frame and streams the whole walk through
`streaming.generator.ChunkGenerator` (the loop users see: few-step chunks, commits, stream decode).
Metrics per second of rollout (frames 16(s−1)+1 … 16s): PSNR and SSIM against ground truth, and
`detail` (how much fine structure the frames keep, as a fraction of the ground truth's: PSNR and SSIM
both reward a blurred expectation, this shows the blur), also for two baselines: repeating the first
frame, and warping the first frame with the true depth (`depth_warp`). Camera following: for each clip
and each perturbation of its trajectory (mirrored yaw, reversed motion) the ground truth along the
perturbed path is rendered; the clip follows the camera when the rollout's MSE (seconds 1…end) to the
commanded ground truth is below that to the perturbed one. Standing still: the generator also runs from
the same first frame with the camera never moving, where the ground truth is that frame for every
second, so PSNR and detail per second say how long the model keeps the place it was shown (frame 0,
the start image through the VAE, is the ceiling).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from controls.camera import compose, invert

if TYPE_CHECKING:
    from streaming.generator import GeneratorConfig

PERTURBATIONS = ("mirrored_yaw", "reversed_motion")
METHODS = ("model", "repeat", "warp")  # the rollout and the two baselines


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    """PSNR in dB of uint8 images [..., H, W, 3] (peak 255)."""
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10.0 * math.log10(255.0 ** 2 / max(mse, 1e-10))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of uint8 frames [N, H, W, 3] (Gaussian window σ = 1.5, 11 taps, per channel, valid region)."""
    x = torch.from_numpy(a).permute(0, 3, 1, 2).double() / 255.0  # [N, 3, H, W]
    y = torch.from_numpy(b).permute(0, 3, 1, 2).double() / 255.0
    taps = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-taps ** 2 / (2 * 1.5 ** 2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None].expand(3, 1, 11, 11)  # [3, 1, 11, 11]

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window, groups=3)

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx ** 2, blur(y * y) - my ** 2, blur(x * y) - mx * my
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    return float(s.mean())


def detail(pred: np.ndarray, gt: np.ndarray) -> float:
    """Fine structure kept: mean |spatial gradient| of pred's luma over that of gt's, uint8 [N, H, W, 3].

    1 = as much edge and texture as the ground truth, → 0 as it blurs (a flat frame scores 0), > 1 for
    added noise or sharper-than-true texture. Position-free: it says how sharp, not whether the right things.
    """
    def gradient_energy(frames: np.ndarray) -> float:
        luma = _luma(frames)
        return float(np.abs(np.diff(luma, axis=1)).mean() + np.abs(np.diff(luma, axis=2)).mean())

    return gradient_energy(pred) / max(gradient_energy(gt), 1e-9)


def _luma(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float64) @ np.array([0.299, 0.587, 0.114])  # [N, H, W]


def grid_step_ratio(frames: np.ndarray, block: int = 8) -> float:
    """Mean |luma step| across the `block`-pixel grid lines over that inside the blocks, uint8 [N, H, W, 3].

    A decoder that paints each 8×8 latent cell on its own (the TinyVAE's mosaic) makes steps at the cell
    borders much larger than inside; a natural image has no preference, ratio ≈ 1.
    """
    luma = _luma(frames)
    steps_x, steps_y = np.abs(np.diff(luma, axis=2)), np.abs(np.diff(luma, axis=1))  # [N, H, W−1], [N, H−1, W]
    on_x = (np.arange(steps_x.shape[2]) % block) == block - 1  # the step from column 8k+7 to 8k+8
    on_y = (np.arange(steps_y.shape[1]) % block) == block - 1
    across = np.concatenate([steps_x[:, :, on_x].ravel(), steps_y[:, on_y, :].ravel()]).mean()
    inside = np.concatenate([steps_x[:, :, ~on_x].ravel(), steps_y[:, ~on_y, :].ravel()]).mean()
    return float(across / max(inside, 1e-9))


def blockiness(pred: np.ndarray, gt: np.ndarray) -> float:
    """`grid_step_ratio` of pred over that of gt, uint8 [N, H, W, 3]: 1 = no more 8-px blocks than the truth."""
    return grid_step_ratio(pred) / max(grid_step_ratio(gt), 1e-9)


def colour_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean |frame-mean RGB of pred − that of gt| on 0–255, over frames and channels, uint8 [N, H, W, 3].

    Position-free: it says whether the colours of the view drifted, not whether the layout is right.
    """
    def frame_means(frames: np.ndarray) -> np.ndarray:
        return frames.reshape(len(frames), -1, 3).astype(np.float64).mean(1)  # [N, 3]

    return float(np.abs(frame_means(pred) - frame_means(gt)).mean())


# The per-second metrics by name; each name is also the ClipResult field that holds it.
METRICS = {"psnr": psnr, "ssim": ssim, "detail": detail}
STANDING_METRICS = ("psnr", "detail")  # scored on the standing-camera rollout against frame 0
STANDING_SECONDS = 4  # the standing-still goal is the mean PSNR over the first 4 s
# The long walk: does the world last? Scored early (seconds 1–8) and late (22–30) on one 30 s walk per scene.
LONG_METRICS = {"psnr": psnr, "detail": detail, "blockiness": blockiness, "colour_error": colour_error}
LONG_WINDOWS = ((1, 8), (22, 30))


def depth_warp(frame0: np.ndarray, depth0: np.ndarray, depth: np.ndarray, world_T_cam0: np.ndarray,
               world_T_cams: np.ndarray, K: np.ndarray, far: float = 1e4) -> np.ndarray:
    """Frame 0 backward-warped into every pose with the true depth (the strong baseline).

    Each target pixel is lifted with its true depth, moved into camera 0 and sampled bilinearly from
    frame 0. Pixels that fall outside frame 0 or are hidden there (depth 0 at the sample is more than 5 %
    + 5 cm nearer) get frame 0's mean colour. Sky (inf depth) is placed at `far`, i.e. rotation only.

    frame0 uint8 [H, W, 3], depth0 [H, W], depth [N, H, W], poses [N, 4, 4] -> uint8 [N, H, W, 3].
    """
    n, height, width = depth.shape
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u)], -1)  # [H, W, 3]
    z = np.where(np.isfinite(depth), depth, far).astype(np.float64)  # [N, H, W]
    points = rays[None] * z[..., None]  # [N, H, W, 3] in each target camera
    cam0_T_cams = compose(invert(world_T_cam0)[None], world_T_cams)  # [N, 4, 4]
    p0 = np.einsum("nij,nhwj->nhwi", cam0_T_cams[:, :3, :3], points) + cam0_T_cams[:, None, None, :3, 3]
    z0 = p0[..., 2]
    u0 = K[0, 0] * p0[..., 0] / np.maximum(z0, 1e-6) + K[0, 2]
    v0 = K[1, 1] * p0[..., 1] / np.maximum(z0, 1e-6) + K[1, 2]
    grid = torch.from_numpy(np.stack([u0 / (width - 1) * 2 - 1, v0 / (height - 1) * 2 - 1], -1)).float()  # [N, H, W, 2]
    src = torch.from_numpy(frame0).permute(2, 0, 1)[None].float().expand(n, -1, -1, -1)  # [N, 3, H, W]
    sampled = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=True)
    d0 = torch.from_numpy(np.where(np.isfinite(depth0), depth0, far)).float()[None, None].expand(n, -1, -1, -1)
    d_at = F.grid_sample(d0, grid, mode="nearest", padding_mode="border", align_corners=True)[:, 0].numpy()
    inside = (z0 > 1e-3) & (u0 >= -0.5) & (u0 <= width - 0.5) & (v0 >= -0.5) & (v0 <= height - 0.5)
    visible = z0 <= d_at * 1.05 + 0.05
    out = sampled.permute(0, 2, 3, 1).numpy()
    fill = frame0.reshape(-1, 3).mean(0)
    out = np.where((inside & visible)[..., None], out, fill)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


def perturb(world_T_cams: np.ndarray, kind: str) -> np.ndarray:
    """The trajectory with every relative motion (to frame 0) mirrored left-right, or reversed."""
    rel = compose(invert(world_T_cams[0])[None], world_T_cams)  # cam0_T_cam [N, 4, 4]
    if kind == "mirrored_yaw":
        mirror = np.diag([-1.0, 1.0, 1.0, 1.0])
        rel = mirror @ rel @ mirror
    elif kind == "reversed_motion":
        rel = invert(rel)
    else:
        raise ValueError(f"unknown perturbation {kind!r}; known: {PERTURBATIONS}")
    return compose(world_T_cams[0][None], rel)


@dataclass
class ClipResult:
    scene_seed: int
    psnr: dict[str, list[float]] = field(default_factory=dict)  # method -> per second
    ssim: dict[str, list[float]] = field(default_factory=dict)
    detail: dict[str, list[float]] = field(default_factory=dict)  # method -> per second, see `detail`
    follows: dict[str, bool] = field(default_factory=dict)  # perturbation -> rollout closer to commanded GT
    margins: dict[str, float] = field(default_factory=dict)  # perturbation -> MSE(perturbed) − MSE(commanded)
    # the same test on the baselines (method -> perturbation -> closer to commanded GT): what the score is for a
    # static frame (which follows no camera) and for the true-depth warp (exact geometry that still loses the view)
    baseline_follows: dict[str, dict[str, bool]] = field(default_factory=dict)
    # camera standing at frame 0's pose (the ground truth is frame 0 throughout): metric -> per second
    standing: dict[str, list[float]] = field(default_factory=dict)
    standing_frame0_psnr: float = float("nan")  # the start image through the VAE, what standing could reach
    # a second, long walk of the same scene (`long_walk`): metric -> per second, and "a-b" window -> metric -> value
    long_per_second: dict[str, list[float]] = field(default_factory=dict)
    long_windows: dict[str, dict[str, float]] = field(default_factory=dict)


def per_second(pred: np.ndarray, gt: np.ndarray, fps: int, seconds: int, metric) -> list[float]:
    return [metric(pred[fps * (s - 1) + 1: fps * s + 1], gt[fps * (s - 1) + 1: fps * s + 1]) for s in range(1, seconds + 1)]


def rollout(model, vae, frame0: np.ndarray, world_T_cams: np.ndarray, K: np.ndarray, seed: int = 0,
            sampler: GeneratorConfig | None = None) -> np.ndarray:
    """The live generator's frames along `world_T_cams` from `frame0` -> uint8 [F, H, W, 3].

    `sampler`: the generator's settings (σ list, warm start, KV window and sink), as the model was trained
    (`eval_sampler` reads them from its json); None = `GeneratorConfig()`. Its seed is replaced by `seed`."""
    from streaming.generator import ChunkGenerator, GeneratorConfig

    config = dataclasses.replace(sampler or GeneratorConfig(), seed=seed)
    gen = ChunkGenerator(model, vae, config, (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
    gen.start(frame0, world_T_cams[0])
    frames, start = [], 0
    while start < len(world_T_cams):
        n = gen.frames_for_next_chunk()
        if start + n > len(world_T_cams):
            raise ValueError(f"{len(world_T_cams)} poses do not fill whole chunks (next chunk needs {n} from {start})")
        frames.append(gen.step(world_T_cams[start:start + n]))
        start += n
    return np.concatenate(frames)


def held_out_walk(scene_seed: int, seconds: int, size: int, fps: int = 16):
    """(scene, clip, K) of an eval-split scene's walk of 1 + fps·seconds frames at size×size with depth."""
    from sim import default_intrinsics
    from sim.clips import check_split_seed, sample_clip
    from sim.world import Scene

    check_split_seed("eval", scene_seed)
    scene = Scene.from_seed(scene_seed)
    clip = sample_clip(scene_seed, 0, 1 + fps * seconds, size, size, fps=fps, scene=scene)
    return scene, clip, default_intrinsics(size, size)


def standing_at_start(world_T_cams: np.ndarray) -> np.ndarray:
    """The same number of poses [F, 4, 4], every one the first: the camera standing where the walk starts."""
    return np.repeat(world_T_cams[:1], len(world_T_cams), axis=0)


def window_frames(frames: np.ndarray, first_s: int, last_s: int, fps: int = 16) -> np.ndarray:
    """Frames of seconds first_s…last_s (second s = frames fps·(s−1)+1 … fps·s; frame 0 is the given image)."""
    return frames[fps * (first_s - 1) + 1: fps * last_s + 1]


def long_walk(model, vae, scene_seed: int, seconds: int, size: int, fps: int = 16,
              sampler: GeneratorConfig | None = None) -> tuple[dict, dict, dict[str, np.ndarray]]:
    """A `seconds`-long held-out walk streamed whole: (per-second metrics, window metrics, frames gt/model).

    Per second: `LONG_METRICS` (metric -> list). Windows: each of `LONG_WINDOWS` that fits ("22-30" ->
    metric -> value over all its frames at once). This is where drift shows: colours that wander off,
    the decoder's 8×8 cells that come apart, detail that fades.
    """
    _, clip, K = held_out_walk(scene_seed, seconds, size, fps)
    gt = clip.frames
    pred = rollout(model, vae, gt[0], clip.world_T_cams, K, sampler=sampler)
    per_second_metrics = {name: per_second(pred, gt, fps, seconds, metric) for name, metric in LONG_METRICS.items()}
    windows = {}
    for first, last in LONG_WINDOWS:
        if last <= seconds:
            p, g = window_frames(pred, first, last, fps), window_frames(gt, first, last, fps)
            windows[f"{first}-{last}"] = {name: metric(p, g) for name, metric in LONG_METRICS.items()}
    return per_second_metrics, windows, {"long_gt": gt, "long_model": pred}


def evaluate_clip(model, vae, scene_seed: int, seconds: int, size: int, fps: int = 16,
                  sampler: GeneratorConfig | None = None,
                  long_seconds: int = 0) -> tuple[ClipResult, dict[str, np.ndarray]]:
    """Metrics of one held-out walk, and its frames (gt, model, repeat, warp); `sampler` as in `rollout`.

    With `long_seconds` > 0 the scene also gets a walk that long (`long_walk`; frames long_gt, long_model)."""
    scene, clip, K = held_out_walk(scene_seed, seconds, size, fps)
    gt, poses = clip.frames, clip.world_T_cams
    frames = {
        "gt": gt,
        "model": rollout(model, vae, gt[0], poses, K, sampler=sampler),
        "repeat": np.repeat(gt[:1], len(gt), axis=0),
        "warp": depth_warp(gt[0], clip.depth[0], clip.depth, poses[0], poses, K),
    }
    result = ClipResult(scene_seed=scene_seed)
    for method in METHODS:
        for name, metric in METRICS.items():
            getattr(result, name)[method] = per_second(frames[method], gt, fps, seconds, metric)
    frames["standing"] = rollout(model, vae, gt[0], standing_at_start(poses), K, sampler=sampler)
    # standing still, the ground truth is the start frame throughout: the repeat baseline's frames
    result.standing = {name: per_second(frames["standing"], frames["repeat"], fps, seconds, METRICS[name])
                       for name in STANDING_METRICS}
    result.standing_frame0_psnr = psnr(frames["standing"][0], gt[0])
    for kind in PERTURBATIONS:
        frames[kind] = scene.render(perturb(poses, kind), K, size, size).rgb
    if long_seconds:
        result.long_per_second, result.long_windows, long_frames = long_walk(model, vae, scene_seed, long_seconds, size,
                                                                             fps, sampler)
        frames.update(long_frames)
    for method in METHODS:
        margins = following_margins(frames[method], gt, {kind: frames[kind] for kind in PERTURBATIONS})
        if method == "model":
            result.margins = margins
            result.follows = {kind: margin > 0 for kind, margin in margins.items()}
        else:
            result.baseline_follows[method] = {kind: margin > 0 for kind, margin in margins.items()}
    return result, frames


def following_margins(pred: np.ndarray, gt: np.ndarray, perturbed: dict[str, np.ndarray]) -> dict[str, float]:
    """MSE(pred, perturbed GT) − MSE(pred, commanded GT) over frames 1…end, per perturbation (> 0: follows)."""
    pred = pred[1:].astype(np.float64)
    mse_cmd = float(np.mean((pred - gt[1:]) ** 2))
    return {kind: float(np.mean((pred - other[1:]) ** 2)) - mse_cmd for kind, other in perturbed.items()}


def summarise(results: list[ClipResult], seconds: int) -> dict:
    """Means over clips per second, means over seconds 1…end, and the camera-following fractions."""
    out: dict = {"clips": len(results), "seconds": seconds, "per_second": {}, "mean": {}}
    for metric in METRICS:
        for method in METHODS:
            table = np.array([getattr(r, metric)[method] for r in results])  # [clips, seconds]
            out["per_second"][f"{metric}_{method}"] = table.mean(0).tolist()
            out["mean"][f"{metric}_{method}"] = float(table.mean())
    out["follow"] = {kind: float(np.mean([r.follows[kind] for r in results])) for kind in PERTURBATIONS}
    out["follow"]["all"] = float(np.mean([r.follows[k] for r in results for k in PERTURBATIONS]))
    out["follow_baselines"] = {}
    for method in sorted({m for r in results for m in r.baseline_follows}):
        scored = [r.baseline_follows[method] for r in results if method in r.baseline_follows]
        fractions = {kind: float(np.mean([f[kind] for f in scored])) for kind in PERTURBATIONS}
        fractions["all"] = float(np.mean([f[k] for f in scored for k in PERTURBATIONS]))
        out["follow_baselines"][method] = fractions
    out["gain_over_repeat_db"] = out["mean"]["psnr_model"] - out["mean"]["psnr_repeat"]
    # per clip, so subsets (e.g. eval scenes 8–15 of a 24-clip run) can be read off one run
    out["per_clip"] = [{"scene": r.scene_seed, **{f"psnr_{m}": float(np.mean(r.psnr[m])) for m in METHODS},
                        "detail_model": float(np.mean(r.detail["model"])) if r.detail else None,
                        "standing_psnr_first_4s": float(np.mean(r.standing["psnr"][:STANDING_SECONDS])) if r.standing else None,
                        "follows": r.follows, "margins": r.margins,
                        "standing_psnr": float(np.mean(r.standing["psnr"])) if r.standing else None,
                        "long": r.long_windows}
                       for r in results]
    standing = [r for r in results if r.standing]
    if standing:
        out["standing"] = {"per_second": {}, "mean": {}}
        for metric in STANDING_METRICS:
            table = np.array([r.standing[metric] for r in standing])  # [clips, seconds]
            out["standing"]["per_second"][metric] = table.mean(0).tolist()
            out["standing"]["mean"][metric] = float(table.mean())
        out["standing"]["frame0_psnr"] = float(np.mean([r.standing_frame0_psnr for r in standing]))
        # the goal's figure: PSNR to the start frame over the first STANDING_SECONDS (or all, if shorter)
        first = min(STANDING_SECONDS, seconds)
        out["standing"][f"psnr_first_{first}s"] = float(np.mean([r.standing["psnr"][:first] for r in standing]))
    long = [r for r in results if r.long_windows]
    if long:
        out["long"] = {"clips": len(long), "seconds": len(long[0].long_per_second["psnr"]),
                       "per_second": {name: np.mean([r.long_per_second[name] for r in long], 0).tolist()
                                      for name in LONG_METRICS},
                       "windows": {window: {name: float(np.mean([r.long_windows[window][name] for r in long]))
                                            for name in LONG_METRICS} for window in long[0].long_windows}}
    return out
