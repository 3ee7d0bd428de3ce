"""Quality filters of recorded episodes: each looks at frames.jsonl only (no video decode).

`episode_flags(episode, filters)` returns the flags an episode earns, each with a measured value:
- `too_short`: fewer than `min_seconds` of frames.
- `idle`: the longest run of frames whose applied input did not change (no key held, same look
  angles as the previous frame, or no input yet) is longer than `max_idle_seconds`.
- `stuck`: the longest run of frames whose pose did not change (under 1 mm and 0.05 degrees from
  the previous frame) is longer than `max_stuck_seconds`.
- `dropped_frames`: the session-wide frame ids of the episode skip more than
  `max_dropped_fraction` of its frame count (frames generated but not recorded).
A threshold of 0 turns its filter off. Flags never delete anything: the build lists the episode
with its reasons and leaves it out.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from collect.campaign import FilterConfig
from streaming.episode import Episode

FILTERS = ("too_short", "idle", "stuck", "dropped_frames")
STILL_TRANSLATION_M = 1e-3
STILL_ROTATION_DEG = 0.05


@dataclass(frozen=True)
class Measures:
    """What the filters compare: seconds, seconds, seconds and a fraction."""

    duration_s: float
    longest_idle_s: float
    longest_stuck_s: float
    dropped_fraction: float


def _longest_run(flags: np.ndarray) -> int:
    """Length of the longest run of True in a 1-D bool array."""
    best = run = 0
    for value in flags:
        run = run + 1 if value else 0
        best = max(best, run)
    return best


def measure(episode: Episode) -> Measures:
    n, fps = episode.n_frames, episode.fps
    if n == 0:
        return Measures(0.0, 0.0, 0.0, 0.0)
    inputs = [row.get("input") for row in episode.rows]
    idle = np.zeros(n, bool)
    for i, inp in enumerate(inputs):
        prev = inputs[i - 1] if i else None
        if inp is None:
            idle[i] = True
        elif not inp.get("keys"):
            same_look = prev is not None and all(inp.get(k) == prev.get(k) for k in ("yaw", "pitch", "roll")) and not inp.get("dx") and not inp.get("dy")
            idle[i] = same_look or i == 0 and inp.get("yaw") is None
    poses = episode.world_T_cams  # [F, 4, 4]
    moved = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)  # [F-1]
    # Angle of R_prev^T R: arccos((trace - 1) / 2).
    rel = np.einsum("fji,fjk->fik", poses[:-1, :3, :3], poses[1:, :3, :3])
    turned = np.degrees(np.arccos(np.clip((np.trace(rel, axis1=1, axis2=2) - 1) / 2, -1, 1)))
    still = np.concatenate([[False], (moved < STILL_TRANSLATION_M) & (turned < STILL_ROTATION_DEG)])
    ids = np.array([row["frame_id"] for row in episode.rows], dtype=np.int64)
    skipped = int(np.clip(np.diff(ids) - 1, 0, None).sum()) if n > 1 else 0
    # A still run of k frames spans k frame intervals (it includes the step into its first frame).
    return Measures(n / fps, _longest_run(idle) / fps, _longest_run(still) / fps, skipped / n)


def episode_flags(episode: Episode, filters: FilterConfig) -> dict[str, float]:
    """{flag: measured value} of the filters this episode fails (empty: it passes)."""
    m = measure(episode)
    flags: dict[str, float] = {}
    if filters.min_seconds and m.duration_s < filters.min_seconds:
        flags["too_short"] = round(m.duration_s, 3)
    if filters.max_idle_seconds and m.longest_idle_s > filters.max_idle_seconds:
        flags["idle"] = round(m.longest_idle_s, 3)
    if filters.max_stuck_seconds and m.longest_stuck_s > filters.max_stuck_seconds:
        flags["stuck"] = round(m.longest_stuck_s, 3)
    if filters.max_dropped_fraction and m.dropped_fraction > filters.max_dropped_fraction:
        flags["dropped_frames"] = round(m.dropped_fraction, 4)
    return flags
