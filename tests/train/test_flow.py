from __future__ import annotations

import pytest
import torch

from streaming.generator import DISTILLED_SIGMAS
from train.flow import add_noise, chunk_layout, masked_mse, per_chunk_sigmas, refine_sigmas, shift_sigmas
from train.recipes import teacher_grid


def test_shift_keeps_ends_and_moves_mass_to_noise():
    s = torch.linspace(0, 1, 11)
    shifted = shift_sigmas(s, 3.0)
    assert shifted[0] == 0 and shifted[-1] == 1
    assert bool((shifted[1:-1] > s[1:-1]).all())
    assert torch.allclose(shift_sigmas(s, 1.0), s)
    with pytest.raises(ValueError, match="shift"):
        shift_sigmas(s, 0.0)


@pytest.mark.parametrize("n, c, expected", [(3, 2, [3]), (9, 2, [3, 2, 2, 2]), (13, 4, [5, 4, 4])], ids=["one", "four", "c4"])
def test_chunk_layout(n, c, expected):
    assert chunk_layout(n, c) == expected


@pytest.mark.parametrize("n, c", [(8, 2), (2, 2), (5, 0)])
def test_chunk_layout_rejects(n, c):
    with pytest.raises(ValueError, match=str(n)):
        chunk_layout(n, c)


def test_per_chunk_sigmas_are_constant_per_chunk_and_image_clean():
    gen = torch.Generator().manual_seed(0)
    sizes = [3, 2, 2, 2]
    sigma = per_chunk_sigmas(64, sizes, 3.0, 0.5, gen)  # [B, T]
    assert sigma.shape == (64, 9)
    assert bool((sigma[:, 0] == 0).all())
    assert bool((sigma[:, 1] == sigma[:, 2]).all()) and bool((sigma[:, 3] == sigma[:, 4]).all())
    assert bool((sigma[:, -1] > 0).all())
    assert bool((sigma[:, 3] == 0).any()), "with p = 0.5 some context chunks must be clean"
    assert bool((sigma[:, 3] != sigma[:, 5]).any()), "chunks draw independent levels"


def test_add_noise_and_masked_mse():
    x0, eps = torch.zeros(1, 2, 3, 2, 2), torch.ones(1, 2, 3, 2, 2)
    sigma = torch.tensor([[0.0, 0.5, 1.0]])
    x = add_noise(x0, sigma, eps)
    assert torch.allclose(x[0, 0, :, 0, 0], sigma[0])
    pred = torch.zeros_like(x)
    pred[:, :, 0] = 100.0  # frame 0 has weight 0: ignored
    assert masked_mse(pred, x0, (sigma > 0).float()).item() == 0.0


def test_teacher_grid_contains_the_distilled_sigmas():
    grid = teacher_grid(DISTILLED_SIGMAS, 12, 3.0)
    assert grid[0] == 1.0 and grid[-1] == 0.0 and grid == sorted(grid, reverse=True)
    assert all(round(s, 6) in grid for s in DISTILLED_SIGMAS)
    fine = refine_sigmas([1.0, 0.5, 0.0], 2)
    assert fine == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_frame_mean_mse_sees_only_each_frames_mean_colour():
    """A zero-mean pattern added to every frame leaves the term at 0 (the per-element MSE sees it); a
    whole-frame offset of one channel on one live frame costs its square over the live frames."""
    from train.flow import frame_mean_mse

    target = torch.randn(2, 3, 4, 6, 6, generator=torch.Generator().manual_seed(0))
    live = torch.ones(2, 4)
    live[:, 0] = 0.0
    pattern = torch.randn(6, 6)
    pattern = pattern - pattern.mean()
    assert frame_mean_mse(target + pattern, target, live).item() == pytest.approx(0.0, abs=1e-10)
    assert masked_mse(target + pattern, target, live).item() > 0.1
    shifted = target.clone()
    shifted[1, 2, 3] += 0.5
    expected = 0.5 ** 2 / (2 * 3 * 3)  # one of 2 batch × 3 channels × 3 live frames
    assert frame_mean_mse(shifted, target, live).item() == pytest.approx(expected, rel=1e-5)
    shifted_dead = target.clone()
    shifted_dead[:, :, 0] += 1.0  # frame 0 is the clean context: not trained
    assert frame_mean_mse(shifted_dead, target, live).item() == pytest.approx(0.0, abs=1e-10)
