"""``python -m streamr1.toy.quality --output results`` (``make bench-quality``): the toy world's ablation table.

Stream-R1's claim (arXiv 2605.03849; SPEC.md §5, last paragraph): with the same data and compute, reweighting the DMD
objective by one reward model's scores (per rollout) and saliency (per element) moves the student toward the teacher's
high-quality modes rather than its full mixture. Here every callback stack in ``callbacks/`` - plain DMD, Reward
Forcing, Stream-R1 and its ablations - is run from the same initial student with the same seeds, steps and batch
(``streamr1 fit --config configs/quickstart.yaml --config callbacks/<stack>.yaml --seed_everything <seed>``,
in-process), and every trained student is measured on the same fixed noise by the oracle
(:mod:`streamr1.toy.evaluation`): good-mode fraction, mode and cell coverage, per-axis scores, share of each flaw
mode, and the reward's own scores. Mean and standard deviation over seeds go to ``<output>/quality.md``,
``quality.json`` and ``quality.png`` (``results/`` in the repository: the notebook ``03_quality_table`` reads it);
TensorBoard logs and each run's numbers go to ``--logs`` (``runs/quality``), where ``<stack>_s<seed>.json`` caches
a finished run, so an interrupted table resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from typing import Any

import torch

from streamr1 import toy
from streamr1.toy.runs import check_assets, fit

STACKS: tuple[str, ...] = (
    "dmd", "reward_forcing", "stream_r1", "ablation_no_saliency", "ablation_no_balancing", "ablation_unfactorized",
    "ablation_mean_fusion", "oracle_reliability",
)
"""The rows: every callback stack of ``callbacks/``, baseline first."""

LABELS: dict[str, str] = {
    "init": "initial student (make toy-assets, no DMD)",
    "dmd": "plain DMD (Self-Forcing)",
    "reward_forcing": "Reward Forcing (W_inter on MQ)",
    "stream_r1": "Stream-R1",
    "ablation_no_saliency": "Stream-R1 w/o saliency (W_intra = 1)",
    "ablation_no_balancing": "Stream-R1 w/o balancing (Overall)",
    "ablation_unfactorized": "Stream-R1, unfactorized saliency",
    "ablation_mean_fusion": "Stream-R1, mean axis fusion",
    "oracle_reliability": "upper bound: reliability with the oracle as reward (no saliency)",
}

COLUMNS: tuple[tuple[str, str], ...] = (
    ("good_fraction", "good-mode fraction"),
    ("mode_coverage", "mode coverage"),
    ("cell_coverage", "cell coverage"),
    ("VQ", "oracle VQ"),
    ("MQ", "oracle MQ"),
    ("TA", "oracle TA"),
    ("mode_visual", "visual-flaw share"),
    ("mode_motion", "motion-flaw share"),
    ("mode_text", "text-flaw share"),
    ("reward_VQ", "reward VQ"),
    ("reward_MQ", "reward MQ"),
    ("reward_TA", "reward TA"),
)
EVAL_SEED = 1234
"""Noise seed of the evaluation samples: the same for every run."""


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, std


def aggregate(runs: dict[str, list[dict[str, float]]]) -> dict[str, dict[str, tuple[float, float]]]:
    """``{stack: {metric: (mean, std over seeds)}}`` (std unbiased; 0 with one seed)."""
    return {stack: {k: _mean_std([r[k] for r in rows]) for k in rows[0]} for stack, rows in runs.items() if rows}


def markdown_rows(agg: dict[str, dict[str, tuple[float, float]]], columns: Sequence[tuple[str, str]],
                  labels: dict[str, str], first: str) -> list[str]:
    """Markdown table lines of :func:`aggregate`'s output: one row a key of ``agg`` (named by ``labels``), one column
    a ``(metric, heading)`` of ``columns``, cells ``mean ± std`` (empty where a row lacks the metric)."""
    lines = ["| " + " | ".join([first, *(head for _, head in columns)]) + " |", "|---|" + "---|" * len(columns)]
    for row, values in agg.items():
        cells = [f"{values[k][0]:.3f} ± {values[k][1]:.3f}" if k in values else "" for k, _ in columns]
        lines.append(f"| {labels.get(row, row)} | " + " | ".join(cells) + " |")
    return lines


def table_markdown(agg: dict[str, dict[str, tuple[float, float]]], info: dict[str, Any]) -> str:
    """The table as markdown: one row a stack, ``mean ± std`` over seeds."""
    cols = [(k, label) for k, label in COLUMNS if any(k in v for v in agg.values())]
    lines = markdown_rows(agg, cols, LABELS, "run")
    header = [
        "# The toy world's quality table (make bench-quality)",
        "",
        f"Every row: `{info['command']}` for seeds {info['seeds']} (mean ± std over seeds), the same initial "
        f"student, {info['max_steps']} optimizer steps ({info['critic_steps']} critic + {info['student_steps']} "
        f"student), batch {info['batch_size']}. Each trained student is measured on the same {info['samples']} "
        f"samples (the world's {info['samples'] // max(1, info['repeats'])} captions x {info['repeats']}, fixed "
        f"noise; world {info.get('world', 'of the recipe')}): oracle numbers from the pixels "
        "(never from the reward), reward numbers are the toy reward's raw scores. Good-mode fraction: every oracle "
        "axis above its threshold; mode coverage: share of the world's good videos (of the prompted cells) that some "
        "good sample is nearest to; flaw shares: the first failing oracle axis.",
        f"Compute: {info['fit_minutes']:.0f} min of fitting in all "
        f"({'/'.join(map(str, info['threads']))} CPU thread(s) a run).",
        "",
    ]
    return "\n".join(header + lines) + "\n"


def plot(agg: dict[str, dict[str, tuple[float, float]]], path: str) -> None:
    """Bar charts (mean ± std over seeds) of the headline metrics, one panel each, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("good_fraction", "good-mode fraction"), ("mode_coverage", "mode coverage"),
            ("VQ", "oracle VQ"), ("MQ", "oracle MQ"), ("TA", "oracle TA")]
    stacks = list(agg)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 4.2), constrained_layout=True)
    colours = ["#999999" if s == "init" else "#4c72b0" if s == "dmd" else "#dd8452" if s == "reward_forcing"
               else "#c44e52" if s == "stream_r1" else "#8172b3" for s in stacks]
    for ax, (key, label) in zip(axes, keys, strict=True):
        means = [agg[s][key][0] for s in stacks]
        stds = [agg[s][key][1] for s in stacks]
        ax.bar(range(len(stacks)), means, yerr=stds, color=colours, capsize=3)
        ax.set_xticks(range(len(stacks)), [s.replace("ablation_", "abl. ").replace("_", " ") for s in stacks],
                      rotation=60, ha="right", fontsize=8)
        ax.set_title(label)
        lo = min(m - s for m, s in zip(means, stds, strict=True))
        hi = max(m + s for m, s in zip(means, stds, strict=True))
        if key in ("good_fraction", "mode_coverage"):  # fractions: the whole [0, 1] range, so 0 reads as 0
            ax.set_ylim(0.0, 1.0)
        else:
            pad = 0.15 * (hi - lo + 1e-6)
            ax.set_ylim(lo - pad, hi + pad)
    fig.suptitle("Toy world: DMD vs Reward Forcing vs Stream-R1 and ablations (mean ± std over seeds)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run_one(stack: str, seed: int, out: str, max_steps: int, prompts: Sequence[str], reward: Any,
            extra: Sequence[str] = (), world: dict[str, Any] | None = None,
            assets: str | None = None) -> dict[str, float]:
    """One row entry: fit ``stack`` with ``seed`` (in-process CLI; the toy files from ``assets``, a folder made by
    ``python -m streamr1.toy.assets``, or the shipped ones), then measure the trained student."""
    from streamr1.toy.evaluation import evaluate_videos, sample_videos
    from streamr1.toy.runs import asset_overrides
    from streamr1.toy.world import ToyWorld
    from streamr1.toy.world_options import world_overrides

    world = dict(toy.WORLD if world is None else world)
    args = ["--trainer.max_steps", str(max_steps), "--trainer.limit_val_batches", "0",
            "--trainer.enable_checkpointing", "false", "--trainer.enable_progress_bar", "false",
            "--seed_everything", str(seed), "--model.seed", str(seed), "--data.init_args.seed", str(seed),
            *world_overrides(world), *asset_overrides(stack, assets), *extra]
    start = time.perf_counter()
    cli = fit(stack, os.path.join(out, "tensorboard"), f"{stack}_s{seed}", args)
    seconds = time.perf_counter() - start
    video = sample_videos(cli.model, prompts, seed=EVAL_SEED)
    numbers = evaluate_videos(video, prompts, ToyWorld(**world), reward)
    numbers.update({"fit_seconds": seconds, "threads": float(torch.get_num_threads()),
                    "student_steps": float(cli.model.student_steps),
                    "critic_steps": float(cli.model.critic_steps),
                    "batch_size": float(cli.datamodule.batch_size)})
    return numbers


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m streamr1.toy.quality", description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="results", help="folder for quality.md, quality.json, quality.png")
    parser.add_argument("--logs", default="runs/quality", help="folder for TensorBoard logs and cached run numbers")
    parser.add_argument("--stacks", nargs="+", default=list(STACKS), help="callback stacks (file stems)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--max-steps", type=int, default=600,
                        help="trainer.max_steps of every run (critic + student optimizer steps)")
    parser.add_argument("--repeats", type=int, default=64, help="evaluation samples per world caption")
    parser.add_argument("--assets", default=None,
                        help="a folder made by `python -m streamr1.toy.assets --output DIR` to run on instead of the "
                             "shipped files; its manifest's world is the default world")
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[],
                        help="further `streamr1 fit` arguments for every run (after everything else)")
    from streamr1.toy.world import ToyWorld
    from streamr1.toy.world_options import add_world_arguments, world_from_arguments

    add_world_arguments(parser)
    args = parser.parse_args(argv)
    world = world_from_arguments(args)
    if args.assets is None:
        check_assets()
    else:
        from streamr1.toy.runs import asset_paths

        asset_paths(args.assets)  # refuses a folder that lacks a file
        manifest = os.path.join(args.assets, "toy_assets.json")
        if not os.path.isfile(manifest):
            raise FileNotFoundError(f"{manifest} is missing: --assets takes a folder made by `python -m "
                                    f"streamr1.toy.assets --output {args.assets}`, which records the world it used.")
        with open(manifest, encoding="utf-8") as fh:
            made_on = json.load(fh).get("world", toy.WORLD)
        if world == toy.WORLD:  # no world options given: the world the files were made on
            world = dict(made_on)
        elif world != made_on:
            print(f"[streamr1] note: {args.assets} was made on the world {made_on}; running on {world}: its student "
                  "starts off this world's distribution.")
    out = os.path.abspath(args.output)
    logs = os.path.abspath(args.logs)
    os.makedirs(out, exist_ok=True)
    os.makedirs(os.path.join(logs, "runs"), exist_ok=True)

    from tqdm.auto import tqdm

    from streamr1.toy.assets import build_student
    from streamr1.toy.demo import measure
    from streamr1.toy.evaluation import eval_prompts
    from streamr1.toy.reward import toy_reward
    from streamr1.toy.runs import asset_paths

    files = asset_paths(args.assets)
    prompts = eval_prompts(args.repeats, ToyWorld(**world))
    reward = toy_reward(files["reward"])
    start = time.perf_counter()
    init = measure(build_student(files["student"]), prompts, EVAL_SEED, reward, world)
    runs: dict[str, list[dict[str, float]]] = {"init": [init]}
    jobs = [(stack, seed) for stack in args.stacks for seed in args.seeds]
    bar = tqdm(jobs, desc="quality table runs", dynamic_ncols=True)
    for stack, seed in bar:
        bar.set_postfix_str(f"{stack} seed {seed}")
        path = os.path.join(logs, "runs", f"{stack}_s{seed}.json")
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fh:
                numbers = json.load(fh)
        else:
            torch.manual_seed(seed)
            numbers = run_one(stack, seed, logs, args.max_steps, prompts, reward, args.extra, world, args.assets)
            with open(path, "w", encoding="utf-8") as fh:
                json.dump(numbers, fh, indent=2)
        runs.setdefault(stack, []).append(numbers)
    bar.close()
    agg = aggregate(runs)
    first = runs[args.stacks[0]][0]
    # the batch of the runs (recorded since the sixth round; earlier cached runs used the recipe's, 4)
    batches = sorted({int(r.get("batch_size", 4)) for rows in runs.values() for r in rows if "fit_seconds" in r})
    info = {"command": "streamr1 fit --config configs/quickstart.yaml --config callbacks/<stack>.yaml "
                       f"--trainer.max_steps {args.max_steps} --seed_everything <seed>",
            "seeds": args.seeds, "max_steps": args.max_steps, "critic_steps": int(first["critic_steps"]),
            "student_steps": int(first["student_steps"]), "batch_size": "/".join(map(str, batches)),
            "samples": len(prompts),
            "repeats": args.repeats, "seconds": time.perf_counter() - start,
            "threads": sorted({int(r.get("threads", torch.get_num_threads())) for rows in runs.values() for r in rows
                                if "fit_seconds" in r}),
            "fit_minutes": sum(r.get("fit_seconds", 0.0) for rows in runs.values() for r in rows) / 60,
            "world": world, "eval_seed": EVAL_SEED, "assets": args.assets or "shipped"}
    with open(os.path.join(out, "quality.md"), "w", encoding="utf-8") as fh:
        fh.write(table_markdown(agg, info))
    with open(os.path.join(out, "quality.json"), "w", encoding="utf-8") as fh:
        json.dump({"info": info, "runs": runs,
                   "mean_std": {s: {k: list(v) for k, v in m.items()} for s, m in agg.items()}}, fh, indent=2)
    plot(agg, os.path.join(out, "quality.png"))
    print(table_markdown(agg, info))
    return {"info": info, "mean_std": agg}


if __name__ == "__main__":  # pragma: no cover
    main()
