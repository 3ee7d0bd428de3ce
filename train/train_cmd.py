"""Train, distil and size the embedded tiny SANA-WM on the procedural world.

Reproduce the shipped weights (model/weights/roam_tiny.safetensors + .json) with one command:

    python run.py train embedded

which runs, in order (each stage resumable, logs in runs/embedded/<stage>/log.jsonl):
  1. prepare  render training clips of the sim and encode them with the installed TinyVAE (data/, cached)
  2. teacher  chunk-causal flow matching with per-chunk noise levels (diffusion forcing)
  3. distil   teacher rollouts -> ODE pairs -> student on the live σ list (--sigmas; the official
              1, .96, .889, .727, 0 by default)
  4. selfforce the student streams its own context with the live sampler and learns the next chunk
              against the ground truth (exposure bias, on the MSE the eval scores)
  5. export   the student's EMA weights to model/weights/ (also a stage of its own), with a copy of the
              TinyVAE it was trained in (roam_tiny_vae.safetensors; model.release picks the VAE by vae_tag)

Stages can also run alone (`python run.py train teacher ...`), under torchrun for several processes
(`torchrun --nproc-per-node 2 run.py train teacher ...`). `python run.py train sweep` times candidate
sizes for docs/tiny_sweep.md. `python run.py train grow --init W --out W2` appends blocks to trained
weights without changing their output (train/grow.py), for `selfforce --init W2` to train on.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

STAGES = ("embedded", "prepare", "teacher", "distil", "selfforce", "export", "grow", "sweep", "decoder", "depth-head")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", choices=STAGES, help="what to run (embedded = every stage in order)")
    parser.add_argument("--vae", default=None, help="TinyVAE weights (default: model/vae/weights/tiny_vae.safetensors)")
    parser.add_argument("--data", default="data", help="cache folder for clips and latents")
    parser.add_argument("--run-dir", default="runs/embedded", help="checkpoints and logs (one folder per stage)")
    parser.add_argument("--out", default=None, help="weights to write (default: model/weights/roam_tiny.safetensors)")
    parser.add_argument("--clips", type=int, default=600, help="training clips to render and encode")
    parser.add_argument("--first-clip", type=int, default=0,
                        help="prepare: index of the first training clip (clip i is scene i // 2 of the train split), "
                             "so a second data folder can hold scenes the first never saw")
    parser.add_argument("--speed", type=float, default=1.0,
                        help="prepare: play the walks at this speed (0.25 = a slow stroll along the same path, 0 = "
                             "standing still); such clips are named <scene>_<clip>_v<speed> and train beside the others")
    parser.add_argument("--export-weights", choices=("ema", "live"), default="ema",
                        help="export: the checkpoint's EMA weights (default), or the live weights the optimiser last "
                             "wrote (to warm-start a run at a higher lr from a run stopped early)")
    parser.add_argument("--frames", type=int, default=49, help="frames per training clip (8k+1)")
    parser.add_argument("--size", type=int, default=128, help="square frame size of training clips")
    parser.add_argument("--teacher-steps", type=int, default=20000)
    parser.add_argument("--teacher-minutes", type=float, default=40.0,
                        help="wall-clock cap of the teacher per invocation (0 = none)")
    parser.add_argument("--distil-steps", type=int, default=20000)
    parser.add_argument("--distil-minutes", type=float, default=10.0)
    parser.add_argument("--selfforce-steps", type=int, default=20000)
    parser.add_argument("--selfforce-minutes", type=float, default=30.0)
    parser.add_argument("--selfforce-targets", choices=("all", "one"), default="all",
                        help="self-forcing: train every chunk of each streamed rollout (all) or one random chunk "
                             "after a gradient-free rollout (one, the recipe of the shipped steps 3-7)")
    parser.add_argument("--selfforce-rolling", type=int, default=0, metavar="CHUNKS",
                        help="self-forcing on walks as long as --train-latents (e.g. 121 = 30 s), streamed across "
                             "steps CHUNKS chunks at a time from the state the model's own rollout left "
                             "(train.recipes.RollingSelfForcedLoss; 0 = whole clips per step)")
    parser.add_argument("--frame-mean-weight", type=float, default=0.0,
                        help="rolling self-forcing: weight of the extra loss on each frame's spatial mean per latent "
                             "channel (its colour), which drifts over long walks (train.flow.frame_mean_mse)")
    parser.add_argument("--decoder-minutes", type=float, default=30.0,
                        help="decoder: wall-clock budget of the decoder fine-tune on the model's rollouts (train/decoder.py)")
    parser.add_argument("--decoder-steps", type=int, default=4000,
                        help="decoder: fine-tune steps (0 = no rollouts, no fine-tune: the VAE's own decoder with the "
                             "cell-seam filter, which is what ships)")
    parser.add_argument("--deblock-step", type=float, default=0.5,
                        help="decoder: the cell-seam filter's largest step taken for a seam, on [-1, 1] (0 = off; "
                             "model/vae/deblock.py)")
    parser.add_argument("--deblock-flat", type=float, default=0.06,
                        help="decoder: the largest step inside the cells beside a seam")
    parser.add_argument("--decoder-lr", type=float, default=None,
                        help="decoder: peak learning rate (default 2e-4 to fine-tune on rollouts, 2e-3 to distil "
                             "a narrower decoder)")
    parser.add_argument("--decoder-widths", default=None, metavar="W1,W2,W3",
                        help="decoder: distil a decoder of these 2D stage widths from --vae's on the encoded walks of "
                             "--data, for --decoder-minutes (train.decoder.distil_decoder; the encoder and latent "
                             "space stay --vae's), instead of fine-tuning on rollouts")
    parser.add_argument("--pairs", type=int, default=96, help="teacher rollouts for distillation")
    parser.add_argument("--rollout-steps", type=int, default=16, help="teacher Euler steps per chunk")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--shift", type=float, default=3.0, help="timestep shift s of σ' = sσ / (1 + (s−1)σ)")
    parser.add_argument("--p-clean-context", type=float, default=0.3)
    parser.add_argument("--crops", default="8,8,8,12,16", help="latent window sizes drawn per teacher step")
    parser.add_argument("--selfforce-crops", default="8,12,16", help="latent window sizes drawn per self-forcing step")
    parser.add_argument("--train-latents", type=int, default=13, help="latents per training sample (1 + chunk·k)")
    parser.add_argument("--pair-crop", type=int, default=12, help="latent window of the distillation rollouts")
    parser.add_argument("--pixel-weighting", type=float, default=0.5,
                        help="mix of pixel-share channel weights in the flow loss (0 = plain latent MSE; "
                             "see train.flow.pixel_channel_weights)")
    parser.add_argument("--model-size", default="h64-d4",
                        help="teacher: the model's numbers, a candidate of docs/tiny_sweep.md (h64-d4 = the `tiny` "
                             "preset, the shipped size; h96-d4 and h128-d4 also stream >= 16 fps at 128x128 on 2 cores); "
                             "later stages take the size from the teacher's checkpoint")
    parser.add_argument("--init", default=None,
                        help="teacher: start from these weights (a stage checkpoint.pt's EMA or roam .safetensors) "
                             "instead of a fresh model; selfforce: instead of the last student stage's checkpoint "
                             "(e.g. the shipped model/weights/roam_tiny.safetensors); ignored when the run resumes")
    parser.add_argument("--append-blocks", default="softmax",
                        help="grow: comma-separated kinds (softmax, gdn) of the blocks to append to --init's model; "
                             "each starts as a copy of the last block of its kind with its residual outputs zeroed, "
                             "so the grown model computes exactly what --init does (train/grow.py); '' appends none")
    parser.add_argument("--anchor-input", action="store_true",
                        help="grow: add the clean-anchor input (model/anchor.py) through a zero embedder, which "
                             "also leaves the output unchanged (train/grow.py)")
    parser.add_argument("--anchor-copy", action="store_true",
                        help="grow: with --anchor-input (or on a model that has the input), add the zero copy gate "
                             "that blends the velocity towards copying the warped anchor (model/anchor.py)")
    parser.add_argument("--anchor-copy-still", action="store_true",
                        help="grow: add the copy gate's still term c*exp(-parallax/s) at c = 0 (and the input and "
                             "gate where missing): the gate learns to copy while the camera stands still (model/anchor.py)")
    parser.add_argument("--anchor-ground-m", type=float, default=0.0,
                        help="grow: add the ground-plane copy for a ground this many metres below the first camera "
                             "(1.6 in the procedural world; and the gate and input where missing), at "
                             "c_ground = 0 (model/anchor.py)")
    parser.add_argument("--copy-ground-c", type=float, default=0.0,
                        help="grow: the ground-plane copy's c_ground in [0, 1] (default 0: the output is unchanged)")
    parser.add_argument("--copy-still-c", type=float, default=0.0,
                        help="grow: the still term's c in [0, 1] (default 0: the output is unchanged; 1: copy the "
                             "anchor outright wherever the camera has not moved across the ray)")
    parser.add_argument("--anchor-start-fade-m", type=float, default=0.0,
                        help="grow: add the start copy (the start frame warped by its predicted depth, faded by "
                             "exp(-distance from the start / this many metres); model/anchor.py) at c_start = 0; "
                             "needs a model with the depth copy")
    parser.add_argument("--copy-start-c", type=float, default=0.0,
                        help="grow: the start copy's c_start in [0, 1] (default 0: the output is unchanged)")
    parser.add_argument("--start-interpolation", choices=("bilinear", "bicubic"), default=None,
                        help="grow: how the start copy samples the start latent between latent pixels "
                             "(ModelConfig.anchor_start_interpolation; model/anchor.py); needs the start copy")
    parser.add_argument("--anchor-background-eye-m", type=float, default=0.0,
                        help="grow: add the background copy (what no copy covers pulled towards the start frame's sky "
                             "and far ground at the ray's elevation, background told by the ground plane this many "
                             "metres below the first camera: 1.6 in the procedural world; model/anchor.py) at "
                             "c_background = 0; needs a model with the start copy")
    parser.add_argument("--copy-background-c", type=float, default=0.0,
                        help="grow: the background copy's c_background in [0, 1] (default 0: the output is unchanged)")
    parser.add_argument("--background-gate", action="store_true",
                        help="grow: add the background copy's per-token gate read from the network's hidden state "
                             "(zero: the output is unchanged; model/anchor.py); needs the background copy")
    parser.add_argument("--selfforce-loss-before-copy", action="store_true",
                        help="rolling self-forcing: the loss is on the network's velocity before the copy blends "
                             "(model/anchor.py), while the rollout commits the blended sampler's chunks")
    parser.add_argument("--copy-depth-c", type=float, default=0.0,
                        help="depth-head: the depth copy's c_depth in [0, 1] (default 0: the output is unchanged)")
    parser.add_argument("--depth-clips", type=int, default=240, help="depth-head: walks of new training scenes to fit on")
    parser.add_argument("--depth-frames", type=int, default=33, help="depth-head: frames per walk (8k+1)")
    parser.add_argument("--depth-steps", type=int, default=3000, help="depth-head: optimiser steps (cosine lr)")
    parser.add_argument("--depth-minutes", type=float, default=15.0, help="depth-head: wall-clock cap (0 = none)")
    parser.add_argument("--depth-lr", type=float, default=2e-3, help="depth-head: peak AdamW lr")
    parser.add_argument("--depth-batch", type=int, default=64, help="depth-head: latent frames per step")
    parser.add_argument("--sigmas", default=None,
                        help="the live few-step sampler as comma-separated σ from 1 to 0, e.g. 1,0 (default: the "
                             "official 4-step list 1,0.96,0.889,0.727,0): distil and selfforce train for it, export "
                             "records it in the model's json, which the app, generate and eval then run")
    parser.add_argument("--warm-start", action="store_true",
                        help="selfforce/export: a one-step sampler --sigmas S,0 with S < 1 that starts each chunk from "
                             "the newest committed latent noised to S (model.schedulers.warm_start) instead of from "
                             "pure noise; selfforce (rolling) trains for it, export records it for the app")
    parser.add_argument("--kv-window", type=int, default=None, metavar="CHUNKS",
                        help="the softmax KV window, recent chunks besides the sink (default 2): teacher, distil and "
                             "selfforce train with it and export records it in the model's json, which the app, generate "
                             "and eval then stream with; grow: rewrite --init's json to this window (weights unchanged)")
    parser.add_argument("--adversarial-weight", type=float, default=0.0,
                        help="selfforce (rolling): add a latent patch discriminator's hinge term at this weight "
                             "(train/adversarial.py), trained beside the model, for detail instead of a blurred mean")
    parser.add_argument("--adversarial-conditional", action="store_true",
                        help="with --adversarial-weight: the discriminator sees each frame beside the walk's start "
                             "latent, so texture or colour of another place counts as fake")
    parser.add_argument("--lr-scale", default="",
                        help="per-parameter lr multipliers as name=multiplier[,name=multiplier]: parameters whose name "
                             "contains `name` train at lr × multiplier (e.g. plucker=10: the Plücker branch, which starts "
                             "at zero, catching up with trained weights)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")
    # sweep options
    parser.add_argument("--sizes", default="128,256", help="sweep: frame sizes")
    parser.add_argument("--candidates", default=None, help="sweep: candidate names (default: all)")
    parser.add_argument("--sweep-steps", type=int, default=60, help="sweep: teacher steps per candidate (quality proxy)")
    parser.add_argument("--write-docs", action="store_true", help="sweep: write docs/tiny_sweep.md")


def _model_config(vae, size: str = "h64-d4"):
    """A sweep candidate's numbers (docs/tiny_sweep.md; h64-d4 = the `tiny` preset) in the VAE's latent space."""
    from train.sweep import candidate_config

    return candidate_config(size, vae)


def _generator_defaults(args=None):
    """The live generator's settings; the sampler σ list from `--sigmas` (validated) when args are given."""
    from streaming.generator import GeneratorConfig

    from model.release import sigmas_flag

    warm = bool(getattr(args, "warm_start", False))
    window = _kv_window(args)
    if args is None or args.sigmas is None:
        if warm:
            raise ValueError("--warm-start needs --sigmas S,0 (the σ each chunk starts from, S < 1)")
        return GeneratorConfig(kv_window_chunks=window)
    return GeneratorConfig(sigmas=sigmas_flag(args.sigmas), warm_start=warm, kv_window_chunks=window)


