"""Loading SANA-WM checkpoints from local folders in the official release layouts.

Layouts recognised by `find_checkpoint(folder)`:

- ``bidirectional``: ``config.json`` (diffusers-style keys) and ``dit/*.safetensors``, the
  ``SANA-WM_bidirectional`` release. The chunk-causal teacher release uses the same layout.
- ``diffusers``: ``transformer/config.json`` and ``transformer/diffusion_pytorch_model*.safetensors``
  (what diffusers' ``save_pretrained`` writes), or the same two files directly in the folder.
- ``streaming``: ``sana_dit/model.pt``, the distilled ``SANA-WM_streaming`` release, whose tensors sit
  under a ``generator`` entry and/or behind a ``model.`` prefix. A ``config.json`` beside it (in the
  folder or in ``sana_dit/``) is used when present; otherwise the config is inferred from the shapes.

Key conventions. Our module names are the official Sana ones (``t_embedder.mlp.0``). Checkpoints
written by diffusers name the timestep MLP ``t_embedder.linear_1`` / ``linear_2`` and leave out the
``y_embedder.y_embedding`` null-caption buffer; `normalize_state_dict` renames the former and, for
that format only, keeps the model's own null-caption table for the latter. The ``pos_embed`` buffer
of the official files is dropped (RoPE tables are computed, not stored). Everything else must match
exactly: a missing, unexpected or wrongly shaped key raises `CheckpointError` naming the file and the
keys. A load is never partial.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

# diffusers name -> official name, applied as prefix replacements.
_DIFFUSERS_TO_OFFICIAL = {
    "t_embedder.linear_1.": "t_embedder.mlp.0.",
    "t_embedder.linear_2.": "t_embedder.mlp.2.",
}
# Present in official files, never in ours.
_DROPPED_KEYS = ("pos_embed",)
# Official buffers that diffusers-format files leave out; the model keeps its own values.
_OPTIONAL_IN_DIFFUSERS_FORMAT = ("y_embedder.y_embedding",)
# Wrappers used by training scripts around the model's state dict, outermost first.
_WRAPPER_KEYS = ("generator", "generator_ema", "state_dict", "model", "module")


class CheckpointError(ValueError):
    """A checkpoint folder or file that cannot be loaded exactly; the message names file and keys."""


@dataclass(frozen=True)
class CheckpointFiles:
    """Where a release keeps its config and weights."""

    layout: str  # "bidirectional" | "diffusers" | "streaming"
    weights: tuple[Path, ...]
    config: Path | None


def find_checkpoint(folder: str | Path) -> CheckpointFiles:
    """Locate the config and weight files of a release folder (see the module docstring)."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise CheckpointError(f"model folder {str(root)!r} does not exist or is not a directory")

    def first_existing(*candidates: Path) -> Path | None:
        return next((c for c in candidates if c.is_file()), None)

    dit = sorted((root / "dit").glob("*.safetensors")) if (root / "dit").is_dir() else []
    if dit:
        return CheckpointFiles("bidirectional", tuple(dit), first_existing(root / "config.json", root / "dit" / "config.json"))
    for base in (root / "transformer", root):
        shards = sorted(base.glob("diffusion_pytorch_model*.safetensors"))
        if shards:
            return CheckpointFiles("diffusers", tuple(shards), first_existing(base / "config.json"))
    streaming = root / "sana_dit" / "model.pt"
    if streaming.is_file():
        return CheckpointFiles("streaming", (streaming,), first_existing(root / "sana_dit" / "config.json", root / "config.json"))
    found = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())[:20]
    raise CheckpointError(
        f"no SANA-WM weights found in {str(root)!r}: expected dit/*.safetensors (bidirectional release), "
        f"transformer/diffusion_pytorch_model*.safetensors (diffusers) or sana_dit/model.pt (streaming release); "
        f"the folder holds {found}"
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read one weight file (safetensors or a torch pickle loaded with weights_only=True)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except CheckpointError:
        raise
    except Exception as error:  # corrupt or truncated files surface many exception types
        raise CheckpointError(f"cannot read weights file {str(path)!r}: {type(error).__name__}: {error}") from error
    return unwrap_state_dict(obj, path)


def unwrap_state_dict(obj: object, path: Path | str = "<memory>") -> dict[str, torch.Tensor]:
    """Peel training wrappers (``{"generator": {...}}`` etc.) off until a flat tensor dict remains."""
    for _ in range(len(_WRAPPER_KEYS) + 1):
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return dict(obj)
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    kind = type(obj).__name__
    keys = list(obj)[:10] if isinstance(obj, dict) else []
    raise CheckpointError(
        f"{str(path)!r} holds no flat state dict of tensors (found a {kind}"
        + (f" with keys {keys}" if keys else "")
        + f"; looked inside {list(_WRAPPER_KEYS)})"
    )


def normalize_state_dict(state_dict: dict[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """Strip the ``model.`` prefix, drop ``pos_embed`` and rename diffusers keys to official names."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith("model."):
            key = key[len("model."):]
        if key in _DROPPED_KEYS:
            continue
        for old, new in _DIFFUSERS_TO_OFFICIAL.items():
            if key.startswith(old):
                key = new + key[len(old):]
        if key in out:
            raise CheckpointError(f"key {key!r} occurs twice after normalising the {layout} checkpoint's key names")
        out[key] = value
    return out


def load_state_dict_exact(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], source: str, *, optional: tuple[str, ...] = ()) -> None:
    """Copy `state_dict` into `model`, or raise `CheckpointError` naming every missing, unexpected
    and wrongly shaped key. `optional` keys may be absent (the model keeps its own values)."""
    expected = model.state_dict()
    missing = sorted(k for k in expected if k not in state_dict and k not in optional)
    unexpected = sorted(k for k in state_dict if k not in expected)
    wrong_shape = sorted(
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in state_dict
        if k in expected and state_dict[k].shape != expected[k].shape
    )
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrongly shaped", wrong_shape)):
        if items:
            shown = ", ".join(items[:12]) + (f", ... ({len(items) - 12} more)" if len(items) > 12 else "")
            problems.append(f"{len(items)} {label} key(s): {shown}")
    if problems:
        raise CheckpointError(f"checkpoint {source} does not match the model: " + "; ".join(problems))
    absent = [k for k in optional if k in expected and k not in state_dict]
    if absent:
        # Meta-built models hold no values for keys the file leaves out: give them a defined one.
        logger.warning("checkpoint %s has no %s; using zeros (diffusers-format files leave it out)", source, absent)
    merged = {**{k: torch.zeros_like(expected[k], device="cpu") for k in absent}, **state_dict}
    missing_after = [k for k in expected if k not in merged]
    assert not missing_after, missing_after
    model.load_state_dict(merged, strict=True, assign=False)


def read_config(path: Path) -> dict:
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read model config {str(path)!r}: {error}") from error
    if not isinstance(config, dict):
        raise CheckpointError(f"model config {str(path)!r} must be a JSON object, got {type(config).__name__}")
    return config


def load_pretrained(folder: str | Path, *, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                    config_overrides: dict | None = None):
    """Build a `WorldModel` from a release folder and load its weights exactly. `config_overrides` (our
    `ModelConfig` field names) change how the weights are run, e.g. `cam_conv_cross_chunk` for a streaming
    release (model.profile); they cannot change a shape, the exact load would fail."""
    from model.config import ModelConfig
    from model.transformer import WorldModel

    files = find_checkpoint(folder)
    state_dict: dict[str, torch.Tensor] = {}
    for path in files.weights:
        shard = normalize_state_dict(read_weights(path), files.layout)
        clash = sorted(set(shard) & set(state_dict))
        if clash:
            raise CheckpointError(f"weights file {str(path)!r} repeats keys of an earlier shard: {clash[:10]}")
        state_dict.update(shard)
    source = ", ".join(repr(str(p)) for p in files.weights)
    source += f" (model config from {str(files.config)!r})" if files.config is not None else " (model config inferred from its shapes)"
    if files.config is not None:
        try:
            config = ModelConfig.from_official_dict(read_config(files.config))
        except CheckpointError:
            raise
        except ValueError as error:
            raise CheckpointError(f"model config {str(files.config)!r} is not valid: {error}") from error
    else:
        config = infer_config(state_dict, source)
    if config_overrides:
        config = config.replace(**config_overrides)
    with torch.device("meta"):
        model = WorldModel(config)
    # Every tensor of the model is in its state dict (no non-persistent buffers), so after the exact
    # load below nothing is left uninitialised by building on the meta device.
    model = model.to_empty(device=device or "cpu")
    optional = _OPTIONAL_IN_DIFFUSERS_FORMAT if files.layout == "diffusers" else ()
    load_state_dict_exact(model, state_dict, source, optional=optional)
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.eval()


def infer_config(state_dict: dict[str, torch.Tensor], source: str):
    """Recover a `ModelConfig` from tensor shapes, for releases that ship no config.json."""
    from model.config import ModelConfig

    def shape(key: str) -> tuple[int, ...]:
        if key not in state_dict:
            raise CheckpointError(f"checkpoint {source} lacks {key!r}, needed to infer the model config (add a config.json)")
        return tuple(state_dict[key].shape)

    hidden, in_channels = shape("x_embedder.proj.weight")[:2]
    depth = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
    heads = shape("blocks.0.attn.A_log")[0]
    softmax_layers = tuple(i for i in range(depth) if f"blocks.{i}.attn.conv_k.weight" not in state_dict)
    official = {
        "in_channels": in_channels,
        "num_layers": depth,
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "linear_head_dim": hidden // heads,
        "caption_channels": shape("y_embedder.y_proj.fc1.weight")[1],
        "chunk_plucker_channels": shape("plucker_embedder.proj.weight")[1],
        "mlp_ratio": shape("blocks.0.mlp.inverted_conv.conv.weight")[0] / 2 / hidden,
        "t_kernel_size": shape("blocks.0.mlp.t_conv.weight")[2],
    }
    if "y_embedder.y_embedding" in state_dict:
        official["model_max_length"] = shape("y_embedder.y_embedding")[0]
    gdn_block = next((i for i in range(depth) if i not in softmax_layers), None)
    if gdn_block is not None:
        official["conv_kernel_size"] = shape(f"blocks.{gdn_block}.attn.conv_k.weight")[2]
    config = ModelConfig.from_official_dict(official)
    if tuple(config.softmax_layers) != softmax_layers:
        raise CheckpointError(
            f"checkpoint {source} has softmax blocks at {list(softmax_layers)}, which no softmax_every_n setting gives "
            f"(inferred {list(config.softmax_layers)}); add a config.json"
        )
    return config
