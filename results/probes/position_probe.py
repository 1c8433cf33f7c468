"""Probe (results/world_curves.md, "Absolute position"): can the toy Wan draw a fixed picture from pure noise?

Chunk 0 at t = 1000 (the input is pure noise), one fixed good video per caption (16 captions, one start each, radius
0.22), batch 16, AdamW; x0 RMS on the training batch. ``--readout x0`` reads the network's output as x0 directly
(nothing to copy from the input), ``--target uniform`` replaces every frame by its per-channel spatial mean (the same
captions and colours, no place), ``--bias B`` starts the patch embedding's bias at norm B, orthogonal to its weights
(tests whether the final LayerNorm's non-linearity in the copied noise is what is slow: it is not). Scratch-quality.
`.venv/bin/python results/probes/position_probe.py --readout x0 --target uniform`."""
import argparse
import time

import torch

from streamr1 import toy
from streamr1.models import CausalWanDenoiser
from streamr1.toy.text import ToyTextEncoder
from streamr1.toy.world import ToyWorld

ap = argparse.ArgumentParser()
ap.add_argument("--readout", choices=["flow", "x0"], default="flow")
ap.add_argument("--target", choices=["videos", "uniform"], default="videos")
ap.add_argument("--bias", type=float, default=0.0)
ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--iters", type=int, default=300)
a = ap.parse_args()
torch.set_num_threads(1)
torch.manual_seed(0)
w = ToyWorld(num_captions=16, videos_per_caption=8, good_per_caption=4, size=16, seed=0, shape_radius=0.22,
             starts_per_caption=1)
good = torch.nonzero(w.good_mask()).squeeze(1)
x0 = w.videos[good][:, :2]
if a.target == "uniform":
    x0 = x0.mean((-1, -2), keepdim=True).expand_as(x0).contiguous()
cond = ToyTextEncoder(dim=toy.TEXT_DIM).encode([w.captions[i] for i in good]).float()
st = CausalWanDenoiser(config=dict(toy.STUDENT_CONFIG), chunk_frames=2)
if a.bias:
    pe = st.transformer.patch_embedding
    with torch.no_grad():
        wm = pe.weight.reshape(pe.weight.shape[0], -1)
        b = torch.randn(wm.shape[0])
        q, _ = torch.linalg.qr(torch.cat([wm, torch.ones(wm.shape[0], 1)], 1))
        b = b - q @ (q.T @ b)
        pe.bias.copy_(b / b.norm() * a.bias)
opt = torch.optim.AdamW(st.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
g = torch.Generator().manual_seed(0)
t0 = time.time()
for it in range(a.iters + 1):
    idx = torch.randint(0, x0.shape[0], (16,), generator=g)
    eps = torch.randn(16, *x0.shape[1:], generator=g)
    out = st.causal(eps, torch.full((16, 2), 1000.0), cond[idx])  # x_t = eps at t = 1000
    x0h = out if a.readout == "x0" else eps - out
    loss = (x0h - x0[idx]).pow(2).mean() if a.readout == "x0" else (out - (eps - x0[idx])).pow(2).mean()
    opt.zero_grad()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0)
    opt.step()
    if it % 50 == 0:
        print(it, round(time.time() - t0), "x0 rms", round((x0h - x0[idx]).pow(2).mean().sqrt().item(), 4), flush=True)