def _kv_window(args) -> int:
    """--kv-window, checked (the generator's default when absent)."""
    from streaming.generator import GeneratorConfig

    window = getattr(args, "kv_window", None)
    if window is None:
        return GeneratorConfig.kv_window_chunks
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"--kv-window must be an integer >= 1 (chunks besides the sink), got {window!r}")
    return window


def _vae_path(args) -> Path:
    from model.vae import DEFAULT_WEIGHTS

    path = Path(args.vae) if args.vae else DEFAULT_WEIGHTS
    if not path.is_file():
        raise FileNotFoundError(f"TinyVAE weights {path} not found: train them first (python -m train.vae) or pass --vae")
    return path


def _latents_dir(args) -> Path:
    from train.data import vae_tag

    return Path(args.data) / "latents" / vae_tag(_vae_path(args)) / "train"


def run_prepare(args) -> None:
    from model.vae import load_tiny_vae
    from train.data import encode_clip_file, render_clip_file

    vae = load_tiny_vae(_vae_path(args))
    out = _latents_dir(args)
    if args.first_clip < 0 or args.clips < 0:
        raise ValueError(f"--first-clip and --clips must be >= 0, got {args.first_clip} and {args.clips}")
    iterator = range(args.first_clip, args.first_clip + args.clips)
    if not args.no_progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, desc="prepare clips")
    for index in iterator:
        clip = render_clip_file(Path(args.data) / "clips", "train", index, args.frames, args.size, speed=args.speed)
        encode_clip_file(vae, clip, out / f"{clip.stem}.pt")


