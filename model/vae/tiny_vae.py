"""A tiny causal video autoencoder: the latent space roam's embedded world model lives in.

Layout of time (as in LTX-2): a clip of F = stride·k + 1 frames has T = k + 1 latents. Latent 0
encodes frame 0 alone; latent i ≥ 1 encodes frames stride·(i−1)+1 … stride·i.

The network has two kinds of layers, and causality follows from their split:
  * per-frame 2D convolutions (spatial down/up-sampling), which never mix frames;
  * causal temporal convolutions at the latent rate, padded on the left only (with zeros, or in
    streaming with the previous chunk's inputs), so latent i depends on latents ≤ i.
Encoder: frames -> 2D encoder -> group `stride` frames into channels (frame 0's group is frame 0
repeated) -> causal temporal blocks -> latents. Decoder: latents -> causal temporal blocks -> each
latent expands into `stride` sub-frames (latent 0 keeps only its last) -> 2D decoder -> frames ->
optional per-frame post-filter (`refine_width`). Both sides add a linear path between a latent and
the pixels of its own frame group (1×1 convolutions), which training initialises by PCA.

Latents are normalised per channel, z = (e − mean) / std, with mean/std buffers measured on training
clips, so the diffusion model sees roughly N(0, 1) latents.

`StreamDecoder` decodes chunk by chunk carrying the left context of every temporal convolution;
its concatenated output equals `TinyVAE.decode` of the whole sequence.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.vae.checks import check_latents, check_stream_chunk, check_video
from model.vae.deblock import deblock


@dataclass(frozen=True)
class TinyVAEConfig:
    """Shape of the autoencoder.

    widths[i] is the channel count of the 2D stage at resolution H / 2^(i+1); there are
    log2(spatial_stride) stages, the last one at the latent resolution. decoder_widths, when set, are
    the decoder's instead (None: the encoder's): a decoder distilled narrower than its encoder for
    speed (train/decoder.py, `distil_decoder`) decodes the same latent space at a fraction of the cost.
    """

    latent_channels: int = 32
    spatial_stride: int = 8
    temporal_stride: int = 4
    widths: tuple[int, ...] = (32, 64, 128)
    decoder_widths: tuple[int, ...] | None = None
    temporal_blocks: int = 2
    temporal_kernel: int = 3
    refine_width: int = 0
    # The cell-seam filter on decoded frames (model/vae/deblock.py): the largest step across a cell border
    # taken for a seam, on [-1, 1] (0 = off), and the largest step inside the cells on either side.
    deblock_step: float = 0.0
    deblock_flat: float = 0.06

    def __post_init__(self) -> None:
        object.__setattr__(self, "widths", tuple(int(w) for w in self.widths))
        if self.decoder_widths is not None:
            object.__setattr__(self, "decoder_widths", tuple(int(w) for w in self.decoder_widths))
        s = self.spatial_stride
        if s < 2 or s & (s - 1):
            raise ValueError(f"spatial_stride must be a power of two >= 2, got {s}")
        for name in ("widths", "decoder_widths"):
            widths = getattr(self, name)
            if widths is None:
                continue
            if len(widths) != int(math.log2(s)):
                raise ValueError(f"{name} needs log2(spatial_stride)={int(math.log2(s))} entries, got {widths}")
            if any(w < 1 for w in widths):
                raise ValueError(f"{name} must be positive, got {widths}")
        if self.temporal_stride < 1:
            raise ValueError(f"temporal_stride must be >= 1, got {self.temporal_stride}")
        if self.latent_channels < 1:
            raise ValueError(f"latent_channels must be >= 1, got {self.latent_channels}")
        if self.refine_width < 0:
            raise ValueError(f"refine_width must be >= 0 (0: no refinement), got {self.refine_width}")
        if not (self.deblock_step >= 0 and self.deblock_flat >= 0):
            raise ValueError(f"deblock_step and deblock_flat must be >= 0 (deblock_step 0: off), got "
                             f"{self.deblock_step}, {self.deblock_flat}")
        if self.temporal_blocks < 0 or self.temporal_kernel < 1:
            raise ValueError(
                f"need temporal_blocks >= 0 and temporal_kernel >= 1, got {self.temporal_blocks}, {self.temporal_kernel}"
            )

    @property
    def decoder_stage_widths(self) -> tuple[int, ...]:
        """The decoder's 2D stage widths: decoder_widths, else the encoder's widths."""
        return self.decoder_widths if self.decoder_widths is not None else self.widths

    def to_dict(self) -> dict:
        return asdict(self)


class ResBlock2d(nn.Module):
    """Per-frame residual block: x + conv(relu(conv(x))), then ReLU. Input [N, C, H, W]."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.conv2(F.relu(self.conv1(x))))


