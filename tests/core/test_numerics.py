"""Numerics: the formulas promote to at least float32 and keep float64 (SPEC.md §1, §3, §4), checked in float64
against hand formulas to 1e-9; the DMD target is formed in float32 under a bf16 rollout."""

from __future__ import annotations

import math

import torch

from streamr1.flow import add_noise, flow_to_x0, promote, sample_dmd_timestep, x0_to_flow
from streamr1.losses import cfg_x0, critic_flow_loss, dmd_gradient, dmd_loss
from streamr1.weighting import factorized_weights, final_reward, fuse_saliency, fusion_weights, reliability_weight

TOL = 1e-9


def _rand(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_promote_never_demotes():
    assert promote(torch.zeros(2, dtype=torch.bfloat16)).dtype == torch.float32
    assert promote(torch.zeros(2, dtype=torch.float16)).dtype == torch.float32
    assert promote(torch.zeros(2, dtype=torch.float64)).dtype == torch.float64


def test_flow_and_dmd_formulas_in_float64_match_the_spec():
    x0, eps, x, fake, real = (_rand(2, 3, 2, 4, 4, seed=i) for i in range(5))
    t = torch.tensor([937.5, 625.0], dtype=torch.float64)
    s = (t / 1000).view(2, 1, 1, 1, 1)
    x_t = add_noise(x0, eps, t)
    assert x_t.dtype == torch.float64 and (x_t - ((1 - s) * x0 + s * eps)).abs().max() < TOL
    v = eps - x0
    assert (flow_to_x0(x_t, v, t) - x0).abs().max() < TOL
    assert (x0_to_flow(x_t, x0, t) - v).abs().max() < TOL

    real_g = cfg_x0(real, fake, 3.0)
    assert real_g.dtype == torch.float64 and (real_g - (real + 3.0 * (real - fake))).abs().max() < TOL
    g = dmd_gradient(x, fake, real)
    norm = (x - real).abs().flatten(1).mean(dim=1).view(2, 1, 1, 1, 1)
    assert g.dtype == torch.float64 and (g - (fake - real) / norm).abs().max() < TOL

    w_inter = torch.tensor([0.5, 2.0], dtype=torch.float64)
    w_intra = _rand(2, 3, 1, 4, 4, seed=9).abs()
    xg = x.clone().requires_grad_(True)
    loss = dmd_loss(xg, g, w_inter, w_intra)
    loss.backward()
    n = x.numel()
    expected = 0.5 * (w_inter.view(2, 1, 1, 1, 1) * w_intra * g ** 2).flatten(1).mean(1).mean()
    assert loss.dtype == torch.float64 and abs(loss.item() - expected.item()) < TOL
    # dL/dx = W_inter W_intra g / N (SPEC §4): exact in float64
    assert (xg.grad - w_inter.view(2, 1, 1, 1, 1) * w_intra * g / n).abs().max() < TOL

    x0_pred = _rand(2, 3, 2, 4, 4, seed=7)
    crit = critic_flow_loss(x_t, x0_pred, x0, eps, t)
    assert abs(crit.item() - (((x_t - x0_pred) / s - (eps - x0)) ** 2).mean().item()) < TOL


def test_weighting_formulas_in_float64_match_the_spec():
    r = {a: _rand(3, seed=i) for i, a in enumerate(("VQ", "MQ", "TA"))}
    overall = (r["VQ"] + r["MQ"] + r["TA"]) / 3
    r_final = final_reward(r, "BalancedOverall", penalty=0.3, lam=0.5)
    assert r_final.dtype == torch.float64 and (r_final - (overall - 0.15)).abs().max() < TOL
    w = reliability_weight(r_final, beta=2.0)
    assert (w - torch.exp(2.0 * r_final)).abs().max() < TOL

    stacked = torch.stack([r["VQ"], r["MQ"], r["TA"]], dim=1)
    fw = fusion_weights(stacked, "adaptive", temperature=1.0)
    assert fw.dtype == torch.float64
    assert (fw - torch.softmax(-stacked, dim=1)).abs().max() < TOL
    sal = _rand(3, 3, 2, 4, 4, seed=5).abs()  # [B, A, F, H, W]
    fused = fuse_saliency(sal, stacked, "adaptive", 1.0)
    by_hand = sum(fw[:, a].view(3, 1, 1, 1) * sal[:, a] for a in range(3))
    assert fused.dtype == torch.float64 and (fused - by_hand).abs().max() < TOL
    W = factorized_weights(fused)
    assert W.dtype == torch.float64 and W.shape == (3, 2, 1, 4, 4)
    assert (W.flatten(1).mean(dim=1) - 1.0).abs().max() < TOL  # mean 1 per sample, exactly in float64


def test_dmd_target_is_formed_in_float32_for_a_bf16_rollout():
    """dL/dx = g / N (SPEC §3.4): in bf16, x - g rounds g away; the target must be formed in float32."""
    x32 = torch.randn(2, 3, 2, 8, 8, generator=torch.Generator().manual_seed(3))
    x = x32.to(torch.bfloat16).requires_grad_(True)
    g = 1e-2 * torch.randn(2, 3, 2, 8, 8, generator=torch.Generator().manual_seed(4))
    loss = dmd_loss(x, g)
    assert loss.dtype == torch.float32
    loss.backward()
    n = x.numel()
    # The only rounding left is the bf16 gradient of x itself: relative error within bf16's 2^-8.
    rel = ((x.grad.float() - g / n).norm() / (g / n).norm()).item()
    assert rel < 2 ** -8, rel
    # A bf16 target (the old behaviour) would be visibly off: the rounding of x - g alone is far larger.
    target16 = (x.detach() - g.to(torch.bfloat16)).float()
    off = ((x.detach().float() - target16) - g).norm() / g.norm()
    assert off.item() > 10 * rel


def test_dmd_timesteps_are_float32_and_shifted():
    t = sample_dmd_timestep(64, shift=5.0, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32
    u = torch.arange(1000, dtype=torch.float64) / 1000
    allowed = (1000 * 5 * u / (1 + 4 * u)).clamp(20, 980).float()
    assert all(bool((allowed == v).any()) for v in t)
    assert math.isclose(float(t.min()), max(20.0, float(t.min())))
