"""The DMD module: rollout structure, schedule, accumulation, the weighting extension point, bad input."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from streamr1.context import LossWeighting, RolloutContext
from streamr1.data import PromptDataModule
from streamr1.losses import dmd_loss
from streamr1.models import CausalWanDenoiser, HashTextEncoder, IdentityVAE, WanDenoiser
from streamr1.module import DMDModule
from streamr1.rollout import self_forcing_rollout
from tests.helpers import WAN_TINY, tiny_module

PROMPTS = ["a red circle moving left", "a blue square moving up", "a green triangle moving right"]


def _trainer(**kw) -> pl.Trainer:
    kw.setdefault("max_steps", 12)
    return pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, **kw)


class _Recorder:
    """Wraps a student's chunk_x0 and records (grad enabled, write, t) of each call."""

    def __init__(self, student):
        self.calls = []
        self.inner = student.chunk_x0
        student.chunk_x0 = self

    def __call__(self, x_t, t, cond, cache, write=False):
        self.calls.append((torch.is_grad_enabled(), write, float(t[0])))
        return self.inner(x_t, t, cond, cache, write=write)


@pytest.mark.parametrize("exit_index", [0, 2, 3])
def test_rollout_grad_only_at_exit_step_and_cache_written_at_t0(exit_index):
    m = tiny_module(frames=6, chunk=2)
    rec = _Recorder(m.student)
    cond = m.encode_prompts(PROMPTS[:2])
    x = self_forcing_rollout(m.student, torch.randn(2, 6, 3, 8, 8), cond, m.steps, exit_index, grad=True)
    assert x.shape == (2, 6, 3, 8, 8) and x.requires_grad
    per_chunk = exit_index + 2  # e no-grad steps, one grad step, one cache write
    assert len(rec.calls) == 3 * per_chunk
    for c in range(3):
        calls = rec.calls[c * per_chunk:(c + 1) * per_chunk]
        assert [g for g, _, _ in calls] == [False] * exit_index + [True, False]
        assert [w for _, w, _ in calls] == [False] * (exit_index + 1) + [True]
        assert [t for _, _, t in calls[:-1]] == pytest.approx(m.steps[: exit_index + 1])
        assert calls[-1][2] == 0.0


def test_no_gradient_through_the_cache_into_earlier_chunks():
    m = tiny_module(frames=4, chunk=2)
    noise = torch.randn(1, 4, 3, 8, 8, requires_grad=True)
    x = self_forcing_rollout(m.student, noise, m.encode_prompts(PROMPTS[:1]), m.steps, exit_index=0, grad=True)
    (g_first,) = torch.autograd.grad(x[:, 2:].sum(), noise, retain_graph=True)
    assert g_first[:, :2].abs().max() == 0  # chunk 2 does not see chunk 1's noise except through the detached cache
    assert g_first[:, 2:].abs().max() > 0
    (g_own,) = torch.autograd.grad(x[:, :2].sum(), noise)
    assert g_own[:, :2].abs().max() > 0


def test_schedule_counts_critic_every_cycle_student_every_fifth():
    m = tiny_module()
    trainer = _trainer(max_steps=8)
    trainer.fit(m, datamodule=PromptDataModule(prompts=PROMPTS, batch_size=1))
    # 6 cycles: critic 6 steps, student at cycles 0 and 5; Lightning's global_step counts both (8)
    assert (m.critic_steps, m.student_steps, trainer.global_step) == (6, 2, 8)


def test_gradient_accumulation_averages_micro_batches(monkeypatch):
    m = tiny_module(accumulate=2, student_every=1000, grad_clip=0.0)
    seen = []

    def fake_critic_loss(cond):  # loss = k * sum(params): its gradient is k everywhere
        k = float(m.micro_batches % 2 + 1)
        return k * sum(p.sum() for p in m.critic.parameters())

    monkeypatch.setattr(m, "critic_loss", fake_critic_loss)

    class Probe(Callback):
        def on_train_start(self, trainer, pl_module):
            opt = trainer.optimizers[1]
            opt.register_step_pre_hook(lambda o, a, k: seen.append(
                torch.cat([p.grad.flatten() for g in o.param_groups for p in g["params"]])))

    trainer = _trainer(max_steps=-1, max_epochs=1, limit_train_batches=4, callbacks=[Probe()])
    monkeypatch.setattr(m, "student_loss", lambda *a: pytest.fail("student turn not expected"))
    # student_every=1000 still trains the student at cycle 0: skip it by starting at cycle 1
    m.micro_batches = 2
    trainer.fit(m, datamodule=PromptDataModule(prompts=PROMPTS, batch_size=1))
    assert len(seen) == 2  # 4 micro-batches, 2 per cycle
    for grads in seen:
        assert torch.allclose(grads, torch.full_like(grads, (1.0 + 2.0) / 2))


