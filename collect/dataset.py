"""Build one LeRobot v3.0 dataset from every accepted episode of a campaign or a record dir.

    report = build_dataset(source, out)   # source: a campaign .toml or a record dir

Which episodes go in (`EpisodeVerdict.status`):
- `skipped`: not a readable roam episode (foreign folder, corrupt meta or frames, fewer than 2
  frames, another campaign's episode), or incomplete with `skip_incomplete`. The reason is listed.
- `rejected`: a reviewer rejected it (`collect.reviews`).
- `filtered`: a quality filter flagged it (`collect.quality`) and no reviewer accepted it.
- `included`: the rest. An incomplete episode (its recording process died) is included up to
  its last durable chunk and flagged `incomplete` in the report and in `meta/episodes`.

Layout written (LeRobot v3.0, as `lerobot.datasets.LeRobotDataset` reads it):
    meta/info.json            codebase_version "v3.0", fps, features, data_path, video_path, totals
    meta/stats.json           min/max/mean/std/count per feature over every included frame
    meta/tasks.parquet        task_index, indexed by the task string (the campaign's instructions)
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, data and video
                              file indices and time range, per-episode stats, roam/* provenance
    data/chunk-000/file-NNN.parquet            frames: observation.state [7], action [15],
                              timestamp, frame_index, episode_index, index, task_index,
                              participant, scene
    videos/observation.images.cam/chunk-000/file-NNN.mp4   the recorded H.264, episodes back to back
    cameras/re10k/episode_NNNNNN.txt           RealEstate10K camera file of each episode
    roam_build.json           the last build's report (every episode's status and reasons)

Incremental: each build writes its new episodes into a new data file and a new video file
(file index = one past the highest in use); files of earlier builds are never rewritten. Only when
an episode already in the dataset must leave it or has changed (a reviewer rejected it, it is gone,
its frame count differs) is the dataset rebuilt from scratch, into a temporary folder renamed over
the old one; the report says so. `meta/` is rewritten on every build (temp file + rename per file,
info.json last), so a crash mid-build leaves the previous dataset readable.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from collect.campaign import Campaign, FilterConfig, load_campaign
from collect.quality import episode_flags
from collect.reviews import REVIEWS_FILE, read_reviews
from streaming.episode import Episode, EpisodeError
from streaming.exporters import ACTION_NAMES, LEROBOT_VIDEO_KEY, STATE_NAMES, TASK, lerobot_features, state_and_action

log = logging.getLogger("roam.collect")

CHUNK = 0
EPISODES_META = Path("meta/episodes/chunk-000/file-000.parquet")
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
REPORT_FILE = "roam_build.json"
# Frames per episode decoded for image stats (evenly spaced), and their downscale: enough for a
# per-channel mean and std, cheap enough to run over hundreds of episodes.
IMAGE_STAT_FRAMES = 32
IMAGE_STAT_STRIDE = 4
STATS = ("min", "max", "mean", "std")
NUMERIC_FEATURES = ("observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index")


class BuildError(ValueError):
    """The build cannot run (bad source, bad reviews file, unusable output folder); one line."""


@dataclass
class EpisodeVerdict:
    """One source episode's fate in a build."""

    name: str
    status: str  # included | filtered | rejected | skipped
    reason: str = ""
    participant: str | None = None
    task: str | None = None
    frames: int = 0
    seconds: float = 0.0
    complete: bool = True
    flags: dict[str, float] = field(default_factory=dict)
    decision: str | None = None
    episode_index: int | None = None


@dataclass
class BuildReport:
    out: Path
    mode: str  # "new" | "append" | "rebuild" | "unchanged"
    rebuild_reason: str
    verdicts: list[EpisodeVerdict]
    total_episodes: int
    total_frames: int
    added: list[str]

    def table(self) -> str:
        """The summary table printed by `run.py dataset build`."""
        head = ("episode", "status", "participant", "task", "frames", "sec", "flags / reason")
        rows = [head]
        for v in self.verdicts:
            why = ", ".join(f"{k}={val}" for k, val in v.flags.items())
            if not v.complete:
                why = ", ".join(filter(None, ["incomplete", why]))
            if v.reason:
                why = ", ".join(filter(None, [why, v.reason]))
            rows.append((v.name, v.status, v.participant or "-", v.task or "-", str(v.frames), f"{v.seconds:.1f}", why or "-"))
        widths = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
        lines = ["  ".join(c.ljust(w) for c, w in zip(r[:-1], widths)) + "  " + r[-1] for r in rows]
        counts: dict[str, int] = {}
        for v in self.verdicts:
            counts[v.status] = counts.get(v.status, 0) + 1
            for flag in v.flags:
                counts[f"flag {flag}"] = counts.get(f"flag {flag}", 0) + 1
            if not v.complete and v.status == "included":
                counts["incomplete (included)"] = counts.get("incomplete (included)", 0) + 1
        summary = "  ".join(f"{k}: {n}" for k, n in sorted(counts.items()))
        return "\n".join([*lines, "", summary])


