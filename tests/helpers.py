"""Tiny random models shared by the tests (the same classes a real run uses)."""

from __future__ import annotations

import dataclasses
from typing import Any

from lightning.pytorch.callbacks import Callback

from streamr1.args import DMDArgs, MemoryArgs, SamplingArgs
from streamr1.models import CausalWanDenoiser, HashTextEncoder, IdentityVAE, WanDenoiser
from streamr1.module import DMDModule

WAN_TINY: dict[str, Any] = {
    "patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 3,
    "out_channels": 3, "text_dim": 16, "freq_dim": 32, "ffn_dim": 32, "num_layers": 2, "rope_max_seq_len": 64,
}


_GROUPS = {"sampling": SamplingArgs, "dmd": DMDArgs, "memory": MemoryArgs}


def grouped(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Flat test keywords (``student_every=2``) -> DMDModule's argument groups (``dmd=DMDArgs(student_every=2)``)."""
    out = dict(kwargs)
    for group, cls in _GROUPS.items():
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: out.pop(k) for k in list(out) if k in names}
        if values:
            out[group] = dataclasses.replace(out.get(group, cls()), **values)
    return out


def tiny_module(frames: int = 4, chunk: int = 2, size: int = 8, **kwargs: Any) -> DMDModule:
    kwargs.setdefault("student_every", 5)
    kwargs = grouped(kwargs)
    return DMDModule(
        student=CausalWanDenoiser(config=WAN_TINY, chunk_frames=chunk),
        teacher=WanDenoiser(config=WAN_TINY),
        critic=WanDenoiser(config=WAN_TINY),
        text_encoder=HashTextEncoder(dim=16, length=4),
        vae=IdentityVAE(),
        latent_shape=(frames, 3, size, size),
        **kwargs,
    )


class LossRecorder(Callback):
    """Records (turn, micro-batch, loss) of every turn and every exit step drawn, by wrapping the module's
    ``student_loss``, ``critic_loss`` and ``draw_exit_index`` at fit start."""

    def __init__(self) -> None:
        self.losses: list[tuple[str, int, float]] = []
        self.exits: list[int] = []

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        student_loss, critic_loss, draw = pl_module.student_loss, pl_module.critic_loss, pl_module.draw_exit_index

        def rec_student(prompts, cond):
            loss, ctx = student_loss(prompts, cond)
            self.losses.append(("student", pl_module.micro_batches, float(loss.detach())))
            return loss, ctx

        def rec_critic(cond):
            loss = critic_loss(cond)
            self.losses.append(("critic", pl_module.micro_batches, float(loss.detach())))
            return loss

        def rec_draw():
            e = draw()
            self.exits.append(e)
            return e

        pl_module.student_loss, pl_module.critic_loss, pl_module.draw_exit_index = rec_student, rec_critic, rec_draw
