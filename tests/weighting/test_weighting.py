"""The Stream-R1 weight formulas (streamr1.weighting) against values worked out by hand from SPEC.md §4."""

import math

import pytest
import torch

from streamr1.losses import dmd_loss
from streamr1.weighting import (
    axis_drifts,
    balance_penalty,
    effective_sample_size,
    factorized_weights,
    final_reward,
    fuse_saliency,
    fusion_weights,
    minmax,
    reliability_weight,
    spatial_weights,
    temporal_weights,
    unfactorized_weights,
)

# ----------------------------------------------------------------------------------------------- §4.2


def test_effective_sample_size_is_kish():
    # w = (1, 1, 2): (4)^2 / (3 * 6) = 16 / 18
    assert effective_sample_size(4.0, 6.0, 3) == pytest.approx(16 / 18)
    assert effective_sample_size(5.0, 5.0, 5) == pytest.approx(1.0)      # equal weights
    assert effective_sample_size(3.0, 9.0, 4) == pytest.approx(0.25)     # one weight of 3, three of 0: 1/n
    with pytest.raises(ValueError, match="n > 0"):
        effective_sample_size(0.0, 0.0, 2)


def test_reliability_weight_exp_beta_r():
    r = torch.tensor([0.0, 0.5, -1.0])
    # beta = 2: exp(0) = 1, exp(1) = e, exp(-2)
    assert torch.allclose(reliability_weight(r, beta=2.0), torch.tensor([1.0, math.e, math.exp(-2.0)]))
    assert torch.allclose(reliability_weight(r, beta=1.0), torch.tensor([1.0, math.exp(0.5), math.exp(-1.0)]))


def test_reliability_weight_clip_then_self_normalize():
    r = torch.tensor([0.0, 0.5, -1.0])
    # clip [0.5, 2]: [1, e -> 2, e^-2 -> 0.5]
    assert torch.allclose(reliability_weight(r, 2.0, clip=(0.5, 2.0)), torch.tensor([1.0, 2.0, 0.5]))
    # local mean of the clipped weights = 3.5 / 3
    w = reliability_weight(r, 2.0, clip=(0.5, 2.0), self_normalize=True)
    assert torch.allclose(w, torch.tensor([1.0, 2.0, 0.5]) * 3 / 3.5)
    assert float(w.mean()) == pytest.approx(1.0)
    # the caller's global mean (all ranks) wins over the local one
    w = reliability_weight(r, 2.0, clip=(0.5, 2.0), self_normalize=True, global_mean=torch.tensor(2.0))
    assert torch.allclose(w, torch.tensor([0.5, 1.0, 0.25]))


def test_reliability_weight_is_detached():
    r = torch.zeros(2, requires_grad=True)
    assert not reliability_weight(r).requires_grad


def test_final_reward_per_mode():
    n = {"VQ": torch.tensor([1.0, -1.0]), "MQ": torch.tensor([0.5, 2.0]), "TA": torch.tensor([0.0, 2.0])}
    assert torch.equal(final_reward(n, "MQ"), n["MQ"])
    assert torch.equal(final_reward(n, "VQ"), n["VQ"])
    assert torch.equal(final_reward(n, "TA"), n["TA"])
    # Overall: ((1 + .5 + 0) / 3, (-1 + 2 + 2) / 3) = (0.5, 1.0)
    assert torch.allclose(final_reward(n, "Overall"), torch.tensor([0.5, 1.0]))
    # BalancedOverall: Overall - 0.5 * 0.4 = (0.3, 0.8)
    assert torch.allclose(final_reward(n, "BalancedOverall", penalty=0.4, lam=0.5), torch.tensor([0.3, 0.8]))
    assert torch.allclose(final_reward(n, "BalancedOverall", penalty=torch.tensor(0.4)), torch.tensor([0.3, 0.8]))
    # no penalty: the same as Overall
    assert torch.allclose(final_reward(n, "BalancedOverall"), final_reward(n, "Overall"))


def test_final_reward_errors():
    with pytest.raises(ValueError, match="Unknown reward mode"):
        final_reward({"MQ": torch.zeros(1)}, "Best")  # type: ignore[arg-type]
    with pytest.raises(KeyError, match="needs axes"):
        final_reward({"MQ": torch.zeros(1)}, "Overall")


# ----------------------------------------------------------------------------------------------- §4.3.3


def test_fusion_weights_softmax_by_hand():
    ln2 = math.log(2.0)
    # sample 0: equal rewards -> 1/3 each. sample 1: r = (ln2, 0, -ln2): exp(-r) = (1/2, 1, 2), sum 3.5
    # -> (1/7, 2/7, 4/7): the weakest axis (TA, r = -ln2) gets the most weight.
    r = torch.tensor([[0.0, 0.0, 0.0], [ln2, 0.0, -ln2]])
    w = fusion_weights(r, "adaptive", 1.0)
    assert torch.allclose(w, torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1 / 7, 2 / 7, 4 / 7]]))
    # temperature 2 on twice the rewards gives the same
    assert torch.allclose(fusion_weights(2 * r, "adaptive", 2.0), w)
    assert torch.allclose(fusion_weights(r, "mean"), torch.full((2, 3), 1 / 3))
    assert fusion_weights(r, "max") is None


