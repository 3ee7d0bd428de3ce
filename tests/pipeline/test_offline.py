"""Offline generation: the samplers' timesteps and updates (recording fake DiTs), input preparation,
bad input refused before any model work, and recorded episodes as trajectories."""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from controls.camera import intrinsics_after_resize_crop
from controls.trajectory import Trajectory
from controls.trajectory import load as load_trajectory
from controls.trajectory import save as save_trajectory
from model.release import load_release
from model.schedulers import bidirectional_sigmas, staggered_schedule
from streaming import offline
from streaming.offline import generate_video, read_episode_trajectory


class RecordingDiT:
    """Returns velocity = text[b, 0, 0] everywhere and records each call's timesteps."""

    device, dtype = torch.device("cpu"), torch.float32

    def __init__(self):
        self.calls = []

    def __call__(self, x, timestep, text, mask, camera_conditions=None, chunk_plucker=None):
        self.calls.append({"timestep": timestep.clone(), "batch": x.shape[0]})
        return text[:, 0, 0].view(-1, 1, 1, 1, 1).expand_as(x).clone()

    def forward_chunk_causal(self, x, timestep, text, mask, camera_conditions=None, chunk_plucker=None, *, chunk_sizes):
        assert sum(chunk_sizes) == x.shape[2]
        self.calls.append({"timestep": timestep.clone(), "chunk_sizes": list(chunk_sizes)})
        return text[:, 0, 0].view(-1, 1, 1, 1, 1).expand_as(x).clone()


def _inputs(frames):
    z0 = torch.full((1, 2, 1, 1, 1), 7.0)
    camera = torch.zeros(1, frames, 20)
    plucker = torch.zeros(1, 6, frames, 1, 1)
    return z0, camera, plucker


def _text(value):
    return torch.full((1, 3, 4), float(value)), torch.ones(1, 3, dtype=torch.long)


def test_bidirectional_sampler_timesteps_guidance_and_frozen_first_latent():
    dit = RecordingDiT()
    release = SimpleNamespace(dit=dit)
    z0, camera, plucker = _inputs(4)
    sigmas = bidirectional_sigmas(3)
    rng = torch.Generator().manual_seed(0)
    x0 = torch.randn((1, 2, 4, 1, 1), generator=torch.Generator().manual_seed(0))
    x = offline._bidirectional(release, z0, 4, camera, plucker, _text(2.0), _text(1.0), sigmas, 5.0, rng, None)
    assert len(dit.calls) == 3
    for call, sigma in zip(dit.calls, sigmas):
        assert call["batch"] == 2  # uncond and cond in one call
        assert torch.all(call["timestep"][:, :, 0] == 0)
        torch.testing.assert_close(call["timestep"][:, :, 1:], torch.full((2, 1, 3), sigma * 1000))
    assert torch.all(x[:, :, 0] == 7.0)
    # guided velocity 1 + 5·(2 − 1) = 6 integrated from σ = 1 to 0
    torch.testing.assert_close(x[:, :, 1:], x0[:, :, 1:] - 6.0)


@pytest.mark.parametrize("latents,chunk_latents,steps", [(7, 3, 4), (6, 1, 5), (4, 3, 3)])
def test_chunk_causal_sampler_follows_the_staggered_schedule(latents, chunk_latents, steps):
    dit = RecordingDiT()
    release = SimpleNamespace(dit=dit, chunk_latents=chunk_latents)
    z0, camera, plucker = _inputs(latents)
    sigmas = bidirectional_sigmas(steps)
    x0 = torch.randn((1, 2, latents, 1, 1), generator=torch.Generator().manual_seed(0))
    x = offline._chunk_causal(release, z0, latents, camera, plucker, _text(1.0), None, sigmas, 1.0,
                              torch.Generator().manual_seed(0), None)
    sizes = offline.chunk_sizes_for(latents, chunk_latents)
    assert sizes[0] == 1 + min(chunk_latents, latents - 1) and sum(sizes) == latents
    bounds = np.cumsum([0] + sizes)
    schedule = staggered_schedule(len(sizes), steps)
    assert len(dit.calls) == len(schedule)
    for call, step in zip(dit.calls, schedule):
        last = max(step.active)
        assert call["chunk_sizes"] == sizes[:last + 1]
        t = call["timestep"][0, 0]
        assert t[0] == 0
        for i in range(last + 1):
            expected = sigmas[step.active[i]] * 1000 if i in step.active else 0.0
            chunk_t = t[max(1, bounds[i]):bounds[i + 1]]
            torch.testing.assert_close(chunk_t, torch.full_like(chunk_t, expected))
    # every non-image latent integrated v = 1 over σ 1 -> 0 exactly once
    assert torch.all(x[:, :, 0] == 7.0)
    torch.testing.assert_close(x[:, :, 1:], x0[:, :, 1:] - 1.0)


