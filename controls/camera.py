"""Pure camera math and the model's camera conditioning.

Conventions (shared by every room): OpenCV camera axes (x right, y down, z forward), poses are
camera-to-world 4x4 matrices named by their frames (`world_T_cam` maps camera coordinates to world
coordinates, `a_T_b @ b_T_c = a_T_c`), the world is gravity-aligned with +y pointing DOWN (up is
(0, -1, 0)), metres, radians inside and degrees only at the edges. Intrinsics are either K [3, 3] or the
vector (fx, fy, cx, cy) in pixels; pixel centres sit on integer coordinates 0..W-1, 0..H-1 (no +0.5),
like the official SANA-WM ray builder.

Rotations: yaw psi > 0 turns right, pitch theta > 0 looks up, roll phi > 0 rolls clockwise (the
camera's right side dips down), and a camera orientation is R = Ry(psi) @ Rx(theta) @ Rz(phi).

The conditioning builders reproduce `diffusers.pipelines.sana_wm.cam_utils.prepare_camera`:
per latent frame i (raw frame stride*i), `camera_conditions` holds the row-major pose relative to frame 0
(16 numbers) followed by fx, fy, cx, cy scaled to the latent grid; `chunk_plucker` holds, for each of
the `stride` raw frames [max(0, stride*i - stride + 1), +stride) (padded by repeating the last one when
the clip is shorter), the Plücker rays [direction, origin x direction] on the latent grid.

Functions are pure, take numpy (or torch, converted once) and return numpy float64, except the
conditioning builders which return torch float32 for the model.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

WORLD_UP = np.array([0.0, -1.0, 0.0])
# Flipping the camera's y and z axes turns OpenCV axes (y down, z forward) into OpenGL (y up, z back).
_CV_TO_GL = np.diag([1.0, -1.0, -1.0, 1.0])


def _f64(x, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().double().numpy()
    a = np.asarray(x, dtype=np.float64)
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} contains NaN or inf: {a if a.size <= 16 else a.shape}")
    return a


def _check_pose(a: np.ndarray, name: str) -> None:
    if a.ndim < 2 or a.shape[-2:] != (4, 4):
        raise ValueError(f"{name} must have shape [..., 4, 4], got {tuple(a.shape)}")


def make_pose(rotation, translation) -> np.ndarray:
    """4x4 rigid transform from R [..., 3, 3] and t [..., 3] -> [..., 4, 4]."""
    R = _f64(rotation, "rotation")
    t = _f64(translation, "translation")
    if R.shape[-2:] != (3, 3) or t.shape[-1:] != (3,) or R.shape[:-2] != t.shape[:-1]:
        raise ValueError(f"rotation [..., 3, 3] and translation [..., 3] disagree: {R.shape} vs {t.shape}")
    out = np.zeros(R.shape[:-2] + (4, 4))
    out[..., :3, :3] = R
    out[..., :3, 3] = t
    out[..., 3, 3] = 1.0
    return out


def compose(a_T_b, b_T_c) -> np.ndarray:
    """a_T_c = a_T_b @ b_T_c for poses [..., 4, 4] (batch dims broadcast)."""
    A = _f64(a_T_b, "a_T_b")
    B = _f64(b_T_c, "b_T_c")
    _check_pose(A, "a_T_b")
    _check_pose(B, "b_T_c")
    return A @ B


def invert(a_T_b) -> np.ndarray:
    """b_T_a for a rigid transform a_T_b [..., 4, 4], using R^T rather than a general inverse."""
    A = _f64(a_T_b, "a_T_b")
    _check_pose(A, "a_T_b")
    Rt = np.swapaxes(A[..., :3, :3], -1, -2)
    return make_pose(Rt, -np.einsum("...ij,...j->...i", Rt, A[..., :3, 3]))


def rotation_yaw(rad: float) -> np.ndarray:
    """Ry(psi) [3, 3]: psi > 0 turns the camera to the right (forward +z swings towards +x)."""
    c, s = math.cos(rad), math.sin(rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def rotation_pitch(rad: float) -> np.ndarray:
    """Rx(theta) [3, 3]: theta > 0 looks up (forward gets a negative, i.e. upward, y component)."""
    c, s = math.cos(rad), math.sin(rad)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def rotation_roll(rad: float) -> np.ndarray:
    """Rz(phi) [3, 3]: phi > 0 rolls clockwise as seen from behind (the right axis dips towards +y)."""
    c, s = math.cos(rad), math.sin(rad)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rotation_from_ypr(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """R = Ry(yaw) @ Rx(pitch) @ Rz(roll) [3, 3], angles in radians."""
    return rotation_yaw(yaw) @ rotation_pitch(pitch) @ rotation_roll(roll)


def ypr_from_rotation(R) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in radians with R = Ry(yaw) Rx(pitch) Rz(roll); pitch in [-pi/2, pi/2].

    R[:, 2] = (cos p sin y, -sin p, cos p cos y) and R[1, :] = (cos p sin r, cos p cos r, -sin p).
    At pitch = +-90 deg yaw and roll are not separable; roll is then reported as 0.
    """
    R = _f64(R, "R")
    if R.shape != (3, 3):
        raise ValueError(f"R must be [3, 3], got {R.shape}")
    pitch = math.asin(max(-1.0, min(1.0, -R[1, 2])))
    if math.cos(pitch) < 1e-9:
        return math.atan2(-R[2, 0], R[0, 0]), pitch, 0.0
    return math.atan2(R[0, 2], R[2, 2]), pitch, math.atan2(R[1, 0], R[1, 1])


