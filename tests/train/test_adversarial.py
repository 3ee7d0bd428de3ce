"""The latent adversarial term (train/adversarial.py): the discriminator learns to tell sharp latents from
blurred ones, the generator term pushes the blurred ones towards sharp without training the discriminator,
and a run's discriminator survives a resume."""
from __future__ import annotations

import pytest
import torch

from tests.train.helpers import tiny_model, write_latent_clips
from train.adversarial import AdversarialTerm, LatentDiscriminator
from train.data import LatentClips
from train.recipes import RollingSelfForcedLoss
from train.trainer import ChunkCausalNet, LoopConfig, train_loop


def _sharp_and_blurred(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    sharp = torch.randn(4, 8, 2, 8, 8, generator=torch.Generator().manual_seed(seed))
    blurred = torch.nn.functional.avg_pool3d(sharp, (1, 3, 3), stride=1, padding=(0, 1, 1))
    return sharp, blurred


def test_the_discriminator_learns_and_the_generator_term_moves_fakes_towards_real():
    torch.set_num_threads(1)
    assert LatentDiscriminator(8)(torch.zeros(2, 8, 3, 8, 8)).shape == (6, 1, 4, 4)
    with pytest.raises(ValueError, match="B, C, T, h, w"):
        LatentDiscriminator(8)(torch.zeros(2, 8, 8, 8))
    with pytest.raises(ValueError, match="weight"):
        AdversarialTerm(8, weight=0.0)
    term = AdversarialTerm(8, weight=1.0, lr=1e-3)
    logs = [term.update(*_sharp_and_blurred(step)) for step in range(60)]
    assert logs[-1]["d_loss"] < 0.5 * logs[0]["d_loss"] and logs[-1]["d_real"] > logs[-1]["d_fake"]

    # The generator term: a gradient on the fake only, none into the discriminator.
    _, blurred = _sharp_and_blurred(1000)
    fake = blurred.clone().requires_grad_(True)
    term.discriminator.zero_grad(set_to_none=True)
    loss = term.generator_loss(fake)
    loss.backward()
    assert fake.grad is not None and float(fake.grad.abs().sum()) > 0
    assert all(p.grad is None for p in term.discriminator.parameters())
    assert all(p.requires_grad for p in term.discriminator.parameters())
    # A small step against that gradient makes the discriminator score the fakes as more real.
    with torch.no_grad():
        before = float(term.discriminator(blurred).mean())
        after = float(term.discriminator(blurred - 0.05 * fake.grad / fake.grad.abs().max()).mean())
    assert after > before

    restored = AdversarialTerm(8, weight=1.0, seed=5)
    restored.load_state_dict(term.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(restored.discriminator(blurred), term.discriminator(blurred))


def test_rolling_loss_with_the_term_logs_it_and_a_resumed_run_keeps_the_discriminator(tmp_path):
    torch.set_num_threads(1)
    clips = LatentClips(write_latent_clips(tmp_path / "latents", 2, frames=9))

    def loss_fn(seed: int) -> RollingSelfForcedLoss:
        return RollingSelfForcedLoss(clips, 2, 2, (0.6, 0.0), 2, True, window_chunks=2, warm_start=True,
                                     adversarial=AdversarialTerm(8, weight=0.2, seed=seed))

    first = loss_fn(0)
    loss, logs = first(ChunkCausalNet(tiny_model(seed=2), kv_window_chunks=2, sink=True), torch.Generator().manual_seed(0), 0)
    assert loss.requires_grad and {"d_loss", "d_real", "d_fake", "adversarial"} <= set(logs)

    cfg = LoopConfig(run_dir=str(tmp_path / "run"), steps=3, lr=1e-3, warmup_steps=1, progress=False)
    trained = loss_fn(0)
    train_loop(tiny_model(seed=2), trained, cfg, kv_window_chunks=2, sink=True)
    saved = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert "adversarial" in saved["loss_state"]
    resumed = loss_fn(7)  # a different fresh discriminator, replaced by the saved one on resume
    train_loop(tiny_model(seed=2), resumed, LoopConfig(run_dir=str(tmp_path / "run"), steps=3, lr=1e-3, warmup_steps=1,
                                                       progress=False), kv_window_chunks=2, sink=True)
    for a, b in zip(resumed.adversarial.discriminator.parameters(), trained.adversarial.discriminator.parameters()):
        torch.testing.assert_close(a, b)


def test_a_conditional_discriminator_tells_the_wrong_place_where_an_unconditional_one_cannot():
    """Real frames are noisy copies of their walk's start latent; fakes are equally real-looking frames of another
    walk's place. Only the discriminator that sees the start latent can tell them apart."""
    torch.set_num_threads(1)

    def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        places = torch.randn(8, 8, 8, 8, generator=g)  # [B, C, h, w]: each walk's start latent
        frames = places[:, :, None] + 0.1 * torch.randn(8, 8, 2, 8, 8, generator=g)  # [B, C, T, h, w]
        return frames, frames.roll(1, dims=0), places  # real, fake (another walk's place), condition

    conditional, plain = AdversarialTerm(8, weight=1.0, lr=1e-3, conditional=True), AdversarialTerm(8, weight=1.0, lr=1e-3)
    for step in range(80):
        real, fake, places = batch(step)
        conditional.update(real, fake, places)
        plain.update(real, fake)
    real, fake, places = batch(10_000)
    with torch.no_grad():
        margin = float(conditional.discriminator(real, places).mean() - conditional.discriminator(fake, places).mean())
        plain_margin = float(plain.discriminator(real).mean() - plain.discriminator(fake).mean())
    assert margin > 1.0 and abs(plain_margin) < 0.3 * margin

    with pytest.raises(ValueError, match="condition"):
        conditional.discriminator(real)
    with pytest.raises(ValueError, match="condition"):
        conditional.discriminator(real, places[:, :4])
    with pytest.raises(ValueError, match="conditional"):
        plain.load_state_dict(conditional.state_dict())
    restored = AdversarialTerm(8, weight=1.0, seed=3, conditional=True)
    restored.load_state_dict(conditional.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(restored.discriminator(real, places), conditional.discriminator(real, places))


def test_rolling_loss_feeds_a_conditional_discriminator_the_walks_start_latent(tmp_path):
    torch.set_num_threads(1)
    clips = LatentClips(write_latent_clips(tmp_path / "latents", 2, frames=9))
    term = AdversarialTerm(8, weight=0.2, seed=0, conditional=True)
    seen = []
    update = term.update
    term.update = lambda real, fake, condition=None: seen.append(condition) or update(real, fake, condition)
    loss_fn = RollingSelfForcedLoss(clips, 2, 2, (0.6, 0.0), 2, True, window_chunks=2, warm_start=True, adversarial=term)
    net = ChunkCausalNet(tiny_model(seed=2), kv_window_chunks=2, sink=True)
    loss, logs = loss_fn(net, torch.Generator().manual_seed(0), 0)
    loss.backward()
    assert {"d_loss", "adversarial"} <= set(logs)
    torch.testing.assert_close(seen[0], loss_fn.walk.batch["latents"][:, :, 0])
