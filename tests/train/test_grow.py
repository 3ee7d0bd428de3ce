"""Growing a trained model (train/grow.py, `python run.py train grow`) keeps its output exactly, and the new
blocks can learn."""
from __future__ import annotations

import argparse

import pytest
import torch

from model import ModelConfig, WorldModel
from tests.model.helpers import inputs, randomise
from tests.model.test_streaming import stream
from train import train_cmd
from train.embedded import load_weights, read_info, save_weights
from train.grow import add_anchor_input, append_blocks, grown_config


def _trained_like(seed: int = 0) -> WorldModel:
    """A tiny model with every parameter random (no zero-initialised path left), as trained weights are."""
    model = WorldModel(ModelConfig.preset("tiny"))
    randomise(model, seed)
    return model.eval()


def test_grown_config_appends_in_order():
    config = grown_config(ModelConfig.preset("tiny"), ("gdn", "softmax", "softmax"))
    assert config.depth == 7
    assert config.softmax_layers == (3, 5, 6)


def assert_computes_the_same(grown: WorldModel, model: WorldModel):
    """`grown` gives `model`'s output bit for bit, bidirectional and streamed through the carried state
    (the new parts' states fill, but add nothing); returns the grown stream's last state."""
    x, t, text, mask, cam, plucker = inputs(model.config, 2, 7, 4, 6)
    with torch.no_grad():
        assert torch.equal(grown(x, t, text, mask, cam, plucker), model(x, t, text, mask, cam, plucker))
        ours, state = stream(grown, x, t, text, mask, cam, plucker, (3, 2, 2), kv_window_chunks=1, sink=True)
        theirs, _ = stream(model, x, t, text, mask, cam, plucker, (3, 2, 2), kv_window_chunks=1, sink=True)
    assert torch.equal(ours, theirs)
    return state


@pytest.mark.parametrize("kinds", [("softmax",), ("gdn", "softmax")])
def test_grown_model_computes_what_the_model_did(kinds):
    model = _trained_like()
    grown = append_blocks(model, kinds).eval()
    assert grown.config.depth == model.config.depth + len(kinds)
    state = assert_computes_the_same(grown, model)
    assert len(state.layers) == grown.config.depth


def test_adding_the_anchor_input_changes_nothing_until_trained():
    model = _trained_like(3)
    grown = add_anchor_input(model).eval()
    assert grown.config.anchor_input and grown.anchor_embedder.proj.weight.abs().max() == 0
    assert_computes_the_same(grown, model)
    # One zero linear after a non-zero input: the gradient reaches it at once.
    grown.train()
    grown(*inputs(model.config, 2, 7, 4, 6)).square().mean().backward()
    assert grown.anchor_embedder.proj.weight.grad.abs().max() > 0
    with pytest.raises(ValueError, match="already"):
        add_anchor_input(grown)


def test_growing_the_copy_gate_changes_nothing_until_trained():
    model = WorldModel(ModelConfig.preset("tiny", anchor_input=True))
    randomise(model, 4)
    model.eval()
    grown = add_anchor_input(model, copy_gate=True).eval()
    assert grown.config.anchor_copy and torch.equal(grown.anchor_embedder.proj.weight, model.anchor_embedder.proj.weight)
    assert_computes_the_same(grown, model)
    grown.train()
    grown(*inputs(model.config, 2, 5, 4, 6)).square().mean().backward()
    assert grown.copy_gate.weight.grad.abs().max() > 0 and grown.copy_gate.bias.grad.abs().max() > 0
    with pytest.raises(ValueError, match="copy gate"):
        add_anchor_input(grown, copy_gate=True)
    with pytest.raises(ValueError, match="anchor_copy needs anchor_input"):
        ModelConfig.preset("tiny", anchor_copy=True)


def test_growing_the_still_term_changes_nothing_until_trained():
    model = WorldModel(ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True))
    randomise(model, 5)
    model.eval()
    grown = add_anchor_input(model, copy_still=True).eval()
    assert grown.config.anchor_copy_still and float(grown.copy_still.detach()) == 0.0
    assert torch.equal(grown.copy_gate.weight, model.copy_gate.weight)
    assert_computes_the_same(grown, model)
    grown.train()
    grown(*inputs(model.config, 2, 5, 4, 6)).square().mean().backward()
    assert grown.copy_still.grad.abs().max() > 0
    with pytest.raises(ValueError, match="its still term"):
        add_anchor_input(grown, copy_still=True)


