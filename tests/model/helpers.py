"""Shared inputs and a diffusers-reference builder for the model tests."""
from __future__ import annotations

import torch

from model import ModelConfig, WorldModel

# A small official-style config: head_dim 24 (not a FlashAttention width, so the padded-SDPA scale
# quirk is exercised: 1/sqrt(128) in the camera branch), block 1 softmax, block 0 GDN.
SMALL_OFFICIAL = {
    "in_channels": 8,
    "num_layers": 2,
    "hidden_size": 48,
    "num_attention_heads": 2,
    "linear_head_dim": 24,
    "softmax_every_n": 2,
    "caption_channels": 16,
    "chunk_plucker_channels": 12,
    "mlp_ratio": 2.0,
}


def random_rotation(generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.float()


def camera_conditions(batch: int, frames: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    """[B, T, 20]: random c2w poses (row-major) and latent-grid intrinsics fx, fy, cx, cy."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch * frames):
        pose = torch.eye(4)
        pose[:3, :3] = random_rotation(g)
        pose[:3, 3] = torch.randn(3, generator=g)
        intr = torch.tensor([width * 0.9, height * 1.1, (width - 1) / 2 + 0.3, (height - 1) / 2 - 0.2])
        rows.append(torch.cat((pose.flatten(), intr)))
    return torch.stack(rows).reshape(batch, frames, 20)


def inputs(config: ModelConfig, batch: int, frames: int, height: int, width: int, seed: int = 0, text_len: int = 5):
    """Random (hidden_states, timestep, text, mask, camera, plucker) for `config`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, config.in_channels, frames, height, width, generator=g)
    t = torch.rand(batch, 1, frames, generator=g) * 1000
    text = torch.randn(batch, text_len, config.caption_channels, generator=g)
    mask = torch.ones(batch, text_len, dtype=torch.long)
    mask[0, -2:] = 0
    cam = camera_conditions(batch, frames, height, width, seed)
    plucker = torch.randn(batch, config.plucker_channels, frames, height, width, generator=g)
    return x, t, text, mask, cam, plucker


def randomise(module: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> None:
    """Every parameter and buffer to random values: norms around 1, everything else scale·N(0, 1)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            noise = torch.randn(tensor.shape, generator=g) * scale
            if name.endswith("norm.weight") or name.endswith("norm_cam.weight"):
                noise = noise + 1.0
            tensor.copy_(noise)


def diffusers_to_ours(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """diffusers names -> official names (the timestep MLP is `t_embedder.mlp.{0,2}` in the checkpoint)."""
    renames = {"t_embedder.linear_1.": "t_embedder.mlp.0.", "t_embedder.linear_2.": "t_embedder.mlp.2."}
    out = {}
    for key, value in state_dict.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old):]
        out[key] = value
    return out




def reference_and_ours(official: dict, *, seed: int = 0, **overrides) -> tuple[torch.nn.Module, WorldModel]:
    """diffusers' SanaWMTransformer3DModel and our WorldModel with the same random weights."""
    from diffusers import SanaWMTransformer3DModel

    torch.manual_seed(seed)
    reference = SanaWMTransformer3DModel(**official).eval()
    randomise(reference, seed)
    ours = WorldModel.from_config(ModelConfig.from_official_dict(official, **overrides)).eval()
    state = diffusers_to_ours(reference.state_dict())
    state["y_embedder.y_embedding"] = ours.y_embedder.y_embedding.clone()
    ours.load_state_dict(state, strict=True)
    return reference, ours
