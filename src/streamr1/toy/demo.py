"""``python -m streamr1.toy.demo --output runs/demo`` (``make demo``): Stream-R1 on the toy world, before and after.

What it does, all through the real CLI and configs, in this process:

1. measures the initial student (the shipped initialisation, ``make toy-assets``) on fixed noise: oracle good-mode
   fraction, coverage and per-axis scores, and the reward's scores (:mod:`streamr1.toy.evaluation`);
2. ``streamr1 fit --config configs/quickstart.yaml --config callbacks/stream_r1.yaml`` with a TensorBoard logger in
   ``<output>/tensorboard`` (losses, rewards, weights, saliency heat maps, GIFs of validation samples);
3. ``streamr1 predict`` of the trained checkpoint with the ``VideoWriter`` callback: mp4s in ``<output>/videos``;
4. measures the trained student the same way and writes ``<output>/report.md`` (and ``report.json``).

It takes a few minutes on 2 CPU cores. Lightning's progress bar runs during fit and predict, tqdm elsewhere.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from streamr1 import toy
from streamr1.toy.runs import RECIPE, check_assets, find_callback, fit, repo_path, reward_fragment

ROWS: tuple[tuple[str, str, str], ...] = (
    ("good_fraction", "oracle good-mode fraction", "higher"),
    ("mode_coverage", "mode coverage (good world videos reached)", "higher"),
    ("cell_coverage", "cell coverage (cells with a good sample)", "higher"),
    ("VQ", "oracle VQ (mean)", "higher"),
    ("MQ", "oracle MQ (mean)", "higher"),
    ("TA", "oracle TA (mean)", "higher"),
    ("mode_visual", "share in a visual-flaw mode", "lower"),
    ("mode_motion", "share in a motion-flaw mode", "lower"),
    ("mode_text", "share in a text-flaw mode", "lower"),
    ("reward_VQ", "reward VQ (raw mean)", "higher"),
    ("reward_MQ", "reward MQ (raw mean)", "higher"),
    ("reward_TA", "reward TA (raw mean)", "higher"),
)
"""Report rows: metric key, label, which direction is better."""


def measure(student: Any, prompts: Sequence[str], seed: int, reward: Any,
            world: dict[str, Any] | None = None) -> dict[str, float]:
    """Oracle and reward numbers of ``student`` on ``prompts`` from fixed noise (``seed``), against ``world``
    (:class:`~streamr1.toy.world.ToyWorld` arguments; the recipe's by default)."""
    from streamr1.flow import warped_steps
    from streamr1.toy.evaluation import evaluate_videos, sample_student
    from streamr1.toy.text import ToyTextEncoder
    from streamr1.toy.world import ToyWorld

    video = sample_student(student, ToyTextEncoder(dim=toy.TEXT_DIM), prompts, toy.LATENT_SHAPE,
                           warped_steps(toy.DENOISING_STEPS, toy.SHIFT), seed=seed)
    return evaluate_videos(video, prompts, ToyWorld(**(toy.WORLD if world is None else world)), reward)


def report_markdown(before: dict[str, float], after: dict[str, float], after_ema: dict[str, float] | None,
                    info: dict[str, Any]) -> str:
    """The before/after table as markdown."""
    head = "| metric | before (initial student) | after (student) | change |"
    sep = "|---|---|---|---|"
    if after_ema is not None:
        head, sep = head + " after (EMA) |", sep + "---|"
    lines = [
        "# Stream-R1 on the toy world: before and after",
        "",
        f"Command: `{info['command']}` ({info['fit_seconds']:.0f} s fit, {info['student_steps']} student steps, "
        f"{info['critic_steps']} critic steps). Evaluation: {info['samples']} samples (each of the world's captions "
        f"{info['repeats']} times) from the same fixed noise before and after; oracle numbers from the pixels "
        "(streamr1.toy.oracle), reward numbers from the toy reward (raw scores).",
        "",
        head,
        sep,
    ]
    for key, label, better in ROWS:
        if key not in before:
            continue
        b, a = before[key], after[key]
        arrow = "" if abs(a - b) < 1e-9 else ("better" if (a > b) == (better == "higher") else "worse")
        row = f"| {label} | {b:.3f} | {a:.3f} | {a - b:+.3f} {arrow} |"
        if after_ema is not None:
            row += f" {after_ema[key]:.3f} |"
        lines.append(row)
    lines += [
        "",
        f"TensorBoard: `tensorboard --logdir {info['tensorboard']}`; sample videos: `{info['videos']}`.",
        "The EMA column is the StudentEMA (decay 0.99) after so few student steps: it is still close to the start."
        if after_ema is not None else "",
    ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m streamr1.toy.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="runs/demo", help="folder for logs, videos and the report")
    parser.add_argument("--stack", default="stream_r1", help="callback stack from callbacks/ (file stem)")
    parser.add_argument("--max-steps", type=int, default=300,
                        help="trainer.max_steps: critic + student optimizer steps (300 = 250 critic + 50 student)")
    parser.add_argument("--repeats", type=int, default=64, help="evaluation samples per world caption")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    check_assets()
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(args.seed)

    from streamr1.assets import resolve
    from streamr1.toy.assets import REWARD_FILE, build_student
    from streamr1.toy.evaluation import eval_prompts
    from streamr1.toy.reward import toy_reward

    prompts = eval_prompts(args.repeats)
    reward = toy_reward(resolve(f"pkg://streamr1/assets/{REWARD_FILE}"))
    print(f"[demo] measuring the initial student on {len(prompts)} samples ...")
    before = measure(build_student(resolve("pkg://streamr1/assets/toy_student.safetensors")), prompts, 1234, reward)

    cycles = args.max_steps - args.max_steps // 6  # critic steps when student_every = 5: N = c + ceil(c / 5)
    extra = ["--trainer.max_steps", str(args.max_steps), "--trainer.val_check_interval", str(cycles),
             "--trainer.default_root_dir", out, "--seed_everything", str(args.seed),
             "--checkpoint.dirpath", os.path.join(out, "checkpoints")]  # last.ckpt (the run's RunCheckpoint) there
    reward_config = reward_fragment(args.stack)
    command = (f"streamr1 fit --config {RECIPE} --config callbacks/{args.stack}.yaml "
               + (f"--config {reward_config} " if reward_config else "") + " ".join(extra).replace(out, args.output))
    print(f"[demo] {command}")
    start = time.perf_counter()
    cli = fit(args.stack, out, "tensorboard", extra)
    fit_seconds = time.perf_counter() - start
    module = cli.model
    after = measure(module.student, prompts, 1234, reward)
    ema = find_callback(cli.trainer, "StudentEMA")
    after_ema = None
    if ema is not None and ema.shadow:
        with ema.swapped(module.student):
            after_ema = measure(module.student, prompts, 1234, reward)

    # This run's last checkpoint: when an earlier demo left a last.ckpt in the folder, Lightning writes last-v1.ckpt
    # and keeps the old one, so the path is read from the callback rather than assumed.
    ckpt = cli.trainer.checkpoint_callback.last_model_path
    if not ckpt or not os.path.isfile(ckpt):
        raise RuntimeError(f"The fit wrote no last checkpoint under {os.path.join(out, 'checkpoints')}; "
                           "cannot run predict on it.")
    videos = os.path.join(out, "videos")
    print(f"[demo] streamr1 predict --ckpt_path {ckpt} -> {videos}")
    from streamr1.cli import main as cli_main

    cli_main(["predict", "--config", repo_path(RECIPE), "--ckpt_path", ckpt, "--trainer.logger", "false",
              "--trainer.default_root_dir", out, "--video.output_dir", videos,  # at the recipe's video.fps
              "--data.init_args.val_batch_size", "16"])

    info = {"command": command, "fit_seconds": fit_seconds, "student_steps": int(module.student_steps),
            "critic_steps": int(module.critic_steps), "samples": len(prompts), "repeats": args.repeats,
            "checkpoint": ckpt,
            "tensorboard": os.path.join(args.output, "tensorboard"), "videos": os.path.join(args.output, "videos")}
    report = report_markdown(before, after, after_ema, info)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as fh:
        fh.write(report)
    payload = {"before": before, "after": after, "after_ema": after_ema, **info,
               "mp4s": sorted(glob.glob(os.path.join(videos, "*.mp4")))}
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
    print(report)
    return payload


if __name__ == "__main__":  # pragma: no cover
    main()
