"""Evaluate a streaming model against the procedural world's ground truth (held-out scenes).

    python run.py eval --write-docs          # the embedded model -> docs/eval.md, docs/eval.png, docs/eval_rollout.png
    python run.py eval --clips 24 --workers 2 --json eval24.json   # more held-out scenes, two processes

Rolls the live chunk generator out from the first rendered frame of each held-out walk, then reports
PSNR / SSIM per second against ground truth, the repeat-first-frame and true-depth-warp baselines,
and the camera-following score (see train/evaluate.py for the exact definitions).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from streaming.generator import GeneratorConfig
    from train.evaluate import ClipResult

DOCS = Path(__file__).resolve().parent.parent / "docs"
BAR_GAIN_DB = 2.0
BAR_FOLLOW = 0.9
# The goals of "a walk that stays a world" (issue 21): (figure, comparison, bar)
GOAL_DETAIL = 0.6  # 8 s walks, and seconds 22–30 of the long walk
GOAL_STANDING_DB = 28.0  # standing still, mean PSNR to the start frame over the first 4 s
GOAL_BLOCKINESS = 1.3  # long walk, seconds 22–30
GOAL_COLOUR = 12.0  # long walk, seconds 22–30, on 0–255


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="roam weights .safetensors (default: model/weights/roam_tiny.safetensors)")
    parser.add_argument("--vae", default=None, help="TinyVAE weights (default: the one the model was trained with, by its vae_tag)")
    parser.add_argument("--clips", type=int, default=8, help="held-out scenes (one walk each)")
    parser.add_argument("--seconds", type=int, default=8, help="rollout length in seconds (16 fps)")
    parser.add_argument("--long-seconds", type=int, default=30,
                        help="also stream one walk this long per scene and score drift at seconds 1-8 and 22-30 "
                             "(detail, blockiness, colour error; 0 = skip)")
    parser.add_argument("--size", type=int, default=128, help="square frame size")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes sharing the clips (each loads the model; the figures do not depend on it)")
    parser.add_argument("--sigmas", default=None,
                        help="few-step sampler as comma-separated σ, e.g. 1,0 (default: the one the model ships with, "
                             "its json's generator.sigmas)")
    parser.add_argument("--attention", type=int, default=0, metavar="SCENES",
                        help="also measure how sharply the softmax blocks attend (train/attention_probe.py) over the "
                             "first 2 s of this many eval scenes, walking and standing")
    parser.add_argument("--json", default=None, help="also write the summary here")
    parser.add_argument("--write-docs", action="store_true", help="write docs/eval.md, eval.png, eval_rollout.png")


WARM_NOTE = ", each chunk starting from the last committed latent noised to the first σ (warm start)"


def _repo_relative(path) -> str:
    """`path` relative to the repository when it is inside it (docs stay machine-independent), else as given."""
    resolved = Path(path).resolve()
    root = Path(__file__).resolve().parent.parent
    return str(resolved.relative_to(root)) if resolved.is_relative_to(root) else str(path)


def main(args: argparse.Namespace) -> int:
    from model.release import embedded_vae_path
    from model.vae import cpu_decoder_dtype, load_tiny_vae
    from train.embedded import EMBEDDED_WEIGHTS, load_weights, read_info
    from train.evaluate import summarise

    if args.clips < 1 or args.seconds < 1:
        raise ValueError(f"--clips and --seconds must be >= 1, got {args.clips}, {args.seconds}")
    if args.long_seconds < 0:
        raise ValueError(f"--long-seconds must be >= 0 (0 = no long walk), got {args.long_seconds}")
    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if args.attention < 0:
        raise ValueError(f"--attention must be >= 0 scenes, got {args.attention}")
    model = load_weights(args.model)
    # The VAE whose latent space the model was trained in (its recorded vae_tag), unless one is named.
    vae_path = args.vae or embedded_vae_path(args.model)
    vae = load_tiny_vae(vae_path).decode_in(cpu_decoder_dtype())  # the decoder as the app runs it
    if vae.latent_channels != model.config.in_channels:
        raise ValueError(f"the VAE has {vae.latent_channels} latent channels, the model {model.config.in_channels}")
    sampler = eval_sampler(args.model or EMBEDDED_WEIGHTS, args.sigmas)
    job = EvalJob(args.model, str(vae_path), sampler, args.seconds, args.size, args.threads, args.long_seconds)
    if args.workers == 1:
        evaluated = job.evaluate(model, vae, range(args.clips))
    else:
        # Round-robin shares (walks differ in cost), one process each; every clip's rollout is seeded,
        # so the result of a clip does not depend on the process that ran it.
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        shares = [range(w, args.clips, args.workers) for w in range(min(args.workers, args.clips))]
        with ProcessPoolExecutor(len(shares), mp_context=multiprocessing.get_context("spawn")) as pool:
            evaluated = sorted((item for part in pool.map(job.run, shares) for item in part), key=lambda item: item[0])
    results = [result for _, result, _ in evaluated]
    shown = (results[0].scene_seed, evaluated[0][2])
    summary = summarise(results, args.seconds)
    summary["model"] = str(args.model or "model/weights/roam_tiny.safetensors")
    summary["sigmas"] = list(sampler.sigmas)
    summary["vae"] = _repo_relative(vae_path)
    decoder_dtype = str(vae.decoder.inp.weight.dtype).removeprefix("torch.")
    summary["decoder"] = f"widths {list(vae.cfg.decoder_stage_widths)}, {decoder_dtype}"
    summary["warm_start"] = sampler.warm_start
    summary["kv_window_chunks"] = sampler.kv_window_chunks
    summary["sink"] = sampler.sink
    try:
        summary["model_info"] = {k: v for k, v in read_info(args.model).items() if k != "model"}
    except FileNotFoundError:
        pass
    print(json.dumps({k: summary[k] for k in ("mean", "follow", "follow_baselines", "gain_over_repeat_db", "standing", "long")
                      if k in summary}, indent=2))
    if args.attention:
        summary["attention"] = attention_summary(model, vae, args.attention, args.size, sampler)
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n")
    if args.write_docs:
        write_docs(summary, shown, args)
    return 0


def eval_sampler(weights, sigmas_flag: str | None) -> GeneratorConfig:
    """The generator settings the model at `weights` was trained for, read from its json: σ list (or
    `sigmas_flag`), warm start, KV window and sink. The eval runs exactly what the app would."""
    from model.release import embedded_warm_start, embedded_window, model_sampler_sigmas
    from streaming.generator import GeneratorConfig

    info = Path(weights).with_suffix(".json")
    window, sink = embedded_window(info)
    return GeneratorConfig(sigmas=model_sampler_sigmas(sigmas_flag, weights), warm_start=embedded_warm_start(info),
                           kv_window_chunks=window, sink=sink)


def attention_summary(model, vae, scenes: int, size: int, sampler) -> dict[str, list[dict]]:
    """The attention probe over the first 2 s of `scenes` eval scenes, printed and returned per path."""
    import dataclasses

    from common.bench import markdown_table
    from sim.clips import ClipDataset
    from train.attention_probe import mean_stats, probe_scene

    probes = [probe_scene(model, vae, ClipDataset.scene_seed("eval", i), 2, size, sampler) for i in range(scenes)]
    out = {}
    for path in ("walking", "standing"):
        stats = mean_stats([probe[path] for probe in probes])
        print(f"attention, {path}, {scenes} eval scene(s):")
        print(markdown_table(
            ["block", "branch", "top weight", "same pixel of frame 0", "on frame 0", "effective keys", "logit max", "logit cap"],
            [[s.block, s.branch, f"{s.top_weight:.3f}", f"{s.same_pixel_weight:.3f}", f"{s.start_weight:.3f}",
              f"{s.effective_keys:.0f}", f"{s.logit_max:.2f}", f"{s.logit_cap:.2f}"] for s in stats]))
        out[path] = [dataclasses.asdict(s) for s in stats]
    return out


@dataclass(frozen=True)
class EvalJob:
    """What every worker needs to evaluate clips by index: picklable, the model is loaded in the worker."""

    model: str | None  # None: the embedded weights
    vae: str
    sampler: GeneratorConfig  # the model's json: σ list, warm start, KV window and sink (`eval_sampler`)
    seconds: int
    size: int
    threads: int
    long_seconds: int = 0  # > 0: also a walk this long per scene (train.evaluate.long_walk)

    def run(self, indices) -> list[tuple[int, ClipResult, dict | None]]:
        """In a worker process: load the model and VAE, then `evaluate`."""
        from model.vae import cpu_decoder_dtype, load_tiny_vae
        from train.embedded import load_weights

        vae = load_tiny_vae(self.vae).decode_in(cpu_decoder_dtype())  # the decoder as the app runs it
        return self.evaluate(load_weights(self.model), vae, indices)

    def evaluate(self, model, vae, indices) -> list[tuple[int, ClipResult, dict | None]]:
        """(index, result, frames) per eval scene index; frames only for index 0 (the docs' figure)."""
        import torch

        from sim.clips import ClipDataset
        from train.evaluate import evaluate_clip

        torch.set_num_threads(self.threads)
        out = []
        for i in indices:
            seed = ClipDataset.scene_seed("eval", i)
            result, frames = evaluate_clip(model, vae, seed, self.seconds, self.size, sampler=self.sampler,
                                           long_seconds=self.long_seconds)
            out.append((i, result, frames if i == 0 else None))
            late = {f"{w}": {k: round(v, 3) for k, v in m.items()} for w, m in result.long_windows.items()}
            print(f"scene {seed}: PSNR model {sum(result.psnr['model']) / self.seconds:.2f} repeat "
                  f"{sum(result.psnr['repeat']) / self.seconds:.2f} warp {sum(result.psnr['warp']) / self.seconds:.2f} dB; "
                  f"follows {result.follows}; standing PSNR {sum(result.standing['psnr']) / self.seconds:.2f} dB, "
                  f"detail {sum(result.standing['detail']) / self.seconds:.3f}" + (f"; long walk {late}" if late else ""),
                  flush=True)
        return out


def _goals_table(summary: dict) -> str:
    """Each goal of a walk that stays a world: measured, bar, met (only the figures this run has)."""
    from common.bench import markdown_table

    rows = [["8 s walks: gain over repeat-first-frame", f"{summary['gain_over_repeat_db']:+.2f} dB", f"≥ +{BAR_GAIN_DB:g} dB",
             summary["gain_over_repeat_db"] >= BAR_GAIN_DB],
            ["8 s walks: camera following", f"{summary['follow']['all']:.3f}", f"≥ {BAR_FOLLOW}",
             summary["follow"]["all"] >= BAR_FOLLOW],
            ["8 s walks: detail", f"{summary['mean']['detail_model']:.3f}", f"≥ {GOAL_DETAIL}",
             summary["mean"]["detail_model"] >= GOAL_DETAIL]]
    standing = summary.get("standing", {})
    for key, value in standing.items():
        if key.startswith("psnr_first_"):
            rows.append([f"standing still: PSNR to the start frame, first {key[len('psnr_first_'):]}", f"{value:.2f} dB",
                         f"≥ {GOAL_STANDING_DB:g} dB", value >= GOAL_STANDING_DB])
    late = summary.get("long", {}).get("windows", {}).get("22-30")
    if late:
        rows += [["30 s walks, seconds 22–30: detail", f"{late['detail']:.3f}", f"≥ {GOAL_DETAIL}", late["detail"] >= GOAL_DETAIL],
                 ["30 s walks, seconds 22–30: blockiness", f"{late['blockiness']:.2f}", f"≤ {GOAL_BLOCKINESS}",
                  late["blockiness"] <= GOAL_BLOCKINESS],
                 ["30 s walks, seconds 22–30: colour error", f"{late['colour_error']:.1f}", f"≤ {GOAL_COLOUR:g}",
                  late["colour_error"] <= GOAL_COLOUR]]
    return markdown_table(["goal", "measured", "bar", "met"], [[*row[:3], "yes" if row[3] else "**no**"] for row in rows])


def _long_walk_section(summary: dict, frames: dict | None, args) -> str:
    """The long walks' table (windows and a few seconds) and, when the shown clip has one, eval_long.png."""
    import numpy as np
    from PIL import Image

    from common.bench import markdown_table
    from train.evaluate import LONG_METRICS

    long = summary["long"]
    names = {"psnr": "PSNR", "detail": "detail", "blockiness": "blockiness", "colour_error": "colour error"}
    digits = {"psnr": 2, "detail": 3, "blockiness": 2, "colour_error": 1}
    rows = [[f"seconds {w}"] + [f"{long['windows'][w][m]:.{digits[m]}f}" for m in LONG_METRICS] for w in long["windows"]]
    seconds = long["seconds"]
    for s in sorted({1, 5, 10, 15, 20, 25, seconds} & set(range(1, seconds + 1))):
        rows.append([f"second {s}"] + [f"{long['per_second'][m][s - 1]:.{digits[m]}f}" for m in LONG_METRICS])
    picture = ""
    if frames is not None and "long_model" in frames:
        picks = [16 * s for s in (0, 1, 5, 10, 15, 20, 25, seconds) if 16 * s < len(frames["long_gt"])]
        grid = np.concatenate([np.concatenate([frames[k][i] for i in picks], axis=1) for k in ("long_gt", "long_model")], 0)
        Image.fromarray(grid).save(DOCS / "eval_long.png")
        picture = (f"\n![{seconds} s walk](eval_long.png)\n\n`eval_long.png`, the same eval scene's {seconds} s walk: ground "
                   f"truth (top) and the model's rollout, at {', '.join(f'{i // 16}' for i in picks)} s.\n")
    return f"""
## Long walks: does the world last?

One more walk of {seconds} s per scene ({long['clips']} scenes), streamed whole. Per window (all its frames at once)
and at a few seconds: PSNR to the ground truth, `detail` (as above), `blockiness` (mean |luma step| across the 8-pixel
grid over the steps inside the cells, the model's over the ground truth's: 1 = no more 8×8 blocks than the real view)
and `colour error` (mean |frame-mean RGB − the ground truth's| on 0–255; `train.evaluate`).

{markdown_table(["", *(names[m] for m in LONG_METRICS)], rows)}
{picture}"""


def write_docs(summary: dict, shown, args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from PIL import Image

    from common.bench import machine_description, markdown_table
    from train.evaluate import METHODS, METRICS

    seconds = list(range(1, args.seconds + 1))
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    names = {"model": "roam-tiny (distilled, streaming)", "repeat": "repeat first frame", "warp": "warp first frame (true depth)"}
    axis_labels = {"psnr": "PSNR (dB)", "ssim": "SSIM", "detail": "detail kept (ground truth = 1)"}
    for ax, metric in zip(axes, METRICS):
        for method, label in names.items():
            ax.plot(seconds, summary["per_second"][f"{metric}_{method}"], marker="o", label=label)
        ax.set_xlabel("second of rollout")
        ax.set_ylabel(axis_labels[metric])
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"held-out rollouts: {summary['clips']} eval scenes, {args.size}×{args.size}")
    fig.tight_layout()
    fig.savefig(DOCS / "eval.png", dpi=110)
    plt.close(fig)

    seed, frames = shown
    # 0.25 s and 0.5 s (the end of the first chunk) show how long the start frame's content lasts.
    picks = sorted({0, 4, 8} | {16 * s for s in (1, 2, 4, 6, args.seconds) if 16 * s < len(frames["gt"])})
    rows = [np.concatenate([frames[k][i] for i in picks], axis=1) for k in ("gt", "model", "warp", "standing")]
    Image.fromarray(np.concatenate(rows, axis=0)).save(DOCS / "eval_rollout.png")

    long_section = _long_walk_section(summary, frames, args) if "long" in summary else ""
    goals = _goals_table(summary)

    header = ["second"] + [f"{m} {k if k == 'detail' else k.upper()}" for k in METRICS for m in METHODS]
    table_rows = []
    for s in range(args.seconds):
        table_rows.append([s + 1] + [f"{summary['per_second'][f'{k}_{m}'][s]:.{2 if k == 'psnr' else 3}f}"
                                     for k in METRICS for m in METHODS])
    table_rows.append(["mean 1–%d" % args.seconds] + [f"{summary['mean'][f'{k}_{m}']:.{2 if k == 'psnr' else 3}f}"
                                                      for k in METRICS for m in METHODS])
    gain, follow = summary["gain_over_repeat_db"], summary["follow"]
    per_clip = markdown_table(
        ["eval scene", "PSNR model", "PSNR repeat", "PSNR warp", "follows (mirrored yaw)", "follows (reversed)"],
        [[clip["scene"], f"{clip['psnr_model']:.2f}", f"{clip['psnr_repeat']:.2f}", f"{clip['psnr_warp']:.2f}",
          clip["follows"]["mirrored_yaw"], clip["follows"]["reversed_motion"]] for clip in summary["per_clip"]])
    scored = {"model": follow, **summary.get("follow_baselines", {})}
    following_table = markdown_table(
        ["camera following", "mirrored yaw", "reversed motion", "both"],
        [[names[m], *(f"{scored[m][k]:.2f}" for k in ("mirrored_yaw", "reversed_motion", "all"))] for m in names if m in scored])
    standing = summary["standing"]
    standing_table = markdown_table(
        ["second", "PSNR to the start frame", "detail"],
        [[s + 1, f"{standing['per_second']['psnr'][s]:.2f}", f"{standing['per_second']['detail'][s]:.3f}"] for s in range(args.seconds)]
        + [[f"mean 1–{args.seconds}", f"{standing['mean']['psnr']:.2f}", f"{standing['mean']['detail']:.3f}"]])
    sigmas_flag = f" --sigmas {args.sigmas}" if args.sigmas is not None else ""
    text = f"""# Evaluation of the embedded model on held-out scenes

Written by `python run.py eval --clips {args.clips} --seconds {args.seconds} --size {args.size}{sigmas_flag} --write-docs`
(train/eval_cmd.py, train/evaluate.py) on {machine_description()}.

Model: `{summary['model']}` ({json.dumps(summary.get('model_info', {}).get('trained_on', {}))}).
Decoded by `{summary.get('vae', '?')}` (decoder {summary.get('decoder', '?')}).
Each of {summary['clips']} eval-split scenes (seeds ≥ 1 000 000, never trained on) gives one random walk of
{args.seconds} s at 16 fps, {args.size}×{args.size}. The live chunk generator (`streaming.generator.ChunkGenerator`,
{len(summary['sigmas']) - 1} Euler step(s) per 0.5 s chunk over σ = {', '.join(f'{x:g}' for x in summary['sigmas'])}{WARM_NOTE if summary.get('warm_start') else ''}, KV window {summary.get('kv_window_chunks', 2)}{' + sink' if summary.get('sink', True) else ', no sink'}) starts from the walk's first rendered frame and is driven
with the walk's poses; metrics compare each second of its output with the ground-truth render.

![PSNR, SSIM and detail per second](eval.png)

{markdown_table(header, table_rows)}

`detail` is the mean absolute spatial gradient of the frames' luma over that of the ground truth
(`train.evaluate.detail`): 1 keeps as much edge and texture as the real view, a blur tends to 0. PSNR and
SSIM both reward a blurred expectation of an uncertain view, so this column shows what they hide. The
warp's detail is low where it has lost the view (those pixels are filled with one flat colour).

## Against the bar

| | measured | bar | met |
|---|---|---|---|
| PSNR gain over repeat-first-frame, seconds 1–{args.seconds} | {gain:+.2f} dB | ≥ +{BAR_GAIN_DB:.0f} dB | {"yes" if gain >= BAR_GAIN_DB else "no"} |
| camera following (both perturbations) | {follow['all']:.2f} | ≥ {BAR_FOLLOW} | {"yes" if follow['all'] >= BAR_FOLLOW else "no"} |
| camera following, mirrored yaw | {follow['mirrored_yaw']:.2f} | | |
| camera following, reversed motion | {follow['reversed_motion']:.2f} | | |

Camera following counts a (clip, perturbation) pair when the rollout's MSE to the ground truth along the
commanded poses is lower than to the ground truth rendered along the perturbed poses (relative motions
mirrored left-right, or inverted), over seconds 1–{args.seconds}. The same test scored on the baselines
(a static frame follows no camera, so its score is what the test gives by accident; the true-depth warp is
exact geometry but loses the view as the camera moves on):

{following_table}

## Standing still

The same generator from the same {summary['clips']} first frames with the camera never moving, for {args.seconds} s: the
ground truth is the start frame throughout, so this is how long the model keeps the place it was shown.
Frame 0 (the start image through the VAE, the most a rollout can keep) is at {standing['frame0_psnr']:.2f} dB.

{standing_table}
{long_section}
## Goals of a walk that stays a world

{goals}

## Per clip

{per_clip}

## Frames

![held-out rollout](eval_rollout.png)

`eval_rollout.png`, eval scene {seed}, rows from the top: ground truth, the model's rollout, the true-depth
warp of frame 0, and the model's rollout with the camera standing still (its ground truth is the first
frame of the top row); columns at {", ".join(f"{i / 16:g}" for i in picks[:-1])} and {picks[-1] / 16:g} s.
"""
    # The hand-written "## Notes" section of the previous file is kept.
    previous = (DOCS / "eval.md").read_text() if (DOCS / "eval.md").exists() else ""
    marker = "\n## Notes"
    if marker in previous:
        text += previous[previous.index(marker):]
    (DOCS / "eval.md").write_text(text)
