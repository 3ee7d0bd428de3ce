"""The Gradio UI, driven by gradio_client against a locally launched app (embedded tiny model, CPU)."""
from __future__ import annotations

import os

import av
import numpy as np
import pytest
from PIL import Image

from tests.recording.helpers import write_episode

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="module")
def ui(tmp_path_factory):
    import torch
    from gradio_client import Client

    from app.ui_cmd import build_ui
    from model.release import load_embedded

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("ui")
    record_dir = root / "recordings"
    record_dir.mkdir()
    write_episode(record_dir / "walk-001", chunks=3)
    release = load_embedded(height=48, width=64, fps=16.0, hfov_deg=60.0, seed=0)
    demo = build_ui(release, record_dir, root / "out")
    demo.queue().launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True, show_error=True, allowed_paths=[str(root)])
    try:
        Image.fromarray((np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)).save(root / "start.png")
        # One chunk longer than the longest clip the model takes, in seconds.
        too_long_s = (release.max_frames + 16) / release.fps
        yield Client(demo.local_url, verbose=False), root, too_long_s
    finally:
        demo.close()


def _frames(path: str) -> int:
    with av.open(path) as container:
        return sum(1 for _ in container.decode(video=0))


def _generate(client, **overrides):
    from gradio_client import handle_file

    args = {"image": None, "source": "preset", "preset": "walk_forward", "action": "", "upload": None, "episode": None,
            "mode": "distilled", "steps": 0, "seed": 0, "seconds": 0}
    args.update(overrides)
    if isinstance(args["image"], str):
        args["image"] = handle_file(args["image"])
    return client.predict(*args.values(), api_name="/generate")


def test_generation_through_the_ui_returns_an_mp4_with_the_right_frame_count(ui):
    client, root, _ = ui
    video, summary = _generate(client, image=str(root / "start.png"), source="action string", action="w-16")
    path = video["video"] if isinstance(video, dict) else video
    assert _frames(path) == 17 and summary.startswith("17 frames, 64x48")
    # A recorded episode re-rendered (its own start.png, its 25 poses -> 25 frames).
    names, _ = client.predict(api_name="/episodes")
    assert names["value"] == "walk-001" if isinstance(names, dict) else names == "walk-001"
    video, summary = _generate(client, source="episode", episode="walk-001", mode="bidirectional", steps=2)
    path = video["video"] if isinstance(video, dict) else video
    assert _frames(path) == 25 and "bidirectional" in summary


@pytest.mark.parametrize("case, message", [
    ("not_an_image", "not a readable image"),
    ("too_long", "longer than the model can take"),
    ("missing_episode", "no recorded episode"),
])
def test_bad_input_is_reported_and_writes_nothing(ui, case, message, capfd):
    from gradio_client.exceptions import AppError

    client, root, too_long_s = ui
    before = sorted((root / "out").glob("*")) if (root / "out").exists() else []
    bad = root / "bad.png"
    bad.write_text("this is not a png")
    overrides = {
        "not_an_image": {"image": str(bad)},
        "too_long": {"image": str(root / "start.png"), "seconds": too_long_s},
        "missing_episode": {"source": "episode", "episode": "../../etc"},
    }[case]
    capfd.readouterr()
    with pytest.raises(AppError, match=message):
        _generate(client, **overrides)
    after = sorted((root / "out").glob("*")) if (root / "out").exists() else []
    assert after == before
    # A user's mistake is the page's message, not a traceback in the server's log.
    assert "Traceback" not in capfd.readouterr().err
