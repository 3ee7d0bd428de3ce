from __future__ import annotations

import argparse

import pytest

from app import bench_stream as bench


def test_motion_to_photon_pairs_each_input_with_the_first_frame_carrying_it():
    log = bench.ClientLog(start_t=0.0, end_t=10.0)
    log.sent = {1: 1.0, 2: 1.5, 3: 2.0, 4: 9.9}
    # Frames carry seq 0 until t=3, then seq 2 (which also answers seq 1), then seq 3 at t=4.
    log.carried = [(2.0, 0), (3.0, 2), (3.1, 2), (4.0, 3)]
    assert bench.motion_to_photon_ms(log) == pytest.approx([2000.0, 1500.0, 2000.0])


def test_summary_takes_steady_fps_over_the_walk_not_a_burst():
    log = bench.ClientLog(start_t=0.0, end_t=11.0)
    # Chunks of 8 frames arrive as bursts once a second from t=1.
    log.frames = [1.0 + c + 0.01 * i for c in range(10) for i in range(8)]
    log.chunk_ms = {0: 900.0, 1: 1000.0, 2: 1100.0}
    log.drops = 3
    out = bench.summarize([log], seconds=30.0, chunk_frames=8, fps=16.0)
    # 8 frames a second, measured between chunk starts (not 7.1 = (80 − 9) / 10 s, which counts the time of
    # the first chunk but not its frames).
    assert out["fps"] == pytest.approx(8.0) and out["total_fps"] == pytest.approx(8.0)
    assert out["ttff_ms"] == pytest.approx(1000.0) and out["chunk_ms"] == pytest.approx(1050.0)
    assert out["drops_per_min"] == pytest.approx(6.0) and out["sessions_ok"] == 1


def test_steady_fps_is_exact_for_paced_frames_and_needs_two_chunk_starts():
    paced = [0.5 + i / 16.0 for i in range(9 + 8 * 30)]  # 16 fps from the first frame on, 31 chunks
    assert bench.steady_fps(paced, 8) == pytest.approx(16.0)
    assert bench.steady_fps(paced[:9 + 8], 8) is None  # one chunk start after chunk 0 only
    assert bench.steady_fps(paced[:9 + 8 + 1], 8) == pytest.approx(16.0)


@pytest.mark.heavy
def test_bench_runs_end_to_end_and_writes_its_docs_section(monkeypatch, capsys):
    import common.bench

    written = {}
    monkeypatch.setattr(common.bench, "write_docs_section", lambda section, body: written.setdefault(section, body))
    parser = argparse.ArgumentParser()
    parser.add_argument("--write-docs", action="store_true")
    bench.add_arguments(parser)
    args = parser.parse_args(["--sessions", "1", "--seconds", "4", "--width", "32", "--height", "24", "--thread-counts", "1", "--drift-chunks", "2", "--transport", "websocket", "--threads", "1", "--write-docs"])
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "per-session, 1 session(s)" in out and "batched, 1 session(s)" in out
    assert "| worker | sessions |" in written["stream"] and "Standing camera" in written["stream"]
    assert "Most sessions of which every one held >= 15.5 fps steady: per-session:" in written["stream"]
    for mode in ("per-session", "batched"):
        row = [line for line in written["stream"].splitlines() if line.startswith(f"| {mode} | 1 |")][0]
        assert row.split("|")[3].strip() == "1", f"the session streamed ({mode})"


def test_bench_compares_kv_windows_interleaved_and_streams_each(monkeypatch, capsys):
    """`--kv-window 2,1`: one run per window per count, in turn, each streaming with its window (as `serve
    --kv-window`); a bad list is refused by name."""
    seen = []

    async def measure(runtime, n, args):
        seen.append((n, runtime.stream.generator_config().kv_window_chunks, runtime.stream.sink))
        return {"fps": 16.0, "min_fps": 16.0, "total_fps": 16.0 * n, "chunk_ms": 100.0, "ttff_ms": 200.0, "m2p_p50_ms": 300.0,
                "m2p_p95_ms": 400.0, "drops_per_min": 0.0, "sessions_ok": float(n), "capacity": 8.0, "batch_ms": 100.0}

    monkeypatch.setattr(bench, "_measure_sessions", measure)
    parser = argparse.ArgumentParser()
    parser.add_argument("--write-docs", action="store_true")
    bench.add_arguments(parser)
    args = parser.parse_args(["--sessions", "1,2", "--width", "32", "--height", "24", "--thread-counts", "1", "--drift-chunks", "1",
                              "--modes", "batched", "--generator-process", "off", "--kv-window", "2,1", "--threads", "1"])
    assert bench.main(args) == 0
    assert seen == [(1, 2, True), (1, 1, True), (2, 2, True), (2, 1, True)]
    out = capsys.readouterr().out
    assert "batched, KV window 2, 2 session(s)" in out and "batched, KV window 1, 2 session(s)" in out
    for bad in ("0", "a,1", ""):
        with pytest.raises(SystemExit, match="--kv-window must list integers >= 1"):
            bench.main(parser.parse_args(["--sessions", "1", "--kv-window", bad, "--thread-counts", "1", "--drift-chunks", "1"]))