class _Weigh(Callback):
    def __init__(self, w_inter=None, w_intra=None):
        self.w_inter, self.w_intra, self.contexts = w_inter, w_intra, []

    def weight_rollout(self, trainer, pl_module, ctx: RolloutContext) -> None:
        self.contexts.append(ctx)
        if self.w_inter is not None:
            ctx.rollout_weight = torch.full((ctx.batch_size,), self.w_inter)
        if self.w_intra is not None:
            ctx.element_weight = self.w_intra(ctx)


def test_weighting_extension_point_changes_the_loss_exactly_as_specified():
    assert isinstance(_Weigh(), LossWeighting)
    m = tiny_module()
    cond = m.encode_prompts(PROMPTS[:2])

    def loss_with(callbacks):
        trainer = _trainer(callbacks=callbacks)
        m._trainer = trainer  # attach without fitting
        torch.manual_seed(3)
        m._control_rng.manual_seed(3)
        loss, ctx = m.student_loss(PROMPTS[:2], cond)
        return loss, ctx

    plain, ctx0 = loss_with([])
    assert ctx0.rollout_weight is None and ctx0.element_weight is None
    # plain DMD value: 0.5 * mean(g^2)
    assert float(plain) == pytest.approx(0.5 * float((ctx0.dmd_grad**2).mean()), rel=1e-5)
    rec = _Weigh()
    same, _ = loss_with([rec])
    assert float(same) == float(plain) and len(rec.contexts) == 1
    doubled, _ = loss_with([_Weigh(w_inter=2.0)])
    assert float(doubled) == pytest.approx(2 * float(plain), rel=1e-5)

    def ramp(ctx):
        b, f, _, h, w = ctx.x.shape
        return torch.linspace(0.5, 1.5, f).view(1, f, 1, 1, 1).expand(b, f, 1, h, w)

    weighted, ctx = loss_with([_Weigh(w_intra=ramp)])
    assert float(weighted) == pytest.approx(float(dmd_loss(ctx.x, ctx.dmd_grad, None, ramp(ctx))), rel=1e-5)
    m._trainer = None


def test_weighting_callbacks_run_in_list_order():
    order = []

    class A(Callback):
        def weight_rollout(self, trainer, pl_module, ctx):
            order.append("A")
            ctx.cache["a"] = 1

    class B(Callback):
        def weight_rollout(self, trainer, pl_module, ctx):
            order.append("B")
            assert ctx.cache["a"] == 1

    m = tiny_module()
    m._trainer = _trainer(callbacks=[A(), B()])
    m.student_loss(PROMPTS[:1], m.encode_prompts(PROMPTS[:1]))
    assert order == ["A", "B"]
    m._trainer = None


def test_incompatible_sizes_fail_before_training_with_a_fix():
    with pytest.raises(ValueError, match="multiple of the student's chunk_frames=3"):
        tiny_module(frames=4, chunk=3)
    four = dict(WAN_TINY, in_channels=4, out_channels=4)
    with pytest.raises(ValueError, match="teacher works on 4 latent channels"):
        DMDModule(student=CausalWanDenoiser(config=WAN_TINY, chunk_frames=2), teacher=WanDenoiser(config=four),
                  critic=WanDenoiser(config=WAN_TINY), text_encoder=HashTextEncoder(16, 4), vae=IdentityVAE(),
                  latent_shape=(4, 3, 8, 8))
    with pytest.raises(ValueError, match="expects text embeddings of size 16 but the text encoder gives 8"):
        DMDModule(student=CausalWanDenoiser(config=WAN_TINY, chunk_frames=2), teacher=WanDenoiser(config=WAN_TINY),
                  critic=WanDenoiser(config=WAN_TINY), text_encoder=HashTextEncoder(8, 4), vae=IdentityVAE(),
                  latent_shape=(4, 3, 8, 8))


def test_missing_weights_path_names_the_key(tmp_path):
    with pytest.raises(FileNotFoundError, match="Point `pretrained` at a local diffusers folder"):
        WanDenoiser(pretrained=str(tmp_path / "nope"))


def test_empty_prompt_file_fails_with_a_fix(tmp_path):
    p = tmp_path / "prompts.txt"
    p.write_text("\n   \n# a comment\n")
    with pytest.raises(ValueError, match="is empty: it needs at least one non-blank line"):
        PromptDataModule(prompts_file=str(p))
    with pytest.raises(FileNotFoundError, match="Prompt file not found"):
        PromptDataModule(prompts_file=str(tmp_path / "missing.txt"))


def test_state_dict_file_loads_into_the_same_config(tmp_path):
    a = WanDenoiser(config=WAN_TINY)
    path = tmp_path / "w.pt"
    torch.save(a.transformer.state_dict(), path)
    b = WanDenoiser(pretrained=str(path), config=WAN_TINY)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb)
    with pytest.raises(ValueError, match="does not fit the architecture in `config`"):
        WanDenoiser(pretrained=str(path), config=dict(WAN_TINY, num_layers=3))
