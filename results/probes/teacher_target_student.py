"""Probe (results/world_curves.md): the causal toy Wan regressed on fresh targets from the exact teacher every few
steps: its guided predictions along the student's own few-step sampler (--target sampler) or its causal guided ODE end
points (--target ode); 4-step samples scored by the oracle. Scratch-quality."""
import os, sys
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import probe_eval  # noqa: E402
import json, time, torch, argparse
from streamr1 import toy
from streamr1.toy.world import ToyWorld
from streamr1.toy.teacher import MixtureTeacher
from streamr1.toy.text import ToyTextEncoder
from streamr1.toy.evaluation import sample_student
from streamr1.toy.oracle import oracle_scores, visual_quality, good_mode, classify_mode
from streamr1.toy.ode import make_ode_pairs, ode_regression_loss
from streamr1.flow import warped_steps
from streamr1.models import CausalWanDenoiser
ap = argparse.ArgumentParser()
ap.add_argument("--captions", type=int, default=16); ap.add_argument("--vpc", type=int, default=8)
ap.add_argument("--good", type=int, default=4); ap.add_argument("--starts", type=int, default=None)
ap.add_argument("--minutes", type=float, default=20); ap.add_argument("--eval-every", type=int, default=200)
ap.add_argument("--lr", type=float, default=1e-3); ap.add_argument("--batch", type=int, default=16)
ap.add_argument("--shift", type=float, default=1.0); ap.add_argument("--target", default="sampler")
ap.add_argument("--init", default=None); ap.add_argument("--refresh", type=int, default=8)
ap.add_argument("--out", required=True); ap.add_argument("--radius", type=float, default=None)
a = ap.parse_args()
torch.set_num_threads(1)
import streamr1.toy.world as W
kw = dict(num_captions=a.captions, videos_per_caption=a.vpc, good_per_caption=a.good, size=16, seed=0, starts_per_caption=a.starts)
if a.radius: kw["shape_radius"] = a.radius
world = ToyWorld(**kw)
enc = ToyTextEncoder(dim=toy.TEXT_DIM)
teacher = MixtureTeacher(world=world, text_encoder=enc)
torch.manual_seed(0)
st = CausalWanDenoiser(config=dict(toy.STUDENT_CONFIG), chunk_frames=2)
if a.init: st.load_state_dict(torch.load(a.init))
levels = warped_steps(toy.DENOISING_STEPS, a.shift); print(levels)
g = torch.Generator().manual_seed(0)
opt = torch.optim.AdamW(st.parameters(), lr=a.lr, betas=(0.9, 0.99), weight_decay=0.0)
prompts_all = world.train_prompts()
prompts = [p for p in prompts_all for _ in range(max(1, 32 // a.captions))]
def evaluate():
    return probe_eval.evaluate(st, enc, world, prompts, levels)
r = evaluate(); r.update(it=0); print(json.dumps(r), flush=True)
st.train(); t0 = time.process_time(); w0 = time.time(); it = 0; log = []; pairs = None; seed = 1
while True:
    if it % a.refresh == 0:
        ps = [prompts_all[int(i)] for i in torch.randint(0, len(prompts_all), (a.batch * a.refresh,), generator=g)]
        pairs = make_ode_pairs(teacher, enc, ps, toy.LATENT_SHAPE, guidance_scale=3.0, shift=a.shift, num_steps=16,
                               denoising_steps=toy.DENOISING_STEPS, batch_size=256, seed=seed, causal_chunk_frames=2, target=a.target)
        cond_all = enc.encode(pairs.prompts).float(); seed += 1; k = 0
    warm = min(1.0, (it + 1) / 50)
    for gr in opt.param_groups: gr["lr"] = a.lr * warm
    sl = slice(k * a.batch, (k + 1) * a.batch); k += 1
    loss = ode_regression_loss(st, pairs.xs[sl], pairs.x0[sl], cond_all[sl], pairs.steps, g, None if pairs.targets is None else pairs.targets[sl])
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0); opt.step(); it += 1
    done = time.time() - w0 > a.minutes * 60
    if it % a.eval_every == 0 or done:
        r = evaluate(); r.update(it=it, cpu=round(time.process_time() - t0), wall=round(time.time() - w0), loss=float(loss))
        log.append(r); print(json.dumps(r), flush=True)
        json.dump(log, open(a.out, "w"))
    if done: break
torch.save(st.state_dict(), a.out + ".pt")
