from __future__ import annotations

import json

import pytest

import torch

from tests.conftest import ci_size
from tests.train.helpers import tiny_model, write_latent_clips
from train.data import LatentClips
from train.recipes import DistilLoss, TeacherLoss, make_pairs, teacher_rollout
from train.trainer import ChunkCausalNet, LoopConfig, train_loop


def _fixed_loss(model, loss_fn) -> float:
    """The loss on one fixed draw of clips, σ and noise."""
    net = ChunkCausalNet(model, kv_window_chunks=2, sink=True)
    with torch.no_grad():
        return float(loss_fn(net, torch.Generator().manual_seed(123), 1)[0])


def test_teacher_loss_goes_down_and_run_resumes(tmp_path):
    torch.set_num_threads(1)
    clips = LatentClips(write_latent_clips(tmp_path / "latents", 6))
    loss_fn = TeacherLoss(clips, batch_size=4, chunk_latents=2, shift=1.0, p_clean_context=0.3)
    model = tiny_model()
    before = _fixed_loss(model, loss_fn)
    steps = ci_size(30, 20)
    cfg = LoopConfig(run_dir=str(tmp_path / "run"), steps=steps, lr=3e-3, warmup_steps=5, progress=False, log_every=5)
    model, ema, records = train_loop(model, loss_fn, cfg, kv_window_chunks=2, sink=True)
    after = _fixed_loss(model, loss_fn)
    assert after < 0.8 * before, (before, after)
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged] == list(range(5, steps + 1, 5))
    assert any(not torch.equal(a, b) for a, b in zip(model.parameters(), ema.parameters()))

    # A second run with more steps continues from the checkpoint: only the new steps run.
    cfg2 = LoopConfig(run_dir=str(tmp_path / "run"), steps=steps + 3, lr=3e-3, warmup_steps=5, progress=False)
    _, _, more = train_loop(tiny_model(seed=1), loss_fn, cfg2, kv_window_chunks=2, sink=True)
    assert [r["step"] for r in more] == [steps + 1, steps + 2, steps + 3]


def test_teacher_rollout_records_the_distilled_trajectory(tmp_path):
    torch.set_num_threads(1)
    clips = LatentClips(write_latent_clips(tmp_path / "latents", 2))
    batch = clips.batch([0, 1])
    lat = batch["latents"]  # [2, C, 5, 4, 4]
    noise = torch.randn(lat.shape)
    model = tiny_model().eval()
    keep = [1.0, 0.5]
    traj, x0 = teacher_rollout(model, lat[:, :, :1], batch["camera_conditions"], batch["chunk_plucker"], [3, 2],
                               [1.0, 0.75, 0.5, 0.25, 0.0], keep, noise, kv_window_chunks=2, sink=True)
    assert traj.shape == (2, 2) + tuple(lat.shape[1:]) and x0.shape == lat.shape
    assert torch.equal(traj[:, 0, :, 1:], noise[:, :, 1:]), "σ = 1 is the starting noise"
    assert torch.equal(traj[:, 1, :, :1], lat[:, :, :1]) and torch.equal(x0[:, :, :1], lat[:, :, :1])
    assert not torch.allclose(traj[:, 1, :, 1:], noise[:, :, 1:])

    pairs = make_pairs(model, clips, 2, 2, 2, (1.0, 0.5, 0.0), 2, 1.0, 2, True, progress=False)
    assert pairs["trajectory"].shape[:2] == (2, 2) and pairs["sigmas"].tolist() == [1.0, 0.5]
    distil = DistilLoss(pairs, batch_size=2, chunk_latents=2, p_clean_context=0.3)
    net = ChunkCausalNet(model.train(), kv_window_chunks=2, sink=True)
    loss, _ = distil(net, torch.Generator().manual_seed(0), 0)
    loss.backward()
    assert torch.isfinite(loss) and model.final_layer.linear.weight.grad is not None


