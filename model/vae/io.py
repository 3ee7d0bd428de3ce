"""Saving and strictly loading TinyVAE weights as one safetensors file.

The file holds every parameter and buffer (latent mean/std included), in float16 by default (half
the size; the model runs in float32 after loading), and in its metadata `format` = "roam-tiny-vae"
and the `config` as JSON, so the file alone rebuilds the model.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from model.vae.tiny_vae import TinyVAE, TinyVAEConfig

DEFAULT_WEIGHTS = Path(__file__).resolve().parent / "weights" / "tiny_vae.safetensors"
FORMAT = "roam-tiny-vae"


def save_tiny_vae(
    vae: TinyVAE, path: str | Path, extra_metadata: dict[str, str] | None = None, dtype: torch.dtype = torch.float16
) -> Path:
    """Write vae's state dict (as `dtype`) and config to `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    metadata = {"format": FORMAT, "config": json.dumps(vae.cfg.to_dict())}
    metadata.update(extra_metadata or {})
    if not dtype.is_floating_point:
        raise ValueError(f"weights dtype must be a floating-point type, got {dtype}")
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in vae.state_dict().items()}
    save_file(tensors, str(path), metadata=metadata)
    return path


def load_tiny_vae(path: str | Path | None = None, device: str | torch.device = "cpu") -> TinyVAE:
    """Build the TinyVAE described by the file's metadata and load its weights strictly (eval mode).

    Raises FileNotFoundError if the file is missing and ValueError if it is not a TinyVAE file or
    its tensors do not match the model (missing, unexpected or misshapen keys are named).
    """
    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"TinyVAE weights not found: {path}")
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        if metadata.get("format") != FORMAT or "config" not in metadata:
            raise ValueError(f"{path} is not a TinyVAE weights file (metadata format={metadata.get('format')!r})")
        state = {k: f.get_tensor(k).to(torch.float32) for k in f.keys()}
    config = json.loads(metadata["config"])
    try:
        cfg = TinyVAEConfig(**config)
    except TypeError as error:
        raise ValueError(f"{path}: bad TinyVAE config {config}: {error}") from error
    vae = TinyVAE(cfg)
    expected = vae.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = [f"{k}: file {tuple(state[k].shape)} vs model {tuple(v.shape)}" for k, v in expected.items() if k in state and state[k].shape != v.shape]
    if missing or unexpected or misshapen:
        raise ValueError(f"{path} does not match TinyVAE({cfg}): missing {missing}, unexpected {unexpected}, misshapen {misshapen}")
    vae.load_state_dict(state, strict=True)
    return vae.to(device).eval()
