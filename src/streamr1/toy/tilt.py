"""``python -m streamr1.toy.tilt --output results`` (part of ``make bench-quality``): do the weights favour good modes?

Stream-R1 (arXiv 2605.03849) claims that weighting each rollout's DMD loss by ``W_inter = exp(beta r_final)``
(SPEC.md §4.2) moves the student toward the teacher's high-quality modes. This measures how the weight is shared
among quality modes on rollouts that do reach modes - which modes the weighted DMD gradient draws on - separately
from how well a student can be trained. What the shares are *not*: the distribution weighted DMD converges to. The
weighted gradient is ``E_q[W(x) (s_fake(x) - s_real(x)) dx/dtheta]`` with ``W`` detached and the critic trained on
unweighted rollouts, so when the critic tracks the student (``s_fake = s_q``) and the teacher is exact, ``q = p``
zeroes every term whatever ``W > 0`` is: the teacher's own mixture stays a fixed point. Weighting changes which
rollouts the gradient corrects first and how many it effectively averages (the effective sample size below), and
it helps when the teacher's guidance is least reliable on the rollouts it down-weights (the paper's premise).

1. Rollouts: the exact teacher (:class:`~streamr1.toy.teacher.MixtureTeacher`, ``g_s = 3``) run through the student's
   causal few-step sampler (:func:`~streamr1.toy.ode.causal_teacher_sampler`: the recipe's chunks, the recipe's levels
   ``[1000, 750, 500, 250]`` warped by :data:`~streamr1.toy.SHIFT`), ``repeats`` samples per world caption, one
   set per seed. About the world's good proportion land in good modes, the rest in the visual, motion and text
   flaws. The world is the recipe's by default; ``--num-captions``, ``--videos-per-caption``,
   ``--good-per-caption`` and ``--world-seed`` choose another.
2. Each rollout's quality mode comes from the oracle (:func:`~streamr1.toy.oracle.classify_mode`), never from a reward.
3. Each row's reward scores the rollouts; scores are z-normalised per axis over the seed's rollouts (what
   ``streamr1 calibrate`` computes on them, SPEC.md §4.1); ``r_final`` and ``W_inter`` are the callbacks' own
   functions (:func:`~streamr1.weighting.final_reward`, :func:`~streamr1.weighting.reliability_weight`, ``beta = 2``).
4. Per row: the weight share of each quality mode, ``sum_{i in mode} W_i / sum_i W_i``, and the effective sample
   size ``(sum W)^2 / (N sum W^2)`` as a fraction of ``N`` (1: uniform; small: a few rollouts carry the loss, the
   price in diversity).

Stream-R1's balancing term ``-lambda P`` is one number per batch (SPEC.md §4.4): it rescales every weight of the batch
by ``exp(-beta lambda P)`` and cancels in the shares, so Stream-R1's tilt is ``Overall``'s. Saliency weighting
(``W_intra``) acts within a rollout and is not measured here; the full table (:mod:`streamr1.toy.quality`) has it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from streamr1 import toy
from streamr1.toy.world import MODES
from streamr1.weighting import effective_sample_size

ROWS: dict[str, tuple[str, str | None, str | None]] = {
    "dmd": ("plain DMD (W = 1): the teacher's own mixture", None, None),
    "reward_forcing": ("Reward Forcing: exp(2 r_MQ), toy reward", "toy", "MQ"),
    "stream_r1": ("Stream-R1: exp(2 (Overall - λP)), toy reward", "toy", "Overall"),
    "vq_only": ("exp(2 r_VQ), toy reward", "toy", "VQ"),
    "ta_only": ("exp(2 r_TA), toy reward", "toy", "TA"),
    "oracle_mq": ("upper bound: Reward Forcing with the oracle as reward", "oracle", "MQ"),
    "oracle_overall": ("upper bound: Stream-R1 with the oracle as reward", "oracle", "Overall"),
}
"""``{row: (label, reward ("toy", "oracle" or None: W = 1), reward mode of r_final)}``."""

BETA = 2.0
"""SPEC.md §4.2's inverse temperature."""


