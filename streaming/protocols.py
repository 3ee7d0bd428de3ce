"""What the chunk generator needs of its collaborators, as `Protocol`s.

`model.WorldModel`, the VAEs (`model.vae.tiny_vae.TinyVAE`, `model.vae.ltx2.LTX2VideoVAE`) and their
stream decoders implement these structurally, and so do the call-recording fakes of
`tests/streaming/fakes.py`; `tests/streaming/test_protocols.py` checks both. They are
`runtime_checkable`, so the generator can refuse a wrong collaborator at construction (TypeError
naming what is missing) instead of failing inside a chunk.

Shapes (B rows, C latent channels, Tc latent frames of the chunk, h × w latent grid, H × W pixels):

    StreamModel.stream_forward(x [B, C, Tc, h, w], timestep [B, 1, Tc], text [B, L, C_text],
        text_mask [B, L] | None, camera [B, Tc, 20] | None, plucker [B, 6s, Tc, h, w] | None, state) -> v [B, C, Tc, h, w]
    StreamModel.stream_commit(x_clean, text, text_mask, camera, plucker, state) -> the next state
    StreamVAE.encode(video [B, 3, F, H, W] in [-1, 1]) -> latents [B, C, T, h, w]
    StreamDecoder.decode_chunk(latents [B, C, Tc, h, w]) -> frames [B, 3, F_c, H, W] in [-1, 1]
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class StreamModel(Protocol):
    """The stream API of a chunk-causal world model (`model.transformer.WorldModel`)."""

    def init_stream_state(self, batch_size: int, latent_hw: tuple[int, int], *, kv_window_chunks: int | None,
                          sink: bool) -> Any: ...

    def null_text(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def stream_forward(self, x_chunk: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                       encoder_attention_mask: torch.Tensor | None, camera_conditions: torch.Tensor | None,
                       chunk_plucker: torch.Tensor | None, state: Any) -> torch.Tensor: ...

    def stream_commit(self, x_clean_chunk: torch.Tensor, encoder_hidden_states: torch.Tensor,
                      encoder_attention_mask: torch.Tensor | None, camera_conditions: torch.Tensor | None,
                      chunk_plucker: torch.Tensor | None, state: Any) -> Any: ...


@runtime_checkable
class StreamDecoder(Protocol):
    """A VAE decoder with its own causal cache: chunks decode in order, `clone` copies the cache
    (not the weights) for a rewind snapshot."""

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor: ...

    def clone(self) -> StreamDecoder: ...


@runtime_checkable
class StackableDecoder(StreamDecoder, Protocol):
    """A stream decoder whose batch-1 instances stack into one batched decoder (cross-session
    batching, `streaming.batched`): decoders with equal `stack_key()` stack; `unstack()` of the
    stacked one after a `decode_chunk` gives each row's decoder, moved on by that chunk."""

    def stack_key(self) -> tuple: ...

    @staticmethod
    def stack(decoders: list[Any]) -> StackableDecoder: ...

    def unstack(self) -> list[StackableDecoder]: ...


@runtime_checkable
class StreamVAE(Protocol):
    """A video autoencoder with a streaming decoder."""

    @property
    def temporal_stride(self) -> int: ...

    @property
    def spatial_stride(self) -> int: ...

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    def stream_decoder(self, batch_size: int) -> StreamDecoder: ...


def check_collaborators(model: object, vae: object) -> None:
    """TypeError naming the missing methods when `model` or `vae` does not implement its protocol."""
    for obj, protocol, names in ((model, StreamModel, _MODEL_METHODS), (vae, StreamVAE, _VAE_MEMBERS)):
        if not isinstance(obj, protocol):
            missing = [name for name in names if not hasattr(obj, name)]
            raise TypeError(f"{type(obj).__name__} is not a {protocol.__name__}: missing {missing}")


_MODEL_METHODS = ("init_stream_state", "null_text", "stream_forward", "stream_commit")
_VAE_MEMBERS = ("temporal_stride", "spatial_stride", "encode", "stream_decoder")