def is_rigid(pose, atol: float = 1e-5) -> bool:
    """True when pose [4, 4] has an orthonormal, right-handed rotation and a (0, 0, 0, 1) last row."""
    P = _f64(pose, "pose")
    _check_pose(P, "pose")
    R = P[..., :3, :3]
    eye = np.broadcast_to(np.eye(3), R.shape)
    return bool(
        np.allclose(np.swapaxes(R, -1, -2) @ R, eye, atol=atol)
        and np.allclose(np.linalg.det(R), 1.0, atol=atol)
        and np.allclose(P[..., 3, :], [0.0, 0.0, 0.0, 1.0], atol=atol)
    )


def look_at(eye, target, up=(0.0, -1.0, 0.0)) -> np.ndarray:
    """world_T_cam [4, 4] of a camera at `eye` looking at `target`, its image 'up' towards `up`.

    z = forward, x = z x up (right), y = z x x (down), the OpenCV axes.
    """
    eye_w = _f64(eye, "eye")
    target_w = _f64(target, "target")
    up_w = _f64(up, "up")
    z = target_w - eye_w
    if np.linalg.norm(z) < 1e-12:
        raise ValueError(f"look_at: eye {eye_w} and target {target_w} coincide")
    z = z / np.linalg.norm(z)
    x = np.cross(z, up_w)
    if np.linalg.norm(x) < 1e-9 * max(1.0, np.linalg.norm(up_w)):
        raise ValueError(f"look_at: viewing direction {z} is parallel to up {up_w}")
    x = x / np.linalg.norm(x)
    y = np.cross(z, x)
    return make_pose(np.stack([x, y, z], axis=-1), eye_w)


def relative_poses(world_T_cams) -> np.ndarray:
    """first_T_cams [N, 4, 4] = inv(world_T_cams[0]) @ world_T_cams; frame 0 is exactly the identity."""
    P = _f64(world_T_cams, "world_T_cams")
    if P.ndim != 3 or P.shape[1:] != (4, 4) or P.shape[0] < 1:
        raise ValueError(f"world_T_cams must be [N>=1, 4, 4], got {P.shape}")
    out = invert(P[0]) @ P
    out[0] = np.eye(4)
    return out