def _source(source: Path) -> tuple[Path, Campaign | None]:
    if source.is_file():
        campaign = load_campaign(source)
        if not campaign.record_dir.is_dir():
            raise BuildError(f"{source}: its record_dir {campaign.record_dir} does not exist (nothing recorded yet)")
        return campaign.record_dir, campaign
    if source.is_dir():
        return source, None
    raise BuildError(f"{source}: neither a campaign file nor a record dir")


def scan_episodes(record_dir: Path, campaign: Campaign | None, filters: FilterConfig, reviews: dict[str, dict], skip_incomplete: bool) -> tuple[list[EpisodeVerdict], dict[str, Episode]]:
    """Every folder of `record_dir` judged (in name order, which is recording order); the opened
    episodes of the included ones by name."""
    verdicts: list[EpisodeVerdict] = []
    opened: dict[str, Episode] = {}
    for folder in sorted(p for p in record_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        verdict = EpisodeVerdict(name=folder.name, status="skipped")
        verdicts.append(verdict)
        try:
            episode = Episode.open(folder)
        except EpisodeError as error:
            verdict.reason = str(error).replace(str(folder), folder.name, 1)
            continue
        meta = episode.meta
        verdict.participant = meta.get("participant")
        verdict.task = meta.get("task")
        verdict.frames = episode.n_frames
        verdict.seconds = episode.n_frames / episode.fps
        verdict.complete = episode.complete
        if campaign is not None and meta.get("campaign") != campaign.name:
            verdict.reason = f"not an episode of campaign {campaign.name!r} (its campaign: {meta.get('campaign')!r})"
            continue
        if episode.n_frames < 2:
            verdict.reason = f"{episode.n_frames} durable frames (at least 2 needed)"
            continue
        if not episode.complete and skip_incomplete:
            verdict.reason = "incomplete (recording cut short) and --skip-incomplete"
            continue
        try:
            episode.segment_paths()
        except EpisodeError as error:
            verdict.reason = str(error).replace(str(folder), folder.name, 1)
            continue
        verdict.flags = episode_flags(episode, filters)
        decision = reviews.get(folder.name, {}).get("decision")
        verdict.decision = decision
        if decision == "reject":
            verdict.status = "rejected"
            verdict.reason = "rejected by reviewer"
        elif verdict.flags and decision != "accept":
            verdict.status = "filtered"
        else:
            verdict.status = "included"
            if verdict.flags:
                verdict.reason = "accepted by reviewer despite flags"
            opened[folder.name] = episode
    return verdicts, opened


def _task_string(episode: Episode, campaign: Campaign | None) -> str:
    meta = episode.meta
    if campaign is not None:
        task = campaign.task(str(meta.get("task")))
        if task is not None:
            return task.instruction
    return str(meta.get("task_instruction") or TASK)


def _stats(values: np.ndarray) -> dict[str, list]:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim == 1:
        values = values[:, None]
    return {"min": values.min(0).tolist(), "max": values.max(0).tolist(), "mean": values.mean(0).tolist(), "std": values.std(0).tolist(), "count": [len(values)]}


def _merge_stats(parts: list[dict[str, list]]) -> dict[str, list]:
    """Pooled min/max/mean/std/count of per-episode stats (the law of total variance)."""
    counts = np.array([p["count"][0] for p in parts], dtype=np.float64)
    shape = np.asarray(parts[0]["mean"]).shape
    means = np.stack([np.asarray(p["mean"], np.float64).reshape(shape) for p in parts])
    stds = np.stack([np.asarray(p["std"], np.float64).reshape(shape) for p in parts])
    w = (counts / counts.sum()).reshape(-1, *([1] * len(shape)))
    mean = (w * means).sum(0)
    var = (w * (stds**2 + (means - mean) ** 2)).sum(0)
    return {
        "min": np.min(np.stack([np.asarray(p["min"], np.float64).reshape(shape) for p in parts]), 0).tolist(),
        "max": np.max(np.stack([np.asarray(p["max"], np.float64).reshape(shape) for p in parts]), 0).tolist(),
        "mean": mean.tolist(),
        "std": np.sqrt(var).tolist(),
        "count": [int(counts.sum())],
    }


def _image_stats(episode: Episode) -> dict[str, list]:
    """Per-channel stats of [0, 1] pixels over up to IMAGE_STAT_FRAMES frames, shaped [3, 1, 1] as lerobot keeps them."""
    frames = episode.read_video()
    pick = np.unique(np.linspace(0, len(frames) - 1, min(IMAGE_STAT_FRAMES, len(frames))).round().astype(int))
    pixels = frames[pick, ::IMAGE_STAT_STRIDE, ::IMAGE_STAT_STRIDE].reshape(-1, 3).astype(np.float64) / 255.0
    flat = _stats(pixels)
    out = {k: [[[v]] for v in flat[k]] for k in STATS}
    out["count"] = [episode.n_frames]
    return out


def _write_parquet_atomic(table: Any, path: Path) -> None:
    import pyarrow.parquet as pq

    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _read_existing(out: Path) -> list[dict] | None:
    """The episode rows of an existing dataset at `out` (None: no dataset there)."""
    import pyarrow.parquet as pq

    info = out / "meta" / "info.json"
    if not out.exists():
        return None
    if not info.is_file():
        if out.is_dir() and not any(out.iterdir()):
            return None
        raise BuildError(f"{out} exists and is not a roam-built LeRobot dataset (no meta/info.json); choose another --out")
    try:
        meta = json.loads(info.read_text())
        if meta.get("codebase_version") != "v3.0" or "roam" not in meta:
            raise BuildError(f"{info}: not a roam-built LeRobot v3.0 dataset; choose another --out")
        # Per-episode stats columns are derived from roam/stats; they are written afresh each build.
        return [{k: v for k, v in row.items() if not k.startswith("stats/")} for row in pq.read_table(out / EPISODES_META).to_pylist()]
    except (OSError, json.JSONDecodeError, ValueError) as error:
        if isinstance(error, BuildError):
            raise
        raise BuildError(f"{out}: the existing dataset's metadata is unreadable ({error}); move it away to rebuild") from None


def build_dataset(source: str | Path, out: str | Path | None = None, *, skip_incomplete: bool = False, filters: FilterConfig | None = None) -> BuildReport:
    """Build or extend the dataset (see the module docstring). BuildError / CampaignError /
    ReviewError on unusable input, each with a one-line message."""
    source = Path(source)
    record_dir, campaign = _source(source)
    if out is None:
        if campaign is None:
            raise BuildError("--out is required when building from a record dir")
        out = campaign.dataset
    out = Path(out).resolve()
    if out == record_dir.resolve() or record_dir.resolve() in out.parents:
        raise BuildError(f"--out {out} may not be inside the record dir {record_dir}")
    filters = filters or (campaign.filters if campaign is not None else FilterConfig())
    reviews = read_reviews(record_dir)
    verdicts, opened = scan_episodes(record_dir, campaign, filters, reviews, skip_incomplete)
    included = [v for v in verdicts if v.status == "included"]
    if not included:
        counts = ", ".join(f"{s}: {sum(v.status == s for v in verdicts)}" for s in ("filtered", "rejected", "skipped") if any(v.status == s for v in verdicts))
        raise BuildError(f"no episode of {record_dir} is included ({counts or 'it holds no episode folders'}); nothing to build")
    existing = _read_existing(out)

    mode, why = "new", ""
    keep: list[dict] = []
    if existing is not None:
        by_name = {v.name: v for v in included}
        for row in existing:
            name = row["roam/source_episode"]
            verdict = by_name.get(name)
            if verdict is None:
                why = f"episode {name} is in the dataset but no longer included ({next((v.status + ': ' + v.reason for v in verdicts if v.name == name), 'gone from the record dir')})"
                break
            if verdict.frames != row["length"]:
                why = f"episode {name} now has {verdict.frames} frames, the dataset holds {row['length']}"
                break
        mode = "rebuild" if why else "append"
        keep = [] if why else existing
    kept_names = {row["roam/source_episode"] for row in keep}
    new = [v for v in included if v.name not in kept_names]
    if mode == "append" and not new:
        mode = "unchanged"

    target = out
    if mode in ("new", "rebuild"):
        target = out.with_name(f".{out.name}.build-{os.getpid()}")
        shutil.rmtree(target, ignore_errors=True)
    try:
        rows = _write(target, campaign, keep, [opened[v.name] for v in new], record_dir)
        if target != out:
            if out.exists():
                old = out.with_name(f".{out.name}.old-{os.getpid()}")
                os.replace(out, old)
                os.replace(target, out)
                shutil.rmtree(old, ignore_errors=True)
            else:
                out.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, out)
    finally:
        if target != out:
            shutil.rmtree(target, ignore_errors=True)
    index_of = {row["roam/source_episode"]: row["episode_index"] for row in rows}
    for v in verdicts:
        v.episode_index = index_of.get(v.name)
    report = BuildReport(out=out, mode=mode, rebuild_reason=why, verdicts=verdicts, total_episodes=len(rows),
                         total_frames=int(sum(r["length"] for r in rows)), added=[v.name for v in new])
    _write_text_atomic(out / REPORT_FILE, json.dumps({"source": str(source), "record_dir": str(record_dir), "mode": mode, "rebuild_reason": why,
                                                      "episodes": [asdict(v) for v in verdicts]}, indent=1))
    return report


