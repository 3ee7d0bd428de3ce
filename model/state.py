"""Typed streaming state: what each block carries from one chunk to the next.

    GDNState      kv [B, H, K, V] fp32, z [B, H, K, 1] fp32   forward-scan states of the main branch
                  cam_kv [B, H, K, V] fp32                   forward-scan state of the camera branch
                  conv_context [B, K−1, S, C]                last K−1 PRE-conv main keys
                  cam_conv_context [B, K−1, S, C]            last K−1 PRE-conv camera keys
                  ffn_context [B, (k_t−1)/2, S, C]           last frame(s) of the FFN point-conv output
    KVCache       post-RoPE (main) or post-UCPE (camera) keys and values of the last `capacity`
                  chunks, plus chunk 0 kept apart as a sink when `use_sink`
    SoftmaxState  main KVCache, camera KVCache, ffn_context
    StreamState   one state per block, frame_index (latent frames committed; RoPE positions go on
                  from here), chunk_index (chunks committed)

States are immutable: layers take a state and return a new one; the model's `stream_forward`
never changes the state passed in. `clone()` deep-copies (a snapshot for rewind), `to()` moves.
A layer handed the wrong state type raises TypeError.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


def _nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass(frozen=True)
class GDNState:
    """State of a Gated-DeltaNet block (see the module docstring for shapes)."""

    kv: torch.Tensor
    z: torch.Tensor
    cam_kv: torch.Tensor
    conv_context: torch.Tensor
    cam_conv_context: torch.Tensor
    ffn_context: torch.Tensor

    def _map(self, fn) -> GDNState:
        return GDNState(**{f.name: fn(getattr(self, f.name)) for f in dataclasses.fields(self)})

    def nbytes(self) -> int:
        return _nbytes(*(getattr(self, f.name) for f in dataclasses.fields(self)))


@dataclass(frozen=True)
class KVCache:
    """Keys/values [B, H, n, D] of the last chunks (at most `capacity` of them; None = unbounded).

    `chunk_tokens` lists the token count of each cached chunk, oldest first. With `use_sink`, the
    first chunk ever appended is kept in `sink_k` / `sink_v` and is not part of the window.
    """

    k: torch.Tensor  # [B, H, n, D]
    v: torch.Tensor  # [B, H, n, D]
    chunk_tokens: tuple[int, ...]
    capacity: int | None
    use_sink: bool
    sink_k: torch.Tensor | None = None  # [B, H, n_sink, D]
    sink_v: torch.Tensor | None = None

    @classmethod
    def empty(cls, batch: int, heads: int, head_dim: int, *, capacity: int | None, use_sink: bool,
              device: torch.device | str | None, dtype: torch.dtype) -> KVCache:
        if capacity is not None and (not isinstance(capacity, int) or capacity < 0):
            raise ValueError(f"KV cache capacity must be an int >= 0 or None, got {capacity!r}")
        zeros = torch.zeros(batch, heads, 0, head_dim, device=device, dtype=dtype)
        return cls(k=zeros, v=zeros.clone(), chunk_tokens=(), capacity=capacity, use_sink=use_sink)

    def keys_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything a new chunk may attend to, sink first: ([B, H, n_total, D], [B, H, n_total, D])."""
        if self.sink_k is None:
            return self.k, self.v
        return torch.cat((self.sink_k, self.k), dim=2), torch.cat((self.sink_v, self.v), dim=2)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> KVCache:
        """A new cache with chunk (k, v) [B, H, n, D] added and the window trimmed to `capacity`."""
        if self.use_sink and self.sink_k is None:
            return dataclasses.replace(self, sink_k=k, sink_v=v)
        tokens = self.chunk_tokens + (k.shape[2],)
        new_k = torch.cat((self.k, k), dim=2)
        new_v = torch.cat((self.v, v), dim=2)
        if self.capacity is not None and len(tokens) > self.capacity:
            dropped = sum(tokens[: len(tokens) - self.capacity])
            tokens = tokens[len(tokens) - self.capacity:]
            new_k, new_v = new_k[:, :, dropped:].clone(), new_v[:, :, dropped:].clone()
        return dataclasses.replace(self, k=new_k, v=new_v, chunk_tokens=tokens)

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_tokens)

    def _map(self, fn) -> KVCache:
        return dataclasses.replace(
            self, k=fn(self.k), v=fn(self.v),
            sink_k=None if self.sink_k is None else fn(self.sink_k),
            sink_v=None if self.sink_v is None else fn(self.sink_v),
        )

    def nbytes(self) -> int:
        return _nbytes(self.k, self.v, self.sink_k, self.sink_v)


@dataclass(frozen=True)
class SoftmaxState:
    """State of a softmax block: main-branch and camera-branch KV caches and the FFN context."""

    main: KVCache
    cam: KVCache
    ffn_context: torch.Tensor

    def _map(self, fn) -> SoftmaxState:
        return SoftmaxState(main=self.main._map(fn), cam=self.cam._map(fn), ffn_context=fn(self.ffn_context))

    def nbytes(self) -> int:
        return self.main.nbytes() + self.cam.nbytes() + _nbytes(self.ffn_context)


@dataclass(frozen=True)
class StreamState:
    """The whole model's streaming state (see the module docstring)."""

    layers: tuple[GDNState | SoftmaxState, ...]
    frame_index: int
    chunk_index: int
    latent_hw: tuple[int, int]
    batch_size: int

    def __post_init__(self) -> None:
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, (GDNState, SoftmaxState)):
                raise TypeError(f"StreamState.layers[{i}] must be a GDNState or SoftmaxState, got {type(layer).__name__}")

    def nbytes(self) -> int:
        """Total bytes of every tensor held; constant once the KV windows are full."""
        return sum(layer.nbytes() for layer in self.layers)

    def clone(self) -> StreamState:
        """Deep copy: a snapshot that later chunks cannot alter."""
        return dataclasses.replace(self, layers=tuple(layer._map(lambda t: t.clone()) for layer in self.layers))

    def detach(self) -> StreamState:
        """The same state cut from the autograd graph (truncated backpropagation through a long stream)."""
        return dataclasses.replace(self, layers=tuple(layer._map(lambda t: t.detach()) for layer in self.layers))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> StreamState:
        """Move to `device`; `dtype` converts the KV caches and conv contexts (GDN states stay fp32)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype)

        layers = []
        for layer in self.layers:
            if isinstance(layer, GDNState):
                layers.append(GDNState(
                    kv=layer.kv.to(device), z=layer.z.to(device), cam_kv=layer.cam_kv.to(device),
                    conv_context=move(layer.conv_context), cam_conv_context=move(layer.cam_conv_context),
                    ffn_context=move(layer.ffn_context),
                ))
            else:
                layers.append(layer._map(move))
        return dataclasses.replace(self, layers=tuple(layers))
