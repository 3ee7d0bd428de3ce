"""`LTX2VideoVAE`: the LTX-2 video autoencoder (diffusers `AutoencoderKLLTX2Video`) behind TinyVAE's interface.

    vae = LTX2VideoVAE.from_folder("SANA-WM_streaming/ltx2_causal_vae", device="cuda", dtype=torch.bfloat16)
    z = vae.encode(video)              # [B, 3, F, H, W] in [-1, 1], F = 8k + 1 -> [B, 128, k + 1, H/32, W/32]
    video = vae.decode(z)              # -> [B, 3, 8(T−1) + 1, 32h, 32w] in [-1, 1]
    dec = vae.stream_decoder(batch_size=1)
    frames = dec.decode_chunk(z[:, :, :4])   # then z[:, :, 4:7], ...

Latents are normalised per channel as SANA-WM does: encode z = (mode − μ_c)·s / σ_c, decode
z·σ_c / s + μ_c, with the VAE's `latents_mean` / `latents_std` buffers and `scaling_factor` s. The
posterior's mode is used (deterministic) and the decoder gets no timestep (`temb=None`).

Streaming decode. diffusers' decoder has no incremental cache, so the stream decoder gives it one
without changing its weights or its code: every causal temporal convolution of the decoder is
routed (once, at construction) through `_stream_conv`, which, while a stream decode runs on this
thread, prepends the last k − 1 inputs of the previous chunk instead of replicating the first frame;
and every temporal upsampler through `_stream_upsample`, which keeps all frames on chunks after the
first (the whole-clip decode drops stride − 1 frames once, at the start of the clip). Everything else
in the decoder acts per frame. The concatenated chunks therefore equal the causal whole-clip decode
(tests: within float32 rounding, max abs difference below 1e-5). Outside a stream decode, the routed
modules run diffusers' own forward. A decoder configured non-causal (`decoder_causal=False`, the
bidirectional release's `vae/`) decodes whole clips non-causally; its stream decoder runs it causally,
which it was not trained for (a warning says so).
"""
from __future__ import annotations

import functools
import logging
import math
import threading
from pathlib import Path

import torch
from torch import nn

from model.vae.checks import check_latents, check_stream_chunk, check_video

logger = logging.getLogger(__name__)

# Thread-local: the cache dict of the stream decode running on this thread, or None.
_ACTIVE = threading.local()


class _StreamCache:
    """Left context of every routed convolution (by module name) and whether the clip has started."""

    def __init__(self) -> None:
        self.conv: dict[str, torch.Tensor] = {}
        self.first = True

    def clone(self) -> _StreamCache:
        out = _StreamCache()
        out.conv = {k: v.clone() for k, v in self.conv.items()}
        out.first = self.first
        return out


def _active() -> _StreamCache | None:
    return getattr(_ACTIVE, "cache", None)


def _stream_conv(module: nn.Module, name: str, hidden_states: torch.Tensor, causal: bool = True) -> torch.Tensor:
    cache = _active()
    if cache is None:
        return type(module).forward(module, hidden_states, causal=causal)
    k = module.kernel_size[0]
    if k == 1:
        return module.conv(hidden_states)
    left = cache.conv.get(name)
    if left is None:
        # The clip's first chunk: the causal padding of a whole-clip decode repeats frame 0.
        left = hidden_states[:, :, :1].expand(-1, -1, k - 1, -1, -1)
    padded = torch.cat([left, hidden_states], dim=2)  # [B, C, k−1+T, H, W]
    cache.conv[name] = padded[:, :, padded.shape[2] - (k - 1):].clone()
    return module.conv(padded)