def test_growing_the_ground_copy_changes_nothing_until_trained():
    model = WorldModel(ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True, anchor_copy_still=True))
    randomise(model, 6)
    model.eval()
    grown = add_anchor_input(model, ground_m=1.6).eval()
    assert grown.config.anchor_ground_m == 1.6 and float(grown.copy_ground.detach()) == 0.0
    assert torch.equal(grown.copy_still, model.copy_still)
    assert_computes_the_same(grown, model)
    with pytest.raises(ValueError, match="the ground-plane copy"):
        add_anchor_input(grown, ground_m=1.6)


def test_new_block_copies_its_kind_and_learns():
    model = _trained_like()
    grown = append_blocks(model, ("softmax",))
    new, donor = grown.blocks[4], model.blocks[3]
    assert new.is_softmax
    assert torch.equal(new.attn.qkv.weight, donor.attn.qkv.weight)
    assert new.attn.proj.weight.abs().max() == 0 and new.mlp.point_conv.conv.weight.abs().max() == 0
    x, t, text, mask, cam, plucker = inputs(model.config, 1, 5, 4, 4)
    grown(x, t, text, mask, cam, plucker).square().mean().backward()
    assert torch.equal(new.attn.out_proj_cam.weight, donor.attn.out_proj_cam.weight)  # behind proj, kept
    for name in ("attn.proj.weight", "cross_attn.proj.weight",
                 "plucker_proj.weight", "mlp.point_conv.conv.weight"):
        grad = new.get_parameter(name).grad
        assert grad is not None and grad.abs().max() > 0, f"no gradient reaches the zeroed {name}"


def test_bad_kinds_are_named():
    model = _trained_like()
    with pytest.raises(ValueError, match="'attention'"):
        append_blocks(model, ("softmax", "attention"))
    with pytest.raises(ValueError, match="at least one"):
        append_blocks(model, ())
    all_gdn = WorldModel(ModelConfig.preset("tiny", softmax_every_n=0))
    with pytest.raises(ValueError, match="no softmax block to copy"):
        append_blocks(all_gdn, ("softmax",))


def _grow_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    return parser.parse_args(["grow", *argv])


def _grow(source, out, *flags: str) -> tuple[WorldModel, dict]:
    """`train grow --init source --out out --append-blocks '' *flags`: the grown weights and their json."""
    train_cmd.main(_grow_args("--init", str(source), "--out", str(out), "--append-blocks", "", *flags))
    return load_weights(out), read_info(out)


def test_train_grow_command(tmp_path):
    source = save_weights(_trained_like(), tmp_path / "m.safetensors", {"vae_tag": "abc", "generator": {"sigmas": [1.0, 0.0]}})
    out = tmp_path / "grown.safetensors"
    train_cmd.main(_grow_args("--init", str(source), "--out", str(out), "--append-blocks", "gdn,softmax"))
    grown, info = load_weights(out), read_info(out)
    assert grown.config.depth == 6 and grown.config.softmax_layers == (3, 5)
    assert info["vae_tag"] == "abc" and info["generator"] == {"sigmas": [1.0, 0.0]}
    assert info["grown"]["appended"] == ["gdn", "softmax"] and info["grown"]["depth"] == [4, 6]
    with pytest.raises(ValueError, match="overwrite"):
        train_cmd.main(_grow_args("--init", str(source), "--out", str(source)))
    with pytest.raises(ValueError, match="--out"):
        train_cmd.main(_grow_args("--init", str(source)))


