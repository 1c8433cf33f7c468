"""Speed benchmark: turn times and memory, the reward pass, KV cache against recomputation, throughput.

    python -m streamr1.bench.speed --threads 1            # CPU, the quickstart models (default; `make bench`)
    python -m streamr1.bench.speed --size tiny            # exactly the models of configs/tiny_random.yaml
    python -m streamr1.bench.speed --device cuda --size wan1.3b --json bench.json   # Wan2.1-1.3B shapes, bf16

Prints one markdown table; ``--json`` also saves it. The numbers are measurements, never pass/fail: where the
project states a target (reward and KV cache sections) the table says whether this run met it. Every figure comes
from one timed run after one warm-up run of the same work (no best-of-N): expect run-to-run noise of several
percent on a shared CPU (``--threads 1`` there).

Sizes (random weights for student, teacher and critic; nothing is loaded but the reward model of the ``reward``
section):

* ``quickstart`` (default): the models of ``configs/quickstart.yaml`` (read from the repository when present, else
  a copy): student and critic 4 layers, 4 heads x 32, FFN 256, patch (1, 4, 4), pixel space 8 x 3 x 32 x 32 (64
  tokens a frame), chunks of 2 frames, batch 4 (the recipe's micro-batch). The teacher is the recipe's own, the
  exact mixture denoiser ``streamr1.toy.teacher.MixtureTeacher`` of the 512-video toy world (built once a process,
  about 10 s on a CPU), with ``ToyTextEncoder(dim=32)`` embeddings, as the recipe. The student is random, not the
  shipped ODE-initialised one: the same shapes, so the same time.
* ``tiny``: the models of ``configs/tiny_random.yaml`` (2 layers, width 16, 16x16 latent: 64 tokens a frame,
  chunks of 2 frames). Python overhead dominates at this size, so its ratios say little about a real model.
* ``small``: somewhat larger so that compute, not overhead, dominates: 4 layers, width 128 (4 heads x 32), FFN 512,
  16 latent channels, 16x16 latent (64 tokens a frame), chunks of 3 frames (as Wan), 9 training frames.
* ``wan1.3b``: Wan2.1-T2V-1.3B shapes (30 layers, 12 heads x 128, FFN 8960, text 4096 x 512 tokens, 16 channels,
  latent 21x60x104, chunks of 3), bf16, activation checkpointing; needs a GPU. Its teacher is a second 1.3B
  model (the paper's is 14B), so the student-turn time is a lower bound.

Sections (each a function ``(BenchContext) -> list[Row]``, registered in :data:`SECTIONS`; ``--sections`` picks):

* ``turns``: one student turn (rollout with grad at the costliest exit step, 4 of 4 steps, then teacher + critic
  for the DMD gradient, backward, clip, AdamW step) and one critic turn (no-grad rollout, critic loss, backward,
  step). Time, and peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above the memory held before the turn;
  on CPU the peak of live tensor memory during the turn above its start, from ``torch.profiler``'s memory events
  (operator resolution: a temporary allocated and freed inside one operator is not seen; allocator caching and
  Python objects are not counted).
* ``reward``: the Stream-R1 student turn against the plain DMD student turn, same module and weights, one run
  (the student turn of ``turns``, exit step 4 of 4). Plain DMD runs no weighting callback; Stream-R1 runs the
  reward service and weighting callbacks of ``callbacks/stream_r1.yaml`` (:func:`stream_r1_stack`: RewardService,
  AdaptiveAxisBalancing, ReliabilityWeighting on BalancedOverall, SaliencyWeighting; its StudentEMA is left out:
  it is no weighting, runs after the optimizer step and is in the plain DMD stack too), attached to the module
  through a Lightning ``Trainer`` that is never fitted. The reward model (:func:`build_reward`) is the shipped toy
  reward ``pkg://streamr1/assets/toy_reward.pt`` with its statistics when the package has it, else a tiny random
  open_clip. Rows: both turn times, their ratio (target <= 1.3 on the quickstart models), the reward pass alone
  (``RewardService.evaluate`` on a fresh rollout: decode, one forward, one batched backward for every axis'
  saliency, normalisation) and the reward forwards and backwards per student turn of each kind, from the
  service's counters (the design: 1 and 1 for Stream-R1, 0 and 0 for DMD). Sizes whose latents are not RGB
  (``small``, ``wan1.3b``) decode with a stand-in, the first 3 latent channels (no VAE is run), and score with the
  same small reward: their reward figures say little about a real Wan VAE and reward model.
* ``kv_cache``: generation of 4, 8 and 16 chunks (``--chunks``) with a local attention window (``--window-chunks``)
  through the KV cache, against recomputing the whole prefix for every denoising step of every chunk (one
  full-sequence block-causal forward over all frames so far, clean previous frames at t = 0). Per-chunk times,
  the cached last/first chunk ratio (target <= 1.5: flat with a window) and the speed-up (target: grows with
  length, >= 3x at 16 chunks). Both paths draw the same re-noising noise, so their outputs must agree: the table
  shows the largest difference. Frames per second count latent frames (x4 pixel frames at Wan scale).
* ``throughput``: tokens per second of the student transformer's forward and forward+backward over the training
  latent, and the FLOP rate this implies as a fraction of a plain square matmul's on the same device and dtype.
  Model FLOPs are counted analytically (:func:`forward_flops`): ``2 x weights x tokens`` for every matmul weight
  (video-token weights times video tokens, text-side weights times text tokens), plus attention
  ``4 x T x T x width`` per layer for self-attention and ``4 x T x L x width`` for cross-attention; backward = 2x
  forward; recomputation by activation checkpointing is not counted (the usual "model FLOPs" convention).
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # torch.profiler's C++ logger: keep the table readable
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from torch import Tensor, nn  # noqa: E402

from streamr1.callbacks.base import RolloutContext  # noqa: E402
from streamr1.flow import add_noise, flow_to_x0, warped_steps  # noqa: E402
from streamr1.models import CausalWanDenoiser, HashTextEncoder, IdentityVAE, WanDenoiser  # noqa: E402
from streamr1.module import DMDModule  # noqa: E402
from streamr1.rollout import generate  # noqa: E402

STEPS = (1000, 750, 500, 250)
SHIFT = 5.0


@dataclass
class Row:
    """One line of the table."""

    section: str
    metric: str
    value: float | str | None
    unit: str = ""
    note: str = ""


@dataclass(frozen=True)
class BenchSpec:
    """Model and data shapes of one benchmark size."""

    name: str
    wan: dict[str, Any]
    chunk_frames: int
    train_frames: int
    latent_hw: tuple[int, int]
    text_len: int
    batch: int = 1
    dtype: torch.dtype = torch.float32
    gradient_checkpointing: bool = False
    pixel_frames_per_latent: int = 1
    teacher: str = "wan"
    """``wan``: a random ``WanDenoiser`` of the student's shape, ``HashTextEncoder`` text; ``mixture``: the toy
    world's exact ``MixtureTeacher``, ``ToyTextEncoder`` text (the quickstart recipe's)."""
    description: str = ""

    @property
    def channels(self) -> int:
        return int(self.wan["in_channels"])

    @property
    def tokens_per_frame(self) -> int:
        _, ph, pw = self.wan["patch_size"]
        return (self.latent_hw[0] // ph) * (self.latent_hw[1] // pw)


def _repo_yaml(folder: str, name: str) -> dict[str, Any] | None:
    """``<folder>/<name>.yaml`` of the repository (``configs``, ``callbacks``), or ``None`` where the package runs
    without its repository."""
    path = os.path.join(os.path.dirname(__file__), "..", "..", "..", folder, f"{name}.yaml")
    if not os.path.isfile(path):
        return None
    import yaml

    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _tiny_from_config() -> dict[str, Any]:
    """The Wan config of configs/tiny_random.yaml (read from the repository when present, else its copy)."""
    cfg = _repo_yaml("configs", "tiny_random")
    if cfg is not None:
        return dict(cfg["model"]["student"]["init_args"]["config"])
    return {"patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 3,
            "out_channels": 3, "text_dim": 16, "freq_dim": 32, "ffn_dim": 32, "num_layers": 2, "rope_max_seq_len": 64}


QUICKSTART: dict[str, Any] = {
    "config": {"patch_size": [1, 4, 4], "num_attention_heads": 4, "attention_head_dim": 32, "in_channels": 3,
               "out_channels": 3, "text_dim": 32, "freq_dim": 64, "ffn_dim": 256, "num_layers": 4,
               "rope_max_seq_len": 32},
    "chunk_frames": 2, "latent_shape": [8, 3, 32, 32], "batch_size": 4,
    "world": {"num_videos": 512, "seed": 0},
}
"""The copy of configs/quickstart.yaml's shapes used where the repository is absent (a test checks they agree)."""


