"""Probe (results/world_curves.md, "Why no student reaches a good mode"): how fast the toy Wan learns chunk 0 at one
fixed noise level on N good world videos (x0 RMS on the training batch). Scratch-quality, kept so the numbers can be
remade: `.venv/bin/python results/probes/chunk0_capacity.py --videos 64 --level 625 --lr 3e-3`."""
import sys, time, json, torch, argparse
from streamr1 import toy
from streamr1.toy.world import ToyWorld
from streamr1.toy.text import ToyTextEncoder
from streamr1.models import CausalWanDenoiser
ap = argparse.ArgumentParser()
ap.add_argument("--videos", type=int, default=1); ap.add_argument("--lr", type=float, default=1e-3)
ap.add_argument("--iters", type=int, default=400); ap.add_argument("--level", type=float, default=625.)
ap.add_argument("--param", default="flow"); ap.add_argument("--size", type=int, default=16); ap.add_argument("--radius", type=float, default=0.14); ap.add_argument("--starts", type=int, default=None); ap.add_argument("--config", default=None)
a = ap.parse_args()
torch.set_num_threads(1); torch.manual_seed(0)
w = ToyWorld(num_captions=16, videos_per_caption=8, good_per_caption=4, size=a.size, seed=0, shape_radius=a.radius, starts_per_caption=a.starts)
good = torch.nonzero(w.good_mask()).squeeze(1)[: a.videos]
x0 = w.videos[good][:, :2]  # chunk 0
cond = ToyTextEncoder(dim=32).encode([w.captions[i] for i in good]).float()
cfg = dict(toy.STUDENT_CONFIG)
if a.config: cfg.update(json.loads(a.config))
st = CausalWanDenoiser(config=cfg, chunk_frames=2)
opt = torch.optim.AdamW(st.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
g = torch.Generator().manual_seed(0)
s = a.level / 1000
t0 = time.time()
for it in range(a.iters + 1):
    idx = torch.randint(0, x0.shape[0], (16,), generator=g)
    eps = torch.randn(16, *x0.shape[1:], generator=g)
    xt = (1 - s) * x0[idx] + s * eps
    tt = torch.full((16, 2), a.level)
    v = st.causal(xt, tt, cond[idx])
    x0h = xt - s * v
    loss = (x0h - x0[idx]).pow(2).mean() if a.param == "x0loss" else (v - (eps - x0[idx])).pow(2).mean()
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0); opt.step()
    if it % 50 == 0:
        print(it, round(time.time() - t0), "x0 rms", round((x0h - x0[idx]).pow(2).mean().sqrt().item(), 4), flush=True)
