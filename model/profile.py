"""`StreamProfile`: every setting that decides what a streamed model sees, named in one place.

A distilled streaming student only works on the distribution it was trained on, so the settings it
is streamed with are part of the model, not of the app. Two kinds of profile exist:

- `OFFICIAL_STREAMING`, what the official code (NVlabs/Sana @0d2318a; the same at 3f7bc74 "Release
  SANA-WM Streaming") runs the released `SANA-WM_streaming` student with (sana_wm.md, "Streaming as
  the official code runs it"):

      KV window      num_cached_blocks 2 with sink_token true, where the sink counts: chunk k attends
                     to chunks {0, k−1} and itself (`get_kv_cache_window`: s = max(k − 2 + 1, 0), window
                     [0] + range(s, k); self_forcing_flow_euler_sampler.py). In roam's terms the sink
                     is kept apart plus 1 recent chunk: `official_kv_window(2, True) == (1, True)`.
      camera K conv  no cross-chunk state: the camera branch's key conv stays inside each chunk
                     (diffusion/model/ops/fused_streaming.py, "cam K conv has no cross-chunk state").
      timesteps      built in fp32 from the σ list, and the Euler updates in fp32; in bf16 the
                     timesteps 889 and 727 would become 888 and 728 before the model truncates them.
      first frame    the decoded start frame is dropped (`drop_first_pixel=True`).
      prompt         required: the user's prompt through Gemma-2 with the instruction prefix conditions
                     every chunk; the streaming config has class_dropout_prob 0.0, so the student never
                     saw the null caption.
      refiner        on: the chunk-causal LTX-2 refiner (`RefinerSettings`) between stage 1 and the decoder.

- the embedded tiny model's, `embedded_profile(...)`: the settings its `roam_tiny.json` records it was
  trained with (KV window 2 recent chunks + the sink, camera conv across chunks, timesteps in the model
  dtype, every decoded frame shown, the null caption, no refiner). Its output does not change.

`StreamProfile.describe()` is what the app prints at start-up.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from model.schedulers import check_sampler_sigmas, distilled_sigmas

# diffusers.pipelines.sana_wm.refiner.STAGE_2_DISTILLED_SIGMA_VALUES, the official 3-step refiner list.
REFINER_SIGMAS: tuple[float, ...] = (0.909375, 0.725, 0.421875, 0.0)
# Gemma-3 tokens of a refiner prompt (the official `text_max_sequence_length`).
REFINER_TEXT_TOKENS = 1024


def official_kv_window(num_cached_blocks: int, sink_token: bool) -> tuple[int, bool]:
    """The official (`num_cached_blocks`, `sink_token`) as roam's (kv_window_chunks, sink).

    The official window counts the sink among its `num_cached_blocks`; roam keeps the sink apart and
    counts only the recent chunks, so 2 with a sink is 1 recent chunk + the sink.
    """
    if isinstance(num_cached_blocks, bool) or not isinstance(num_cached_blocks, int) or num_cached_blocks < 1:
        raise ValueError(f"num_cached_blocks must be an int >= 1, got {num_cached_blocks!r}")
    if not isinstance(sink_token, bool):
        raise ValueError(f"sink_token must be a bool, got {sink_token!r}")
    if sink_token:
        if num_cached_blocks < 2:
            raise ValueError("num_cached_blocks must be >= 2 with a sink token (the sink counts as one)")
        return num_cached_blocks - 1, True
    return num_cached_blocks, False


def attended_chunks(chunk: int, kv_window_chunks: int | None, sink: bool) -> tuple[int, ...]:
    """The chunks whose keys chunk `chunk`'s queries see under roam's window rule, in order: the sink
    chunk 0 (when `sink`), the last `kv_window_chunks` chunks before it (all when None), itself."""
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 0:
        raise ValueError(f"chunk must be an int >= 0, got {chunk!r}")
    first = 0 if kv_window_chunks is None else max(0, chunk - kv_window_chunks)
    seen = set(range(first, chunk + 1))
    if sink:
        seen.add(0)
    return tuple(sorted(seen))


@dataclass(frozen=True)
class RefinerSettings:
    """The chunk-causal LTX-2 refiner as the official streaming code runs it
    (diffusion/refiner/diffusers_ltx2_refiner.py @0d2318a; diffusers' `SanaWMLTX2Refiner` defaults).

    A block of `block_latents` stage-1 latents is re-noised to (1 − σ₀)·z + σ₀·ε with one ε per block,
    then takes len(sigmas) − 1 Euler steps while attending to a window of `kv_max_frames` latent frames:
    `sink_frames` (the start image's latent, never refined) + the `kv_max_frames − sink_frames` most
    recent refined frames + the block itself.
    """

    sigmas: tuple[float, ...] = REFINER_SIGMAS
    block_latents: int = 3
    kv_max_frames: int = 11
    sink_frames: int = 1
    seed: int = 42
    text_tokens: int = REFINER_TEXT_TOKENS

    def __post_init__(self) -> None:
        sigmas = tuple(float(s) for s in self.sigmas)
        if len(sigmas) < 2 or sigmas[-1] != 0.0 or any(not 0.0 <= s <= 1.0 for s in sigmas) \
                or any(a <= b for a, b in zip(sigmas, sigmas[1:])):
            raise ValueError(f"refiner sigmas must decrease strictly within [0, 1] and end at 0, got {list(self.sigmas)}")
        object.__setattr__(self, "sigmas", sigmas)
        for name in ("block_latents", "kv_max_frames", "sink_frames", "text_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"RefinerSettings.{name} must be an int >= 1, got {value!r}")
        if self.kv_max_frames <= self.sink_frames:
            raise ValueError(f"kv_max_frames {self.kv_max_frames} must exceed sink_frames {self.sink_frames}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise ValueError(f"RefinerSettings.seed must be an int >= 0, got {self.seed!r}")

    @property
    def recent_frames(self) -> int:
        """Refined latent frames kept in the window besides the sink."""
        return self.kv_max_frames - self.sink_frames


@dataclass(frozen=True)
class StreamProfile:
    """How one model is streamed (see the module docstring). Validated on creation."""

    name: str
    chunk_latents: int
    sigmas: tuple[float, ...]
    # Recent chunks in the softmax KV window; the sink (chunk 0) is kept apart and not counted.
    kv_window_chunks: int
    sink: bool
    # The camera branch's K short conv reads the previous chunk's keys (True) or stays inside the chunk.
    cam_conv_cross_chunk: bool
    # Timesteps and Euler updates in fp32 (True) or in the model's dtype.
    fp32_sampling: bool
    # The first decoded frame (the start image's reconstruction) is not shown.
    drop_first_frame: bool
    # Every chunk is conditioned on a prompt through the text encoder; never the null caption.
    prompt_required: bool
    refiner: RefinerSettings | None = None
    # Each chunk starts at σ₀ < 1 from the newest committed latent (`model.schedulers.warm_start`).
    warm_start: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"StreamProfile.name must be a non-empty string, got {self.name!r}")
        if isinstance(self.chunk_latents, bool) or not isinstance(self.chunk_latents, int) or self.chunk_latents < 1:
            raise ValueError(f"StreamProfile.chunk_latents must be an int >= 1, got {self.chunk_latents!r}")
        if isinstance(self.kv_window_chunks, bool) or not isinstance(self.kv_window_chunks, int) or self.kv_window_chunks < 1:
            raise ValueError(f"StreamProfile.kv_window_chunks must be an int >= 1, got {self.kv_window_chunks!r}")
        for name in ("sink", "cam_conv_cross_chunk", "fp32_sampling", "drop_first_frame", "prompt_required", "warm_start"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"StreamProfile.{name} must be a bool, got {getattr(self, name)!r}")
        object.__setattr__(self, "sigmas", check_sampler_sigmas(self.sigmas, f"StreamProfile {self.name!r}"))
        if self.refiner is not None and not isinstance(self.refiner, RefinerSettings):
            raise ValueError(f"StreamProfile.refiner must be RefinerSettings or None, got {type(self.refiner).__name__}")

    def replace(self, **changes: Any) -> StreamProfile:
        return dataclasses.replace(self, **changes)

    def attended_chunks(self, chunk: int) -> tuple[int, ...]:
        """The chunks chunk `chunk` attends to under this profile's KV window (`attended_chunks`)."""
        return attended_chunks(chunk, self.kv_window_chunks, self.sink)

    def describe(self) -> str:
        """One line per setting, for the start-up log."""
        window = f"{'the sink (chunk 0) + ' if self.sink else ''}{self.kv_window_chunks} recent chunk" \
                 f"{'s' if self.kv_window_chunks != 1 else ''} (chunk 6 attends to {list(self.attended_chunks(6))})"
        lines = [
            f"stream profile: {self.name}",
            f"  chunks: {self.chunk_latents} latents; sampler σ {list(self.sigmas)}"
            + (" from the last committed latent (warm start)" if self.warm_start else " from pure noise"),
            f"  KV window: {window}",
            f"  camera key conv: {'across chunks' if self.cam_conv_cross_chunk else 'within each chunk'}",
            f"  timesteps and Euler updates: {'fp32' if self.fp32_sampling else 'the model dtype'}",
            f"  first decoded frame: {'dropped' if self.drop_first_frame else 'shown'}",
            f"  prompt: {'required (text encoder)' if self.prompt_required else 'the null caption'}",
        ]
        if self.refiner is None:
            lines.append("  refiner: off")
        else:
            r = self.refiner
            lines.append(f"  refiner: re-noise σ {list(r.sigmas)}, blocks of {r.block_latents} latents, KV window "
                         f"{r.kv_max_frames} frames ({r.sink_frames} sink + {r.recent_frames} recent), seed {r.seed}")
        return "\n".join(lines)


OFFICIAL_NUM_CACHED_BLOCKS = 2
_OFFICIAL_WINDOW, _OFFICIAL_SINK = official_kv_window(OFFICIAL_NUM_CACHED_BLOCKS, True)

OFFICIAL_STREAMING = StreamProfile(
    name="official SANA-WM streaming (NVlabs/Sana @0d2318a)",
    chunk_latents=3,
    sigmas=distilled_sigmas(),
    kv_window_chunks=_OFFICIAL_WINDOW,
    sink=_OFFICIAL_SINK,
    cam_conv_cross_chunk=False,
    fp32_sampling=True,
    drop_first_frame=True,
    prompt_required=True,
    refiner=RefinerSettings(),
)


def embedded_profile(*, chunk_latents: int, sigmas: tuple[float, ...], kv_window_chunks: int = 2, sink: bool = True,
                     cam_conv_cross_chunk: bool = True, name: str = "roam-tiny (as trained)",
                     warm_start: bool = False) -> StreamProfile:
    """The embedded model's profile: what its `roam_tiny.json` records (its `generator` and `model` sections)."""
    return StreamProfile(name=name, chunk_latents=chunk_latents, sigmas=sigmas, kv_window_chunks=kv_window_chunks,
                         sink=sink, cam_conv_cross_chunk=cam_conv_cross_chunk, fp32_sampling=False,
                         drop_first_frame=False, prompt_required=False, refiner=None, warm_start=warm_start)
