from __future__ import annotations

import numpy as np
import pytest

from controls.camera import make_pose, rotation_yaw
from sim import default_intrinsics
from train.evaluate import ClipResult, depth_warp, detail, following_margins, per_second, perturb, psnr, ssim, summarise


def _walk(n: int) -> np.ndarray:
    """Walking forward while turning right, from a non-identity start."""
    start = make_pose(rotation_yaw(0.3), [1.0, -1.5, 2.0])
    return np.stack([start @ make_pose(rotation_yaw(0.05 * i), [0.02 * i, 0.0, 0.1 * i]) for i in range(n)])


def test_psnr_and_ssim():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + 10, 0, 255).astype(np.uint8)
    assert psnr(a, a) > 90 and ssim(a, a) == pytest.approx(1.0)
    assert 25 < psnr(a, b) < 30
    assert ssim(a, rng.integers(0, 256, a.shape, dtype=np.uint8)) < 0.1


def test_detail_is_one_for_the_truth_lower_for_a_blur_and_zero_for_a_flat_frame():
    import torch
    import torch.nn.functional as F

    rng = np.random.default_rng(3)
    truth = rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    blurred = F.avg_pool2d(torch.from_numpy(truth).permute(0, 3, 1, 2).double(), 5, stride=1, padding=2,
                           count_include_pad=False).round().byte().permute(0, 2, 3, 1).numpy()
    flat = np.full_like(truth, 128)
    assert detail(truth, truth) == pytest.approx(1.0)
    assert 0.05 < detail(blurred, truth) < 0.5
    assert detail(flat, truth) == 0.0
    # Position-free: the same texture shifted keeps its detail, though PSNR drops.
    shifted = np.roll(truth, 3, axis=2)
    assert detail(shifted, truth) == pytest.approx(1.0, abs=0.05) and psnr(shifted, truth) < 15


def test_depth_warp_is_exact_for_a_still_camera_and_moves_content_when_turning():
    K = default_intrinsics(32, 32)
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    depth = np.full((32, 32), 5.0, dtype=np.float32)
    pose = _walk(1)[0]
    still = depth_warp(frame, depth, depth[None].repeat(2, 0), pose, np.stack([pose, pose]), K)
    assert np.abs(still.astype(int) - frame).max() <= 1
    # A pure yaw to the right: content seen at column u appears further left; the right edge is new (filled).
    turned = pose @ make_pose(rotation_yaw(np.arctan(4 / K[0, 0])), [0, 0, 0])
    warped = depth_warp(frame, depth, depth[None], pose, turned[None], K)[0]
    assert np.abs(warped[:, 8:20].astype(int) - frame[:, 12:24]).mean() < 20
    assert (warped[:, -2:] == np.round(frame.reshape(-1, 3).mean(0))).all()


def test_perturbations():
    poses = _walk(6)
    mirrored = perturb(poses, "mirrored_yaw")
    reversed_ = perturb(poses, "reversed_motion")
    assert np.allclose(mirrored[0], poses[0]) and np.allclose(reversed_[0], poses[0])
    assert np.allclose(perturb(mirrored, "mirrored_yaw"), poses)
    rel = np.linalg.inv(poses[0]) @ poses[-1]
    rel_m = np.linalg.inv(poses[0]) @ mirrored[-1]
    rel_r = np.linalg.inv(poses[0]) @ reversed_[-1]
    assert rel_m[0, 3] == pytest.approx(-rel[0, 3]) and rel_m[2, 3] == pytest.approx(rel[2, 3])
    assert rel_r[2, 3] < 0 < rel[2, 3]
    with pytest.raises(ValueError, match="spin"):
        perturb(poses, "spin")


def test_per_second_and_summary():
    gt = np.zeros((33, 4, 4, 3), dtype=np.uint8)
    pred = gt.copy()
    pred[17:] = 50  # second 2 is wrong
    assert per_second(pred, gt, 16, 2, lambda a, b: float(np.abs(a.astype(int) - b).mean())) == [0.0, 50.0]
    results = [ClipResult(1, psnr={m: [10.0, 12.0] for m in ("model", "repeat", "warp")},
                          ssim={m: [0.5, 0.5] for m in ("model", "repeat", "warp")},
                          detail={m: [1.0, 0.5] for m in ("model", "repeat", "warp")},
                          follows={"mirrored_yaw": True, "reversed_motion": False},
                          baseline_follows={"warp": {"mirrored_yaw": True, "reversed_motion": True}}),
               ClipResult(2, psnr={m: [10.0, 12.0] for m in ("model", "repeat", "warp")},
                          ssim={m: [0.5, 0.5] for m in ("model", "repeat", "warp")},
                          detail={m: [0.8, 0.3] for m in ("model", "repeat", "warp")},
                          follows={"mirrored_yaw": True, "reversed_motion": True},
                          baseline_follows={"warp": {"mirrored_yaw": False, "reversed_motion": True}})]
    summary = summarise(results, 2)
    assert summary["follow"] == {"mirrored_yaw": 1.0, "reversed_motion": 0.5, "all": 0.75}
    assert summary["follow_baselines"] == {"warp": {"mirrored_yaw": 0.5, "reversed_motion": 1.0, "all": 0.75}}
    assert summary["mean"]["psnr_model"] == 11.0 and summary["gain_over_repeat_db"] == 0.0
    assert summary["per_second"]["detail_model"] == pytest.approx([0.9, 0.4])
    assert "standing" not in summary  # results without a standing rollout
    assert [clip["scene"] for clip in summary["per_clip"]] == [1, 2]
    assert summary["per_clip"][1] == {"scene": 2, "psnr_model": 11.0, "psnr_repeat": 11.0, "psnr_warp": 11.0,
                                      "follows": {"mirrored_yaw": True, "reversed_motion": True}, "margins": {},
                                      "standing_psnr": None, "long": {}, "detail_model": 0.55,
                                      "standing_psnr_first_4s": None}
    results[0].standing, results[0].standing_frame0_psnr = {"psnr": [30.0, 20.0], "detail": [0.8, 0.2]}, 33.0
    results[1].standing, results[1].standing_frame0_psnr = {"psnr": [28.0, 22.0], "detail": [0.6, 0.4]}, 35.0
    standing = summarise(results, 2)["standing"]
    assert standing["per_second"] == {"psnr": [29.0, 21.0], "detail": pytest.approx([0.7, 0.3])}
    assert standing["mean"] == {"psnr": 25.0, "detail": pytest.approx(0.5)} and standing["frame0_psnr"] == 34.0


