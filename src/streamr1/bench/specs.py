"""What the benchmark builds: one size a recipe of ``configs/``, built through the ``streamr1`` CLI.

A size names a recipe file and, where the recipe loads weights that are not here (the Wan recipe), the command-line
overrides that give the same classes random weights, exactly as a user would type them after ``streamr1 fit``.
:func:`build` hands those arguments to :func:`streamr1.cli.main` with ``run=False``: the trainer, the module and the
datamodule are the ones ``streamr1 fit`` would build from the same files. Nothing is copied from the files.

Config files are found under ``--configs-dir`` (default: the current directory, the repository root where
``make bench`` runs): the recipes and stacks are files users edit and layer, not package data, so the benchmark
reads the same ones. Their weights and statistics (``pkg://streamr1/assets/...``) come from the installed package.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import torch

STREAM_R1_STACK = "callbacks/stream_r1.yaml"
"""The Stream-R1 callback stack (SPEC §4)."""
TOY_REWARD = "configs/rewards/toy.yaml"
"""The toy world's reward fragment, layered after the stack (stacks name no reward)."""
PROMPTS = ("a red circle moving left", "a blue square moving up", "a green triangle moving right",
           "a yellow star moving down")
"""Prompts of the sizes whose recipe reads a prompt file that is not here (the Wan recipe)."""


@dataclass(frozen=True)
class Size:
    """One benchmark size: a recipe and how to build it here.

    Attributes:
        name: what ``--size`` takes.
        recipe: the recipe file, relative to the configs directory.
        description: one line for the table's header.
        stream_r1: whether the turns section also runs the Stream-R1 student turn (the recipe plus
            :data:`STREAM_R1_STACK` and :data:`TOY_REWARD`). Off for Wan shapes: the toy reward does
            not fit a Wan latent, and the VideoReward model needs its weights.
        random_wan: replace every pretrained load of the recipe (student, teacher, critic, UMT5, VAE, prompt file)
            by the same classes with random weights at the student's width (the teacher is then a 1.3B model, not
            the recipe's 14B: a lower bound on its cost).
        num_layers: transformer layers of student, teacher and critic (``None``: the recipe's).
        latent_shape: ``[F, C, H, W]`` override (``None``: the recipe's).
        precision: ``trainer.precision`` override (``None``: the recipe's).
    """

    name: str
    recipe: str
    description: str
    stream_r1: bool = True
    random_wan: bool = False
    num_layers: int | None = None
    latent_shape: tuple[int, int, int, int] | None = None
    precision: str | None = None


SIZES: dict[str, Size] = {s.name: s for s in (
    Size("quickstart", "configs/quickstart.yaml",
         "configs/quickstart.yaml: the toy world's recipe (its student, critic and exact MixtureTeacher)"),
    Size("tiny", "configs/tiny_random.yaml", "configs/tiny_random.yaml: the smallest random recipe (tests; overhead "
         "dominates)"),
    Size("wan1.3b", "configs/wan2.1_t2v.yaml",
         "configs/wan2.1_t2v.yaml at Wan2.1-T2V-1.3B size (the recipe's student), random weights (teacher 1.3B, "
         "not 14B), the recipe's latent and precision; needs a GPU", stream_r1=False, random_wan=True),
    Size("wan-reduced", "configs/wan2.1_t2v.yaml",
         "configs/wan2.1_t2v.yaml at the 1.3B widths (12 heads x 128, FFN 8960, text 4096 x 512) with 1 layer, "
         "6x16x8x8 latent (21 frames of 64x64), random weights, float32: the Wan path on a CPU",
         stream_r1=False, random_wan=True, num_layers=1, latent_shape=(6, 16, 8, 8), precision="32-true"),
)}
"""The sizes, the default first."""


def find_config(configs_dir: str, relative: str) -> str:
    """``configs_dir/relative``, or a clear error saying where the benchmark looked and how to point it elsewhere."""
    path = os.path.join(configs_dir, relative)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{relative} not found under {os.path.abspath(configs_dir)!r}: run the benchmark from the repository "
            "root (as `make bench` does) or pass --configs-dir <the folder holding configs/ and callbacks/>.")
    return path


def stream_r1_configs(configs_dir: str) -> list[str]:
    """The files layered after a recipe for the Stream-R1 turn: the stack, then the reward fragment."""
    return [find_config(configs_dir, STREAM_R1_STACK), find_config(configs_dir, TOY_REWARD)]


