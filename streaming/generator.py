"""The chunk generator: one live walk as a sequence of few-step denoised, committed, decoded chunks.

Chunk layout (latent frames; temporal stride s, `chunk_latents` = Tc):
- chunk 0 = the clean start-image latent + Tc noisy latents, denoised jointly; the image latent's
  timestep is forced to 0 and its value re-imposed after every Euler step. It decodes to
  1 + s·Tc raw frames (the start image is frame 0).
- chunk i > 0 = Tc noisy latents, decoding to s·Tc raw frames.

One `step` is: camera conditioning for the chunk's raw frames, K Euler steps over the distilled σ
list against the read-only `StreamState` (x_σ = (1−σ)x₀ + σε, v = ε − x₀, x ← x + (σ' − σ)·v, the
model sees timestep σ·1000 per latent frame), one commit pass at t = 0 on the clean chunk that
returns the next state and the VAE's own causal stream decoder (side by side on a CPU with a core to
spare, `streaming.overlap`). Everything random comes from
one seeded `torch.Generator`, so a walk is reproducible, and `snapshot()`/`restore()` capture all of
it (state, decoder cache, refiner state, RNG, counters) for rewind.

What the model is run with follows its `model.profile.StreamProfile` (the app copies it into
`GeneratorConfig`); the defaults are the embedded model's and change nothing for it:
- `fp32_sampling`: noise, timesteps and Euler updates in fp32 whatever the model's dtype (the official
  streaming sampler); off, they are in the model's dtype.
- `drop_first_frame`: the first decoded frame of a walk (the start image's reconstruction) is not
  returned, so chunk 0 yields s·Tc frames (the official `drop_first_pixel=True`). Poses are still
  needed for every raw frame: `frames_for_next_chunk()` counts those, `frames_shown_for_next_chunk()` the frames returned.
- `prompt`: a callable giving the walk's `model.prompts.EncodedPrompt`, called once per `start` (on the
  worker thread); without one, the DiT's null caption conditions every chunk.
- `warm_start` (the embedded model's json says so): each chunk starts at σ₀ = sigmas[0] < 1 from the
  newest committed latent (`StreamState.last_latent`; the image latent on chunk 0) noised to σ₀
  (`model.schedulers.warm_start`), not from pure noise, so what stays in view keeps its detail.
- `refiner`: a `model.refiner.StreamRefiner`; each chunk's new latents (never the image latent, the
  refiner's sink) are refined between the commit and the decoder, one refiner block per chunk.
"""
from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from model.release import check_sampler_sigmas
from model.schedulers import distilled_sigmas, euler_chunk, warm_start
from streaming.overlap import overlaps_phases, run_beside
from streaming.protocols import StreamDecoder, StreamModel, StreamVAE, check_collaborators

DISTILLED_SIGMAS: tuple[float, ...] = distilled_sigmas()  # the official 4-step list (1, 0.96, 0.889, 0.727, 0)


@dataclass(frozen=True)
class GeneratorConfig:
    """How the generator lays out and denoises chunks."""

    chunk_latents: int = 2
    sigmas: tuple[float, ...] = DISTILLED_SIGMAS
    kv_window_chunks: int = 2
    sink: bool = True
    seed: int = 0
    fp32_sampling: bool = False
    drop_first_frame: bool = False
    warm_start: bool = False

    def __post_init__(self) -> None:
        if self.chunk_latents < 1:
            raise ValueError(f"chunk_latents must be >= 1, got {self.chunk_latents}")
        if self.kv_window_chunks < 1:
            raise ValueError(f"kv_window_chunks must be >= 1, got {self.kv_window_chunks}")
        object.__setattr__(self, "sigmas", check_sampler_sigmas(self.sigmas, "GeneratorConfig"))


@dataclass(frozen=True)
class ChunkTimings:
    """Wall-clock milliseconds of one chunk's phases."""

    denoise_ms: float
    commit_ms: float
    decode_ms: float
    refine_ms: float = 0.0
    overlapped: bool = False  # the commit ran beside the refine and decode (`streaming.overlap`)

    @property
    def total_ms(self) -> float:
        after = max(self.commit_ms, self.refine_ms + self.decode_ms) if self.overlapped else \
            self.commit_ms + self.refine_ms + self.decode_ms
        return self.denoise_ms + after


@dataclass(frozen=True)
class ChunkInputs:
    """One chunk laid out by `ChunkGenerator.begin_chunk` (batch 1; Tc' = Tc + 1 on a walk's first chunk).

    x [1, C, Tc', h, w] is the noise in the sampling dtype, with the image latent as frame 0 on a first
    chunk; camera [1, Tc', 20]; plucker [1, 6s, Tc', h, w]; image_latent [1, C, 1, h, w] on a first chunk
    (pinned by the Euler steps), else None; `frames` raw frames decode from it; `latent_end` is the
    latent index after it.
    """

    frames: int
    first: bool
    latent_end: int
    x: torch.Tensor
    camera: torch.Tensor
    plucker: torch.Tensor
    image_latent: torch.Tensor | None


