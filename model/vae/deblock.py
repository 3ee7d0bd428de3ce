"""A deblocking filter for the TinyVAE's 8×8 cells, as video codecs run one after their block transform.

The TinyVAE decodes each latent cell into its own 8×8 pixels through a linear path, so latents off its
manifold (a drifted rollout) come out as a mosaic: flat cells with steps between them. Like the H.264 /
HEVC in-loop filter, this looks at every cell border and, where both sides are flat and the step across
is small (a seam, not an edge of the scene), spreads the step over the four pixels around the border as
a ramp. Real edges (large steps, or texture on either side) are left alone. No weights, a few
elementwise ops per frame.
"""
from __future__ import annotations

import torch


def _ramps(p1: torch.Tensor, p0: torch.Tensor, q0: torch.Tensor, q1: torch.Tensor, step_max: float,
           flat_max: float) -> torch.Tensor:
    """The ramp to spread over the four pixels p1 p0 | q0 q1 around each border (0 where it is no seam)."""
    # the step across the border beyond the slope on either side of it: 0 on a linear ramp, d on a step of d
    step = (q0 - p0) - ((p0 - p1) + (q1 - q0)) / 2
    seam = (step.abs() < step_max) & ((p1 - p0).abs() < flat_max) & ((q1 - q0).abs() < flat_max)
    return torch.where(seam, step, torch.zeros_like(step)) / 5.0  # the excess step spread over 5 pixel steps


def _deblock_last_axis(x: torch.Tensor, block: int, step_max: float, flat_max: float) -> torch.Tensor:
    """Filter the borders between columns block·k − 1 and block·k of x [..., W] (k = 1 … W/block − 1).

    The general form (any width, any block >= 2), by index gathers; `_deblock_axis` is the fast one."""
    width = x.shape[-1]
    if width < 2 * block:
        return x
    q0_index = torch.arange(block, width, block, device=x.device)  # first column of each cell after a border
    p1, p0 = x[..., q0_index - 2], x[..., q0_index - 1]
    q0, q1 = x[..., q0_index], x[..., q0_index + 1]
    ramp = _ramps(p1, p0, q0, q1, step_max, flat_max)
    out = x.clone()
    out[..., q0_index - 2] = p1 + ramp
    out[..., q0_index - 1] = p0 + 2 * ramp
    out[..., q0_index] = q0 - 2 * ramp
    out[..., q0_index + 1] = q1 - ramp
    return out


def _deblock_axis(x: torch.Tensor, axis: int, block: int, step_max: float, flat_max: float) -> torch.Tensor:
    """`_deblock_last_axis` along `axis` (-1: vertical borders of x [..., H, W], -2: horizontal ones).

    The same arithmetic, read and written through strided views of x split into cells ([..., n, block]
    along the axis) instead of index gathers and index_put: about 3× faster on a CPU, and no transposed
    copy for the rows. Needs whole cells (size % block == 0) and block >= 4, so that the four pixels
    around one border never overlap the next border's; other shapes take the general form.
    """
    size = x.shape[axis]
    if size < 2 * block:
        return x
    if block < 4 or size % block:
        if axis == -1:
            return _deblock_last_axis(x, block, step_max, flat_max)
        return _deblock_last_axis(x.transpose(-1, -2), block, step_max, flat_max).transpose(-1, -2)
    trail = (slice(None),) if axis == -2 else ()  # the column axis behind a row border

    def at(cells: torch.Tensor, which: slice, offset: int) -> torch.Tensor:
        return cells[(..., which, offset) + trail]  # [..., n − 1(, W)]: one pixel line per border

    before, after = slice(None, -1), slice(1, None)  # the cell before each border, the cell after it
    cells = x.unflatten(axis, (size // block, block))
    p1, p0 = at(cells, before, block - 2), at(cells, before, block - 1)
    q0, q1 = at(cells, after, 0), at(cells, after, 1)
    ramp = _ramps(p1, p0, q0, q1, step_max, flat_max)
    out = x.clone()
    out_cells = out.unflatten(axis, (size // block, block))  # a view: writing it writes out
    at(out_cells, before, block - 2).copy_(p1 + ramp)
    at(out_cells, before, block - 1).copy_(p0 + 2 * ramp)
    at(out_cells, after, 0).copy_(q0 - 2 * ramp)
    at(out_cells, after, 1).copy_(q1 - ramp)
    return out


def deblock(frames: torch.Tensor, block: int = 8, step_max: float = 0.25, flat_max: float = 0.06) -> torch.Tensor:
    """Frames [..., H, W] in [-1, 1] with their `block`-pixel seams smoothed (vertical borders, then horizontal).

    `step_max`: the largest step across a border taken for a seam (0.25 = 32 levels of 255); `flat_max`: the
    largest step between the two pixels on either side of it (a flat cell interior).
    """
    out = _deblock_axis(frames, -1, block, step_max, flat_max)
    return _deblock_axis(out, -2, block, step_max, flat_max)