@pytest.fixture(scope="module")
def release(releases):
    return load_release(releases / "SANA-WM_bidirectional")


def test_bad_inputs_fail_before_model_work(release, image, tmp_path):
    text_file = tmp_path / "x.png"
    text_file.write_text("not an image")
    with pytest.raises(ValueError, match="x.png is not a readable image"):
        generate_video(release, text_file, "w-16", mode="bidirectional", steps=1)
    with pytest.raises(ValueError, match="does not exist"):
        generate_video(release, tmp_path / "missing.png", "w-16", mode="bidirectional", steps=1)
    with pytest.raises(ValueError, match="uint8"):
        generate_video(release, image.astype(np.float32), "w-16", mode="bidirectional", steps=1)
    with pytest.raises(ValueError, match="mode must be one of"):
        generate_video(release, image, "w-16", mode="fast")
    with pytest.raises(ValueError, match="fixed 4-step list"):
        generate_video(release, image, "w-16", mode="distilled", steps=8)
    with pytest.raises(ValueError, match="has 17 poses but 33 frames"):
        generate_video(release, image, "w-16", mode="bidirectional", seconds=2.0, steps=1)
    with pytest.raises(ValueError, match="no text encoder"):
        generate_video(release, image, "w-16", mode="bidirectional", prompt="a forest", steps=1)


def test_a_trajectory_longer_than_the_model_can_take_is_refused(releases, image):
    short = load_release(releases / "SANA-WM_streaming")
    short.max_latent_frames = 2  # 9 frames at most
    with pytest.raises(ValueError, match="17 frames .* longer than the model can take: at most 9 frames = 2 latents"):
        generate_video(short, image, "w-16", mode="distilled")
    teacher = load_release(releases / "SANA-WM_chunk_causal")
    with pytest.raises(ValueError, match=r"57601 frames \(3600.1 s at 16 fps\) is longer than the model can take"):
        generate_video(teacher, image, "w-200", mode="chunk_causal", seconds=3600.0)


def test_file_trajectory_of_another_size_gets_the_resize_crop_intrinsics(release, image, tmp_path):
    poses = load_trajectory("w-16").world_T_cams
    K = np.tile([100.0, 100.0, 64.0, 48.0], (len(poses), 1))
    path = tmp_path / "path.json"
    save_trajectory(Trajectory(poses, K, 128, 96, 16.0), path)
    video = generate_video(release, image, str(path), mode="bidirectional", steps=1)
    assert video.frames.shape == (17, 64, 64, 3)
    np.testing.assert_allclose(video.intrinsics, intrinsics_after_resize_crop(K[0], (128, 96), (64, 64)))


def _write_episode(folder, n, *, broken_middle=False):
    """An episode in the recorder's layout (streaming.recorder): meta.json and frames.jsonl."""
    from streaming.recorder import EPISODE_FORMAT

    folder.mkdir()
    lines = []
    for i in range(n):
        c2w = np.eye(4)
        c2w[2, 3] = 0.05 * i
        lines.append(json.dumps({"index": i, "frame_id": i, "chunk_id": i // 8, "segment": i // 8, "c2w": c2w.tolist(),
                                 "fx": 40.0, "fy": 40.0, "cx": 32.0, "cy": 32.0, "W": 64, "H": 64}))
    if broken_middle:
        lines[3] = lines[3][:20]
    (folder / "frames.jsonl").write_text("\n".join(lines) + "\n")
    meta = {"format": EPISODE_FORMAT, "fps": 16, "width": 64, "height": 64, "complete": True, "frames": n}
    (folder / "meta.json").write_text(json.dumps(meta))