class CausalTemporalBlock(nn.Module):
    """Residual block at the latent rate: a (k, 3, 3) convolution causal in time, then a per-frame 3×3.

    Input [B, C, T, h, w]. `context` holds the k − 1 inputs before the first one (zeros at the
    start of a sequence); the block returns its output and the context for the next chunk.
    """

    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.conv_t = nn.Conv3d(channels, channels, (kernel, 3, 3), padding=(0, 1, 1))
        self.conv_s = nn.Conv2d(channels, channels, 3, padding=1)

    def initial_context(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, h, w = x.shape
        return x.new_zeros(b, c, self.kernel - 1, h, w)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, c, t, h, w = x.shape
        padded = torch.cat([context, x], dim=2)  # [B, C, k-1+T, h, w]
        y = F.relu(self.conv_t(padded))  # [B, C, T, h, w]
        y = self.conv_s(y.transpose(1, 2).reshape(b * t, c, h, w))
        y = y.reshape(b, t, c, h, w).transpose(1, 2)
        new_context = padded[:, :, padded.shape[2] - (self.kernel - 1) :]
        return F.relu(x + y), new_context


# Frames the CPU decoder runs through its per-frame 2D stages at once. A batched streaming decode has
# 8 frames per walk (48 for 6 walks); at the full-resolution stage one frame's activation is 24×64×64
# fp32 = 384 KiB, so all 48 at once stream every layer through main memory, and decoding 48 frames
# in one pass took ~10 % longer than in passes of 4 (1 thread, AMD EPYC). GPUs take all frames at once.
_CPU_FRAMES_PER_PASS = 4


def cpu_decoder_dtype() -> torch.dtype:
    """The dtype the TinyVAE decoder runs fastest in on this CPU: bfloat16 where the CPU multiplies it natively
    (AVX-512 BF16 or AMX; there the decoder's convolutions run ~1.4× faster, at ~55 dB to float32), else float32
    (elsewhere bf16 is emulated and several times slower)."""
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return torch.bfloat16 if native else torch.float32


def _frames_to_2d(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T, H, W] -> [B·T, C, H, W], stored channels-last (oneDNN convolutions run ~1.5× faster so)."""
    b, c, t, h, w = x.shape
    return x.permute(0, 2, 3, 4, 1).reshape(b * t, h, w, c).permute(0, 3, 1, 2)


def _frames_from_2d(x: torch.Tensor, b: int) -> torch.Tensor:
    """[B·T, C, H, W] -> [B, C, T, H, W]."""
    n, c, h, w = x.shape
    return x.reshape(b, n // b, c, h, w).transpose(1, 2)


def _group_frames(x: torch.Tensor, s: int) -> torch.Tensor:
    """Frames [B, c, F, h, w], F = s·k + 1 -> one channel stack per latent [B·T, s·c, h, w].

    Frame 0 forms its group alone, repeated s times; then every s consecutive frames form one.
    """
    b, c, f, h, w = x.shape
    t = (f - 1) // s + 1
    x = torch.cat([x[:, :, :1].expand(-1, -1, s - 1, -1, -1), x], dim=2)  # [B, c, s·T, h, w]
    return x.reshape(b, c, t, s, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b * t, s * c, h, w)


def _ungroup_frames(x: torch.Tensor, b: int, s: int, first: bool) -> torch.Tensor:
    """[B·T, s·c, h, w] -> per-frame [B·F, c, h, w]; with `first`, latent 0 keeps only its last sub-frame."""
    n, sc, h, w = x.shape
    x = x.reshape(b, (n // b) * s, sc // s, h, w)  # [B, T·s, c, h, w]
    if first:
        x = x[:, s - 1 :]
    return x.reshape(-1, sc // s, h, w)


class Encoder(nn.Module):
    def __init__(self, cfg: TinyVAEConfig):
        super().__init__()
        self.cfg = cfg
        widths = cfg.widths
        # The first ×2 is a space-to-depth, so no convolution runs at full resolution.
        self.stem = nn.Conv2d(3 * 4, widths[0], 3, padding=1)
        stages = []
        for i, w in enumerate(widths):
            layers: list[nn.Module] = [ResBlock2d(w)]
            if i + 1 < len(widths):
                layers += [nn.Conv2d(w, widths[i + 1], 3, stride=2, padding=1), nn.ReLU()]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        c = widths[-1]
        self.group = nn.Conv2d(c * cfg.temporal_stride, c, 1)
        self.temporal = nn.ModuleList(CausalTemporalBlock(c, cfg.temporal_kernel) for _ in range(cfg.temporal_blocks))
        self.out = nn.Conv2d(c, cfg.latent_channels, 3, padding=1)
        # A linear path from each latent's pixels straight to the latent (and back, `Decoder.skip`):
        # training initialises it by PCA, so the network starts as the best linear autoencoder and
        # the deep paths (zero-initialised outputs) learn only what that misses.
        self.skip = nn.Conv2d(3 * cfg.spatial_stride**2 * cfg.temporal_stride, cfg.latent_channels, 1)

    def forward(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, F, H, W] with F = stride·k + 1 -> unnormalised latents [B, C, k + 1, h, w]."""
        b = video.shape[0]
        s = self.cfg.temporal_stride
        frames = _frames_to_2d(video)  # [B·F, 3, H, W]
        # 1. Per-frame spatial encoder.
        x = self.stages(F.relu(self.stem(F.pixel_unshuffle(frames, 2))))  # [B·F, c, h, w]
        # 2. Frame 0 forms a group of its own; then stride frames become one latent.
        x = _frames_from_2d(F.relu(self.group(_group_frames(_frames_from_2d(x, b), s))), b)  # [B, c, T, h, w]
        # 3. Causal mixing across latents.
        for block in self.temporal:
            x, _ = block(x, block.initial_context(x))
        # 4. Latents: the deep path plus the linear one from the latent's own pixels.
        pixels = _frames_from_2d(F.pixel_unshuffle(frames, self.cfg.spatial_stride), b)  # [B, 3·s², F, h, w]
        z = self.out(_frames_to_2d(x)) + self.skip(_group_frames(pixels, s))  # [B·T, C, h, w]
        return _frames_from_2d(z, b)  # [B, C, T, h, w]


class Decoder(nn.Module):
    def __init__(self, cfg: TinyVAEConfig):
        super().__init__()
        self.cfg = cfg
        widths = cfg.decoder_stage_widths
        c = widths[-1]
        self.inp = nn.Conv2d(cfg.latent_channels, c, 3, padding=1)
        self.temporal = nn.ModuleList(CausalTemporalBlock(c, cfg.temporal_kernel) for _ in range(cfg.temporal_blocks))
        self.expand = nn.Conv2d(c, c * cfg.temporal_stride, 1)
        self.skip = nn.Conv2d(cfg.latent_channels, 3 * cfg.spatial_stride**2 * cfg.temporal_stride, 1)
        stages = []
        for i in reversed(range(len(widths))):
            w = widths[i]
            out = widths[i - 1] if i > 0 else 3
            # Upsampling by depth-to-space: a conv at the low resolution makes 4× the channels.
            stages.append(nn.Sequential(ResBlock2d(w), nn.Conv2d(w, out * 4, 3, padding=1), nn.PixelShuffle(2)))
            if i > 0:
                stages.append(nn.ReLU())
        self.stages = nn.Sequential(*stages)
        # A per-frame post-filter on the decoded image at half resolution: it sees its target's
        # blurred version from the first step, so it learns sharpening faster than the deep path.
        r = cfg.refine_width
        self.refine = (
            nn.Sequential(nn.Conv2d(12, r, 3, padding=1), nn.ReLU(), nn.Conv2d(r, r, 3, padding=1), nn.ReLU(), nn.Conv2d(r, 12, 3, padding=1))
            if r
            else None
        )

    def forward(
        self, z: torch.Tensor, contexts: list[torch.Tensor] | None, first: bool
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Unnormalised latents [B, C, T, h, w] -> (frames [B, 3, F, H, W], contexts for the next chunk).

        contexts=None starts a sequence (zero left context); `first` says latent 0 is in this chunk,
        so it yields 1 frame instead of stride.
        """
        b = z.shape[0]
        s = self.cfg.temporal_stride
        z = z.to(self.inp.weight.dtype)  # the decoder may run in a lower precision than the VAE (`decode_in`)
        # 1. Causal mixing across latents, carrying each block's left context.
        x = _frames_from_2d(F.relu(self.inp(_frames_to_2d(z))), b)  # [B, c, T, h, w]
        new_contexts = []
        for i, block in enumerate(self.temporal):
            x, ctx = block(x, block.initial_context(x) if contexts is None else contexts[i])
            new_contexts.append(ctx)
        # 2. Each latent becomes stride sub-frames; latent 0 keeps only its last one.
        x = _ungroup_frames(F.relu(self.expand(_frames_to_2d(x))), b, s, first)  # [B·F, c, h, w]
        # 3. Per-frame spatial decoder, plus the linear path from the latent to its pixels.
        skip = _ungroup_frames(self.skip(_frames_to_2d(z)), b, s, first)  # [B·F, 3·S², h, w]
        if x.device.type == "cpu" and x.shape[0] > _CPU_FRAMES_PER_PASS:
            # Every layer from here on is per frame, so a few frames at a time give the same frames
            # while their activations stay in the core's cache (see _CPU_FRAMES_PER_PASS).
            y = torch.cat([self._spatial(xs, ss) for xs, ss in
                           zip(x.split(_CPU_FRAMES_PER_PASS), skip.split(_CPU_FRAMES_PER_PASS))])
        else:
            y = self._spatial(x, skip)
        return _frames_from_2d(y, b), new_contexts

    def _spatial(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Frame features [N, c, h, w] and their linear path [N, 3·S², h, w] -> frames [N, 3, H, W]."""
        y = self.stages(x) + F.pixel_shuffle(skip, self.cfg.spatial_stride)  # [N, 3, H, W]
        if self.refine is not None:
            y = y + F.pixel_shuffle(self.refine(F.pixel_unshuffle(y, 2)), 2)
        return y


class TinyVAE(nn.Module):
    """encode(video [B,3,F,H,W] in [-1,1]) -> latents [B,C,T,h,w]; decode(latents) -> video in [-1,1]."""

    def __init__(self, cfg: TinyVAEConfig | None = None):
        super().__init__()
        self.cfg = cfg or TinyVAEConfig()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        c = self.cfg.latent_channels
        self.register_buffer("latents_mean", torch.zeros(c))
        self.register_buffer("latents_std", torch.ones(c))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He init for every convolution and zero for the last one of each residual branch, so a fresh
        network is a well-scaled plain stack (PyTorch's default init shrinks the signal ~√3× per layer
        and a 20-layer stack without norms then barely trains)."""
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Conv3d)):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, ResBlock2d):
                nn.init.zeros_(m.conv2.weight)
            elif isinstance(m, CausalTemporalBlock):
                nn.init.zeros_(m.conv_s.weight)
        # The deep paths start silent: a fresh model is its linear path (see `Encoder.skip`).
        nn.init.zeros_(self.encoder.out.weight)
        nn.init.zeros_(self.decoder.stages[-1][1].weight)
        if self.decoder.refine is not None:
            nn.init.zeros_(self.decoder.refine[-1].weight)

    @property
    def latent_channels(self) -> int:
        return self.cfg.latent_channels

    @property
    def temporal_stride(self) -> int:
        return self.cfg.temporal_stride

    @property
    def spatial_stride(self) -> int:
        return self.cfg.spatial_stride

    def check_video(self, video: torch.Tensor) -> None:
        check_video(video, self.spatial_stride, self.temporal_stride)

    def check_latents(self, z: torch.Tensor) -> None:
        check_latents(z, self.latent_channels)

    def _stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        shape = (1, -1, 1, 1, 1)
        return self.latents_mean.view(shape), self.latents_std.view(shape)

    def _own_dtype(self, x: torch.Tensor) -> torch.Tensor:
        # Generators may hold latents in bf16/fp16; this network runs in its weights' dtype.
        return x.to(self.latents_mean.dtype)

    def encode_raw(self, video: torch.Tensor) -> torch.Tensor:
        """Unnormalised latents (the training path)."""
        self.check_video(video)
        return self.encoder(video)

    def decode_raw(self, e: torch.Tensor) -> torch.Tensor:
        """Frames from unnormalised latents, not clamped (the training path)."""
        self.check_latents(e)
        return self.decoder(e, None, first=True)[0]

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """video [B, 3, F, H, W] in [-1, 1], F = stride·k + 1 -> normalised latents [B, C, k + 1, H/s, W/s].

        Computed (and returned) in the VAE's dtype whatever the input's.
        """
        mean, std = self._stats()
        self.check_video(video)
        return (self.encode_raw(self._own_dtype(video)) - mean) / std

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, T, h, w] -> video [B, 3, stride·(T−1) + 1, h·s, w·s] in [-1, 1] (VAE's dtype)."""
        self.check_latents(latents)
        mean, std = self._stats()
        return self.finish(self.decoder(self._own_dtype(latents) * std + mean, None, first=True)[0])

    def decode_in(self, dtype: torch.dtype) -> TinyVAE:
        """Run the decoder's layers in `dtype` (e.g. `cpu_decoder_dtype()`); latents in and frames out stay in the
        VAE's own dtype, and the encoder and latent statistics are untouched. Returns self."""
        self.decoder.to(dtype)
        return self

    def finish(self, frames: torch.Tensor) -> torch.Tensor:
        """Decoded frames [B, 3, F, H, W] -> what is shown: cell seams smoothed (when `deblock_step`), in [-1, 1],
        in the VAE's dtype. Per frame, so the streamed decode and the whole one stay equal."""
        frames = self._own_dtype(frames)
        if self.cfg.deblock_step:
            frames = deblock(frames, self.spatial_stride, self.cfg.deblock_step, self.cfg.deblock_flat)
        return frames.clamp(-1, 1)

    def stream_decoder(self, batch_size: int) -> StreamDecoder:
        return StreamDecoder(self, batch_size)


class StreamDecoder:
    """Chunk-by-chunk decoding with a causal cache of temporal_blocks × (kernel − 1) latent-rate features.

    The first chunk (holding latent 0) yields 1 + stride·(Tc − 1) frames, later ones stride·Tc;
    their concatenation equals `vae.decode` of all latents.
    """

    def __init__(self, vae: TinyVAE, batch_size: int):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.vae = vae
        self.batch_size = batch_size
        self.contexts: list[torch.Tensor] | None = None
        self.latents_seen = 0
        self.grid: tuple[int, int] | None = None
        # A stacked decoder (`stack`) remembers each row's position, and its own when stacked, for `unstack`.
        self._rows_seen: tuple[list[int], int] | None = None

    def decode_chunk(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalised latents [B, C, Tc, h, w] -> frames [B, 3, F_c, H, W] in [-1, 1]."""
        self.vae.check_latents(latents)
        grid = check_stream_chunk(latents, self.batch_size, self.grid)
        mean, std = self.vae._stats()
        z = self.vae._own_dtype(latents) * std + mean
        frames, self.contexts = self.vae.decoder(z, self.contexts, first=self.latents_seen == 0)
        self.grid = grid
        self.latents_seen += latents.shape[2]
        return self.vae.finish(frames)

    def stack_key(self) -> tuple:
        """Decoders with equal keys stack (`stack`): the same VAE, all at a sequence's start or all past
        it, and the same latent grid."""
        return (id(self.vae), self.latents_seen == 0, self.grid)

    @staticmethod
    def stack(decoders: list[StreamDecoder]) -> StreamDecoder:
        """One decoder whose rows are the given decoders' (batch 1 each) caches, for one batched
        `decode_chunk`; `unstack` gives the rows back. ValueError unless their `stack_key`s agree."""
        if len({d.stack_key() for d in decoders}) != 1 or any(d.batch_size != 1 for d in decoders):
            raise ValueError("only batch-1 decoders of one VAE, grid and sequence position stack")
        out = StreamDecoder(decoders[0].vae, len(decoders))
        if decoders[0].contexts is not None:
            out.contexts = [torch.cat(parts) for parts in zip(*(d.contexts for d in decoders))]  # each [B, c, k-1, h, w]
        out.grid = decoders[0].grid
        out.latents_seen = decoders[0].latents_seen
        out._rows_seen = ([d.latents_seen for d in decoders], out.latents_seen)
        return out

    def unstack(self) -> list[StreamDecoder]:
        """The rows of a stacked decoder as batch-1 decoders, each advanced by what this one decoded."""
        rows_seen, stacked_at = self._rows_seen or ([self.latents_seen] * self.batch_size, self.latents_seen)
        decoded = self.latents_seen - stacked_at
        rows = []
        for i in range(self.batch_size):
            row = StreamDecoder(self.vae, 1)
            row.contexts = None if self.contexts is None else [c[i:i + 1] for c in self.contexts]
            row.grid, row.latents_seen = self.grid, rows_seen[i] + decoded
            rows.append(row)
        return rows

    def clone(self) -> StreamDecoder:
        """A copy of the causal cache (the VAE's weights are shared): a rewind snapshot."""
        out = StreamDecoder(self.vae, self.batch_size)
        out.contexts = None if self.contexts is None else [c.clone() for c in self.contexts]
        out.latents_seen, out.grid = self.latents_seen, self.grid
        return out

    def reset(self) -> None:
        self.contexts = None
        self.latents_seen = 0
        self.grid = None
