"""Stream-R1's weighting callbacks with a fake reward service and hand-built RewardResults (SPEC.md §4)."""

from __future__ import annotations

import importlib
import inspect
import math
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger

from streamr1.callbacks.balancing import AdaptiveAxisBalancing
from streamr1.callbacks.reliability import ReliabilityWeighting
from streamr1.callbacks.saliency import HEATMAP_TAG, SaliencyWeighting, heatmap_frames, saliency_heatmap
from streamr1.context import BalanceResult, RolloutContext, global_sum, weighting_callbacks
from streamr1.losses import dmd_loss
from streamr1.rewards.result import RewardResult

PRESETS = Path(__file__).resolve().parents[2] / "callbacks"
B, F, C, H, W = 2, 3, 4, 4, 4


class FakeService(Callback):
    """Stands in for streamr1.rewards.service.RewardService (a ``streamr1.context.RewardSource``): returns a fixed
    result, kept on the context."""

    def __init__(self, result: RewardResult) -> None:
        self.result = result
        self.calls = 0

    def evaluate(self, ctx: RolloutContext) -> RewardResult:
        if ctx.reward is None:
            self.calls += 1
            ctx.reward = self.result
        return ctx.reward


def make_result(normalized: dict[str, list[float]], valid: list[bool] | None = None, saliency: bool = True,
                pixels: bool = True) -> RewardResult:
    norm = {a: torch.tensor(v) for a, v in normalized.items()}
    b = len(next(iter(norm.values())))
    sal = {a: torch.rand(b, F, H, W) * (i + 1) for i, a in enumerate(norm)} if saliency else None
    return RewardResult(
        raw={a: v.clone() for a, v in norm.items()},
        normalized=norm,
        valid=torch.tensor(valid if valid is not None else [True] * b),
        saliency=sal,
        pixels=torch.rand(b, 5, 3, 8, 8) if pixels else None,
    )


def make_ctx(student_step: int = 0, b: int = B) -> RolloutContext:
    x = torch.randn(b, F, C, H, W)
    return RolloutContext(x=x, dmd_grad=torch.randn_like(x), prompts=["a red ball"] * b, cond=torch.zeros(b, 1, 4),
                          decode=lambda z: z, student_step=student_step)


def make_trainer(callbacks: list[Callback], logger: Any = False) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", devices=1, logger=logger, callbacks=callbacks, enable_checkpointing=False,
                      enable_progress_bar=False, enable_model_summary=False)


def run(trainer: pl.Trainer, ctx: RolloutContext) -> RolloutContext:
    """What DMDModule.student_loss does: setup, then every LossWeighting in list order."""
    module = pl.LightningModule()
    for cb in trainer.callbacks:
        cb.setup(trainer, module, "fit")
    for cb in weighting_callbacks(trainer):
        cb.weight_rollout(trainer, module, ctx)
    return ctx


NORM = {"VQ": [1.0, -1.0], "MQ": [0.5, 2.0], "TA": [0.0, 2.0]}


# ----------------------------------------------------------------------------------------------- reliability


@pytest.mark.parametrize(("mode", "r_final"), [
    ("MQ", [0.5, 2.0]), ("VQ", [1.0, -1.0]), ("TA", [0.0, 2.0]), ("Overall", [0.5, 1.0]),
])
def test_reliability_modes(mode: str, r_final: list[float]):
    service = FakeService(make_result(NORM))
    ctx = run(make_trainer([service, ReliabilityWeighting(reward_mode=mode, beta=2.0)]), make_ctx())
    expected = torch.exp(2 * torch.tensor(r_final))
    assert torch.allclose(ctx.rollout_weight, expected)
    assert not ctx.rollout_weight.requires_grad
    assert float(ctx.logs["weights/inter_mean"]) == pytest.approx(float(expected.mean()), rel=1e-6)
    assert float(ctx.logs["weights/inter_min"]) == pytest.approx(float(expected.min()), rel=1e-6)
    assert float(ctx.logs["weights/inter_max"]) == pytest.approx(float(expected.max()), rel=1e-6)
    assert torch.allclose(ctx.logs["weights/inter"], expected)  # histogram at student step 0
    assert ctx.logs["weights/nonfinite_fallback"] == 0.0
    assert service.calls == 1


