"""The SANA-WM transformer and its streaming state. See `model.transformer` for the full contract.

    from model import WorldModel, ModelConfig
    model = WorldModel.from_config(ModelConfig.preset("tiny"))
"""
from __future__ import annotations

from model.config import PRESETS, ModelConfig
from model.state import GDNState, KVCache, SoftmaxState, StreamState
from model.transformer import WorldModel

__all__ = ["PRESETS", "GDNState", "KVCache", "ModelConfig", "SoftmaxState", "StreamState", "WorldModel"]
