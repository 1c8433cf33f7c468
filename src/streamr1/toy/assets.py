"""``python -m streamr1.toy.assets --output src/streamr1/assets --budget long`` (``make toy-assets``): the toy world's
shipped files.

The toy recipe (``configs/quickstart.yaml``) has the real recipe's stages (Stream-R1 and Self-Forcing start from
Wan2.1-T2V-1.3B; issue 13), each made here by the project's own code on a CPU and written with the command that
remakes it (``toy_assets.json``):

1. **Pretrained video model** (``--stages pretrained``, :mod:`streamr1.toy.pretrain`): a tiny bidirectional Wan
   (:data:`~streamr1.toy.STUDENT_CONFIG`) trained by flow matching on the world's videos with 10% caption dropout
   (classifier-free guidance) and half of the samples at diffusion-forcing noise levels: the analogue of
   Wan2.1-1.3B. ``toy_pretrained.safetensors``; the DMD critic starts from it
   (``critic: {init_args: {pretrained: pkg://streamr1/assets/toy_pretrained.safetensors}}``).
2. **Causal student** (``--stages student``): the pretrained weights loaded into the block-causal student, then
   (a) teacher-forcing flow matching on the world's videos (Causal Forcing's autoregressive-diffusion stage,
   :func:`~streamr1.toy.pretrain.train_causal_flow`), then (b) Self-Forcing's ODE regression on the exact
   :class:`~streamr1.toy.teacher.MixtureTeacher`'s guided ODE, integrated chunk by chunk on clean context
   (:mod:`streamr1.toy.ode`; the causal variant: the targets are what a causal generator can reach). Either part
   can be switched off with a zero budget. ``toy_student.safetensors``.
3. **Reward** (``--stages reward``, :mod:`streamr1.toy.reward`): a tiny open_clip CLIP and its VQ/MQ/TA heads,
   trained on fresh renders of the world's captions (every quality mode, ghosts) and on the initial student's own
   rollouts, all labelled by the oracle; ``toy_reward.pt`` and ``toy_reward_spearman.json`` (Spearman with the
   oracle per axis on held-out renders and on held-out student rollouts).
4. **Reward statistics** (SPEC.md §4.1): the reward's per-axis mean and std over rollouts of the initial student,
   ``toy_reward_stats.json`` (and the oracle's, ``toy_oracle_stats.json``, for the oracle upper-bound stack); and
   ``toy_assets.json``: the command, budgets, timings, the initial student's init check
   (:mod:`streamr1.toy.init_check`).

Budgets are arguments (``--budget tiny`` runs every stage in seconds, for tests). Files are float16 where they hold
weights. Progress bars (tqdm) on every long step. ``--device cuda`` trains stages 1 and 2 on a GPU (every random draw
still comes from seeded CPU generators; the teacher's ODE, the reward and the statistics stay on the CPU), for budgets
beyond the CPU hour (``--pretrain-iterations``, ``--causal-iterations``, ``--student-iterations``).
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

PRETRAINED_FILE = "toy_pretrained.safetensors"
STUDENT_FILE = "toy_student.safetensors"
REWARD_FILE = "toy_reward.pt"
STATS_FILE = "toy_reward_stats.json"
ORACLE_STATS_FILE = "toy_oracle_stats.json"
SPEARMAN_FILE = "toy_reward_spearman.json"
MANIFEST_FILE = "toy_assets.json"
STAGES: tuple[str, ...] = ("pretrained", "student", "reward")
OVERRIDES: tuple[str, ...] = ("pretrain_iterations", "causal_iterations", "student_iterations", "reward_iterations",
                              "ode_per_prompt", "calibration_repeats")
"""Budget fields the command line can override (``--pretrain-iterations`` ...); the manifest's command names them."""


