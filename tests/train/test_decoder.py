"""The decoder refined on the model's own rollouts (train/decoder.py) and how the embedded model picks it."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from model.vae import load_tiny_vae, save_tiny_vae
from tests.train.helpers import STRIDE, tiny_model, write_latent_clips, write_vae
from train.decoder import (RefineConfig, RolloutPairs, decode_window, draw_windows, make_rollouts, refine_decoder,
                           refine_loss, warmup_latents)


def test_a_window_decoded_after_its_warmup_equals_the_streamed_decode(tmp_path):
    """The decoder's temporal receptive field is warmup_latents(vae) latents: a window decoded from a zero
    context after that many latents gives exactly the frames the live stream decoder gives them."""
    vae = load_tiny_vae(write_vae(tmp_path / "vae.safetensors"))
    with torch.no_grad():
        for block in vae.decoder.temporal:  # make the temporal path matter (the deep path starts silent)
            block.conv_s.weight.normal_(0, 0.3)
        vae.decoder.stages[-1][1].weight.normal_(0, 0.3)
    latents = torch.randn(1, 8, 9, 4, 4, generator=torch.Generator().manual_seed(0))
    warmup = warmup_latents(vae)
    assert warmup == 4
    with torch.no_grad():
        streamed = vae.stream_decoder(1)
        frames = torch.cat([streamed.decode_chunk(latents[:, :, :3]), streamed.decode_chunk(latents[:, :, 3:])], dim=2)
        window = decode_window(vae, latents[:, :, 5 - warmup: 8], warmup).clamp(-1, 1)  # latents 5, 6, 7
    # latent i >= 1 holds frames stride·(i−1)+1 … stride·i
    torch.testing.assert_close(window, frames[:, :, STRIDE * 4 + 1: STRIDE * 7 + 1], atol=1e-5, rtol=1e-5)
    short = decode_window(vae, latents[:, :, 5 - 1: 8], 1).clamp(-1, 1)  # too little warm-up: not the stream
    assert not torch.allclose(short, window, atol=1e-4)


def _pairs(tmp_path, n=3, frames=9):
    """Rollouts of a tiny model over tiny clips, the clips' frames (random), and the pairs read back."""
    latents_dir = write_latent_clips(tmp_path / "latents", n, frames=frames)
    clips_dir = tmp_path / "clips"
    clips_dir.mkdir()
    rng = np.random.default_rng(0)
    for path in latents_dir.glob("*.pt"):
        np.savez(clips_dir / f"{path.stem}.npz", frames=rng.integers(0, 255, (STRIDE * (frames - 1) + 1, 32, 32, 3),
                                                                       dtype=np.uint8))
    count = make_rollouts(tiny_model(), latents_dir, tmp_path / "rollouts", (1.0, 0.0), 2, True, 2, count=n,
                          batch_size=2, progress=False)
    return count, RolloutPairs(tmp_path / "rollouts", latents_dir, clips_dir)


def test_rollouts_are_the_models_stream_and_pair_with_the_true_frames(tmp_path):
    count, pairs = _pairs(tmp_path)
    assert count == 3 and len(pairs) == 3
    rollout, clean = pairs.rollouts[0].float(), pairs.clean[0].float()
    assert rollout.shape == clean.shape == (8, 9, 4, 4)
    torch.testing.assert_close(rollout[:, :1], clean[:, :1], atol=1e-3, rtol=1e-3)  # frame 0: the clip's image
    assert (rollout[:, 1:] - clean[:, 1:]).abs().mean() > 0.1  # the rest is the model's, not the data
    before = (tmp_path / "rollouts" / f"{pairs.names[0]}.pt").stat().st_mtime_ns
    make_rollouts(tiny_model(), tmp_path / "latents", tmp_path / "rollouts", (1.0, 0.0), 2, True, 2, count=3,
                  progress=False)
    assert (tmp_path / "rollouts" / f"{pairs.names[0]}.pt").stat().st_mtime_ns == before  # resumable: kept
    latents, video = draw_windows(pairs, 2, 3, 4, 0.5, STRIDE, torch.Generator().manual_seed(0))
    assert latents.shape == (2, 8, 7, 4, 4) and video.shape == (2, 3, 12, 32, 32)
    assert video.min() >= -1 and video.max() <= 1


