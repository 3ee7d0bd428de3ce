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
                  from here), chunk_index (chunks committed); both are one int when every row is at
                  the same place, or a tuple with one int per row for a stack of different streams;
                  last_latent [B, C, 1, h, w], the newest committed latent frame (None before the first
                  commit): the warm-start sampler's anchor (`model.schedulers.warm_start`) and the
                  anchor input's (`model.anchor`); last_camera [B, 20], that frame's camera_conditions
                  row (None before the first commit or when it ran without cameras);
                  start_latent [B, C, 1, h, w] and start_camera [B, 20], the stream's first committed
                  latent frame (the start image on a walk) and its camera row, kept from the first commit
                  on: the start copy's source (`model.anchor`, "The start")

Stacking (cross-session batching): `StreamState.stack(states)` concatenates single streams along
the batch dim and `unstack()` splits them back; the rows may differ in their recurrent states,
contexts, cached keys and positions (frame_index), but not in the layout of their KV caches (the
same cached chunk sizes and sink): `layout_key()` names that layout, and rows stack only when their
keys are equal, so no row ever attends to another row's padding.

States are immutable: layers take a state and return a new one; the model's `stream_forward`
never changes the state passed in. `clone()` deep-copies (a snapshot for rewind), `to()` moves.
A layer handed the wrong state type raises TypeError.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch


def _per_row(index: int | tuple[int, ...], batch_size: int) -> tuple[int, ...]:
    return index if isinstance(index, tuple) else (index,) * batch_size


def _optional(t: torch.Tensor | None, fn) -> torch.Tensor | None:
    return None if t is None else fn(t)


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

    @staticmethod
    def stack(states: list[GDNState]) -> GDNState:
        return GDNState(**{f.name: torch.cat([getattr(x, f.name) for x in states]) for f in dataclasses.fields(GDNState)})

    def row(self, i: int) -> GDNState:
        return self._map(lambda t: t[i:i + 1])

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

    def layout_key(self) -> tuple:
        """What must agree for caches to stack: cached chunk sizes, window, and the sink's presence and size."""
        return (self.chunk_tokens, self.capacity, self.use_sink, None if self.sink_k is None else self.sink_k.shape[2])

    @staticmethod
    def stack(caches: list[KVCache]) -> KVCache:
        keys = {c.layout_key() for c in caches}
        if len(keys) != 1:
            raise ValueError(f"KV caches of different layouts cannot stack: {sorted(map(str, keys))}")
        first = caches[0]

        def cat(name: str) -> torch.Tensor | None:
            parts = [getattr(c, name) for c in caches]
            return None if parts[0] is None else torch.cat(parts)

        return dataclasses.replace(first, k=cat("k"), v=cat("v"), sink_k=cat("sink_k"), sink_v=cat("sink_v"))

    def row(self, i: int) -> KVCache:
        return self._map(lambda t: t[i:i + 1])

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

    @staticmethod
    def stack(states: list[SoftmaxState]) -> SoftmaxState:
        return SoftmaxState(main=KVCache.stack([x.main for x in states]), cam=KVCache.stack([x.cam for x in states]),
                            ffn_context=torch.cat([x.ffn_context for x in states]))

    def row(self, i: int) -> SoftmaxState:
        return SoftmaxState(main=self.main.row(i), cam=self.cam.row(i), ffn_context=self.ffn_context[i:i + 1])

    def nbytes(self) -> int:
        return self.main.nbytes() + self.cam.nbytes() + _nbytes(self.ffn_context)


# StreamState's optional tensors besides the layers: the newest and the first committed latent frame, and their cameras
ANCHOR_FIELDS = ("last_latent", "last_camera", "start_latent", "start_camera")