def test_crop_moves_the_principal_point_with_the_window():
    from train.data import crop_batch

    gen = torch.Generator().manual_seed(0)
    latents = torch.arange(16.0).reshape(1, 1, 1, 4, 4).expand(2, 3, 5, 4, 4).contiguous()
    camera = torch.zeros(2, 5, 20)
    camera[..., 18:20] = 2.0
    batch = {"latents": latents, "camera_conditions": camera, "chunk_plucker": latents[:, :1].repeat(1, 6, 1, 1, 1)}
    out = crop_batch(batch, 2, 3, gen)
    assert out["latents"].shape == (2, 3, 3, 2, 2) and out["chunk_plucker"].shape == (2, 6, 3, 2, 2)
    for i in range(2):
        # the top-left kept cell's value encodes its (row, col); the principal point moves by the same offset
        y, x = divmod(int(out["latents"][i, 0, 0, 0, 0]), 4)
        assert out["camera_conditions"][i, 0, 18].item() == 2.0 - x and out["camera_conditions"][i, 0, 19].item() == 2.0 - y
        assert torch.equal(out["chunk_plucker"][i, 0], out["latents"][i, 0])
    with pytest.raises(ValueError, match="does not fit"):
        crop_batch(batch, 5, None, gen)


def test_self_forced_loss_one_target_trains_on_the_students_own_streamed_context(tmp_path, monkeypatch):
    """targets="one": the context chunks are the live sampler's own rollout (the teacher_rollout loop on the live σ),
    the target chunk is the ground truth noised to a live σ, and only the target chunk is scored."""
    import train.recipes as recipes

    torch.set_num_threads(1)
    clips = LatentClips(write_latent_clips(tmp_path / "latents", 4, frames=7))
    live = (1.0, 0.8, 0.4, 0.0)
    model = tiny_model()
    seen = {}
    original_rollout = recipes.teacher_rollout

    def spy_rollout(m, image, camera, plucker, sizes, grid, keep, noise, window, sink):
        traj, x0 = original_rollout(m, image, camera, plucker, sizes, grid, keep, noise, window, sink)
        seen["rollout"] = (list(sizes), list(grid), x0, m.training)
        return traj, x0

    monkeypatch.setattr(recipes, "teacher_rollout", spy_rollout)
    net = ChunkCausalNet(model.train(), kv_window_chunks=2, sink=True)
    calls = {}
    inner_forward = net.forward

    def spy_forward(x, timestep, camera, plucker, sizes):
        calls["x"], calls["t"], calls["sizes"] = x.clone(), timestep.clone(), list(sizes)
        return inner_forward(x, timestep, camera, plucker, sizes)

    net.forward = spy_forward
    loss_fn = recipes.SelfForcedLoss(clips, batch_size=2, chunk_latents=2, sigmas=live, kv_window_chunks=2, sink=True,
                                     targets="one")
    targets = set()
    for seed in range(12):
        seen.clear()
        loss, metrics = loss_fn(net, torch.Generator().manual_seed(seed), 1)
        target = metrics["target_chunk"]
        targets.add(target)
        sizes = [3, 2, 2][:target + 1]
        assert calls["sizes"] == sizes and calls["x"].shape[2] == sum(sizes)
        start = sum(sizes[:-1])
        t = calls["t"][:, 0]  # [B, T]
        assert bool((t[:, :start] == 0).all()) and bool((t[:, 0] == 0).all())
        assert {round(float(s) / 1000, 6) for s in t[:, max(start, 1):].flatten()} <= {1.0, 0.8, 0.4}
        if target > 0:
            own_sizes, grid, own, training = seen["rollout"]
            assert own_sizes == sizes[:-1] and grid == list(live) and not training
            assert torch.equal(calls["x"][:, :, :start], own), "context = the student's own rollout"
            assert model.training, "the rollout restores train mode"
        else:
            assert "rollout" not in seen
        loss.backward()
        assert torch.isfinite(loss)
    assert targets == {0, 1, 2}


