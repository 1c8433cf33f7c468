"""``python -m streamr1.toy.init_check``: how good is a toy student before DMD starts (issue 13, item 4)?

Two numbers decide whether reward-weighted DMD has anything to reweight (Stream-R1, arXiv 2605.03849, reweights the
student's *own* rollouts: if none lands in a good mode, no weighting can prefer one):

- **denoising errors** against the exact teacher (:class:`~streamr1.toy.teacher.MixtureTeacher`, the Bayes-optimal
  denoiser of the world): for world videos, chunk ``k`` noised to each of the student's warped few-step levels with
  the clean earlier chunks as context (how the student generates, SPEC.md §2), the RMS distance between the
  student's ``x0`` and the teacher's ``x0`` for the same input. ``continuation`` averages chunks ``1..K-1`` (the
  clean context pins the mode), ``chunk0`` is the first chunk (no context: the mode decision itself);
- **the good-mode fraction** (and the other oracle metrics, :class:`~streamr1.toy.metrics.ToyOracleMetrics`) of the
  student's few-step samples through its KV cache, from fixed seeded noise, one per world caption and repeat.

Prints a table and writes ``--output`` (JSON). ``--student`` defaults to the shipped initial student.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from streamr1.toy.world import ToyWorld


@torch.no_grad()
def denoising_errors(student: nn.Module, teacher: nn.Module, videos: torch.Tensor, cond: torch.Tensor,
                     levels: Sequence[float], seed: int = 0) -> dict[str, list[float]]:
    """RMS distance between the student's and the exact teacher's ``x0`` per level (module docstring).

    Args:
        student: causal student (full-sequence block-causal ``forward(x_t, t [B, F], cond) -> x0``, ``chunk_frames``).
        teacher: the exact teacher (``forward`` with per-frame timesteps; later frames are given at ``t = 1000``).
        videos: ``[B, F, C, H, W]`` clean videos; ``cond``: ``[B, L, D]`` their caption embeddings.
        levels: the warped few-step levels.
        seed: seed of the noise.

    Returns:
        ``{"continuation": [S], "chunk0": [S], "continuation_to_video": [S], "chunk0_to_video": [S]}``: per level,
        the RMS distance to the teacher's ``x0`` and (``*_to_video``) to the clean video itself.
    """
    b, f = videos.shape[:2]
    c = int(student.chunk_frames)
    num_chunks = math.ceil(f / c)
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(videos.shape, generator=g)
    was_training = student.training
    student.eval()
    out: dict[str, list[float]] = {"continuation": [], "chunk0": [], "continuation_to_video": [],
                                   "chunk0_to_video": []}
    for level in levels:
        sq = {key: [] for key in out}
        s = float(level) / 1000.0
        for k in range(num_chunks):
            lo, hi = k * c, min(f, (k + 1) * c)
            x_t = (1 - s) * videos[:, lo:hi] + s * noise[:, lo:hi]
            inp = torch.cat([videos[:, :lo], x_t], dim=1)
            t = torch.zeros(b, hi)
            t[:, lo:hi] = float(level)
            pred = student(inp, t, cond)[:, lo:hi].float()
            full = torch.cat([inp, torch.zeros(b, f - hi, *videos.shape[2:])], dim=1)
            t_full = torch.full((b, f), 1000.0)
            t_full[:, :hi] = t
            target = teacher(full, t_full, cond)[:, lo:hi].float()
            name = "chunk0" if k == 0 else "continuation"
            sq[name].append((pred - target).pow(2).mean())
            sq[f"{name}_to_video"].append((pred - videos[:, lo:hi]).pow(2).mean())
        for key in out:
            out[key].append(float(torch.stack(sq[key]).mean().sqrt()) if sq[key] else float("nan"))
    student.train(was_training)
    return out


def check_student(student: nn.Module, world: ToyWorld, text_encoder: nn.Module, levels: Sequence[float],
                  repeats: int = 4, error_videos: int = 64, seed: int = 0) -> dict[str, Any]:
    """The init check: :func:`denoising_errors` on ``error_videos`` world videos (every ``N / error_videos``-th) and
    the oracle metrics of ``repeats`` samples per world caption (:func:`~streamr1.toy.evaluation.sample_student`)."""
    from streamr1.toy.evaluation import evaluate_videos, sample_student
    from streamr1.toy.teacher import MixtureTeacher

    teacher = MixtureTeacher(world=world, text_encoder=text_encoder)
    step = max(1, len(world) // max(1, error_videos))
    idx = torch.arange(0, len(world), step)[:error_videos]
    cond = text_encoder.encode([world.captions[i] for i in idx.tolist()]).float()
    errors = denoising_errors(student, teacher, world.videos[idx], cond, levels, seed)
    prompts = [p for p in world.train_prompts() for _ in range(repeats)]
    video = sample_student(student, text_encoder, prompts, tuple(world.videos.shape[1:]), levels, seed=seed + 1234)
    return {"levels": [float(v) for v in levels], "errors": errors, "samples": len(prompts),
            "oracle": evaluate_videos(video, prompts, world)}


def format_report(result: dict[str, Any]) -> str:
    """A short plain-text table of :func:`check_student`'s result."""
    lines = ["RMS error at level         " + "  ".join(f"{v:7.1f}" for v in result["levels"])]
    labels = {"continuation": "continuation vs teacher", "chunk0": "chunk 0 vs teacher",
              "continuation_to_video": "continuation vs video", "chunk0_to_video": "chunk 0 vs video"}
    for key, label in labels.items():
        lines.append(f"{label:<27}" + "  ".join(f"{v:7.3f}" for v in result["errors"][key]))
    o = result["oracle"]
    lines.append(f"good-mode fraction {o['good_fraction']:.3f} over {result['samples']} samples; mode coverage "
                 f"{o['mode_coverage']:.3f}; VQ {o['VQ']:.2f}, MQ {o['MQ']:.2f}, TA {o['TA']:.2f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    from streamr1 import toy
    from streamr1.flow import warped_steps
    from streamr1.toy.assets import build_student
    from streamr1.toy.text import ToyTextEncoder

    parser = argparse.ArgumentParser(prog="python -m streamr1.toy.init_check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--student", default="pkg://streamr1/assets/toy_student.safetensors",
                        help="student weights (the recipe's architecture); 'random' for an untrained one")
    parser.add_argument("--repeats", type=int, default=32, help="samples per world caption")
    parser.add_argument("--error-videos", type=int, default=64, help="world videos for the denoising errors")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--output", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    student = build_student(None if args.student == "random" else args.student)
    world = ToyWorld(**toy.WORLD)
    result = check_student(student, world, ToyTextEncoder(dim=toy.TEXT_DIM), warped_steps(toy.DENOISING_STEPS,
                           toy.SHIFT), args.repeats, args.error_videos, args.seed)
    result["student"] = args.student
    print(format_report(result))
    if args.output:
        from streamr1.toy.assets import _write_json

        _write_json(args.output, result)
    return result


if __name__ == "__main__":  # pragma: no cover
    main()
