"""`ModelConfig`: every size and switch of the SANA-WM transformer, frozen and validated on creation.

Presets live in `PRESETS` (`sana_wm_1600m` = the official release numbers, `tiny` = the test and
laptop model). `ModelConfig.from_official_dict` reads the official / diffusers `config.json` keys.

Hybrid layout: block i is a softmax block when i is in `softmax_layers`, a Gated-DeltaNet block
otherwise. By default `softmax_layers` is derived from `softmax_every_n` as the official code does:
(i + 1) % n == 0, i.e. blocks 3, 7, 11, 15, 19 for depth 20 and n = 4.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

KEY_SCALINGS = ("dim_spatial", "none")
GDN_BACKENDS = ("naive", "chunk", "triton")
START_INTERPOLATIONS = ("bilinear", "bicubic")  # grid_sample modes of the start copy

# official config.json key -> our field
_OFFICIAL_RENAMES = {
    "in_channels": "in_channels",
    "num_layers": "depth",
    "hidden_size": "hidden_size",
    "num_attention_heads": "num_cross_heads",
    "linear_head_dim": "head_dim",
    "softmax_every_n": "softmax_every_n",
    "t_kernel_size": "t_kernel_size",
    "conv_kernel_size": "conv_kernel_size",
    "chunk_plucker_channels": "plucker_channels",
    "caption_channels": "caption_channels",
    "mlp_ratio": "mlp_ratio",
    "model_max_length": "model_max_length",
}
# official keys whose only supported value is the release's; anything else is a different model
_OFFICIAL_FIXED: dict[str, Any] = {
    "patch_size": (1, 1, 1),
    "ffn_type": "GLUMBConvTemp",
    "k_conv_only": True,
    "pos_embed_type": "wan_rope",
    "qk_norm": True,
    "cross_norm": True,
    "y_norm": True,
    "cam_attn_compress": 1,
    "use_chunk_plucker_post_attn": True,
    "mlp_acts": ("silu", "silu", None),
    "use_pe": True,
    "learn_sigma": False,
    "pred_sigma": False,
}
# official keys that change nothing in this implementation (bookkeeping, or flags whose effect is fixed here)
_OFFICIAL_HARMLESS = frozenset({
    "_class_name", "_diffusers_version", "_name_or_path", "_use_default_values",
    "init_cam_from_base",  # initialisation only; weights come from the checkpoint
    "fp32_attention",  # attention always runs in fp32 here
    "image_size",  # nominal; sizes come from the input
    "mixed_precision",  # the caller picks the dtype
})


@dataclass(frozen=True)
class ModelConfig:
    """Sizes and switches of `WorldModel`. Validated in `__post_init__` (ValueError naming the values)."""

    in_channels: int = 128
    out_channels: int = 128
    hidden_size: int = 2240
    depth: int = 20
    head_dim: int = 112  # official `linear_head_dim`; self-attention and camera heads = hidden_size / head_dim
    num_cross_heads: int = 20  # official `num_attention_heads` (cross-attention only)
    mlp_ratio: float = 3.0
    caption_channels: int = 2304
    model_max_length: int = 300  # rows of the y_embedding null-caption table
    softmax_every_n: int = 4  # 0 = no softmax blocks
    softmax_layers: tuple[int, ...] | None = None  # derived from softmax_every_n when None
    conv_kernel_size: int = 4  # GDN short conv on K (and camera K)
    t_kernel_size: int = 3  # FFN temporal conv
    plucker_channels: int = 48  # 6 * VAE temporal stride
    key_scaling: str = "dim_spatial"  # κ = 1/sqrt(D·S) ("dim_spatial") or κ = 1 ("none", for contrast)
    ucpe_rms_clip: bool = False  # True = diffusers' PostUCPERenorm; False = the released Triton path
    gdn_backend: str = "chunk"
    # softmax main-branch scale outside bidirectional mode: True = 1/sqrt(padded D) as the official cached
    # streaming path (D 112 padded to 128 before an unscaled SDPA); False = 1/sqrt(D) as its flex-attention
    # chunk-causal training path. See model.softmax_mixer.
    causal_scale_padded: bool = True
    # camera-branch K short conv across chunks: True = left context from earlier chunks like the main
    # branch (how the embedded tiny model was trained); False = the conv stays inside each chunk, no camera
    # conv cache, which is what the official streaming code runs ("cam K conv has no cross-chunk state",
    # fused_streaming.py @0d2318a) and what the streaming release is loaded with (model.profile)
    cam_conv_cross_chunk: bool = True
    # the clean anchor (newest clean latent before the chunk, rotation-warped into each frame's view) as a
    # zero-initialised extra input (model.anchor); the embedded model's own, no official key
    anchor_input: bool = False
    # with it, a zero-initialised per-token gate that blends the velocity towards copying the warped anchor
    # (model.anchor, "The copy gate"); needs anchor_input and out_channels == in_channels
    anchor_copy: bool = False
    # with it, the gate's still term: pulls the gate towards 1 by c·exp(−p/s), p how far the camera moved since
    # the anchor across each token's ray (metres), c zero-initialised (model.anchor, "The still term")
    anchor_copy_still: bool = False
    # > 0: after the copy gate, the tokens that see the ground plane this many metres below the first camera
    # (level) are pulled, by their own zero-initialised c_ground, towards the anchor warped by that plane
    # (model.anchor, "The ground"); 0: off. Needs anchor_copy
    anchor_ground_m: float = 0.0
    # after the copy gate (and the ground), every token whose point of the anchor stays in view is pulled, by a
    # zero-initialised c_depth, towards the anchor warped by the depth a small head predicts for it
    # (model.anchor_depth); exact under translation where the depth is right. Needs anchor_copy
    anchor_depth_copy: bool = False
    # > 0: last, every token whose point of the start frame (the stream's first latent) stays in view is pulled,
    # by a zero-initialised c_start faded by exp(−d / this many metres), d the camera's distance from the start,
    # towards the start latent warped by its predicted depth (model.anchor, "The start"); 0: off. Needs
    # anchor_depth_copy (its head gives the depth)
    anchor_start_fade_m: float = 0.0
    # how the start copy samples the start latent at its warped positions: "bilinear", or "bicubic", which keeps
    # more of the latent's fine structure between latent pixels (a bilinear sample half way between two latent
    # pixels is their mean, which the decoder paints as blur); the start latent is sampled once per view, so
    # bicubic's ringing cannot build up as it would in the depth copy's chunk-to-chunk chain
    anchor_start_interpolation: str = "bilinear"
    # > 0: after the start copy, the tokens no copy of a latent covers (what a turn or a step brings into view)
    # are pulled, by a zero-initialised c_background, towards the start frame's background at their ray's
    # elevation: the start latent's sky and far ground, told from near things by the depth head and flat
    # ground this many metres below the first camera (model.anchor, "The background"); 0: off. Needs
    # anchor_start_fade_m (the start and its depth)
    anchor_background_eye_m: float = 0.0
    # with it, a per-token gate on the background blend read from the network's last hidden state:
    # c_background·clamp(1 + g(LayerNorm(x)), 0, 1), g a zero-initialised linear (1: the blend as it was). Trained, it
    # can learn where the network knows the new view better than the start's background does (a hut it has seen
    # and the copies do not carry) and where it knows nothing (the wash after a fast turn). Needs anchor_background_eye_m
    anchor_background_gate: bool = False
    rope_theta: float = 10000.0
    gdn_eps: float = 1e-8
    qk_norm_eps: float = 1e-5
    cross_norm_eps: float = 1e-6
    y_norm_eps: float = 1e-5

    def __post_init__(self) -> None:
        positive = {
            "in_channels": self.in_channels, "out_channels": self.out_channels, "hidden_size": self.hidden_size,
            "depth": self.depth, "head_dim": self.head_dim, "num_cross_heads": self.num_cross_heads,
            "caption_channels": self.caption_channels, "model_max_length": self.model_max_length,
            "t_kernel_size": self.t_kernel_size, "plucker_channels": self.plucker_channels,
        }
        for name, value in positive.items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.hidden_size % self.head_dim:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by head_dim {self.head_dim}")
        if self.head_dim % 8:
            raise ValueError(
                f"head_dim {self.head_dim} must be divisible by 8: UCPE acts on 4-vector groups of the first half "
                "and RoPE on complex pairs of the second half"
            )
        if self.hidden_size % self.num_cross_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not divisible by num_cross_heads {self.num_cross_heads}")
        if not (self.mlp_ratio > 0) or int(self.hidden_size * self.mlp_ratio) <= 0:
            raise ValueError(f"mlp_ratio must be > 0, got {self.mlp_ratio!r}")
        if not isinstance(self.conv_kernel_size, int) or self.conv_kernel_size < 1:
            raise ValueError(f"conv_kernel_size must be an int >= 1, got {self.conv_kernel_size!r}")
        if self.t_kernel_size % 2 == 0:
            raise ValueError(f"t_kernel_size must be odd (centred temporal conv), got {self.t_kernel_size}")
        if not isinstance(self.softmax_every_n, int) or self.softmax_every_n < 0:
            raise ValueError(f"softmax_every_n must be an int >= 0, got {self.softmax_every_n!r}")
        if self.softmax_layers is None:
            n = self.softmax_every_n
            derived = tuple(i for i in range(self.depth) if n > 0 and (i + 1) % n == 0)
            object.__setattr__(self, "softmax_layers", derived)
        else:
            layers = tuple(self.softmax_layers)
            bad = [i for i in layers if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < self.depth]
            if bad:
                raise ValueError(f"softmax_layers {list(layers)} has indices out of range [0, {self.depth}): {bad}")
            if len(set(layers)) != len(layers) or list(layers) != sorted(layers):
                raise ValueError(f"softmax_layers must be strictly increasing block indices, got {list(layers)}")
            object.__setattr__(self, "softmax_layers", layers)
        if self.key_scaling not in KEY_SCALINGS:
            raise ValueError(f"key_scaling must be one of {KEY_SCALINGS}, got {self.key_scaling!r}")
        if self.gdn_backend not in GDN_BACKENDS:
            raise ValueError(f"gdn_backend must be one of {GDN_BACKENDS}, got {self.gdn_backend!r}")
        for name in ("ucpe_rms_clip", "causal_scale_padded", "cam_conv_cross_chunk", "anchor_input", "anchor_copy",
                     "anchor_copy_still", "anchor_depth_copy", "anchor_background_gate"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"ModelConfig.{name} must be a bool, got {getattr(self, name)!r}")
        if self.anchor_copy and not (self.anchor_input and self.out_channels == self.in_channels):
            raise ValueError("ModelConfig.anchor_copy needs anchor_input and out_channels == in_channels "
                             f"(got anchor_input={self.anchor_input}, {self.out_channels} != {self.in_channels})")
        if self.anchor_copy_still and not self.anchor_copy:
            raise ValueError("ModelConfig.anchor_copy_still needs anchor_copy (it is a term of the copy gate)")
        ground = self.anchor_ground_m
        if not (isinstance(ground, (int, float)) and not isinstance(ground, bool) and math.isfinite(ground) and ground >= 0):
            raise ValueError(f"ModelConfig.anchor_ground_m must be a finite number of metres >= 0, got {self.anchor_ground_m!r}")
        if self.anchor_ground_m > 0 and not self.anchor_copy:
            raise ValueError("ModelConfig.anchor_ground_m needs anchor_copy (it is a second blend of the copy gate)")
        if self.anchor_depth_copy and not self.anchor_copy:
            raise ValueError("ModelConfig.anchor_depth_copy needs anchor_copy (it is a blend after the copy gate)")
        fade = self.anchor_start_fade_m
        if not (isinstance(fade, (int, float)) and not isinstance(fade, bool) and math.isfinite(fade) and fade >= 0):
            raise ValueError(f"ModelConfig.anchor_start_fade_m must be a finite number of metres >= 0, got {fade!r}")
        if fade > 0 and not self.anchor_depth_copy:
            raise ValueError("ModelConfig.anchor_start_fade_m needs anchor_depth_copy (its head gives the start's depth)")
        if self.anchor_background_gate and not self.anchor_background_eye_m > 0:
            raise ValueError("ModelConfig.anchor_background_gate needs anchor_background_eye_m (it gates the background "
                             "copy)")
        if self.anchor_start_interpolation not in START_INTERPOLATIONS:
            raise ValueError(f"ModelConfig.anchor_start_interpolation must be one of {START_INTERPOLATIONS}, "
                             f"got {self.anchor_start_interpolation!r}")
        if self.anchor_start_interpolation != "bilinear" and not fade > 0:
            raise ValueError("ModelConfig.anchor_start_interpolation needs anchor_start_fade_m (it is how the start copy "
                             "samples)")
        eye = self.anchor_background_eye_m
        if not (isinstance(eye, (int, float)) and not isinstance(eye, bool) and math.isfinite(eye) and eye >= 0):
            raise ValueError(f"ModelConfig.anchor_background_eye_m must be a finite number of metres >= 0, got {eye!r}")
        if eye > 0 and not fade > 0:
            raise ValueError("ModelConfig.anchor_background_eye_m needs anchor_start_fade_m (the start copy's latent and depth)")
        for name in ("rope_theta", "gdn_eps", "qk_norm_eps", "cross_norm_eps", "y_norm_eps"):
            if not getattr(self, name) > 0:
                raise ValueError(f"ModelConfig.{name} must be > 0, got {getattr(self, name)!r}")

    @property
    def num_heads(self) -> int:
        """Self-attention (GDN / softmax) and camera-branch heads."""
        return self.hidden_size // self.head_dim

    @property
    def mlp_hidden(self) -> int:
        return int(self.hidden_size * self.mlp_ratio)

    def is_softmax(self, index: int) -> bool:
        return index in self.softmax_layers

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with `changes` applied (validated again). `softmax_layers` is re-derived unless given."""
        if "softmax_layers" not in changes and ("softmax_every_n" in changes or "depth" in changes):
            changes["softmax_layers"] = None
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["softmax_layers"] = list(self.softmax_layers)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        """Our own field names (the inverse of `to_dict`); unknown keys raise ValueError."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"unknown ModelConfig keys {unknown}; known: {sorted(fields)}")
        d = dict(d)
        if d.get("softmax_layers") is not None:
            d["softmax_layers"] = tuple(d["softmax_layers"])
        return cls(**d)

    @classmethod
    def from_official_dict(cls, d: dict[str, Any], **overrides: Any) -> ModelConfig:
        """Build from the official / diffusers `config.json` keys (`num_layers`, `linear_head_dim`, ...).

        Unknown keys raise ValueError listing them; keys in `_OFFICIAL_HARMLESS` are ignored; keys in
        `_OFFICIAL_FIXED` must hold the release's value. `overrides` are our own field names.
        """
        unknown = sorted(k for k in d if k not in _OFFICIAL_RENAMES and k not in _OFFICIAL_FIXED
                         and k not in _OFFICIAL_HARMLESS and k != "chunk_plucker_post_attn_blocks")
        if unknown:
            raise ValueError(f"unknown keys in the official model config: {unknown}")
        for key, expected in _OFFICIAL_FIXED.items():
            if key in d:
                value = tuple(d[key]) if isinstance(d[key], list) else d[key]
                if value != expected:
                    raise ValueError(f"official config key {key!r} = {d[key]!r} is not supported (only {expected!r})")
        kwargs: dict[str, Any] = {_OFFICIAL_RENAMES[k]: v for k, v in d.items() if k in _OFFICIAL_RENAMES}
        if "mlp_ratio" in kwargs:
            kwargs["mlp_ratio"] = float(kwargs["mlp_ratio"])
        if "in_channels" in kwargs:
            kwargs.setdefault("out_channels", kwargs["in_channels"])
        kwargs.update(overrides)
        config = cls(**kwargs)
        blocks = d.get("chunk_plucker_post_attn_blocks", config.depth)
        if not isinstance(blocks, int) or 0 <= blocks < config.depth:
            raise ValueError(
                f"chunk_plucker_post_attn_blocks = {blocks!r}: only a Plücker projection in every block "
                f"(a value < 0 or >= num_layers = {config.depth}) is supported"
            )
        return config

    def to_official_dict(self) -> dict[str, Any]:
        """The official / diffusers config.json keys of this config (for diffusers' reference model).

        Raises ValueError for what the official keys cannot express: softmax blocks that are not
        every n-th, out_channels != in_channels, or the anchor input.
        """
        derived = ModelConfig.replace(self, softmax_layers=None).softmax_layers
        if derived != self.softmax_layers:
            raise ValueError(f"softmax_layers {list(self.softmax_layers)} are not every {self.softmax_every_n}-th block")
        if self.out_channels != self.in_channels:
            raise ValueError(f"out_channels {self.out_channels} != in_channels {self.in_channels} has no official key")
        if self.anchor_input:
            raise ValueError("anchor_input (the embedded model's clean-anchor input) has no official key")
        renamed = {ours: theirs for theirs, ours in _OFFICIAL_RENAMES.items()}
        return {renamed[name]: getattr(self, name) for name in renamed if name != "model_max_length"}

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> ModelConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown ModelConfig preset {name!r}; known: {sorted(PRESETS)}")
        return PRESETS[name].replace(**overrides) if overrides else PRESETS[name]


PRESETS: dict[str, ModelConfig] = {
    # The official release (configs/sana_wm/sana_wm_1600m_720p.yaml): about 2.66 B parameters.
    "sana_wm_1600m": ModelConfig(),
    # Tests and the laptop model: 4 blocks, block 3 softmax, 2 heads of 32.
    "tiny": ModelConfig(
        in_channels=16,
        out_channels=16,
        hidden_size=64,
        depth=4,
        head_dim=32,
        num_cross_heads=2,
        mlp_ratio=2.0,
        caption_channels=32,
        model_max_length=8,
        plucker_channels=24,
    ),
}