@dataclass
class Budget:
    """How much work each stage does.

    Attributes:
        pretrain_iterations, pretrain_batch, pretrain_lr: the bidirectional flow-matching pretraining.
        causal_iterations, causal_lr: the causal student's teacher-forcing flow matching (0: skip).
        ode_per_prompt: teacher ODE trajectories per world caption; ``ode_steps``: Euler steps of the first chunk.
        student_iterations: ODE-regression optimizer steps (0: skip); ``student_batch``: samples a step (also the
            causal stage's batch); ``student_lr``.
        reward_iterations: reward optimizer steps; ``reward_batch``: videos a step; ``reward_pool``: labelled
            renders drawn up front; ``reward_rollouts``: student rollouts added to the pool; ``reward_lr``.
        spearman_renders: held-out renders (and held-out rollouts) for the reward-oracle Spearman correlation.
        calibration_repeats: student rollouts per caption for the reward statistics and the init check.
    """

    pretrain_iterations: int = 300
    pretrain_batch: int = 16
    pretrain_lr: float = 1.5e-3
    causal_iterations: int = 80
    causal_lr: float = 5e-4
    ode_per_prompt: int = 8
    ode_steps: int = 16
    student_iterations: int = 80
    student_batch: int = 16
    student_lr: float = 5e-4
    reward_iterations: int = 200
    reward_batch: int = 32
    reward_pool: int = 768
    reward_rollouts: int = 128
    reward_lr: float = 2e-3
    spearman_renders: int = 128
    calibration_repeats: int = 4


BUDGETS: dict[str, Budget] = {
    "default": Budget(),
    "long": Budget(pretrain_iterations=1500, causal_iterations=600, ode_per_prompt=24, ode_steps=32,
                   student_iterations=600, reward_iterations=1200, reward_pool=3072, reward_rollouts=1024,
                   spearman_renders=512, calibration_repeats=32),
    "tiny": Budget(pretrain_iterations=2, pretrain_batch=4, causal_iterations=2, ode_per_prompt=1, ode_steps=4,
                   student_iterations=2, student_batch=4, reward_iterations=2, reward_batch=4, reward_pool=16,
                   reward_rollouts=8, spearman_renders=16, calibration_repeats=1),
}
"""``long``: the shipped files (``make toy-assets``; 42-48 minutes on 2 quiet cores, see ``toy_assets.json``);
``default``: about a tenth of its training steps (a quick, much weaker student: every sample a washed-out average);
``tiny``: seconds, for tests."""


