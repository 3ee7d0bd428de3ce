"""Run by test_ddp.py under torchrun: a few teacher steps, then a few self-forcing steps (every chunk streamed, the
chunk loop inside the DDP module's forward), and each rank saves its weights after each."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.train.helpers import tiny_model  # noqa: E402
from train.data import LatentClips  # noqa: E402
from train.recipes import SelfForcedLoss, TeacherLoss  # noqa: E402
from train.trainer import LoopConfig, train_loop  # noqa: E402


def main(latents: str, out: str) -> None:
    torch.set_num_threads(1)
    loss_fn = TeacherLoss(LatentClips(latents), batch_size=2, chunk_latents=2, shift=1.0, p_clean_context=0.3)
    cfg = LoopConfig(run_dir=str(Path(out) / "run"), steps=3, lr=1e-2, warmup_steps=1, progress=False, log_every=1)
    model, ema, records = train_loop(tiny_model(), loss_fn, cfg, kv_window_chunks=2, sink=True)
    rank = dist.get_rank()
    torch.save({"model": model.state_dict(), "ema": ema.state_dict(), "losses": [r["loss"] for r in records],
                "world": dist.get_world_size(), "backend": dist.get_backend()}, Path(out) / f"rank{rank}.pt")
    selfforce = SelfForcedLoss(LatentClips(latents), batch_size=2, chunk_latents=2, sigmas=(1.0, 0.0),
                               kv_window_chunks=2, sink=True)
    cfg = LoopConfig(run_dir=str(Path(out) / "selfforce"), steps=2, lr=1e-2, warmup_steps=1, progress=False)
    model, _, records = train_loop(model, selfforce, cfg, kv_window_chunks=2, sink=True)
    torch.save({"model": model.state_dict(), "losses": [r["loss"] for r in records]}, Path(out) / f"selfforce{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