def _lr_scales(text: str) -> tuple[tuple[str, float], ...]:
    """"plucker=10,blocks.4.=3" -> (("plucker", 10.0), ("blocks.4.", 3.0)); "" -> ()."""
    scales = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        try:
            scale = float(value)
        except ValueError:
            scale = None
        if scale is None or not name.strip():
            raise ValueError(f"--lr-scale entries are name=multiplier, got {item!r}")
        scales.append((name.strip(), scale))
    return tuple(scales)


def _crops(text: str) -> tuple[int, ...]:
    """"8,12,16" -> (8, 12, 16); "" -> () (no cropping)."""
    return tuple(int(c) for c in text.split(",")) if text else ()


def _channel_weights(args, vae=None):
    """The flow loss's per-channel weights from the training VAE (loaded when not given), or None."""
    from model.vae import load_tiny_vae
    from train.flow import pixel_channel_weights

    if not args.pixel_weighting:
        return None
    vae = vae if vae is not None else load_tiny_vae(_vae_path(args))
    return pixel_channel_weights(vae.decoder.skip.weight.flatten(1), vae.latents_std, args.pixel_weighting)


def _load_init(init: Path):
    """`--init` weights in train mode: a stage checkpoint.pt's EMA, or roam .safetensors (+ its .json)."""
    from train.embedded import load_weights

    return (_load_checkpoint(init) if init.suffix == ".pt" else load_weights(init)).train()


