"""Loading release folders: every official layout through `WorldModel.from_pretrained`, exactly or not at all."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from model import WorldModel
from model.checkpoint import CheckpointError, find_checkpoint

OFFICIAL_CONFIG = {
    "_class_name": "SanaWMTransformer3DModel",
    "in_channels": 8,
    "num_layers": 4,
    "hidden_size": 64,
    "num_attention_heads": 2,
    "linear_head_dim": 32,
    "caption_channels": 16,
    "chunk_plucker_channels": 24,
    "softmax_every_n": 4,
    "patch_size": [1, 1, 1],
}


def random_model() -> WorldModel:
    torch.manual_seed(3)
    model = WorldModel.from_config(OFFICIAL_CONFIG)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.randn_like(tensor) * 0.05)
    return model.eval()


def inputs(model: WorldModel):
    g = torch.Generator().manual_seed(0)
    c = model.config
    x = torch.randn(1, c.in_channels, 3, 4, 6, generator=g)
    t = torch.tensor([[[0.0, 500.0, 900.0]]])
    text = torch.randn(1, 5, c.caption_channels, generator=g)
    cam = torch.eye(4).reshape(1, 1, 16).repeat(1, 3, 1)
    cam = torch.cat([cam, torch.tensor([[[3.0, 3.0, 3.0, 2.0]]]).repeat(1, 3, 1)], -1)
    plucker = torch.randn(1, c.plucker_channels, 3, 4, 6, generator=g)
    return x, t, text, None, cam, plucker


def official_state_dict(model: WorldModel) -> dict[str, torch.Tensor]:
    """The official file's naming: `model.` prefix and a stored `pos_embed` buffer."""
    sd = {f"model.{k}": v.clone() for k, v in model.state_dict().items()}
    sd["pos_embed"] = torch.zeros(1, 10, 64)
    return sd


def write_bidirectional(folder, model):
    (folder / "dit").mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(OFFICIAL_CONFIG))
    save_file(official_state_dict(model), str(folder / "dit" / "sana_wm_tiny.safetensors"))


def write_streaming(folder, model, *, with_config=False):
    (folder / "sana_dit").mkdir(parents=True)
    torch.save({"generator": official_state_dict(model), "step": 1000}, folder / "sana_dit" / "model.pt")
    if with_config:
        (folder / "config.json").write_text(json.dumps(OFFICIAL_CONFIG))


