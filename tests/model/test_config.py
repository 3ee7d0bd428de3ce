"""ModelConfig validation, presets and the official config.json keys."""
from __future__ import annotations

import pytest

from model import ModelConfig, WorldModel


def test_presets():
    official = ModelConfig.preset("sana_wm_1600m")
    assert official.softmax_layers == (3, 7, 11, 15, 19)
    assert official.num_heads == 20 and official.head_dim == 112
    tiny = ModelConfig.preset("tiny")
    assert tiny.softmax_layers == (3,) and tiny.depth == 4
    assert ModelConfig.preset("tiny", depth=8).softmax_layers == (3, 7)
    with pytest.raises(ValueError, match="unknown ModelConfig preset 'huge'"):
        ModelConfig.preset("huge")


@pytest.mark.parametrize(
    "changes, message",
    [
        pytest.param({"hidden_size": 100, "head_dim": 32}, "hidden_size 100 is not divisible by head_dim 32", id="hidden"),
        pytest.param({"hidden_size": 60, "head_dim": 12}, "head_dim 12 must be divisible by 8", id="head-dim-8"),
        pytest.param({"softmax_layers": (1, 4)}, r"out of range \[0, 4\): \[4\]", id="softmax-index"),
        pytest.param({"softmax_layers": (2, 1)}, "strictly increasing", id="softmax-order"),
        pytest.param({"key_scaling": "dim"}, "key_scaling must be one of", id="key-scaling"),
        pytest.param({"gdn_backend": "cuda"}, "gdn_backend must be one of", id="backend"),
        pytest.param({"t_kernel_size": 2}, "t_kernel_size must be odd", id="t-kernel"),
        pytest.param({"num_cross_heads": 5}, "not divisible by num_cross_heads 5", id="cross-heads"),
        pytest.param({"depth": 0}, "depth must be a positive int, got 0", id="depth"),
    ],
)
def test_inconsistent_config_raises(changes, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig.preset("tiny", **changes)


def test_from_official_dict():
    config = ModelConfig.from_official_dict({
        "_class_name": "SanaWMTransformer3DModel", "_diffusers_version": "0.42.1", "in_channels": 8, "num_layers": 6,
        "hidden_size": 64, "num_attention_heads": 4, "linear_head_dim": 32, "softmax_every_n": 3,
        "caption_channels": 16, "chunk_plucker_channels": 12, "mlp_ratio": 3, "fp32_attention": True,
        "patch_size": [1, 1, 1], "chunk_plucker_post_attn_blocks": 20,
    })
    assert (config.depth, config.num_cross_heads, config.head_dim, config.plucker_channels) == (6, 4, 32, 12)
    assert config.softmax_layers == (2, 5) and config.out_channels == 8 and config.mlp_ratio == 3.0
    with pytest.raises(ValueError, match=r"unknown keys in the official model config: \['depth_typo', 'zzz'\]"):
        ModelConfig.from_official_dict({"num_layers": 2, "zzz": 1, "depth_typo": 3})
    with pytest.raises(ValueError, match="'ffn_type' = 'mlp' is not supported"):
        ModelConfig.from_official_dict({"ffn_type": "mlp"})
    with pytest.raises(ValueError, match="chunk_plucker_post_attn_blocks = 2"):
        ModelConfig.from_official_dict({"num_layers": 4, "chunk_plucker_post_attn_blocks": 2})


def test_from_config_accepts_ours_and_official():
    tiny = ModelConfig.preset("tiny")
    assert WorldModel.from_config(tiny.to_dict()).config == tiny
    assert WorldModel.from_config({"num_layers": 1, "hidden_size": 64, "linear_head_dim": 32, "num_attention_heads": 2,
                                   "caption_channels": 8, "in_channels": 4}).config.depth == 1
