"""`StreamRefiner`: SANA-WM's stage 2, the chunk-causal LTX-2 refiner, run one block at a time as stage 1 yields it.

    refiner = StreamRefiner.from_folders("SANA-WM_streaming/refiner_diffusers", "SANA-WM_streaming/gemma3_12b",
                                         fps=16.0, device="cuda", dtype=torch.bfloat16)
    embeds, mask = refiner.encode_prompt("a quiet forest path")     # once per prompt
    state = refiner.start(image_latent, embeds, mask)                # [1, C, 1, h, w]: the sink
    refined, state = refiner.refine(block, state)                    # [1, C, 3, h, w] stage-1 latents, in order

The parts are diffusers' (0.42.1), called, not copied: the `SanaWMLTX2Refiner` pipeline object holds
the `SanaWMLTX2RefinerTransformer3DModel`, the `LTX2TextConnectors`, the Gemma-3 tokenizer and text
encoder and a `FlowMatchEulerDiscreteScheduler(shift=1)`; the transformer runs against diffusers'
`SanaWMRefinerKVCache`; the scheduler takes the Euler steps; prompts go through the pipeline's own
Gemma-3 + connector encoding (`_encode_prompt`). What roam adds is the stream: the pipeline refines
a finished clip in one call, while here each block is refined when stage 1 commits it, and the
window lives in a typed, immutable `RefinerState` (a snapshot for rewind is a reference).

One block, as the official streaming code runs it (`rf_shifted_sink`, diffusion/refiner/
diffusers_ltx2_refiner.py @0d2318a; `RefinerSettings` holds the numbers):

    1. sink      once per walk: the image latent's pre-RoPE keys/values at σ = 0; never refined
    2. window    the sink + the post-RoPE keys/values of the last `recent_frames` (10) refined frames;
                 the sink's RoPE sits right before the window: offset = start − history − sink_frames
    3. re-noise  x = (1 − σ₀)·z + σ₀·ε, one ε per block from the walk's generator (seed 42)
    4. Euler     per σ of (0.909375, 0.725, 0.421875): x₀ = x − σ·v; the scheduler steps x along
                 (x − x₀)/σ to the next σ (the last to 0)
    5. capture   a σ = 0 pass of the refined block against the same window; its post-RoPE keys and
                 values join the window, which is trimmed to `recent_frames` frames

Memory: the window holds per layer and frame [tokens, inner_dim] keys and values; for the released
48-layer, 4096-wide transformer at 22×40 latents that is 0.69 GB per frame in bf16 (7.6 GB for 11).
States share their blocks' tensors, so R rewind snapshots cost about (R + 4) blocks of 3 frames.
"""
from __future__ import annotations

import copy
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from model.profile import RefinerSettings

# Names of the refiner transformer's audio-only parts: the video-only forward never runs them.
_AUDIO_PARTS = ("audio", "av_cross", "video_to_audio", "cross_attn_audio")


@dataclass(frozen=True)
class RefinedBlockKV:
    """Post-RoPE keys and values of one refined block, per transformer layer ([B, frames·S, D] each)."""

    keys: tuple[torch.Tensor, ...]
    values: tuple[torch.Tensor, ...]
    frames: int


