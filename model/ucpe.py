"""UCPE (unified camera positional encoding): per-ray world→ray transforms and how they act on features.

For latent pixel (u, v) of frame f (integer coordinates, no +0.5) with intrinsics (fx, fy, cx, cy)
on the latent grid and pose world_T_cam = [R | t]:

    d_cam = normalize((u − cx)/fx, (v − cy)/fy, 1)           pinhole (UCM with ξ = 0)
    z = normalize(R d_cam);  x = normalize(R[:, 1] × z);  y = normalize(z × x)
    ray_T_world = [R_lᵀ | −R_lᵀ t] with R_l = [x y z]          (P, 4×4 per token)

Features of a head (D channels): the first D/2 are D/8 homogeneous 4-vectors transformed by a 4×4
matrix (q ← Pᵀ q, k ← P⁻¹ k, v ← P⁻¹ v, output ← P out); the second D/2 get the camera RoPE
sub-table (conjugate on the output). So qᵀk becomes qᵀ P_i P_j⁻¹ k, a relative ray-to-ray transform.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from model.rope import Rotary


def camera_rays(camera_conditions: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Unit camera-frame rays d_cam [B, T, H, W, 3] from camera_conditions [B, T, 20] (fx, fy, cx, cy at 16:20)."""
    fx, fy, cx, cy = camera_conditions[..., 16:20].unbind(-1)  # [B, T] each
    dtype, device = camera_conditions.dtype, camera_conditions.device
    u = torch.arange(width, dtype=dtype, device=device)
    v = torch.arange(height, dtype=dtype, device=device)
    x = (u[None, None, None, :] - cx[..., None, None]) / fx[..., None, None]  # [B, T, 1, W]
    y = (v[None, None, :, None] - cy[..., None, None]) / fy[..., None, None]  # [B, T, H, 1]
    x, y = torch.broadcast_tensors(x, y)  # [B, T, H, W]
    d = torch.stack((x, y, torch.ones_like(x)), dim=-1)  # [B, T, H, W, 3]
    return d / d.norm(dim=-1, keepdim=True)


def ray_T_world(camera_conditions: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Per-token world→ray transforms P [B, T·H·W, 4, 4] (token order t, h, w)."""
    batch, frames, _ = camera_conditions.shape
    world_T_cam = camera_conditions[..., :16].reshape(batch, frames, 4, 4)
    rot = world_T_cam[..., :3, :3]  # [B, T, 3, 3]
    centre = world_T_cam[..., :3, 3]  # [B, T, 3]
    d_world = torch.einsum("btij,bthwj->bthwi", rot, camera_rays(camera_conditions, height, width))
    z = F.normalize(d_world, dim=-1, eps=1e-6)
    cam_y = rot[..., :, 1][:, :, None, None, :].expand_as(z)
    x = F.normalize(torch.linalg.cross(cam_y, z, dim=-1), dim=-1, eps=1e-6)
    y = F.normalize(torch.linalg.cross(z, x, dim=-1), dim=-1, eps=1e-6)
    world_R_ray = torch.stack((x, y, z), dim=-1)  # [B, T, H, W, 3, 3] columns are the ray axes
    ray_R_world = world_R_ray.transpose(-1, -2)
    p = torch.zeros(*z.shape[:-1], 4, 4, dtype=z.dtype, device=z.device)
    p[..., :3, :3] = ray_R_world
    p[..., :3, 3] = -(ray_R_world @ centre[:, :, None, None, :, None]).squeeze(-1)
    p[..., 3, 3] = 1.0
    return p.reshape(batch, frames * height * width, 4, 4)


def invert_rigid(p: torch.Tensor) -> torch.Tensor:
    """Closed-form inverse of rigid 4×4 transforms [..., 4, 4]."""
    rot_t = p[..., :3, :3].transpose(-1, -2)
    out = torch.zeros_like(p)
    out[..., :3, :3] = rot_t
    out[..., :3, 3] = -(rot_t @ p[..., :3, 3:]).squeeze(-1)
    out[..., 3, 3] = 1.0
    return out


@dataclass(frozen=True)
class CameraGeometry:
    """What the camera branch of every block needs for one run: the per-token transforms and rotary."""

    p: torch.Tensor  # [B, N, 4, 4] world→ray, decodes the output
    p_t: torch.Tensor  # [B, N, 4, 4] Pᵀ, encodes queries
    p_inv: torch.Tensor  # [B, N, 4, 4] P⁻¹, encodes keys and values
    rotary: Rotary  # camera sub-table, [N, D/4]

    @classmethod
    def build(cls, camera_conditions: torch.Tensor, height: int, width: int, rotary: Rotary, dtype: torch.dtype) -> CameraGeometry:
        # the geometry is fp32 maths whatever the model runs in: under autocast the einsum and matmuls would
        # otherwise come back in bf16, and cross products of mixed dtypes fail
        with torch.autocast(camera_conditions.device.type, enabled=False):
            p = ray_T_world(camera_conditions.float(), height, width)
            p_inv = invert_rigid(p)
        return cls(p=p.to(dtype), p_t=p.transpose(-1, -2).to(dtype), p_inv=p_inv.to(dtype), rotary=rotary)


def apply_ucpe(x: torch.Tensor, matrix: torch.Tensor, rotary: Rotary, *, inverse_rope: bool = False) -> torch.Tensor:
    """x [B, N, H, D]: first half as 4-vectors ← matrix [B, N, 4, 4] @ g, second half camera RoPE."""
    batch, tokens, heads, dim = x.shape
    half = dim // 2
    groups = x[..., :half].reshape(batch, tokens, heads * half // 4, 4)  # [B, N, H·D/8, 4]
    projected = (groups @ matrix.transpose(-1, -2)).reshape(batch, tokens, heads, half)  # [B, N, H, D/2]
    rotated = rotary.apply(x[..., half:], inverse=inverse_rope)  # [B, N, H, D/2]
    return torch.cat((projected, rotated), dim=-1)


def encode_camera_qkv(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, camera: CameraGeometry, *, rms_clip: bool
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """UCPE-encode camera-branch q (with Pᵀ) and k, v (with P⁻¹), all [B, N, H, D]; optionally RMS-clipped."""
    heads = k.shape[2]
    q_u = apply_ucpe(q, camera.p_t, camera.rotary)
    k_u, v_u = apply_ucpe(torch.cat((k, v), dim=2), camera.p_inv, camera.rotary).split(heads, dim=2)
    if rms_clip:
        q_u, k_u, v_u = (clip_to_reference_rms(a, b) for a, b in ((q, q_u), (k, k_u), (v, v_u)))
    return q_u, k_u, v_u


def clip_to_reference_rms(reference: torch.Tensor, transformed: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """diffusers' PostUCPERenorm: shrink each head vector [..., D] to at most the reference's RMS."""
    ref = reference.square().mean(-1, keepdim=True).add(eps).sqrt()
    new = transformed.square().mean(-1, keepdim=True).add(eps).sqrt()
    return transformed * (ref / new.clamp_min(eps)).clamp(max=1.0)