def test_fuse_saliency_modes():
    ln2 = math.log(2.0)
    r = torch.tensor([[0.0, 0.0, 0.0], [ln2, 0.0, -ln2]])
    # constant maps S_VQ = 1, S_MQ = 2, S_TA = 3 on a [F=2, H=1, W=2] grid
    sal = torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1, 1).expand(2, 3, 2, 1, 2)
    fused = fuse_saliency(sal, r, "adaptive", 1.0)
    assert fused.shape == (2, 2, 1, 2)
    assert torch.allclose(fused[0], torch.full((2, 1, 2), 2.0))  # (1 + 2 + 3) / 3
    assert torch.allclose(fused[1], torch.full((2, 1, 2), 17 / 7))  # 1/7 + 4/7 + 12/7
    assert torch.allclose(fuse_saliency(sal, r, "mean"), torch.full((2, 2, 1, 2), 2.0))
    assert torch.allclose(fuse_saliency(sal, r, "max"), torch.full((2, 2, 1, 2), 3.0))
    # max is elementwise, not per map
    sal2 = torch.zeros(1, 2, 1, 1, 2)
    sal2[0, 0, 0, 0, 0], sal2[0, 1, 0, 0, 1] = 5.0, 7.0
    assert torch.equal(fuse_saliency(sal2, torch.zeros(1, 2), "max").flatten(), torch.tensor([5.0, 7.0]))


# ----------------------------------------------------------------------------------------------- §4.3.4

# One sample, F = 2, H = W = 2:
#   frame 0 = [[0, 1], [2, 3]] (mean 1.5), frame 1 = [[4, 4], [4, 8]] (mean 5)
S_HAND = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]], [[4.0, 4.0], [4.0, 8.0]]]])
# temporal: p = (1.5, 5) -> p~ = (0, 1) -> tau = (0, 1) -> floor 0.2: (0.2, 1) -> / 0.6: (1/3, 5/3)
TAU_HAND = torch.tensor([[1 / 3, 5 / 3]])
# spatial frame 0: S~ = (0, 1/3, 2/3, 1) -> floor 0.15: (0.15, 1/3, 2/3, 1), mean 2.15 / 4 = 0.5375
#   -> (0.27907, 0.62016, 1.24031, 1.86047)
# spatial frame 1: S~ = (0, 0, 0, 1) -> floor: (0.15, 0.15, 0.15, 1), mean 1.45 / 4 = 0.3625
#   -> (0.41379, 0.41379, 0.41379, 2.75862)
SIGMA_HAND = torch.tensor([[[[0.15, 1 / 3], [2 / 3, 1.0]], [[0.15, 0.15], [0.15, 1.0]]]])
SIGMA_HAND = SIGMA_HAND / torch.tensor([0.5375, 0.3625]).view(1, 2, 1, 1)
# W = tau[f] * sigma[f]; its mean is already (1/3 * 1 + 5/3 * 1) / 2 = 1:
#   frame 0: (0.09302, 0.20672, 0.41344, 0.62016); frame 1: (0.68966, 0.68966, 0.68966, 4.59770)
W_HAND = TAU_HAND[:, :, None, None] * SIGMA_HAND


def test_factorized_weights_by_hand():
    assert torch.allclose(temporal_weights(S_HAND), TAU_HAND)
    assert torch.allclose(spatial_weights(S_HAND), SIGMA_HAND)
    w = factorized_weights(S_HAND)
    assert w.shape == (1, 2, 1, 2, 2)
    assert torch.allclose(w[:, :, 0], W_HAND, atol=1e-6)
    assert torch.allclose(w[0, :, 0].flatten(), torch.tensor(
        [0.09302, 0.20672, 0.41344, 0.62016, 0.68966, 0.68966, 0.68966, 4.59770]), atol=1e-5)
    assert float(w.mean()) == pytest.approx(1.0, abs=1e-6)


