"""`python run.py generate` as a user runs it: a subprocess on CPU against a tiny random release folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "generate", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_generate_writes_an_mp4_with_one_frame_per_pose_and_refuses_bad_input(releases, tmp_path):
    Image.fromarray((np.random.default_rng(1).random((90, 120, 3)) * 255).astype(np.uint8)).save(tmp_path / "x.png")
    (tmp_path / "bad.png").write_text("this is not a png")
    model = releases / "SANA-WM_streaming"

    done = _run("--model", str(model), "--image", "x.png", "--trajectory", "w-16", "--out", "o.mp4", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "17 frames" in done.stdout
    with av.open(str(tmp_path / "o.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 17 and frames[0].shape == (64, 64, 3)

    failed = _run("--model", str(model), "--image", "bad.png", "--trajectory", "w-16", "--out", "bad.mp4", "--quiet",
                  cwd=tmp_path)
    assert failed.returncode != 0
    assert "bad.png is not a readable image" in failed.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "o.mp4", "x.png"]  # no partial output
