"""The evaluation-set writer and reader, and `run.py render`."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from app.cli import main as cli_main
from sim.clips import EVAL_SEED_BASE, sample_clip
from sim.dataset_writer import EvalSet, EvalSetSpec, read_frames, write_eval_set, write_frames
from sim.render_cmd import preset_frames


def test_eval_set_round_trips(tmp_path):
    spec = EvalSetSpec(n_scenes=2, clips_per_scene=1, n_frames=9, width=32, height=24, depth=True)
    write_eval_set(tmp_path, spec, workers=2, progress=False)
    index = json.loads((tmp_path / "index.json").read_text())
    assert [c["scene_seed"] >= EVAL_SEED_BASE for c in index["clips"]] == [True] * len(index["clips"])
    evalset = EvalSet(tmp_path)
    assert len(evalset) == spec.n_scenes * spec.clips_per_scene
    clip = evalset[len(evalset) - 1]
    ref = sample_clip(clip.scene_seed, clip.clip_seed, 9, 32, 24)
    assert clip.frames.shape == (9, 24, 32, 3)
    if index["codec"] == "libx264rgb":
        assert np.array_equal(clip.frames, ref.frames)
    else:
        assert np.abs(clip.frames.astype(int) - ref.frames).mean() < 3
    assert np.array_equal(clip.world_T_cams, ref.world_T_cams) and np.array_equal(clip.K, ref.K)
    finite = np.isfinite(ref.depth)
    assert np.array_equal(np.isfinite(clip.depth), finite)
    assert np.allclose(clip.depth[finite], ref.depth[finite], rtol=1e-3)
    with pytest.raises(ValueError, match="not a sim evaluation set"):
        EvalSet(tmp_path / "missing")
    with pytest.raises(ValueError, match="n_frames"):
        EvalSetSpec(n_scenes=1, n_frames=8)


@pytest.mark.parametrize("codec, tolerance", [("libx264rgb", 0.0), ("libx264", 1.0), ("mpeg4", 8.0)])
def test_video_codecs_round_trip(tmp_path, codec, tolerance):
    import av

    if codec not in av.codecs_available:
        pytest.skip(f"{codec} is not in this PyAV build")
    frames = sample_clip(3, 0, 9, 64, 48).frames
    write_frames(tmp_path / "v.mp4", frames, 16.0, codec)
    back = read_frames(tmp_path / "v.mp4")
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() <= tolerance


def test_render_command_writes_a_readable_video(tmp_path):
    out, depth_out, png_out = tmp_path / "gt.mp4", tmp_path / "gt_depth.npy", tmp_path / "first.png"
    code = cli_main(["render", "--scene", "7", "--trajectory", "orbit", "--out", str(out), "--seconds", "1",
                     "--width", "48", "--height", "32", "--depth-out", str(depth_out), "--png-out", str(png_out)])
    assert code == 0
    frames = read_frames(out)
    assert np.asarray(Image.open(png_out)).shape == (32, 48, 3)
    assert preset_frames(1.0, 16.0) == 17
    assert frames.shape == (17, 32, 48, 3)
    depth = np.load(depth_out)
    assert depth.shape == (17, 32, 48) and np.isfinite(depth).mean() > 0.3
    # The video shows a place: neither blank nor noise (neighbouring pixels agree far more than random ones).
    f = frames.astype(float)
    assert f.std() > 10
    assert np.abs(np.diff(f, axis=2)).mean() < 0.5 * np.abs(f - f[:, :, ::-1]).mean()


def test_render_command_explains_bad_input(tmp_path):
    with pytest.raises(SystemExit, match="scene seed must be an int"):
        cli_main(["render", "--scene", "-3", "--out", str(tmp_path / "a.mp4")])
    with pytest.raises(SystemExit, match="trajectory file .* does not exist"):
        cli_main(["render", "--trajectory", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "a.mp4")])
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SystemExit, match="bad.json"):
        cli_main(["render", "--trajectory", str(bad), "--out", str(tmp_path / "a.mp4")])
    with pytest.raises(SystemExit, match="unknown theme"):
        cli_main(["render", "--theme", "mars", "--out", str(tmp_path / "a.mp4")])


def test_render_command_places_files_as_asked(tmp_path):
    from controls.trajectory import preset, save

    path = tmp_path / "eight.npz"
    save(preset("figure_eight", n_frames=9, width=32, height=24), path)
    # The file's own frame puts the camera on the ground plane: as world poses that is an error.
    with pytest.raises(SystemExit, match="at or below the ground.*--placement spawn"):
        cli_main(["render", "--trajectory", str(path), "--out", str(tmp_path / "a.mp4")])
    assert cli_main(["render", "--trajectory", str(path), "--placement", "spawn", "--out", str(tmp_path / "b.mp4")]) == 0
    assert read_frames(tmp_path / "b.mp4").shape == (9, 24, 32, 3)
