"""Tiny random SANA-WM releases in the official folder layouts, written for tests (no downloads).

    write_bidirectional(root)   config.json + dit/*.safetensors ("model." keys, pos_embed) + vae/ (non-causal decoder)
    write_chunk_causal(root)    config.json + dit/*.safetensors only (the teacher release ships no VAE)
    write_streaming(root)       sana_dit/model.pt ({"generator": {"model.*": ...}}, no config.json) + ltx2_causal_vae/

Every folder also holds a `roam.json` with a 64x64 generation size and 1-latent chunks so CPU tests stay fast.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

# Official config.json keys of a 4-block DiT (block 3 softmax) in the tiny VAE's latent space.
DIT_CONFIG = {
    "_class_name": "SanaWMTransformer3DModel",
    "in_channels": 8,
    "num_layers": 4,
    "hidden_size": 32,
    "num_attention_heads": 2,
    "linear_head_dim": 16,
    "caption_channels": 32,
    "chunk_plucker_channels": 48,
    "mlp_ratio": 2.0,
    "model_max_length": 8,
    "softmax_every_n": 4,
    "patch_size": [1, 1, 1],
}
# A scaled-down LTX-2 VAE: the release's layer pattern (strides 8 in time, 32 in space), 8 latent channels.
VAE_CONFIG = dict(
    in_channels=3, out_channels=3, latent_channels=8,
    block_out_channels=(8, 16, 32, 64), decoder_block_out_channels=(8, 16, 32),
    layers_per_block=(1, 1, 1, 1, 1), decoder_layers_per_block=(1, 1, 1, 1),
    spatio_temporal_scaling=(True, True, True, True), decoder_spatio_temporal_scaling=(True, True, True),
    decoder_inject_noise=(False, False, False, False),
    downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
    upsample_type=("spatiotemporal", "spatiotemporal", "spatiotemporal"),
    upsample_residual=(True, True, True), upsample_factor=(2, 2, 2),
    patch_size=4, patch_size_t=1, scaling_factor=0.9,
)
ROAM_SETTINGS = {"height": 64, "width": 64, "chunk_latents": 1, "hfov_deg": 70.0}


def random_dit(seed: int = 0):
    from model import WorldModel

    torch.manual_seed(seed)
    model = WorldModel.from_config(DIT_CONFIG)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn_like(tensor) * 0.05)
    return model.eval()


def random_ltx2_vae(*, causal: bool, seed: int = 0):
    from diffusers import AutoencoderKLLTX2Video

    torch.manual_seed(seed)
    vae = AutoencoderKLLTX2Video(**VAE_CONFIG, decoder_causal=causal)
    with torch.no_grad():
        vae.latents_mean.normal_(0.0, 0.5)
        vae.latents_std.uniform_(0.5, 2.0)
    return vae.eval()


def official_state_dict(model) -> dict[str, torch.Tensor]:
    """The release files' naming: a `model.` prefix and a stored `pos_embed` buffer."""
    sd = {f"model.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    sd["pos_embed"] = torch.zeros(1, 4, DIT_CONFIG["hidden_size"])
    return sd


def _dit_folder(root: Path, model) -> None:
    (root / "dit").mkdir(parents=True, exist_ok=True)
    (root / "config.json").write_text(json.dumps(DIT_CONFIG))
    save_file(official_state_dict(model), str(root / "dit" / "sana_wm_tiny.safetensors"))


def _settings(root: Path) -> None:
    (root / "roam.json").write_text(json.dumps(ROAM_SETTINGS))


def write_bidirectional(root: Path, seed: int = 0) -> Path:
    _dit_folder(root, random_dit(seed))
    random_ltx2_vae(causal=False, seed=seed).save_pretrained(str(root / "vae"))
    _settings(root)
    return root


def write_chunk_causal(root: Path, seed: int = 0) -> Path:
    _dit_folder(root, random_dit(seed))
    _settings(root)
    return root


def write_streaming(root: Path, seed: int = 0) -> Path:
    (root / "sana_dit").mkdir(parents=True, exist_ok=True)
    torch.save({"generator": official_state_dict(random_dit(seed)), "step": 1}, root / "sana_dit" / "model.pt")
    random_ltx2_vae(causal=True, seed=seed).save_pretrained(str(root / "ltx2_causal_vae"))
    _settings(root)
    return root
