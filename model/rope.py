"""3D rotary position embedding (Wan-style RoPE) on interleaved channel pairs, and its camera sub-table.

A head of D channels holds D/2 complex pairs (2i, 2i+1). They split over the (frame, row, column)
axes as t:h:w = (D/2 − 2·(D//6)) : D//6 : D//6 pairs; for D = 112 that is 20:18:18 (40:36:36 real
channels). Axis a with 2n real channels rotates pair i by position · θ^(−2i/(2n)).

Angles are computed from the absolute integer positions directly (the official code indexes a
1024-row table), so streams longer than 1024 latent frames keep working; for positions < 1024 the
two agree to float rounding.

The UCPE camera branch rotates the second half of each head (D/2 channels = D/4 pairs) with a
sub-table cut from the same angles with the same t:h:w rule applied to D/2: for D = 112 that is the
t pairs [0:10], the h pairs [20:29] and the w pairs [38:47].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


def axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Complex pairs per axis (t, h, w) for a head of `head_dim` channels."""
    hw = head_dim // 6
    return head_dim // 2 - 2 * hw, hw, hw


def _axis_frequencies(pairs: int, theta: float) -> torch.Tensor:
    """[pairs] float64 inverse frequencies of one axis with 2·pairs real channels."""
    dim = 2 * pairs
    return 1.0 / theta ** (torch.arange(0, dim, 2, dtype=torch.float64)[:pairs] / dim)


@dataclass(frozen=True)
class Rotary:
    """Unit rotations e^{iθ} [N, P] for N tokens and P complex pairs, and their conjugates; [B, N, P]
    when the rows of a batch sit at different positions (stacked streams).

    For fp32/fp64 features the rotation is a complex multiply on the interleaved pairs (one fused
    kernel); other dtypes use the real form x0·cos − x1·sin, x0·sin + x1·cos.
    """

    cos: torch.Tensor  # [N, P] or [B, N, P]
    sin: torch.Tensor  # [N, P] or [B, N, P]
    unit: torch.Tensor  # [N, P] or [B, N, P] complex, e^{iθ}
    unit_conj: torch.Tensor  # [N, P] or [B, N, P] complex, e^{−iθ}

    @staticmethod
    def _heads(table: torch.Tensor) -> torch.Tensor:
        """A table broadcast over x [B, N, H, P]: [1, N, 1, P] shared, [B, N, 1, P] per row."""
        return table[None, :, None, :] if table.ndim == 2 else table[:, :, None, :]

    def apply(self, x: torch.Tensor, *, inverse: bool = False) -> torch.Tensor:
        """Rotate the interleaved pairs of x [B, N, H, 2P] (token axis 1); inverse = conjugate rotation."""
        if x.dtype in (torch.float32, torch.float64):
            unit = self._heads(self.unit_conj if inverse else self.unit)
            pairs = torch.view_as_complex(x.contiguous().unflatten(-1, (-1, 2)))  # [B, N, H, P]
            return torch.view_as_real(pairs * unit.to(pairs.dtype)).flatten(-2)  # [B, N, H, 2P]
        x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)  # [B, N, H, P] each
        cos = self._heads(self.cos)
        sin = -self._heads(self.sin) if inverse else self._heads(self.sin)
        return torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)  # [B, N, H, 2P]


def rope_angles(head_dim: int, frames: torch.Tensor, height: int, width: int, theta: float) -> torch.Tensor:
    """Angles [T·H·W, D/2] float64 for absolute frame positions `frames` [T] and rows/cols from 0.

    Token order is (t, h, w) with t slowest, the order of the model's token sequence.
    """
    pt, ph, pw = axis_pairs(head_dim)
    rows = torch.arange(height, dtype=torch.float64)
    cols = torch.arange(width, dtype=torch.float64)
    t = frames.to(torch.float64)[:, None] * _axis_frequencies(pt, theta)  # [T, pt]
    h = rows[:, None] * _axis_frequencies(ph, theta)  # [H, ph]
    w = cols[:, None] * _axis_frequencies(pw, theta)  # [W, pw]
    n_t, n_h, n_w = len(frames), height, width
    angles = torch.cat(
        (
            t[:, None, None, :].expand(n_t, n_h, n_w, pt),
            h[None, :, None, :].expand(n_t, n_h, n_w, ph),
            w[None, None, :, :].expand(n_t, n_h, n_w, pw),
        ),
        dim=-1,
    )
    return angles.reshape(n_t * n_h * n_w, pt + ph + pw)  # [N, D/2]


def camera_angles(angles: torch.Tensor, head_dim: int) -> torch.Tensor:
    """The UCPE sub-table [..., N, D/4] cut from the main angles [..., N, D/2] (see the module docstring)."""
    pt, ph, _ = axis_pairs(head_dim)
    ct, ch, cw = axis_pairs(head_dim // 2)
    return torch.cat((angles[..., :ct], angles[..., pt:pt + ch], angles[..., pt + ph:pt + ph + cw]), dim=-1)


def rotary(angles: torch.Tensor, *, device: torch.device, dtype: torch.dtype) -> Rotary:
    cos, sin = angles.cos(), angles.sin()
    unit = torch.complex(cos.float(), sin.float()).to(device)
    return Rotary(cos=cos.to(device=device, dtype=dtype), sin=sin.to(device=device, dtype=dtype),
                  unit=unit, unit_conj=unit.conj().resolve_conj())