def _recipe_yaml(path: str) -> dict[str, Any]:
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def size_overrides(size: Size, recipe_path: str) -> list[str]:
    """The command-line overrides that make ``size`` out of its recipe (random weights, layers, latent)."""
    args: list[str] = []
    if size.random_wan or size.num_layers is not None:
        student = _recipe_yaml(recipe_path)["model"]["student"]["init_args"]
        config = dict(student["config"])  # the recipe's own student architecture, read from the file
        if size.num_layers is not None:
            config["num_layers"] = size.num_layers
        wan = json.dumps(config)
        args += ["--model.student.init_args.config", wan]
        if size.random_wan:
            args += ["--model.student.init_args.pretrained", "null"]
            for name in ("teacher", "critic"):
                args += [f"--model.{name}.init_args.pretrained", "null", f"--model.{name}.init_args.subfolder", "null",
                         f"--model.{name}.init_args.config", wan]
            args += ["--model.text_encoder", "streamr1.models.HashTextEncoder",
                     "--model.text_encoder.init_args.dim", str(config["text_dim"]),
                     "--model.text_encoder.init_args.length", "512",
                     "--model.vae.init_args.pretrained", "null", "--model.vae.init_args.config", "{}",
                     "--data.init_args.prompts_file", "null", "--data.init_args.prompts", json.dumps(list(PROMPTS))]
        else:
            for name in ("teacher", "critic"):
                args += [f"--model.{name}.init_args.config", wan]
    if size.latent_shape is not None:
        args += ["--model.latent_shape", json.dumps(list(size.latent_shape))]
    if size.precision is not None:
        args += ["--trainer.precision", size.precision]
    return args


_SCRATCH: list[tempfile.TemporaryDirectory] = []


def _scratch_dir() -> str:
    """One temporary folder a process for the trainers' ``default_root_dir``, removed when the process exits."""
    if not _SCRATCH:
        _SCRATCH.append(tempfile.TemporaryDirectory(prefix="streamr1-bench-"))
    return _SCRATCH[0].name


def cli_args(size: Size, configs_dir: str, device: torch.device, layers: tuple[str, ...] = (),
             overrides: tuple[str, ...] = ()) -> list[str]:
    """``streamr1 fit`` arguments (without the subcommand) of ``size`` on ``device``, with ``layers`` (more
    ``--config`` files) and ``overrides`` after the size's own. No logger, no checkpoint (the turns section's fit
    stops before its first step), no progress bar, files in a temporary folder: the benchmark writes nothing into
    the repository."""
    recipe = find_config(configs_dir, size.recipe)
    args = ["--config", recipe]
    for layer in layers:
        args += ["--config", layer]
    args += size_overrides(size, recipe)
    args += ["--trainer.accelerator", "gpu" if device.type == "cuda" else "cpu", "--trainer.devices", "1",
             "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
             "--trainer.enable_progress_bar", "false",
             "--trainer.enable_model_summary", "false", "--trainer.num_sanity_val_steps", "0",
             "--trainer.default_root_dir", _scratch_dir()]
    return args + list(overrides)


_BUILT: dict[tuple[Any, ...], Any] = {}


def build(size: Size, configs_dir: str, device: torch.device, layers: tuple[str, ...] = (),
          overrides: tuple[str, ...] = (), fresh: bool = False) -> Any:
    """The :class:`~streamr1.cli.StreamR1CLI` of ``size`` (trainer, model, datamodule), built once a process for the
    same arguments unless ``fresh``. Sections that change what they are given (a fit) ask for a fresh one."""
    from streamr1.cli import main

    key = (size, os.path.abspath(configs_dir), str(device), layers, overrides)
    if fresh or key not in _BUILT:
        cli = main(cli_args(size, configs_dir, device, layers, overrides), run=False)
        if fresh:
            return cli
        _BUILT[key] = cli
    return _BUILT[key]


@dataclass
class BenchContext:
    """What every section gets.

    Attributes:
        size: the models (:data:`SIZES`).
        configs_dir: the folder holding ``configs/`` and ``callbacks/``.
        device: where to run.
        repeats: timed rounds of every interleaved measurement (after one warm-up round).
        chunks: video lengths, in chunks, of the KV cache section.
        window_chunks: the KV cache section's local attention window, in chunks (cache and current chunk).
        max_recompute_mask_gib: the KV cache section skips the recompute baseline beyond this dense-mask size.
        seed: seeds the noise of every measurement.
    """

    size: Size
    configs_dir: str = "."
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    repeats: int = 5
    chunks: tuple[int, ...] = (4, 8, 16)
    window_chunks: int = 3
    max_recompute_mask_gib: float = 8.0
    seed: int = 0

    def build(self, layers: tuple[str, ...] = (), overrides: tuple[str, ...] = (), fresh: bool = False) -> Any:
        """:func:`build` for this context's size, configs and device."""
        return build(self.size, self.configs_dir, self.device, layers, overrides, fresh)

    def prompts(self, n: int) -> list[str]:
        """``n`` prompts, cycling through :data:`PROMPTS` (captions of the toy world)."""
        return [PROMPTS[i % len(PROMPTS)] for i in range(n)]