def test_refining_lowers_the_loss_keeps_the_encoder_and_resumes(tmp_path):
    _, pairs = _pairs(tmp_path)
    vae = load_tiny_vae(write_vae(tmp_path / "vae.safetensors"))
    encoder_before = {k: v.clone() for k, v in vae.encoder.state_dict().items()}
    rng = torch.Generator().manual_seed(5)
    fixed = draw_windows(pairs, 4, 3, 4, 0.0, STRIDE, rng)

    def loss_of(model) -> float:
        with torch.no_grad():
            return float(refine_loss(decode_window(model, fixed[0], 4), fixed[1], 1.0))

    start = loss_of(vae)
    cfg = RefineConfig(run_dir=str(tmp_path / "run"), steps=40, minutes=0.0, lr=3e-3, batch_size=4, ema_decay=0.5,
                       progress=False)
    refined = refine_decoder(vae, pairs, cfg)
    assert loss_of(refined) < 0.95 * start  # random target frames: only their mean and scale can be learned
    for key, value in refined.encoder.state_dict().items():
        torch.testing.assert_close(value, encoder_before[key])
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 40
    again = refine_decoder(load_tiny_vae(tmp_path / "vae.safetensors"), pairs,
                           RefineConfig(**{**cfg.__dict__, "steps": 50}))
    assert json.loads((tmp_path / "run" / "log.jsonl").read_text().splitlines()[-1])["step"] == 50
    assert loss_of(again) < start


def test_the_embedded_model_takes_a_decoder_refined_for_its_latent_space(tmp_path):
    """roam_tiny_decoder.safetensors is taken when its latent_space is the model's vae_tag, and passed over
    (for the VAE itself) when it was refined for another space."""
    from model.release import embedded_vae_path, latent_space_tag, vae_tag

    weights = tmp_path / "roam_tiny.safetensors"
    weights.write_bytes(b"")
    vae_path = write_vae(tmp_path / "roam_tiny_vae.safetensors")
    (tmp_path / "roam_tiny.json").write_text(json.dumps({"vae_tag": vae_tag(vae_path)}))
    decoder = tmp_path / "roam_tiny_decoder.safetensors"
    vae = load_tiny_vae(vae_path)
    with torch.no_grad():
        vae.decoder.skip.weight.add_(0.1)
    save_tiny_vae(vae, decoder, extra_metadata={"latent_space": vae_tag(vae_path)})
    assert latent_space_tag(decoder) == vae_tag(vae_path) != vae_tag(decoder)
    assert embedded_vae_path(weights) == decoder
    save_tiny_vae(vae, decoder, extra_metadata={"latent_space": "0123456789ab"})
    assert embedded_vae_path(weights) == vae_path


def test_refine_loss_weighs_edges():
    flat = torch.zeros(1, 3, 1, 8, 8)
    edge = flat.clone()
    edge[..., 4:] = 1.0
    assert refine_loss(flat, edge, 0.0) == pytest.approx(0.5)
    assert refine_loss(flat, edge, 1.0) > refine_loss(flat, edge, 0.0)


def test_train_decoder_without_steps_writes_the_vae_with_the_seam_filter(tmp_path):
    """`train decoder --decoder-steps 0` (how the shipped decoder is made): the training VAE's weights unchanged,
    the cell-seam filter on, and its latent space named, so the embedded model takes it."""
    import argparse

    from model.release import latent_space_tag, vae_tag
    from train import train_cmd

    vae_path = write_vae(tmp_path / "vae.safetensors")
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    out = tmp_path / "decoder.safetensors"
    args = parser.parse_args(["decoder", "--vae", str(vae_path), "--decoder-steps", "0", "--out", str(out),
                              "--deblock-step", "0.4"])
    assert train_cmd.main(args) == 0
    written, source = load_tiny_vae(out), load_tiny_vae(vae_path)
    assert written.cfg.deblock_step == 0.4 and written.cfg.deblock_flat == 0.06 and source.cfg.deblock_step == 0.0
    for name, value in source.state_dict().items():
        torch.testing.assert_close(written.state_dict()[name], value)
    assert latent_space_tag(out) == vae_tag(vae_path)
    with pytest.raises(ValueError, match="--decoder-steps"):
        train_cmd.main(parser.parse_args(["decoder", "--vae", str(vae_path), "--decoder-steps", "-1"]))