def test_reliability_balanced_reads_penalty_and_multiplies():
    cb = ReliabilityWeighting(reward_mode="BalancedOverall", beta=2.0, log_histogram_every_n_steps=10)
    ctx = make_ctx(student_step=3)
    ctx.reward = make_result(NORM)
    ctx.balance = BalanceResult(penalty=0.4, lam=0.5)
    ctx.rollout_weight = torch.tensor([2.0, 3.0])
    cb.weight_rollout(make_trainer([cb]), pl.LightningModule(), ctx)
    # r_final = Overall - 0.5 * 0.4 = (0.3, 0.8); multiplied into the existing weight
    assert torch.allclose(ctx.rollout_weight, torch.tensor([2.0, 3.0]) * torch.exp(2 * torch.tensor([0.3, 0.8])))
    assert "weights/inter" not in ctx.logs  # student step 3 is not a histogram step


def test_reliability_nonfinite_fallback_counter_and_state():
    cb = ReliabilityWeighting(reward_mode="MQ")
    trainer = make_trainer([FakeService(make_result(NORM, valid=[True, False])), cb])
    ctx = run(trainer, make_ctx())
    assert torch.allclose(ctx.rollout_weight, torch.tensor([math.exp(1.0), 1.0]))
    assert ctx.logs["weights/nonfinite_fallback"] == 1.0
    ctx = run(trainer, make_ctx())
    assert ctx.logs["weights/nonfinite_fallback"] == 2.0
    # an infinite weight falls back too
    cb_inf = ReliabilityWeighting(reward_mode="MQ", beta=1000.0)
    ctx = run(make_trainer([FakeService(make_result(NORM)), cb_inf]), make_ctx())
    assert torch.equal(ctx.rollout_weight, torch.ones(2))
    assert cb_inf.nonfinite_fallback == 2
    # the counters survive a checkpoint
    fresh = ReliabilityWeighting(reward_mode="MQ")
    fresh.load_state_dict(cb.state_dict())
    assert fresh.nonfinite_fallback == 2 and fresh.rollouts_weighted == 4


def test_reliability_logs_kish_effective_sample_size():
    # MQ = (0.5, 2.0): w = (e^1, e^4); ESS = (e + e^4)^2 / (2 (e^2 + e^8)) = 57.3164^2 / 5976.70 = 0.54967
    ctx = run(make_trainer([FakeService(make_result(NORM)), ReliabilityWeighting(reward_mode="MQ")]), make_ctx())
    assert ctx.logs["weights/inter_ess"] == pytest.approx(0.54967, abs=1e-4)
    # equal weights: ESS 1; self-normalisation does not change it (scale-free)
    equal = {"VQ": [0.3, 0.3], "MQ": [0.3, 0.3], "TA": [0.3, 0.3]}
    ctx = run(make_trainer([FakeService(make_result(equal)), ReliabilityWeighting(reward_mode="VQ")]), make_ctx())
    assert ctx.logs["weights/inter_ess"] == pytest.approx(1.0, abs=1e-6)
    ctx = run(make_trainer([FakeService(make_result(NORM)), ReliabilityWeighting(reward_mode="MQ",
                                                                                 self_normalize=True)]), make_ctx())
    assert ctx.logs["weights/inter_ess"] == pytest.approx(0.54967, abs=1e-4)
    # a fallback sample (weight 1, not a reward) is left out: one valid weight is an ESS of 1
    ctx = run(make_trainer([FakeService(make_result(NORM, valid=[True, False])),
                            ReliabilityWeighting(reward_mode="MQ")]), make_ctx())
    assert ctx.logs["weights/inter_ess"] == pytest.approx(1.0, abs=1e-6)


def test_reliability_clip_and_self_normalize():
    norm = {"VQ": [0.0, 0.0, 0.0], "MQ": [0.0, 0.5, -1.0], "TA": [0.0, 0.0, 0.0]}
    cb = ReliabilityWeighting(reward_mode="MQ", clip=[0.5, 2.0], self_normalize=True)
    ctx = run(make_trainer([FakeService(make_result(norm, valid=[True, True, False])), cb]), make_ctx(b=3))
    # clipped (1, 2, fallback); mean over the valid samples 1.5 -> (2/3, 4/3), the fallback stays 1
    assert torch.allclose(ctx.rollout_weight, torch.tensor([2 / 3, 4 / 3, 1.0]))


