"""Clip sampling: 8k+1 frames, free space, smooth human-like motion, disjoint splits."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from controls.camera import is_rigid
from sim.clips import CLEARANCE_M, EVAL_SEED_BASE, ClipDataset, check_split_seed, sample_clip, sample_trajectory
from sim.world import EYE_HEIGHT_M, Scene
from tests.conftest import ci_size


def test_clip_has_8k_plus_1_frames_in_free_space_and_is_deterministic():
    clip = sample_clip(3, 1, 17, 48, 32)
    assert clip.frames.shape == (17, 32, 48, 3) and clip.frames.dtype == np.uint8
    assert clip.depth.shape == (17, 32, 48) and clip.world_T_cams.shape == (17, 4, 4)
    assert clip.K.shape == (3, 3) and clip.fps == 16.0 and clip.scene_seed == 3
    scene = Scene.from_seed(3)
    assert clip.theme == scene.theme.name
    assert scene.is_free(clip.world_T_cams[:, :3, 3], CLEARANCE_M).all()
    again = sample_clip(3, 1, 17, 48, 32, scene=scene)
    assert np.array_equal(again.frames, clip.frames) and np.array_equal(again.world_T_cams, clip.world_T_cams)
    assert not np.array_equal(sample_clip(3, 2, 17, 48, 32, scene=scene).world_T_cams, clip.world_T_cams)


@pytest.mark.parametrize("n_frames", [0, 10, 32, 2.0, True])
def test_bad_frame_counts_are_rejected(n_frames):
    with pytest.raises(ValueError, match="8k\\+1"):
        sample_clip(3, 1, n_frames, 16, 16)


def test_speed_retimes_the_same_walk_and_zero_stands_still():
    """speed 0.5 traces the walk of speed 1 at half the pace (frame 2k ≈ frame k); speed 0 never leaves the start."""
    scene = Scene.from_seed(3)
    full = sample_trajectory(scene, 0, 33)
    half = sample_trajectory(scene, 0, 65, speed=0.5)
    standing = sample_trajectory(scene, 0, 17, speed=0)
    assert np.abs(half[::2, :3, 3] - full[:, :3, 3]).max() < 0.05  # the integrator's discretisation only
    path = np.linalg.norm(np.diff(full[:, :3, 3], axis=0), axis=1).sum()
    assert path > 0.5 and abs(np.linalg.norm(np.diff(half[:, :3, 3], axis=0), axis=1).sum() - path) < 0.05 * path
    assert np.array_equal(standing, np.repeat(full[:1], 17, axis=0))
    clip = sample_clip(3, 0, 9, 16, 16, scene=scene, speed=0)
    assert np.array_equal(clip.frames, np.repeat(clip.frames[:1], 9, axis=0))
    for bad in (-0.5, 5.0, True, "1", 0.001):
        with pytest.raises(ValueError, match="speed"):
            sample_trajectory(scene, 0, 9, speed=bad)


@pytest.mark.heavy
def test_random_walks_stay_free_and_move_like_a_person():
    n_frames = ci_size(241, 121)
    fps = 16.0
    steps_all, turned = [], 0.0
    for seed in range(ci_size(6, 3)):
        scene = Scene.from_seed(100 + seed)
        poses = sample_trajectory(scene, seed, n_frames, fps)
        assert poses.shape == (n_frames, 4, 4) and all(is_rigid(p) for p in poses)
        assert scene.is_free(poses[:, :3, 3], CLEARANCE_M).all()
        assert np.allclose(poses[:, 1, 3], -EYE_HEIGHT_M)  # walking, not flying
        steps = np.linalg.norm(np.diff(poses[:, :3, 3], axis=0), axis=1)
        steps_all.append(steps)
        forward = poses[:, :3, 2]
        angles = np.degrees(np.arccos(np.clip((forward[1:] * forward[:-1]).sum(1), -1, 1)))
        # No teleports or snaps: at most a sprint (3 x 1.4 m/s) per frame, at most 15 degrees per frame.
        assert steps.max() <= 3 * 1.4 / fps + 1e-6
        assert angles.max() < 15.0
        turned += angles.sum()
    steps = np.concatenate(steps_all)
    # People walk most of the time, but also stop and look around.
    assert 0.5 < steps.mean() * fps < 3.0
    assert (steps < 0.01).mean() > 0.02
    assert turned > 90.0


def test_split_seeds_are_disjoint():
    train = {ClipDataset.scene_seed("train", i) for i in (0, 1, 999_999, 1_000_000, 5_000_123)}
    evaluation = {ClipDataset.scene_seed("eval", i) for i in (0, 1, 999_999, 1_000_000)}
    assert max(train) < EVAL_SEED_BASE <= min(evaluation)
    with pytest.raises(ValueError, match="evaluation seed"):
        check_split_seed("train", EVAL_SEED_BASE)
    with pytest.raises(ValueError, match="training seed"):
        check_split_seed("eval", 5)
    with pytest.raises(ValueError, match="split"):
        ClipDataset(split="test")
    with pytest.raises(ValueError, match="n_scenes"):
        ClipDataset(split="eval")
    # The endless training stream draws only training seeds; workers draw different ones.
    ds = ClipDataset(split="train")
    w0 = [s for s, _ in zip(ds._scene_seeds(0, 2), range(200))]
    w1 = [s for s, _ in zip(ds._scene_seeds(1, 2), range(200))]
    assert max(w0 + w1) < EVAL_SEED_BASE and w0 != w1


def test_dataset_yields_tensors_and_workers_share_the_eval_set():
    ds = ClipDataset(split="eval", n_frames=9, width=24, height=16, clips_per_scene=1, n_scenes=2)
    items = list(ds)
    assert [item["scene_seed"] for item in items] == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1]
    assert items[0]["frames"].shape == (9, 16, 24, 3) and items[0]["frames"].dtype == torch.uint8
    # Two workers render one scene each, and batches collate.
    batches = list(torch.utils.data.DataLoader(ds, batch_size=1, num_workers=2))
    assert sorted(int(b["scene_seed"]) for b in batches) == [EVAL_SEED_BASE, EVAL_SEED_BASE + 1]
    assert batches[0]["frames"].shape == (1, 9, 16, 24, 3)
    assert all(torch.equal(b["frames"][0], items[int(b["scene_seed"]) - EVAL_SEED_BASE]["frames"]) for b in batches)