def _walks(n: int, latents: int = 7, hw: int = 4) -> list[torch.Tensor]:
    from tests.train.helpers import LATENT_CHANNELS

    gen = torch.Generator().manual_seed(3)
    return [torch.randn(LATENT_CHANNELS, latents, hw, hw, generator=gen) for _ in range(n)]


def _wide_vae(tmp_path):
    """The helpers' VAE with a deep decoder path that matters (a fresh one is only its linear path)."""
    vae = load_tiny_vae(write_vae(tmp_path / "vae.safetensors"))
    with torch.no_grad():
        vae.decoder.stages[-1][1].weight.normal_(0, 0.2)
        for block in vae.decoder.temporal:
            block.conv_s.weight.normal_(0, 0.2)
    return vae


def test_a_narrow_decoder_starts_as_the_wide_ones_linear_path_and_keeps_its_encoder(tmp_path):
    from train.decoder import narrow_decoder

    wide = _wide_vae(tmp_path)
    narrow = narrow_decoder(wide, (2, 4, 4))
    assert narrow.cfg.widths == wide.cfg.widths and narrow.cfg.decoder_stage_widths == (2, 4, 4)
    assert narrow.decoder.stages[0][0].conv1.weight.shape[0] == 4  # the lowest-resolution stage is the narrow width
    video = torch.rand(1, 3, 1 + 2 * STRIDE, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(narrow.encode(video), wide.encode(video))
        z = wide.encode(video)
        mean, std = wide._stats()
        skip = wide.decoder.skip((z * std + mean)[:, :, 0])  # [1, stride·3·8², h, w]: one block per sub-frame
        linear = torch.nn.functional.pixel_shuffle(skip[:, -3 * 64:], 8)  # latent 0 keeps its last sub-frame
        torch.testing.assert_close(narrow.decode(z[:, :, :1])[:, :, 0], linear.clamp(-1, 1), atol=1e-5, rtol=1e-5)
        assert (narrow.decode(z) - wide.decode(z)).abs().max() > 1e-3  # the wide deep path is not there yet


def test_distilling_a_narrow_decoder_approaches_the_wide_one_and_resumes(tmp_path):
    """The distilled decoder scores closer to the wide one on held-out walks than its start did, in a
    file that holds the wide encoder beside the narrow decoder; a second call resumes from the checkpoint."""
    import statistics

    from train.decoder import DistilConfig, decoder_fidelity, distil_decoder, narrow_decoder

    wide, walks = _wide_vae(tmp_path), _walks(8)
    before = statistics.median(decoder_fidelity(narrow_decoder(wide, (4, 8, 8)), wide, walks[-2:], window=5))
    cfg = DistilConfig(run_dir=str(tmp_path / "run"), widths=(4, 8, 8), steps=60, minutes=0.0, lr=5e-3, window=3,
                       crop=4, held_out=2, ema_decay=0.5, progress=False)
    narrow, report = distil_decoder(wide, walks, cfg)
    assert report["steps"] == 60 and report["held_out_walks"] == 2
    assert report["held_out_psnr_db"] > before + 1.0
    saved = save_tiny_vae(narrow, tmp_path / "narrow.safetensors")
    loaded = load_tiny_vae(saved)
    assert loaded.cfg.decoder_widths == (4, 8, 8) and loaded.cfg.widths == wide.cfg.widths
    z = walks[-1][None, :, :5]
    with torch.no_grad():
        torch.testing.assert_close(loaded.decode(z), narrow.decode(z), atol=2e-3, rtol=0)  # float16 file
    again, report = distil_decoder(wide, walks, DistilConfig(**{**cfg.__dict__, "steps": 70}))
    assert report["steps"] == 70
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [entry["step"] for entry in log] == [10, 20, 30, 40, 50, 60, 70]
    with pytest.raises(ValueError, match=r"made with widths=\(4, 8, 8\), not \(4, 4, 4\)"):
        distil_decoder(wide, walks, DistilConfig(**{**cfg.__dict__, "widths": (4, 4, 4)}))
    with pytest.raises(ValueError, match="held_out"):
        distil_decoder(wide, walks[:2], DistilConfig(**{**cfg.__dict__, "run_dir": str(tmp_path / "other")}))


def test_latent_windows_are_cut_from_the_walks_and_perturbed_on_request():
    from train.decoder import draw_latent_windows

    walks = _walks(3, latents=9, hw=6)
    rng = torch.Generator().manual_seed(0)
    seen_first = seen_later = False
    for _ in range(30):
        z, first = draw_latent_windows(walks, 2, 4, 3, 0.0, 0.5, rng)
        assert z.shape == (2, walks[0].shape[0], 4, 3, 3)
        for sample in z:  # every clean sample is a window of one of the walks
            assert any((walk.unfold(1, 4, 1).unfold(2, 3, 1).unfold(3, 3, 1).permute(1, 2, 3, 0, 4, 5, 6)
                        - sample).abs().flatten(3).amax(-1).min() < 1e-6 for walk in walks)
        seen_first |= first
        seen_later |= not first
    assert seen_first and seen_later
    noisy, _ = draw_latent_windows(walks, 64, 4, 3, 1.0, 0.5, torch.Generator().manual_seed(1))
    clean, _ = draw_latent_windows(walks, 64, 4, 3, 0.0, 0.5, torch.Generator().manual_seed(1))
    assert not torch.equal(noisy, clean)
    with pytest.raises(ValueError, match="shorter than a window"):
        draw_latent_windows(walks, 1, 12, 3, 0.0, 0.5, rng)


def test_train_decoder_with_widths_distils_into_a_file_the_app_loads(tmp_path):
    """`train decoder --decoder-widths` writes a TinyVAE with --vae's encoder, the narrow decoder, the seam
    filter and the latent space, and the report in its metadata; bad widths are refused by name."""
    import argparse

    from safetensors import safe_open

    from model.release import latent_space_tag, vae_tag
    from train import train_cmd
    from train.data import vae_tag as data_vae_tag

    vae_path = write_vae(tmp_path / "vae.safetensors")
    data = tmp_path / "data"
    write_latent_clips(data / "latents" / data_vae_tag(vae_path) / "train", 8, frames=7)
    parser = argparse.ArgumentParser()
    train_cmd.add_arguments(parser)
    out = tmp_path / "narrow.safetensors"
    common = ["decoder", "--vae", str(vae_path), "--data", str(data), "--run-dir", str(tmp_path / "run"), "--no-progress"]
    args = parser.parse_args(common + ["--decoder-widths", "2,4,4", "--decoder-steps", "5", "--out", str(out)])
    assert train_cmd.main(args) == 0
    written, source = load_tiny_vae(out), load_tiny_vae(vae_path)
    assert written.cfg.decoder_widths == (2, 4, 4) and written.cfg.deblock_step == 0.5
    for name, value in source.encoder.state_dict().items():
        torch.testing.assert_close(written.encoder.state_dict()[name], value)
    assert latent_space_tag(out) == vae_tag(vae_path)
    with safe_open(str(out), framework="pt") as f:
        report = json.loads(f.metadata()["distil_report"])
    assert report["steps"] == 5 and report["held_out_walks"] == 6
    for bad, message in (("2,4", "decoder_widths needs"), ("2,x,4", "comma-separated"), ("2,0,4", "positive")):
        with pytest.raises(ValueError, match=message):
            train_cmd.main(parser.parse_args(common + ["--decoder-widths", bad]))
    with pytest.raises(ValueError, match="--decoder-steps > 0"):
        train_cmd.main(parser.parse_args(common + ["--decoder-widths", "2,4,4", "--decoder-steps", "0"]))