def teacher_rollouts(repeats: int, seed: int, batch_size: int = 96,
                     world: dict[str, Any] | None = None) -> tuple[Tensor, list[str]]:
    """``([N, F, 3, H, W] in [-1, 1], N captions)``: the teacher of ``world`` (:class:`~streamr1.toy.world.ToyWorld`
    arguments; the recipe's, :data:`streamr1.toy.WORLD`, by default) through the student's few-step sampler,
    ``repeats`` samples for each of the world's prompts (noise and re-noising seeded with ``seed``)."""
    from streamr1.flow import warped_steps
    from streamr1.toy.ode import causal_teacher_sampler
    from streamr1.toy.teacher import MixtureTeacher
    from streamr1.toy.text import ToyTextEncoder
    from streamr1.toy.world import ToyWorld

    w = ToyWorld(**(toy.WORLD if world is None else world))
    teacher = MixtureTeacher(world=w, text_encoder=ToyTextEncoder(dim=toy.TEXT_DIM))
    prompts = [p for p in w.train_prompts() for _ in range(repeats)]
    steps = warped_steps(toy.DENOISING_STEPS, toy.SHIFT)
    g = torch.Generator().manual_seed(seed)
    videos = []
    for i in range(0, len(prompts), batch_size):
        batch = prompts[i:i + batch_size]
        noise = torch.randn(len(batch), *w.videos.shape[1:], generator=g)
        cond = teacher.text_encoder.encode(batch).float()
        neg = teacher.text_encoder.encode([""] * len(batch)).float()
        _, _, x0 = causal_teacher_sampler(teacher, cond, neg, noise, toy.CHUNK_FRAMES, steps, toy.GUIDANCE_SCALE, g)
        videos.append(x0.clamp(-1, 1))
    return torch.cat(videos), prompts


def weight_shares(weights: Tensor, modes: Sequence[str]) -> dict[str, float]:
    """``{"share_<mode>": sum of the weights of that mode's rollouts / sum of all weights, "ess": ...}``.

    ``ess`` is Kish's effective sample size as a fraction of the rollouts, ``(sum w)^2 / (N sum w^2)``.

    Args:
        weights: ``[N]`` non-negative, finite, not all zero.
        modes: ``N`` quality modes among :data:`~streamr1.toy.world.MODES`.
    """
    w = weights.detach().double().flatten()
    if w.numel() != len(modes) or w.numel() == 0:
        raise ValueError(f"weight_shares needs one weight per rollout: got {w.numel()} weights, {len(modes)} modes.")
    if not torch.isfinite(w).all() or (w < 0).any() or float(w.sum()) <= 0:
        raise ValueError("weight_shares needs finite, non-negative weights with a positive sum.")
    total = float(w.sum())
    out = {f"share_{m}": float(w[torch.tensor([mi == m for mi in modes])].sum()) / total for m in MODES}
    out["ess"] = effective_sample_size(total, float((w * w).sum()), w.numel())
    return out


def zscore(scores: dict[str, Tensor]) -> dict[str, Tensor]:
    """Per-axis ``(s - mean) / std`` over the rollouts (SPEC.md §4.1 with the statistics of these rollouts)."""
    out = {}
    for axis, s in scores.items():
        s = s.double()
        if not torch.isfinite(s).all():
            raise ValueError(f"reward axis {axis} gave non-finite scores on the teacher's rollouts.")
        out[axis] = ((s - s.mean()) / s.std().clamp_min(1e-8)).float()
    return out


def measure(video: Tensor, prompts: Sequence[str], reward: Any) -> dict[str, dict[str, float]]:
    """``{row: weight_shares(...)}`` of one set of rollouts for every row of :data:`ROWS`.

    Args:
        video: ``[N, T, 3, H, W]`` in ``[-1, 1]``; ``prompts``: their captions.
        reward: the toy reward (an ``OpenCLIPVideoReward``), scored with :func:`~streamr1.toy.reward.reward_scores`.
    """
    from streamr1.toy.oracle import classify_mode, oracle_scores
    from streamr1.toy.reward import reward_scores
    from streamr1.weighting import final_reward, reliability_weight

    oracle = oracle_scores(video, list(prompts))
    modes = classify_mode(oracle)
    normalized = {"toy": zscore(reward_scores(reward, video, prompts)),
                  "oracle": zscore({a: oracle[a] for a in ("VQ", "MQ", "TA")})}
    out = {}
    for row, (_, kind, mode) in ROWS.items():
        if kind is None:
            w = torch.ones(video.shape[0])
        else:
            w = reliability_weight(final_reward(normalized[kind], mode), BETA)  # type: ignore[arg-type]
        out[row] = weight_shares(w, modes)
    return out


