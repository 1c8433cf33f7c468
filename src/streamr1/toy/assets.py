"""``python -m streamr1.toy.assets --output src/streamr1/assets`` (``make toy-assets``): the toy world's shipped files.

The slow-to-make inputs of the toy recipe (``configs/quickstart.yaml``), made by the project's own code on a CPU:

1. **Student initialisation** (Self-Forcing's ODE stage, :mod:`streamr1.toy.ode`): the exact
   :class:`~streamr1.toy.teacher.MixtureTeacher`'s guided ODE (``g_s = 3``, shift 5, many Euler steps), integrated
   chunk by chunk on clean context, is recorded at the warped few-step levels ``[1000, 937.5, 833.3, 625]``; the causal
   student (:data:`~streamr1.toy.STUDENT_CONFIG`) regresses the end points with teacher forcing from clean previous
   chunks. Written as ``toy_student.safetensors`` (float16 tensors; loading casts them back to float32).
2. **Reward** (:mod:`streamr1.toy.reward`): a tiny open_clip CLIP and its VQ/MQ/TA heads, trained on fresh renders of
   every quality mode; ``toy_reward.pt`` and, next to it, ``toy_reward_spearman.json`` (its Spearman correlation with
   the oracle per axis on held-out renders).
3. **Reward statistics** (SPEC.md §4.1): the reward's per-axis mean and std over rollouts of the initial student,
   ``toy_reward_stats.json`` (what ``streamr1 calibrate`` computes).
4. ``toy_assets.json``: architectures, budgets, timings, and the initial student's oracle numbers.

Budgets are arguments (``--budget tiny`` runs every stage in seconds, for tests). Progress bars (tqdm) on every long
step.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from streamr1 import toy
from streamr1.io import atomic_output

STUDENT_FILE = "toy_student.safetensors"
REWARD_FILE = "toy_reward.pt"
STATS_FILE = "toy_reward_stats.json"
SPEARMAN_FILE = "toy_reward_spearman.json"
MANIFEST_FILE = "toy_assets.json"


@dataclass
class Budget:
    """How much work each stage does.

    Attributes:
        ode_per_prompt: teacher ODE trajectories per cell caption (48 captions).
        ode_steps: Euler steps of the teacher ODE (first chunk; later chunks are pinned by their context).
        student_iterations: ODE-regression optimizer steps; ``student_batch``: samples a step; ``student_lr``.
        reward_iterations: reward optimizer steps; ``reward_batch``: videos a step; ``reward_pool``: labelled
            renders drawn up front; ``reward_lr``.
        spearman_renders: held-out renders for the reward-oracle Spearman correlation.
        calibration_repeats: student rollouts per caption for the reward statistics (and the student's numbers).
    """

    ode_per_prompt: int = 40
    ode_steps: int = 32
    student_iterations: int = 2400
    student_batch: int = 16
    student_lr: float = 2e-3
    reward_iterations: int = 1500
    reward_batch: int = 32
    reward_pool: int = 6144
    reward_lr: float = 2e-3
    spearman_renders: int = 1024
    calibration_repeats: int = 4


BUDGETS: dict[str, Budget] = {
    "full": Budget(),
    "tiny": Budget(ode_per_prompt=1, ode_steps=4, student_iterations=2, student_batch=4, reward_iterations=2,
                   reward_batch=4, reward_pool=16, spearman_renders=16, calibration_repeats=1),
}
"""``full``: the shipped files (about 15-25 minutes on 2 CPU cores); ``tiny``: seconds, for tests."""


@contextmanager
def _bar(total: int, desc: str) -> Iterator[Callable[[int, dict[str, float]], None]]:
    """A tqdm bar, handed out as a ``progress(advance, postfix)`` callback."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=True)

    def progress(n: int, postfix: dict[str, float]) -> None:
        bar.update(n)
        if postfix and bar.n % 10 == 0:
            bar.set_postfix({k: f"{v:.4f}" for k, v in postfix.items()}, refresh=False)

    try:
        yield progress
    finally:
        bar.close()


def _atomic_write(path: str, write: Callable[[str], None]) -> None:
    with atomic_output(path) as tmp:
        write(tmp)


def _write_json(path: str, payload: dict[str, Any]) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(payload, fh, indent=2)
            fh.write("\n")

    _atomic_write(path, write)


def build_teacher() -> Any:
    """The recipe's exact teacher (:data:`~streamr1.toy.WORLD`) with its text encoder."""
    from streamr1.toy.teacher import MixtureTeacher
    from streamr1.toy.text import ToyTextEncoder

    return MixtureTeacher(text_encoder=ToyTextEncoder(dim=toy.TEXT_DIM), text_dim=toy.TEXT_DIM, **toy.WORLD)


def build_student(path: str | None = None) -> Any:
    """The recipe's causal student (:data:`~streamr1.toy.STUDENT_CONFIG`), from ``path`` or random."""
    from streamr1.models import CausalWanDenoiser

    return CausalWanDenoiser(pretrained=path, config=dict(toy.STUDENT_CONFIG), chunk_frames=toy.CHUNK_FRAMES)


def make_student(budget: Budget, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Stage 1: ODE pairs from the teacher, then the student's regression. Returns the student and a summary."""
    from streamr1.toy.ode import make_ode_pairs, train_ode_student
    from streamr1.toy.world import ToyWorld

    teacher = build_teacher()
    prompts = [p for p in ToyWorld.cell_prompts() for _ in range(budget.ode_per_prompt)]
    start = time.perf_counter()
    with _bar(len(prompts), "teacher ODE trajectories") as progress:
        pairs = make_ode_pairs(teacher, teacher.text_encoder, prompts, toy.LATENT_SHAPE,
                               guidance_scale=toy.GUIDANCE_SCALE, shift=toy.SHIFT, num_steps=budget.ode_steps,
                               denoising_steps=toy.DENOISING_STEPS, batch_size=96, seed=seed,
                               causal_chunk_frames=toy.CHUNK_FRAMES, progress=progress)
    ode_seconds = time.perf_counter() - start
    torch.manual_seed(seed)
    student = build_student()
    start = time.perf_counter()
    with _bar(budget.student_iterations, "student ODE regression") as progress:
        losses = train_ode_student(student, pairs, teacher.text_encoder, budget.student_iterations,
                                   batch_size=budget.student_batch, lr=budget.student_lr, seed=seed,
                                   progress=progress)
    tail = losses[-min(50, len(losses)):]
    summary = {
        "trajectories": len(pairs), "ode_euler_steps": budget.ode_steps, "ode_seconds": round(ode_seconds, 1),
        "iterations": budget.student_iterations, "batch_size": budget.student_batch, "lr": budget.student_lr,
        "final_loss": sum(tail) / len(tail), "train_seconds": round(time.perf_counter() - start, 1),
        "parameters": sum(p.numel() for p in student.parameters()), "config": dict(toy.STUDENT_CONFIG),
        "chunk_frames": toy.CHUNK_FRAMES,
    }
    return student, summary


def save_student(student: Any, path: str) -> None:
    """The student's transformer state dict as float16 safetensors (what ``CausalWanDenoiser(pretrained=...)`` reads
    together with :data:`~streamr1.toy.STUDENT_CONFIG`)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().half().contiguous() for k, v in student.transformer.state_dict().items()}
    _atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": "streamr1.toy.student"}))


def make_reward(budget: Budget, seed: int = 0) -> tuple[Any, dict[str, Any]]:
    """Stage 2: train the toy reward and measure its Spearman correlation with the oracle (held-out renders)."""
    from streamr1.toy.reward import TOY_REWARD_CONFIG, reward_oracle_spearman, toy_reward, train_toy_reward

    reward = toy_reward(seed=seed)
    start = time.perf_counter()
    with _bar(budget.reward_iterations, "reward training") as progress:
        history = train_toy_reward(reward, budget.reward_iterations, batch_size=budget.reward_batch,
                                   lr=budget.reward_lr, pool_size=budget.reward_pool, seed=seed, progress=progress)
    train_seconds = time.perf_counter() - start
    rho = reward_oracle_spearman(reward, num=budget.spearman_renders)
    rho_aug = reward_oracle_spearman(reward, num=budget.spearman_renders, augment=True, seed=20_000)
    summary = {
        "config": TOY_REWARD_CONFIG, "parameters": sum(p.numel() for p in reward.parameters()),
        "iterations": budget.reward_iterations, "batch_size": budget.reward_batch, "pool": budget.reward_pool,
        "lr": budget.reward_lr, "train_seconds": round(train_seconds, 1),
        "final_loss": history[-1]["loss"] if history else None,
        "spearman": rho, "spearman_student_like": rho_aug,
    }
    return reward, summary


def calibrate_reward(reward: Any, student: Any, budget: Budget, seed: int = 0) -> tuple[dict[str, Any], dict]:
    """Stage 3: the reward's per-axis statistics over the student's rollouts, and the student's oracle numbers."""
    from streamr1.flow import warped_steps
    from streamr1.rewards.normalization import calibrate_from_videos
    from streamr1.toy.evaluation import eval_prompts, evaluate_videos, sample_student
    from streamr1.toy.text import ToyTextEncoder
    from streamr1.toy.world import ToyWorld

    prompts = eval_prompts(budget.calibration_repeats)
    video = sample_student(student, ToyTextEncoder(dim=toy.TEXT_DIM), prompts, toy.LATENT_SHAPE,
                           warped_steps(toy.DENOISING_STEPS, toy.SHIFT), seed=seed + 1)
    stats = calibrate_from_videos(reward, zip(video, prompts, strict=True), batch_size=64)
    numbers = evaluate_videos(video, prompts, ToyWorld(**toy.WORLD), reward)
    return stats, numbers


def make_assets(output: str, budget: Budget, seed: int = 0, stages: Sequence[str] = ("student", "reward")) -> dict:
    """Run the stages and write every file into ``output``; returns the manifest (also ``toy_assets.json``)."""
    from streamr1.toy.reward import save_compact, toy_reward

    os.makedirs(output, exist_ok=True)
    manifest_path = os.path.join(output, MANIFEST_FILE)
    manifest: dict[str, Any] = {}
    if os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    manifest.update({"command": "python -m streamr1.toy.assets", "seed": seed, "budget": asdict(budget),
                     "torch": torch.__version__, "threads": torch.get_num_threads()})
    start = time.perf_counter()
    student_path, reward_path = os.path.join(output, STUDENT_FILE), os.path.join(output, REWARD_FILE)
    if "student" in stages:
        student, manifest["student"] = make_student(budget, seed)
        save_student(student, student_path)
    else:
        student = build_student(student_path)
    if "reward" in stages:
        reward, manifest["reward"] = make_reward(budget, seed)
        _atomic_write(reward_path, lambda tmp: save_compact(reward, tmp))
        _write_json(os.path.join(output, SPEARMAN_FILE),
                    {"spearman_reward_vs_oracle": manifest["reward"]["spearman"],
                     "spearman_student_like_renders": manifest["reward"]["spearman_student_like"],
                     "renders": budget.spearman_renders,
                     "note": "held-out renders, all quality modes uniformly; reward raw score vs oracle score"})
    else:
        reward = toy_reward(reward_path)
    stats, numbers = calibrate_reward(reward, student, budget, seed)
    _write_json(os.path.join(output, STATS_FILE), stats)
    manifest["initial_student"] = numbers
    manifest["seconds"] = round(time.perf_counter() - start, 1)
    _write_json(manifest_path, manifest)
    return manifest


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m streamr1.toy.assets", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="src/streamr1/assets", help="folder to write the files into")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="full", help="work per stage (tiny: tests)")
    parser.add_argument("--stages", nargs="+", choices=["student", "reward"], default=["student", "reward"],
                        help="stages to (re)make; the others are read from --output (statistics are always redone)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--student-iterations", type=int, help="override the budget's ODE-regression steps")
    parser.add_argument("--reward-iterations", type=int, help="override the budget's reward training steps")
    args = parser.parse_args(argv)
    budget = replace(BUDGETS[args.budget])  # a copy: the overrides must not change the module's presets
    if args.student_iterations is not None:
        budget.student_iterations = args.student_iterations
    if args.reward_iterations is not None:
        budget.reward_iterations = args.reward_iterations
    manifest = make_assets(args.output, budget, args.seed, args.stages)
    if "reward" in manifest:
        rho = manifest["reward"]["spearman"]
        print("[streamr1] reward vs oracle, Spearman on held-out renders: "
              + ", ".join(f"{a} {v:+.3f}" for a, v in rho.items()))
    print(f"[streamr1] initial student: {json.dumps(manifest['initial_student'])}")
    print(f"[streamr1] wrote {args.output} in {manifest['seconds']:.0f} s")
    return manifest


if __name__ == "__main__":  # pragma: no cover
    main()