def test_episode_folder_is_a_trajectory(release, image, tmp_path):
    _write_episode(tmp_path / "ep", 17)
    trajectory = read_episode_trajectory(tmp_path / "ep")
    assert trajectory.n_frames == 17 and (trajectory.width, trajectory.height, trajectory.fps) == (64, 64, 16.0)
    assert trajectory.world_T_cams[16, 2, 3] == pytest.approx(0.8)
    video = generate_video(release, image, trajectory, mode="chunk_causal", steps=1)
    assert video.frames.shape[0] == 17
    np.testing.assert_allclose(video.world_T_cams, trajectory.world_T_cams)

    _write_episode(tmp_path / "bad", 17, broken_middle=True)
    with pytest.raises(ValueError, match="line 4"):
        read_episode_trajectory(tmp_path / "bad")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="not a recorded episode"):
        read_episode_trajectory(tmp_path / "empty")


def test_a_preset_lasts_as_long_as_asked(release, image):
    video = generate_video(release, image, "orbit", mode="bidirectional", seconds=1.5, steps=1)
    assert video.frames.shape[0] == 25  # 1.5 s at 16 fps snapped to 8k + 1
    assert not np.allclose(video.world_T_cams[24], video.world_T_cams[0])


def test_long_clips_decode_chunk_by_chunk_with_the_same_frames(releases):
    vae = load_release(releases / "SANA-WM_streaming").vae
    assert vae.causal_decoder
    z = torch.randn(1, 8, offline.DECODE_CHUNK_LATENTS + 3, 2, 2)
    chunked = offline.decode_latents(vae, z)
    assert chunked.shape[2] == 8 * (z.shape[2] - 1) + 1
    assert (chunked - vae.decode(z)).abs().max().item() < 1e-5


class AffineDiT(RecordingDiT):
    """velocity = 0.1·x + 1: depends on the sample, so every step's update is checked."""

    def __call__(self, x, timestep, text, mask, camera_conditions=None, chunk_plucker=None):
        return 0.1 * x + 1.0


def test_bidirectional_sampler_equals_diffusers_per_token_flow_euler_loop():
    from diffusers import FlowMatchEulerDiscreteScheduler

    steps, frames = 6, 3
    z0, camera, plucker = _inputs(frames)
    ours = offline._bidirectional(SimpleNamespace(dit=AffineDiT()), z0, frames, camera, plucker, _text(1.0), None,
                                  bidirectional_sigmas(steps), 1.0, torch.Generator().manual_seed(0), None)

    # The official loop (SANA-WM's LTXFlowEuler as diffusers' SanaWMPipeline runs it): per-token timesteps,
    # frame 0 pinned to t = 0, the negated prediction handed to the scheduler, clean tokens kept.
    scheduler = FlowMatchEulerDiscreteScheduler(shift=9.8)
    scheduler.set_timesteps(steps)
    latents = torch.randn((1, 2, frames, 1, 1), generator=torch.Generator().manual_seed(0))
    latents[:, :, :1] = z0
    condition = torch.zeros_like(latents)
    condition[:, :, 0] = 1.0
    for t in scheduler.timesteps:
        timestep = torch.minimum(t.expand(condition.shape).float(), (1.0 - condition) * 1000.0)
        v = 0.1 * latents + 1.0
        b, c = latents.shape[:2]
        denoised = scheduler.step(-v.reshape(b, c, -1).transpose(1, 2), t, latents.reshape(b, c, -1).transpose(1, 2),
                                  per_token_timesteps=timestep.reshape(b, c, -1)[:, 0], return_dict=False)[0]
        denoised = denoised.transpose(1, 2).reshape(latents.shape)
        latents = torch.where(t / 1000.0 - 1e-6 < (1.0 - condition), denoised, latents)
    torch.testing.assert_close(ours, latents, atol=1e-5, rtol=1e-5)
