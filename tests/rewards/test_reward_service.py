"""The shared reward service: one forward and one batched backward per rollout (SPEC.md §4.1, §4.3, §4.5)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F_
from torch import nn

from streamr1.callbacks.balancing import AdaptiveAxisBalancing
from streamr1.callbacks.reliability import ReliabilityWeighting
from streamr1.callbacks.saliency import SaliencyWeighting
from streamr1.context import RolloutContext, weighting_callbacks
from streamr1.rewards.result import RewardResult
from streamr1.rewards.service import RewardService, find_reward_service

B, F, H, W = 2, 4, 8, 8  # latent grid; the toy decoder below doubles H and W
PROMPTS = ["a red circle moving left", "a blue square moving up"]
STATS = {"VQ": {"mean": 0.0, "std": 0.5}, "MQ": {"mean": 0.1, "std": 2.0}, "TA": {"mean": -0.1, "std": 1.0}}


def decode(z: torch.Tensor) -> torch.Tensor:
    """Latents ``[B, F, 3, h, w]`` -> pixels ``[B, F, 3, 2h, 2w]`` in ``[-1, 1]``, differentiable."""
    b, f = z.shape[:2]
    return torch.tanh(F_.interpolate(z.flatten(0, 1), scale_factor=2, mode="bilinear")).view(b, f, 3, *(
        2 * s for s in z.shape[-2:]))


def latents(seed: int = 0) -> torch.Tensor:
    return torch.randn(B, F, 3, H, W, generator=torch.Generator().manual_seed(seed))


def make_ctx(step: int = 0, seed: int = 0, dec=decode) -> RolloutContext:
    x = latents(seed)
    return RolloutContext(x=x, dmd_grad=torch.zeros_like(x), prompts=list(PROMPTS), cond=torch.zeros(B, 1, 4),
                          decode=dec, student_step=step)


def make_trainer(callbacks: list[pl.Callback]) -> pl.Trainer:
    return pl.Trainer(callbacks=callbacks, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)


def set_up(callbacks: list[pl.Callback]) -> tuple[pl.Trainer, pl.LightningModule]:
    trainer, module = make_trainer(callbacks), pl.LightningModule()
    for cb in callbacks:
        cb.setup(trainer, module, "fit")
    return trainer, module


def student_turn(trainer: pl.Trainer, module: pl.LightningModule, ctx: RolloutContext) -> RolloutContext:
    """What DMDModule.student_loss does with the weighting callbacks."""
    for cb in weighting_callbacks(trainer):
        cb.weight_rollout(trainer, module, ctx)
    return ctx


def test_one_forward_one_backward_per_student_turn_with_every_consumer(tiny_reward):
    service = RewardService(tiny_reward, normalization=STATS)
    cbs = [service, AdaptiveAxisBalancing(), ReliabilityWeighting(reward_mode="BalancedOverall"),
           SaliencyWeighting(heatmap_every_n_steps=0)]
    trainer, module = set_up(cbs)
    assert service.saliency_enabled  # auto: SaliencyWeighting.needs_saliency
    assert find_reward_service(trainer) is service and service not in weighting_callbacks(trainer)
    ctx = student_turn(trainer, module, make_ctx())
    assert (service.forward_calls, service.backward_calls) == (1, 1)
    result = ctx.reward
    assert isinstance(result, RewardResult) and result.axes == ("VQ", "MQ", "TA")
    assert service.evaluate(ctx) is result and service.forward_calls == 1  # cached: every callback reads it
    for axis in result.axes:
        assert result.raw[axis].shape == (B,) and result.normalized[axis].shape == (B,)
        assert result.saliency[axis].shape == (B, F, H, W)  # resized onto the latent grid
        assert result.pixel_saliency[axis].shape == (B, F, 2 * H, 2 * W)
        assert (result.saliency[axis] >= 0).all() and result.saliency[axis].sum() > 0
        expected = (result.raw[axis] - STATS[axis]["mean"]) / STATS[axis]["std"]
        assert torch.allclose(result.normalized[axis], expected)
    assert result.pixels.shape == (B, F, 3, 2 * H, 2 * W) and 0 <= result.pixels.min() <= result.pixels.max() <= 1
    assert ctx.rollout_weight.shape == (B,) and ctx.element_weight.shape == (B, F, 1, H, W)
    for key in ("reward/VQ", "reward/MQ_norm", "reward/nonfinite", "reward/TA_running_mean", "weights/intra_std"):
        assert key in ctx.logs, key
    assert not any(p.requires_grad for p in tiny_reward.parameters()) and not tiny_reward.training
    student_turn(trainer, module, make_ctx(step=1, seed=1))
    assert (service.forward_calls, service.backward_calls) == (2, 2)


def test_batched_backward_equals_one_backward_per_axis(tiny_reward):
    batched = RewardService(tiny_reward, saliency=True)
    separate = RewardService(tiny_reward, saliency=True, batched_backward=False)
    a, b = batched.evaluate(make_ctx()), separate.evaluate(make_ctx())
    assert (batched.backward_calls, separate.backward_calls) == (1, 3)
    assert separate.batched_grad_fallbacks == 0  # asked for, not a fallback
    for axis in a.axes:
        assert torch.allclose(a.saliency[axis], b.saliency[axis], atol=1e-6, rtol=0)
        assert torch.allclose(a.pixel_saliency[axis], b.pixel_saliency[axis], atol=1e-6, rtol=0)
        assert torch.equal(a.raw[axis], b.raw[axis])
    # and by hand for one axis: the norm over RGB of d VQ / d pixels
    pixels = ((decode(latents()) + 1) / 2).clamp(0, 1).requires_grad_(True)
    (g,) = torch.autograd.grad(tiny_reward(pixels, PROMPTS)["VQ"].sum(), pixels)
    assert torch.allclose(a.pixel_saliency["VQ"], g.norm(dim=2), atol=1e-6, rtol=0)


def test_fallback_when_the_batched_backward_raises(tiny_reward, monkeypatch):
    reference = RewardService(tiny_reward, saliency=True).evaluate(make_ctx())
    real_grad = torch.autograd.grad

    def no_vmap(*args, **kwargs):
        if kwargs.get("is_grads_batched"):
            raise RuntimeError("Batching rule not implemented for aten::fancy_op")
        return real_grad(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", no_vmap)
    service = RewardService(tiny_reward, saliency=True)
    with pytest.warns(UserWarning, match="batched saliency backward failed"):
        result = service.evaluate(make_ctx())
    assert (service.batched_grad_fallbacks, service.backward_calls, service.forward_calls) == (1, 3, 1)
    for axis in result.axes:
        assert torch.allclose(result.saliency[axis], reference.saliency[axis], atol=1e-6, rtol=0)
    service.evaluate(make_ctx(seed=1))  # no second attempt at the batched pass
    assert (service.batched_grad_fallbacks, service.backward_calls) == (2, 6)


def test_latent_space_saliency_goes_through_the_decoder(tiny_reward):
    def identity(z):
        return z

    x = latents().clamp(-0.9, 0.9)  # no clamping in (x + 1) / 2: d pixels / d x = 1/2 everywhere

    def ctx() -> RolloutContext:
        return RolloutContext(x=x, dmd_grad=torch.zeros_like(x), prompts=PROMPTS, cond=x, decode=identity)

    lat = RewardService(tiny_reward, saliency=True, saliency_space="latent").evaluate(ctx())
    pix = RewardService(tiny_reward, saliency=True).evaluate(ctx())
    for axis in lat.axes:
        assert lat.saliency[axis].shape == (B, F, H, W)
        assert torch.allclose(lat.saliency[axis], 0.5 * pix.saliency[axis], atol=1e-6, rtol=1e-5)
        assert torch.allclose(lat.pixel_saliency[axis], pix.pixel_saliency[axis], atol=1e-6, rtol=1e-5)


class NaNForSampleOne:
    """A reward model that is not ours (not even an nn.Module): the service only needs the protocol."""

    def __call__(self, video, prompts):
        s = video.mean(dim=(1, 2, 3, 4))
        bad = torch.arange(video.shape[0]) == 1
        return {"VQ": torch.where(bad, torch.full_like(s, math.nan), s), "MQ": 2 * s, "TA": -s, "aesthetic": s}


def test_nonfinite_reward_is_flagged_counted_and_zeroed():
    service = RewardService(NaNForSampleOne(), normalization=STATS)
    trainer, module = set_up([service, ReliabilityWeighting("Overall"), SaliencyWeighting(heatmap_every_n_steps=0)])
    ctx = student_turn(trainer, module, make_ctx())
    result = ctx.reward
    assert result.valid.tolist() == [True, False]
    assert service.nonfinite_count == 1 and ctx.logs["reward/nonfinite"] == 1.0
    assert math.isnan(result.raw["VQ"][1]) and result.normalized["VQ"][1] == 0.0
    assert torch.isfinite(result.normalized["MQ"]).all()
    assert result.axes == ("VQ", "MQ", "TA")  # only the configured axes
    for axis in result.axes:
        assert result.saliency[axis][1].abs().sum() == 0 and result.saliency[axis][0].sum() > 0
    assert ctx.rollout_weight[1] == 1.0  # the weighting callbacks fall back to 1 for the flagged sample
    assert ctx.logs["reward/VQ"] == result.raw["VQ"][0]  # means over valid samples only
    student_turn(trainer, module, make_ctx(step=1))
    assert service.nonfinite_count == 2


class OnlyVQTA(nn.Module):
    def __init__(self, declare: bool) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.ones(()))
        if declare:
            self.axes = ("VQ", "TA")

    def forward(self, video, prompts):
        s = self.w * video.mean(dim=(1, 2, 3, 4))
        return {"VQ": s, "TA": s}


@pytest.mark.parametrize("declare", [False, True])
def test_setup_rejects_a_model_without_a_configured_axis(declare):
    service = RewardService(OnlyVQTA(declare), normalization=STATS)
    with pytest.raises(ValueError, match=r"missing the configured axes \['MQ'\]"):
        set_up([service])
    ok = RewardService(OnlyVQTA(declare), normalization={k: STATS[k] for k in ("VQ", "TA")}, axes=["VQ", "TA"])
    set_up([ok])  # a subset of axes is fine


def test_setup_errors_and_lookup():
    with pytest.raises(RuntimeError, match="No reward service"):
        find_reward_service(make_trainer([SaliencyWeighting()]))
    two = [RewardService(NaNForSampleOne()), RewardService(NaNForSampleOne())]  # a Trainer refuses it already
    with pytest.raises(RuntimeError, match="exactly one"):
        find_reward_service(SimpleNamespace(callbacks=two))
    with pytest.raises(ValueError, match="SaliencyWeighting"):
        set_up([RewardService(NaNForSampleOne(), normalization=STATS, saliency=False), SaliencyWeighting()])
    with pytest.warns(UserWarning, match="streamr1 calibrate"):
        set_up([RewardService(NaNForSampleOne())])


def test_score_in_a_notebook_and_state_round_trip(tiny_reward):
    service = RewardService(tiny_reward, normalization=STATS, offload_to_cpu=True, keep_pixels=False)
    video = torch.rand(B, 5, 3, 16, 16) * 2 - 1
    plain = service.score(video, PROMPTS)
    assert plain.saliency is None and plain.pixels is None and service.backward_calls == 0
    with torch.inference_mode():  # a notebook habit; saliency still works
        on_pixels = service.score(video, PROMPTS, saliency=True)
    on_latent = service.score(video, PROMPTS, saliency=True, latent_shape=(2, 4, 4))
    assert on_pixels.saliency["MQ"].shape == (B, 5, 16, 16) and on_latent.saliency["MQ"].shape == (B, 2, 4, 4)
    assert on_latent.pixel_saliency is None  # keep_pixels=False
    assert torch.allclose(plain.raw["TA"], on_latent.raw["TA"], atol=1e-6)  # no-grad vs grad kernels
    assert (service.forward_calls, service.backward_calls) == (3, 2)

    restored = RewardService(tiny_reward)
    restored.load_state_dict(service.state_dict())
    assert restored.normalizer.to_dict() == service.normalizer.to_dict() and restored.normalizer.calibrated
    assert (restored.forward_calls, restored.backward_calls, restored.nonfinite_count) == (3, 2, 0)
    assert torch.equal(restored.statistics.count, service.statistics.count)
    for axis, (mean, _) in restored.statistics.compute().items():
        assert mean.item() == pytest.approx(service.statistics.compute()[axis][0].item())


def test_fit_scores_each_student_turn_once_and_checkpoints_the_service(tiny_reward, tmp_path):
    """A real Trainer.fit of the tiny DMD module with the full Stream-R1 callback stack."""
    from streamr1.data import PromptDataModule
    from tests.helpers import tiny_module

    service = RewardService(tiny_reward, normalization=STATS)
    module = tiny_module(frames=4, chunk=2, size=8, student_every=2)
    trainer = pl.Trainer(
        callbacks=[service, AdaptiveAxisBalancing(), ReliabilityWeighting("BalancedOverall"),
                   SaliencyWeighting(heatmap_every_n_steps=0)],
        max_steps=6, accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)
    trainer.fit(module, PromptDataModule(prompts=PROMPTS + ["a green triangle"], batch_size=2))
    assert module.student_steps == 2
    assert (service.forward_calls, service.backward_calls) == (2, 2)  # one of each a student turn, none for critics
    assert not any(m is tiny_reward for m in module.modules())  # never a submodule: DDP/FSDP never see it
    assert {"reward/VQ", "reward/TA_norm", "reward/MQ_running_std"} <= set(trainer.callback_metrics)
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)["callbacks"]["RewardService"]
    assert state["forward_calls"] == 2 and state["normalization"]["MQ"] == pytest.approx(STATS["MQ"])
