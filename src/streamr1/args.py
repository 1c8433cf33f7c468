"""Grouped arguments of :class:`~streamr1.module.DMDModule` (the way litgpt groups ``TrainArgs`` / ``EvalArgs``).

Each group is a frozen dataclass, so a default instance in a signature can be shared safely, and each field has a
docstring that ``streamr1 fit --help`` shows as ``--model.<group>.<field>``. In YAML::

    model:
      sampling: {denoising_steps: [1000, 750, 500, 250], shift: 5.0}
      dmd: {guidance_scale: 3.0, student_every: 5, accumulate: 8, grad_clip: 10.0}
      memory: {offload_teacher: true}

Hyperparameters and checkpoints hold the groups as plain dicts (:func:`as_dict`): a dataclass object in a
checkpoint would make it unloadable with ``torch.load(weights_only=True)``; :func:`coerce` turns either form back.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, TypeVar


@dataclass(frozen=True)
class SamplingArgs:
    """How the student generates a video (SPEC.md §2).

    Args:
        denoising_steps: the student's few-step list before the shift (Self-Forcing: 1000, 750, 500, 250).
        shift: timestep shift factor ``k`` (5 for Wan): ``t' = 1000 k u / (1 + (k - 1) u)``.
    """

    denoising_steps: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
    shift: float = 5.0

    def __post_init__(self) -> None:
        steps = tuple(float(s) for s in self.denoising_steps)
        if not steps or any(not 0 < s <= 1000 for s in steps) or list(steps) != sorted(steps, reverse=True):
            raise ValueError(
                f"sampling.denoising_steps must be decreasing values in (0, 1000], got {list(self.denoising_steps)}."
            )
        if self.shift <= 0:
            raise ValueError(f"sampling.shift must be > 0, got {self.shift}.")
        object.__setattr__(self, "denoising_steps", steps)


@dataclass(frozen=True)
class DMDArgs:
    """The DMD objective and the student/critic turn schedule (SPEC.md §3).

    Args:
        guidance_scale: teacher classifier-free guidance ``g_s`` (SPEC §3.2).
        negative_prompt: text of the guidance's unconditional branch.
        min_timestep: lower clamp of the DMD timestep (SPEC §3.1).
        max_timestep: upper clamp of the DMD timestep.
        student_every: the student takes an optimizer step every this many optimizer cycles; the critic every one.
        accumulate: micro-batches per optimizer cycle (the Trainer's own flag is refused under manual optimization).
            Effective batch = micro-batch x devices x accumulate.
        grad_clip: max global grad norm of each optimizer (SPEC §3.6: 10); 0 disables clipping.
        critic_init_from_student: copy the student's weights into the critic at the start of fit when their
            architectures match (when the critic has no pretrained weights of its own).
    """

    guidance_scale: float = 3.0
    negative_prompt: str = ""
    min_timestep: float = 20.0
    max_timestep: float = 980.0
    student_every: int = 5
    accumulate: int = 1
    grad_clip: float = 10.0
    critic_init_from_student: bool = False

    def __post_init__(self) -> None:
        if not 0 <= self.min_timestep < self.max_timestep <= 1000:
            raise ValueError(
                f"dmd.min_timestep < dmd.max_timestep within [0, 1000] is required, got {self.min_timestep} and "
                f"{self.max_timestep}."
            )
        if self.student_every < 1 or self.accumulate < 1:
            raise ValueError(
                f"dmd.student_every and dmd.accumulate must be >= 1, got {self.student_every} and {self.accumulate}."
            )
        if self.grad_clip < 0:
            raise ValueError(f"dmd.grad_clip must be >= 0 (0 disables it), got {self.grad_clip}.")


@dataclass(frozen=True)
class MemoryArgs:
    """Memory switches that change where weights live, not what is computed.

    Args:
        offload_teacher: keep the teacher's parameters on the CPU and move them to the compute device only for its
            forward (saves the teacher's whole size of accelerator memory between uses, e.g. 28 GB for a bf16 14B
            teacher, at the cost of two host-device copies per student turn). Under FSDP2 the sharded teacher is
            offloaded by FSDP instead (``CPUOffloadPolicy``).
    """

    offload_teacher: bool = False


T = TypeVar("T")


def coerce(cls: type[T], value: T | dict[str, Any] | None) -> T:
    """``value`` as a ``cls`` instance: itself, built from a dict (hyperparameters, a checkpoint), or the default."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(value) - known)
        if unknown:
            raise ValueError(f"Unknown {cls.__name__} keys {unknown}; known: {sorted(known)}.")
        return cls(**value)
    raise TypeError(f"Expected {cls.__name__} or a dict, got {type(value).__name__}.")


def as_dict(value: Any) -> dict[str, Any]:
    """A group as a plain dict of plain values (lists for tuples), safe in a ``weights_only`` checkpoint."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(value).items()}