def test_following_margins_are_positive_towards_the_commanded_truth():
    rng = np.random.default_rng(2)
    gt = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    other = rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8)
    other[0] = gt[0]  # every path starts at the same frame, which the score leaves out
    towards_gt = following_margins(gt, gt, {"mirrored_yaw": other})
    towards_other = following_margins(other, gt, {"mirrored_yaw": other})
    assert towards_gt["mirrored_yaw"] > 1000 and towards_other["mirrored_yaw"] == -towards_gt["mirrored_yaw"]
    halfway = ((gt.astype(int) + other) // 2).astype(np.uint8)
    assert abs(following_margins(halfway, gt, {"mirrored_yaw": other})["mirrored_yaw"]) < 0.02 * towards_gt["mirrored_yaw"]


def test_blockiness_and_colour_error_on_hand_made_frames():
    """A mosaic of flat 8×8 cells has all its luma steps on the grid; a shifted copy of natural-ish noise has none
    preferred; a frame brightened by 10 levels is 10 levels off in colour."""
    from train.evaluate import blockiness, colour_error, grid_step_ratio

    rng = np.random.default_rng(0)
    smooth = np.clip(np.cumsum(rng.normal(0, 3, (2, 64, 64, 3)), axis=2) + 128, 0, 255).astype(np.uint8)
    cells = np.repeat(np.repeat(rng.integers(0, 255, (2, 8, 8, 3)), 8, 1), 8, 2).astype(np.uint8)
    mosaic = np.clip(cells.astype(int) + rng.integers(0, 2, cells.shape), 0, 255).astype(np.uint8)
    assert 0.8 < grid_step_ratio(smooth) < 1.25
    assert grid_step_ratio(mosaic) > 20
    assert blockiness(mosaic, smooth) > 15 and abs(blockiness(smooth, smooth) - 1.0) < 1e-9
    brighter = np.clip(smooth.astype(int) + 10, 0, 255).astype(np.uint8)
    assert colour_error(smooth, smooth) == 0.0
    assert 9.0 < colour_error(brighter, smooth) <= 10.0


def test_long_walk_windows_summarise_per_clip_and_overall():
    """summarise averages each window's metrics over the clips that have a long walk, and the first 4 s of
    standing still."""
    from train.evaluate import ClipResult, summarise

    results = []
    for k in (1, 3):
        r = ClipResult(scene_seed=k)
        for metric in ("psnr", "ssim", "detail"):
            getattr(r, metric).update({m: [float(k)] * 8 for m in ("model", "repeat", "warp")})
        r.follows = {"mirrored_yaw": True, "reversed_motion": False}
        r.standing = {"psnr": [20.0 + k] * 4 + [0.0] * 4, "detail": [0.5] * 8}
        r.long_per_second = {name: [float(k)] * 30 for name in ("psnr", "detail", "blockiness", "colour_error")}
        r.long_windows = {"1-8": {"psnr": 1.0, "detail": 0.1 * k, "blockiness": 2.0, "colour_error": k},
                          "22-30": {"psnr": 1.0, "detail": 0.2, "blockiness": 1.0 * k, "colour_error": 4.0}}
        results.append(r)
    summary = summarise(results, 8)
    assert summary["long"]["clips"] == 2 and summary["long"]["seconds"] == 30
    assert summary["long"]["windows"]["1-8"]["detail"] == pytest.approx(0.2)
    assert summary["long"]["windows"]["22-30"]["blockiness"] == pytest.approx(2.0)
    assert summary["long"]["per_second"]["colour_error"] == [2.0] * 30
    assert summary["standing"]["psnr_first_4s"] == pytest.approx(22.0)
    assert summary["per_clip"][0]["long"]["1-8"]["colour_error"] == 1