def _write(out: Path, campaign: Campaign | None, keep: list[dict], new: list[Episode], record_dir: Path) -> list[dict]:
    """Append `new` after the `keep` rows into `out`; rewrite meta. Returns all episode rows."""
    import pandas as pd
    import pyarrow as pa

    from controls.formats import write_re10k
    from streaming.recorder import concat_segments

    for d in ("meta/episodes/chunk-000", "data/chunk-000", f"videos/{LEROBOT_VIDEO_KEY}/chunk-000", "cameras/re10k"):
        (out / d).mkdir(parents=True, exist_ok=True)
    rows = [dict(r) for r in keep]
    tasks: list[str] = []
    if (out / "meta" / "tasks.parquet").is_file() and keep:
        tasks = list(pd.read_parquet(out / "meta" / "tasks.parquet").sort_values("task_index").index)
    if new:
        fps_all = {e.fps for e in new} | ({float(r["roam/fps"]) for r in keep})
        sizes = {(e.width, e.height) for e in new} | {(int(r["roam/width"]), int(r["roam/height"])) for r in keep}
        if len(fps_all) > 1 or len(sizes) > 1:
            raise BuildError(f"the included episodes mix frame rates {sorted(fps_all)} or sizes {sorted(sizes)}; one dataset holds one of each (filter by campaign or record dir)")
        file_index = 1 + max((int(r["data/file_index"]) for r in keep), default=-1)
        first_episode = len(rows)
        first_frame = int(sum(r["length"] for r in rows))
        columns: dict[str, list] = {k: [] for k in ("observation.state", "action", "timestamp", "frame_index", "episode_index", "index", "task_index", "participant", "scene")}
        videos: list[Path] = []
        video_t = 0.0
        for offset, episode in enumerate(new):
            n, fps = episode.n_frames, episode.fps
            ep_index = first_episode + offset
            task = _task_string(episode, campaign)
            if task not in tasks:
                tasks.append(task)
            task_index = tasks.index(task)
            state, action = state_and_action(episode.world_T_cams, episode.keys, fps)
            timestamps = (np.arange(n) / fps).astype(np.float32)
            frame_index = np.arange(n, dtype=np.int64)
            index = first_frame + frame_index
            participant = str(episode.meta.get("participant") or "")
            scene = str(episode.meta.get("scene") or episode.meta.get("start") or "")
            columns["observation.state"] += list(state)
            columns["action"] += list(action)
            columns["timestamp"] += timestamps.tolist()
            columns["frame_index"] += frame_index.tolist()
            columns["episode_index"] += [ep_index] * n
            columns["index"] += index.tolist()
            columns["task_index"] += [task_index] * n
            columns["participant"] += [participant] * n
            columns["scene"] += [scene] * n
            video = episode.folder / "video.mp4"
            videos += [video] if episode.complete and video.is_file() else episode.segment_paths()
            write_re10k(episode.trajectory_data(), out / "cameras" / "re10k" / f"episode_{ep_index:06d}.txt")
            ep_stats = {
                "observation.state": _stats(state), "action": _stats(action), "timestamp": _stats(timestamps),
                "frame_index": _stats(frame_index), "episode_index": _stats(np.full(n, ep_index)), "index": _stats(index),
                "task_index": _stats(np.full(n, task_index)), LEROBOT_VIDEO_KEY: _image_stats(episode),
            }
            row = {
                "episode_index": ep_index, "tasks": [task], "length": n,
                "data/chunk_index": CHUNK, "data/file_index": file_index,
                "dataset_from_index": first_frame, "dataset_to_index": first_frame + n,
                f"videos/{LEROBOT_VIDEO_KEY}/chunk_index": CHUNK, f"videos/{LEROBOT_VIDEO_KEY}/file_index": file_index,
                f"videos/{LEROBOT_VIDEO_KEY}/from_timestamp": video_t, f"videos/{LEROBOT_VIDEO_KEY}/to_timestamp": video_t + n / fps,
                "meta/episodes/chunk_index": CHUNK, "meta/episodes/file_index": 0,
                "roam/source_episode": episode.name, "roam/participant": participant, "roam/scene": scene,
                "roam/task_id": str(episode.meta.get("task") or ""), "roam/outcome": str(episode.meta.get("outcome") or ""),
                "roam/complete": episode.complete, "roam/fps": fps, "roam/width": episode.width, "roam/height": episode.height,
                "roam/intrinsics": episode.intrinsics[0].tolist(), "roam/stats": json.dumps(ep_stats),
            }
            rows.append(row)
            video_t += n / fps
            first_frame += n
        table = pa.table({
            "observation.state": pa.array(columns["observation.state"], type=pa.list_(pa.float32(), len(STATE_NAMES))),
            "action": pa.array(columns["action"], type=pa.list_(pa.float32(), len(ACTION_NAMES))),
            "timestamp": pa.array(columns["timestamp"], type=pa.float32()),
            **{k: pa.array(columns[k], type=pa.int64()) for k in ("frame_index", "episode_index", "index", "task_index")},
            "participant": pa.array(columns["participant"], type=pa.string()),
            "scene": pa.array(columns["scene"], type=pa.string()),
        })
        _write_parquet_atomic(table, out / DATA_PATH.format(chunk_index=CHUNK, file_index=file_index))
        video_out = out / VIDEO_PATH.format(video_key=LEROBOT_VIDEO_KEY, chunk_index=CHUNK, file_index=file_index)
        concat_segments(videos, video_out)
    _write_meta(out, campaign, rows, tasks, record_dir)
    return rows


