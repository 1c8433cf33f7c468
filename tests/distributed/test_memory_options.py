"""Memory options for large teachers, in one process on CPU: activation checkpointing, bf16, teacher offload,
and FSDP2 sharding (``configure_model``) on a one-process gloo group."""

from __future__ import annotations

import socket

import lightning.pytorch as pl
import pytest
import torch

import streamr1.module as module_lib
from streamr1.data import PromptDataModule
from streamr1.models import CausalWanDenoiser, HashTextEncoder, IdentityVAE, WanDenoiser
from streamr1.module import DMDModule
from tests.helpers import WAN_TINY, grouped, tiny_module

PROMPTS = ["a red circle moving left", "a blue square moving up"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _module(checkpointing: bool = False, **kwargs) -> DMDModule:
    torch.manual_seed(0)  # same weights for every call
    return DMDModule(
        student=CausalWanDenoiser(config=WAN_TINY, chunk_frames=2, gradient_checkpointing=checkpointing),
        teacher=WanDenoiser(config=WAN_TINY),
        critic=WanDenoiser(config=WAN_TINY, gradient_checkpointing=checkpointing),
        text_encoder=HashTextEncoder(dim=16, length=4), vae=IdentityVAE(), latent_shape=(4, 3, 8, 8),
        **grouped({"student_every": 2, **kwargs}),
    )


def _fit(m: DMDModule, max_steps: int, **kw) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_steps=max_steps, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **kw)
    trainer.fit(m, datamodule=PromptDataModule(prompts=PROMPTS, batch_size=2))
    return trainer


def _count_calls(block: torch.nn.Module, calls: list[int], tag: int) -> None:
    forward = block.forward  # patched, not hooked: checkpoint recomputation does not run forward hooks

    def counted(*args, **kwargs):
        calls.append(tag)
        return forward(*args, **kwargs)

    block.forward = counted


