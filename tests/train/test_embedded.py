from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from tests.train.helpers import tiny_model
from train.embedded import load_weights, read_info, save_weights


def test_round_trip_keeps_weights_and_config(tmp_path):
    model = tiny_model()
    path = save_weights(model, tmp_path / "m.safetensors", {"vae_tag": "abc"})
    loaded = load_weights(path)
    assert loaded.config == model.config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k
    assert read_info(path)["vae_tag"] == "abc"


def test_bad_files_are_refused(tmp_path):
    path = save_weights(tiny_model(), tmp_path / "m.safetensors")
    state = load_file(str(path))
    state.pop(sorted(state)[0])
    save_file(state, str(path))
    with pytest.raises(ValueError, match="missing"):
        load_weights(path)
    with pytest.raises(FileNotFoundError):
        load_weights(tmp_path / "absent.safetensors")
    (tmp_path / "m.json").write_text(json.dumps({"model": {"depth": 2, "bogus": 1}}))
    with pytest.raises(ValueError, match="bogus"):
        load_weights(path)