def _initial_model(args, config):
    from train.trainer import build_model

    if args.init is None:
        return build_model(config, seed=args.seed)
    init = Path(args.init)
    model = _load_init(init)
    if model.config != config:
        raise ValueError(f"--init {init} holds a model of config {model.config.to_dict()}, not {config.to_dict()}")
    return model


def run_teacher(args):
    from streaming.generator import GeneratorConfig

    from model.vae import load_tiny_vae
    from train.data import LatentClips
    from train.recipes import TeacherLoss
    from train.trainer import LoopConfig, train_loop

    gen = GeneratorConfig(kv_window_chunks=_kv_window(args))  # the teacher learns the window; its sampler is distil's
    vae = load_tiny_vae(_vae_path(args))
    clips = LatentClips(_latents_dir(args))
    loss = TeacherLoss(clips, args.batch_size, gen.chunk_latents, args.shift, args.p_clean_context, crops=_crops(args.crops),
                       frames=args.train_latents, channel_weights=_channel_weights(args, vae))
    model = _initial_model(args, _model_config(vae, args.model_size))
    loop = LoopConfig(run_dir=str(Path(args.run_dir) / "teacher"), steps=args.teacher_steps, minutes=args.teacher_minutes,
                      lr=args.lr, seed=args.seed, progress=not args.no_progress,
                      lr_scales=_lr_scales(args.lr_scale))
    return train_loop(model, loss, loop, kv_window_chunks=gen.kv_window_chunks, sink=gen.sink,
                      extra_state={"vae_tag": _latents_dir(args).parent.name})