@dataclass
class GeneratorSnapshot:
    """Everything `restore` needs to continue a walk exactly from a past chunk boundary."""

    state: Any  # model.state.StreamState (or a fake's state)
    decoder: StreamDecoder
    conditioner: Any  # controls.camera.ChunkCameraConditioner
    rng_state: torch.Tensor
    chunk_index: int
    latent_index: int
    frame_index: int
    # The refiner's `RefinerState` (immutable: kept by reference), None without a refiner.
    refiner: Any = None


def _default_conditioner_factory(first_world_T_cam: np.ndarray, intrinsics: np.ndarray, target_size: tuple[int, int], vae_stride: tuple[int, int, int]):
    from controls.camera import ChunkCameraConditioner

    return ChunkCameraConditioner(first_world_T_cam, intrinsics, target_size, vae_stride)


def image_to_video_tensor(image: np.ndarray) -> torch.Tensor:
    """uint8 [H, W, 3] -> float [1, 3, 1, H, W] in [-1, 1]."""
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float()  # [3, H, W]
    return (t / 127.5 - 1.0)[None, :, None]  # [1, 3, 1, H, W]


def video_tensor_to_frames(video: torch.Tensor) -> np.ndarray:
    """float [1, 3, F, H, W] in [-1, 1] -> uint8 [F, H, W, 3]."""
    v = ((video[0].float().clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8)  # [3, F, H, W]
    return v.permute(1, 2, 3, 0).cpu().numpy()  # [F, H, W, 3]


class ChunkGenerator:
    """Generates one walk chunk by chunk. Not thread-safe: one worker thread drives it.

    Args:
        model: a `StreamModel` (`model.WorldModel`).
        vae: a `StreamVAE` (encode, stream_decoder, temporal_stride, spatial_stride).
        config: chunk layout, σ list, KV window and seed.
        intrinsics: (fx, fy, cx, cy) in pixels at the frame size.
        device: where the model runs; frames come back to the CPU once per chunk.
        conditioner_factory: builds the camera conditioner; defaults to
            `controls.camera.ChunkCameraConditioner`.
        prompt: returns the walk's `model.prompts.EncodedPrompt` (None: the null caption); see the module docstring.
        refiner: a `model.refiner.StreamRefiner` between the commit and the decoder (None: decode stage 1).
    """

    def __init__(
        self,
        model: StreamModel,
        vae: StreamVAE,
        config: GeneratorConfig,
        intrinsics: tuple[float, float, float, float],
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        conditioner_factory: Callable[..., Any] | None = None,
        *,
        prompt: Callable[[], Any] | None = None,
        refiner: Any = None,
    ):
        if len(intrinsics) != 4 or not all(np.isfinite(intrinsics)) or min(intrinsics[:2]) <= 0:
            raise ValueError(f"intrinsics must be 4 finite numbers (fx, fy, cx, cy) with fx, fy > 0, got {intrinsics}")
        check_collaborators(model, vae)
        self.model = model
        self.vae = vae
        self.config = config
        self.intrinsics = np.asarray(intrinsics, dtype=np.float32)
        self.device = torch.device(device)
        self.dtype = dtype
        self._conditioner_factory = conditioner_factory or _default_conditioner_factory
        self.temporal_stride = int(vae.temporal_stride)
        self.spatial_stride = int(vae.spatial_stride)
        self.rng = torch.Generator(device="cpu")
        self.last_timings: ChunkTimings | None = None
        self._started = False
        self._prompt = prompt
        self.refiner = refiner
        self.refiner_state: Any = None
        self.prompt: Any = None
        if refiner is not None and refiner.settings.block_latents != config.chunk_latents:
            raise ValueError(f"the refiner refines blocks of {refiner.settings.block_latents} latents, but chunks have "
                             f"{config.chunk_latents}: one refiner block per chunk needs the two to agree")

    @property
    def started(self) -> bool:
        return self._started

    def frames_for_next_chunk(self) -> int:
        """Raw frames the next `step` needs poses for (and returns)."""
        if not self._started:
            raise RuntimeError("ChunkGenerator.start() must be called first")
        n = self.temporal_stride * self.config.chunk_latents
        return n + 1 if self.chunk_index == 0 else n

    def frames_shown_for_next_chunk(self) -> int:
        """Frames the next `step` returns: `frames_for_next_chunk()` less the dropped first frame of a walk."""
        n = self.frames_for_next_chunk()
        return n - 1 if self.chunk_index == 0 and self.config.drop_first_frame else n

    @torch.inference_mode()
    def start(self, start_image: np.ndarray, world_T_cam0: np.ndarray) -> None:
        """Begin a walk at `start_image` (uint8 [H, W, 3]) seen from `world_T_cam0` ([4, 4])."""
        if start_image.dtype != np.uint8 or start_image.ndim != 3 or start_image.shape[2] != 3:
            raise ValueError(f"start_image must be uint8 [H, W, 3], got {start_image.dtype} {start_image.shape}")
        height, width = start_image.shape[:2]
        if height % self.spatial_stride or width % self.spatial_stride:
            raise ValueError(f"start_image size {width}x{height} must be a multiple of the VAE stride {self.spatial_stride}")
        world_T_cam0 = np.asarray(world_T_cam0, dtype=np.float64)
        if world_T_cam0.shape != (4, 4) or not np.isfinite(world_T_cam0).all():
            raise ValueError(f"world_T_cam0 must be a finite [4, 4] matrix, got shape {world_T_cam0.shape}")
        self.height, self.width = height, width
        self.rng.manual_seed(self.config.seed)
        video = image_to_video_tensor(start_image).to(self.device, self.dtype)  # [1, 3, 1, H, W]
        self.image_latent = self.vae.encode(video).to(self.dtype)  # [1, C, 1, h, w]
        latent_hw = tuple(self.image_latent.shape[-2:])
        self.state = self.model.init_stream_state(1, latent_hw=latent_hw, kv_window_chunks=self.config.kv_window_chunks, sink=self.config.sink)
        self.prompt = None if self._prompt is None else self._prompt()
        if self.prompt is None:
            self.text, self.text_mask = self.model.null_text(1)
        else:
            self.text, self.text_mask = self.prompt.text, self.prompt.mask
        if self.refiner is not None:
            if self.prompt is None or self.prompt.refiner_text is None:
                raise ValueError("the refiner needs the walk's prompt encoded for it (an EncodedPrompt with refiner_text)")
            self.refiner_state = self.refiner.start(self.image_latent, self.prompt.refiner_text, self.prompt.refiner_mask)
        self.decoder = self.vae.stream_decoder(1)
        self.conditioner = self._conditioner_factory(
            first_world_T_cam=world_T_cam0,
            intrinsics=self.intrinsics,
            target_size=(height, width),
            vae_stride=(self.temporal_stride, self.spatial_stride, self.spatial_stride),
        )
        self.chunk_index = 0
        self.latent_index = 0
        self.frame_index = 0
        self._started = True

    @property
    def sampling_dtype(self) -> torch.dtype:
        """The dtype of the noise, timesteps and Euler updates (see `GeneratorConfig.fp32_sampling`)."""
        return torch.float32 if self.config.fp32_sampling else self.dtype

    def _noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.rng).to(self.device, self.sampling_dtype)

    @torch.inference_mode()
    def step(self, world_T_cams: np.ndarray) -> np.ndarray:
        """Generate the next chunk for these raw-frame poses ([n, 4, 4], n = frames_for_next_chunk()).

        Returns uint8 frames [n', H, W, 3], n' = frames_shown_for_next_chunk() (n less a dropped first frame);
        `last_timings` holds the chunk's phase timings. `streaming.batched.step_batched` is the same
        chunk for many generators at once; this is its naive twin (and its reference in the tests).
        """
        # 1. Camera conditioning and noise for the chunk's latents.
        chunk = self.begin_chunk(world_T_cams)

        # 2. Few-step Euler denoising against the read-only state.
        t0 = time.perf_counter()
        x = euler_chunk(
            lambda x_t, timestep: self.model.stream_forward(x_t, timestep, self.text, self.text_mask, chunk.camera, chunk.plucker, self.state),
            chunk.x, self.config.sigmas, image_latent=chunk.image_latent,
        )
        t1 = time.perf_counter()

        # 3. Commit the clean chunk (t = 0) into the next state, beside 4. and 5. where that pays
        # (`streaming.overlap`): they read x and nothing of each other's.
        def commit() -> tuple[Any, float]:
            t = time.perf_counter()
            state = self.model.stream_commit(x, self.text, self.text_mask, chunk.camera, chunk.plucker, self.state)
            return state, (time.perf_counter() - t) * 1e3

        def refine_and_decode() -> tuple[torch.Tensor, float, float]:
            # 4. Refine the chunk's new latents (the image latent is the refiner's sink, never refined).
            t = time.perf_counter()
            latents = self.refine_chunk(x, chunk.first)
            t_refined = time.perf_counter()
            # 5. Stream-decode with the VAE's causal cache.
            video = self.decoder.decode_chunk(latents)  # [1, 3, n, H, W]
            refine_ms = (t_refined - t) * 1e3 if self.refiner is not None else 0.0
            return video, refine_ms, (time.perf_counter() - t_refined) * 1e3

        overlap = overlaps_phases(self.device)
        (state, commit_ms), (video, refine_ms, decode_ms) = run_beside(commit, refine_and_decode, overlap)
        timings = ChunkTimings((t1 - t0) * 1e3, commit_ms, decode_ms, refine_ms, overlapped=overlap)
        return self.end_chunk(chunk, state, video, timings)

    def begin_chunk(self, world_T_cams: np.ndarray) -> ChunkInputs:
        """Check the poses, add them to the camera conditioner and draw the chunk's noise (the first
        half of `step`; it changes the conditioner and the RNG, not the stream state)."""
        n = self.frames_for_next_chunk()
        world_T_cams = np.asarray(world_T_cams, dtype=np.float64)
        if world_T_cams.shape != (n, 4, 4) or not np.isfinite(world_T_cams).all():
            raise ValueError(f"step needs finite poses of shape ({n}, 4, 4), got {world_T_cams.shape}")
        first = self.chunk_index == 0
        tc = self.config.chunk_latents
        lat_start = self.latent_index
        lat_end = lat_start + tc + (1 if first else 0)
        self.conditioner.add_frames(world_T_cams)
        cond = self.conditioner.latent_chunk(lat_start, lat_end)
        camera = torch.as_tensor(cond["camera_conditions"])[None].to(self.device, self.dtype)  # [1, Tc', 20]
        plucker = torch.as_tensor(cond["chunk_plucker"])[None].to(self.device, self.dtype)  # [1, 6s, Tc', h, w]
        _, channels, _, h, w = self.image_latent.shape
        # Noise, timesteps and updates in `sampling_dtype` (the model's dtype unless fp32_sampling); the
        # model casts its input to its own dtype.
        image_latent = self.image_latent.to(self.sampling_dtype)
        x = self._noise((1, channels, tc, h, w))  # [1, C, Tc, h, w]
        if self.config.warm_start:
            x = warm_start(image_latent if first else self.state.last_latent, x, self.config.sigmas[0])
        if first:
            x = torch.cat([image_latent, x], dim=2)  # [1, C, 1+Tc, h, w]
        return ChunkInputs(frames=n, first=first, latent_end=lat_end, x=x, camera=camera, plucker=plucker,
                           image_latent=image_latent if first else None)

    def refine_chunk(self, x: torch.Tensor, first: bool) -> torch.Tensor:
        """The latents to decode: x [1, C, Tc', h, w] itself, or its new latents refined (the image
        latent is the refiner's sink, never refined); advances the refiner's state."""
        if self.refiner is None:
            return x
        refined, self.refiner_state = self.refiner.refine(x[:, :, 1:] if first else x, self.refiner_state)
        return torch.cat([self.image_latent.to(refined.dtype), refined], dim=2) if first else refined

    def end_chunk(self, chunk: ChunkInputs, state: Any, video: torch.Tensor, timings: ChunkTimings) -> np.ndarray:
        """Take the committed state and the decoded video [1, 3, n, H, W]; returns the frames shown."""
        frames = video_tensor_to_frames(video)  # [n, H, W, 3]
        if frames.shape[0] != chunk.frames:
            raise RuntimeError(f"decoder returned {frames.shape[0]} frames for a chunk of {chunk.frames}")
        if chunk.first and self.config.drop_first_frame:
            frames = frames[1:]
        self.state = state
        self.last_timings = timings
        self.chunk_index += 1
        self.latent_index = chunk.latent_end
        self.frame_index += frames.shape[0]
        return frames

    def snapshot(self) -> GeneratorSnapshot:
        """A copy of the walk at the current chunk boundary (cheap relative to a chunk)."""
        if not self._started:
            raise RuntimeError("ChunkGenerator.start() must be called first")
        return GeneratorSnapshot(
            state=self.state.clone(),
            decoder=self.decoder.clone(),
            conditioner=copy.deepcopy(self.conditioner),
            rng_state=self.rng.get_state(),
            chunk_index=self.chunk_index,
            latent_index=self.latent_index,
            frame_index=self.frame_index,
            refiner=self.refiner_state,
        )

    def restore(self, snap: GeneratorSnapshot) -> None:
        """Continue from `snap`; the snapshot stays valid for another restore."""
        self.state = snap.state.clone()
        self.decoder = snap.decoder.clone()
        self.conditioner = copy.deepcopy(snap.conditioner)
        self.rng.set_state(snap.rng_state)
        self.chunk_index = snap.chunk_index
        self.latent_index = snap.latent_index
        self.frame_index = snap.frame_index
        self.refiner_state = snap.refiner
