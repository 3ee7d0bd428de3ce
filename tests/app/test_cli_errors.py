"""A user's mistake on the command line ends in one line naming it and exit code 1, never a traceback:
serve and ui on a taken port, with a CUDA device the machine lacks or a --model that holds no
weights; generate with a bad trajectory (no progress bar first) or a file that is not an image."""
from __future__ import annotations

import argparse
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="the machine has CUDA")


@pytest.fixture
def taken_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def _args(module, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    return parser.parse_args(list(argv))


def _one_line_exit(main, args) -> str:
    with pytest.raises(SystemExit) as raised:
        main(args)
    message = str(raised.value.code)
    assert "\n" not in message and "Traceback" not in message
    return message


def test_serve_on_a_taken_port_says_so_in_one_line(taken_port):
    run = subprocess.run([sys.executable, "run.py", "serve", "--port", str(taken_port)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == f"run.py serve: cannot listen on 127.0.0.1:{taken_port}: Address already in use"
    # Bound before the model loads: nothing was loaded.
    assert "model:" not in run.stderr


@pytest.mark.parametrize("argv, message", [
    pytest.param(["--device", "cuda"], "run.py serve: --device cuda: CUDA is not available on this machine", marks=NO_CUDA, id="no-cuda"),
    pytest.param(["--device", "cuda:x"], "run.py serve: --device must be cpu or cuda[:N], got 'cuda:x'", id="bad-device"),
    pytest.param(["--model", "/no/such/folder"], "run.py serve: model path /no/such/folder does not exist", id="no-folder"),
])
def test_serve_refuses_a_bad_device_or_model_in_one_line(argv, message):
    from app import serve_cmd

    assert _one_line_exit(serve_cmd.main, _args(serve_cmd, "--port", "0", *argv)) == message


def test_serve_with_a_folder_without_weights_says_what_it_expected(tmp_path):
    from app import serve_cmd

    message = _one_line_exit(serve_cmd.main, _args(serve_cmd, "--port", "0", "--model", str(tmp_path)))
    assert message.startswith(f"run.py serve: no SANA-WM weights found in '{tmp_path}'")


@NO_CUDA
def test_ui_refuses_a_taken_port_and_a_missing_cuda_in_one_line(taken_port):
    from app import ui_cmd

    message = _one_line_exit(ui_cmd.main, _args(ui_cmd, "--port", str(taken_port)))
    assert message == f"run.py ui: cannot listen on 127.0.0.1:{taken_port}: Address already in use"
    message = _one_line_exit(ui_cmd.main, _args(ui_cmd, "--port", "0", "--device", "cuda"))
    assert message == "run.py ui: --device cuda: CUDA is not available on this machine"


def test_generate_refuses_a_bad_trajectory_before_any_progress_bar(tmp_path, capfd):
    from PIL import Image

    from app import generate_cmd

    Image.new("RGB", (64, 48), (90, 120, 60)).save(tmp_path / "start.png")
    out = tmp_path / "out.mp4"
    message = _one_line_exit(generate_cmd.main, _args(generate_cmd, "--image", str(tmp_path / "start.png"), "--trajectory", "zz-9", "--out", str(out)))
    assert message.startswith("run.py generate: 'zz-9' is neither a trajectory file, a preset")
    captured = capfd.readouterr()
    assert "step" not in captured.err and "generate (" not in captured.err
    assert not out.exists()


def test_not_an_image_is_named_without_python_internals(tmp_path):
    from app import generate_cmd
    from streaming.offline import load_image

    (tmp_path / "bad.png").write_text("this is not a png")
    message = _one_line_exit(generate_cmd.main, _args(generate_cmd, "--image", str(tmp_path / "bad.png"), "--trajectory", "w-8", "--out", str(tmp_path / "o.mp4")))
    assert message == f"run.py generate: {tmp_path / 'bad.png'} is not a readable image: not in any image format PIL reads"
    with pytest.raises(ValueError) as raised:
        load_image(b"not an image either")
    assert "BytesIO" not in str(raised.value) and str(raised.value).startswith("<bytes> is not a readable image")


def test_generate_names_a_malformed_trajectory_size(tmp_path):
    from PIL import Image

    from app import generate_cmd

    Image.new("RGB", (64, 48)).save(tmp_path / "start.png")
    args = _args(generate_cmd, "--image", str(tmp_path / "start.png"), "--trajectory", "w-8", "--out", str(tmp_path / "o.mp4"), "--trajectory-size", "640")
    assert _one_line_exit(generate_cmd.main, args) == "run.py generate: --trajectory-size must be WxH in pixels, e.g. 1280x704, got '640'"