def run_distil(args, teacher=None):
    import torch

    from train.data import LatentClips
    from train.recipes import DistilLoss, make_pairs
    from train.trainer import LoopConfig, distributed, train_loop

    gen = _generator_defaults(args)
    run_dir = Path(args.run_dir)
    if teacher is None:
        teacher = _load_checkpoint(run_dir / "teacher" / "checkpoint.pt")
    rank, world, _ = distributed()
    pairs_path = run_dir / "distil_pairs.pt"
    if not pairs_path.exists():
        if rank == 0:
            clips = LatentClips(_latents_dir(args))
            pairs = make_pairs(teacher, clips, args.pairs, 8, gen.chunk_latents, gen.sigmas, args.rollout_steps,
                               args.shift, gen.kv_window_chunks, gen.sink, seed=args.seed, progress=not args.no_progress,
                               crop=args.pair_crop, frames=args.train_latents)
            torch.save(pairs, pairs_path.with_suffix(".tmp"))
            pairs_path.with_suffix(".tmp").replace(pairs_path)
        if world > 1:
            torch.distributed.barrier()
    pairs = torch.load(pairs_path, weights_only=True)
    wanted = [s for s in gen.sigmas if s > 0]
    if [round(float(s), 6) for s in pairs["sigmas"]] != [round(s, 6) for s in wanted]:
        raise ValueError(f"{pairs_path} holds pairs for the sampler σ {pairs['sigmas'].tolist()}, not --sigmas {wanted}: "
                         "delete it (or use another --run-dir) to make pairs for this sampler")
    student = _load_checkpoint(run_dir / "teacher" / "checkpoint.pt").train()
    loss = DistilLoss(pairs, args.batch_size, gen.chunk_latents, args.p_clean_context,
                      channel_weights=_channel_weights(args))
    loop = LoopConfig(run_dir=str(run_dir / "distil"), steps=args.distil_steps, minutes=args.distil_minutes,
                      lr=args.lr * 0.3, warmup_steps=20, seed=args.seed + 1, progress=not args.no_progress,
                      lr_scales=_lr_scales(args.lr_scale))
    return train_loop(student, loss, loop, kv_window_chunks=gen.kv_window_chunks, sink=gen.sink)


def run_selfforce(args):
    from train.data import LatentClips
    from train.recipes import RollingSelfForcedLoss, SelfForcedLoss
    from train.trainer import LoopConfig, train_loop

    gen = _generator_defaults(args)
    run_dir = Path(args.run_dir)
    if args.init is not None:
        student = _load_init(Path(args.init))
    else:
        student = _load_checkpoint(_last_student_checkpoint(run_dir, before="selfforce")).train()
    if args.selfforce_rolling < 0:
        raise ValueError(f"--selfforce-rolling must be >= 0 chunks, got {args.selfforce_rolling}")
    if args.selfforce_loss_before_copy and not args.selfforce_rolling:
        raise ValueError("--selfforce-loss-before-copy is a rolling self-forcing option: pass --selfforce-rolling N")
    if args.selfforce_rolling:
        loss = RollingSelfForcedLoss(LatentClips(_latents_dir(args)), args.batch_size, gen.chunk_latents, gen.sigmas,
                                     gen.kv_window_chunks, gen.sink, args.selfforce_rolling,
                                     crops=_crops(args.selfforce_crops), frames=args.train_latents,
                                     channel_weights=_channel_weights(args),
                                     frame_mean_weight=args.frame_mean_weight, warm_start=gen.warm_start,
                                     loss_before_copy=args.selfforce_loss_before_copy,
                                     adversarial=_adversarial(args, student))
    else:
        if gen.warm_start or args.adversarial_weight or args.adversarial_conditional:
            raise ValueError("--warm-start and --adversarial-weight train with rolling self-forcing only "
                             "(add --selfforce-rolling N)")
        loss = SelfForcedLoss(LatentClips(_latents_dir(args)), args.batch_size, gen.chunk_latents, gen.sigmas,
                              gen.kv_window_chunks, gen.sink, crops=_crops(args.selfforce_crops),
                              frames=args.train_latents, channel_weights=_channel_weights(args),
                              targets=args.selfforce_targets)
    loop = LoopConfig(run_dir=str(run_dir / "selfforce"), steps=args.selfforce_steps, minutes=args.selfforce_minutes,
                      lr=args.lr * 0.3, warmup_steps=20, seed=args.seed + 2, progress=not args.no_progress,
                      lr_scales=_lr_scales(args.lr_scale))
    return train_loop(student, loss, loop, kv_window_chunks=gen.kv_window_chunks, sink=gen.sink)


def _adversarial(args, student):
    """The discriminator term of `--adversarial-weight` (None at 0)."""
    if args.adversarial_weight < 0:
        raise ValueError(f"--adversarial-weight must be >= 0, got {args.adversarial_weight}")
    if not args.adversarial_weight:
        if args.adversarial_conditional:
            raise ValueError("--adversarial-conditional needs --adversarial-weight > 0")
        return None
    from train.adversarial import AdversarialTerm

    return AdversarialTerm(student.config.in_channels, args.adversarial_weight, seed=args.seed,
                           conditional=args.adversarial_conditional)


def _last_student_checkpoint(run_dir: Path, before: str | None = None) -> Path:
    """The checkpoint of the latest student stage that ran (selfforce, else distil, else the teacher)."""
    order = ["selfforce", "distil", "teacher"]
    if before is not None:
        order = order[order.index(before) + 1:]
    for stage in order:
        path = run_dir / stage / "checkpoint.pt"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no {' / '.join(order)} checkpoint under {run_dir} (run those stages first)")