def test_balanced_overall_without_balancing_fails_at_setup():
    service = FakeService(make_result(NORM))
    rel = ReliabilityWeighting(reward_mode="BalancedOverall")
    with pytest.raises(ValueError, match="add `streamr1.callbacks.balancing.AdaptiveAxisBalancing`.*Overall"):
        run(make_trainer([service, rel]), make_ctx())
    with pytest.raises(ValueError, match="BEFORE ReliabilityWeighting"):
        run(make_trainer([service, rel, AdaptiveAxisBalancing()]), make_ctx())
    ctx = run(make_trainer([service, AdaptiveAxisBalancing(), rel]), make_ctx())
    assert ctx.balance == BalanceResult(penalty=0.0, lam=0.5)  # before the warm-up
    assert torch.allclose(ctx.rollout_weight, torch.exp(2 * torch.tensor([0.5, 1.0])))


def test_global_sum_adds_ranks_in_order():
    class TwoRanks:
        world_size = 2

    class Module:
        device = torch.device("cpu")

        @staticmethod
        def all_gather(t: torch.Tensor) -> torch.Tensor:
            return torch.stack([t, 10 * t])  # what rank 1 holds: ten times rank 0

    out = global_sum(TwoRanks(), Module(), torch.tensor([1.0, 2.0]))  # type: ignore[arg-type]
    assert torch.equal(out, torch.tensor([11.0, 22.0]))


# ----------------------------------------------------------------------------------------------- saliency


@pytest.mark.parametrize(("fusion", "factorize"), [("adaptive", True), ("mean", True), ("max", False)])
def test_saliency_weight_shape_mean_detached(fusion: str, factorize: bool):
    result = make_result(NORM, valid=[True, False])
    for s in result.saliency.values():
        s.requires_grad_()
    cb = SaliencyWeighting(fusion=fusion, factorize=factorize, heatmap_every_n_steps=0)
    ctx = run(make_trainer([FakeService(result), cb]), make_ctx())
    w = ctx.element_weight
    assert w.shape == (B, F, 1, H, W)
    assert not w.requires_grad
    assert float(w[0].mean()) == pytest.approx(1.0, abs=1e-5)
    assert torch.equal(w[1], torch.ones(F, 1, H, W))  # invalid sample -> ones
    assert float(ctx.logs["weights/intra_std"]) > 0
    assert float(ctx.logs["weights/intra_max"]) == pytest.approx(float(w.max()))
    assert ctx.logs["weights/intra_nonfinite_fallback"] == 1.0
    fused = [float(ctx.logs[f"weights/fusion_{a}"]) for a in ("VQ", "MQ", "TA")]
    assert sum(fused) == pytest.approx(1.0, abs=1e-5)
    if fusion == "adaptive":  # sample 0: r = (1, 0.5, 0): TA weakest, weighs most
        assert fused[2] > fused[1] > fused[0]
    assert SaliencyWeighting.needs_saliency is True


def test_saliency_multiplies_and_needs_saliency():
    cb = SaliencyWeighting(heatmap_every_n_steps=0)
    ctx = make_ctx()
    ctx.reward = make_result(NORM)
    ctx.element_weight = torch.full((B, F, 1, H, W), 2.0)
    cb.weight_rollout(make_trainer([cb]), pl.LightningModule(), ctx)
    assert float(ctx.element_weight.mean()) == pytest.approx(2.0, abs=1e-5)
    ctx = make_ctx()
    ctx.reward = make_result(NORM, saliency=False)
    with pytest.raises(RuntimeError, match="needs_saliency"):
        cb.weight_rollout(make_trainer([cb]), pl.LightningModule(), ctx)