@pytest.mark.parametrize("live", [(1.0, 0.0), (1.0, 0.8, 0.4, 0.0)], ids=["one-step", "three-step"])
def test_self_forced_stream_equals_the_chunk_causal_call_on_the_own_rollout(tmp_path, live):
    """Every chunk's velocity from the streamed rollout equals the chunk-causal forward over [the live sampler's
    own earlier chunks at t = 0, this chunk], and so do the gradients of a loss on the last chunk (which flow
    back through the earlier chunks' commit passes)."""
    from train.recipes import self_forced_stream

    torch.set_num_threads(1)
    clips = LatentClips(write_latent_clips(tmp_path / "latents", 2, frames=7))
    batch = clips.batch([0, 1])
    x0, camera, plucker = batch["latents"], batch["camera_conditions"], batch["chunk_plucker"]
    sizes = [3, 2, 2]
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(x0.shape, generator=gen)
    levels = torch.tensor(live[:-1])
    sigma = levels[torch.randint(len(levels), (2, 3), generator=gen)][:, [0, 0, 0, 1, 1, 2, 2]]  # [B, T]
    sigma[:, 0] = 0.0
    sigma[0, 3:5] = live[0]  # at least one chunk starts where the sampler starts
    x_in = (1 - sigma[:, None, :, None, None]) * x0 + sigma[:, None, :, None, None] * noise
    timestep = (sigma * 1000.0)[:, None]
    model = tiny_model(seed=3)
    with torch.no_grad():
        model.plucker_embedder.proj.weight.normal_(0, 0.2)  # every branch live, so every path is compared
        for block in model.blocks:
            block.plucker_proj.weight.normal_(0, 0.2)
    _, own = teacher_rollout(model, x0[:, :, :1], camera, plucker, sizes[:-1], list(live), [], noise[:, :, :5], 2, True)

    streamed = self_forced_stream(model, x_in, timestep, camera, plucker, sizes, live, noise, 2, True)
    weights = torch.randn(streamed[:, :, 5:].shape, generator=gen)
    model.zero_grad()
    (streamed[:, :, 5:] * weights).sum().backward()
    grads_streamed = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    text, mask = model.null_text(2)
    for c, (start, end) in enumerate([(0, 3), (3, 5), (5, 7)]):
        x = torch.cat((own[:, :, :start], x_in[:, :, start:end]), dim=2)
        t = torch.cat((torch.zeros(2, 1, start), timestep[:, :, start:end]), dim=2)
        model.zero_grad()
        reference = model.forward_chunk_causal(x, t, text, mask, camera[:, :end], plucker[:, :, :end],
                                               chunk_sizes=sizes[:c + 1], kv_window_chunks=2, sink=True)[:, :, start:]
        torch.testing.assert_close(streamed[:, :, start:end].detach(), reference.detach(), atol=2e-5, rtol=1e-4)
    (reference * weights).sum().backward()
    grads_reference = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads_streamed.keys() == grads_reference.keys()
    for name, grad in grads_reference.items():
        torch.testing.assert_close(grads_streamed[name], grad, atol=1e-4, rtol=1e-3, msg=name)
    assert grads_reference["blocks.0.attn.qkv.weight"].abs().max() > 0


def test_self_forced_loss_all_targets_scores_every_chunk_and_goes_down(tmp_path):
    import train.recipes as recipes

    torch.set_num_threads(1)
    clips = LatentClips(write_latent_clips(tmp_path / "latents", 6, frames=7))
    loss_fn = recipes.SelfForcedLoss(clips, batch_size=4, chunk_latents=2, sigmas=(1.0, 0.0), kv_window_chunks=2,
                                     sink=True)
    model = tiny_model()
    calls = {}
    net = ChunkCausalNet(model, kv_window_chunks=2, sink=True)
    inner = net.forward

    def spy(x, timestep, camera, plucker, sizes, **kwargs):
        calls["t"], calls["sizes"], calls["kwargs"] = timestep.clone(), list(sizes), kwargs
        return inner(x, timestep, camera, plucker, sizes, **kwargs)

    net.forward = spy
    loss, metrics = loss_fn(net, torch.Generator().manual_seed(0), 1)
    assert calls["sizes"] == [3, 2, 2] and metrics["chunks"] == 3
    assert bool((calls["t"][:, 0, 0] == 0).all()) and bool((calls["t"][:, 0, 1:] == 1000.0).all())
    assert calls["kwargs"]["live_sampler"][0] == [1.0, 0.0]
    with pytest.raises(ValueError, match="targets"):
        recipes.SelfForcedLoss(clips, 4, 2, (1.0, 0.0), 2, True, targets="some")

    before = _fixed_loss(model, loss_fn)
    cfg = LoopConfig(run_dir=str(tmp_path / "run"), steps=ci_size(30, 20), lr=3e-3, warmup_steps=5, progress=False)
    model, _, _ = train_loop(model, loss_fn, cfg, kv_window_chunks=2, sink=True)
    assert _fixed_loss(model, loss_fn) < 0.8 * before


