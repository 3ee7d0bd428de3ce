"""`python run.py eval` end to end on the shipped model, at a small size: summary, docs and figures."""
from __future__ import annotations

import argparse
import json

import pytest
from PIL import Image

from train import eval_cmd


def test_eval_writes_the_summary_docs_and_figures_and_keeps_the_hand_written_notes(tmp_path, monkeypatch):
    monkeypatch.setattr(eval_cmd, "DOCS", tmp_path)
    (tmp_path / "eval.md").write_text("# old\n\n## Notes (hand-written, on the numbers above)\n\nkept by hand\n")
    parser = argparse.ArgumentParser()
    eval_cmd.add_arguments(parser)
    args = parser.parse_args(["--clips", "2", "--seconds", "1", "--size", "64", "--json", str(tmp_path / "s.json"),
                              "--write-docs", "--attention", "1", "--long-seconds", "30"])
    assert eval_cmd.main(args) == 0
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["clips"] == 2 and summary["sigmas"][-1] == 0.0
    assert set(summary["follow"]) == {"mirrored_yaw", "reversed_motion", "all"}
    assert set(summary["follow_baselines"]) == {"repeat", "warp"}
    for fractions in summary["follow_baselines"].values():
        assert fractions["mirrored_yaw"] in (0.0, 0.5, 1.0) and fractions["reversed_motion"] in (0.0, 0.5, 1.0)
        assert fractions["all"] == (fractions["mirrored_yaw"] + fractions["reversed_motion"]) / 2
    text = (tmp_path / "eval.md").read_text()
    assert text.startswith("# Evaluation of the embedded model") and text.endswith("kept by hand\n")
    assert "| warp first frame (true depth) |" in text and "| repeat first frame |" in text
    assert "| model detail | repeat detail | warp detail |" in text
    # the decoder the app runs, named in the docs: the shipped decoder file, its widths and its dtype
    from model.vae import cpu_decoder_dtype

    dtype = str(cpu_decoder_dtype()).removeprefix("torch.")
    assert summary["vae"] == "model/weights/roam_tiny_decoder.safetensors"
    assert summary["decoder"] == f"widths [16, 32, 64], {dtype}"
    assert f"Decoded by `model/weights/roam_tiny_decoder.safetensors` (decoder widths [16, 32, 64], {dtype})." in text
    assert "columns at 0, 0.25, 0.5 and 1 s." in text  # the caption names the frames the 1 s rollout shows
    assert 0.0 <= summary["mean"]["detail_model"] and summary["mean"]["detail_repeat"] > 0.0
    standing = summary["standing"]
    assert len(standing["per_second"]["psnr"]) == 1 and 0.0 < standing["mean"]["detail"]
    # a rollout that stands still cannot beat the start image through the VAE by more than the decoder's own
    # spread: the shipped copy gate keeps the start latent exactly, and its later frames, decoded with temporal
    # context, come out about 0.1 dB above frame 0, the first latent decoded alone
    assert 10.0 < standing["mean"]["psnr"] < standing["frame0_psnr"] + 0.5
    assert "## Standing still" in text and "| second | PSNR to the start frame | detail |" in text
    # the attention probe: every softmax block's two branches, walking and standing
    for path in ("walking", "standing"):
        stats = summary["attention"][path]
        assert [(s["block"], s["branch"]) for s in stats] == [(3, "camera"), (3, "main"), (4, "camera"), (4, "main")]
        for s in stats:
            assert 0 < s["same_pixel_weight"] <= s["top_weight"] <= 1 and s["logit_max"] <= s["logit_cap"] + 1e-4
    rollout_png = Image.open(tmp_path / "eval_rollout.png")
    assert rollout_png.size == (4 * 64, 4 * 64)  # 4 rows (gt, model, warp, standing) x 4 columns
    assert (tmp_path / "eval.png").stat().st_size > 0 and (tmp_path / "eval_rollout.png").stat().st_size > 0
    # the 30 s walks: both windows, second 25 in the table and in the picture (gt and model rows, 8 columns)
    long = summary["long"]
    assert set(long["windows"]) == {"1-8", "22-30"} and long["seconds"] == 30
    for window in long["windows"].values():
        assert window["blockiness"] > 0 and window["colour_error"] >= 0 and window["detail"] > 0
    assert "## Long walks" in text and "| second 25 |" in text and "## Goals of a walk that stays a world" in text
    assert "30 s walks, seconds 22–30: blockiness" in text and "standing still: PSNR to the start frame, first 1s" in text
    assert Image.open(tmp_path / "eval_long.png").size == (8 * 64, 2 * 64)