def test_train_grow_adds_the_anchor_input(tmp_path):
    source = save_weights(_trained_like(), tmp_path / "m.safetensors", {"vae_tag": "abc", "grown": {"depth": [3, 4]}})
    out = tmp_path / "anchored.safetensors"
    train_cmd.main(_grow_args("--init", str(source), "--out", str(out), "--append-blocks", "", "--anchor-input"))
    grown, info = load_weights(out), read_info(out)
    assert grown.config.anchor_input and grown.config.depth == 4
    assert grown.anchor_embedder.proj.weight.abs().max() == 0
    assert info["grown"] == {"depth": [3, 4]}, "an earlier growth's record is kept"
    assert info["grown_2"]["anchor_input"] and info["grown_2"]["appended"] == []
    x, t, text, mask, cam, plucker = inputs(grown.config, 1, 5, 4, 4)
    with torch.no_grad():
        assert torch.equal(grown.eval()(x, t, text, mask, cam, plucker), load_weights(source).eval()(x, t, text, mask, cam, plucker))
    gated = tmp_path / "gated.safetensors"
    train_cmd.main(_grow_args("--init", str(out), "--out", str(gated), "--append-blocks", "", "--anchor-copy"))
    assert load_weights(gated).config.anchor_copy and read_info(gated)["grown_3"]["anchor_copy"]
    still = tmp_path / "still.safetensors"
    train_cmd.main(_grow_args("--init", str(gated), "--out", str(still), "--append-blocks", "", "--anchor-copy-still"))
    assert load_weights(still).config.anchor_copy_still and read_info(still)["grown_4"]["anchor_copy_still"]
    ground = tmp_path / "ground.safetensors"
    train_cmd.main(_grow_args("--init", str(still), "--out", str(ground), "--append-blocks", "", "--anchor-ground-m", "1.6",
                              "--copy-ground-c", "1"))
    grounded = load_weights(ground)
    assert grounded.config.anchor_ground_m == 1.6 and float(grounded.copy_ground.detach()) == 1.0
    assert read_info(ground)["grown_5"]["copy_ground_c"] == 1.0
    with pytest.raises(ValueError, match="--copy-ground-c 2.0 needs"):
        train_cmd.main(_grow_args("--init", str(still), "--out", str(tmp_path / "y.safetensors"), "--append-blocks", "",
                                  "--anchor-ground-m", "1.6", "--copy-ground-c", "2"))
    with pytest.raises(ValueError, match="nothing to add"):
        train_cmd.main(_grow_args("--init", str(source), "--out", str(tmp_path / "x.safetensors"), "--append-blocks", ""))


def test_train_grow_adds_the_start_copy(tmp_path):
    from train.grow import add_anchor_depth_copy

    gated = WorldModel(ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True, anchor_copy_still=True))
    source = save_weights(add_anchor_depth_copy(gated, 0.5), tmp_path / "m.safetensors", {"vae_tag": "abc"})
    grown, info = _grow(source, tmp_path / "start.safetensors", "--anchor-start-fade-m", "10", "--copy-start-c", "1")
    assert grown.config.anchor_start_fade_m == 10.0 and float(grown.copy_start.detach()) == 1.0
    assert info["grown"]["anchor_start_fade_m"] == 10.0 and info["grown"]["copy_start_c"] == 1.0
    assert "--anchor-start-fade-m 10 --copy-start-c 1" in info["grown"]["command"]
    with pytest.raises(ValueError, match="--copy-start-c 0.5 needs --anchor-start-fade-m"):
        _grow(source, tmp_path / "x.safetensors", "--copy-start-c", "0.5")
    with pytest.raises(ValueError, match="no depth copy"):
        _grow(save_weights(gated, tmp_path / "g.safetensors", {}), tmp_path / "y.safetensors", "--anchor-start-fade-m", "10")


def _saved_with_start_copy(tmp_path) -> tuple[WorldModel, object]:
    """(the gated model without depth or start copy, the weights file of it with both at c 0.5 / 1)."""
    from train.grow import add_anchor_depth_copy, add_anchor_start_copy

    gated = WorldModel(ModelConfig.preset("tiny", anchor_input=True, anchor_copy=True, anchor_copy_still=True))
    started = add_anchor_start_copy(add_anchor_depth_copy(gated, 0.5), 10.0, 1.0)
    return gated, save_weights(started, tmp_path / "m.safetensors", {"vae_tag": "abc"})


