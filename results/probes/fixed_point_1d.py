"""Probe (results/world_curves.md, "Sixth round"): does reliability-weighted DMD converge to the teacher's mixture p
or to the tilt p * W? One dimension, with the project's own `dmd_gradient` and `dmd_loss` (SPEC.md §3.3-3.4, §4.2).

- teacher: the exact posterior mean E[x0 | x_t] of p = 0.5 N(-0.6, 0.35^2) ["flawed"] + 0.5 N(0.6, 0.35^2) ["good"];
- student: an MLP pushforward of z ~ N(0, 1), started at 25% good (regressed onto that mixture's quantile function);
- critic: an MLP x0-predictor trained by denoising on the student's (unweighted) samples, 5 critic steps a student
  step as in the recipe; student Adam lr 1e-3, betas (0, 0.999), batch 64, 1,500 student steps;
- rows: plain DMD; W = exp(2 r) with r = +1 on good samples and -1 on flawed ones (a perfect reward); the same
  self-normalised. The tilt p * W would be 0.982 good.

`.venv/bin/python results/probes/fixed_point_1d.py` (one thread, about 4 minutes) prints the good share every 300
steps per seed and the mean over steps 1,000-1,500. Measured (seeds 0-2): plain 0.501 +- 0.060, weighted
0.398 +- 0.090, self-normalised 0.483 +- 0.080: every row ends at the teacher's 0.5, none near 0.98. With the
critic tracking the student, q = p zeroes every per-sample DMD term whatever W > 0 is."""
import json
import math
import statistics
import sys

import torch
from torch import nn

from streamr1.losses import dmd_gradient, dmd_loss

torch.set_num_threads(1)
MU, SD, PI = torch.tensor([-0.6, 0.6]), 0.35, torch.tensor([0.5, 0.5])
NORMAL = torch.distributions.Normal(0.0, 1.0)


def teacher_x0(xt: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """Exact E[x0 | x_t] of the 1-D mixture under x_t = (1 - s) x0 + s eps."""
    s = s[:, None]
    var = ((1 - s) * SD) ** 2 + s ** 2
    w = torch.softmax(torch.log(PI) - (xt[:, None] - (1 - s) * MU) ** 2 / (2 * var) - 0.5 * torch.log(var), 1)
    return (w * (MU + (1 - s) * SD ** 2 / var * (xt[:, None] - (1 - s) * MU))).sum(1)


def mlp(inputs: int) -> nn.Module:
    return nn.Sequential(nn.Linear(inputs, 128), nn.SiLU(), nn.Linear(128, 128), nn.SiLU(), nn.Linear(128, 1))


def as_video(v: torch.Tensor) -> torch.Tensor:
    return v[:, None, None, None, None]  # [B] -> [B, F, C, H, W] for the project's loss functions


def run(mode: str, seed: int, steps: int = 1500, batch: int = 64, beta: float = 2.0) -> list[float]:
    torch.manual_seed(seed)
    gen, critic = mlp(1), mlp(2)
    opt = torch.optim.Adam(gen.parameters(), 1e-2)
    for _ in range(600):  # start at 25% good: the quantile function of 0.75 N(-0.6) + 0.25 N(0.6)
        z = torch.randn(512, 1)
        u = NORMAL.cdf(z)
        low = -0.6 + SD * NORMAL.icdf((u / 0.75).clamp(1e-4, 1 - 1e-4))
        high = 0.6 + SD * NORMAL.icdf(((u - 0.75) / 0.25).clamp(1e-4, 1 - 1e-4))
        loss = (gen(z) - torch.where(u < 0.75, low, high)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    copt = torch.optim.Adam(critic.parameters(), 1e-3)

    def critic_step() -> None:
        with torch.no_grad():
            x = gen(torch.randn(batch, 1)).squeeze(1)
        s, eps = torch.rand(batch) * 0.96 + 0.02, torch.randn(batch)
        loss = ((critic(torch.stack([(1 - s) * x + s * eps, s], 1)).squeeze(1) - x) ** 2).mean()
        copt.zero_grad()
        loss.backward()
        copt.step()

    for _ in range(500):
        critic_step()
    gopt = torch.optim.Adam(gen.parameters(), 1e-3, betas=(0.0, 0.999))
    history = []
    for step in range(steps + 1):
        if step % 100 == 0:
            with torch.no_grad():
                history.append(float((gen(torch.randn(20000, 1)) > 0).float().mean()))
        if step == steps:
            break
        for _ in range(5):
            critic_step()
        x = gen(torch.randn(batch, 1)).squeeze(1)
        s, eps = torch.rand(batch) * 0.96 + 0.02, torch.randn(batch)
        xt = (1 - s) * x.detach() + s * eps
        with torch.no_grad():
            x0_fake, x0_real = critic(torch.stack([xt, s], 1)).squeeze(1), teacher_x0(xt, s)
        g = dmd_gradient(as_video(x), as_video(x0_fake), as_video(x0_real))
        w = None
        if mode != "plain":
            w = torch.exp(beta * torch.where(x.detach() > 0, 1.0, -1.0))
            if mode == "self-normalised":
                w = w / w.mean()
        loss = dmd_loss(as_video(x), g, w)
        gopt.zero_grad()
        loss.backward()
        gopt.step()
    return history


if __name__ == "__main__":
    seeds = [int(a) for a in sys.argv[1:]] or [0, 1, 2]
    print(f"teacher good share 0.5; the tilt p * W would be {math.exp(2) / (math.exp(2) + math.exp(-2)):.3f}")
    out = {}
    for mode in ("plain", "weighted", "self-normalised"):
        out[mode] = [run(mode, s) for s in seeds]
        ends = [sum(h[-6:]) / 6 for h in out[mode]]
        print(mode, ["/".join(f"{v:.2f}" for v in h[::3]) for h in out[mode]],
              f"end {statistics.mean(ends):.3f} +- {statistics.stdev(ends) if len(ends) > 1 else 0:.3f}", flush=True)
    with open("fixed_point_1d.json", "w") as fh:
        json.dump(out, fh)