def _quickstart_from_config() -> dict[str, Any]:
    """The shapes of configs/quickstart.yaml (read from the repository when present, else :data:`QUICKSTART`)."""
    cfg = _repo_yaml("configs", "quickstart")
    if cfg is None:
        return dict(QUICKSTART)
    model = cfg["model"]
    teacher = model["teacher"]["init_args"]
    return {"config": dict(model["student"]["init_args"]["config"]),
            "chunk_frames": int(model["student"]["init_args"]["chunk_frames"]),
            "latent_shape": [int(v) for v in model["latent_shape"]],
            "batch_size": int(cfg["data"]["init_args"]["batch_size"]),
            "world": {"num_videos": int(teacher["num_videos"]), "seed": int(teacher["seed"])}}


def make_spec(size: str) -> BenchSpec:
    """The :class:`BenchSpec` of ``size`` (``quickstart``, ``tiny``, ``small``, ``wan1.3b``)."""
    if size == "quickstart":
        q = _quickstart_from_config()
        frames, _, h, w = q["latent_shape"]
        return BenchSpec("quickstart", q["config"], chunk_frames=q["chunk_frames"], train_frames=frames,
                         latent_hw=(h, w), text_len=4, batch=q["batch_size"], teacher="mixture",
                         description="configs/quickstart.yaml: 4 layers, width 128, patch 4, 64 tokens/frame, "
                                     "8x3x32x32 pixels, batch 4, MixtureTeacher")
    if size == "tiny":
        return BenchSpec("tiny", _tiny_from_config(), chunk_frames=2, train_frames=4, latent_hw=(16, 16), text_len=8,
                         batch=2, description="configs/tiny_random.yaml: 2 layers, width 16, 64 tokens/frame")
    if size == "small":
        wan = {"patch_size": [1, 2, 2], "num_attention_heads": 4, "attention_head_dim": 32, "in_channels": 16,
               "out_channels": 16, "text_dim": 64, "freq_dim": 64, "ffn_dim": 512, "num_layers": 4,
               "rope_max_seq_len": 256}
        return BenchSpec("small", wan, chunk_frames=3, train_frames=9, latent_hw=(16, 16), text_len=16,
                         description="larger than tiny_random: 4 layers, width 128, FFN 512, 64 tokens/frame")
    if size == "wan1.3b":
        wan = {"patch_size": [1, 2, 2], "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
               "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 30}
        return BenchSpec("wan1.3b", wan, chunk_frames=3, train_frames=21, latent_hw=(60, 104), text_len=512,
                         dtype=torch.bfloat16, gradient_checkpointing=True, pixel_frames_per_latent=4,
                         description="Wan2.1-T2V-1.3B shapes, random weights, bf16, 1560 tokens/frame")
    raise ValueError(f"Unknown size {size!r}: choose one of {', '.join(SIZES)}.")


SIZES = ("quickstart", "tiny", "small", "wan1.3b")
"""The sizes :func:`make_spec` knows; the first is the default."""


@dataclass
class BenchContext:
    """What every section gets: the size, the device and the command-line options."""

    spec: BenchSpec
    device: torch.device
    chunks: Sequence[int] = (4, 8, 16)
    window_chunks: int = 3
    seed: int = 0
    max_recompute_mask_gib: float = 8.0
    meta: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- measuring
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Seconds of one call of ``fn`` (synchronising the device before and after)."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def peak_memory(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes of tensor memory allocated during one call of ``fn`` above what was allocated before it.

    CUDA: ``torch.cuda.max_memory_allocated``. CPU: ``torch.profiler`` memory events (each operator's own
    allocations and frees, in start order; temporaries freed inside one operator are not seen).
    """
    if device.type == "cuda":
        _sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        _sync(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return int(peak)


def _mib(n: int) -> float:
    return n / 2**20


# ---------------------------------------------------------------------------------------------- models
def build_student(spec: BenchSpec, window_frames: int | None = None) -> CausalWanDenoiser:
    """The causal student of ``spec`` (random weights, ``spec.dtype``), optionally with a local attention window."""
    return CausalWanDenoiser(config=spec.wan, chunk_frames=spec.chunk_frames, local_window_frames=window_frames,
                             gradient_checkpointing=spec.gradient_checkpointing).to(spec.dtype)


class LatentIdentityVAE(IdentityVAE):
    """:class:`IdentityVAE` with ``channels`` latent channels. Decoding (the reward section's only use of it) keeps
    the first 3 channels as "RGB": a stand-in that costs nothing, not a VAE; with 3 channels it is the identity."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.latent_channels = channels

    def decode(self, latents: Tensor) -> Tensor:
        return latents[:, :, :3]


@functools.lru_cache(maxsize=2)
def _mixture_teacher(num_videos: int, seed: int, text_dim: int) -> nn.Module:
    """The toy world's exact teacher (building the world takes seconds: once a process)."""
    from streamr1.toy.teacher import MixtureTeacher

    return MixtureTeacher(num_videos=num_videos, seed=seed, text_dim=text_dim)


def build_teacher(spec: BenchSpec) -> nn.Module:
    """``spec``'s teacher: a random ``WanDenoiser`` of the student's shape, or the quickstart's ``MixtureTeacher``."""
    if spec.teacher == "mixture":
        world = _quickstart_from_config()["world"]
        return _mixture_teacher(int(world["num_videos"]), int(world["seed"]), int(spec.wan["text_dim"]))
    return WanDenoiser(config=spec.wan)


def build_text_encoder(spec: BenchSpec) -> nn.Module:
    """``spec``'s text encoder: ``HashTextEncoder``, or ``ToyTextEncoder`` (the mixture teacher decodes its codes)."""
    if spec.teacher == "mixture":
        from streamr1.toy.text import ToyTextEncoder

        return ToyTextEncoder(dim=int(spec.wan["text_dim"]))
    return HashTextEncoder(dim=int(spec.wan["text_dim"]), length=spec.text_len)


def build_module(spec: BenchSpec) -> DMDModule:
    """A :class:`DMDModule` with student, teacher and critic of ``spec``'s shape (random weights, ``spec.dtype``;
    the quickstart's teacher is its exact mixture denoiser)."""
    ckpt = spec.gradient_checkpointing
    return DMDModule(
        student=CausalWanDenoiser(config=spec.wan, chunk_frames=spec.chunk_frames, gradient_checkpointing=ckpt),
        teacher=build_teacher(spec),
        critic=WanDenoiser(config=spec.wan, gradient_checkpointing=ckpt),
        text_encoder=build_text_encoder(spec),
        vae=LatentIdentityVAE(spec.channels),
        latent_shape=(spec.train_frames, spec.channels, *spec.latent_hw),
        denoising_steps=STEPS, shift=SHIFT,
    ).to(spec.dtype)


def _prompts(n: int) -> list[str]:
    words = ["a red circle moving left", "a blue square moving up", "a green triangle moving right"]
    return [words[i % len(words)] for i in range(n)]


def forward_flops(transformer: nn.Module, tokens: int, text_tokens: int, batch: int = 1) -> float:
    """Analytic FLOPs of one forward of a Wan transformer on ``batch`` sequences of ``tokens`` video tokens.

    ``2 x weights x rows`` for every ``nn.Linear``/``nn.Conv3d`` weight: video-side weights (patch embedding, self-
    attention, cross-attention queries and output, FFN, output projection) run on the video tokens, text-side
    weights (text embedder, cross-attention keys and values) on the text tokens, timestep embedders on one row per
    sample. Plus ``4 x T x T x width`` (scores and weighted sum) per self-attention and ``4 x T x L x width`` per
    cross-attention. Norms, activations, rotary embedding and softmax are left out (a few percent at most).
    """
    video = text = per_sample = 0
    for name, mod in transformer.named_modules():
        if not isinstance(mod, (nn.Linear, nn.Conv3d)):
            continue
        n = mod.weight.numel()
        if "text_embedder" in name or re.search(r"attn2\.(to_k|to_v)$", name):
            text += n
        elif "time_embedder" in name or "time_proj" in name:
            per_sample += n
        else:
            video += n
    cfg = transformer.config
    width = int(cfg.num_attention_heads) * int(cfg.attention_head_dim)
    attention = int(cfg.num_layers) * (4 * tokens * tokens * width + 4 * tokens * text_tokens * width)
    return float(batch * (2 * video * tokens + 2 * text * text_tokens + 2 * per_sample + attention))


def matmul_flops_per_second(device: torch.device, dtype: torch.dtype) -> tuple[float, int]:
    """FLOP/s of a square matmul (``n = 1024`` on CPU, ``8192`` on GPU) in ``dtype``; returns (FLOP/s, n)."""
    n, reps = (8192, 20) if device.type == "cuda" else (1024, 8)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run() -> None:
        for _ in range(reps):
            a @ b

    run()  # warm-up
    seconds = timed(run, device)
    return 2.0 * n**3 * reps / seconds, n


def _turn_setup(ctx: BenchContext) -> tuple[DMDModule, torch.optim.Optimizer, torch.optim.Optimizer, list[str]]:
    """A fresh module in train mode on the device, its two optimizers and a batch of prompts; every rollout exits
    at the last (costliest) step, so turn timings are comparable."""
    torch.manual_seed(ctx.seed)
    m = build_module(ctx.spec).to(ctx.device)
    m.train()
    (opt_s, opt_c), _ = m.configure_optimizers()
    last_exit = len(m.steps) - 1
    m.draw_exit_index = lambda: last_exit
    return m, opt_s, opt_c, _prompts(ctx.spec.batch)


# ---------------------------------------------------------------------------------------------- sections
def section_turns(ctx: BenchContext) -> list[Row]:
    """Student-turn and critic-turn time and peak memory (optimizer step included)."""
    spec, device = ctx.spec, ctx.device
    m, opt_s, opt_c, prompts = _turn_setup(ctx)

    def student_turn() -> None:
        loss, _ = m.student_loss(prompts, m.encode_prompts(prompts))
        loss.backward()
        m._clip(opt_s)
        opt_s.step()
        opt_s.zero_grad(set_to_none=True)

    def critic_turn() -> None:
        loss = m.critic_loss(m.encode_prompts(prompts))
        loss.backward()
        m._clip(opt_c)
        opt_c.step()
        opt_c.zero_grad(set_to_none=True)

    rows = []
    for name, turn in (("student turn", student_turn), ("critic turn", critic_turn)):
        turn()  # warm-up (also creates the AdamW state, so the measured turn is a steady-state one)
        seconds = timed(turn, device)
        peak = peak_memory(turn, device)
        how = "cuda max_memory_allocated" if device.type == "cuda" else "torch.profiler memory events"
        rows.append(Row("turns", f"{name}: time", seconds * 1e3, "ms",
                        f"batch {spec.batch}, {spec.train_frames} latent frames"
                        + (", exit step 4 of 4" if name == "student turn" else "")))
        rows.append(Row("turns", f"{name}: peak memory", _mib(peak), "MiB", f"above the turn's start ({how})"))
    return rows


REWARD_STATE = "pkg://streamr1/assets/toy_reward.pt"
REWARD_STATS = "pkg://streamr1/assets/toy_reward_stats.json"
TINY_CLIP: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
"""The tiny random open_clip of the reward tests: the reward model when the package has no toy reward."""

STREAM_R1_STACK: tuple[tuple[str, dict[str, Any]], ...] = (
    ("streamr1.rewards.service.RewardService", {}),
    ("streamr1.callbacks.balancing.AdaptiveAxisBalancing", {"window": 50, "warmup": 50, "min_entries": 4, "lam": 0.5}),
    ("streamr1.callbacks.reliability.ReliabilityWeighting", {"reward_mode": "BalancedOverall", "beta": 2.0}),
    ("streamr1.callbacks.saliency.SaliencyWeighting",
     {"fusion": "adaptive", "temperature": 1.0, "factorize": True, "temporal_strength": 1.0, "spatial_strength": 1.0,
      "temporal_floor": 0.2, "spatial_floor": 0.15, "heatmap_every_n_steps": 50}),
)
"""The copy of :func:`stream_r1_stack` used where the repository is absent (a test checks it agrees)."""


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def stream_r1_stack() -> list[tuple[str, dict[str, Any]]]:
    """``(class_path, init_args)`` of the reward service and the weighting callbacks of callbacks/stream_r1.yaml, in
    its order (read from the repository when present, else :data:`STREAM_R1_STACK`).

    Left out: callbacks that neither are the service nor weight the loss (its ``StudentEMA``), and the service's
    ``model`` and ``normalization`` (:func:`build_reward` gives them).
    """
    cfg = _repo_yaml("callbacks", "stream_r1")
    if cfg is None:
        return [(path, dict(args)) for path, args in STREAM_R1_STACK]
    from streamr1.rewards.service import RewardService

    stack = []
    for entry in cfg["trainer"]["callbacks"]:
        cls = _import(entry["class_path"])
        if cls is RewardService or issubclass(cls, RewardService) or hasattr(cls, "weight_rollout"):
            args = {k: v for k, v in (entry.get("init_args") or {}).items() if k not in ("model", "normalization")}
            stack.append((entry["class_path"], args))
    return stack


def build_reward() -> tuple[nn.Module, str | dict[str, dict[str, float]], str]:
    """The reward model, its normalization and a note: the shipped toy reward (``toy_reward.pt``) with its
    statistics when the package has it, else a tiny random open_clip (:data:`TINY_CLIP`) with identity statistics."""
    from streamr1.assets import resolve
    from streamr1.protocols import AXES
    from streamr1.rewards.openclip import OpenCLIPVideoReward

    identity = {a: {"mean": 0.0, "std": 1.0} for a in AXES}
    if os.path.isfile(resolve(REWARD_STATE)):
        model = OpenCLIPVideoReward(state_path=REWARD_STATE)
        has_stats = os.path.isfile(resolve(REWARD_STATS))
        what = f"toy reward {REWARD_STATE.rsplit('/', 1)[-1]}" + ("" if has_stats else " (no stats file)")
        stats: str | dict[str, dict[str, float]] = REWARD_STATS if has_stats else identity
    else:
        model, what, stats = OpenCLIPVideoReward(model_config=TINY_CLIP, num_frames=None), "tiny random open_clip", \
            identity
    n = sum(p.numel() for p in model.parameters())
    return model, stats, f"{what}, {n / 1e6:.2f} M params"


def build_stream_r1_callbacks(model: nn.Module, normalization: Any) -> list[Any]:
    """The callbacks of :func:`stream_r1_stack`, the service scoring with ``model``."""
    from streamr1.rewards.service import RewardService

    callbacks = []
    for path, args in stream_r1_stack():
        cls = _import(path)
        if cls is RewardService or issubclass(cls, RewardService):
            args = {**args, "model": model, "normalization": normalization}
        callbacks.append(cls(**args))
    return callbacks


def _attach(module: DMDModule, callbacks: list[Any], device: torch.device) -> Any:
    """A never-fitted Lightning ``Trainer`` holding ``callbacks``, each set up for ``fit`` on ``module``, then the
    module's trainer: ``student_loss`` now runs the weighting callbacks (as in a fit; set ``module.trainer = None``
    for none). Lightning's start-up messages are silenced."""
    import lightning.pytorch as pl

    quiet = [logging.getLogger(name) for name in ("lightning.pytorch", "lightning.fabric")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.WARNING)
    try:
        trainer = pl.Trainer(callbacks=callbacks, accelerator="gpu" if device.type == "cuda" else "cpu", devices=1,
                             logger=False, enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False)
    finally:
        for lg, level in zip(quiet, levels, strict=True):
            lg.setLevel(level)
    for cb in callbacks:
        cb.setup(trainer, module, "fit")
    module.trainer = trainer
    return trainer


def _count(n: int, turns: int) -> int | float:
    return n // turns if n % turns == 0 else n / turns


def section_reward(ctx: BenchContext) -> list[Row]:
    """The Stream-R1 student turn against the plain DMD one (same module), the reward pass, reward calls a turn."""
    from streamr1.rewards.service import RewardService

    spec, device = ctx.spec, ctx.device
    m, opt_s, _, prompts = _turn_setup(ctx)
    model, normalization, reward_note = build_reward()
    callbacks = build_stream_r1_callbacks(model, normalization)
    service = next(cb for cb in callbacks if isinstance(cb, RewardService))
    trainer = _attach(m, callbacks, device)
    calls = {"DMD": [0, 0, 0], "Stream-R1": [0, 0, 0]}  # turns, reward forwards, reward backwards

    def student_turn(kind: str) -> None:
        m.trainer = trainer if kind == "Stream-R1" else None  # no trainer: no weighting callback, plain DMD
        f0, b0 = service.forward_calls, service.backward_calls
        loss, _ = m.student_loss(prompts, m.encode_prompts(prompts))
        loss.backward()
        m._clip(opt_s)
        opt_s.step()
        opt_s.zero_grad(set_to_none=True)
        m.student_steps += 1  # as training_step: the callbacks' periodic logs see successive steps
        c = calls[kind]
        c[0], c[1], c[2] = c[0] + 1, c[1] + service.forward_calls - f0, c[2] + service.backward_calls - b0

    try:
        for kind in calls:  # warm-ups (AdamW state, the reward model's first call)
            student_turn(kind)
        seconds = {kind: timed(lambda k=kind: student_turn(k), device) for kind in calls}
        m.trainer = trainer
        cond = m.encode_prompts(prompts)
        with torch.no_grad():
            x = m.rollout(cond, grad=False, exit_index=len(m.steps) - 1)

        def reward_pass() -> None:  # a fresh context each call: the service caches its result on the context
            service.evaluate(RolloutContext(x=x, dmd_grad=torch.zeros_like(x), prompts=prompts, cond=cond,
                                            decode=m.decode, student_step=m.student_steps))

        reward_pass()  # warm-up
        reward_s = timed(reward_pass, device)
    finally:
        m.trainer = None
    dmd, sr1 = seconds["DMD"], seconds["Stream-R1"]
    ratio = sr1 / dmd
    extra = sr1 - dmd
    names = ", ".join(path.rsplit(".", 1)[-1] for path, _ in stream_r1_stack())
    where = f"batch {spec.batch}, {spec.train_frames} latent frames, exit step 4 of 4"
    decode = ("decode = identity (pixel space)" if spec.channels == 3 else
              f"decode = first 3 of {spec.channels} latent channels (a stand-in: no VAE)")
    rows = [
        Row("reward", "DMD student turn: time", dmd * 1e3, "ms", f"no weighting callbacks; {where}"),
        Row("reward", "Stream-R1 student turn: time", sr1 * 1e3, "ms",
            f"{names} as callbacks/stream_r1.yaml (its StudentEMA left out: not a weighting); {where}"),
        Row("reward", "Stream-R1 / DMD student turn", ratio, "x",
            f"target <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'}; difference {extra * 1e3:+.1f} ms (one run "
            "each: noise of several ms)"),
        Row("reward", "reward pass: time", reward_s * 1e3, "ms",
            f"RewardService.evaluate on one rollout: {decode}, 1 forward, 1 batched backward "
            f"({len(service.axes)} axes), normalise; {reward_note}; {100 * reward_s / dmd:.0f}% of the DMD turn"),
    ]
    for kind, (turns, fwd, bwd) in calls.items():
        note = f"RewardService counters over {turns} {kind} student turns"
        rows.append(Row("reward", f"{kind} student turn: reward forwards", _count(fwd, turns), "per turn", note))
        rows.append(Row("reward", f"{kind} student turn: reward backwards", _count(bwd, turns), "per turn", note))
    return rows


@torch.no_grad()
def cached_generation(student: CausalWanDenoiser, noise: Tensor, cond: Tensor, steps: Sequence[float],
                      seed: int) -> tuple[Tensor, list[float]]:
    """Chunk-by-chunk generation through the KV cache; returns the video and each chunk's seconds."""
    device = noise.device
    times: list[float] = []
    mark = [0.0]

    def on_chunk(index: int, x0: Tensor) -> None:
        _sync(device)
        now = time.perf_counter()
        times.append(now - mark[0])
        mark[0] = now

    generator = torch.Generator(device=device).manual_seed(seed)
    _sync(device)
    mark[0] = time.perf_counter()
    video = generate(student, noise, cond, steps, generator=generator, on_chunk=on_chunk)
    return video, times


@torch.no_grad()
def recompute_generation(student: CausalWanDenoiser, noise: Tensor, cond: Tensor, steps: Sequence[float],
                         seed: int) -> tuple[Tensor, list[float]]:
    """The same generation without a cache: every denoising step runs the full block-causal forward over the clean
    frames so far (t = 0) and the current chunk. Draws the same re-noising noise as :func:`cached_generation`."""
    device = noise.device
    generator = torch.Generator(device=device).manual_seed(seed)
    b, frames = noise.shape[:2]
    c = student.chunk_frames
    done: list[Tensor] = []
    times: list[float] = []
    for start in range(0, frames, c):
        _sync(device)
        t0 = time.perf_counter()
        x_t = noise[:, start:start + c]
        x0 = x_t
        for i, level in enumerate(steps):
            inputs = torch.cat([*done, x_t], dim=1)
            t = torch.cat([torch.zeros(b, start, device=device), torch.full((b, x_t.shape[1]), float(level),
                                                                              device=device)], dim=1)
            flow = student.causal(inputs, t, cond)[:, start:]
            x0 = flow_to_x0(x_t, flow, torch.full((b,), float(level), device=device))
            if i < len(steps) - 1:
                fresh = torch.randn(x0.shape, generator=generator, device=device, dtype=x0.dtype)
                x_t = add_noise(x0, fresh, torch.full((b,), float(steps[i + 1]), device=device))
        done.append(x0)
        _sync(device)
        times.append(time.perf_counter() - t0)
    return torch.cat(done, dim=1), times


def section_kv_cache(ctx: BenchContext) -> list[Row]:
    """Per-chunk time with the KV cache against recomputing the prefix, at several lengths, with a local window."""
    spec, device = ctx.spec, ctx.device
    torch.manual_seed(ctx.seed)
    window = ctx.window_chunks * spec.chunk_frames
    student = build_student(spec, window_frames=window).to(device).eval()
    steps = warped_steps(STEPS, SHIFT)
    cond = build_text_encoder(spec).encode(_prompts(spec.batch)).to(device)
    c, (h, w), tpf = spec.chunk_frames, spec.latent_hw, spec.tokens_per_frame
    warm = torch.randn(spec.batch, 2 * c, spec.channels, h, w, device=device)
    cached_generation(student, warm, cond, steps, ctx.seed)  # warm-up
    recompute_generation(student, warm, cond, steps, ctx.seed)
    rows: list[Row] = []
    speedups: list[float] = []
    note_w = f"window {window} frames ({ctx.window_chunks} chunks)"
    for n in ctx.chunks:
        noise = torch.randn(spec.batch, n * c, spec.channels, h, w, device=device)
        video, cached = cached_generation(student, noise, cond, steps, ctx.seed)
        ratio = cached[-1] / cached[0]
        mean_cached = sum(cached) / n
        fps = spec.batch * c / mean_cached
        prefix = f"{n} chunks"
        rows += [
            Row("kv_cache", f"{prefix}: cached, first chunk", cached[0] * 1e3, "ms", note_w),
            Row("kv_cache", f"{prefix}: cached, last chunk", cached[-1] * 1e3, "ms",
                f"last/first = {ratio:.2f} (target <= 1.5: {'met' if ratio <= 1.5 else 'NOT met'})"),
            Row("kv_cache", f"{prefix}: cached, mean chunk latency", mean_cached * 1e3, "ms",
                f"{fps:.2f} latent frames/s"
                + (f" = {fps * spec.pixel_frames_per_latent:.2f} pixel frames/s"
                   if spec.pixel_frames_per_latent > 1 else "")),
        ]
        tokens = n * c * tpf
        mask_gib = tokens * tokens * 3 / 2**30  # bool mask + a 2-byte additive bias in SDPA, at least
        if mask_gib > ctx.max_recompute_mask_gib:
            rows.append(Row("kv_cache", f"{prefix}: recompute", "skipped", "",
                            f"{tokens} tokens: dense block-causal mask ~{mask_gib:.0f} GiB > "
                            f"--max-recompute-mask-gib {ctx.max_recompute_mask_gib:g}"))
            continue
        ref, recomputed = recompute_generation(student, noise, cond, steps, ctx.seed)
        speedup = sum(recomputed) / sum(cached)
        speedups.append(speedup)
        diff = float((ref.float() - video.float()).abs().max())
        rows += [
            Row("kv_cache", f"{prefix}: recompute, mean chunk", sum(recomputed) / n * 1e3, "ms",
                f"last chunk {recomputed[-1] * 1e3:.1f} ms"),
            Row("kv_cache", f"{prefix}: speed-up of the cache", speedup, "x",
                f"max |cached - recomputed| = {diff:.1e}"
                + (f"; target >= 3x at 16 chunks: {'met' if speedup >= 3 else 'NOT met'}" if n == 16 else "")),
        ]
    if len(speedups) > 1:
        grows = all(b > a for a, b in zip(speedups, speedups[1:], strict=False))
        trend = " -> ".join(f"{s:.2f}x" for s in speedups)
        rows.append(Row("kv_cache", "speed-up grows with length", "yes" if grows else "no", "",
                        f"{trend} (target: grows: {'met' if grows else 'NOT met'})"))
    return rows


def section_throughput(ctx: BenchContext) -> list[Row]:
    """Student forward and forward+backward tokens/s, and their FLOP rate as a fraction of a matmul's."""
    spec, device = ctx.spec, ctx.device
    torch.manual_seed(ctx.seed)
    transformer = build_student(spec).to(device).transformer
    transformer.train()
    h, w = spec.latent_hw
    x = torch.randn(spec.batch, spec.channels, spec.train_frames, h, w, device=device, dtype=spec.dtype)
    t = torch.full((spec.batch,), 500.0, device=device)
    cond = torch.randn(spec.batch, spec.text_len, int(spec.wan["text_dim"]), device=device, dtype=spec.dtype)
    tokens = spec.train_frames * spec.tokens_per_frame
    flops_fwd = forward_flops(transformer, tokens, spec.text_len, spec.batch)

    def forward() -> None:
        with torch.no_grad():
            transformer(x, t, cond, return_dict=False)

    def forward_backward() -> None:
        out = transformer(x, t, cond, return_dict=False)[0]
        out.float().square().mean().backward()
        transformer.zero_grad(set_to_none=True)

    peak, n = matmul_flops_per_second(device, spec.dtype)
    rows = [Row("throughput", f"matmul {n}x{n} ({str(spec.dtype).replace('torch.', '')})", peak / 1e9, "GFLOP/s",
                "plain square matmul on this device: the reference rate")]
    for name, fn, flops in (("student forward", forward, flops_fwd),
                            ("student forward+backward", forward_backward, 3 * flops_fwd)):
        fn()  # warm-up
        seconds = timed(fn, device)
        rate = flops / seconds
        rows.append(Row("throughput", f"{name}: tokens/s", spec.batch * tokens / seconds, "tokens/s",
                        f"{spec.batch} x {tokens} tokens, {seconds * 1e3:.1f} ms"))
        rows.append(Row("throughput", f"{name}: model FLOP rate", rate / 1e9, "GFLOP/s",
                        f"{100 * rate / peak:.1f}% of the matmul rate; {flops / 1e9:.2f} GFLOP analytic"
                        + (" (+1 forward recomputed by checkpointing, not counted)"
                           if spec.gradient_checkpointing and "backward" in name else "")))
    return rows


SECTIONS: dict[str, Callable[[BenchContext], list[Row]]] = {
    "turns": section_turns,
    "reward": section_reward,
    "kv_cache": section_kv_cache,
    "throughput": section_throughput,
}
"""Sections by name, in printing order. Add one by registering a ``(BenchContext) -> list[Row]`` function here."""


# ---------------------------------------------------------------------------------------------- output
def _fmt(value: float | str | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return f"{value:,}"
    if value == 0 or not math.isfinite(value):
        return str(value)
    digits = max(0, 3 - int(math.floor(math.log10(abs(value)))))
    return f"{value:,.{digits}f}"


def markdown_table(rows: Sequence[Row]) -> str:
    """Rows as a markdown table: section | metric | value | unit | note."""
    lines = ["| section | metric | value | unit | note |", "|---|---|---:|---|---|"]
    lines += [f"| {r.section} | {r.metric} | {_fmt(r.value)} | {r.unit} | {r.note} |" for r in rows]
    return "\n".join(lines)


def run(ctx: BenchContext, sections: Sequence[str]) -> list[Row]:
    """Run the named sections in order and return all their rows."""
    rows: list[Row] = []
    for name in sections:
        rows += SECTIONS[name](ctx)
    return rows


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m streamr1.bench.speed", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu or cuda (wan1.3b needs cuda)")
    p.add_argument("--size", default=SIZES[0], choices=list(SIZES), help="model shapes (see above)")
    p.add_argument("--chunks", type=int, nargs="+", default=[4, 8, 16], help="video lengths of the KV cache section")
    p.add_argument("--window-chunks", type=int, default=3, help="local attention window, in chunks (cache + current)")
    p.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS), help="what to run")
    p.add_argument("--max-recompute-mask-gib", type=float, default=8.0,
                   help="skip the recompute baseline where its dense block-causal mask would be larger than this")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's). On a CPU shared with other jobs, 1 avoids the large "
                        "slow-downs of oversubscribed OpenMP threads")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also save the rows and the run's settings to this JSON file")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[Row]:
    """Run the benchmark, print the table (and save ``--json``); returns the rows."""
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device here.")
    spec = make_spec(args.size)
    if spec.dtype == torch.bfloat16 and device.type == "cpu":
        print("[bench] note: bf16 on CPU is slow and unrepresentative; wan1.3b is meant for --device cuda",
              file=sys.stderr)
    meta = {"size": spec.name, "description": spec.description, "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else os.uname().machine,
            "dtype": str(spec.dtype), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "chunk_frames": spec.chunk_frames, "tokens_per_frame": spec.tokens_per_frame,
            "student_params": sum(p.numel() for p in build_student(spec).parameters())}
    ctx = BenchContext(spec, device, chunks=args.chunks, window_chunks=args.window_chunks, seed=args.seed,
                       max_recompute_mask_gib=args.max_recompute_mask_gib, meta=meta)
    rows = run(ctx, args.sections)
    print(f"streamr1 speed benchmark: {spec.name} ({spec.description}); {meta['student_params']:,} student "
          f"parameters; {device} ({meta['device_name']}), {meta['threads']} threads, {spec.dtype}, torch "
          f"{torch.__version__}. One timed run per figure, after one warm-up.\n")
    print(markdown_table(rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"meta": meta, "rows": [asdict(r) for r in rows]}, fh, indent=2)
    return rows


if __name__ == "__main__":
    main()