def test_train_grow_sets_the_start_interpolation_and_leaves_the_weights(tmp_path):
    from safetensors.torch import load_file

    gated, source = _saved_with_start_copy(tmp_path)
    out = tmp_path / "bicubic.safetensors"
    grown, info = _grow(source, out, "--start-interpolation", "bicubic")
    before, after = load_file(str(source)), load_file(str(out))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert grown.config.anchor_start_interpolation == "bicubic"
    assert info["grown"]["anchor_start_interpolation"] == ["bilinear", "bicubic"]
    assert info["grown"]["command"].endswith("--start-interpolation bicubic")
    with pytest.raises(ValueError, match="the model has no start copy"):
        _grow(save_weights(gated, tmp_path / "g.safetensors", {}), tmp_path / "x.safetensors", "--start-interpolation", "bicubic")


def test_train_grow_rewrites_the_kv_window_and_leaves_the_weights(tmp_path):
    """`train grow --kv-window 1`: the same tensors, the json's generator window changed (and recorded), so the app,
    generate and eval stream with it; a json without generator settings, or a window below 1, is refused."""
    from safetensors.torch import load_file

    from model.release import embedded_window

    generator = {"sigmas": [0.5, 0.0], "kv_window_chunks": 2, "sink": True, "warm_start": True}
    source = save_weights(_trained_like(), tmp_path / "m.safetensors", {"vae_tag": "abc", "generator": generator})
    out = tmp_path / "w1.safetensors"
    train_cmd.main(_grow_args("--init", str(source), "--out", str(out), "--append-blocks", "", "--kv-window", "1"))
    before, after = load_file(str(source)), load_file(str(out))
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    info = read_info(out)
    assert info["generator"] == {**generator, "kv_window_chunks": 1}
    assert info["grown"]["kv_window_chunks"] == [2, 1] and info["grown"]["command"].endswith("--kv-window 1")
    assert embedded_window(out.with_suffix(".json")) == (1, True)
    bare = save_weights(_trained_like(), tmp_path / "bare.safetensors", {"vae_tag": "abc"})
    with pytest.raises(ValueError, match="--kv-window needs --init's json to record its generator settings"):
        train_cmd.main(_grow_args("--init", str(bare), "--out", str(tmp_path / "x.safetensors"), "--append-blocks", "",
                                  "--kv-window", "1"))
    with pytest.raises(ValueError, match="--kv-window must be an integer >= 1"):
        train_cmd.main(_grow_args("--init", str(source), "--out", str(tmp_path / "y.safetensors"), "--append-blocks", "",
                                  "--kv-window", "0"))


def test_training_stages_take_the_kv_window_from_the_flag():
    """--kv-window sets the window every stage trains with and export records (2 when absent)."""
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    assert train_cmd._generator_defaults(parser.parse_args(["export"])).kv_window_chunks == 2
    assert train_cmd._generator_defaults(parser.parse_args(["export", "--kv-window", "1"])).kv_window_chunks == 1
    warm = train_cmd._generator_defaults(parser.parse_args(["selfforce", "--sigmas", "0.5,0", "--warm-start", "--kv-window", "3"]))
    assert (warm.kv_window_chunks, warm.warm_start, warm.sigmas) == (3, True, (0.5, 0.0))


def test_train_grow_adds_the_background_copy(tmp_path):
    _, source = _saved_with_start_copy(tmp_path)
    out = tmp_path / "background.safetensors"
    grown, info = _grow(source, out, "--anchor-background-eye-m", "1.6", "--copy-background-c", "1")
    assert grown.config.anchor_background_eye_m == 1.6 and float(grown.copy_background.detach()) == 1.0
    assert info["grown"]["anchor_background_eye_m"] == 1.6 and info["grown"]["copy_background_c"] == 1.0
    assert "--anchor-background-eye-m 1.6 --copy-background-c 1" in info["grown"]["command"]
    gated_bg, gated_info = _grow(out, tmp_path / "gated.safetensors", "--background-gate")
    assert gated_bg.config.anchor_background_gate and float(gated_bg.background_gate.weight.detach().abs().max()) == 0.0
    assert gated_info["grown_2"]["anchor_background_gate"] and gated_info["grown_2"]["command"].endswith("--background-gate")
    with pytest.raises(ValueError, match="no background copy"):
        _grow(source, tmp_path / "z.safetensors", "--background-gate")
    with pytest.raises(ValueError, match="--copy-background-c 0.5 needs --anchor-background-eye-m"):
        _grow(source, tmp_path / "x.safetensors", "--copy-background-c", "0.5")
