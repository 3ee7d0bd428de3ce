"""Flow-matching schedules: the official bidirectional σ list (diffusers' double shift), the
chunk-causal teacher's staggered schedule and the distilled list."""
from __future__ import annotations

import pytest
import torch

from model import schedulers
from model.schedulers import (
    DISTILLED_TIMESTEPS,
    bidirectional_sigmas,
    chunk_starts,
    distilled_sigmas,
    shift_sigma,
    staggered_schedule,
)


@pytest.mark.parametrize("steps", [60, 7, 1], ids=["official-60", "7", "1"])
def test_bidirectional_sigmas_equal_diffusers_flow_match_euler(steps):
    from diffusers import FlowMatchEulerDiscreteScheduler

    reference = FlowMatchEulerDiscreteScheduler(shift=9.8)
    reference.set_timesteps(steps)
    ours = torch.tensor(bidirectional_sigmas(steps, 9.8), dtype=torch.float64)
    assert ours.shape == reference.sigmas.shape
    torch.testing.assert_close(ours, reference.sigmas.double(), atol=2e-7, rtol=0)
    torch.testing.assert_close(ours[:-1] * 1000, reference.timesteps.double(), atol=2e-4, rtol=0)


def test_official_schedule_ends_near_0088_because_the_shift_is_applied_twice():
    sigmas = bidirectional_sigmas()
    assert len(sigmas) == 61 and sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert sigmas[-2] == pytest.approx(0.0877, abs=5e-4)
    assert sigmas[-2] > 5 * shift_sigma(1e-3, 9.8)  # a single shift would end near 0.0097
    assert all(a > b for a, b in zip(sigmas, sigmas[1:]))


def test_distilled_list():
    assert DISTILLED_TIMESTEPS == (1000, 960, 889, 727, 0)
    assert distilled_sigmas() == (1.0, 0.96, 0.889, 0.727, 0.0)
    with pytest.raises(ValueError, match="decrease strictly"):
        distilled_sigmas((1000, 1000, 0))


@pytest.mark.parametrize("num_chunks,steps", [(1, 5), (3, 4), (4, 10), (7, 3)])
def test_staggered_schedule_starts_each_chunk_at_floor_i_k_steps_and_runs_every_step_once(num_chunks, steps):
    schedule = staggered_schedule(num_chunks, steps)
    starts = chunk_starts(num_chunks, steps)
    assert starts == [(i * steps) // num_chunks for i in range(num_chunks)]
    assert len(schedule) == starts[-1] + steps
    for chunk in range(num_chunks):
        seen = [(s.index, s.active[chunk]) for s in schedule if chunk in s.active]
        assert seen == [(starts[chunk] + j, j) for j in range(steps)]
    for step in schedule:
        active = sorted(step.active)
        assert active == list(range(active[0], active[-1] + 1))  # chunks in flight are contiguous


def test_bad_schedule_arguments_raise():
    with pytest.raises(ValueError, match="steps"):
        bidirectional_sigmas(0)
    with pytest.raises(ValueError, match="shift"):
        bidirectional_sigmas(10, shift=-1.0)
    with pytest.raises(ValueError, match="num_chunks"):
        staggered_schedule(0, 4)


def test_euler_chunk_pins_the_image_latent_and_reports_each_step():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 4, 2, 2)
    image = torch.randn(2, 3, 1, 2, 2)
    target = torch.randn(2, 3, 4, 2, 2)
    seen_t, recorded, progress = [], [], []

    def velocity(x_t, timestep):
        seen_t.append(timestep.clone())
        # The exact velocity of the straight path from `target` (σ = 0) through x_t (at σ = t / 1000).
        return (x_t - target) / (timestep[:, :, :, None, None] / 1000.0).clamp(min=1e-3)

    sigmas = (1.0, 0.5, 0.0)
    out = schedulers.euler_chunk(velocity, x, sigmas, image_latent=image,
                                 record=lambda s, x_s: recorded.append(s), progress=lambda a, b: progress.append((a, b)))
    assert torch.equal(out[:, :, :1], image)
    # Two Euler steps of v = x − target from σ 1 to 0 land exactly on the target.
    torch.testing.assert_close(out[:, :, 1:], target[:, :, 1:])
    assert [t[0, 0, 0].item() for t in seen_t] == [0.0, 0.0]
    assert [t[0, 0, 1].item() for t in seen_t] == [1000.0, 500.0]
    assert recorded == [1.0, 0.5] and progress == [(1, 2), (2, 2)]
    assert not torch.equal(x[:, :, :1], image)  # the input is not modified


def test_euler_chunk_rejects_a_mismatched_image_latent():
    with pytest.raises(ValueError, match="image_latent"):
        schedulers.euler_chunk(lambda x, t: x, torch.zeros(1, 3, 2, 2, 2), (1.0, 0.0), image_latent=torch.zeros(1, 3, 2, 2, 2))
