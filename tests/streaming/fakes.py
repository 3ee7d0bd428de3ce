"""Call-recording stand-ins for the model, VAE and camera conditioner (CPU, no weights).

They honour the shapes of the real stream API so the generator's layout, schedule and bookkeeping
can be tested exactly; the real tiny model is exercised in the end-to-end tests.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class FakeState:
    chunks: int = 0

    def clone(self) -> "FakeState":
        return FakeState(self.chunks)

    def nbytes(self) -> int:
        return 8


@dataclass
class FakeModel:
    """velocity = x − target(state), so the Euler steps pull x towards a state-dependent value."""

    calls: list = field(default_factory=list)

    def init_stream_state(self, batch, latent_hw, kv_window_chunks, sink):
        return FakeState()

    def null_text(self, batch):
        return torch.zeros(batch, 1, 4), torch.ones(batch, 1, dtype=torch.bool)

    def stream_forward(self, x, timestep, text, text_mask, camera_conditions, chunk_plucker, state):
        self.calls.append(("forward", tuple(x.shape), timestep.clone(), state.chunks, tuple(camera_conditions.shape), tuple(chunk_plucker.shape)))
        return x - 0.1 * (state.chunks + 1)

    def stream_commit(self, x, text, text_mask, camera_conditions, chunk_plucker, state):
        self.calls.append(("commit", tuple(x.shape), state.chunks))
        return FakeState(state.chunks + 1)


class FakeDecoder:
    def __init__(self, stride: int, spatial: int):
        self.stride, self.spatial, self.first = stride, spatial, True

    def clone(self) -> "FakeDecoder":
        out = FakeDecoder(self.stride, self.spatial)
        out.first = self.first
        return out

    def decode_chunk(self, latents):
        rgb = latents[:, :3].clamp(-1, 1)  # [B, 3, T, h, w]
        rgb = rgb.repeat_interleave(self.stride, dim=2)
        if self.first:
            rgb = rgb[:, :, self.stride - 1 :]
            self.first = False
        return rgb.repeat_interleave(self.spatial, dim=3).repeat_interleave(self.spatial, dim=4)


class FakeVAE:
    temporal_stride = 4
    spatial_stride = 8
    latent_channels = 4

    def encode(self, video):
        pooled = torch.nn.functional.avg_pool3d(video, (1, 8, 8))  # [B, 3, F, h, w]
        return torch.cat([pooled, pooled[:, :1]], dim=1)

    def stream_decoder(self, batch):
        return FakeDecoder(self.temporal_stride, self.spatial_stride)


class FakeConditioner:
    def __init__(self, first_world_T_cam, intrinsics, target_size, vae_stride):
        self.stride, _, self.spatial = vae_stride
        self.h, self.w = target_size[0] // self.spatial, target_size[1] // self.spatial
        self.frames: list[np.ndarray] = []

    def add_frames(self, world_T_cams):
        self.frames.extend(np.asarray(world_T_cams))

    def latent_chunk(self, lat_start, lat_end):
        n = lat_end - lat_start
        cam = torch.zeros(n, 20)
        last = self.frames[-1]
        cam[:, :3] = torch.as_tensor(last[:3, 3], dtype=torch.float32)
        return {"camera_conditions": cam, "chunk_plucker": torch.zeros(6 * self.stride, n, self.h, self.w)}


@dataclass
class FakeSnapshot:
    seq: int
    keys: int
    yaw: float = 0.0


class FakeIntegrator:
    """Walks +z at `speed` m/s while FORWARD (bit 1) is held; no smoothing."""

    def __init__(self, world_T_cam0, fps: float, speed: float = 1.0):
        self.pose = np.array(world_T_cam0, dtype=np.float64)
        self.dt = 1.0 / fps
        self.speed = speed
        self.settings = None

    def advance(self, snapshot, n_frames):
        # Like PoseIntegrator: None = no new input, keep doing what the last snapshot said.
        if snapshot is not None:
            self.keys = snapshot.keys
        out = []
        for _ in range(n_frames):
            if getattr(self, "keys", 0) & 1:
                self.pose = self.pose.copy()
                self.pose[2, 3] += self.speed * self.dt
            out.append(self.pose.copy())
        return np.stack(out)