def test_pixel_channel_weights_follow_the_decoders_linear_path():
    from train.flow import masked_mse, pixel_channel_weights

    skip = torch.zeros(12, 3)
    skip[:, 0] = 2.0  # channel 0 paints 12 pixels at 2 per unit: 48 of pixel energy
    skip[:3, 1] = 1.0  # channel 1: 3
    skip[0, 2] = 1.0  # channel 2: 1, but a latent std of 3 makes it 9
    std = torch.tensor([1.0, 1.0, 3.0])
    w = pixel_channel_weights(skip, std, mix=1.0)
    share = torch.tensor([48.0, 3.0, 9.0])
    assert torch.allclose(w, share / share.mean())
    half = pixel_channel_weights(skip, std, mix=0.5)
    assert torch.allclose(half, 0.5 * share / share.mean() + 0.5) and abs(float(half.mean()) - 1.0) < 1e-6
    assert torch.equal(pixel_channel_weights(skip, std, mix=0.0), torch.ones(3))
    with pytest.raises(ValueError, match="mix"):
        pixel_channel_weights(skip, std, mix=1.5)

    pred, target = torch.zeros(1, 3, 2, 1, 1), torch.ones(1, 3, 2, 1, 1)
    frames = torch.tensor([[1.0, 0.0]])
    assert float(masked_mse(pred, target, frames, w)) == pytest.approx(float(w.sum()) / 3)
    with pytest.raises(ValueError, match="channel_weights"):
        masked_mse(pred, target, frames, torch.ones(2))


def test_plucker_branch_leaves_its_zero_saddle(tmp_path):
    """The official init zeroes the Plücker embedder and every projection; trained as is, neither moves (the
    shipped weights of stop 13 had both exactly zero). train_loop revives the embedder without changing the
    output, and then the projections learn."""
    from tests.model.helpers import inputs
    from train.trainer import revive_plucker_branch

    torch.set_num_threads(1)
    model = tiny_model().eval()
    assert not model.plucker_embedder.proj.weight.any()
    x, t, text, mask, cam, plucker = inputs(model.config, 1, 5, 4, 4)
    model(x, t, text, mask, cam, plucker).square().mean().backward()
    assert not any(block.plucker_proj.weight.grad.any() for block in model.blocks), "the saddle this test is about"

    model.zero_grad()
    with torch.no_grad():
        before = model(x, t, text, mask, cam, plucker)
    assert revive_plucker_branch(model, seed=0)
    with torch.no_grad():
        assert torch.equal(model(x, t, text, mask, cam, plucker), before)
    model(x, t, text, mask, cam, plucker).square().mean().backward()
    assert all(block.plucker_proj.weight.grad.any() for block in model.blocks)
    assert not revive_plucker_branch(model, seed=0), "a live branch is left alone"

    clips = LatentClips(write_latent_clips(tmp_path / "latents", 4))
    loss_fn = TeacherLoss(clips, batch_size=2, chunk_latents=2, shift=1.0, p_clean_context=0.3)
    cfg = LoopConfig(run_dir=str(tmp_path / "run"), steps=3, lr=1e-3, warmup_steps=0, progress=False,
                     lr_scales=(("plucker_proj", 10.0),))
    trained, _, _ = train_loop(tiny_model(), loss_fn, cfg, kv_window_chunks=2, sink=True)
    assert all(block.plucker_proj.weight.any() for block in trained.blocks)
    # lr × 10 on the projections: Adam's first steps move each weight by about lr × multiplier
    step = max(block.plucker_proj.weight.abs().max() for block in trained.blocks)
    assert 3 * 10 * 1e-3 * 0.5 < step <= 3 * 10 * 1e-3 * 1.01


def test_lr_scales_are_checked():
    with pytest.raises(ValueError, match="multiplier > 0"):
        LoopConfig(run_dir="r", lr_scales=(("plucker", 0.0),))
    from train.trainer import _param_groups

    with pytest.raises(ValueError, match="'nothing_like_this'"):
        _param_groups(tiny_model(), LoopConfig(run_dir="r", lr_scales=(("nothing_like_this", 2.0),)))


