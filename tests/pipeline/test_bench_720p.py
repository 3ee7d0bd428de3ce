"""The gpu720 benchmark's code path at a tiny size on the CPU (`--tiny-smoke`), and its refusals."""
from __future__ import annotations

import argparse

import pytest
import torch

from app import bench_720p


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    parser.add_argument("--write-docs", action="store_true")
    bench_720p.add_arguments(parser)
    return parser.parse_args(list(argv))


def test_tiny_smoke_streams_chunks_and_writes_its_section(tmp_path, capsys):
    docs = tmp_path / "benchmarks.md"
    docs.write_text("# Benchmarks\n\n## other\n\nkept\n")
    assert bench_720p.main(_args("--tiny-smoke", "--chunks", "2", "--warmup", "1", "--write-docs", "--docs-path", str(docs))) == 0
    text = docs.read_text()
    assert "## other\n\nkept" in text and "## gpu720" in text
    rows = [line for line in text.splitlines() if line.startswith("| CPU (tiny smoke test)")]
    assert len(rows) == 2, "one row without the refiner, one with it"
    off, on = ([c.strip() for c in row.strip("|").split("|")] for row in rows)
    for cells in (off, on):
        assert cells[4] == "64x64, 24/chunk" and cells[7] == "1" and float(cells[8]) > 0 and float(cells[11]) > 0
    assert off[6] == "off" and off[9] == "-"
    assert on[6].startswith("on (") and float(on[9]) > 0
    assert "x real time" in capsys.readouterr().out


def test_walks_run_batched_as_the_worker_does_one_row_per_count(monkeypatch, capsys):
    """--walks 1,2: a row per count; two walks go through `streaming.batched.step_batched` together, every chunk,
    with their own start images and poses."""
    import streaming.batched

    calls = []
    real = streaming.batched.step_batched

    def spy(generators, poses):
        calls.append((len(generators), [p[0, 0, 3] for p in poses], len({id(g) for g in generators})))
        return real(generators, poses)

    monkeypatch.setattr(streaming.batched, "step_batched", spy)
    assert bench_720p.main(_args("--tiny-smoke", "--chunks", "2", "--warmup", "1", "--refiner", "off", "--walks", "1,2")) == 0
    assert len(calls) == 3, "warm-up + 2 timed chunks of the 2-walk row; the 1-walk row steps its generator alone"
    for rows, xs, distinct in calls:
        assert rows == 2 and distinct == 2 and xs[1] - xs[0] == pytest.approx(2.0)
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in capsys.readouterr().out.splitlines()
            if line.startswith("| CPU (tiny smoke test)")]
    assert [r[7] for r in rows] == ["1", "2"] and all(float(r[8]) > 0 for r in rows)


def test_refusals(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="needs a CUDA GPU"):
        bench_720p.main(_args())
    with pytest.raises(SystemExit, match="not benchmarks"):
        bench_720p.main(_args("--tiny-smoke", "--write-docs"))
    with pytest.raises(SystemExit, match="--chunks must be >= 1"):
        bench_720p.main(_args("--tiny-smoke", "--chunks", "0"))
    with pytest.raises(SystemExit, match="--walks must list integers >= 1"):
        bench_720p.main(_args("--tiny-smoke", "--walks", "0"))
    with pytest.raises(SystemExit, match="--refiner both needs --chunk-latents 3"):
        bench_720p.main(_args("--tiny-smoke", "--chunk-latents", "2"))


def test_the_real_size_pipeline_fits_together():
    from model.release import Release

    # Built on the meta device: shapes and dtypes only, no memory, no compute.
    dit, vae, size = bench_720p.build_pipeline(tiny=False, device="meta", dtype=torch.bfloat16, gdn_backend="triton")
    assert size == (704, 1280)
    assert (vae.temporal_stride, vae.spatial_stride, vae.latent_channels) == (8, 32, 128)
    assert dit.dtype == vae.dtype == torch.bfloat16 and dit.config.gdn_backend == "triton"
    assert abs(sum(p.numel() for p in dit.parameters()) / 1e9 - 2.66) < 0.01
    release = Release(dit=dit, vae=vae, text_encoder=None, kind="streaming")
    assert release.max_frames == 961  # 60 s at 16 fps
    assert dit.config.cam_conv_cross_chunk is False, "built as the release profile runs it"


def test_the_released_refiner_size_builds():
    # diffusers' default SanaWMLTX2RefinerTransformer3DModel is the released LTX-2 size; on the meta device.
    refiner, embeds, mask = bench_720p.build_refiner(tiny=False, device="meta", dtype=torch.bfloat16)
    assert refiner.num_layers == 48 and refiner.transformer.config.num_attention_heads * 128 == 4096
    assert embeds.shape == (1, 1024, 3840) and mask.shape == (1, 1024)
