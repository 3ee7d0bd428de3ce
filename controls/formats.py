"""Camera trajectory file formats: readers and writers.

Every reader returns `TrajectoryData` in our conventions (world_T_cam with OpenCV camera axes, metres,
intrinsics (fx, fy, cx, cy) in pixels); every writer takes the same. Values are validated on the way in
(`controls.trajectory.Trajectory` checks rigidity, ranges and shapes); a malformed file raises ValueError
naming the file, the line or key, and the offending value.

Formats:
- "re10k": RealEstate10K camera txt. Line 1 is the video URL; then one line per frame with 19 numbers:
  timestamp (microseconds), fx/W, fy/H, cx/W, cy/H, two zeros, then the 3x4 world-to-camera matrix row
  by row. Its units are not metres: metres = file units * scene_scale.
- "sana_bench": SANA-WM-Bench `.npz` with `c2w` [F, 4, 4], `intrinsics` [F, 3, 3] (source pixels) and
  `num_frames` (F); the image size is not stored by the benchmark, so our writer adds `width`, `height`,
  `fps`. A file without a size loads at the size the caller gives (`ImageSizeMissing` otherwise).
- "nerfstudio": `transforms.json` with OpenGL camera axes (x right, y up, z back) in `transform_matrix`
  and intrinsics `fl_x, fl_y, cx, cy, w, h` (global, or per frame when they vary). Only the camera axes
  are converted; the world frame is kept as is.
- "json": our plain JSON: {"format": "roam.trajectory", "version": 1, "fps", "width", "height",
  "world_T_cams": [F x 4 x 4], "intrinsics": [F x 4]}.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controls.camera import intrinsics_matrix, intrinsics_vec4, invert, opencv_to_opengl, opengl_to_opencv

FORMATS = ("re10k", "sana_bench", "nerfstudio", "json")
JSON_FORMAT_TAG = "roam.trajectory"
RE10K_URL = "https://roam.invalid/trajectory"


class ImageSizeMissing(ValueError):
    """The file does not say the image size its intrinsics are in (RealEstate10K, a bare benchmark npz);
    the caller must give width and height."""


@dataclass(frozen=True, eq=False)
class TrajectoryData:
    """What a reader found: poses in metres, intrinsics in pixels; None where the file does not say."""

    world_T_cams: np.ndarray  # [F, 4, 4]
    intrinsics: np.ndarray  # [F, 4]
    width: int | None
    height: int | None
    fps: float | None


def format_for_path(path: str | Path) -> str:
    """The format a file name implies: .txt -> re10k, .npz -> sana_bench, transforms.json -> nerfstudio,
    other .json -> json (a .json file's content decides between the two on reading)."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".txt":
        return "re10k"
    if suffix == ".npz":
        return "sana_bench"
    if suffix == ".json":
        return "nerfstudio" if p.name.lower() == "transforms.json" else "json"
    raise ValueError(f"{path}: cannot tell the trajectory format from the extension {suffix!r} (use .txt, .npz, .json)")


def _scaled(world_T_cams: np.ndarray, scale: float) -> np.ndarray:
    out = np.array(world_T_cams, dtype=np.float64)
    out[:, :3, 3] *= scale
    return out


def _check_scale(scene_scale: float) -> None:
    if not (isinstance(scene_scale, (int, float)) and math.isfinite(scene_scale) and scene_scale > 0):
        raise ValueError(f"scene_scale must be a positive finite number, got {scene_scale!r}")


def _size(value, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value) or value <= 0:
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def _array(value, shape_tail: tuple[int, ...], name: str, where: str) -> np.ndarray:
    try:
        a = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {name} is not a numeric array ({e})") from None
    if a.ndim != 1 + len(shape_tail) or a.shape[1:] != shape_tail or a.shape[0] < 1:
        raise ValueError(f"{where}: {name} must have shape [F, {', '.join(map(str, shape_tail))}], got {a.shape}")
    if not np.all(np.isfinite(a)):
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{where}: {name} has a non-finite value at index {tuple(bad.tolist())}")
    return a


def read_re10k(path: str | Path, *, width: int, height: int, scene_scale: float = 1.0) -> TrajectoryData:
    """RealEstate10K txt -> poses in metres (file units * scene_scale) and pixel intrinsics for W x H."""
    _check_scale(scene_scale)
    if width is None or height is None:
        raise ImageSizeMissing(f"{path}: RealEstate10K intrinsics are normalised; pass width= and height= to load it")
    lines = Path(path).read_text().splitlines()
    rows: list[list[float]] = []
    for lineno, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if lineno == 1 and len(fields) == 1:
            continue  # the video URL
        if len(fields) != 19:
            raise ValueError(
                f"{path}:{lineno}: expected 19 columns (timestamp, fx fy cx cy, 0 0, 3x4 w2c), got {len(fields)}"
            )
        try:
            values = [float(f) for f in fields]
        except ValueError:
            raise ValueError(f"{path}:{lineno}: non-numeric field in {line!r}") from None
        if not all(math.isfinite(v) for v in values):
            raise ValueError(f"{path}:{lineno}: NaN or inf in {line!r}")
        rows.append(values)
    if not rows:
        raise ValueError(f"{path}: no camera lines")
    data = np.array(rows)  # [F, 19]
    if np.any(np.diff(data[:, 0]) <= 0):
        i = int(np.argmax(np.diff(data[:, 0]) <= 0))
        raise ValueError(f"{path}: timestamps must increase, frame {i + 1} has {data[i + 1, 0]} after {data[i, 0]}")
    intrinsics = data[:, 1:5] * np.array([width, height, width, height], dtype=np.float64)
    cam_T_world = np.zeros((len(data), 4, 4))
    cam_T_world[:, :3, :] = data[:, 7:19].reshape(-1, 3, 4)
    cam_T_world[:, 3, 3] = 1.0
    return TrajectoryData(_scaled(invert(cam_T_world), scene_scale), intrinsics, width, height, None)


def write_re10k(data: TrajectoryData, path: str | Path, *, scene_scale: float = 1.0) -> None:
    """Poses in metres -> RealEstate10K txt in file units (metres / scene_scale)."""
    _check_scale(scene_scale)
    fps = data.fps or 16.0
    cam_T_world = invert(_scaled(data.world_T_cams, 1.0 / scene_scale))
    norm = data.intrinsics / np.array([data.width, data.height, data.width, data.height], dtype=np.float64)
    lines = [RE10K_URL]
    for i, (k, P) in enumerate(zip(norm, cam_T_world)):
        stamp = round(i * 1e6 / fps)
        nums = [*k.tolist(), 0.0, 0.0, *P[:3, :].reshape(-1).tolist()]
        lines.append(" ".join([str(stamp)] + [repr(float(x)) for x in nums]))
    Path(path).write_text("\n".join(lines) + "\n")


def read_sana_bench(
    path: str | Path, *, width: int | None = None, height: int | None = None, scene_scale: float = 1.0
) -> TrajectoryData:
    """SANA-WM-Bench npz (`c2w` [F, 4, 4], `intrinsics` [F, 3, 3]; optional `width`, `height`, `fps`)."""
    _check_scale(scene_scale)
    where = str(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            found = {k: z[k] for k in z.files}
    except (OSError, ValueError) as e:
        raise ValueError(f"{where}: not a readable .npz ({e})") from None
    missing = [k for k in ("c2w", "intrinsics") if k not in found]
    if missing:
        raise ValueError(f"{where}: missing arrays {missing}; found {sorted(found)}")
    c2w = _array(found["c2w"], (4, 4), "c2w", where)
    K = _array(found["intrinsics"], (3, 3), "intrinsics", where)
    if len(K) != len(c2w):
        raise ValueError(f"{where}: {len(c2w)} poses but {len(K)} intrinsics")
    if "num_frames" in found and _size(found["num_frames"].item(), "num_frames", where) != len(c2w):
        raise ValueError(f"{where}: num_frames is {found['num_frames'].item()} but c2w holds {len(c2w)} poses")
    size = {}
    for key, given in (("width", width), ("height", height)):
        stored = _size(found[key].item(), key, where) if key in found else None
        if stored is not None and given is not None and stored != given:
            raise ValueError(f"{where}: file says {key}={stored}, caller asked for {given}")
        size[key] = stored if stored is not None else given
    fps = float(found["fps"].item()) if "fps" in found else None
    return TrajectoryData(_scaled(c2w, scene_scale), intrinsics_vec4(K), size["width"], size["height"], fps)


def write_sana_bench(data: TrajectoryData, path: str | Path, *, scene_scale: float = 1.0) -> None:
    _check_scale(scene_scale)
    # num_frames as the official benchmark files carry it; width, height and fps are ours.
    extra = {"num_frames": np.int64(len(data.world_T_cams)), "width": np.int64(data.width), "height": np.int64(data.height)}
    if data.fps is not None:
        extra["fps"] = np.float64(data.fps)
    with open(path, "wb") as f:
        np.savez(
            f,
            c2w=_scaled(data.world_T_cams, 1.0 / scene_scale),
            intrinsics=intrinsics_matrix(data.intrinsics),
            **extra,
        )


def _read_json(path: str | Path) -> object:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from None


def read_nerfstudio(path: str | Path, *, scene_scale: float = 1.0, obj: dict | None = None) -> TrajectoryData:
    """nerfstudio transforms.json (OpenGL camera axes) -> OpenCV world_T_cams."""
    _check_scale(scene_scale)
    where = str(path)
    obj = _read_json(path) if obj is None else obj
    if not isinstance(obj, dict) or not isinstance(obj.get("frames"), list) or not obj["frames"]:
        raise ValueError(f"{where}: a transforms.json needs a non-empty 'frames' list")
    mats, intr, sizes = [], [], set()
    for i, fr in enumerate(obj["frames"]):
        if not isinstance(fr, dict) or "transform_matrix" not in fr:
            raise ValueError(f"{where}: frames[{i}] has no 'transform_matrix'")
        try:
            m = np.asarray(fr["transform_matrix"], dtype=np.float64)
        except (TypeError, ValueError):
            m = np.zeros(0)
        if m.shape not in ((4, 4), (3, 4)):
            raise ValueError(f"{where}: frames[{i}].transform_matrix must be a 4x4 or 3x4 list of numbers")
        if not np.all(np.isfinite(m)):
            raise ValueError(f"{where}: frames[{i}].transform_matrix has NaN or inf")
        if m.shape == (3, 4):
            m = np.vstack([m, [0.0, 0.0, 0.0, 1.0]])
        mats.append(m)
        vals = []
        for key in ("fl_x", "fl_y", "cx", "cy"):
            v = fr.get(key, obj.get(key))
            if v is None:
                raise ValueError(f"{where}: no {key!r} for frames[{i}] (neither per frame nor global)")
            vals.append(v)
        intr.append(vals)
        w, h = fr.get("w", obj.get("w")), fr.get("h", obj.get("h"))
        if w is None or h is None:
            raise ValueError(f"{where}: no image size 'w'/'h' for frames[{i}]")
        sizes.add((_size(w, "w", where), _size(h, "h", where)))
    if len(sizes) != 1:
        raise ValueError(f"{where}: frames have different image sizes {sorted(sizes)}; one trajectory has one size")
    (width, height), = sizes
    c2w = opengl_to_opencv(np.stack(mats))
    intrinsics = _array(intr, (4,), "intrinsics", where)
    return TrajectoryData(_scaled(c2w, scene_scale), intrinsics, width, height, obj.get("fps"))


def write_nerfstudio(data: TrajectoryData, path: str | Path, *, scene_scale: float = 1.0) -> None:
    _check_scale(scene_scale)
    gl = opencv_to_opengl(_scaled(data.world_T_cams, 1.0 / scene_scale))
    keys = ("fl_x", "fl_y", "cx", "cy")
    constant = bool(np.all(data.intrinsics == data.intrinsics[0]))
    obj: dict = {"camera_model": "OPENCV", "w": int(data.width), "h": int(data.height)}
    if data.fps is not None:
        obj["fps"] = float(data.fps)
    if constant:
        obj.update({k: float(v) for k, v in zip(keys, data.intrinsics[0])})
    frames = []
    for i, (m, k) in enumerate(zip(gl, data.intrinsics)):
        fr = {"file_path": f"images/frame_{i:05d}.png", "transform_matrix": m.tolist()}
        if not constant:
            fr.update({key: float(v) for key, v in zip(keys, k)})
        frames.append(fr)
    obj["frames"] = frames
    Path(path).write_text(json.dumps(obj, indent=1))


def read_json(path: str | Path, *, scene_scale: float = 1.0, obj: dict | None = None) -> TrajectoryData:
    """Our plain JSON trajectory."""
    _check_scale(scene_scale)
    where = str(path)
    obj = _read_json(path) if obj is None else obj
    tag = obj.get("format") if isinstance(obj, dict) else None
    if tag != JSON_FORMAT_TAG:
        raise ValueError(f"{where}: not a {JSON_FORMAT_TAG} file (its 'format' is {tag!r})")
    if obj.get("version") != 1:
        raise ValueError(f"{where}: unsupported version {obj.get('version')!r} (this reader knows 1)")
    for key in ("width", "height", "world_T_cams", "intrinsics"):
        if key not in obj:
            raise ValueError(f"{where}: missing key {key!r}")
    poses = _array(obj["world_T_cams"], (4, 4), "world_T_cams", where)
    intr = _array(obj["intrinsics"], (4,), "intrinsics", where)
    fps = obj.get("fps")
    if fps is not None and (isinstance(fps, bool) or not isinstance(fps, (int, float))):
        raise ValueError(f"{where}: fps must be a number, got {fps!r}")
    width, height = _size(obj["width"], "width", where), _size(obj["height"], "height", where)
    return TrajectoryData(_scaled(poses, scene_scale), intr, width, height, fps)


def write_json(data: TrajectoryData, path: str | Path, *, scene_scale: float = 1.0) -> None:
    _check_scale(scene_scale)
    obj = {
        "format": JSON_FORMAT_TAG,
        "version": 1,
        "conventions": "camera-to-world, OpenCV camera axes (x right, y down, z forward), world +y down, metres",
        "fps": data.fps,
        "width": int(data.width),
        "height": int(data.height),
        "world_T_cams": _scaled(data.world_T_cams, 1.0 / scene_scale).tolist(),
        "intrinsics": np.asarray(data.intrinsics, dtype=np.float64).tolist(),
    }
    Path(path).write_text(json.dumps(obj))


def read(path: str | Path, *, width: int | None, height: int | None, scene_scale: float = 1.0) -> TrajectoryData:
    """Read any supported file; a .json file's content picks nerfstudio (has 'frames') or our format."""
    fmt = format_for_path(path)
    if fmt == "re10k":
        return read_re10k(path, width=width, height=height, scene_scale=scene_scale)
    if fmt == "sana_bench":
        data = read_sana_bench(path, width=width, height=height, scene_scale=scene_scale)
    else:
        obj = _read_json(path)
        reader = read_nerfstudio if isinstance(obj, dict) and "frames" in obj else read_json
        data = reader(path, scene_scale=scene_scale, obj=obj)
    for key, given in (("width", width), ("height", height)):
        stored = getattr(data, key)
        if stored is not None and given is not None and stored != given:
            raise ValueError(f"{path}: file says {key}={stored}, caller asked for {given}")
    return data


WRITERS = {"re10k": write_re10k, "sana_bench": write_sana_bench, "nerfstudio": write_nerfstudio, "json": write_json}
