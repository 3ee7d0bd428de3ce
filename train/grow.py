"""Grow a trained model deeper without changing what it computes (function-preserving growth).

    grown = append_blocks(model, ("softmax",))      # depth 4 -> 5, block 4 softmax

Each appended block starts as a copy of the model's last block of the same kind (softmax or GDN),
so its projections, norms and gates are already tuned to the model's features, and then every path
by which a block writes into the residual stream is zeroed:

    attn.proj                         the self-attention (its camera branch's out_proj_cam feeds it, so
                                      it keeps the donor's weights and starts to matter once proj moves)
    plucker_proj                      the Plücker injection
    cross_attn.proj                   the text cross-attention
    mlp.point_conv                    the FFN (its temporal conv reads p = point_conv(...) and adds p)

With those zero the block adds exactly 0 to x, so the grown model's output equals the original's,
bit for bit, in every mode (bidirectional, chunk-causal, streaming). Training then only has to learn
what the new block adds: the gradient reaches the zeroed projections at once (their input is the
copied block's non-zero features) and flows to the rest after the first update. Nothing is zeroed that
only feeds a zeroed writer: zeroing both proj and out_proj_cam would leave the camera branch's gradient
at zero until proj had grown, a saddle the copied weights avoid.
`add_anchor_input(model)` grows the model the same way by an input instead of a block: the clean
anchor (`model.anchor`, `ModelConfig.anchor_input`) through a zero `anchor_embedder`, so again the
output is unchanged until training moves it. A single zero linear after a non-zero input gets its
gradient at once (unlike the Plücker branch's two stacked zero linears).

Why: the embedded model's second softmax block is meant to look the start image up token by token
(only softmax attention can; a GDN block keeps a D×D summary), and growing it from the trained
weights keeps the hours of CPU training that went into them.
"""
from __future__ import annotations

import math

from collections.abc import Sequence

import torch

from model import ModelConfig, WorldModel

KINDS = ("softmax", "gdn")

# Parameters through which a block writes to the residual stream; zero => the block is the identity.
RESIDUAL_WRITERS = (
    "attn.proj.weight", "attn.proj.bias",
    "plucker_proj.weight", "plucker_proj.bias",
    "cross_attn.proj.weight", "cross_attn.proj.bias",
    "mlp.point_conv.conv.weight",
)


def grown_config(config: ModelConfig, kinds: Sequence[str]) -> ModelConfig:
    """`config` with one block appended per entry of `kinds` ("softmax" or "gdn"), in order."""
    if not kinds:
        raise ValueError("append_blocks needs at least one block kind to append")
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise ValueError(f"unknown block kind(s) {unknown}; known: {list(KINDS)}")
    softmax = list(config.softmax_layers)
    for offset, kind in enumerate(kinds):
        if kind == "softmax":
            softmax.append(config.depth + offset)
    return config.replace(depth=config.depth + len(kinds), softmax_layers=tuple(softmax))


def append_blocks(model: WorldModel, kinds: Sequence[str]) -> WorldModel:
    """A new WorldModel (train mode, float32 on the CPU) computing exactly what `model` does, with blocks appended.

    Each new block copies the last existing block of its kind; ValueError if the model has none of that
    kind (there is nothing trained to copy, and a fresh block would not be tuned to the model's features).
    """
    config = grown_config(model.config, kinds)
    old_depth = model.config.depth
    # new block index -> the existing block it copies (checked before anything is built)
    donors = {block: _last_block_of_kind(model.config, "softmax" if config.is_softmax(block) else "gdn")
              for block in range(old_depth, config.depth)}
    source = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    grown = WorldModel(config)
    state: dict[str, torch.Tensor] = {}
    for key in grown.state_dict():
        block = int(key.split(".", 2)[1]) if key.startswith("blocks.") else -1
        if block not in donors:
            state[key] = source[key].clone()
            continue
        rest = key.split(".", 2)[2]
        state[key] = source[f"blocks.{donors[block]}.{rest}"].clone()
        if rest in RESIDUAL_WRITERS:
            state[key].zero_()
    grown.load_state_dict(state, strict=True)
    return grown.train()


def add_anchor_input(model: WorldModel, copy_gate: bool = False, copy_still: bool = False, ground_m: float = 0.0
                     ) -> WorldModel:
    """A new WorldModel (train mode, float32 on the CPU) computing exactly what `model` does, with the
    anchor input (`ModelConfig.anchor_input`) added through its zero-initialised embedder if it has none,
    with `copy_gate` the zero-initialised copy gate (`ModelConfig.anchor_copy`) too, with `copy_still`
    the gate's still term (`ModelConfig.anchor_copy_still`, and the gate if it has none) at c = 0, and
    with `ground_m` > 0 the ground-plane copy (`ModelConfig.anchor_ground_m`, and the gate and input if
    missing) at c_ground = 0."""
    config = model.config
    ground_m = ground_m or config.anchor_ground_m
    wanted = config.replace(anchor_input=True, anchor_copy=config.anchor_copy or copy_gate or copy_still or ground_m > 0,
                            anchor_copy_still=config.anchor_copy_still or copy_still, anchor_ground_m=ground_m)
    if wanted == config:
        has = [name for name, on in (("the anchor input", True), ("the copy gate", config.anchor_copy),
                                     ("its still term", config.anchor_copy_still),
                                     ("the ground-plane copy", config.anchor_ground_m > 0)) if on]
        raise ValueError("the model already has " + ", ".join(has))
    return _with_new_parts(model, wanted)


