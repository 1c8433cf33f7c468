"""Section ``turns``: the student and critic turns, and the Stream-R1 student turn against the plain DMD one.

What is built: the size's recipe plus ``callbacks/stream_r1.yaml`` and the reward fragment, through the CLI, and
fitted by its own trainer (``Trainer.fit``): Lightning sets everything up (callbacks' ``setup``, the module's
``on_fit_start``, devices, optimizers) and, once training starts, :class:`FitProbe` runs the measurement in
``on_train_start`` through the module's public methods and stops the fit before its first step.

A turn is what ``DMDModule.training_step`` does for it: the turn's loss (``student_loss`` / ``critic_loss``) under
the precision plugin's context, ``manual_backward``, ``optimizer_step`` (clip, step, zero grads). Every rollout
exits at the last (costliest) of the few steps (``exit_index``), so every student turn does the same work.

* plain DMD student turn: the same module and trainer, ``student_loss(..., weighting=False)``: the loss-weighting
  callbacks do not run, exactly what ``callbacks/dmd.yaml`` computes (the EMA runs after the step, outside a turn);
* Stream-R1 student turn: every callback of the stack (reward service, balancing, reliability, saliency);
* critic turn;
* the reward pass alone: ``RewardService.score`` of one rollout (decode, one forward, one batched backward for the
  saliency of every axis).

The four are interleaved round by round (:func:`streamr1.bench.measure.interleaved`); the Stream-R1 / DMD ratio is
the median of the per-round ratios. The reward service's public counters give the reward forwards and backwards
per student turn of each kind. Peak memory: one more call of each turn (:func:`streamr1.bench.measure.peak_memory`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from streamr1.bench.measure import Row, interleaved, pair_ratios, peak_memory, spread
from streamr1.bench.specs import BenchContext, stream_r1_configs

SECTION = "turns"


class FitProbe(Callback):
    """Runs ``work(trainer, pl_module)`` once the fit is set up (``on_train_start``, after the callbacks listed
    before it), keeps its return value in :attr:`result`, and stops the fit before its first training step."""

    def __init__(self, work: Callable[[Any, Any], Any]) -> None:
        self.work = work
        self.result: Any = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        try:
            self.result = self.work(trainer, pl_module)
        finally:
            trainer.should_stop = True


def run_in_fit(cli: Any, work: Callable[[Any, Any], Any]) -> Any:
    """Fit ``cli``'s model with a :class:`FitProbe` running ``work``; returns what ``work`` returned."""
    probe = FitProbe(work)
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return probe.result


def _is_weighting(callback: Any) -> bool:
    return callable(getattr(callback, "weight_rollout", None))


def _reward_service(callbacks: list[Any]) -> Any:
    from streamr1.rewards.service import RewardService

    found = [cb for cb in callbacks if isinstance(cb, RewardService)]
    return found[0] if found else None