def _load_checkpoint(path: Path, weights: str = "ema"):
    """The model of a stage checkpoint with its EMA weights, or ("live") the weights the optimiser last wrote."""
    import torch

    from model import ModelConfig, WorldModel

    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} not found (run its stage first)")
    saved = torch.load(path, map_location="cpu", weights_only=False)
    model = WorldModel(ModelConfig.from_dict(saved["model_config"]))
    model.load_state_dict(saved["ema" if weights == "ema" else "model"])
    return model.eval()


def run_export(args, ema) -> Path:
    from train.data import vae_tag
    from train.embedded import EMBEDDED_WEIGHTS, save_weights

    gen = _generator_defaults(args)
    out = Path(args.out) if args.out else EMBEDDED_WEIGHTS
    info = {
        "vae_tag": vae_tag(_vae_path(args)),
        "generator": {"chunk_latents": gen.chunk_latents, "sigmas": list(gen.sigmas),
                      "kv_window_chunks": gen.kv_window_chunks, "sink": gen.sink, "warm_start": gen.warm_start},
        "trained_on": {"frames": args.frames, "size": args.size, "clips": args.clips},
        "command": "python run.py train embedded",
    }
    for stage in ("teacher", "distil", "selfforce"):
        log = Path(args.run_dir) / stage / "log.jsonl"
        if log.exists():
            lines = log.read_text().strip().splitlines()
            if lines:
                last = json.loads(lines[-1])
                info[f"{stage}_steps"] = last["step"]
                info[f"{stage}_last_loss"] = round(last["loss"], 5)
    # The model only works in its VAE's latent space: ship that VAE beside it (model.release picks it by vae_tag).
    out.parent.mkdir(parents=True, exist_ok=True)
    vae_copy = out.with_name(out.stem + "_vae.safetensors")
    if not vae_copy.exists() or vae_tag(vae_copy) != info["vae_tag"]:
        shutil.copyfile(_vae_path(args), vae_copy)
    return save_weights(ema, out, info)