def test_eval_refuses_a_negative_attention_probe():
    parser = argparse.ArgumentParser()
    eval_cmd.add_arguments(parser)
    with pytest.raises(ValueError, match="--attention must be >= 0"):
        eval_cmd.main(parser.parse_args(["--attention", "-1"]))


def test_eval_workers_share_the_clips_and_change_no_figure(tmp_path, capfd):
    """Two spawned workers (round-robin shares) give exactly the figures of one process, in clip order."""
    parser = argparse.ArgumentParser()
    eval_cmd.add_arguments(parser)
    summaries = []
    for workers in (1, 2):
        path = tmp_path / f"w{workers}.json"
        args = parser.parse_args(["--clips", "3", "--seconds", "1", "--size", "32", "--workers", str(workers), "--long-seconds", "0",
                                  "--json", str(path)])
        assert eval_cmd.main(args) == 0
        summaries.append(json.loads(path.read_text()))
    assert summaries[0]["clips"] == summaries[1]["clips"] == 3
    assert [clip["scene"] for clip in summaries[1]["per_clip"]] == [1000000, 1000001, 1000002]
    for key in ("per_second", "mean", "follow", "follow_baselines", "standing", "per_clip"):
        assert summaries[0][key] == summaries[1][key], key
    printed = [line.split(":")[0] for line in capfd.readouterr().out.splitlines() if line.startswith("scene ")]
    assert sorted(printed[:3]) == sorted(printed[3:])  # the same three scenes in both runs


def test_eval_refuses_no_workers():
    parser = argparse.ArgumentParser()
    eval_cmd.add_arguments(parser)
    try:
        eval_cmd.main(parser.parse_args(["--workers", "0"]))
    except ValueError as error:
        assert "--workers must be >= 1, got 0" in str(error)
    else:
        raise AssertionError("--workers 0 was accepted")


def test_eval_runs_the_kv_window_and_sink_the_weights_were_trained_with(tmp_path):
    """The eval streams with the weights' json settings (`generator.kv_window_chunks`, `sink`), as the app does,
    not with the generator's defaults: two copies of the shipped weights whose jsons say window 2 + sink and
    window 1, no sink give the same frames while every chunk sees the same context, and others once it does not."""
    import numpy as np

    from model.release import embedded_vae_path
    from model.vae import load_tiny_vae
    from train.embedded import EMBEDDED_WEIGHTS, load_weights
    from train.evaluate import held_out_walk, rollout

    info = json.loads(EMBEDDED_WEIGHTS.with_suffix(".json").read_text())
    shipped = eval_cmd.eval_sampler(EMBEDDED_WEIGHTS, None)
    assert (shipped.kv_window_chunks, shipped.sink) == (info["generator"]["kv_window_chunks"], info["generator"]["sink"])
    samplers = {}
    for name, window, sink in (("wide", 2, True), ("narrow", 1, False)):
        weights = tmp_path / f"{name}.safetensors"
        weights.symlink_to(EMBEDDED_WEIGHTS)
        weights.with_suffix(".json").write_text(json.dumps({**info, "generator": {**info["generator"], "kv_window_chunks": window,
                                                                                 "sink": sink}}))
        samplers[name] = eval_cmd.eval_sampler(weights, None)
        assert (samplers[name].kv_window_chunks, samplers[name].sink) == (window, sink)
        assert samplers[name].sigmas == tuple(info["generator"]["sigmas"])
        assert samplers[name].warm_start == info["generator"]["warm_start"]
    assert eval_cmd.eval_sampler(weights, "1,0").sigmas == (1.0, 0.0)

    model = load_weights(str(weights))
    vae = load_tiny_vae(embedded_vae_path(str(weights)))
    _, clip, K = held_out_walk(1000000, 2, 32)
    frames = {name: rollout(model, vae, clip.frames[0], clip.world_T_cams, K, sampler=sampler) for name, sampler in samplers.items()}
    # chunks 0 and 1 see chunk 0 either way (9 + 8 frames); chunk 2 sees chunks 0-1 or chunk 1 only
    np.testing.assert_array_equal(frames["narrow"][:17], frames["wide"][:17])
    assert np.abs(frames["narrow"][17:].astype(int) - frames["wide"][17:]).mean() > 0.05
