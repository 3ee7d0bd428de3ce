"""The anchor's depth, predicted from its latent (`ModelConfig.anchor_depth_copy`; the embedded model only).

The rotation warp of the anchor (model.anchor) is exact only for what is far away; walking, every
near thing moves across the view by |step × ray| / depth, and the copy has to let go of it. With
the anchor's depth the warp is exact for everything that stays in view (`depth_sample_grid`). At
inference nothing knows the depth, so a small convolutional head predicts it from the anchor latent
and the anchor camera's rays; the sim gives the true depth to train it on (`train.depth_head`).

    AnchorDepthHead(anchor [B, C, T, h, w], anchor_camera [B, T, 20]) -> inverse depth [B, T, h, w]

Inverse depth (1/m, ≥ 0; the sky is 0): it is bounded, 0 is exact for the sky and for the rotation
warp's "infinitely far", and an error in it moves a warped point by the same amount at every depth,
which is what the copy cares about. Besides the latent the head sees each latent pixel's ray in
first-frame axes (the first camera stands level): on flat ground the inverse z-depth is the ray's
downward component over the eye's height, so the ground is one linear map away, and the latent has
only to tell where something stands on it.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.anchor import first_frame_rays

# ray channels the head sees beside the latent: the unit ray in first-frame axes and its downward
# component with camera z = 1 (the ground's inverse z-depth up to the eye height)
RAY_CHANNELS = 4


class AnchorDepthHead(nn.Module):
    """Inverse depth (1/m) of each anchor latent pixel from the latent and the camera's rays.

    Three 3×3 convolutions (a receptive field of 7×7 latent pixels) and a 1×1 to one channel,
    through softplus so the output is ≥ 0. Runs per frame: [B, C, T, h, w] -> [B, T, h, w] float32.
    """

    def __init__(self, latent_channels: int, width: int = 64):
        super().__init__()
        self.width = width
        self.convs = nn.ModuleList([
            nn.Conv2d(latent_channels + RAY_CHANNELS, width, 3, padding=1),
            nn.Conv2d(width, width, 3, padding=1),
            nn.Conv2d(width, width, 3, padding=1),
        ])
        self.out = nn.Conv2d(width, 1, 1)

    def forward(self, anchor: torch.Tensor, anchor_camera: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = anchor.shape
        if anchor_camera.shape != (batch, frames, 20):
            raise ValueError(f"AnchorDepthHead needs anchor_camera [B, T, 20] = {(batch, frames, 20)}, "
                             f"got {tuple(anchor_camera.shape)}")
        dtype = self.out.weight.dtype
        rays = ray_channels(anchor_camera, height, width)  # [B, T, 4, h, w]
        x = torch.cat([anchor.transpose(1, 2).to(dtype), rays.to(dtype)], dim=2)  # [B, T, C + 4, h, w]
        x = x.reshape(batch * frames, channels + RAY_CHANNELS, height, width)
        for conv in self.convs:
            x = F.silu(conv(x))
        return F.softplus(self.out(x).float()).reshape(batch, frames, height, width)


def ray_channels(camera: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """camera [B, T, 20] -> [B, T, 4, h, w] float32: the unit ray in first-frame axes, then its first-frame
    downward component over its z in the camera (the ground's inverse z-depth times the eye height)."""
    _, rays = first_frame_rays(camera, height, width)  # [B, T, h, w, 3], camera z = 1
    unit = F.normalize(rays, dim=-1)
    return torch.cat([unit, rays[..., 1:2]], dim=-1).permute(0, 1, 4, 2, 3)


def inverse_depth_targets(depth: torch.Tensor, stride: int) -> torch.Tensor:
    """Per-pixel z-depth [..., H, W] (metres, inf for the sky) -> the mean inverse depth of each
    stride×stride cell [..., H/stride, W/stride] (1/m; a cell half sky and half at 2 m gets 0.25)."""
    inverse = torch.where(torch.isfinite(depth) & (depth > 0), 1.0 / depth.clamp_min(1e-3), torch.zeros_like(depth))
    lead = inverse.shape[:-2]
    pooled = F.avg_pool2d(inverse.reshape(-1, 1, *inverse.shape[-2:]).float(), stride)
    return pooled.reshape(*lead, *pooled.shape[-2:])
