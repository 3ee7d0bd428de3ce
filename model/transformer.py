"""`WorldModel`: the SANA-WM stage-1 transformer (hybrid Gated-DeltaNet / softmax DiT with camera control).

Contract (all tensors in the model's dtype and on its device unless said otherwise):

    model = WorldModel.from_config(ModelConfig.preset("tiny"))     # or a dict of official config.json keys
    model = WorldModel.from_pretrained(folder, device=None, dtype=None)

    model(hidden_states [B, C, T, H, W], timestep [B, 1, T], encoder_hidden_states [B, L, C_text],
          encoder_attention_mask [B, L] | None, camera_conditions [B, T, 20] | None,
          chunk_plucker [B, 6·stride, T, H, W] | None) -> velocity [B, C, T, H, W]            bidirectional
    model.forward_chunk_causal(same inputs, *, chunk_sizes: list[int], kv_window_chunks: int | None = None,
          sink: bool = False) -> velocity                                                      chunk-causal
    model.null_text(batch_size) -> (encoder_hidden_states [B, L, C_text], mask [B, L])          y_embedding

    state = model.init_stream_state(batch_size, latent_hw=(h, w), *, kv_window_chunks=2, sink=True,
                                    device=None, dtype=None) -> StreamState
    v = model.stream_forward(x_chunk [B, C, Tc, h, w], timestep [B, 1, Tc], encoder_hidden_states,
                             encoder_attention_mask, camera_conditions [B, Tc, 20], chunk_plucker, state)
        # read-only on state: denoise as many times as you like against it
    state = model.stream_commit(x_clean_chunk, encoder_hidden_states, encoder_attention_mask,
                                camera_conditions, chunk_plucker, state, *, timestep=None) -> StreamState
        # the t = 0 pass (timestep None = zeros) on the clean chunk; returns the new state
    state.frame_index, state.chunk_index, state.nbytes(), state.clone(), state.to(device)

Streaming a clip chunk by chunk (commit with the timesteps a whole-clip call used for those frames)
equals `forward_chunk_causal` of the whole clip with the same chunk sizes and the KV window the
state was made with. Camera conditions are absolute (relative to the stream's first frame); RoPE
positions continue at `state.frame_index` (per row for a stack of streams, `StreamState.stack`).

With `ModelConfig.anchor_input` (the embedded model's own) each frame also sees its chunk's clean anchor,
rotation-warped into its view (`model.anchor`): the state's last committed latent when streaming, else
the newest frame before the chunk in this call (frame 0 for the first chunk), so the equality above holds.

Timesteps are per frame, truncated to integers as the official model does (`timestep.long()`).
`camera_conditions=None` skips the UCPE camera branches and `chunk_plucker=None` the Plücker
injection. Wrong shapes or dtypes raise ValueError naming them; a wrong state type raises TypeError.

Checkpoint keys are the official ones (sana_wm.md §8; diffusers' `t_embedder.linear_1/2` are our
`t_embedder.mlp.0/2`, and diffusers has no `y_embedder.y_embedding`). `ucpe_rms_clip` defaults to
False, the released Triton path; diffusers' port clips (set True to match it).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from model.anchor import (anchor_features, background_copy_target, depth_copy_target, ground_copy_target, ray_parallax,
                          start_copy_target)
from model.anchor_depth import AnchorDepthHead
from model.block import Block
from model.config import ModelConfig
from model.embedders import CaptionEmbedder, FinalLayer, PatchEmbed, TimestepEmbedder
from model.layers import RMSNorm, RunLayout
from model.rope import camera_angles, rope_angles, rotary
from model.state import GDNState, KVCache, SoftmaxState, StreamState
from model.ucpe import CameraGeometry


def _shape(x: object) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


class WorldModel(nn.Module):
    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if not isinstance(config, ModelConfig):
            raise TypeError(f"WorldModel needs a ModelConfig, got {type(config).__name__}")
        self.config = config
        hidden = config.hidden_size
        self.x_embedder = PatchEmbed(config.in_channels, hidden)
        self.plucker_embedder = PatchEmbed(config.plucker_channels, hidden)
        # the up/latitude "absolute map" branch: in the checkpoint, unused by the release (Plücker post-attn is on)
        self.raymap_embedder = PatchEmbed(3, hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.t_block = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 6 * hidden))
        self.y_embedder = CaptionEmbedder(config.caption_channels, hidden, config.model_max_length)
        self.attention_y_norm = RMSNorm(hidden, config.y_norm_eps)
        # the clean anchor, rotation-warped into each frame's view (model.anchor); zero: adds nothing
        self.anchor_embedder = PatchEmbed(config.in_channels + 1, hidden) if config.anchor_input else None
        # per-token blend of the velocity towards copying that anchor (model.anchor); zero: no copy
        self.copy_gate = nn.Linear(hidden, 1) if config.anchor_copy else None
        # the gate's still term c·exp(−parallax / s) (model.anchor): c zero (adds nothing), s from 0.1 m
        if config.anchor_copy_still:
            self.copy_still = nn.Parameter(torch.zeros(1))
            self.copy_still_log_metres = nn.Parameter(torch.full((1,), math.log(0.1)))
        else:
            self.copy_still = self.copy_still_log_metres = None
        # the ground-plane copy's c_ground (model.anchor, "The ground"): zero, adds nothing
        self.copy_ground = nn.Parameter(torch.zeros(1)) if config.anchor_ground_m > 0 else None
        # the depth copy (model.anchor_depth): the anchor's predicted depth and c_depth, zero: adds nothing
        if config.anchor_depth_copy:
            self.anchor_depth = AnchorDepthHead(config.in_channels)
            self.copy_depth = nn.Parameter(torch.zeros(1))
        else:
            self.anchor_depth = self.copy_depth = None
        # the start copy (model.anchor, "The start"): c_start, zero: adds nothing
        self.copy_start = nn.Parameter(torch.zeros(1)) if config.anchor_start_fade_m > 0 else None
        # the background copy (model.anchor, "The background"): c_background, zero: adds nothing
        self.copy_background = nn.Parameter(torch.zeros(1)) if config.anchor_background_eye_m > 0 else None
        # its per-token gate clamp(1 + g, 0, 1) (model.anchor, "The background"): g zero, the blend as without it
        self.background_gate = nn.Linear(hidden, 1) if config.anchor_background_gate else None
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.depth))
        self.final_layer = FinalLayer(hidden, config.out_channels)
        with torch.no_grad():
            nn.init.zeros_(self.plucker_embedder.proj.weight)
            nn.init.zeros_(self.plucker_embedder.proj.bias)
            self.attention_y_norm.weight.fill_(0.01)
            if self.anchor_embedder is not None:
                nn.init.zeros_(self.anchor_embedder.proj.weight)
                nn.init.zeros_(self.anchor_embedder.proj.bias)
            for gate in (self.copy_gate, self.background_gate):
                if gate is not None:
                    nn.init.zeros_(gate.weight)
                    nn.init.zeros_(gate.bias)

    @classmethod
    def from_config(cls, config: ModelConfig | dict[str, Any]) -> WorldModel:
        """From a ModelConfig, a dict of our field names, or a dict of official config.json keys."""
        if isinstance(config, dict):
            ours = {f for f in ModelConfig.__dataclass_fields__}
            config = ModelConfig.from_dict(config) if set(config) <= ours else ModelConfig.from_official_dict(config)
        return cls(config)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: str | torch.device | None = None,
                        dtype: torch.dtype | None = None) -> WorldModel:
        from model.checkpoint import load_pretrained

        return load_pretrained(folder, device=device, dtype=dtype)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.x_embedder.proj.weight.device

    def null_text(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The null caption (y_embedding) as text input: ([B, L, C_text], mask [B, L] of ones)."""
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        table = self.y_embedder.y_embedding
        text = table[None].expand(batch_size, *table.shape).to(self.dtype)
        return text, torch.ones(batch_size, table.shape[0], dtype=torch.long, device=table.device)

    def _check_inputs(self, hidden_states, timestep, text, mask, camera, plucker) -> None:
        cfg = self.config
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.ndim != 5 or not hidden_states.is_floating_point():
            raise ValueError(f"hidden_states must be a float tensor [B, C, T, H, W], got {_shape(hidden_states)}"
                             + (f" of dtype {hidden_states.dtype}" if isinstance(hidden_states, torch.Tensor) else ""))
        batch, channels, frames, height, width = hidden_states.shape
        if channels != cfg.in_channels or min(batch, frames, height, width) == 0:
            raise ValueError(f"hidden_states must be [B, {cfg.in_channels}, T, H, W] with B, T, H, W > 0, got {_shape(hidden_states)}")
        if not isinstance(timestep, torch.Tensor) or tuple(timestep.shape) != (batch, 1, frames):
            raise ValueError(f"timestep must be [B, 1, T] = {(batch, 1, frames)} (one per frame), got {_shape(timestep)}")
        if timestep.dtype == torch.bool or timestep.is_complex():
            raise ValueError(f"timestep must be a real number tensor, got dtype {timestep.dtype}")
        if (not isinstance(text, torch.Tensor) or text.ndim != 3 or text.shape[0] != batch
                or text.shape[2] != cfg.caption_channels or text.shape[1] == 0 or not text.is_floating_point()):
            raise ValueError(f"encoder_hidden_states must be a float tensor [B={batch}, L, {cfg.caption_channels}], got "
                             f"{_shape(text)}" + (f" of dtype {text.dtype}" if isinstance(text, torch.Tensor) else ""))
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(text.shape[:2]):
                raise ValueError(f"encoder_attention_mask must be [B, L] = {tuple(text.shape[:2])} or None, got {_shape(mask)}")
            if not bool((mask != 0).any(-1).all()):
                raise ValueError("encoder_attention_mask has a row with no valid text token; pass at least one per sample")
        if camera is not None:
            if (not isinstance(camera, torch.Tensor) or tuple(camera.shape) != (batch, frames, 20)
                    or not camera.is_floating_point()):
                raise ValueError(f"camera_conditions must be a float tensor [B, T, 20] = {(batch, frames, 20)} or None, got "
                                 f"{_shape(camera)}" + (f" of dtype {camera.dtype}" if isinstance(camera, torch.Tensor) else ""))
            if not bool(torch.isfinite(camera).all()):
                raise ValueError("camera_conditions holds NaN or inf")
            if not bool((camera[..., 16:18] != 0).all()):
                raise ValueError("camera_conditions has a zero focal length (fx, fy at columns 16, 17)")
        named = {"hidden_states": hidden_states, "timestep": timestep, "encoder_hidden_states": text,
                 "encoder_attention_mask": mask, "camera_conditions": camera, "chunk_plucker": plucker}
        devices = {name: str(x.device) for name, x in named.items() if isinstance(x, torch.Tensor)}
        if any(torch.device(d) != self.device for d in devices.values()):
            raise ValueError(f"inputs must be on the model's device {self.device}, got {devices}")
        if plucker is not None:
            expected = (batch, cfg.plucker_channels, frames, height, width)
            if not isinstance(plucker, torch.Tensor) or tuple(plucker.shape) != expected or not plucker.is_floating_point():
                raise ValueError(f"chunk_plucker must be a float tensor [B, 6·stride, T, H, W] = {expected} or None, got "
                                 f"{_shape(plucker)}" + (f" of dtype {plucker.dtype}" if isinstance(plucker, torch.Tensor) else ""))

    def _run(
        self, hidden_states, timestep, text, mask, camera, plucker, layout: RunLayout, *,
        frame_offset: int | tuple[int, ...] = 0, states: tuple | None = None, want_state: bool = False, output: bool = True,
        past: StreamState | None = None, before_copy: bool = False,
    ) -> tuple[torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None, tuple | None]:
        """The shared body of every mode. Returns (velocity [B, C, T, H, W] or None, new block states or None).

        `frame_offset` is the RoPE position of the first frame: one int for every row, or one per row
        (stacked streams at different positions; the rotary tables are then per row). `past` (stream
        mode) supplies the anchor input's last committed latent and camera. With `before_copy` the velocity is the
        pair (velocity, the velocity before the copy blends)."""
        dtype, device = self.dtype, self.device
        batch, frames, height, width = hidden_states.shape[0], layout.frames, layout.height, layout.width

        # 1. embed tokens, timesteps, text
        x = self.x_embedder(hidden_states.to(dtype))  # [B, N, C]
        anchor = parallax = ground = depth = start = background = None
        if self.anchor_embedder is not None:
            source, source_camera = self._anchor_source(hidden_states, camera, layout, past)
            anchor = anchor_features(source, source_camera, camera)  # [B, C + 1, T, H, W]
            x = x + self.anchor_embedder(anchor.to(dtype))
            # the copy's own geometry; a pass without output (the commit) never copies
            if output and self.copy_still is not None and camera is not None:
                parallax = ray_parallax(source_camera, camera, height, width)  # [B, T, H, W]
            if output and self.copy_ground is not None and camera is not None:
                ground = ground_copy_target(source, source_camera, camera, self.config.anchor_ground_m)
            if output and self.copy_depth is not None and camera is not None:
                depth = depth_copy_target(source, source_camera, camera, self.anchor_depth(source, source_camera))
            if output and self.copy_start is not None and camera is not None:
                start_latent, start_camera = self._start_source(hidden_states, camera, past)
                start_depth = self.anchor_depth(start_latent, start_camera)
                start = start_copy_target(start_latent, start_camera, camera, start_depth, self.config.anchor_start_fade_m,
                                          self.config.anchor_start_interpolation)
                if self.copy_background is not None:
                    background = background_copy_target(start_latent, start_camera, camera, start_depth,
                                                        self.config.anchor_background_eye_m)
        t = self.t_embedder(timestep.reshape(-1)).reshape(batch, frames, -1)  # [B, T, C]
        t0 = self.t_block(t).unflatten(-1, (6, -1))  # [B, T, 6, C]
        y = self.attention_y_norm(self.y_embedder(text.to(dtype)))  # [B, L, C]
        text_mask = None if mask is None else (mask != 0)[:, None, None, :]  # [B, 1, 1, L]

        # 2. positions: RoPE at absolute frames, UCPE transforms, Plücker rays
        offsets = sorted(set(frame_offset)) if isinstance(frame_offset, tuple) else [frame_offset]
        if len(offsets) == 1:
            angles = rope_angles(self.config.head_dim, torch.arange(offsets[0], offsets[0] + frames),
                                 height, width, self.config.rope_theta)  # [N, D/2]
        else:
            table = {o: rope_angles(self.config.head_dim, torch.arange(o, o + frames), height, width, self.config.rope_theta)
                     for o in offsets}
            angles = torch.stack([table[o] for o in frame_offset])  # [B, N, D/2]
        rope = rotary(angles, device=device, dtype=dtype)
        geometry = None
        if camera is not None:
            cam_rope = rotary(camera_angles(angles, self.config.head_dim), device=device, dtype=dtype)
            geometry = CameraGeometry.build(camera.to(device), height, width, cam_rope, dtype)
        plucker_emb = None if plucker is None else self.plucker_embedder(plucker.to(dtype))

        # 3. blocks
        new_states = []
        for i, block in enumerate(self.blocks):
            x, new = block(
                x, t0, block.cross_attn.text_kv(y), text_mask, layout, rope, geometry, plucker_emb,
                None if states is None else states[i], want_state=want_state,
            )
            new_states.append(new)
        if not output:
            return None, tuple(new_states)

        # 4. output head
        out = self.final_layer(x, t, frames)  # [B, N, C_out]
        out = out.reshape(batch, frames, height, width, -1).permute(0, 4, 1, 2, 3)
        raw = out
        if self.copy_gate is not None:
            out = self._copy(out, x, hidden_states, timestep, anchor, parallax, ground, depth, start, background)
        return ((out, raw) if before_copy else out), (tuple(new_states) if want_state else None)

    def _copy(self, velocity: torch.Tensor, x: torch.Tensor, hidden_states: torch.Tensor, timestep: torch.Tensor,
              anchor: torch.Tensor, parallax: torch.Tensor | None,
              ground: tuple[torch.Tensor, torch.Tensor] | None = None, depth: torch.Tensor | None = None,
              start: torch.Tensor | None = None, background: torch.Tensor | None = None) -> torch.Tensor:
        """The copy gate (model.anchor): v' = (1 − g)·v + g·(x_t − a)/σ per token, where a is the warped anchor
        and (x_t − a)/σ the velocity whose Euler step to σ = 0 lands on it; g = copy_gate(LayerNorm(x)), which
        the still term k = c·exp(−parallax / s) pulls to g + k·(1 − g) (c in [0, 1]; parallax [B, T, H, W]
        metres, None: 0); g is 0 where a is out of view. Then on the tokens that see the ground, with `ground`
        (the plane-warped target [B, C + 1, T, H, W] and those tokens [B, T, H, W]) and its target in view,
        v'' = (1 − c_ground)·v' + c_ground·(x_t − a_ground)/σ, and with `depth` (the depth-warped target
        [B, C + 1, T, H, W]) the same blend by c_depth on every token whose target is in view, and last with
        `start` (the start frame depth-warped, its last channel the validity times the fade) by c_start, and after it with
        `background` (the start's background at each ray's elevation) by c_background on what neither the depth copy
        nor the start copy covers, weighted by (1 − valid_depth)·(1 − valid_start) and, with the background gate,
        by clamp(1 + background_gate(LayerNorm(x)), 0, 1). Nothing is copied
        on frames at σ ≈ 0 (the image, the commit pass), whose output no sampler uses. Computed in float32;
        velocity [B, C, T, H, W] -> same."""
        batch, _, frames, height, width = velocity.shape
        sigma = timestep.float().reshape(batch, 1, frames, 1, 1) / 1000.0
        noisy = sigma > 1e-3
        normed = F.layer_norm(x, x.shape[-1:], eps=1e-6)
        gate = self.copy_gate(normed).float().reshape(batch, 1, frames, height, width)  # [B, 1, T, H, W]
        if self.copy_still is not None:
            # pulls the gate towards 1, never past it: a gate above 1 extrapolates past the anchor, and a
            # stream that keeps doing so sharpens its own frames chunk after chunk until they are noise
            still = self.copy_still.float().clamp(0.0, 1.0)
            if parallax is not None:
                still = still * torch.exp(-parallax[:, None] / self.copy_still_log_metres.float().exp())
            gate = gate + still * (1.0 - gate)
        x_t, step = hidden_states.float(), sigma.clamp_min(1e-3)

        def blend(out: torch.Tensor, weight: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
            """Move the velocity by `weight` towards the one landing on `target` [B, C + 1, T, H, W] (its last
            channel the validity, where alone the blend acts), on noisy frames only."""
            weight = weight * target[:, -1:].float() * noisy
            return out + weight * ((x_t - target[:, :-1].float()) / step - out)

        out = blend(velocity.float(), gate, anchor)
        if ground is not None:
            target, on_ground = ground
            out = blend(out, self.copy_ground.float().clamp(0.0, 1.0) * on_ground[:, None], target)
        if depth is not None:
            out = blend(out, self.copy_depth.float().clamp(0.0, 1.0), depth)
        if start is not None:
            out = blend(out, self.copy_start.float().clamp(0.0, 1.0), start)
        if background is not None:
            # only what no copy of a latent reaches: what a turn or a step has just brought into view
            uncovered = torch.ones_like(background[:, -1:])
            for covered in (depth, start):
                if covered is not None:
                    uncovered = uncovered * (1.0 - covered[:, -1:].float())
            weight = self.copy_background.float().clamp(0.0, 1.0) * uncovered
            if self.background_gate is not None:
                opened = 1.0 + self.background_gate(normed).float().reshape(batch, 1, frames, height, width)
                weight = weight * opened.clamp(0.0, 1.0)
            out = blend(out, weight, background)
        return out.to(velocity.dtype)

    @staticmethod
    def _anchor_source(hidden_states: torch.Tensor, camera: torch.Tensor | None, layout: RunLayout,
                       past: StreamState | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each frame's clean anchor [B, C, T, H, W] and its camera [B, T, 20] (None without cameras), unwarped
        (model.anchor): the stream's last committed latent for every frame when there is one, else per chunk
        of `layout` the newest frame before it (frame 0 for the first)."""
        frames = layout.frames
        if past is not None and past.last_latent is not None:
            if camera is not None and past.last_camera is None:
                raise ValueError("the anchor input needs the camera of the state's last latent: the stream "
                                 "committed a chunk without camera_conditions, and this chunk has them")
            anchor = past.last_latent.to(hidden_states.dtype).expand(-1, -1, frames, -1, -1)  # [B, C, T, H, W]
            anchor_camera = None if camera is None else past.last_camera.to(camera.dtype)[:, None].expand(-1, frames, -1)
        else:
            index = anchor_frame_index(layout.chunk_sizes, hidden_states.device)  # [T]
            anchor = hidden_states[:, :, index]
            anchor_camera = None if camera is None else camera[:, index]
        return anchor, anchor_camera

    @staticmethod
    def _start_source(hidden_states: torch.Tensor, camera: torch.Tensor, past: StreamState | None
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The stream's start latent [B, C, 1, H, W] and its camera [B, 1, 20] (model.anchor, "The start"): the
        state's when it holds one, else this run's frame 0 (a clip, or a stream's first chunk)."""
        if past is not None and past.start_latent is not None:
            if past.start_camera is None:
                raise ValueError("the start copy needs the camera of the state's start latent: the stream "
                                 "committed its first chunk without camera_conditions, and this chunk has them")
            return past.start_latent.to(hidden_states.dtype), past.start_camera.to(camera.dtype)[:, None]
        if past is not None and past.last_latent is not None:
            # this chunk's frame 0 is noise, not the start: a state built without one cannot feed the copy
            raise ValueError("the start copy needs the state's start latent (StreamState.start_latent), and this "
                             "state has committed chunks but no start")
        return hidden_states[:, :, :1], camera[:, :1]

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        camera_conditions: torch.Tensor | None = None,
        chunk_plucker: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Bidirectional forward of the whole clip -> velocity [B, C_out, T, H, W] (see the module docstring)."""
        self._check_inputs(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                           camera_conditions, chunk_plucker)
        _, _, frames, height, width = hidden_states.shape
        layout = RunLayout(frames, height, width, (frames,), "bidirectional")
        out, _ = self._run(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                           camera_conditions, chunk_plucker, layout)
        return out

    def forward_chunk_causal(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        camera_conditions: torch.Tensor | None = None,
        chunk_plucker: torch.Tensor | None = None,
        *,
        chunk_sizes: list[int] | tuple[int, ...],
        kv_window_chunks: int | None = None,
        sink: bool = False,
    ) -> torch.Tensor:
        """Chunk-causal forward: full attention inside each chunk of `chunk_sizes`, causal across chunks.

        With `kv_window_chunks` = N the softmax blocks see only the current chunk and the N before it
        (+ chunk 0 when `sink`), the mask a streaming KV cache of that size implies.
        """
        self._check_inputs(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                           camera_conditions, chunk_plucker)
        _, _, frames, height, width = hidden_states.shape
        sizes = tuple(chunk_sizes) if isinstance(chunk_sizes, (list, tuple)) else None
        if not sizes or any(not isinstance(n, int) or isinstance(n, bool) or n <= 0 for n in sizes):
            raise ValueError(f"chunk_sizes must be a non-empty list of positive ints, got {chunk_sizes!r}")
        if sum(sizes) != frames:
            raise ValueError(f"chunk_sizes {list(sizes)} sum to {sum(sizes)}, but hidden_states has T = {frames} frames")
        _check_window(kv_window_chunks, sink)
        layout = RunLayout(frames, height, width, sizes, "chunk_causal", kv_window_chunks, sink)
        out, _ = self._run(hidden_states, timestep, encoder_hidden_states, encoder_attention_mask,
                           camera_conditions, chunk_plucker, layout)
        return out

    def init_stream_state(
        self,
        batch_size: int,
        latent_hw: tuple[int, int],
        *,
        kv_window_chunks: int | None = 2,
        sink: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> StreamState:
        """An empty stream: zero recurrent states and conv contexts, empty KV caches of `kv_window_chunks`
        chunks (None = unbounded, which grows) plus a sink chunk when `sink`."""
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        if (not isinstance(latent_hw, (tuple, list)) or len(latent_hw) != 2
                or any(not isinstance(n, int) or n <= 0 for n in latent_hw)):
            raise ValueError(f"latent_hw must be two positive ints (h, w), got {latent_hw!r}")
        _check_window(kv_window_chunks, sink)
        cfg = self.config
        device = self.device if device is None else torch.device(device)
        dtype = self.dtype if dtype is None else dtype
        h, w = latent_hw
        spatial, heads, dim, hidden = h * w, cfg.num_heads, cfg.head_dim, cfg.hidden_size
        ffn = torch.zeros(batch_size, cfg.t_kernel_size // 2, spatial, hidden, device=device, dtype=dtype)
        layers: list[GDNState | SoftmaxState] = []
        for block in self.blocks:
            if block.is_softmax:
                def cache() -> KVCache:
                    return KVCache.empty(batch_size, heads, dim, capacity=kv_window_chunks, use_sink=sink,
                                         device=device, dtype=dtype)
                layers.append(SoftmaxState(main=cache(), cam=cache(), ffn_context=ffn.clone()))
            else:
                conv = torch.zeros(batch_size, cfg.conv_kernel_size - 1, spatial, hidden, device=device, dtype=dtype)
                state = torch.zeros(batch_size, heads, dim, dim, device=device, dtype=torch.float32)
                layers.append(GDNState(
                    kv=state, z=torch.zeros(batch_size, heads, dim, 1, device=device, dtype=torch.float32),
                    cam_kv=state.clone(), conv_context=conv, cam_conv_context=conv.clone(), ffn_context=ffn.clone(),
                ))
        return StreamState(layers=tuple(layers), frame_index=0, chunk_index=0, latent_hw=(h, w), batch_size=batch_size)

    def _check_state(self, state: object, hidden_states: torch.Tensor) -> StreamState:
        if not isinstance(state, StreamState):
            raise TypeError(f"state must be a StreamState (from init_stream_state), got {type(state).__name__}")
        if len(state.layers) != len(self.blocks):
            raise ValueError(f"state has {len(state.layers)} layers, the model {len(self.blocks)} blocks")
        for i, (layer, block) in enumerate(zip(state.layers, self.blocks)):
            expected = SoftmaxState if block.is_softmax else GDNState
            if not isinstance(layer, expected):
                raise TypeError(f"state.layers[{i}] is a {type(layer).__name__}, block {i} needs a {expected.__name__}")
        batch, _, _, height, width = hidden_states.shape
        if (batch, (height, width)) != (state.batch_size, tuple(state.latent_hw)):
            raise ValueError(f"chunk of batch {batch} and latent size {(height, width)} does not match the state's "
                             f"batch {state.batch_size} and latent_hw {tuple(state.latent_hw)}")
        return state

    def stream_forward(
        self,
        x_chunk: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        camera_conditions: torch.Tensor | None,
        chunk_plucker: torch.Tensor | None,
        state: StreamState,
        *,
        before_copy: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Velocity [B, C_out, Tc, h, w] of one chunk against the past in `state` (read-only); with `before_copy`
        the pair (that velocity, the network's velocity before the copy blends of model.anchor), for a loss that
        trains the network alone while the rollout uses the blended velocity."""
        self._check_inputs(x_chunk, timestep, encoder_hidden_states, encoder_attention_mask, camera_conditions, chunk_plucker)
        state = self._check_state(state, x_chunk)
        _, _, frames, height, width = x_chunk.shape
        layout = RunLayout(frames, height, width, (frames,), "stream")
        out, _ = self._run(x_chunk, timestep, encoder_hidden_states, encoder_attention_mask, camera_conditions,
                           chunk_plucker, layout, frame_offset=state.frame_index, states=state.layers, past=state,
                           before_copy=before_copy)
        return out

    def stream_commit(
        self,
        x_clean_chunk: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        camera_conditions: torch.Tensor | None,
        chunk_plucker: torch.Tensor | None,
        state: StreamState,
        *,
        timestep: torch.Tensor | None = None,
    ) -> StreamState:
        """Run the chunk through every block (t = 0 unless `timestep` [B, 1, Tc] is given) and return the
        state that includes it. The state passed in is not changed."""
        if timestep is None and isinstance(x_clean_chunk, torch.Tensor) and x_clean_chunk.ndim == 5:
            timestep = torch.zeros(x_clean_chunk.shape[0], 1, x_clean_chunk.shape[2], device=x_clean_chunk.device)
        self._check_inputs(x_clean_chunk, timestep, encoder_hidden_states, encoder_attention_mask,
                           camera_conditions, chunk_plucker)
        state = self._check_state(state, x_clean_chunk)
        _, _, frames, height, width = x_clean_chunk.shape
        layout = RunLayout(frames, height, width, (frames,), "stream")
        _, layers = self._run(x_clean_chunk, timestep, encoder_hidden_states, encoder_attention_mask, camera_conditions,
                              chunk_plucker, layout, frame_offset=state.frame_index, states=state.layers,
                              want_state=True, output=False, past=state)
        return state.advanced(layers, frames, x_clean_chunk[:, :, -1:].detach(),
                              None if camera_conditions is None else camera_conditions[:, -1].detach(),
                              x_clean_chunk[:, :, :1].detach(),
                              None if camera_conditions is None else camera_conditions[:, 0].detach())


def anchor_frame_index(chunk_sizes: tuple[int, ...], device: torch.device | None = None) -> torch.Tensor:
    """[T] the frame each frame takes its anchor from: 0 in the first chunk, the last frame of the chunk
    before in every later one."""
    index, start = [], 0
    for c, size in enumerate(chunk_sizes):
        index += [0 if c == 0 else start - 1] * size
        start += size
    return torch.tensor(index, dtype=torch.long, device=device)


def _check_window(kv_window_chunks: int | None, sink: bool) -> None:
    if kv_window_chunks is not None and (not isinstance(kv_window_chunks, int) or isinstance(kv_window_chunks, bool)
                                         or kv_window_chunks < 0):
        raise ValueError(f"kv_window_chunks must be an int >= 0 or None, got {kv_window_chunks!r}")
    if not isinstance(sink, bool):
        raise ValueError(f"sink must be a bool, got {sink!r}")
