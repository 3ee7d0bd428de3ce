"""The procedural ground-truth world: scenes, a ray-casting renderer, clip sampling and datasets.

    scene = sim.world.Scene.from_seed(seed, theme=None, fog=None)
    scene.render(world_T_cam [N, 4, 4], K, width, height) -> RenderResult(rgb [N, H, W, 3] uint8, depth [N, H, W])
    scene.is_free(position [N, 3], radius=0.3), scene.spawn_world_T_cam(index), scene.place_trajectory(relative)
    sim.clips.sample_clip(scene_seed, clip_seed, n_frames, width, height) -> Clip; sim.clips.ClipDataset(split=...)
    sim.dataset_writer.write_eval_set(folder, EvalSetSpec(...)); sim.dataset_writer.EvalSet(folder)[i] -> Clip

The default camera is shared with `generate`, the live app and training, so videos of the world and
of the model line up pixel for pixel; it matches the app's stream (app/config.py: 128 x 128, 60 deg) and the embedded model's training clips.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

DEFAULT_WIDTH = 128
DEFAULT_HEIGHT = 128
DEFAULT_HFOV_DEG = 60.0
DEFAULT_FPS = 16


def default_intrinsics(width: int = DEFAULT_WIDTH, height: int = DEFAULT_HEIGHT, hfov_deg: float = DEFAULT_HFOV_DEG) -> np.ndarray:
    """K [3, 3] of a pinhole with square pixels, the principal point at the image centre and the
    given horizontal field of view: fx = fy = W / (2 tan(hfov / 2))."""
    for value in (width, height):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
            raise ValueError(f"width and height must be positive ints, got {width!r}, {height!r}")
    if isinstance(hfov_deg, bool) or not isinstance(hfov_deg, numbers.Real) or not 0.0 < hfov_deg < 180.0:
        raise ValueError(f"hfov_deg must be in (0, 180), got {hfov_deg!r}")
    f = int(width) / (2.0 * math.tan(math.radians(float(hfov_deg)) / 2.0))
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