@dataclass(frozen=True)
class StreamState:
    """The whole model's streaming state (see the module docstring)."""

    layers: tuple[GDNState | SoftmaxState, ...]
    frame_index: int | tuple[int, ...]
    chunk_index: int | tuple[int, ...]
    latent_hw: tuple[int, int]
    batch_size: int
    last_latent: torch.Tensor | None = None  # [B, C, 1, h, w]
    last_camera: torch.Tensor | None = None  # [B, 20]
    start_latent: torch.Tensor | None = None  # [B, C, 1, h, w]
    start_camera: torch.Tensor | None = None  # [B, 20]

    def __post_init__(self) -> None:
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, (GDNState, SoftmaxState)):
                raise TypeError(f"StreamState.layers[{i}] must be a GDNState or SoftmaxState, got {type(layer).__name__}")
        for name in ("frame_index", "chunk_index"):
            value = getattr(self, name)
            if isinstance(value, tuple) and len(value) != self.batch_size:
                raise ValueError(f"StreamState.{name} has {len(value)} rows, the batch {self.batch_size}")
        for name in ("last_latent", "start_latent"):
            latent = getattr(self, name)
            if latent is not None and (latent.ndim != 5 or latent.shape[0] != self.batch_size or latent.shape[2] != 1):
                raise ValueError(f"StreamState.{name} must be [{self.batch_size}, C, 1, h, w], got {tuple(latent.shape)}")
        for name in ("last_camera", "start_camera"):
            camera = getattr(self, name)
            if camera is not None and tuple(camera.shape) != (self.batch_size, 20):
                raise ValueError(f"StreamState.{name} must be [{self.batch_size}, 20], got {tuple(camera.shape)}")

    def row_frame_index(self) -> tuple[int, ...]:
        """The RoPE start of each row: [batch_size] ints."""
        return _per_row(self.frame_index, self.batch_size)

    def advanced(self, layers: tuple[GDNState | SoftmaxState, ...], frames: int,
                 last_latent: torch.Tensor | None = None, last_camera: torch.Tensor | None = None,
                 first_latent: torch.Tensor | None = None, first_camera: torch.Tensor | None = None) -> StreamState:
        """The state after a committed chunk of `frames` latent frames (every row moves on by as many);
        `last_latent` [B, C, 1, h, w] is that chunk's newest latent frame, `last_camera` [B, 20] its camera row,
        `first_latent` / `first_camera` its first frame's, which become the start if the stream has none yet."""
        def add(index: int | tuple[int, ...], n: int) -> int | tuple[int, ...]:
            return tuple(i + n for i in index) if isinstance(index, tuple) else index + n

        first = self.start_latent is None
        return dataclasses.replace(self, layers=layers, frame_index=add(self.frame_index, frames),
                                   chunk_index=add(self.chunk_index, 1), last_latent=last_latent,
                                   last_camera=last_camera,
                                   start_latent=first_latent if first else self.start_latent,
                                   start_camera=first_camera if first else self.start_camera)

    def layout_key(self) -> tuple:
        """Equal for states whose rows can be stacked (`stack`): latent size, which of the anchor tensors
        (`ANCHOR_FIELDS`) are held, and every KV cache's layout."""
        return (self.latent_hw, tuple(getattr(self, name) is None for name in ANCHOR_FIELDS), tuple(
            (layer.main.layout_key(), layer.cam.layout_key()) if isinstance(layer, SoftmaxState) else None
            for layer in self.layers
        ))

    @staticmethod
    def stack(states: list[StreamState]) -> StreamState:
        """One state whose rows are `states` in order (see the module docstring); ValueError if their
        layouts differ (`layout_key`). Positions become one int per row unless all rows agree."""
        if not states:
            raise ValueError("StreamState.stack needs at least one state")
        keys = {s.layout_key() for s in states}
        if len(keys) != 1:
            raise ValueError(f"states of different layouts cannot stack ({len(keys)} layouts among {len(states)} states)")
        if len({len(s.layers) for s in states}) != 1:
            raise ValueError("states with different numbers of layers cannot stack")
        layers = tuple(type(group[0]).stack(list(group)) for group in zip(*(s.layers for s in states)))
        frames = sum((_per_row(s.frame_index, s.batch_size) for s in states), ())
        chunks = sum((_per_row(s.chunk_index, s.batch_size) for s in states), ())
        # each anchor tensor is None in all states or in none: layout_key tells them apart
        anchors = {name: None if getattr(states[0], name) is None else torch.cat([getattr(s, name) for s in states])
                   for name in ANCHOR_FIELDS}
        return StreamState(layers=layers, frame_index=frames[0] if len(set(frames)) == 1 else frames,
                           chunk_index=chunks[0] if len(set(chunks)) == 1 else chunks,
                           latent_hw=states[0].latent_hw, batch_size=len(frames), **anchors)

    def unstack(self) -> list[StreamState]:
        """The rows as single streams (views of this state's tensors; states are never changed in place)."""
        frames = self.row_frame_index()
        chunks = _per_row(self.chunk_index, self.batch_size)
        return [StreamState(layers=tuple(layer.row(i) for layer in self.layers), frame_index=frames[i], chunk_index=chunks[i],
                            latent_hw=self.latent_hw, batch_size=1, **self._anchors(lambda t: t[i:i + 1]))
                for i in range(self.batch_size)]

    def _anchors(self, fn) -> dict[str, torch.Tensor | None]:
        """`fn` applied to every anchor tensor held (`ANCHOR_FIELDS`), by field name."""
        return {name: _optional(getattr(self, name), fn) for name in ANCHOR_FIELDS}

    def nbytes(self) -> int:
        """Total bytes of every tensor held; constant once the KV windows are full."""
        return sum(layer.nbytes() for layer in self.layers) + _nbytes(*(getattr(self, name) for name in ANCHOR_FIELDS))

    def clone(self) -> StreamState:
        """Deep copy: a snapshot that later chunks cannot alter."""
        return dataclasses.replace(self, layers=tuple(layer._map(lambda t: t.clone()) for layer in self.layers),
                                   **self._anchors(torch.Tensor.clone))

    def detach(self) -> StreamState:
        """The same state cut from the autograd graph (truncated backpropagation through a long stream)."""
        return dataclasses.replace(self, layers=tuple(layer._map(lambda t: t.detach()) for layer in self.layers),
                                   **self._anchors(torch.Tensor.detach))

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
        # The anchors and their cameras keep their dtype: sampler and camera input (fp32 under fp32_sampling), not caches.
        return dataclasses.replace(self, layers=tuple(layers), **self._anchors(lambda t: t.to(device)))