@dataclass(frozen=True)
class RefinerState:
    """Everything the refiner carries from one block to the next. Never changed in place.

    sink_keys / sink_values   per layer, pre-RoPE [B, sink_frames·S, D] of the image latent
    blocks                    refined blocks still (partly) in the window, oldest first
    next_frame                absolute latent index of the next block's first frame
    rng_state                 state of the noise generator (one ε per block)
    prompt_embeds, prompt_mask  [B, L, C], [B, L] from `encode_prompt`
    latent_hw                 (h, w) of the latents
    """

    sink_keys: tuple[torch.Tensor, ...]
    sink_values: tuple[torch.Tensor, ...]
    blocks: tuple[RefinedBlockKV, ...]
    next_frame: int
    rng_state: torch.Tensor
    prompt_embeds: torch.Tensor
    prompt_mask: torch.Tensor
    latent_hw: tuple[int, int]

    def cached_frames(self) -> int:
        return sum(block.frames for block in self.blocks)

    def nbytes(self) -> int:
        """Bytes held by the sink and window tensors."""
        tensors = [*self.sink_keys, *self.sink_values]
        for block in self.blocks:
            tensors += [*block.keys, *block.values]
        return sum(t.numel() * t.element_size() for t in tensors)


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> tokens [B, T·H·W, C] in (t, h, w) order (LTX-2 with patch size 1)."""
    return latents.flatten(2).transpose(1, 2)


def unpack_latents(tokens: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
    """Tokens [B, T·H·W, C] -> [B, C, T, H, W] (the inverse of `pack_latents`)."""
    return tokens.transpose(1, 2).unflatten(2, (frames, height, width))


class StreamRefiner:
    """Shared refiner weights; per-walk state is a `RefinerState` (see the module docstring).

    Args:
        pipe: a diffusers `SanaWMLTX2Refiner` holding the parts.
        settings: σ list, block size, window, sink and seed.
        fps: frame rate of the video (LTX-2's temporal RoPE is in seconds).
        device: where the transformer runs; the text encoder may live elsewhere (`text_device`).
    """

    def __init__(self, pipe, settings: RefinerSettings, *, fps: float, device: str | torch.device = "cpu",
                 text_device: str | torch.device | None = None) -> None:
        from diffusers.pipelines.sana_wm import SanaWMLTX2Refiner

        if not isinstance(pipe, SanaWMLTX2Refiner):
            raise TypeError(f"StreamRefiner needs a diffusers SanaWMLTX2Refiner, got {type(pipe).__name__}")
        if not isinstance(settings, RefinerSettings):
            raise TypeError(f"settings must be RefinerSettings, got {type(settings).__name__}")
        config = pipe.transformer.config
        if config.patch_size != 1 or config.patch_size_t != 1:
            raise ValueError(f"the refiner transformer has patch sizes {config.patch_size}/{config.patch_size_t}; "
                             "streaming supports the LTX-2 layout of 1/1")
        if not (0 < float(fps) <= 240):
            raise ValueError(f"fps must be in (0, 240], got {fps!r}")
        self.pipe = pipe
        self.settings = settings
        self.fps = float(fps)
        self.device = torch.device(device)
        self.text_device = self.device if text_device is None else torch.device(text_device)
        self._text_lock = threading.Lock()

    @classmethod
    def from_folders(cls, refiner_root: str | Path, gemma_root: str | Path, *, fps: float,
                     settings: RefinerSettings | None = None, device: str | torch.device = "cpu",
                     dtype: torch.dtype | None = None) -> StreamRefiner:
        """Load `refiner_diffusers/` (its `transformer/` and `connectors/` in diffusers' format) and the Gemma-3
        folder (`gemma3_12b/`: model and tokenizer), local files only. On a GPU the text encoder stays on the
        CPU between prompts and the transformer's audio-only parts are not moved (the official code does the same).
        Raises `model.checkpoint.CheckpointError` naming the folder when a part is missing or does not load."""
        from diffusers import FlowMatchEulerDiscreteScheduler
        from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMLTX2RefinerTransformer3DModel
        from diffusers.pipelines.ltx2.connectors import LTX2TextConnectors
        from diffusers.pipelines.sana_wm import SanaWMLTX2Refiner
        from transformers import AutoTokenizer, Gemma3ForConditionalGeneration

        from model.checkpoint import CheckpointError

        settings = settings or RefinerSettings()
        dtype = dtype or torch.float32
        refiner_root, gemma_root = Path(refiner_root).expanduser(), Path(gemma_root).expanduser()
        for part in (refiner_root / "transformer", refiner_root / "connectors", gemma_root):
            if not (part / "config.json").is_file():
                raise CheckpointError(f"refiner part {str(part)!r} has no config.json (the streaming release ships "
                                      "refiner_diffusers/transformer, refiner_diffusers/connectors and gemma3_12b)")
        try:
            transformer = SanaWMLTX2RefinerTransformer3DModel.from_pretrained(
                str(refiner_root / "transformer"), torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False).eval()
            connectors = LTX2TextConnectors.from_pretrained(
                str(refiner_root / "connectors"), torch_dtype=dtype, local_files_only=True, low_cpu_mem_usage=False).eval()
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"cannot load the refiner from {str(refiner_root)!r}: {error}") from error
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(gemma_root), local_files_only=True)
            text_encoder = Gemma3ForConditionalGeneration.from_pretrained(
                str(gemma_root), dtype=dtype, local_files_only=True).eval()
        except (OSError, ValueError, KeyError, RuntimeError) as error:
            raise CheckpointError(f"cannot load the refiner's Gemma-3 text encoder from {str(gemma_root)!r}: {error}") from error
        if tokenizer.pad_token is None:
            # As the official refiner: Gemma-3 pads on the left with its end-of-sequence token.
            tokenizer.pad_token = tokenizer.eos_token
        pipe = SanaWMLTX2Refiner(transformer=transformer, connectors=connectors, tokenizer=tokenizer,
                                 text_encoder=text_encoder, scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
                                 text_max_sequence_length=settings.text_tokens)
        device = torch.device(device)
        _move_video_parts(transformer, device)
        connectors.to(device)
        return cls(pipe, settings, fps=fps, device=device, text_device="cpu")

    @property
    def transformer(self):
        return self.pipe.transformer

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.proj_in.weight.dtype

    @property
    def num_layers(self) -> int:
        return len(self.transformer.transformer_blocks)

    @torch.inference_mode()
    def encode_prompt(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The prompt through Gemma-3 and the connectors -> ([1, L, C], mask [1, L]) on the refiner's device."""
        if not isinstance(prompt, str):
            raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
        encoder = self.pipe.text_encoder
        with self._text_lock:
            moved = self.text_device != self.device
            if moved:
                encoder.to(self.device)
            try:
                embeds, mask = self.pipe._encode_prompt(prompt, device=self.device, dtype=self.dtype)
            finally:
                if moved:
                    encoder.to(self.text_device)
        return embeds, mask

    def _sigmas(self, scheduler) -> torch.Tensor:
        """The σ list as the scheduler holds it (float32, ending at 0), with its timesteps set."""
        scheduler.set_timesteps(sigmas=list(self.settings.sigmas[:-1]), device=self.device)
        return scheduler.sigmas.to(device=self.device, dtype=torch.float32)

    def _rope(self, positions: list[int], hw: tuple[int, int], batch: int):
        return self.transformer.build_rotary_emb_for_absolute_positions(
            batch_size=batch, frame_positions=positions, height=hw[0], width=hw[1], device=self.device, fps=self.fps)

    def _window(self, state: RefinerState, block_start: int):
        """A diffusers `SanaWMRefinerKVCache` holding the sink (RoPE'd right before the window) and the window."""
        from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMRefinerKVCache

        recent = self.settings.recent_frames
        history = min(state.cached_frames(), recent)
        sink = self.settings.sink_frames
        cache = SanaWMRefinerKVCache(self.num_layers)
        offset = block_start - history - sink
        cache.sink_pe = self._rope(list(range(offset, offset + sink)), state.latent_hw, state.prompt_embeds.shape[0])
        keep = history * state.latent_hw[0] * state.latent_hw[1]
        for i in range(self.num_layers):
            layer = cache.get(i)
            layer.store_sink(state.sink_keys[i], state.sink_values[i])
            if keep:
                keys = torch.cat([block.keys[i] for block in state.blocks], dim=1)[:, -keep:]
                values = torch.cat([block.values[i] for block in state.blocks], dim=1)[:, -keep:]
                layer.store_history(keys, values)
        return cache

    def _forward(self, latents: torch.Tensor, positions: list[int], sigma: float, state: RefinerState, cache,
                 mode: str) -> torch.Tensor:
        """One transformer pass of `latents` [B, C, n, h, w] at `sigma` -> velocity tokens [B, n·h·w, C]."""
        tokens = pack_latents(latents)
        timestep = torch.full(tokens.shape[:2], sigma * float(self.transformer.config.timestep_scale_multiplier),
                              dtype=torch.float32, device=self.device)  # [B, N]
        return self.transformer(
            hidden_states=tokens, encoder_hidden_states=state.prompt_embeds, timestep=timestep,
            video_rotary_emb=self._rope(positions, state.latent_hw, tokens.shape[0]),
            encoder_attention_mask=state.prompt_mask, kv_cache=cache, kv_cache_mode=mode, return_dict=False,
        )[0]

    @torch.inference_mode()
    def start(self, image_latent: torch.Tensor, prompt_embeds: torch.Tensor, prompt_mask: torch.Tensor) -> RefinerState:
        """A walk's first state: the sink captured from `image_latent` [B, C, sink_frames, h, w] at σ = 0."""
        from diffusers.models.transformers.transformer_sana_wm_refiner import SanaWMRefinerKVCache

        sink = self.settings.sink_frames
        if not isinstance(image_latent, torch.Tensor) or image_latent.ndim != 5 or image_latent.shape[2] != sink:
            raise ValueError(f"image_latent must be [B, C, {sink}, h, w], got "
                             f"{tuple(image_latent.shape) if isinstance(image_latent, torch.Tensor) else image_latent!r}")
        if image_latent.shape[1] != self.transformer.config.in_channels:
            raise ValueError(f"the refiner takes {self.transformer.config.in_channels} latent channels, got "
                             f"{image_latent.shape[1]}")
        hw = (int(image_latent.shape[3]), int(image_latent.shape[4]))
        generator = torch.Generator(device=self.device).manual_seed(self.settings.seed)
        state = RefinerState(sink_keys=(), sink_values=(), blocks=(), next_frame=sink, rng_state=generator.get_state(),
                             prompt_embeds=prompt_embeds.to(self.device, self.dtype), prompt_mask=prompt_mask.to(self.device),
                             latent_hw=hw)
        cache = SanaWMRefinerKVCache(self.num_layers)
        self._forward(image_latent.to(self.device, self.dtype).contiguous(), list(range(sink)), 0.0, state, cache,
                      "capture_pre_rope")
        captured = [cache.get(i).get_captured_pre_rope() for i in range(self.num_layers)]
        return RefinerState(sink_keys=tuple(k for k, _ in captured), sink_values=tuple(v for _, v in captured),
                            blocks=(), next_frame=sink, rng_state=state.rng_state, prompt_embeds=state.prompt_embeds,
                            prompt_mask=state.prompt_mask, latent_hw=hw)

    @torch.inference_mode()
    def refine(self, block: torch.Tensor, state: RefinerState) -> tuple[torch.Tensor, RefinerState]:
        """Refine the next block of stage-1 latents [B, C, n, h, w] (n ≤ block_latents) -> (refined [B, C, n, h, w]
        in the refiner's dtype, the state with the block in its window). `state` is not changed."""
        from diffusers.utils.torch_utils import randn_tensor

        if not isinstance(state, RefinerState):
            raise TypeError(f"state must be a RefinerState (from start), got {type(state).__name__}")
        if (not isinstance(block, torch.Tensor) or block.ndim != 5 or not 1 <= block.shape[2] <= self.settings.block_latents
                or tuple(block.shape[3:]) != state.latent_hw):
            raise ValueError(f"block must be [B, C, 1..{self.settings.block_latents}, {state.latent_hw[0]}, "
                             f"{state.latent_hw[1]}], got {tuple(block.shape) if isinstance(block, torch.Tensor) else block!r}")
        dtype, frames = self.dtype, block.shape[2]
        start = state.next_frame
        positions = list(range(start, start + frames))
        cache = self._window(state, start)
        # A private scheduler: its step counter is per call, and sessions share the weights.
        scheduler = copy.deepcopy(self.pipe.scheduler)
        sigmas = self._sigmas(scheduler)

        # 3. re-noise with one ε per block
        generator = torch.Generator(device=self.device)
        generator.set_state(state.rng_state)
        clean = block.to(self.device, dtype)
        noise = randn_tensor(tuple(clean.shape), generator=generator, device=self.device, dtype=dtype)
        sigma_max = float(sigmas[0])
        x = ((1.0 - sigma_max) * clean.float() + sigma_max * noise.float()).to(dtype)  # [B, C, n, h, w]

        # 4. Euler steps, each against the window
        h, w = state.latent_hw
        for i, t in enumerate(scheduler.timesteps):
            sigma = float(sigmas[i].item())
            velocity = self._forward(x, positions, sigma, state, cache, "inject")  # [B, N, C]
            x0 = unpack_latents((pack_latents(x).float() - velocity.float() * sigma).to(dtype), frames, h, w)
            if sigma <= 1e-6:
                x = x0
            else:
                flow = (x.float() - x0.float()) / sigma
                x = scheduler.step(flow, t, x.float(), return_dict=False)[0].to(dtype)

        # 5. capture the refined block's keys and values against the same window
        self._forward(x, positions, 0.0, state, cache, "inject_and_capture_post_rope")
        captured = [cache.get(i).get_captured_post_rope() for i in range(self.num_layers)]
        new_block = RefinedBlockKV(keys=tuple(k for k, _ in captured), values=tuple(v for _, v in captured), frames=frames)
        blocks = state.blocks + (new_block,)
        # Drop blocks wholly older than the window's `recent_frames` frames.
        while len(blocks) > 1 and sum(b.frames for b in blocks[1:]) >= self.settings.recent_frames:
            blocks = blocks[1:]
        new_state = RefinerState(sink_keys=state.sink_keys, sink_values=state.sink_values, blocks=blocks,
                                 next_frame=start + frames, rng_state=generator.get_state(),
                                 prompt_embeds=state.prompt_embeds, prompt_mask=state.prompt_mask, latent_hw=state.latent_hw)
        return x, new_state


def _move_video_parts(transformer: torch.nn.Module, device: torch.device) -> None:
    """Move the parameters and buffers the video-only forward uses to `device`; audio-only parts stay where they are."""
    for name, module in transformer.named_modules():
        audio_module = any(part.startswith(_AUDIO_PARTS) for part in name.split(".") if part)
        for pname, param in list(module.named_parameters(recurse=False)):
            if not audio_module and not pname.startswith(_AUDIO_PARTS):
                param.data = param.data.to(device)
        for bname, buffer in list(module.named_buffers(recurse=False)):
            if not audio_module and not bname.startswith(_AUDIO_PARTS) and buffer is not None:
                module._buffers[bname] = buffer.to(device)
