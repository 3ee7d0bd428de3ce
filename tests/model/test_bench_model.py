"""`python run.py bench model`: the dense-FLOP count behind its floor, and a small end-to-end run."""
import argparse

import torch
import torch.nn.functional as F

from model import bench


def test_dense_flops_counts_matmuls_and_convs_but_not_attention():
    x = torch.randn(10, 8)
    w = torch.randn(6, 8)
    image = torch.randn(1, 3, 5, 5)
    kernel = torch.randn(4, 3, 3, 3)
    q = torch.randn(1, 2, 16, 8)

    assert bench.dense_flops(lambda: F.linear(x, w)) == 2 * 10 * 8 * 6
    assert bench.dense_flops(lambda: F.conv2d(image, kernel)) == 2 * 4 * 3 * 3 * 3 * 3 * 3  # 3×3 outputs
    assert bench.dense_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 0
    assert bench.dense_flops(lambda: (F.linear(x, w), F.scaled_dot_product_attention(q, q, q))) == 2 * 10 * 8 * 6


def test_bench_prints_the_comparison_floor_and_streaming_tables(capsys):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    parser.add_argument("--write-docs", action="store_true")
    args = parser.parse_args(["--frames", "4", "--height", "4", "--width", "6", "--chunk-frames", "3",
                              "--late-chunk", "7", "--repeats", "1", "--threads", "1"])
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "B=1, T=4, latent 4×6" in out
    floor_row = next(line for line in out.splitlines() if line.startswith("| T=4 |"))
    cells = [cell.strip() for cell in floor_row.strip("|").split("|")]
    reference_gflop, ours_gflop = float(cells[1]), float(cells[2])
    assert 0 < ours_gflop < reference_gflop  # the chunked GDN does less dense work than diffusers' form
    assert float(cells[3]) > 0  # a measured GEMM rate
    assert "ratio 7 / 5" in out