@contextmanager
def _bar(total: int, desc: str) -> Iterator[Callable[[int, dict[str, float]], None]]:
    """A tqdm bar, handed out as a ``progress(advance, postfix)`` callback."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, dynamic_ncols=True, leave=True, mininterval=5.0)

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


def build_world(world: dict[str, Any] | None = None) -> Any:
    """The :class:`~streamr1.toy.world.ToyWorld` of ``world`` (keyword arguments; the recipe's,
    :data:`~streamr1.toy.WORLD`, by default)."""
    from streamr1.toy.world import ToyWorld

    return ToyWorld(**(toy.WORLD if world is None else world))


def build_teacher(world: dict[str, Any] | None = None) -> Any:
    """The exact teacher of ``world`` (the recipe's by default) with its text encoder."""
    from streamr1.toy.teacher import MixtureTeacher
    from streamr1.toy.text import ToyTextEncoder

    return MixtureTeacher(world=build_world(world), text_encoder=ToyTextEncoder(dim=toy.TEXT_DIM))


def build_student(path: str | None = None) -> Any:
    """The recipe's causal student (:data:`~streamr1.toy.STUDENT_CONFIG`), from ``path`` or random."""
    from streamr1.models import CausalWanDenoiser

    return CausalWanDenoiser(pretrained=path, config=dict(toy.STUDENT_CONFIG), chunk_frames=toy.CHUNK_FRAMES)


def build_pretrained(path: str | None = None) -> Any:
    """The recipe's bidirectional denoiser (same architecture; the critic), from ``path`` or random."""
    from streamr1.models import WanDenoiser

    return WanDenoiser(pretrained=path, config=dict(toy.STUDENT_CONFIG))


def _levels() -> list[float]:
    from streamr1.flow import warped_steps

    return warped_steps(toy.DENOISING_STEPS, toy.SHIFT)


def make_pretrained(budget: Budget, seed: int = 0, device: str = "cpu",
                    world: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Stage 1: the bidirectional flow-matching "pretrained video model" on the world's videos, trained on
    ``device`` and returned on the CPU."""
    from streamr1.toy.pretrain import pretrain_denoiser
    from streamr1.toy.text import ToyTextEncoder

    world = build_world(world)
    cond = ToyTextEncoder(dim=toy.TEXT_DIM).encode(world.captions).float()
    torch.manual_seed(seed)
    model = build_pretrained().to(device)
    start = time.perf_counter()
    with _bar(budget.pretrain_iterations, "pretraining (bidirectional flow matching)") as progress:
        losses = pretrain_denoiser(model, world.videos, cond, _levels(), budget.pretrain_iterations,
                                   batch_size=budget.pretrain_batch, lr=budget.pretrain_lr,
                                   chunk_frames=toy.CHUNK_FRAMES, seed=seed, progress=progress)
    model.cpu()
    tail = losses[-min(50, len(losses)):]
    return model, {"iterations": budget.pretrain_iterations, "batch_size": budget.pretrain_batch,
                   "lr": budget.pretrain_lr, "caption_dropout": 0.1, "per_chunk_fraction": 0.5,
                   "final_loss": sum(tail) / len(tail), "train_seconds": round(time.perf_counter() - start, 1),
                   "videos": len(world), "parameters": sum(p.numel() for p in model.parameters())}


def make_student(budget: Budget, pretrained_path: str | None, seed: int = 0, device: str = "cpu",
                 world: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Stage 2: the causal student from the pretrained weights, teacher-forcing flow matching, then ODE regression
    on the exact teacher's causal guided ODE (the student trains on ``device``; the teacher's ODE runs on the CPU).
    Returns the student, on the CPU, and a summary."""
    from streamr1.toy.ode import make_ode_pairs, train_ode_student
    from streamr1.toy.pretrain import train_causal_flow

    teacher = build_teacher(world)
    world = teacher.world
    torch.manual_seed(seed)
    student = build_student(pretrained_path).to(device)
    summary: dict[str, Any] = {"init": "pretrained" if pretrained_path else "random", "chunk_frames": toy.CHUNK_FRAMES,
                               "config": dict(toy.STUDENT_CONFIG),
                               "parameters": sum(p.numel() for p in student.parameters())}
    if budget.causal_iterations > 0:
        cond = teacher.text_encoder.encode(world.captions).float()
        start = time.perf_counter()
        with _bar(budget.causal_iterations, "student teacher-forcing flow matching") as progress:
            losses = train_causal_flow(student, world.videos, cond, _levels(), budget.causal_iterations,
                                       batch_size=budget.student_batch, lr=budget.causal_lr, seed=seed,
                                       progress=progress)
        tail = losses[-min(50, len(losses)):]
        summary["causal_flow"] = {"iterations": budget.causal_iterations, "lr": budget.causal_lr,
                                  "final_loss": sum(tail) / len(tail),
                                  "train_seconds": round(time.perf_counter() - start, 1)}
    if budget.student_iterations > 0:
        prompts = [p for p in world.train_prompts() for _ in range(budget.ode_per_prompt)]
        start = time.perf_counter()
        with _bar(len(prompts), "teacher ODE trajectories") as progress:
            pairs = make_ode_pairs(teacher, teacher.text_encoder, prompts, toy.LATENT_SHAPE,
                                   guidance_scale=toy.GUIDANCE_SCALE, shift=toy.SHIFT, num_steps=budget.ode_steps,
                                   denoising_steps=toy.DENOISING_STEPS, batch_size=96, seed=seed,
                                   causal_chunk_frames=toy.CHUNK_FRAMES, progress=progress)
        ode_seconds = time.perf_counter() - start
        start = time.perf_counter()
        with _bar(budget.student_iterations, "student ODE regression") as progress:
            losses = train_ode_student(student, pairs, teacher.text_encoder, budget.student_iterations,
                                       batch_size=budget.student_batch, lr=budget.student_lr, seed=seed,
                                       warmup=min(50, max(1, budget.student_iterations // 10)), progress=progress)
        tail = losses[-min(50, len(losses)):]
        summary["ode_regression"] = {
            "trajectories": len(pairs), "ode_euler_steps": budget.ode_steps, "ode_seconds": round(ode_seconds, 1),
            "iterations": budget.student_iterations, "batch_size": budget.student_batch, "lr": budget.student_lr,
            "final_loss": sum(tail) / len(tail), "train_seconds": round(time.perf_counter() - start, 1)}
    student.cpu().eval()
    return student, summary


def save_transformer(model: Any, path: str, fmt: str) -> None:
    """A Wan model's transformer state dict as float16 safetensors (what ``CausalWanDenoiser(pretrained=...)`` and
    ``WanDenoiser(pretrained=...)`` read together with :data:`~streamr1.toy.STUDENT_CONFIG`)."""
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().half().contiguous() for k, v in model.transformer.state_dict().items()}
    _atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"format": fmt}))


def save_student(student: Any, path: str) -> None:
    """:func:`save_transformer` for the student."""
    save_transformer(student, path, "streamr1.toy.student")


def sample_rollouts(student: Any, repeats: int, seed: int,
                    world: dict[str, Any] | None = None) -> tuple[torch.Tensor, list[str]]:
    """``repeats`` few-step samples of ``student`` per caption of ``world`` (the recipe's by default), from noise
    seeded with ``seed``."""
    from streamr1.toy.evaluation import eval_prompts, sample_student
    from streamr1.toy.text import ToyTextEncoder

    prompts = eval_prompts(repeats, build_world(world))
    video = sample_student(student, ToyTextEncoder(dim=toy.TEXT_DIM), prompts, toy.LATENT_SHAPE, _levels(),
                           seed=seed)
    return video, prompts


def make_reward(budget: Budget, student: Any, seed: int = 0,
                world: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
    """Stage 3: train the toy reward on the world's renders and the student's rollouts; measure its Spearman
    correlation with the oracle on held-out renders and held-out rollouts."""
    from streamr1.toy.reward import reward_oracle_spearman, rollout_examples, toy_reward, train_toy_reward

    spec, world = world, build_world(world)
    repeats = max(1, budget.reward_rollouts // len(world.train_prompts()))
    video, prompts = sample_rollouts(student, repeats, seed=seed + 77, world=spec)
    rollouts = rollout_examples(video, prompts)
    held_video, held_prompts = sample_rollouts(student, max(1, budget.spearman_renders // len(world.train_prompts())),
                                               seed=seed + 20_077, world=spec)
    reward = toy_reward(seed=seed, size=world.size)
    start = time.perf_counter()
    with _bar(budget.reward_iterations, "reward training") as progress:
        history = train_toy_reward(reward, budget.reward_iterations, batch_size=budget.reward_batch,
                                   lr=budget.reward_lr, pool_size=budget.reward_pool, seed=seed, world=world,
                                   extra=rollouts, progress=progress)
    train_seconds = time.perf_counter() - start
    rho = reward_oracle_spearman(reward, num=budget.spearman_renders, world=world)
    rho_rollouts = reward_oracle_spearman(reward, examples=rollout_examples(held_video, held_prompts))
    summary = {
        "config": reward.config().get("model_config"), "parameters": sum(p.numel() for p in reward.parameters()),
        "iterations": budget.reward_iterations, "batch_size": budget.reward_batch, "pool": budget.reward_pool,
        "rollouts": int(video.shape[0]), "lr": budget.reward_lr, "train_seconds": round(train_seconds, 1),
        "final_loss": history[-1]["loss"] if history else None,
        "spearman": rho, "spearman_student_rollouts": rho_rollouts, "held_out_rollouts": int(held_video.shape[0]),
    }
    return reward, summary


def calibrate_reward(reward: Any, student: Any, budget: Budget, seed: int = 0,
                     world: dict[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any], dict]:
    """Stage 4: the per-axis statistics of the reward and of the oracle-as-reward
    (:class:`~streamr1.toy.oracle_reward.OracleReward`) over the student's rollouts, and the student's init check."""
    from streamr1.rewards.calibration import calibrate_from_videos
    from streamr1.toy.init_check import check_student
    from streamr1.toy.oracle_reward import OracleReward
    from streamr1.toy.text import ToyTextEncoder

    video, prompts = sample_rollouts(student, budget.calibration_repeats, seed=seed + 1, world=world)
    stats = calibrate_from_videos(reward, zip(video, prompts, strict=True), batch_size=64)
    oracle_stats = calibrate_from_videos(OracleReward(), zip(video, prompts, strict=True), batch_size=64)
    numbers = check_student(student, build_world(world), ToyTextEncoder(dim=toy.TEXT_DIM), _levels(),
                            repeats=budget.calibration_repeats, seed=seed)
    return stats, oracle_stats, numbers


def _override_flags(budget: Budget, budget_name: str) -> str:
    """`` --name value`` for every :data:`OVERRIDES` field where ``budget`` differs from its preset."""
    preset = BUDGETS.get(budget_name)
    return "".join(f" --{name.replace('_', '-')} {getattr(budget, name)}" for name in OVERRIDES
                   if preset is not None and getattr(budget, name) != getattr(preset, name))


def make_assets(output: str, budget: Budget, seed: int = 0, stages: Sequence[str] = STAGES,
                budget_name: str = "default", device: str = "cpu", world: dict[str, Any] | None = None) -> dict:
    """Run the stages and write every file into ``output``; returns the manifest (also ``toy_assets.json``).

    Stages not listed are read from ``output`` (a later stage uses an earlier one's file; they must have been made on
    the same world). ``device``: where stages 1 and 2 train (a GPU's numerics differ from the CPU's, so the manifest's
    command names it). ``world``: :class:`~streamr1.toy.world.ToyWorld` arguments (the recipe's,
    :data:`~streamr1.toy.WORLD`, by default; the command names the others with :func:`~streamr1.toy.world_options.
    world_flags`)."""
    from streamr1.toy.reward import save_compact, toy_reward
    from streamr1.toy.world_options import world_flags

    world = dict(toy.WORLD if world is None else world)

    unknown = set(stages) - set(STAGES)
    if unknown:
        raise ValueError(f"Unknown stages {sorted(unknown)}: choose among {STAGES}.")
    os.makedirs(output, exist_ok=True)
    manifest_path = os.path.join(output, MANIFEST_FILE)
    manifest: dict[str, Any] = {}
    if os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    if tuple(stages) != STAGES and manifest.get("world", world) != world:
        raise ValueError(f"{manifest_path} says its files were made on the world {manifest['world']}, not on {world}: "
                         f"remake every stage (leave --stages out) or pass that world's options.")
    manifest.pop("student_seconds", None)
    manifest.update({"command": f"python -m streamr1.toy.assets --output {output}"
                     + ("" if tuple(stages) == STAGES else " --stages " + " ".join(stages))
                     + ("" if budget_name == "default" else f" --budget {budget_name}")
                     + _override_flags(budget, budget_name) + world_flags(world)
                     + ("" if device == "cpu" else f" --device {device}"),
                     "seed": seed, "budget": asdict(budget), "world": world,
                     "torch": torch.__version__, "threads": torch.get_num_threads(), "device": device})
    start = time.perf_counter()
    paths = {name: os.path.join(output, f) for name, f in
             (("pretrained", PRETRAINED_FILE), ("student", STUDENT_FILE), ("reward", REWARD_FILE))}
    if "pretrained" in stages:
        model, manifest["pretrained"] = make_pretrained(budget, seed, device, world)
        save_transformer(model, paths["pretrained"], "streamr1.toy.pretrained")
    if "student" in stages:
        init = paths["pretrained"] if os.path.isfile(paths["pretrained"]) else None
        student, manifest["student"] = make_student(budget, init, seed, device, world)
        save_student(student, paths["student"])
    else:
        student = build_student(paths["student"])
    if "reward" in stages:
        reward, manifest["reward"] = make_reward(budget, student, seed, world)
        _atomic_write(paths["reward"], lambda tmp: save_compact(reward, tmp))
        _write_json(os.path.join(output, SPEARMAN_FILE),
                    {"spearman_reward_vs_oracle": manifest["reward"]["spearman"],
                     "spearman_student_rollouts": manifest["reward"]["spearman_student_rollouts"],
                     "renders": budget.spearman_renders,
                     "rollouts": manifest["reward"]["held_out_rollouts"],
                     "note": "reward raw score vs oracle score; held-out renders of the world's captions (all "
                             "quality modes uniformly) and held-out few-step samples of the shipped initial student"})
    else:
        reward = toy_reward(paths["reward"])
    stats, oracle_stats, numbers = calibrate_reward(reward, student, budget, seed, world)
    _write_json(os.path.join(output, STATS_FILE), stats)
    _write_json(os.path.join(output, ORACLE_STATS_FILE), oracle_stats)
    manifest["initial_student"] = numbers
    manifest["seconds"] = round(time.perf_counter() - start, 1)
    _write_json(manifest_path, manifest)
    return manifest


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(prog="python -m streamr1.toy.assets", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="src/streamr1/assets", help="folder to write the files into")
    parser.add_argument("--budget", choices=sorted(BUDGETS), default="default", help="work per stage (tiny: tests)")
    parser.add_argument("--stages", nargs="+", choices=list(STAGES), default=list(STAGES),
                        help="stages to (re)make; the others are read from --output (statistics are always redone)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="where the pretraining and the student's stages train (cuda, "
                        "cuda:1, ...); everything else runs on the CPU")
    parser.add_argument("--pretrain-iterations", type=int, help="override the budget's pretraining steps")
    parser.add_argument("--causal-iterations", type=int, help="override the budget's teacher-forcing steps")
    parser.add_argument("--student-iterations", type=int, help="override the budget's ODE-regression steps")
    parser.add_argument("--reward-iterations", type=int, help="override the budget's reward training steps")
    parser.add_argument("--ode-per-prompt", type=int, help="override the budget's teacher ODE trajectories a caption")
    parser.add_argument("--calibration-repeats", type=int,
                        help="override the budget's rollouts a caption for the statistics and the init check (raise it "
                             "on a world of fewer captions)")
    from streamr1.toy.world_options import add_world_arguments, world_from_arguments

    add_world_arguments(parser)
    args = parser.parse_args(argv)
    if args.device != "cpu":
        try:
            torch.empty(0, device=args.device)
        except (RuntimeError, AssertionError) as err:
            parser.error(f"--device {args.device} is not usable here ({err}); use --device cpu or a device this "
                         "machine has.")
    budget = replace(BUDGETS[args.budget])  # a copy: the overrides must not change the module's presets
    for name in OVERRIDES:
        if getattr(args, name) is not None:
            setattr(budget, name, getattr(args, name))
    manifest = make_assets(args.output, budget, args.seed, args.stages, args.budget, args.device,
                           world_from_arguments(args))
    if "reward" in args.stages:
        for key in ("spearman", "spearman_student_rollouts"):
            rho = manifest["reward"][key]
            print(f"[streamr1] reward vs oracle, {key}: " + ", ".join(f"{a} {v:+.3f}" for a, v in rho.items()))
    from streamr1.toy.init_check import format_report

    print("[streamr1] initial student:\n" + format_report(manifest["initial_student"]))
    print(f"[streamr1] wrote {args.output} in {manifest['seconds']:.0f} s")
    return manifest


if __name__ == "__main__":  # pragma: no cover
    main()