def _depth_to_space(x: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """[B, C·st·sh·sw, T, H, W] -> [B, C, T·st, H·sh, W·sw], channel order (c, st, sh, sw)."""
    st, sh, sw = stride
    b, _, t, h, w = x.shape
    x = x.unflatten(1, (-1, st, sh, sw))  # [B, C, st, sh, sw, T, H, W]
    x = x.permute(0, 1, 5, 2, 6, 3, 7, 4)  # [B, C, T, st, H, sh, W, sw]
    return x.reshape(b, -1, t * st, h * sh, w * sw)


def _stream_upsample(module: nn.Module, hidden_states: torch.Tensor, causal: bool = True) -> torch.Tensor:
    cache = _active()
    if cache is None or cache.first:
        return type(module).forward(module, hidden_states, causal=causal)
    stride = tuple(module.stride)
    out = _depth_to_space(module.conv(hidden_states, causal=True), stride)
    if module.residual:
        residual = _depth_to_space(hidden_states, stride)
        out = out + residual.repeat(1, math.prod(stride) // module.upscale_factor, 1, 1, 1)
    return out


def _strides(config) -> tuple[int, int]:
    """(temporal, spatial) compression of an LTX-2 VAE config, from its downsampling layers."""
    kinds = list(config.downsample_type)
    scaling = config.spatio_temporal_scaling
    scaling = [scaling] * len(kinds) if isinstance(scaling, bool) else list(scaling)
    spatial = config.patch_size * 2 ** sum(1 for k, on in zip(kinds, scaling) if on and k in ("spatial", "spatiotemporal"))
    temporal = config.patch_size_t * 2 ** sum(1 for k, on in zip(kinds, scaling) if on and k in ("temporal", "spatiotemporal"))
    return temporal, spatial


class LTX2VideoVAE(nn.Module):
    """TinyVAE's interface over a diffusers `AutoencoderKLLTX2Video` (see the module docstring)."""

    def __init__(self, vae: nn.Module, source: str = "<memory>") -> None:
        super().__init__()
        from diffusers import AutoencoderKLLTX2Video
        from diffusers.models.autoencoders.autoencoder_kl_ltx2 import LTX2VideoCausalConv3d, LTX2VideoUpsampler3d

        if not isinstance(vae, AutoencoderKLLTX2Video):
            raise TypeError(f"LTX2VideoVAE wraps a diffusers AutoencoderKLLTX2Video, got {type(vae).__name__}")
        config = vae.config
        if config.timestep_conditioning:
            raise ValueError(f"LTX-2 VAE {source}: timestep_conditioning=True needs a decode timestep; SANA-WM decodes with temb=None")
        noisy = config.decoder_inject_noise
        if noisy if isinstance(noisy, bool) else any(noisy):
            raise ValueError(f"LTX-2 VAE {source}: decoder_inject_noise={noisy!r} makes decoding random; not supported")
        self.vae = vae
        self.source = source
        self._temporal_stride, self._spatial_stride = _strides(config)
        for name, module in vae.decoder.named_modules():
            if isinstance(module, LTX2VideoCausalConv3d):
                if module.conv.stride[0] != 1 or module.conv.dilation[0] != 1:
                    raise ValueError(f"LTX-2 VAE {source}: decoder conv {name} has temporal stride/dilation "
                                     f"{module.conv.stride[0]}/{module.conv.dilation[0]}; the stream decoder needs 1/1")
                module.forward = functools.partial(_stream_conv, module, name)
            elif isinstance(module, LTX2VideoUpsampler3d):
                module.forward = functools.partial(_stream_upsample, module)
        self.eval()

    @classmethod
    def from_folder(cls, folder: str | Path, *, device: str | torch.device | None = None,
                    dtype: torch.dtype | None = None) -> LTX2VideoVAE:
        """Load a diffusers-format folder (`config.json` + `diffusion_pytorch_model*.safetensors`) exactly.

        Raises `model.checkpoint.CheckpointError` (a ValueError) naming the file and the keys when the
        folder is incomplete, corrupt or does not match its config.
        """
        from diffusers import AutoencoderKLLTX2Video

        from model.checkpoint import CheckpointError, load_state_dict_exact, read_config, read_weights

        root = Path(folder).expanduser()
        config_path = root / "config.json"
        if not config_path.is_file():
            raise CheckpointError(f"LTX-2 VAE folder {str(root)!r} has no config.json")
        shards = sorted(root.glob("diffusion_pytorch_model*.safetensors"))
        if not shards:
            found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
            raise CheckpointError(f"LTX-2 VAE folder {str(root)!r} has no diffusion_pytorch_model*.safetensors (holds {found})")
        config = read_config(config_path)
        if config.get("_class_name", "AutoencoderKLLTX2Video") != "AutoencoderKLLTX2Video":
            raise CheckpointError(f"{str(config_path)!r} describes a {config['_class_name']}, not an AutoencoderKLLTX2Video")
        try:
            vae = AutoencoderKLLTX2Video.from_config(config)
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"LTX-2 VAE config {str(config_path)!r} is not valid: {error}") from error
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            part = read_weights(shard)
            clash = sorted(set(part) & set(state))
            if clash:
                raise CheckpointError(f"weights file {str(shard)!r} repeats keys of an earlier shard: {clash[:10]}")
            state.update(part)
        load_state_dict_exact(vae, state, ", ".join(repr(str(s)) for s in shards))
        wrapped = cls(vae, source=repr(str(root)))
        return wrapped.to(device=device or "cpu", dtype=dtype)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def temporal_stride(self) -> int:
        return self._temporal_stride

    @property
    def spatial_stride(self) -> int:
        return self._spatial_stride

    @property
    def causal_decoder(self) -> bool:
        return bool(self.vae.config.decoder_causal)

    @property
    def dtype(self) -> torch.dtype:
        return self.vae.encoder.conv_in.conv.weight.dtype

    def check_video(self, video: torch.Tensor) -> None:
        check_video(video, self.spatial_stride, self.temporal_stride)

    def check_latents(self, z: torch.Tensor) -> None:
        check_latents(z, self.latent_channels)

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        shape = (1, -1, 1, 1, 1)
        mean = self.vae.latents_mean.view(shape).to(like)
        std = self.vae.latents_std.view(shape).to(like)
        return mean, std, float(self.vae.config.scaling_factor)

    @torch.no_grad()
    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, F, H, W] in [-1, 1] -> normalised latents [B, C, (F−1)/st + 1, H/s, W/s] (posterior mode)."""
        self.check_video(video)
        mode = self.vae.encode(video.to(self.dtype)).latent_dist.mode()  # [B, C, T, h, w]
        mean, std, scale = self._stats(mode)
        return (mode - mean) * scale / std

    def _unnormalise(self, latents: torch.Tensor) -> torch.Tensor:
        self.check_latents(latents)
        z = latents.to(self.dtype)
        mean, std, scale = self._stats(z)
        return z * std / scale + mean

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, T, h, w] -> video [B, 3, st·(T−1) + 1, s·h, s·w] in [-1, 1]."""
        video = self.vae.decode(self._unnormalise(latents), None, return_dict=False)[0]
        return video.clamp(-1.0, 1.0)

    def stream_decoder(self, batch_size: int) -> LTX2StreamDecoder:
        return LTX2StreamDecoder(self, batch_size)