def test_rolling_windows_stream_the_same_walk_as_one_self_forced_stream(tmp_path):
    """Windows of a long walk, each continuing the detached state the last one left, give the velocities of
    one `self_forced_stream` over the whole walk (no optimiser step in between); the loss walks the clip a
    window per call and starts a new walk after the last chunk."""
    from train.recipes import RollingSelfForcedLoss, self_forced_stream
    from train.trainer import ChunkCausalNet

    torch.set_num_threads(1)
    clips = LatentClips(write_latent_clips(tmp_path / "latents", 2, frames=11))
    batch = clips.batch([0, 1])
    x0, camera, plucker = batch["latents"], batch["camera_conditions"], batch["chunk_plucker"]
    sizes = [3, 2, 2, 2, 2]
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    sigma = torch.ones(2, 11)
    sigma[:, 0] = 0.0
    x_in = (1 - sigma[:, None, :, None, None]) * x0 + sigma[:, None, :, None, None] * noise
    timestep = (sigma * 1000.0)[:, None]
    model = tiny_model(seed=3)
    net = ChunkCausalNet(model, kv_window_chunks=2, sink=True)
    with torch.no_grad():
        whole = self_forced_stream(model, x_in, timestep, camera, plucker, sizes, (1.0, 0.0), noise, 2, True)
        state, parts, start = None, [], 0
        for window in ([3, 2], [2, 2], [2]):
            end = start + sum(window)
            v, state, inputs = net(x_in[:, :, start:end], timestep[:, :, start:end], camera[:, start:end],
                                   plucker[:, :, start:end], window,
                                   continue_stream=((1.0, 0.0), noise[:, :, start:end], state, start == 0, False))
            assert torch.equal(inputs, x_in[:, :, start:end])  # cold start: the chunks ran on x itself
            parts.append(v)
            start = end
    torch.testing.assert_close(torch.cat(parts, dim=2), whole, atol=2e-5, rtol=1e-4)
    assert state.chunk_index == len(sizes) and not any(
        t.requires_grad for layer in state.layers for t in (layer.ffn_context,))

    loss_fn = RollingSelfForcedLoss(clips, batch_size=2, chunk_latents=2, sigmas=(1.0, 0.0), kv_window_chunks=2,
                                    sink=True, window_chunks=2)
    rng = torch.Generator().manual_seed(0)
    chunks = []
    for step in range(4):
        loss, metrics = loss_fn(net, rng, step)
        assert torch.isfinite(loss) and loss.requires_grad
        chunks.append((metrics["chunk"], metrics["walks"]))
    assert chunks == [(0, 1), (2, 1), (4, 1), (0, 2)]  # 5 chunks: windows of 2, 2, 1, then a new walk
    with pytest.raises(ValueError, match="window_chunks"):
        RollingSelfForcedLoss(clips, 2, 2, (1.0, 0.0), 2, True, window_chunks=0)
    with pytest.raises(ValueError, match="frame_mean_weight"):
        RollingSelfForcedLoss(clips, 2, 2, (1.0, 0.0), 2, True, window_chunks=2, frame_mean_weight=-1.0)

    # The frame-mean term adds to the same window's loss (same RNG, same walk position) and is logged.
    plain = RollingSelfForcedLoss(clips, 2, 2, (1.0, 0.0), 2, True, window_chunks=2)
    weighted = RollingSelfForcedLoss(clips, 2, 2, (1.0, 0.0), 2, True, window_chunks=2, frame_mean_weight=10.0)
    loss_plain, logs_plain = plain(net, torch.Generator().manual_seed(4), 0)
    loss_weighted, logs_weighted = weighted(net, torch.Generator().manual_seed(4), 0)
    assert "frame_mean" not in logs_plain and logs_weighted["frame_mean"] > 0
    assert float(loss_weighted.detach()) == pytest.approx(float(loss_plain.detach()) + 10.0 * logs_weighted["frame_mean"], rel=1e-4)