def opencv_to_opengl(world_T_cam) -> np.ndarray:
    """Camera axes OpenCV (x right, y down, z fwd) -> OpenGL (x right, y up, z back); the world frame is kept."""
    P = _f64(world_T_cam, "world_T_cam")
    _check_pose(P, "world_T_cam")
    return P @ _CV_TO_GL


def opengl_to_opencv(world_T_cam_gl) -> np.ndarray:
    """Inverse of `opencv_to_opengl` (the axis flip is its own inverse)."""
    P = _f64(world_T_cam_gl, "world_T_cam_gl")
    _check_pose(P, "world_T_cam_gl")
    return P @ _CV_TO_GL


def intrinsics_from_fov(width: int, height: int, hfov_deg: float) -> np.ndarray:
    """Pinhole K [3, 3] with square pixels and the principal point at (W/2, H/2)."""
    if width <= 0 or height <= 0:
        raise ValueError(f"image size must be positive, got width={width} height={height}")
    if not (0.0 < hfov_deg < 180.0):
        raise ValueError(f"hfov_deg must be in (0, 180), got {hfov_deg}")
    f = 0.5 * width / math.tan(math.radians(hfov_deg) / 2.0)
    return np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])


def intrinsics_vec4(K) -> np.ndarray:
    """K [..., 3, 3] -> (fx, fy, cx, cy) [..., 4]; a [..., 4] input is returned as float64."""
    K = _f64(K, "K")
    if K.shape[-1:] == (4,):
        return K.copy()
    if K.ndim < 2 or K.shape[-2:] != (3, 3):
        raise ValueError(f"intrinsics must be [..., 3, 3] or [..., 4], got {K.shape}")
    return np.stack([K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2]], axis=-1)


def intrinsics_matrix(vec4) -> np.ndarray:
    """(fx, fy, cx, cy) [..., 4] -> K [..., 3, 3]."""
    v = _f64(vec4, "intrinsics")
    if v.shape[-1:] != (4,):
        raise ValueError(f"intrinsics vector must be [..., 4], got {v.shape}")
    K = np.zeros(v.shape[:-1] + (3, 3))
    K[..., 0, 0], K[..., 1, 1], K[..., 0, 2], K[..., 1, 2] = v[..., 0], v[..., 1], v[..., 2], v[..., 3]
    K[..., 2, 2] = 1.0
    return K


def _check_intrinsics(v: np.ndarray, name: str) -> None:
    if np.any(v[..., :2] <= 0):
        raise ValueError(f"{name}: focal lengths must be positive, got fx/fy {v[..., :2].reshape(-1)[:8]}")


