"""The TinyVAE's cell-seam filter (model/vae/deblock.py)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model.vae import TinyVAE, TinyVAEConfig
from model.vae.deblock import _deblock_last_axis, deblock
from train.evaluate import grid_step_ratio


def _to_uint8(frames: torch.Tensor) -> np.ndarray:
    """[..., 3, H, W] in [-1, 1] -> uint8 [N, H, W, 3]."""
    return ((frames.reshape(-1, 3, *frames.shape[-2:]).permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)


def test_seams_between_flat_cells_become_ramps_and_edges_and_slopes_stay():
    gen = torch.Generator().manual_seed(0)
    cells = torch.rand(2, 3, 4, 4, generator=gen) * 0.3  # small steps between flat cells: a mosaic
    mosaic = cells.repeat_interleave(8, -1).repeat_interleave(8, -2)  # [2, 3, 32, 32]
    smoothed = deblock(mosaic)
    # flat cells have no steps inside at all; after the filter each seam is 5 steps of a fifth of it
    assert grid_step_ratio(_to_uint8(mosaic)) > 1e6 and grid_step_ratio(_to_uint8(smoothed)) < 6
    torch.testing.assert_close(smoothed.mean(), mosaic.mean(), atol=1e-6, rtol=0)  # a ramp moves no mass
    torch.testing.assert_close(smoothed[..., 2:6, 2:6], mosaic[..., 2:6, 2:6])  # cell interiors untouched
    edge = torch.zeros(1, 3, 16, 16)
    edge[..., 8:] = 1.0  # a real edge: larger than a seam
    torch.testing.assert_close(deblock(edge), edge)
    ramp = torch.linspace(-0.5, 0.5, 16).expand(1, 3, 16, 16).contiguous()  # a smooth slope has no excess step
    torch.testing.assert_close(deblock(ramp), ramp, atol=1e-6, rtol=0)
    textured = mosaic + (torch.rand(mosaic.shape, generator=gen) - 0.5) * 0.4  # texture beside the border: kept
    changed = (deblock(textured) - textured).abs() > 1e-7
    assert changed.float().mean() < 0.5 * (deblock(mosaic) - mosaic).abs().gt(1e-7).float().mean()


def test_the_vae_filters_its_decoded_frames_streamed_or_whole():
    torch.manual_seed(0)
    vae = TinyVAE(TinyVAEConfig(latent_channels=8, widths=(4, 8, 8), deblock_step=0.5)).eval()
    plain = TinyVAE(TinyVAEConfig(latent_channels=8, widths=(4, 8, 8))).eval()
    plain.load_state_dict(vae.state_dict())
    latents = torch.randn(1, 8, 5, 4, 4)
    with torch.no_grad():
        whole = vae.decode(latents)
        stream = vae.stream_decoder(1)
        chunks = torch.cat([stream.decode_chunk(latents[:, :, :3]), stream.decode_chunk(latents[:, :, 3:])], dim=2)
        mean, std = plain._stats()
        unfiltered = plain.decoder(latents * std + mean, None, first=True)[0]  # before the clamp, like finish()
    torch.testing.assert_close(chunks, whole, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(whole, deblock(unfiltered, 8, 0.5, 0.06).clamp(-1, 1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="deblock"):
        TinyVAEConfig(deblock_step=-1.0)


@pytest.mark.parametrize("shape, block", [((2, 3, 4, 32, 48), 8), ((1, 3, 24, 16), 4), ((1, 3, 20, 27), 8), ((1, 3, 12, 12), 2)],
                         ids=["cells-8", "cells-4", "ragged", "block-2"])
def test_the_strided_filter_is_the_gather_one_bit_for_bit(shape, block):
    """`deblock` reads and writes through strided cell views (whole cells, block >= 4) or falls back to the
    general index-gather form; either way every output bit is the gather form's."""
    gen = torch.Generator().manual_seed(1)
    cells = torch.rand(*shape[:-2], shape[-2] // block + 1, shape[-1] // block + 1, generator=gen) * 0.4
    frames = cells.repeat_interleave(block, -1).repeat_interleave(block, -2)[..., :shape[-2], :shape[-1]]
    frames = frames + (torch.rand(frames.shape, generator=gen) - 0.5) * 0.1 * (torch.rand(frames.shape, generator=gen) > 0.6)
    columns = _deblock_last_axis(frames, block, 0.3, 0.06)
    gathered = _deblock_last_axis(columns.transpose(-1, -2), block, 0.3, 0.06).transpose(-1, -2)
    filtered = deblock(frames, block, 0.3, 0.06)
    assert torch.equal(filtered, gathered) and not torch.equal(filtered, frames)