def test_warm_start_training_streams_what_the_live_generator_makes(tmp_path):
    """`stream_window(warm_start=True)`, the rolling trainer's forward, runs each chunk on exactly the input
    the live generator builds (the newest committed latent noised to σ₀) and its one-step output is the
    generator's committed chunk, over several chunks; the rolling loss trains on those inputs."""
    import numpy as np

    from model.vae import load_tiny_vae
    from streaming.generator import ChunkGenerator, GeneratorConfig
    from tests.train.helpers import write_vae
    from train.recipes import RollingSelfForcedLoss, stream_window

    torch.set_num_threads(1)
    sigma0 = 0.6
    model = tiny_model(seed=5).eval()
    vae = load_tiny_vae(write_vae(tmp_path / "vae.safetensors")).eval()
    gen = ChunkGenerator(model, vae, GeneratorConfig(chunk_latents=2, sigmas=(sigma0, 0.0), warm_start=True, seed=3),
                         (16.0, 16.0, 16.0, 16.0))
    inputs, noises, cleans = [], [], []
    begin, refine, draw = gen.begin_chunk, gen.refine_chunk, gen._noise

    def recording_noise(shape):
        noises.append(draw(shape))
        return noises[-1]

    def recording_begin(poses):
        chunk = begin(poses)
        inputs.append(chunk)
        return chunk

    def recording_refine(x, first):
        cleans.append(x.clone())
        return refine(x, first)

    gen._noise, gen.begin_chunk, gen.refine_chunk = recording_noise, recording_begin, recording_refine
    gen.start(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8), np.eye(4))
    for _ in range(4):
        n = gen.frames_for_next_chunk()
        poses = np.repeat(np.eye(4)[None], n, 0)
        poses[:, 0, 3] = np.arange(gen.frame_index, gen.frame_index + n) * 0.05
        gen.step(poses)

    image = gen.image_latent.float()
    sizes = [c.x.shape[2] for c in inputs]
    x = torch.cat([image, torch.zeros(1, image.shape[1], sum(sizes) - 1, *image.shape[-2:])], dim=2)
    noise = torch.cat([torch.zeros_like(image)] + noises, dim=2)
    timestep = torch.full((1, 1, sum(sizes)), sigma0 * 1000.0)
    timestep[:, :, 0] = 0.0
    camera = torch.cat([c.camera for c in inputs], dim=1)
    plucker = torch.cat([c.plucker for c in inputs], dim=2)
    state = model.init_stream_state(1, latent_hw=tuple(image.shape[-2:]), kv_window_chunks=2, sink=True)
    with torch.no_grad():
        window = stream_window(model, x, timestep, camera, plucker, sizes, (sigma0, 0.0), noise, state,
                               starts_clip=True, commit_last=True, warm_start=True)
    torch.testing.assert_close(window.inputs, torch.cat([c.x for c in inputs], dim=2), rtol=1e-5, atol=1e-5)
    own = window.inputs - sigma0 * window.velocity
    own[:, :, :1] = image
    torch.testing.assert_close(own, torch.cat(cleans, dim=2), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(window.state.last_latent, gen.state.last_latent, rtol=1e-4, atol=1e-4)
    # Chunk 1 starts from chunk 0's last latent, not from noise alone and not from the image.
    expected = (1 - sigma0) * cleans[0][:, :, -1:] + sigma0 * noises[1]
    torch.testing.assert_close(inputs[1].x, expected, rtol=1e-5, atol=1e-5)

    # The rolling loss streams warm windows and carries each walk's anchor from one window to the next.
    clips = LatentClips(write_latent_clips(tmp_path / "latents", 2, frames=9))
    with pytest.raises(ValueError, match="one-step"):
        RollingSelfForcedLoss(clips, 2, 2, (0.8, 0.4, 0.0), 2, True, window_chunks=2, warm_start=True)
    loss_fn = RollingSelfForcedLoss(clips, 2, 2, (sigma0, 0.0), 2, True, window_chunks=2, warm_start=True)
    net = ChunkCausalNet(tiny_model(seed=6), kv_window_chunks=2, sink=True)
    loss, logs = loss_fn(net, torch.Generator().manual_seed(0), 0)
    assert torch.isfinite(loss) and loss.requires_grad and logs["chunk"] == 0
    assert loss_fn.walk.state.last_latent is not None and loss_fn.walk.state.last_latent.shape[2] == 1
    loss2, logs2 = loss_fn(net, torch.Generator().manual_seed(1), 1)  # continues from the walk's anchor
    assert torch.isfinite(loss2) and logs2["chunk"] == 2
