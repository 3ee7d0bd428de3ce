"""`serve --ray` on the command line: dispatched by run.py only, a one-line error without Ray, and
plain `python run.py` never importing the cluster room or Ray."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.config import ClusterConfig
from cluster.serve_cmd import cluster_from_args

ROOT = Path(__file__).resolve().parents[2]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_serve_ray_without_ray_installed_is_one_line():
    # sys.modules[name] = None makes `import name` raise ModuleNotFoundError, as on a machine without Ray.
    done = _run("import sys; sys.modules['ray'] = None; import run; sys.exit(run.main(['serve', '--ray', 'local', '--replicas', '2']))")
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "run.py serve --ray: Ray Serve is not installed: pip install -r requirements-cluster.txt"


def test_plain_serve_parses_and_runs_without_ray_or_cluster():
    # What `python run.py` imports before it serves: the parser and the serve command, never Ray or cluster/.
    done = _run("import sys; sys.modules['ray'] = None; import run, app.server, app.serve_cmd; args = run.parse_args([]); "
                "assert args.ray is None and args.handler is app.serve_cmd.main; "
                "assert not [m for m in sys.modules if m == 'cluster' or m.startswith('cluster.')], 'cluster imported'; print('ok')")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("argv, message", [
    (["serve", "--replicas", "2"], "run.py serve: --replicas needs --ray"),
    (["serve", "--replica-gpus", "1", "--replica-cpus", "2"], "run.py serve: --replica-gpus, --replica-cpus needs --ray"),
], ids=["replicas", "resources"])
def test_cluster_flags_need_ray(argv, message):
    import run

    with pytest.raises(SystemExit) as exit_info:
        run.main(argv)
    assert str(exit_info.value) == message


def test_ray_through_app_cli_is_refused():
    # app.cli never imports the cluster room, so it cannot run --ray; run.py does.
    from app.cli import main

    with pytest.raises(SystemExit, match="--ray is started by run.py"):
        main(["serve", "--ray", "local"])


def test_cluster_flags_make_the_cluster_config():
    import run

    args = run.parse_args(["serve", "--ray", "auto", "--replicas", "3", "--device", "cuda"])
    assert cluster_from_args(args, "cuda") == ClusterConfig(address="auto", replicas=3, replica_gpus=1.0, replica_cpus=1.0)
    args = run.parse_args(["--ray", "local"])
    assert cluster_from_args(args, "cpu") == ClusterConfig(address="local", replicas=2, replica_gpus=0.0, replica_cpus=1.0)
    with pytest.raises(ValueError, match="replicas must be in"):
        cluster_from_args(run.parse_args(["--ray", "local", "--replicas", "0"]), "cpu")


def test_serve_help_lists_the_cluster_flags():
    out = subprocess.run([sys.executable, "run.py", "serve", "--help"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout
    for flag in ("--ray ADDRESS", "--replicas", "--replica-gpus", "--replica-cpus"):
        assert flag in out


def test_a_local_cluster_short_of_gpus_is_refused_and_a_joined_one_waits(caplog):
    from cluster.serve_cmd import _check_resources

    _check_resources({"CPU": 2.0}, ClusterConfig(address="local", replicas=2, replica_cpus=1))
    with pytest.raises(ValueError, match=r"cannot hold 2 replicas: they need 2 x 1 GPU \(it has 0\)"):
        _check_resources({"CPU": 2.0}, ClusterConfig(address="local", replicas=2, replica_gpus=1))
    with pytest.raises(ValueError, match=r"2 x 1 GPU \(it has 1\) and 2 x 4 CPU \(it has 4\)"):
        _check_resources({"CPU": 4.0, "GPU": 1.0}, ClusterConfig(address="local", replicas=2, replica_gpus=1, replica_cpus=4))
    # A joined cluster's autoscaler may add the GPUs: only a warning.
    _check_resources({"CPU": 2.0}, ClusterConfig(address="auto", replicas=2, replica_gpus=1))
    assert "waiting for the cluster to grow" in caplog.text


def test_joining_no_cluster_is_one_line():
    done = subprocess.run([sys.executable, "run.py", "serve", "--ray", "auto", "--port", "0"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "RAY_ADDRESS": ""})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].startswith("run.py serve --ray: cannot start or join Ray at 'auto': ")


def test_a_campaign_is_refused_with_ray(tmp_path):
    from tests.collect.test_campaign import GOOD, write

    done = subprocess.run([sys.executable, "run.py", "serve", "--ray", "local", "--campaign", str(write(tmp_path, GOOD))], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1] == "run.py serve --ray: --campaign runs on a single server only (python run.py serve --campaign FILE), not with --ray yet"