def measure_turns(ctx: BenchContext, trainer: Any, m: Any) -> list[Row]:
    """The section's rows, measured on the fitted module ``m`` of ``trainer`` (see the module docstring)."""
    device = m.device
    batch = int(getattr(trainer.datamodule, "batch_size", 1) or 1)
    prompts = ctx.prompts(batch)
    opt_s, opt_c = m.optimizers()
    last = len(m.steps) - 1
    # every rollout exits at the last step (exit_index=last): every student turn does the same work
    callbacks = list(trainer.callbacks)
    plain = [cb for cb in callbacks if not _is_weighting(cb)]
    service = _reward_service(callbacks)
    stream_r1 = service is not None and len(plain) < len(callbacks)
    precision = trainer.precision_plugin
    calls = {"DMD": [0, 0, 0], "Stream-R1": [0, 0, 0]}  # turns, reward forwards, reward backwards

    def student_turn(kind: str) -> None:
        f0, b0 = (service.forward_calls, service.backward_calls) if service is not None else (0, 0)
        with precision.train_step_context():
            # the plain DMD turn of the same fitted module: the weighting callbacks left out (what dmd.yaml runs)
            loss, _ = m.student_loss(prompts, m.encode_prompts(prompts), exit_index=last,
                                     weighting=kind == "Stream-R1")
            m.manual_backward(loss)
        m.optimizer_step(opt_s)
        if service is not None:
            c = calls[kind]
            c[0], c[1], c[2] = c[0] + 1, c[1] + service.forward_calls - f0, c[2] + service.backward_calls - b0

    def critic_turn() -> None:
        with precision.train_step_context():
            loss = m.critic_loss(m.encode_prompts(prompts), exit_index=last)
            m.manual_backward(loss)
        m.optimizer_step(opt_c)

    fns: dict[str, Callable[[], Any]] = {"DMD student turn": lambda: student_turn("DMD"), "critic turn": critic_turn}
    if stream_r1:
        with torch.no_grad(), precision.forward_context():
            x = m.rollout(m.encode_prompts(prompts), grad=False, exit_index=last)
        latent = (x.shape[1], x.shape[3], x.shape[4])

        def reward_pass() -> None:
            with precision.forward_context():
                service.score(m.decode(x), prompts, saliency=True, latent_shape=latent)

        fns["Stream-R1 student turn"] = lambda: student_turn("Stream-R1")
        fns["reward pass"] = reward_pass
    seconds = interleaved(fns, ctx.repeats, device)
    where = f"batch {batch}, latent {list(m.latent_shape)}, exit step {last + 1} of {last + 1}"
    how = "cuda max_memory_allocated" if device.type == "cuda" else "torch.profiler memory events"
    rows = []
    for name, turn in (("DMD student turn", fns["DMD student turn"]), ("critic turn", critic_turn)):
        label = "student turn" if name.startswith("DMD") else name
        rows.append(Row(SECTION, f"{label}: time", spread(seconds[name]).scaled(1e3), "ms", where))
        rows.append(Row(SECTION, f"{label}: peak memory", peak_memory(turn, device) / 2**20, "MiB",
                        f"above the turn's start ({how}); one call"))
    rows.append(Row(SECTION, "student turn / critic turn", pair_ratios(seconds["DMD student turn"],
                                                                       seconds["critic turn"]), "x",
                    "per-round ratio"))
    if not stream_r1:
        rows.append(Row(SECTION, "Stream-R1 student turn", "not measured", "",
                        f"size {ctx.size.name}: no reward model of this size here (the toy reward fits the toy "
                        "world only)"))
        return rows
    dmd, sr1 = seconds["DMD student turn"], seconds["Stream-R1 student turn"]
    ratio = pair_ratios(sr1, dmd)
    extra = spread([a - b for a, b in zip(sr1, dmd, strict=True)]).scaled(1e3)
    names = ", ".join(type(cb).__name__ for cb in callbacks if _is_weighting(cb) or cb is service)
    rows += [
        Row(SECTION, "Stream-R1 student turn: time", spread(sr1).scaled(1e3), "ms", f"{names}; {where}"),
        Row(SECTION, "Stream-R1 / DMD student turn", ratio, "x",
            f"per-round ratio; target <= 1.3: {'met' if ratio.median <= 1.3 else 'NOT met'} (median); difference "
            f"{extra.median:+.1f} ms ({extra.low:+.1f} to {extra.high:+.1f})"),
        Row(SECTION, "reward pass: time", spread(seconds["reward pass"]).scaled(1e3), "ms",
            f"RewardService.score of one rollout: decode, 1 forward, 1 batched backward ({len(service.axes)} axes); "
            f"{100 * spread(seconds['reward pass']).median / spread(dmd).median:.0f}% of a DMD student turn"),
    ]
    for kind, (turns, fwd, bwd) in calls.items():
        note = f"RewardService counters over {turns} {kind} student turns"
        rows.append(Row(SECTION, f"{kind} student turn: reward forwards", _per_turn(fwd, turns), "per turn", note))
        rows.append(Row(SECTION, f"{kind} student turn: reward backwards", _per_turn(bwd, turns), "per turn", note))
    return rows


def _per_turn(n: int, turns: int) -> int | float:
    return n // turns if n % turns == 0 else n / turns


def section_turns(ctx: BenchContext) -> list[Row]:
    """Build the Stream-R1 recipe (or the plain recipe where the size has no reward), fit it with a probe, and
    measure the turns inside the fit."""
    layers = tuple(stream_r1_configs(ctx.configs_dir)) if ctx.size.stream_r1 else ()
    cli = ctx.build(layers=layers, fresh=True)  # the fit trains the module: a fresh one, not shared
    return run_in_fit(cli, lambda trainer, m: measure_turns(ctx, trainer, m))