def _write_meta(out: Path, campaign: Campaign | None, rows: list[dict], tasks: list[str], record_dir: Path) -> None:
    import pandas as pd
    import pyarrow as pa

    if not rows:
        raise BuildError(f"no episode of {record_dir} is included; nothing to build")
    # Per-episode stats flattened as lerobot keeps them in meta/episodes (stats/<feature>/<stat>).
    flat_stats: dict[str, list] = {}
    per_episode = [json.loads(r["roam/stats"]) for r in rows]
    for feature in (*NUMERIC_FEATURES, LEROBOT_VIDEO_KEY):
        for stat in (*STATS, "count"):
            flat_stats[f"stats/{feature}/{stat}"] = [s[feature][stat] for s in per_episode]
    table = pa.Table.from_pylist(rows)
    for name, values in flat_stats.items():
        table = table.append_column(name, pa.array(values))
    _write_parquet_atomic(table, out / EPISODES_META)
    # As lerobot writes and reads it: task_index indexed by the task string.
    tmp = out / "meta" / ".tasks.parquet.tmp"
    pd.DataFrame({"task_index": list(range(len(tasks)))}, index=pd.Index(tasks, name="task")).to_parquet(tmp)
    os.replace(tmp, out / "meta" / "tasks.parquet")
    stats = {feature: _merge_stats([s[feature] for s in per_episode]) for feature in (*NUMERIC_FEATURES, LEROBOT_VIDEO_KEY)}
    _write_text_atomic(out / "meta" / "stats.json", json.dumps(stats, indent=1))
    fps = float(rows[0]["roam/fps"])
    h, w = int(rows[0]["roam/height"]), int(rows[0]["roam/width"])
    n_frames = int(sum(r["length"] for r in rows))
    info = {
        "codebase_version": "v3.0",
        "robot_type": "roam_camera",
        "total_episodes": len(rows),
        "total_frames": n_frames,
        "total_tasks": len(tasks),
        "chunks_size": 1000,
        "data_files_size_in_mb": 100,
        "video_files_size_in_mb": 500,
        "fps": fps,
        "splits": {"train": f"0:{len(rows)}"},
        "data_path": DATA_PATH,
        "video_path": VIDEO_PATH,
        "features": lerobot_features(h, w, fps, string_columns=("participant", "scene")),
        "roam": {
            "campaign": campaign.name if campaign is not None else None,
            "record_dir": str(record_dir),
            "reviews": str(record_dir / REVIEWS_FILE),
            "intrinsics": rows[0]["roam/intrinsics"],
            "width": w,
            "height": h,
            "cameras": "cameras/re10k/episode_{episode_index:06d}.txt",
            "conventions": "c2w OpenCV axes, gravity-aligned world with +y down, metres; state = [x y z qx qy qz qw] of c2w",
        },
    }
    _write_text_atomic(out / "meta" / "info.json", json.dumps(info, indent=1))