def test_factorized_weights_mean_one_floors_scale_invariance_uniform():
    S = torch.rand(3, 5, 4, 6) ** 3
    w = factorized_weights(S)
    assert w.shape == (3, 5, 1, 4, 6)
    assert torch.allclose(w.mean(dim=(1, 2, 3, 4)), torch.ones(3), atol=1e-6)
    # Before its mean normalisation each factor has max 1 (min-max puts a 1 in) and min >= floor, so after it the
    # ratio min / max of each factor is still >= floor.
    tau, sigma = temporal_weights(S, floor=0.2), spatial_weights(S, floor=0.15)
    assert (tau.amin(1) / tau.amax(1) >= 0.2 - 1e-6).all()
    assert (sigma.amin((2, 3)) / sigma.amax((2, 3)) >= 0.15 - 1e-6).all()
    assert torch.allclose(tau.mean(1), torch.ones(3), atol=1e-6)
    assert torch.allclose(sigma.mean((2, 3)), torch.ones(3, 5), atol=1e-6)
    # invariance to a positive rescaling of S
    assert torch.allclose(factorized_weights(7.5 * S), w, atol=1e-5)
    # uniform S -> all ones; flat frames give flat spatial factors
    assert torch.equal(factorized_weights(torch.full((2, 3, 4, 4), 0.3)), torch.ones(2, 3, 1, 4, 4))
    # strength 0 switches a factor off
    assert torch.allclose(factorized_weights(S, temporal_strength=0.0, spatial_strength=0.0), torch.ones_like(w))
    assert not factorized_weights(S.requires_grad_()).requires_grad


def test_unfactorized_weights_by_hand():
    # one min-max over all 8 values, min 0, max 8: S~ = (0, 1/8, 2/8, 3/8, 4/8, 4/8, 4/8, 1)
    # floor 0.15: (0.15, 0.15, 0.25, 0.375, 0.5, 0.5, 0.5, 1), sum 3.425, mean 0.428125
    expected = torch.tensor([0.15, 0.15, 0.25, 0.375, 0.5, 0.5, 0.5, 1.0]) / 0.428125
    w = unfactorized_weights(S_HAND)
    assert w.shape == (1, 2, 1, 2, 2)
    assert torch.allclose(w.flatten(), expected)
    assert float(w.mean()) == pytest.approx(1.0)
    assert torch.equal(unfactorized_weights(torch.ones(1, 2, 3, 3)), torch.ones(1, 2, 1, 3, 3))


def test_minmax_flat_range_is_ones():
    x = torch.tensor([[1.0, 1.0 + 1e-10], [0.0, 2.0]])
    assert torch.equal(minmax(x, (1,)), torch.tensor([[1.0, 1.0], [0.0, 1.0]]))


# ----------------------------------------------------------------------------------------------- §4.4


def test_balance_penalty_by_hand():
    history = {"VQ": [1.0, 1.0, 2.0, 2.0], "MQ": [0.0, 0.0, 0.0, 0.0], "TA": [3.0, 1.0, 1.0, 1.0]}
    # D = (2 - 1, 0 - 0, 1 - 2) = (1, 0, -1); mean 0; unbiased var = (1 + 0 + 1) / 2 = 1 -> P = 1
    assert torch.allclose(axis_drifts(history), torch.tensor([1.0, 0.0, -1.0], dtype=torch.float64))
    assert balance_penalty(history, warmup_updates=4, updates_seen=4) == pytest.approx(1.0)
    # the same as an [A, N] tensor
    as_tensor = torch.tensor(list(history.values()))
    assert balance_penalty(as_tensor, warmup_updates=4, updates_seen=4) == pytest.approx(1.0)
    # before the warm-up, or with too few entries: 0
    assert balance_penalty(history, warmup_updates=50, updates_seen=49) == 0.0
    short = {k: v[:3] for k, v in history.items()}
    assert balance_penalty(short, warmup_updates=0, updates_seen=100, min_entries=4) == 0.0
    # an odd window: the middle entry belongs to the second half: (2 + 3) / 2 - 1 = 1.5
    assert float(axis_drifts([[1.0, 2.0, 3.0]])[0]) == pytest.approx(1.5)
    # equal drifts on all axes: no imbalance
    assert balance_penalty({"VQ": [0, 0, 1, 1], "MQ": [1, 1, 2, 2]}, 0, 4) == pytest.approx(0.0)


# ----------------------------------------------------------------------------------------------- the loss


def test_weighted_dmd_loss_gradient():
    """dL/dx = W_inter[b] * W_intra * g / N for L = mean_b 0.5 W_inter[b] mean(W_intra (x - sg(x - g))^2)."""
    B, F, C, H, W = 2, 3, 4, 2, 2
    x = torch.randn(B, F, C, H, W, dtype=torch.float64, requires_grad=True)
    g = torch.randn(B, F, C, H, W, dtype=torch.float64)
    w_inter = reliability_weight(torch.tensor([0.3, -0.7]), beta=2.0).double()
    w_intra = factorized_weights(torch.rand(B, F, H, W)).double()
    loss = (0.5 * w_inter * (w_intra * (x - (x - g).detach()) ** 2).flatten(1).mean(dim=1)).mean()
    (grad,) = torch.autograd.grad(loss, x)
    N = B * F * C * H * W
    assert torch.allclose(grad, w_inter.view(B, 1, 1, 1, 1) * w_intra * g / N)
    # the module's own loss agrees
    assert torch.allclose(dmd_loss(x, g, w_inter, w_intra).double(), loss, rtol=1e-5)
