"""Our camera conditioning equals diffusers' `pipelines.sana_wm.cam_utils` (the official builders)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from diffusers.pipelines.sana_wm import cam_utils

from controls.camera import (
    ChunkCameraConditioner,
    intrinsics_after_resize_crop,
    make_pose,
    plucker_rays,
    prepare_camera,
    resize_crop_geometry,
    rotation_from_ypr,
)


def random_trajectory(rng: np.random.Generator, n: int, step: float = 0.3) -> np.ndarray:
    """A random walk of world_T_cam [n, 4, 4] with wandering orientation."""
    angles = np.cumsum(rng.normal(scale=0.1, size=(n, 3)), axis=0) + rng.uniform(-1, 1, size=3)
    pos = np.cumsum(rng.normal(scale=step, size=(n, 3)), axis=0) + rng.uniform(-2, 2, size=3)
    return np.stack([make_pose(rotation_from_ypr(*a), p) for a, p in zip(angles, pos)])


def random_intrinsics(rng: np.random.Generator, n: int, H: int, W: int) -> np.ndarray:
    f = rng.uniform(0.6, 1.5) * W
    base = np.array([f, f * rng.uniform(0.9, 1.1), W / 2 + rng.uniform(-5, 5), H / 2 + rng.uniform(-5, 5)])
    return base[None] * (1 + rng.normal(scale=0.02, size=(n, 4)))  # [n, 4]


CASES = [
    pytest.param(17, 8, (704, 1280), id="F17-s8-720p"),
    pytest.param(23, 8, (256, 448), id="F23-s8-odd-tail"),
    pytest.param(5, 8, (128, 256), id="F5-shorter-than-stride"),
    pytest.param(21, 4, (128, 192), id="F21-s4"),
    pytest.param(14, 4, (96, 160), id="F14-s4-even"),
    pytest.param(1, 8, (64, 64), id="F1-single-frame"),
]


@pytest.mark.parametrize(("n_frames", "t", "size"), CASES)
def test_prepare_camera_matches_diffusers(n_frames, t, size):
    rng = np.random.default_rng(n_frames * 31 + t)
    H, W = size
    s = 32 if H >= 512 else 16
    poses = random_trajectory(rng, n_frames)
    intr = random_intrinsics(rng, n_frames, H, W)
    ref = cam_utils.prepare_camera(poses.astype(np.float32), intr.astype(np.float32), target_size=size, vae_stride=(t, s, s))
    ours = prepare_camera(poses, intr, target_size=size, vae_stride=(t, s, s))
    assert ours["camera_conditions"].shape == ref["raymap"].shape == ((n_frames - 1) // t + 1, 20)
    assert ours["chunk_plucker"].shape == ref["chunk_plucker"].shape
    torch.testing.assert_close(ours["camera_conditions"], ref["raymap"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours["chunk_plucker"], ref["chunk_plucker"], rtol=1e-5, atol=1e-5)


def test_prepare_camera_accepts_K_matrices_and_torch():
    rng = np.random.default_rng(3)
    poses = random_trajectory(rng, 9)
    intr = random_intrinsics(rng, 9, 64, 128)
    K = np.zeros((9, 3, 3))
    K[:, 0, 0], K[:, 1, 1], K[:, 0, 2], K[:, 1, 2], K[:, 2, 2] = intr[:, 0], intr[:, 1], intr[:, 2], intr[:, 3], 1
    a = prepare_camera(poses, intr, (64, 128), (8, 16, 16))
    b = prepare_camera(torch.from_numpy(poses), K, (64, 128), (8, 16, 16))
    torch.testing.assert_close(a["camera_conditions"], b["camera_conditions"])
    torch.testing.assert_close(a["chunk_plucker"], b["chunk_plucker"])


def test_plucker_rays_match_compute_raymap():
    rng = np.random.default_rng(5)
    poses = random_trajectory(rng, 4)
    intr = random_intrinsics(rng, 4, 22, 40)
    ref = cam_utils.compute_raymap(torch.from_numpy(intr), torch.from_numpy(poses), 22, 40)  # [T, H, W, 6]
    ours = plucker_rays(intr, poses, 22, 40)  # [T, 6, H, W]
    np.testing.assert_allclose(ours, ref.permute(0, 3, 1, 2).numpy(), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize(
    ("src", "dst"), [((1920, 1080), (1280, 704)), ((640, 480), (1280, 704)), ((1000, 2000), (320, 176))]
)
def test_resize_crop_matches_official(src, dst):
    from PIL import Image

    _, src_size, resized, offset = cam_utils.resize_and_center_crop(Image.new("RGB", src), dst[1], dst[0])
    assert resize_crop_geometry(src, dst) == (resized, offset)
    v = np.array([[800.0, 810.0, src[0] / 2 + 3, src[1] / 2 - 4]])
    ref = cam_utils.transform_intrinsics_for_crop(v, src_size, resized, offset)
    np.testing.assert_allclose(intrinsics_after_resize_crop(v, src, dst), ref, rtol=1e-12)


# Chunk ranges as the official AR loop builds them: first chunk 4 latents, then 3 at a time.
STREAM_CASES = [
    pytest.param(8, [4, 3, 3, 3], id="s8-official-[4,3,3,3]"),
    pytest.param(4, [4, 3, 3], id="s4-[4,3,3]"),
    pytest.param(8, [2, 1, 1, 5], id="s8-uneven"),
]


@pytest.mark.parametrize(("t", "chunks"), STREAM_CASES)
def test_chunk_conditioner_concat_equals_whole_clip(t, chunks):
    rng = np.random.default_rng(t + len(chunks))
    n_lat = sum(chunks)
    n_frames = t * (n_lat - 1) + 1
    H, W = 96, 160
    poses = random_trajectory(rng, n_frames)
    intr = random_intrinsics(rng, 1, H, W)[0]
    whole = prepare_camera(poses, intr, (H, W), (t, 16, 16))
    cond = ChunkCameraConditioner(poses[0], intr, (H, W), (t, 16, 16))
    parts, start, fed = [], 0, 0
    for n in chunks:
        end = start + n
        need = cond.frames_needed(end)
        # Feed frames in ragged pieces, as the integrator would per chunk.
        while fed < need:
            k = min(need - fed, int(rng.integers(1, 2 * t)))
            cond.add_frames(poses[fed : fed + k])
            fed += k
        parts.append(cond.latent_chunk(start, end))
        assert len(cond._frames) <= 2 * t * max(chunks) + t  # bounded: old frames are dropped
        start = end
    for key in ("camera_conditions", "chunk_plucker"):
        dim = 0 if key == "camera_conditions" else 1
        torch.testing.assert_close(torch.cat([p[key] for p in parts], dim=dim), whole[key], rtol=1e-6, atol=1e-6)


def test_chunk_conditioner_rejects_missing_or_dropped_frames():
    rng = np.random.default_rng(0)
    poses = random_trajectory(rng, 17)
    cond = ChunkCameraConditioner(poses[0], [50.0, 50.0, 32.0, 32.0], (64, 64), (8, 16, 16))
    with pytest.raises(ValueError, match="frame 0 must be the start pose"):
        cond.add_frames(poses[1:3])
    cond.add_frames(poses[:9])
    with pytest.raises(ValueError, match="need 17 raw frames"):
        cond.latent_chunk(0, 3)
    cond.latent_chunk(0, 2)
    cond.add_frames(poses[9:])
    with pytest.raises(ValueError, match="already dropped"):
        cond.latent_chunk(0, 3)
    assert cond.latent_chunk(2, 3)["camera_conditions"].shape == (1, 20)


@settings(max_examples=15, deadline=None)
@given(t=st.sampled_from([4, 8]), chunks=st.lists(st.integers(1, 4), min_size=1, max_size=5), seed=st.integers(0, 999))
def test_chunk_conditioner_any_split_equals_whole_clip(t, chunks, seed):
    rng = np.random.default_rng(seed)
    # Latent 0 needs t raw frames in streaming, so a one-latent clip gets t frames.
    poses = random_trajectory(rng, max(t * (sum(chunks) - 1) + 1, t))
    intr = random_intrinsics(rng, 1, 32, 48)[0]
    whole = prepare_camera(poses, intr, (32, 48), (t, 8, 8))
    cond = ChunkCameraConditioner(poses[0], intr, (32, 48), (t, 8, 8))
    start, parts = 0, []
    for n in chunks:
        cond.add_frames(poses[cond.n_frames : cond.frames_needed(start + n)])
        parts.append(cond.latent_chunk(start, start + n))
        start += n
    np.testing.assert_allclose(torch.cat([p["camera_conditions"] for p in parts]), whole["camera_conditions"][:start], atol=1e-6)
    np.testing.assert_allclose(torch.cat([p["chunk_plucker"] for p in parts], 1), whole["chunk_plucker"][:, :start], atol=1e-6)