def write_diffusers(folder, model):
    (folder / "transformer").mkdir(parents=True)
    sd = {k: v.clone() for k, v in model.state_dict().items() if k != "y_embedder.y_embedding"}
    sd = {k.replace("t_embedder.mlp.0.", "t_embedder.linear_1.").replace("t_embedder.mlp.2.", "t_embedder.linear_2."): v for k, v in sd.items()}
    save_file(sd, str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    (folder / "transformer" / "config.json").write_text(json.dumps(OFFICIAL_CONFIG))


@pytest.mark.parametrize(
    "writer,layout",
    [
        pytest.param(write_bidirectional, "bidirectional", id="bidirectional"),
        pytest.param(write_streaming, "streaming", id="streaming-inferred-config"),
        pytest.param(lambda f, m: write_streaming(f, m, with_config=True), "streaming", id="streaming-config"),
        pytest.param(write_diffusers, "diffusers", id="diffusers"),
    ],
)
def test_layouts_load_exactly_and_reproduce_outputs(tmp_path, writer, layout):
    model = random_model()
    writer(tmp_path, model)
    assert find_checkpoint(tmp_path).layout == layout
    loaded = WorldModel.from_pretrained(tmp_path)
    assert loaded.config.softmax_layers == model.config.softmax_layers
    for key, value in model.state_dict().items():
        if layout == "diffusers" and key == "y_embedder.y_embedding":
            assert torch.equal(loaded.state_dict()[key], torch.zeros_like(value))
            continue
        assert torch.equal(loaded.state_dict()[key], value), key
    with torch.no_grad():
        torch.testing.assert_close(loaded(*inputs(loaded)), model(*inputs(model)), rtol=0, atol=0)


def test_diffusers_save_pretrained_folder_loads(tmp_path):
    from diffusers.models.transformers.transformer_sana_wm import SanaWMTransformer3DModel

    reference = SanaWMTransformer3DModel(**{k: v for k, v in OFFICIAL_CONFIG.items() if not k.startswith("_")})
    reference.save_pretrained(tmp_path / "transformer")
    loaded = WorldModel.from_pretrained(tmp_path)
    assert loaded.config.hidden_size == 64 and loaded.config.depth == 4
    ours = loaded.state_dict()
    for key, value in reference.state_dict().items():
        key = key.replace("t_embedder.linear_1.", "t_embedder.mlp.0.").replace("t_embedder.linear_2.", "t_embedder.mlp.2.")
        assert torch.equal(ours[key], value), key


def test_dtype_and_device_arguments(tmp_path):
    write_bidirectional(tmp_path, random_model())
    loaded = WorldModel.from_pretrained(tmp_path, device="cpu", dtype=torch.bfloat16)
    assert loaded.dtype == torch.bfloat16 and not loaded.training


def _expect_error(folder, *fragments):
    with pytest.raises(CheckpointError) as info:
        WorldModel.from_pretrained(folder)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_key_names_file_and_key(tmp_path):
    model = random_model()
    write_bidirectional(tmp_path, model)
    path = tmp_path / "dit" / "sana_wm_tiny.safetensors"
    sd = official_state_dict(model)
    del sd["model.blocks.2.attn.conv_k.weight"]
    save_file(sd, str(path))
    _expect_error(tmp_path, "sana_wm_tiny.safetensors", "missing", "blocks.2.attn.conv_k.weight")


def test_unexpected_and_wrong_shape_keys(tmp_path):
    model = random_model()
    write_bidirectional(tmp_path, model)
    sd = official_state_dict(model)
    sd["model.blocks.0.attn.extra.weight"] = torch.zeros(3)
    sd["model.final_layer.linear.weight"] = torch.zeros(9, 64)
    save_file(sd, str(tmp_path / "dit" / "sana_wm_tiny.safetensors"))
    message = _expect_error(tmp_path, "unexpected", "blocks.0.attn.extra.weight", "wrongly shaped", "final_layer.linear.weight")
    assert "(9, 64)" in message


def test_config_that_disagrees_with_weights(tmp_path):
    write_bidirectional(tmp_path, random_model())
    (tmp_path / "config.json").write_text(json.dumps({**OFFICIAL_CONFIG, "hidden_size": 96, "linear_head_dim": 32}))
    _expect_error(tmp_path, "wrongly shaped", "attention_y_norm.weight: checkpoint (64,) vs model (96,)", "config.json")


def test_corrupt_files(tmp_path):
    write_bidirectional(tmp_path, random_model())
    path = tmp_path / "dit" / "sana_wm_tiny.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    _expect_error(tmp_path, "cannot read weights file", "sana_wm_tiny.safetensors")

    other = tmp_path / "other"
    write_streaming(other, random_model())
    (other / "sana_dit" / "model.pt").write_bytes(b"not a pickle")
    _expect_error(other, "model.pt")

    bad_config = tmp_path / "bad_config"
    write_bidirectional(bad_config, random_model())
    (bad_config / "config.json").write_text("{not json")
    _expect_error(bad_config, "config.json")

    unknown_key = tmp_path / "unknown_key"
    write_bidirectional(unknown_key, random_model())
    (unknown_key / "config.json").write_text(json.dumps({**OFFICIAL_CONFIG, "mystery_option": 3}))
    _expect_error(unknown_key, "config.json", "mystery_option")


def test_folder_without_weights(tmp_path):
    _expect_error(tmp_path / "nope", "does not exist")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hi")
    _expect_error(tmp_path / "empty", "no SANA-WM weights", "readme.txt")


def test_streaming_pickle_without_tensors(tmp_path):
    (tmp_path / "sana_dit").mkdir()
    torch.save({"generator": {"step": 3}}, tmp_path / "sana_dit" / "model.pt")
    _expect_error(tmp_path, "no flat state dict")


def test_meta_device_build_leaves_nothing_uninitialised(tmp_path):
    model = random_model()
    write_bidirectional(tmp_path, model)
    loaded = WorldModel.from_pretrained(tmp_path)
    for name, tensor in loaded.state_dict().items():
        assert torch.isfinite(tensor).all(), name
