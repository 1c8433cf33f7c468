"""Probe (results/world_curves.md, "Fourth round"): chunk 0 only, from random weights. Does a translation-invariant
world (each good video rolled by a random (dx, dy) with wrap-around, so the caption no longer says where) let the toy
Wan draw crisp shapes with the 4-step sampler (levels 1000 / 750 / 500 / 250, fresh noise between levels) sooner than
the fixed-place world? Reports the share of samples with oracle VQ >= 0.5 and the RMS distance to the nearest good
chunk of the caption (all 256 rolls of it with --roll 1). Scratch-quality.
`.venv/bin/python results/probes/roll_probe.py --roll 1 --minutes 12 --out roll1.json`."""
import argparse, time, json, torch
from streamr1 import toy
from streamr1.models import CausalWanDenoiser
from streamr1.toy.text import ToyTextEncoder
from streamr1.toy.world import ToyWorld
from streamr1.toy.oracle import visual_quality
ap = argparse.ArgumentParser()
ap.add_argument("--roll", type=int, default=0); ap.add_argument("--lr", type=float, default=3e-3)
ap.add_argument("--minutes", type=float, default=10); ap.add_argument("--radius", type=float, default=0.14)
ap.add_argument("--eval-every", type=int, default=200); ap.add_argument("--out", required=True)
a = ap.parse_args()
torch.set_num_threads(1); torch.manual_seed(0)
w = ToyWorld(num_captions=16, videos_per_caption=8, good_per_caption=4, size=16, seed=0, shape_radius=a.radius)
good = torch.nonzero(w.good_mask()).squeeze(1)
x0 = w.videos[good][:, :2].contiguous()
caps = [w.captions[i] for i in good]
cond = ToyTextEncoder(dim=toy.TEXT_DIM).encode(caps).float()
st = CausalWanDenoiser(config=dict(toy.STUDENT_CONFIG), chunk_frames=2)
opt = torch.optim.AdamW(st.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
g = torch.Generator().manual_seed(0)
levels = [1000., 750., 500., 250.]
def batch(idx):
    x = x0[idx]
    if a.roll:
        out = []
        for k in range(len(idx)):
            dx, dy = torch.randint(0, 16, (2,), generator=g).tolist()
            out.append(torch.roll(x[k], (dy, dx), (-2, -1)))
        x = torch.stack(out)
    return x
@torch.no_grad()
def evaluate():
    st.eval(); gg = torch.Generator().manual_seed(5)
    uniq = list(dict.fromkeys(caps)); ps = [c for c in uniq for _ in range(4)]
    c = ToyTextEncoder(dim=toy.TEXT_DIM).encode(ps).float()
    x = torch.randn(len(ps), 2, 3, 16, 16, generator=gg)
    for i, t in enumerate(levels):
        s = t / 1000
        x0h = x - s * st.causal(x, torch.full((len(ps), 2), t), c)
        if i + 1 < len(levels):
            s2 = levels[i + 1] / 1000
            x = (1 - s2) * x0h + s2 * torch.randn(x0h.shape, generator=gg)
    x0h = x0h.clamp(-1, 1)
    vq = visual_quality(x0h)
    near = []
    for k, p in enumerate(ps):
        refs = x0[[j for j, cc in enumerate(caps) if cc == p]]
        if a.roll:
            refs = torch.stack([torch.roll(r, (dy, dx), (-2, -1)) for r in refs for dy in range(16) for dx in range(16)])
        near.append((refs - x0h[k]).pow(2).flatten(1).mean(1).sqrt().min())
    near = torch.stack(near)
    st.train()
    return {"vq_good": (vq["VQ"] >= 0.5).float().mean().item(), "near_med": near.median().item(),
            "near_lt05": (near < 0.05).float().mean().item(), "near_lt1": (near < 0.1).float().mean().item(),
            "fid": vq["fidelity"].median().item(), "opa": vq["opacity"].median().item(),
            "sharp": vq["sharpness"].median().item()}
t0 = time.time(); it = 0; log = []
while True:
    idx = torch.randint(0, x0.shape[0], (16,), generator=g)
    x = batch(idx)
    eps = torch.randn(x.shape, generator=g)
    # half the samples at the few-step levels, half uniform in t
    lv = torch.tensor(levels)[torch.randint(0, 4, (16,), generator=g)]
    un = torch.rand(16, generator=g) * 1000
    t = torch.where(torch.rand(16, generator=g) < 0.75, lv, un)
    s = (t / 1000).view(16, 1, 1, 1, 1)
    xt = (1 - s) * x + s * eps
    v = st.causal(xt, t.view(16, 1).expand(16, 2), cond[idx])
    loss = (v - (eps - x)).pow(2).mean()
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0); opt.step(); it += 1
    done = time.time() - t0 > a.minutes * 60
    if it % a.eval_every == 0 or done:
        r = evaluate(); r.update(it=it, wall=round(time.time() - t0), loss=round(loss.item(), 4))
        log.append(r); print(json.dumps(r), flush=True); json.dump(log, open(a.out, "w"))
    if done: break