def test_heatmap_image_logged_to_tensorboard(tmp_path: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(save_dir=str(tmp_path), name="heat")
    cb = SaliencyWeighting(heatmap_every_n_steps=2)
    trainer = make_trainer([FakeService(make_result(NORM)), cb], logger=logger)
    for step in (0, 0, 1, 2):  # step 0 twice (gradient accumulation): one image; step 1 is off-period
        run(trainer, make_ctx(student_step=step))
    logger.experiment.flush()
    acc = EventAccumulator(logger.log_dir, size_guidance={"images": 0})
    acc.Reload()
    assert HEATMAP_TAG in acc.Tags()["images"]
    events = acc.Images(HEATMAP_TAG)
    assert [e.step for e in events] == [0, 2]
    # 2 strips of 8-pixel frames enlarged to >= 64 rows: [3, 128, 3 frames * 64]
    assert (events[0].height, events[0].width) == (128, 192)
    assert cb.state_dict()["last_heatmap_step"] == 2


def test_heatmap_frames_and_image_deterministic():
    assert heatmap_frames(21, 81, 8) == ([0, 3, 6, 9, 11, 14, 17, 20], [0, 12, 24, 36, 44, 56, 68, 80])
    assert heatmap_frames(4, 4, 8) == ([0, 1, 2, 3], [0, 1, 2, 3])
    sal, pix = torch.rand(3, 4, 4), torch.rand(5, 3, 8, 8)
    img = saliency_heatmap(sal, pix, min_height=8)
    assert img.shape == (3, 16, 24) and 0 <= float(img.min()) and float(img.max()) <= 1
    assert torch.equal(img, saliency_heatmap(sal, pix, min_height=8))
    assert torch.equal(img[:, :8, :8], pix[0])  # top strip: the decoded frames
    assert saliency_heatmap(sal, None, min_height=4).shape == (3, 4, 12)


# ----------------------------------------------------------------------------------------------- balancing


def test_balancing_global_mean_excludes_invalid_and_penalty():
    bal = AdaptiveAxisBalancing(window=4, warmup=4, min_entries=4, lam=0.5)
    trainer = make_trainer([bal])
    # per-axis sequences of the valid sample; the invalid sample carries junk that must not count
    seqs = {"VQ": [1.0, 1.0, 2.0, 2.0], "MQ": [0.0, 0.0, 0.0, 0.0], "TA": [3.0, 1.0, 1.0, 1.0]}
    for i in range(4):
        ctx = make_ctx()
        ctx.reward = make_result({a: [v[i], 100.0] for a, v in seqs.items()}, valid=[True, False])
        bal.weight_rollout(trainer, pl.LightningModule(), ctx)
        if i < 3:
            assert ctx.balance.penalty == 0.0
            assert "weights/balance_D_VQ" not in ctx.logs
    assert bal.state_dict()["history"] == seqs
    # D = (1, 0, -1) -> P = 1 (worked out in tests/weighting)
    assert ctx.balance.penalty == pytest.approx(1.0) and ctx.balance.lam == 0.5
    assert ctx.logs["weights/balance_penalty"] == pytest.approx(1.0)
    assert (ctx.logs["weights/balance_D_VQ"], ctx.logs["weights/balance_D_MQ"], ctx.logs["weights/balance_D_TA"]) \
        == pytest.approx((1.0, 0.0, -1.0))


def test_balancing_state_dict_round_trip(tmp_path: Path):
    bal = AdaptiveAxisBalancing(window=6, warmup=5, min_entries=4)
    trainer = make_trainer([bal])
    results = [make_result({a: torch.randn(B).tolist() for a in ("VQ", "MQ", "TA")}) for _ in range(9)]

    def step(cb: AdaptiveAxisBalancing, result: RewardResult) -> float:
        ctx = make_ctx()
        ctx.reward = result
        cb.weight_rollout(trainer, pl.LightningModule(), ctx)
        return ctx.balance.penalty

    for result in results[:8]:
        step(bal, result)
    path = tmp_path / "state.pt"
    torch.save(bal.state_dict(), path)
    state = torch.load(path, weights_only=True)  # plain lists and ints: loads with weights_only
    fresh = AdaptiveAxisBalancing(window=6, warmup=5, min_entries=4)
    fresh.load_state_dict(state)
    assert fresh.state_dict() == bal.state_dict()
    assert fresh.updates_seen == 8 and all(len(h) == 6 for h in fresh.history.values())
    p_orig, p_fresh = step(bal, results[8]), step(fresh, results[8])
    assert p_orig == p_fresh and p_orig > 0
    assert fresh.state_dict() == bal.state_dict()


# ----------------------------------------------------------------------------------------------- the whole stack


def test_stream_r1_stack_end_to_end():
    service = FakeService(make_result(NORM, valid=[True, True]))
    cbs = [service, AdaptiveAxisBalancing(warmup=0, min_entries=2), ReliabilityWeighting("BalancedOverall"),
           SaliencyWeighting(heatmap_every_n_steps=0)]
    ctx = make_ctx()
    x = ctx.x.clone().requires_grad_()
    ctx = run(make_trainer(cbs), ctx)
    assert service.calls == 1  # scored once, shared by the three callbacks
    assert ctx.rollout_weight.shape == (B,) and ctx.element_weight.shape == (B, F, 1, H, W)
    loss = dmd_loss(x, ctx.dmd_grad, ctx.rollout_weight, ctx.element_weight)
    (grad,) = torch.autograd.grad(loss, x)
    n = x.numel()
    assert torch.allclose(grad, ctx.rollout_weight.view(B, 1, 1, 1, 1) * ctx.element_weight * ctx.dmd_grad / n,
                          atol=1e-7)


# ----------------------------------------------------------------------------------------------- presets


def _class_paths(node: Any) -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "class_path" in node:
            found.append((node["class_path"], node.get("init_args") or {}))
        for v in node.values():
            found.extend(_class_paths(v))
    elif isinstance(node, list):
        for v in node:
            found.extend(_class_paths(v))
    return found


PRESET_FILES = ["dmd", "reward_forcing", "stream_r1", "ablation_no_saliency", "ablation_no_balancing",
                "ablation_unfactorized", "ablation_mean_fusion"]


@pytest.mark.parametrize("name", PRESET_FILES)
def test_presets_parse_and_class_paths_import(name: str, monkeypatch: pytest.MonkeyPatch):
    path = PRESETS / f"{name}.yaml"
    text = path.read_text()
    assert text.startswith("# ") and f"--config callbacks/{name}.yaml" in text.split("trainer:")[0]
    cfg = yaml.safe_load(text)
    callbacks = cfg["trainer"]["callbacks"]
    paths = [p for p, _ in _class_paths(callbacks)]
    weighting = {"ReliabilityWeighting", "SaliencyWeighting", "AdaptiveAxisBalancing"}
    assert not any("rewards" in p for p in paths)  # a reward is its own fragment (configs/rewards/), never a stack's
    if name == "dmd":
        assert not any(p.rsplit(".", 1)[1] in weighting for p in paths)
    if "streamr1.callbacks.balancing.AdaptiveAxisBalancing" in paths:
        assert paths.index("streamr1.callbacks.balancing.AdaptiveAxisBalancing") < paths.index(
            "streamr1.callbacks.reliability.ReliabilityWeighting")
    missing = []
    for class_path, init_args in _class_paths(callbacks):
        module_name, cls_name = class_path.rsplit(".", 1)
        try:
            cls = getattr(importlib.import_module(module_name), cls_name)
        except ModuleNotFoundError as err:
            if not module_name.startswith("streamr1.rewards."):
                raise
            missing.append(f"{class_path} ({err})")
            continue
        params = inspect.signature(cls.__init__).parameters
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            assert set(init_args) <= set(params), f"{class_path} has no argument(s) {set(init_args) - set(params)}"
        if cls_name in weighting:
            cls(**init_args)  # the arguments are valid, not only named right
    if missing:
        pytest.skip(f"reward modules not written yet: {missing}")


def test_extra_reward_axes_are_ignored_by_balancing_and_fusion():
    result = make_result({**NORM, "aesthetic": [5.0, 5.0]})
    del result.saliency["aesthetic"]  # the service computes saliency for the Stream-R1 axes only
    cbs = [FakeService(result), AdaptiveAxisBalancing(), ReliabilityWeighting("Overall"),
           SaliencyWeighting(heatmap_every_n_steps=0)]
    ctx = run(make_trainer(cbs), make_ctx())
    assert list(cbs[1].history) == ["VQ", "MQ", "TA"]
    assert torch.allclose(ctx.rollout_weight, torch.exp(2 * torch.tensor([0.5, 1.0])))  # Overall of the three
    assert "weights/fusion_aesthetic" not in ctx.logs and ctx.element_weight.shape == (B, F, 1, H, W)
