"""The embedded (shipped) tiny model: weights as safetensors plus a JSON of its config and provenance.

    model/weights/roam_tiny.safetensors     every parameter, float32
    model/weights/roam_tiny.json            {"model": {...ModelConfig fields (the key model.release reads)...}, "vae_tag": ..., "generator": {...}, ...}

    from train.embedded import load_weights
    model = load_weights()              # the shipped model, eval mode
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from model import ModelConfig, WorldModel

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "model" / "weights"
EMBEDDED_WEIGHTS = WEIGHTS_DIR / "roam_tiny.safetensors"


def config_path(weights: str | Path) -> Path:
    return Path(weights).with_suffix(".json")


def save_weights(model: WorldModel, path: str | Path, info: dict[str, Any] | None = None) -> Path:
    """Write `model`'s state dict (float32) to `path` and its config + `info` to the sibling .json."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": "roam-world-model"})
    meta = {"model": model.config.to_dict(), **(info or {})}
    config_path(path).write_text(json.dumps(meta, indent=2) + "\n")
    return path


def read_info(path: str | Path | None = None) -> dict[str, Any]:
    """The .json next to the weights (config and provenance)."""
    path = Path(path) if path is not None else EMBEDDED_WEIGHTS
    cfg = config_path(path)
    if not cfg.is_file():
        raise FileNotFoundError(f"model config {cfg} not found (it travels with {path.name})")
    return json.loads(cfg.read_text())


def load_weights(path: str | Path | None = None, device: str | torch.device = "cpu") -> WorldModel:
    """Build the model from the .json config and load the weights strictly (eval mode).

    FileNotFoundError if either file is missing; ValueError naming missing, unexpected or misshapen keys.
    """
    path = Path(path) if path is not None else EMBEDDED_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"model weights {path} not found")
    model = WorldModel(ModelConfig.from_dict(read_info(path)["model"]))
    state = load_file(str(path))
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or misshapen:
        raise ValueError(f"{path} does not match its config: missing {missing}, unexpected {unexpected}, misshapen {misshapen}")
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()