def _turn_grads(m: DMDModule, block_calls: list[int], saved: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Gradients of one student turn and one critic turn from fixed seeds.

    Counts the calls of each model's first block in ``block_calls`` (0 student, 1 critic) and the elements autograd
    saves for backward during the student's forward in ``saved``.
    """
    _count_calls(m.student.transformer.blocks[0], block_calls, 0)
    _count_calls(m.critic.transformer.blocks[0], block_calls, 1)
    m.train()
    cond = m.encode_prompts(PROMPTS)
    torch.manual_seed(1)
    m._control_rng.manual_seed(1)
    numel = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        numel[0] += t.numel()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss_s, _ = m.student_loss(PROMPTS, cond)
    if saved is not None:
        saved.append(numel[0])
    loss_s.backward()
    loss_c = m.critic_loss(cond)
    loss_c.backward()
    return {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


def test_activation_checkpointing_recomputes_blocks_and_gives_the_same_gradients():
    plain_calls: list[int] = []
    ckpt_calls: list[int] = []
    saved: list[int] = []
    plain = _turn_grads(_module(False), plain_calls, saved)
    ckpt = _turn_grads(_module(True), ckpt_calls, saved)
    assert plain.keys() == ckpt.keys() and any(k.startswith("student.") for k in plain)
    for k in plain:
        torch.testing.assert_close(ckpt[k], plain[k], rtol=1e-5, atol=1e-6)
    # the blocks of the grad-enabled forwards run again in backward: the student's exit step of each of the 2 chunks,
    # and the critic's one forward of its turn
    assert ckpt_calls.count(0) == plain_calls.count(0) + 2
    assert ckpt_calls.count(1) == plain_calls.count(1) + 1
    # what it saves: the blocks' activations are not kept for backward (only their inputs)
    assert saved[1] < saved[0] / 3


def test_activation_checkpointing_trains_under_the_trainer():
    m = _module(True)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    _fit(m, max_steps=3)  # cycles 0 (student + critic) and 1 (critic)
    assert (m.student_steps, m.critic_steps) == (1, 2)
    for prefix in ("student.", "critic."):
        assert any(not torch.equal(before[k], v) for k, v in m.state_dict().items() if k.startswith(prefix))


@pytest.mark.parametrize("precision", ["bf16-mixed", "bf16-true"])
def test_bf16_precision_runs_the_manual_optimization(precision):
    m = _module()
    before = {k: v.clone().float() for k, v in m.state_dict().items()}
    seen: list[torch.dtype] = []
    m.student.transformer.blocks[0].ffn.net[0].proj.register_forward_hook(lambda mod, i, o: seen.append(o.dtype))
    losses: list[float] = []
    critic_loss = m.critic_loss
    m.critic_loss = lambda cond: losses.append(float(out := critic_loss(cond))) or out  # type: ignore[method-assign]
    _fit(m, max_steps=5, precision=precision)  # cycles 0..2: 3 critic steps, student at 0 and 2
    assert (m.student_steps, m.critic_steps) == (2, 3)
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))
    assert set(seen) == {torch.bfloat16}  # the student really computed in bf16
    expected = torch.bfloat16 if precision == "bf16-true" else torch.float32
    assert next(m.student.parameters()).dtype == next(m.critic.parameters()).dtype == expected
    for prefix in ("student.", "critic."):
        changed = [not torch.equal(before[k], v.float()) for k, v in m.state_dict().items() if k.startswith(prefix)]
        assert sum(changed) > len(changed) // 2, prefix


def test_offload_teacher_moves_it_in_only_around_its_forward(monkeypatch):
    moves: list[tuple[str, str]] = []
    real_move = module_lib.move_parameters

    def record(mod, device):
        moves.append(("move", torch.device(device).type))
        real_move(mod, device)

    monkeypatch.setattr(module_lib, "move_parameters", record)
    ref, off = _module(), _module(offload_teacher=True)
    assert off.memory.offload_teacher and not ref.memory.offload_teacher
    assert off.hparams.memory == {"offload_teacher": True}  # a plain dict in hparams (weights_only checkpoints)
    forward = off.teacher.forward

    def teacher_forward(*args):
        moves.append(("forward", next(off.teacher.parameters()).device.type))
        return forward(*args)

    off.teacher.forward = teacher_forward
    x_t, t = torch.randn(2, 4, 3, 8, 8), torch.full((2,), 500.0)
    cond = ref.encode_prompts(PROMPTS)
    assert moves == []  # the reference module never moves its teacher
    torch.testing.assert_close(off.teacher_x0(x_t, t, cond), ref.teacher_x0(x_t, t, cond), rtol=0, atol=0)
    assert moves == [("move", "cpu"), ("forward", "cpu"), ("move", "cpu")]  # x_t's device, forward, back to host
    moves.clear()
    off.teacher.forward = lambda *a: (_ for _ in ()).throw(RuntimeError("teacher failed"))
    with pytest.raises(RuntimeError, match="teacher failed"):
        off.teacher_x0(x_t, t, cond)
    assert moves == [("move", "cpu"), ("move", "cpu")]  # moved back out even when the forward raises
    moves.clear()
    off.teacher.forward = forward
    _fit(off, max_steps=2)
    assert moves[0] == ("move", "cpu")  # on_fit_start takes the teacher off the device the strategy put it on
    assert len(moves) == 1 + 2  # then one round trip for the one student turn


def test_configure_model_is_a_no_op_without_a_device_mesh():
    m = tiny_module()
    params = [id(p) for p in m.parameters()]
    m.configure_model()
    assert [id(p) for p in m.parameters()] == params
    assert not any(type(p).__name__ == "DTensor" for p in m.parameters())


def test_configure_model_refuses_tensor_parallel_meshes():
    class Dim:
        def __init__(self, n: int) -> None:
            self.n = n

        def size(self) -> int:
            return self.n

    class Mesh:
        mesh_dim_names = ("data_parallel", "tensor_parallel")
        shape = (1, 2)

        def __getitem__(self, name: str) -> Dim:
            return Dim(dict(zip(self.mesh_dim_names, self.shape, strict=True))[name])

    m = tiny_module()
    m._device_mesh = Mesh()
    with pytest.raises(ValueError, match="set the strategy's `data_parallel_size` to the number of processes"):
        m.configure_model()


@pytest.fixture
def one_process_group():
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1, 1), mesh_dim_names=("data_parallel", "tensor_parallel"))
    finally:
        dist.destroy_process_group()


def test_sharded_models_compute_what_unsharded_ones_do(one_process_group):
    """FSDP2 on a one-process mesh: every model sharded, the causal student's KV-cache processors still work."""
    from torch.distributed.tensor import DTensor

    plain = _turn_grads(_module(), [])
    m = _module()
    m._device_mesh = one_process_group
    m.configure_model()
    params = {n: id(p) for n, p in m.named_parameters()}
    m.configure_model()  # idempotent: the second call changes nothing
    assert {n: id(p) for n, p in m.named_parameters()} == params
    for name in ("student", "critic", "teacher"):
        assert all(isinstance(p, DTensor) for p in getattr(m, name).parameters()), name
    sharded = _turn_grads(m, [])
    assert sharded.keys() == plain.keys()
    for k in plain:
        torch.testing.assert_close(sharded[k].full_tensor(), plain[k], rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in m.teacher.parameters())
    # the frozen models stay out of the state dict (and so out of sharded checkpoints), sharded or not
    assert not [k for k in m.state_dict() if k.startswith(("teacher.", "text_encoder.", "vae."))]