def resize_crop_geometry(
    src_size: tuple[int, int], dst_size: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Aspect-preserving resize that covers dst, then a centre crop, as the official pipeline does.

    Sizes are (width, height) like PIL. Returns ((resized_w, resized_h), (crop_left, crop_top)).
    """
    (src_w, src_h), (dst_w, dst_h) = src_size, dst_size
    if min(src_w, src_h, dst_w, dst_h) <= 0:
        raise ValueError(f"sizes must be positive, got src_size={src_size} dst_size={dst_size}")
    scale = max(dst_h / src_h, dst_w / src_w)
    rw = max(dst_w, int(round(src_w * scale)))
    rh = max(dst_h, int(round(src_h * scale)))
    return (rw, rh), ((rw - dst_w) // 2, (rh - dst_h) // 2)


def intrinsics_after_resize_crop(K, src_size: tuple[int, int], dst_size: tuple[int, int]) -> np.ndarray:
    """Intrinsics of an image after `resize_crop_geometry(src_size, dst_size)`; sizes are (width, height).

    K is [..., 3, 3] or [..., 4] and the result has the same form.
    """
    K = _f64(K, "K")
    v = intrinsics_vec4(K)
    (rw, rh), (left, top) = resize_crop_geometry(src_size, dst_size)
    sx, sy = rw / src_size[0], rh / src_size[1]
    out = np.stack([v[..., 0] * sx, v[..., 1] * sy, v[..., 2] * sx - left, v[..., 3] * sy - top], axis=-1)
    return out if K.shape[-1:] == (4,) else intrinsics_matrix(out)


def plucker_rays(K, world_T_cam, height: int, width: int) -> np.ndarray:
    """Plücker rays [..., 6, h, w]: unit world directions d, then moments o x d (o = camera centre).

    K [..., 3, 3] or [..., 4] in pixels of the (height, width) grid; world_T_cam [..., 4, 4]; batch dims
    broadcast. Pixel (u, v) sits on integer coordinates; d = normalize(R @ ((u-cx)/fx, (v-cy)/fy, 1)).
    """
    v4 = intrinsics_vec4(K)
    _check_intrinsics(v4, "K")
    P = _f64(world_T_cam, "world_T_cam")
    _check_pose(P, "world_T_cam")
    if height <= 0 or width <= 0:
        raise ValueError(f"grid size must be positive, got height={height} width={width}")
    batch = np.broadcast_shapes(v4.shape[:-1], P.shape[:-2])
    v4 = np.broadcast_to(v4, batch + (4,))
    P = np.broadcast_to(P, batch + (4, 4))
    vv = np.arange(height, dtype=np.float64)[:, None]  # [h, 1]
    uu = np.arange(width, dtype=np.float64)[None, :]  # [1, w]
    fx, fy, cx, cy = (v4[..., i, None, None] for i in range(4))
    x = (uu - cx) / fx  # [..., 1, w]
    y = (vv - cy) / fy  # [..., h, 1]
    R = P[..., :3, :3, None, None]  # [..., 3, 3, 1, 1]
    o = P[..., :3, 3, None, None]  # [..., 3, 1, 1]
    out = np.empty(batch + (6, height, width))  # [..., 6, h, w]
    # d = R @ (x, y, 1), one component at a time: cheaper than einsum over [..., h, w, 3].
    for i in range(3):
        out[..., i, :, :] = R[..., i, 0, :, :] * x + R[..., i, 1, :, :] * y + R[..., i, 2, :, :]
    d = out[..., :3, :, :]
    d /= np.sqrt((d * d).sum(axis=-3, keepdims=True))
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        out[..., 3 + i, :, :] = o[..., j, :, :] * d[..., k, :, :] - o[..., k, :, :] * d[..., j, :, :]
    return out


def _check_stride(vae_stride: Sequence[int]) -> tuple[int, int]:
    if len(vae_stride) != 3 or min(vae_stride) < 1 or vae_stride[1] != vae_stride[2]:
        raise ValueError(f"vae_stride must be (t, s, s) with positive ints, got {tuple(vae_stride)}")
    return int(vae_stride[0]), int(vae_stride[-1])


def _latent_grid(target_size: Sequence[int], s: int) -> tuple[int, int, float, float]:
    H, W = int(target_size[0]), int(target_size[1])
    if H < s or W < s:
        raise ValueError(f"target_size (H, W)={tuple(target_size)} is smaller than the spatial stride {s}")
    h, w = H // s, W // s
    return h, w, w / W, h / H


def _latent_intrinsics(v4: np.ndarray, sx: float, sy: float) -> np.ndarray:
    out = v4.copy()
    out[..., [0, 2]] *= sx
    out[..., [1, 3]] *= sy
    return out


def _chunk_plucker(first_T_cams: np.ndarray, intr_latent: np.ndarray, h: int, w: int) -> np.ndarray:
    """[n_lat, t, 4, 4] poses and [n_lat, t, 4] intrinsics -> [6*t, n_lat, h, w], frame-major channels."""
    rays = plucker_rays(intr_latent, first_T_cams, h, w)  # [n_lat, t, 6, h, w]
    n_lat, t = rays.shape[:2]
    return rays.reshape(n_lat, t * 6, h, w).transpose(1, 0, 2, 3)


def _window_indices(latents: np.ndarray, t: int, n_frames: int) -> np.ndarray:
    """Raw frame indices [n_lat, t] feeding each latent's Plücker window, padded by repeating the last."""
    starts = np.maximum(latents * t - (t - 1), 0)
    idx = starts[:, None] + np.arange(t)[None, :]
    return np.minimum(idx, n_frames - 1)


def _pack(first_T_cams, intr_latent, latents, t, h, w) -> dict[str, torch.Tensor]:
    n = first_T_cams.shape[0]
    conds = np.concatenate([first_T_cams[latents * t].reshape(len(latents), 16), intr_latent[latents * t]], axis=-1)
    win = _window_indices(latents, t, n)
    plucker = _chunk_plucker(first_T_cams[win], intr_latent[win], h, w)
    return {
        "camera_conditions": torch.from_numpy(conds.astype(np.float32)),  # [T_lat, 20]
        "chunk_plucker": torch.from_numpy(np.ascontiguousarray(plucker, dtype=np.float32)),  # [6t, T_lat, h, w]
    }


def _intrinsics_per_frame(intrinsics, n_frames: int) -> np.ndarray:
    v = _f64(intrinsics, "intrinsics")
    if v.shape in ((4,), (3, 3)):
        v = np.broadcast_to(intrinsics_vec4(v), (n_frames, 4))
    elif (v.ndim == 2 and v.shape[1] == 4) or (v.ndim == 3 and v.shape[1:] == (3, 3)):
        v = intrinsics_vec4(v)
    else:
        raise ValueError(f"intrinsics must be [4], [3, 3], [F, 4] or [F, 3, 3], got {v.shape}")
    if v.shape[0] != n_frames:
        raise ValueError(f"intrinsics have {v.shape[0]} frames but poses have {n_frames}")
    _check_intrinsics(v, "intrinsics")
    return v


def prepare_camera(
    poses_c2w,
    intrinsics,
    target_size: Sequence[int] = (704, 1280),
    vae_stride: Sequence[int] = (8, 32, 32),
) -> dict[str, torch.Tensor]:
    """Camera tensors for the whole clip, equal to the official `prepare_camera`.

    Args:
        poses_c2w: world_T_cam per raw frame [F, 4, 4] (OpenCV axes).
        intrinsics: (fx, fy, cx, cy) in pixels of `target_size`, [F, 4] or [F, 3, 3] (or one for all).
        target_size: (H, W) of the frames in pixels.
        vae_stride: (t, s, s) of the VAE.

    Returns:
        {"camera_conditions": [T_lat, 20] float32, "chunk_plucker": [6*t, T_lat, H/s, W/s] float32},
        T_lat = (F - 1) // t + 1.
    """
    t, s = _check_stride(vae_stride)
    P = _f64(poses_c2w, "poses_c2w")
    if P.ndim != 3 or P.shape[1:] != (4, 4) or P.shape[0] < 1:
        raise ValueError(f"poses_c2w must be [F>=1, 4, 4], got {P.shape}")
    v = _intrinsics_per_frame(intrinsics, P.shape[0])
    h, w, sx, sy = _latent_grid(target_size, s)
    latents = np.arange((P.shape[0] - 1) // t + 1)
    return _pack(relative_poses(P), _latent_intrinsics(v, sx, sy), latents, t, h, w)


class ChunkCameraConditioner:
    """Streaming form of `prepare_camera`: the same numbers, one latent range at a time.

    Raw frames are added as the integrator produces them (frame 0 = the session's start frame). Latent i
    needs raw frames up to t*i (and frames 0..t-1 for latent 0), so `latent_chunk(a, b)` requires frames
    0..max(t-1, t*(b-1)) to have been added. After a chunk is built, frames no later latent can use are
    dropped, so memory stays bounded by about two chunks of raw frames. Concatenating `latent_chunk` over
    consecutive ranges equals `prepare_camera` on all frames.
    """

    def __init__(
        self,
        first_world_T_cam,
        intrinsics,
        target_size: Sequence[int] = (704, 1280),
        vae_stride: Sequence[int] = (8, 32, 32),
    ):
        first = _f64(first_world_T_cam, "first_world_T_cam")
        if first.shape != (4, 4):
            raise ValueError(f"first_world_T_cam must be [4, 4], got {first.shape}")
        v = intrinsics_vec4(_f64(intrinsics, "intrinsics"))
        if v.shape != (4,):
            raise ValueError(f"intrinsics must be (fx, fy, cx, cy) or K [3, 3], got shape {v.shape}")
        _check_intrinsics(v, "intrinsics")
        self.t, s = _check_stride(vae_stride)
        self.h, self.w, sx, sy = _latent_grid(target_size, s)
        self._first = first
        self._cam0_T_world = invert(first)
        self._intr_latent = _latent_intrinsics(v, sx, sy)
        self._frames: list[np.ndarray] = []  # first_T_cam of raw frames _offset, _offset+1, ...
        self._offset = 0
        self.n_frames = 0
        self.next_latent = 0

    def add_frames(self, world_T_cams) -> None:
        """Append raw frames [n, 4, 4] (world_T_cam, same world as the first pose)."""
        P = _f64(world_T_cams, "world_T_cams")
        if P.ndim != 3 or P.shape[1:] != (4, 4):
            raise ValueError(f"world_T_cams must be [n, 4, 4], got {P.shape}")
        if len(P) == 0:
            return
        rel = self._cam0_T_world @ P
        if self.n_frames == 0:
            if not np.allclose(P[0], self._first, atol=1e-6):
                raise ValueError(
                    f"frame 0 must be the start pose given to the conditioner:\n{P[0]}\nvs\n{self._first}"
                )
            rel[0] = np.eye(4)
        self._frames.extend(rel)
        self.n_frames += len(P)

    def frames_needed(self, latent_end: int) -> int:
        """How many raw frames (from frame 0) must have been added before `latent_chunk(..., latent_end)`."""
        return max(self.t, self.t * (latent_end - 1) + 1)

    def latent_chunk(self, latent_start: int, latent_end: int) -> dict[str, torch.Tensor]:
        """Camera tensors for latents [latent_start, latent_end): the `prepare_camera` slices.

        Returns {"camera_conditions": [Tc, 20], "chunk_plucker": [6*t, Tc, h, w]} (float32 torch).
        """
        if not (0 <= latent_start < latent_end):
            raise ValueError(f"need 0 <= latent_start < latent_end, got [{latent_start}, {latent_end})")
        first_needed = max(0, latent_start * self.t - (self.t - 1))
        if first_needed < self._offset:
            raise ValueError(
                f"latents [{latent_start}, {latent_end}) need raw frame {first_needed}, already dropped "
                f"(kept from frame {self._offset}; build chunks in order or use a new conditioner)"
            )
        if self.n_frames < self.frames_needed(latent_end):
            raise ValueError(
                f"latents [{latent_start}, {latent_end}) need {self.frames_needed(latent_end)} raw frames, "
                f"only {self.n_frames} added"
            )
        kept = np.stack(self._frames)  # [n_kept, 4, 4]
        latents = np.arange(latent_start, latent_end)
        win = _window_indices(latents, self.t, self.n_frames) - self._offset
        plucker = _chunk_plucker(kept[win], np.broadcast_to(self._intr_latent, win.shape + (4,)), self.h, self.w)
        idx = latents * self.t - self._offset
        conds = np.concatenate(
            [kept[idx].reshape(len(latents), 16), np.broadcast_to(self._intr_latent, (len(latents), 4))], axis=-1
        )
        # Later latents (>= latent_end) only look at frames from t*latent_end - (t-1) on.
        drop = max(0, latent_end * self.t - (self.t - 1)) - self._offset
        if drop > 0:
            del self._frames[:drop]
            self._offset += drop
        self.next_latent = latent_end
        return {
            "camera_conditions": torch.from_numpy(conds.astype(np.float32)),  # [Tc, 20]
            "chunk_plucker": torch.from_numpy(np.ascontiguousarray(plucker, dtype=np.float32)),  # [6t, Tc, h, w]
        }