def run_grow(args) -> Path:
    """--init's model with --append-blocks appended, written to --out with --init's provenance (+ what grew)."""
    import torch

    from train.embedded import read_info, save_weights
    from train.grow import (add_anchor_background_copy, add_anchor_input, add_anchor_start_copy, add_background_gate,
                            append_blocks, with_start_interpolation)

    if args.init is None or args.out is None:
        raise ValueError("train grow needs --init (the weights to grow) and --out (where to write the grown ones)")
    init, out = Path(args.init), Path(args.out)
    if out.resolve() == init.resolve():
        raise ValueError(f"train grow would overwrite its --init {init}: pass another --out")
    kinds = tuple(kind.strip() for kind in args.append_blocks.split(",") if kind.strip())
    ground_m = float(getattr(args, "anchor_ground_m", 0.0))
    still = bool(getattr(args, "anchor_copy_still", False))
    copy = bool(getattr(args, "anchor_copy", False)) or still or ground_m > 0
    anchor = bool(getattr(args, "anchor_input", False)) or copy
    start_fade = float(getattr(args, "anchor_start_fade_m", 0.0))
    start_c = float(getattr(args, "copy_start_c", 0.0))
    if start_c and not start_fade:
        raise ValueError(f"--copy-start-c {start_c} needs --anchor-start-fade-m")
    background_eye = float(getattr(args, "anchor_background_eye_m", 0.0))
    background_c = float(getattr(args, "copy_background_c", 0.0))
    if background_c and not background_eye:
        raise ValueError(f"--copy-background-c {background_c} needs --anchor-background-eye-m")
    interpolation = getattr(args, "start_interpolation", None)
    background_gate = bool(getattr(args, "background_gate", False))
    window = None if getattr(args, "kv_window", None) is None else _kv_window(args)
    if not (kinds or anchor or start_fade or background_eye or background_gate or window is not None
            or interpolation is not None):
        raise ValueError("train grow has nothing to add: pass --append-blocks KINDS, --anchor-input, "
                         "--anchor-start-fade-m, --anchor-background-eye-m, --background-gate, --start-interpolation "
                         "and/or --kv-window")
    source = _load_init(init)
    grown = append_blocks(source, kinds) if kinds else source
    if anchor:
        grown = add_anchor_input(grown, copy_gate=copy, copy_still=still, ground_m=ground_m)
    if start_fade:
        grown = add_anchor_start_copy(grown, start_fade, start_c)
    if interpolation is not None:
        grown = with_start_interpolation(grown, interpolation)
    if background_eye:
        grown = add_anchor_background_copy(grown, background_eye, background_c)
    if background_gate:
        grown = add_background_gate(grown)
    still_c = float(getattr(args, "copy_still_c", 0.0))
    ground_c = float(getattr(args, "copy_ground_c", 0.0))
    for flag, value, added, needs, parameter in (("--copy-still-c", still_c, still, "--anchor-copy-still", "copy_still"),
                                                 ("--copy-ground-c", ground_c, ground_m > 0, "--anchor-ground-m", "copy_ground")):
        if value != 0.0:
            if not added or not 0.0 <= value <= 1.0:
                raise ValueError(f"{flag} {value} needs {needs} and a value in [0, 1]")
            with torch.no_grad():
                getattr(grown, parameter).fill_(value)
    info = {k: v for k, v in read_info(init).items() if k != "model"} if init.suffix != ".pt" else {}
    command = f"python run.py train grow --init {init} --out {out} --append-blocks '{','.join(kinds)}'"
    grew = {"from": str(init), "depth": [source.config.depth, grown.config.depth], "appended": list(kinds),
            "command": command + (" --anchor-input" if anchor else "") + (" --anchor-copy" if copy else "")
            + (" --anchor-copy-still" if still else "") + (f" --copy-still-c {still_c:g}" if still_c else "")
            + (f" --anchor-ground-m {ground_m:g}" if ground_m else "") + (f" --copy-ground-c {ground_c:g}" if ground_c else "")
            + (f" --anchor-start-fade-m {start_fade:g}" if start_fade else "") + (f" --copy-start-c {start_c:g}" if start_c else "")
            + (f" --anchor-background-eye-m {background_eye:g}" if background_eye else "")
            + (f" --copy-background-c {background_c:g}" if background_c else "")
            + (" --background-gate" if background_gate else "")
            + (f" --start-interpolation {interpolation}" if interpolation is not None else "")
            + (f" --kv-window {window}" if window is not None else "")}
    if anchor:
        grew["anchor_input"] = True
    if copy:
        grew["anchor_copy"] = True
    if still:
        grew["anchor_copy_still"] = True
        grew["copy_still_c"] = still_c
    if ground_m:
        grew["anchor_ground_m"] = ground_m
        grew["copy_ground_c"] = ground_c
    if start_fade:
        grew["anchor_start_fade_m"] = start_fade
        grew["copy_start_c"] = start_c
    if background_eye:
        grew["anchor_background_eye_m"] = background_eye
        grew["copy_background_c"] = background_c
    if background_gate:
        grew["anchor_background_gate"] = True
    if interpolation is not None:
        grew["anchor_start_interpolation"] = [source.config.anchor_start_interpolation, interpolation]
    if window is not None:
        # The weights stream with another window: the json the app, generate and eval read says so.
        if not isinstance(info.get("generator"), dict):
            raise ValueError(f"--kv-window needs --init's json to record its generator settings; {init} has none")
        grew["kv_window_chunks"] = [info["generator"].get("kv_window_chunks", 2), window]
        info["generator"] = {**info["generator"], "kv_window_chunks": window}
    # an earlier growth's record is kept under its own key
    key = "grown" if "grown" not in info else f"grown_{sum(k.startswith('grown') for k in info) + 1}"
    info[key] = grew
    return save_weights(grown, out, info)


def run_decoder(args) -> Path:
    """Stream --init's model over the first --clips encoded walks, then fine-tune its VAE's decoder on them
    (train/decoder.py) and write the refined TinyVAE to --out (default model/weights/roam_tiny_decoder.safetensors)."""
    from dataclasses import asdict, replace

    from model.release import model_sampler_sigmas
    from model.vae import load_tiny_vae, save_tiny_vae
    from train.data import vae_tag
    from train.decoder import RefineConfig, RolloutPairs, make_rollouts, refine_decoder
    from train.embedded import EMBEDDED_WEIGHTS

    if args.decoder_steps < 0:
        raise ValueError(f"--decoder-steps must be >= 0, got {args.decoder_steps}")
    out = Path(args.out) if args.out else EMBEDDED_WEIGHTS.with_name("roam_tiny_decoder.safetensors")
    space = vae_tag(_vae_path(args))
    seams = {"deblock_step": args.deblock_step, "deblock_flat": args.deblock_flat}
    if args.decoder_widths:
        return _distil_decoder(args, out, space, seams)
    if args.decoder_steps == 0:
        vae = load_tiny_vae(_vae_path(args))
        vae.cfg = replace(vae.cfg, **seams)
        return save_tiny_vae(vae, out, extra_metadata={"latent_space": space, "made_by": (
            f"python run.py train decoder --vae {_vae_path(args)} --decoder-steps 0 --deblock-step {args.deblock_step} "
            f"--deblock-flat {args.deblock_flat}")})
    gen = _generator_defaults(args)
    weights = Path(args.init) if args.init else EMBEDDED_WEIGHTS
    model = _load_init(weights).eval()
    sigmas = model_sampler_sigmas(args.sigmas, weights) if weights.suffix != ".pt" else gen.sigmas
    run_dir = Path(args.run_dir) / "decoder"
    latents_dir = _latents_dir(args)
    count = make_rollouts(model, latents_dir, run_dir / "rollouts", sigmas, gen.kv_window_chunks, gen.sink,
                          gen.chunk_latents, args.clips, seed=args.seed, progress=not args.no_progress)
    print(f"decoder: {count} rollouts of {weights} under {run_dir / 'rollouts'}", flush=True)
    pairs = RolloutPairs(run_dir / "rollouts", latents_dir, Path(args.data) / "clips" / "train")
    vae = load_tiny_vae(_vae_path(args))
    cfg = RefineConfig(run_dir=str(run_dir), steps=args.decoder_steps, minutes=args.decoder_minutes,
                       lr=args.decoder_lr if args.decoder_lr is not None else 2e-4,
                       batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress)
    refined = refine_decoder(vae, pairs, cfg)
    refined.cfg = replace(refined.cfg, **seams)
    meta = {"latent_space": space, "refined_on": f"{len(pairs)} rollouts of {weights}",
            "refine_config": json.dumps(asdict(cfg))}
    return save_tiny_vae(refined, out, extra_metadata=meta)


