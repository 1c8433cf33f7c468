"""Probe (results/world_curves.md, "Sixth round"): could the toy recipe's pretrained denoiser (stage a, the analogue
of Wan2.1) serve as a *learned* teacher, unreliable where Stream-R1 assumes a real teacher is - on poor rollouts?

1. Each teacher's own guided samples (CFG 3, 24 Euler steps of the guided ODE, shift 5; 8 a caption): oracle modes.
2. The shipped initial student's rollouts (32 a caption), their oracle modes and the toy reward's Overall z-score.
3. At the DMD's noise levels t = 200 ... 950 (two noise draws each): the learned teacher's guided x0 against the
   exact one's on the same x_t, per oracle mode: RMS difference, relative error ||x0_learned - x0_exact|| /
   ||x - x0_exact|| (the share of the DMD gradient's teacher term it gets wrong), the cosine between the two
   teachers' pulls (x0 - x), and the rank correlation of the relative error with the reward.

`.venv/bin/python results/probes/learned_teacher.py` (one thread, about 10 minutes) writes learned_teacher.json.
Measured: the exact teacher's samples are 0.72 good; the learned one's 0.00 good (0.97 visual flaws). On the
student's rollouts the learned teacher's pull points elsewhere (cosine 0.02-0.35 with the exact pull; relative
error 1.0-3.8 at every level), on good rollouts as much as on flawed ones (Spearman of its error with the reward
-0.40 to 0.17): unreliable everywhere, not where the reward is low. So the recipe keeps the exact teacher."""
import json
import time

import torch

from streamr1 import toy
from streamr1.losses import cfg_x0
from streamr1.toy.assets import _levels, build_pretrained, build_student, build_teacher
from streamr1.toy.evaluation import eval_prompts, sample_student
from streamr1.toy.ode import teacher_ode
from streamr1.toy.oracle import classify_mode, oracle_scores
from streamr1.toy.reward import reward_scores, toy_reward
from streamr1.toy.runs import asset_paths

torch.set_num_threads(1)
LEVELS = (200, 400, 600, 800, 950)


def guided_x0(teacher, xt, t, cond, neg, batch=64):
    out = []
    for i in range(0, len(xt), batch):
        b = min(batch, len(xt) - i)
        y = teacher(torch.cat([xt[i:i + b]] * 2), torch.cat([t[i:i + b]] * 2),
                    torch.cat([cond[i:i + b], neg[i:i + b]])).float()
        out.append(cfg_x0(y[:b], y[b:], 3.0))
    return torch.cat(out)


def ranks(v):
    return v.argsort().argsort().float()


def main():
    files = asset_paths(None)
    exact = build_teacher()
    enc, world = exact.text_encoder, exact.world
    teachers = {"exact": exact, "learned": build_pretrained(files["pretrained"]).eval()}
    student = build_student(files["student"]).eval()
    shape = tuple(world.videos.shape[1:])
    out, t0 = {}, time.time()
    with torch.no_grad():
        sp = eval_prompts(8, world)
        sc, sn = enc.encode(sp).float(), enc.encode([""] * len(sp)).float()
        noise = torch.randn(len(sp), *shape, generator=torch.Generator().manual_seed(0))
        for name, teacher in teachers.items():
            _, x0 = teacher_ode(teacher, sc, sn, noise, 3.0, toy.SHIFT, 24)
            modes = classify_mode(oracle_scores(x0.clamp(-1, 1), sp))
            out[f"{name}_teacher_samples"] = {k: modes.count(k) / len(modes) for k in sorted(set(modes))}
            print(name, "teacher's samples", out[f"{name}_teacher_samples"], flush=True)
        prompts = eval_prompts(32, world)
        cond, neg = enc.encode(prompts).float(), enc.encode([""] * len(prompts)).float()
        x = sample_student(student, enc, prompts, shape, _levels(), seed=1234)
        labels = classify_mode(oracle_scores(x, prompts))
        r = reward_scores(toy_reward(files["reward"]), x, prompts, 64)
        overall = sum((r[a] - r[a].mean()) / r[a].std() for a in r) / 3
        out["student_modes"] = {k: labels.count(k) / len(labels) for k in sorted(set(labels))}
        print("student's rollouts", out["student_modes"], flush=True)
        gen = torch.Generator().manual_seed(1)
        out["by_t"] = {}
        for t in LEVELS:
            s = t / 1000
            err, rel, cos = [], [], []
            for _ in range(2):
                xt = (1 - s) * x + s * torch.randn(x.shape, generator=gen)
                tt = torch.full((len(x),), float(t))
                x0 = {n: guided_x0(m, xt, tt, cond, neg) for n, m in teachers.items()}
                diff = (x0["learned"] - x0["exact"]).flatten(1)
                err.append(diff.pow(2).mean(1).sqrt())
                rel.append(diff.norm(dim=1) / (x - x0["exact"]).flatten(1).norm(dim=1))
                cos.append(torch.nn.functional.cosine_similarity((x0["learned"] - x).flatten(1),
                                                                 (x0["exact"] - x).flatten(1)))
            err, rel, cos = (torch.stack(v).mean(0) for v in (err, rel, cos))
            row = {}
            for mode in sorted(set(labels)):
                sel = torch.tensor([m == mode for m in labels])
                row[mode] = {"n": int(sel.sum()), "x0_rms_diff": float(err[sel].mean()),
                             "relative_error": float(rel[sel].mean()), "cosine": float(cos[sel].mean())}
            row["spearman_error_vs_reward"] = float(torch.corrcoef(torch.stack([ranks(rel), ranks(overall)]))[0, 1])
            out["by_t"][t] = row
            print(t, json.dumps(row), flush=True)
    out["seconds"] = time.time() - t0
    with open("learned_teacher.json", "w") as fh:
        json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()
