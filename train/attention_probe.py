"""How sharply the softmax blocks attend while the live generator streams: the mechanism behind the blur.

To keep the start frame's objects in view, a query must put its weight on few keys: with the camera
standing still, on the key of its own pixel in the start frame (the clean image latent, the first frame
of the sink chunk that every KV window keeps). `record_attention` watches every softmax mixer's
attention over a KV cache that holds a sink and reports, per block and branch (main, camera):

    top_weight         the largest attention weight of a query (mean over queries and heads)
    same_pixel_weight  the weight on the start frame's key at the query's own pixel
    start_weight       the total weight on the start frame
    effective_keys     exp(entropy) of the attention weights: how many keys a query averages over
    logit_max          the largest logit scale·q·k of a query
    logit_cap          its Cauchy–Schwarz bound scale·|q|·max|k|: with q and k RMS-normalised, the learned
                       norm weights set it, and no alignment of q with k can exceed it

A logit_max close to logit_cap means the branch is as sharp as its norm weights allow.
"""
from __future__ import annotations

import contextlib
import dataclasses
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from streaming.generator import GeneratorConfig

BRANCHES = ("main", "camera")  # the order SoftmaxMixer.forward attends in


@dataclass(frozen=True)
class AttentionStats:
    block: int
    branch: str
    calls: int  # attention calls averaged (one per streamed pass)
    top_weight: float
    same_pixel_weight: float
    start_weight: float
    effective_keys: float
    logit_max: float
    logit_cap: float


def _call_stats(q: torch.Tensor, keys: torch.Tensor, scale: float, frame_tokens: int) -> dict[str, float]:
    """q [B, H, Nq, D] against keys [B, H, Nk, D] whose first `frame_tokens` are the start frame."""
    logits = (q @ keys.transpose(-1, -2)).float() * scale  # [B, H, Nq, Nk]
    weights = torch.softmax(logits, dim=-1)
    query = torch.arange(q.shape[2], device=q.device)
    same = weights[..., query, query % frame_tokens]  # on the query's own pixel in the start frame
    entropy = -(weights * weights.clamp_min(1e-30).log()).sum(-1)
    cap = q.norm(dim=-1).float() * keys.norm(dim=-1).float().amax(-1, keepdim=True) * scale
    return {
        "top_weight": weights.amax(-1).mean().item(),
        "same_pixel_weight": same.mean().item(),
        "start_weight": weights[..., :frame_tokens].sum(-1).mean().item(),
        "effective_keys": entropy.exp().mean().item(),
        "logit_max": logits.amax(-1).mean().item(),
        "logit_cap": cap.mean().item(),
    }


@contextlib.contextmanager
def record_attention(model: torch.nn.Module):
    """Within the block, every streamed softmax attention with a sink in its cache is measured.

    Yields a list that, on exit, holds one `AttentionStats` per (block, branch) that attended. The model's
    outputs are unchanged: the wrapper measures the inputs and calls the mixer's own attention.
    """
    from model.softmax_mixer import SoftmaxMixer

    per_call: list[AttentionStats] = []
    mixers = [(int(name.split(".")[1]), module) for name, module in model.named_modules()
              if isinstance(module, SoftmaxMixer) and name.startswith("blocks.")]
    if not mixers:
        raise ValueError("record_attention: the model has no softmax blocks")

    def wrap(block: int, mixer: SoftmaxMixer):
        attend, forward = mixer._attend, mixer.forward
        calls_in_forward = [0]

        def watched_forward(*args, **kwargs):
            calls_in_forward[0] = 0
            return forward(*args, **kwargs)

        def watched_attend(q, k, v, layout, cache, scale):
            branch = BRANCHES[min(calls_in_forward[0], 1)]
            calls_in_forward[0] += 1
            if cache is not None and cache.sink_k is not None:
                past_k, _ = cache.keys_values()
                keys = torch.cat((past_k.to(k.dtype), k.transpose(1, 2)), dim=2)
                per_call.append(AttentionStats(block=block, branch=branch, calls=1,
                                               **_call_stats(q.transpose(1, 2), keys, scale, layout.spatial)))
            return attend(q, k, v, layout, cache, scale)

        mixer.forward, mixer._attend = watched_forward, watched_attend

    for block, mixer in mixers:
        wrap(block, mixer)
    results: list[AttentionStats] = []
    try:
        yield results
    finally:
        for _, mixer in mixers:  # drop the instance attributes: the class methods show through again
            del mixer.forward, mixer._attend
        results.extend(mean_stats([per_call]))


def probe_scene(model, vae, scene_seed: int, seconds: int, size: int,
                sampler: GeneratorConfig | None = None) -> dict[str, list[AttentionStats]]:
    """Attention statistics of the live generator from an eval scene's first frame, for its walk and for
    the camera standing at the walk's first pose: {"walking": [...], "standing": [...]}."""
    from train.evaluate import held_out_walk, rollout, standing_at_start

    _, clip, K = held_out_walk(scene_seed, seconds, size)
    paths = {"walking": clip.world_T_cams, "standing": standing_at_start(clip.world_T_cams)}
    out = {}
    for name, poses in paths.items():
        with record_attention(model) as stats:
            rollout(model, vae, clip.frames[0], poses, K, sampler=sampler)
        out[name] = stats
    return out


def mean_stats(runs: list[list[AttentionStats]]) -> list[AttentionStats]:
    """Per (block, branch), the call-weighted mean of stats: of single calls, or of whole probes."""
    by_key: dict[tuple[int, str], list[AttentionStats]] = defaultdict(list)
    for stats in runs:
        for s in stats:
            by_key[(s.block, s.branch)].append(s)
    names = [f.name for f in dataclasses.fields(AttentionStats) if f.name not in ("block", "branch", "calls")]
    out = []
    for (block, branch), group in sorted(by_key.items()):
        calls = sum(s.calls for s in group)
        out.append(AttentionStats(block=block, branch=branch, calls=calls,
                                  **{n: sum(getattr(s, n) * s.calls for s in group) / calls for n in names}))
    return out