def table_markdown(per_seed: list[dict[str, dict[str, float]]], info: dict[str, Any]) -> str:
    """Mean ± std over seeds of every row's shares and ESS."""
    from streamr1.toy.quality import aggregate, markdown_rows

    columns = [*((f"share_{m}", f"{m}-mode share" if m == "good" else f"{m}-flaw share") for m in MODES),
               ("ess", "effective sample size")]
    agg = aggregate({row: [r[row] for r in per_seed] for row in ROWS})
    lines = markdown_rows(agg, columns, {row: label for row, (label, _, _) in ROWS.items()}, "weight")
    header = [
        "# Where the weights push: reward-tilted mode shares on the teacher's rollouts (streamr1.toy.tilt)",
        "",
        f"`{info['command']}`: the exact teacher through the student's causal 4-step sampler, {info['samples']} "
        f"rollouts a seed ({info['captions']} captions x {info['repeats']}; world {info['world']}), seeds "
        f"{info['seeds']} (mean ± std over seeds). "
        "Each rollout's quality mode is the oracle's; its weight is the row's W_inter = exp(2 r_final) with "
        "per-axis z-scores over the seed's rollouts. A share is the weight on that mode over the total weight: "
        "the mode mix the reweighted DMD objective pulls a teacher-like student toward (plain DMD: the teacher's "
        "own mix). Effective sample size: (Σw)² / (N Σw²). Stream-R1's -λP is one number per batch and cancels "
        "in the shares; saliency weighting is not measured here.",
        f"Compute: {info['seconds']:.0f} s ({info['threads']} CPU thread(s)).",
        "",
    ]
    return "\n".join(header + lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m streamr1.toy.tilt", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="results", help="folder for tilt.md and tilt.json")
    parser.add_argument("--repeats", type=int, default=32, help="rollouts per world caption a seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--reward", default="pkg://streamr1/assets/toy_reward.pt", help="the toy reward's file")
    from streamr1.toy.world_options import add_world_arguments, world_from_arguments

    add_world_arguments(parser)
    args = parser.parse_args(argv)
    world = world_from_arguments(args)
    if args.repeats < 1 or not args.seeds:
        parser.error("--repeats must be >= 1 and --seeds must name at least one seed.")
    from streamr1.assets import resolve
    from streamr1.io import atomic_output
    from streamr1.toy.reward import toy_reward

    reward = toy_reward(resolve(args.reward)).eval()
    start = time.perf_counter()
    per_seed = []
    for seed in args.seeds:
        video, prompts = teacher_rollouts(args.repeats, seed, world=world)
        per_seed.append(measure(video, prompts, reward))
        good = per_seed[-1]["dmd"]["share_good"]
        print(f"[streamr1] seed {seed}: {len(prompts)} teacher rollouts, {good:.3f} in good modes; Stream-R1's weights "
              f"put {per_seed[-1]['stream_r1']['share_good']:.3f} of the weight there", flush=True)
    words = list(sys.argv[1:] if argv is None else argv)
    info = {"command": " ".join(["python -m streamr1.toy.tilt", *words]),
            "repeats": args.repeats, "samples": len(prompts), "captions": len(prompts) // args.repeats,
            "world": world, "seeds": args.seeds,
            "seconds": time.perf_counter() - start, "threads": torch.get_num_threads(), "reward": args.reward}
    os.makedirs(args.output, exist_ok=True)
    with atomic_output(os.path.join(args.output, "tilt.md")) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(table_markdown(per_seed, info))
    payload = {"info": info, "rows": {r: label for r, (label, _, _) in ROWS.items()}, "per_seed": per_seed}
    with atomic_output(os.path.join(args.output, "tilt.json")) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    print(f"[streamr1] wrote {args.output}/tilt.md and tilt.json in {info['seconds']:.0f} s")
    return payload


if __name__ == "__main__":  # pragma: no cover
    main()
