"""Probe (results/world_curves.md): a causal toy Wan trained from random weights by teacher-forcing flow matching on a
candidate world, its 4-step samples scored by the oracle every --eval-every steps (JSON lines). Scratch-quality.
Example: `.venv/bin/python results/probes/flow_student.py --captions 16 --vpc 4 --good 2 --starts 1 --radius 0.22
--shift 1 --lr 3e-3 --level-fraction 0.75 --minutes 12 --out x2.json`."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import probe_eval  # noqa: E402
import json, sys, time, torch, argparse
from streamr1 import toy
from streamr1.toy import assets
from streamr1.toy.world import ToyWorld
from streamr1.toy.pretrain import causal_flow_loss, _drop_captions
from streamr1.toy.text import ToyTextEncoder
from streamr1.toy.evaluation import sample_student
from streamr1.toy.oracle import oracle_scores, visual_quality, good_mode, classify_mode
ap = argparse.ArgumentParser()
ap.add_argument("--captions", type=int, default=16); ap.add_argument("--vpc", type=int, default=8)
ap.add_argument("--good", type=int, default=4); ap.add_argument("--starts", type=int, default=None)
ap.add_argument("--minutes", type=float, default=20); ap.add_argument("--eval-every", type=int, default=250)
ap.add_argument("--lr", type=float, default=1e-3); ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--level-fraction", type=float, default=0.5); ap.add_argument("--shift", type=float, default=5.0)
ap.add_argument("--out", required=True); ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--config", default=None)
ap.add_argument("--radius", type=float, default=None); ap.add_argument("--travel", type=float, nargs=3, default=None)
a = ap.parse_args()
torch.set_num_threads(a.threads)
import streamr1.toy.world as W
if a.travel: W.TRAVEL.update({"slow": a.travel[0], None: a.travel[1], "fast": a.travel[2]})
world = ToyWorld(num_captions=a.captions, videos_per_caption=a.vpc, good_per_caption=a.good, size=16, seed=0, starts_per_caption=a.starts, shape_radius=a.radius or 0.14)
enc = ToyTextEncoder(dim=toy.TEXT_DIM)
cond = enc.encode(world.captions).float()
torch.manual_seed(0)
from streamr1.models import CausalWanDenoiser
cfg = dict(toy.STUDENT_CONFIG)
if a.config: cfg.update(json.loads(a.config))
st = CausalWanDenoiser(config=cfg, chunk_frames=2)
from streamr1.flow import warped_steps
levels = warped_steps(toy.DENOISING_STEPS, a.shift); print(levels)
g = torch.Generator().manual_seed(0)
opt = torch.optim.AdamW(st.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
prompts = [p for p in world.train_prompts() for _ in range(max(1, 32 // a.captions))]
def evaluate():
    return probe_eval.evaluate(st, enc, world, prompts, levels)
st.train(); t0 = time.process_time(); w0 = time.time(); it = 0; log = []
while True:
    warm = min(1.0, (it + 1) / 50)
    for gr in opt.param_groups: gr["lr"] = a.lr * warm
    idx = torch.randint(0, world.videos.shape[0], (a.batch,), generator=g)
    loss = causal_flow_loss(st, world.videos[idx], _drop_captions(cond[idx], 0.1, g), levels, g, a.level_fraction)
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0); opt.step(); it += 1
    done = time.time() - w0 > a.minutes * 60
    if it % a.eval_every == 0 or done:
        r = evaluate(); r.update(it=it, cpu=round(time.process_time() - t0), wall=round(time.time() - w0), loss=float(loss))
        log.append(r); print(json.dumps(r), flush=True)
        json.dump(log, open(a.out, "w"))
    if done: break
torch.save(st.state_dict(), a.out + ".pt")