class LTX2StreamDecoder:
    """Chunk-by-chunk causal decoding (see the module docstring).

    The first chunk (holding latent 0) yields 1 + st·(Tc − 1) frames, later ones st·Tc; together
    they equal the causal whole-clip decode. `clone()` copies the cache (the VAE is shared).
    """

    def __init__(self, vae: LTX2VideoVAE, batch_size: int) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
        if not vae.causal_decoder:
            logger.warning("LTX-2 VAE %s has a non-causal decoder (decoder_causal=False); streaming decodes it causally, "
                           "which it was not trained for", vae.source)
        self.vae = vae
        self.batch_size = batch_size
        self.cache = _StreamCache()
        self.grid: tuple[int, int] | None = None
        self.latents_seen = 0

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, Tc, h, w] -> frames [B, 3, F_c, H, W] in [-1, 1]."""
        self.vae.check_latents(latents)
        grid = check_stream_chunk(latents, self.batch_size, self.grid)
        z = self.vae._unnormalise(latents)
        if _active() is not None:
            raise RuntimeError("a stream decode is already running on this thread")
        _ACTIVE.cache = self.cache
        try:
            video = self.vae.vae.decoder(z, None, causal=True)  # [B, 3, F_c, H, W]
        finally:
            _ACTIVE.cache = None
        self.cache.first = False
        self.grid = grid
        self.latents_seen += latents.shape[2]
        return video.clamp(-1.0, 1.0)

    def clone(self) -> LTX2StreamDecoder:
        out = LTX2StreamDecoder.__new__(LTX2StreamDecoder)
        out.vae, out.batch_size, out.grid, out.latents_seen = self.vae, self.batch_size, self.grid, self.latents_seen
        out.cache = self.cache.clone()
        return out

    def reset(self) -> None:
        self.cache = _StreamCache()
        self.grid = None
        self.latents_seen = 0


def save_folder(vae: nn.Module, folder: str | Path) -> Path:
    """Write a diffusers `AutoencoderKLLTX2Video` (or our wrapper) as a diffusers folder (tests, tools)."""
    inner = vae.vae if isinstance(vae, LTX2VideoVAE) else vae
    folder = Path(folder)
    inner.save_pretrained(str(folder), safe_serialization=True)
    return folder