def _distil_decoder(args, out: Path, space: str, seams: dict) -> Path:
    """`train decoder --decoder-widths`: a narrower decoder distilled from --vae's (train.decoder.distil_decoder),
    written with --vae's encoder, the seam filter and its fidelity on held-out walks in the metadata."""
    from dataclasses import asdict, replace

    from model.vae import load_tiny_vae, save_tiny_vae
    from train.decoder import DistilConfig, distil_decoder, load_walk_latents

    try:
        widths = tuple(int(w) for w in args.decoder_widths.split(","))
    except ValueError as error:
        raise ValueError(f"--decoder-widths must be comma-separated integers, got {args.decoder_widths!r}") from error
    if args.decoder_steps == 0:
        raise ValueError("--decoder-widths distils a new decoder, so it needs --decoder-steps > 0")
    wide = load_tiny_vae(_vae_path(args))
    replace(wide.cfg, decoder_widths=widths)  # raises, naming the field, for a wrong count or a width < 1
    cfg = DistilConfig(run_dir=str(Path(args.run_dir) / "decoder_distil"), widths=widths, steps=args.decoder_steps,
                       minutes=args.decoder_minutes, lr=args.decoder_lr if args.decoder_lr is not None else 2e-3,
                       batch_size=args.batch_size, seed=args.seed, progress=not args.no_progress)
    narrow, report = distil_decoder(wide, load_walk_latents(_latents_dir(args)), cfg)
    narrow.cfg = replace(narrow.cfg, **seams)
    print(f"decoder: distilled widths {widths} from {_vae_path(args)} in {report['steps']} steps; held-out PSNR to it "
          f"{report['held_out_psnr_db']} dB clean, {report['held_out_perturbed_psnr_db']} dB perturbed", flush=True)
    meta = {"latent_space": space, "distilled_from": str(_vae_path(args)), "distil_config": json.dumps(asdict(cfg)),
            "distil_report": json.dumps(report)}
    return save_tiny_vae(narrow, out, extra_metadata=meta)


def main(args: argparse.Namespace) -> int:
    import torch

    torch.set_num_threads(args.threads)
    if args.stage == "sweep":
        from train import sweep

        latents = None
        if args.vae != "random" and _latents_dir(args).is_dir():
            latents = str(_latents_dir(args))
        sweep_args = argparse.Namespace(vae=args.vae, sizes=args.sizes, threads=args.threads, write_docs=args.write_docs,
                                        candidates=args.candidates or ",".join(sweep.CANDIDATES), latents=latents,
                                        train_steps=args.sweep_steps, sigmas=args.sigmas)
        return sweep.main(sweep_args)
    if args.stage == "decoder":
        path = run_decoder(args)
        print(f"wrote {path}")
        return 0
    if args.stage == "depth-head":
        from train.depth_head import run as run_depth_head

        path = run_depth_head(args)
        print(f"wrote {path} and {path.with_suffix('.json')}")
        return 0
    if args.stage == "grow":
        path = run_grow(args)
        print(f"wrote {path} and {path.with_suffix('.json')}")
        return 0
    if args.stage == "export":
        path = run_export(args, _load_checkpoint(_last_student_checkpoint(Path(args.run_dir)), args.export_weights))
        print(f"wrote {path} and {path.with_suffix('.json')}")
        return 0
    from train.trainer import distributed

    rank, _, _ = distributed()
    if args.stage in ("prepare", "embedded") and rank == 0:
        run_prepare(args)
    if args.stage == "prepare":
        return 0
    if args.stage == "embedded" and torch.distributed.is_initialized():
        torch.distributed.barrier()
    teacher = None
    if args.stage in ("teacher", "embedded"):
        _, teacher, _ = run_teacher(args)
    if args.stage in ("distil", "embedded"):
        _, student, _ = run_distil(args, teacher)
    if args.stage in ("selfforce", "embedded"):
        _, student, _ = run_selfforce(args)
        if args.stage == "embedded" and rank == 0:
            path = run_export(args, student)
            print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0
