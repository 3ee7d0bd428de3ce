"""The official size, built on the meta device: parameter count and the exact state-dict layout."""
from __future__ import annotations

import torch

from model import ModelConfig, WorldModel
from tests.model.helpers import diffusers_to_ours


def test_sana_wm_1600m_matches_diffusers_layout_on_meta():
    from diffusers import SanaWMTransformer3DModel

    with torch.device("meta"):
        ours = WorldModel(ModelConfig.preset("sana_wm_1600m"))
        reference = SanaWMTransformer3DModel()
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in reference.parameters())
    assert 2.60e9 < count < 2.70e9, count

    theirs = {k: tuple(v.shape) for k, v in diffusers_to_ours(reference.state_dict()).items()}
    mine = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    # the one official buffer diffusers leaves out: the null-caption table (sana_wm.md §8)
    assert mine.pop("y_embedder.y_embedding") == (300, 2304)
    assert mine == theirs
    assert mine["blocks.3.attn.qkv.weight"] == (3 * 2240, 2240)
    assert "blocks.3.attn.conv_k.weight" not in mine and mine["blocks.2.attn.conv_k.weight"] == (2240, 1, 4)
    assert mine["blocks.0.mlp.inverted_conv.conv.weight"] == (13440, 2240, 1, 1)
    assert mine["plucker_embedder.proj.weight"] == (2240, 48, 1, 1, 1)
