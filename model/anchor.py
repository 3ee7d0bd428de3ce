"""The clean anchor as a pixel-aligned model input (`ModelConfig.anchor_input`; the embedded model only).

Each chunk's anchor is the newest clean latent frame before it: the stream's last committed latent
(`StreamState.last_latent`), or on a walk's first chunk its frame 0, the start image. Every frame of
the chunk sees the anchor warped into its own view by the rotation between the two cameras, the
homography K·R·K⁻¹ that is exact for distant content (translation and parallax are left to the
model), plus a channel that is 1 where the warped pixel lies inside the anchor's view:

    anchor_features(anchor [B, C, T, h, w], anchor_camera [B, T, 20], camera [B, T, 20]) -> [B, C + 1, T, h, w]

Why: a one-step student sees the anchor only inside its noised input (the warm start, at a
signal-to-noise ratio of 1), and standing still loses 8 dB to the VAE's round trip in the first
second: the copy itself fails. Given the clean anchor where each token's content came from, keeping
what stays in view is a local copy, not a retrieval through attention. The model embeds the features
with a zero-initialised `PatchEmbed` added to the latent tokens, so adding the input to trained
weights changes nothing until training moves it (`train.grow.add_anchor_input`).

The copy gate (`ModelConfig.anchor_copy`). An input embedding still leaves the copy to the network,
through five blocks and the output head's LayerNorm, and it learns it slowly (docs/training.md). The
gate makes the copy one parameter away: a per-token g = Linear(LayerNorm(x_out)), zero-initialised,
blends the velocity towards (x_t − a)/σ, the one whose Euler step to σ = 0 lands exactly on the
warped anchor a; where the anchor is out of view, and on frames at σ ≈ 0, g is 0.

Cameras are rows of `camera_conditions`: the row-major camera-to-first-frame pose (16 numbers, OpenCV
axes) and fx, fy, cx, cy on the latent grid, pixel centres on integer coordinates. Without cameras the
anchor is used as it is (identity warp, every pixel valid).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rotation_sample_grid(anchor_camera: torch.Tensor, camera: torch.Tensor, height: int, width: int
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each pixel of a view falls in the anchor's view, rotating only.

    anchor_camera, camera [..., 20] -> (grid [..., h, w, 2] in grid_sample's align_corners=True units,
    valid [..., h, w] bool: in front of the anchor camera and inside its image). Computed in float32.
    """
    cam_a, cam_t = anchor_camera.float(), camera.float()
    first_R_anchor = cam_a[..., :16].unflatten(-1, (4, 4))[..., :3, :3]  # [..., 3, 3]
    first_R_view = cam_t[..., :16].unflatten(-1, (4, 4))[..., :3, :3]
    anchor_R_view = first_R_anchor.transpose(-1, -2) @ first_R_view  # [..., 3, 3]
    fx, fy, cx, cy = cam_t[..., 16:17, None], cam_t[..., 17:18, None], cam_t[..., 18:19, None], cam_t[..., 19:20, None]
    v, u = torch.meshgrid(torch.arange(height, dtype=torch.float32, device=camera.device),
                          torch.arange(width, dtype=torch.float32, device=camera.device), indexing="ij")
    rays_view = torch.stack(torch.broadcast_tensors((u - cx) / fx, (v - cy) / fy, torch.ones_like(u)), dim=-1)  # [..., h, w, 3]
    rays_anchor = torch.einsum("...ij,...hwj->...hwi", anchor_R_view, rays_view)
    z = rays_anchor[..., 2]
    in_front = z > 1e-6
    z = torch.where(in_front, z, torch.ones_like(z))
    afx, afy = cam_a[..., 16:17, None], cam_a[..., 17:18, None]
    acx, acy = cam_a[..., 18:19, None], cam_a[..., 19:20, None]
    u_a = afx * rays_anchor[..., 0] / z + acx
    v_a = afy * rays_anchor[..., 1] / z + acy
    # a thousandth of a pixel of slack, so rounding never drops the border of an unrotated view
    slack = 1e-3
    valid = (in_front & (u_a >= -slack) & (u_a <= width - 1 + slack)
             & (v_a >= -slack) & (v_a <= height - 1 + slack))
    grid = torch.stack((_normalised(u_a, width), _normalised(v_a, height)), dim=-1).clamp(-1.0, 1.0)
    return torch.where(valid[..., None], grid, torch.zeros_like(grid)), valid


def _normalised(coord: torch.Tensor, size: int) -> torch.Tensor:
    return coord * (2.0 / (size - 1)) - 1.0 if size > 1 else torch.zeros_like(coord)


def anchor_features(anchor: torch.Tensor, anchor_camera: torch.Tensor | None, camera: torch.Tensor | None) -> torch.Tensor:
    """The anchor warped into each frame's view and its validity: [B, C, T, h, w] -> [B, C + 1, T, h, w].

    `anchor[:, :, t]` is frame t's anchor (the same frame repeated across a chunk); `anchor_camera` and
    `camera` [B, T, 20] are the anchor's and the frame's camera rows. Both None: no warp.
    Invalid pixels (outside the anchor's view) are 0 in every channel.
    """
    batch, channels, frames, height, width = anchor.shape
    if camera is None or anchor_camera is None:
        if (camera is None) != (anchor_camera is None):
            raise ValueError("anchor_features needs both the anchor's and the frames' cameras, or neither")
        return torch.cat([anchor, torch.ones_like(anchor[:, :1])], dim=1)
    if camera.shape != (batch, frames, 20) or anchor_camera.shape != (batch, frames, 20):
        raise ValueError(f"anchor_features needs cameras [B, T, 20] = {(batch, frames, 20)}, got "
                         f"{tuple(anchor_camera.shape)} (anchor) and {tuple(camera.shape)} (frames)")
    grid, valid = rotation_sample_grid(anchor_camera, camera, height, width)  # [B, T, h, w, 2], [B, T, h, w]
    flat = anchor.permute(0, 2, 1, 3, 4).reshape(batch * frames, channels, height, width)
    warped = F.grid_sample(flat, grid.reshape(batch * frames, height, width, 2).to(anchor.dtype),
                           mode="bilinear", padding_mode="border", align_corners=True)  # [B·T, C, h, w]
    mask = valid.reshape(batch * frames, 1, height, width).to(anchor.dtype)
    out = torch.cat([warped * mask, mask], dim=1)  # [B·T, C + 1, h, w]
    return out.reshape(batch, frames, channels + 1, height, width).permute(0, 2, 1, 3, 4)
