"""Input checks shared by every video autoencoder (TinyVAE, the LTX-2 adapter): one interface, one set of errors."""
from __future__ import annotations

import torch


def check_video(video: torch.Tensor, spatial_stride: int, temporal_stride: int) -> None:
    """ValueError unless video is [B, 3, F, H, W] with F = stride·k + 1 and H, W positive multiples of the spatial stride."""
    if not isinstance(video, torch.Tensor) or video.ndim != 5 or video.shape[1] != 3:
        shape = tuple(video.shape) if isinstance(video, torch.Tensor) else type(video).__name__
        raise ValueError(f"video must be [B, 3, F, H, W], got {shape}")
    f, h, w = video.shape[2:]
    s, st = spatial_stride, temporal_stride
    if (f - 1) % st:
        raise ValueError(f"frame count F={f} must be {st}·k + 1 (temporal stride {st})")
    if h % s or w % s or h == 0 or w == 0:
        raise ValueError(f"height and width ({h}, {w}) must be positive multiples of the spatial stride {s}")


def check_latents(z: torch.Tensor, latent_channels: int) -> None:
    """ValueError unless z is [B, latent_channels, T, h, w] with no empty axis."""
    if not isinstance(z, torch.Tensor) or z.ndim != 5 or z.shape[1] != latent_channels or 0 in z.shape:
        shape = tuple(z.shape) if isinstance(z, torch.Tensor) else type(z).__name__
        raise ValueError(f"latents must be [B, {latent_channels}, T, h, w] with T, h, w >= 1, got {shape}")


def check_stream_chunk(latents: torch.Tensor, batch_size: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    """ValueError unless a streamed chunk has the decoder's batch size and the stream's latent grid
    (any grid on the first chunk); returns the chunk's grid (h, w)."""
    if latents.shape[0] != batch_size:
        raise ValueError(f"chunk batch {latents.shape[0]} != stream decoder batch_size {batch_size}")
    chunk_grid = tuple(latents.shape[3:])
    if grid is not None and chunk_grid != grid:
        raise ValueError(f"chunk latent grid {chunk_grid} differs from the stream's {grid}")
    return chunk_grid
