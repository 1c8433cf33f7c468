"""Flow-matching helpers and DMD losses against values derived by hand from SPEC.md §1, §3, §4."""

import math

import pytest
import torch

from streamr1.flow import add_noise, flow_to_x0, sample_dmd_timestep, shift_timesteps, warped_steps, x0_to_flow
from streamr1.losses import cfg_x0, critic_flow_loss, dmd_gradient, dmd_loss


def test_shift_matches_formula_and_spec_list():
    # t' = 1000 k u / (1 + (k-1) u); u = 0.75, k = 5 -> 1000 * 3.75 / 4 = 937.5
    assert float(shift_timesteps(torch.tensor(750.0), 5.0)) == pytest.approx(937.5)
    assert warped_steps([1000, 750, 500, 250], 5.0) == pytest.approx([1000.0, 937.5, 2500 / 3, 625.0])
    assert warped_steps([1000, 500], 1.0) == pytest.approx([1000.0, 500.0])


def test_noise_and_flow_round_trip():
    x0, eps = torch.randn(2, 3, 4, 5, 5), torch.randn(2, 3, 4, 5, 5)
    t = torch.tensor([250.0, 900.0])
    x_t = add_noise(x0, eps, t)
    # x_t = 0.75 x0 + 0.25 eps for the first sample
    assert torch.allclose(x_t[0], 0.75 * x0[0] + 0.25 * eps[0])
    v = eps - x0
    assert torch.allclose(flow_to_x0(x_t, v, t), x0, atol=1e-6)
    assert torch.allclose(x0_to_flow(x_t, x0, t), v, atol=1e-5)


def test_dmd_timestep_range_and_shift():
    t = sample_dmd_timestep(4096, 5.0, generator=torch.Generator().manual_seed(0))
    assert t.min() >= 20 and t.max() <= 980
    # shifted: P(t' < 500) = P(u < 1/6) ~ 0.167 for k = 5
    assert (t < 500).float().mean().item() == pytest.approx(1 / 6, abs=0.03)


def test_cfg():
    c, u = torch.tensor([1.0]), torch.tensor([0.5])
    assert float(cfg_x0(c, u, 3.0)) == pytest.approx(1.0 + 3.0 * 0.5)


def test_dmd_gradient_per_sample_normaliser():
    x = torch.zeros(2, 1, 1, 1, 2)
    x0_real = torch.tensor([1.0, 3.0]).view(1, 1, 1, 1, 2).repeat(2, 1, 1, 1, 1)
    x0_real[1] *= 2  # sample 1: |x - x0_real| mean = (2 + 6) / 2 = 4; sample 0: (1 + 3) / 2 = 2
    x0_fake = torch.ones_like(x)
    g = dmd_gradient(x, x0_fake, x0_real)
    assert torch.allclose(g[0].flatten(), torch.tensor([(1 - 1) / 2, (1 - 3) / 2]))
    assert torch.allclose(g[1].flatten(), torch.tensor([(1 - 2) / 4, (1 - 6) / 4]))
    assert not g.requires_grad


def test_dmd_gradient_nan_to_num():
    x = torch.zeros(1, 1, 1, 1, 2)
    g = dmd_gradient(x, torch.tensor([float("nan"), 1.0]).view_as(x), torch.tensor([0.0, float("inf")]).view_as(x))
    assert torch.isfinite(g).all()


def test_plain_dmd_loss_value_and_gradient():
    x = torch.randn(2, 3, 4, 2, 2, requires_grad=True)
    g = torch.randn_like(x)
    loss = dmd_loss(x, g)
    # value: 0.5 * mean(g^2); gradient: g / N
    assert float(loss) == pytest.approx(0.5 * float((g**2).mean()), rel=1e-6)
    loss.backward()
    assert torch.allclose(x.grad, g / x.numel(), atol=1e-9)


def test_weighted_dmd_loss_gradient_is_winter_wintra_g_over_n():
    b, f, c, h, w = 2, 3, 4, 2, 2
    x = torch.randn(b, f, c, h, w, requires_grad=True)
    g = torch.randn_like(x)
    w_inter = torch.tensor([0.5, 2.0])
    w_intra = torch.rand(b, f, 1, h, w) + 0.5
    dmd_loss(x, g, w_inter, w_intra).backward()
    expected = w_inter.view(b, 1, 1, 1, 1) * w_intra * g / x.numel()
    assert torch.allclose(x.grad, expected, atol=1e-9)


def test_weights_are_detached():
    x = torch.randn(1, 1, 1, 1, 2, requires_grad=True)
    w = torch.tensor([2.0], requires_grad=True)
    dmd_loss(x, torch.ones_like(x), rollout_weight=w).backward()
    assert w.grad is None


def test_critic_flow_loss_zero_at_the_true_x0_and_hand_value():
    x, eps = torch.randn(2, 2, 3, 2, 2), torch.randn(2, 2, 3, 2, 2)
    t = torch.tensor([500.0, 100.0])
    x_t = add_noise(x, eps, t)
    assert float(critic_flow_loss(x_t, x, x, eps, t)) == pytest.approx(0.0, abs=1e-9)
    # predicting x0 + d shifts v_hat by -d / s: loss = mean((d / s)^2)
    d = 0.1
    loss = critic_flow_loss(x_t, x + d, x, eps, t)
    expected = ((d / 0.5) ** 2 + (d / 0.1) ** 2) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-4)
    assert math.isfinite(float(loss))