def add_anchor_depth_copy(model: WorldModel, copy_depth_c: float = 0.0) -> WorldModel:
    """A new WorldModel (train mode, float32 on the CPU) computing what `model` does plus the depth copy
    (`ModelConfig.anchor_depth_copy`, model.anchor_depth) with its head freshly initialised and c_depth =
    `copy_depth_c`: at 0 the output is unchanged. `model` must have the copy gate."""
    config = model.config
    if config.anchor_depth_copy:
        raise ValueError("the model already has the depth copy")
    if not config.anchor_copy:
        raise ValueError("the depth copy is a blend after the copy gate: grow the model with --anchor-copy first")
    return _with_blend(model, config.replace(anchor_depth_copy=True), "copy_depth", copy_depth_c, "c_depth")


def add_anchor_start_copy(model: WorldModel, fade_m: float, copy_start_c: float = 0.0) -> WorldModel:
    """A new WorldModel (train mode, float32 on the CPU) computing what `model` does plus the start copy
    (`ModelConfig.anchor_start_fade_m` = `fade_m`, model.anchor "The start") at c_start = `copy_start_c`: at 0
    the output is unchanged. `model` must have the depth copy, whose head gives the start frame's depth."""
    config = model.config
    if config.anchor_start_fade_m > 0:
        raise ValueError("the model already has the start copy")
    if not config.anchor_depth_copy:
        raise ValueError("the start copy warps the start frame by the depth copy's head: the model has no depth copy "
                         "(train depth-head adds it)")
    if not (math.isfinite(fade_m) and fade_m > 0):
        raise ValueError(f"the start copy's fade must be a finite number of metres > 0, got {fade_m}")
    return _with_blend(model, config.replace(anchor_start_fade_m=float(fade_m)), "copy_start", copy_start_c, "c_start")


def with_start_interpolation(model: WorldModel, interpolation: str) -> WorldModel:
    """A new WorldModel (train mode, float32 on the CPU) with `model`'s weights whose start copy samples the start
    latent with `interpolation` (`ModelConfig.anchor_start_interpolation`); nothing is trained, the output changes
    wherever the start copy lands between latent pixels. `model` must have the start copy."""
    config = model.config
    if not config.anchor_start_fade_m > 0:
        raise ValueError("the start interpolation is how the start copy samples: the model has no start copy "
                         "(grow it with --anchor-start-fade-m first)")
    return _with_new_parts(model, config.replace(anchor_start_interpolation=interpolation))


def add_anchor_background_copy(model: WorldModel, eye_m: float, copy_background_c: float = 0.0) -> WorldModel:
    """A new WorldModel (train mode, float32 on the CPU) computing what `model` does plus the background copy
    (`ModelConfig.anchor_background_eye_m` = `eye_m`, model.anchor "The background") at c_background =
    `copy_background_c`: at 0 the output is unchanged. `model` must have the start copy (its latent and depth)."""
    config = model.config
    if config.anchor_background_eye_m > 0:
        raise ValueError("the model already has the background copy")
    if not config.anchor_start_fade_m > 0:
        raise ValueError("the background copy reads the start copy's latent and depth: the model has no start copy "
                         "(grow it with --anchor-start-fade-m first)")
    if not (math.isfinite(eye_m) and eye_m > 0):
        raise ValueError(f"the background copy's eye height must be a finite number of metres > 0, got {eye_m}")
    return _with_blend(model, config.replace(anchor_background_eye_m=float(eye_m)), "copy_background", copy_background_c,
                       "c_background")


def add_background_gate(model: WorldModel) -> WorldModel:
    """A new WorldModel (train mode, float32 on the CPU) computing what `model` does plus the background copy's
    per-token gate (`ModelConfig.anchor_background_gate`), zero, so the blend and the output are unchanged until
    training moves it. `model` must have the background copy."""
    config = model.config
    if config.anchor_background_gate:
        raise ValueError("the model already has the background gate")
    if not config.anchor_background_eye_m > 0:
        raise ValueError("the background gate gates the background copy: the model has no background copy "
                         "(grow it with --anchor-background-eye-m first)")
    return _with_new_parts(model, config.replace(anchor_background_gate=True))


def _with_blend(model: WorldModel, config: ModelConfig, parameter: str, c: float, c_name: str) -> WorldModel:
    """`_with_new_parts` for a model whose new part is a copy blend: its weight `parameter` set to c, checked to be
    in [0, 1] first (named `c_name` in the error), in train mode."""
    if not 0.0 <= c <= 1.0:
        raise ValueError(f"{c_name} must be in [0, 1], got {c}")
    grown = _with_new_parts(model, config)
    with torch.no_grad():
        getattr(grown, parameter).fill_(c)
    return grown.train()


def _with_new_parts(model: WorldModel, config: ModelConfig) -> WorldModel:
    """A WorldModel of `config` (train mode, float32 on the CPU) holding `model`'s weights; the parts `config`
    adds keep the constructor's values (zero embedder, gate and c: they add nothing)."""
    grown = WorldModel(config)
    state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
    for key, value in grown.state_dict().items():
        if key not in state:
            state[key] = value.detach().clone()
    grown.load_state_dict(state, strict=True)
    return grown.train()


def _last_block_of_kind(config: ModelConfig, kind: str) -> int:
    blocks = [i for i in range(config.depth) if config.is_softmax(i) == (kind == "softmax")]
    if not blocks:
        raise ValueError(f"the model has no {kind} block to copy (depth {config.depth}, "
                         f"softmax layers {list(config.softmax_layers)})")
    return blocks[-1]
