"""Shared by the probes: a student's 4-step samples scored by the oracle (good fraction, nearest-world-video RMS, VQ
parts). Scratch-quality, like the probes."""
import torch

from streamr1 import toy
from streamr1.toy.evaluation import sample_student
from streamr1.toy.oracle import classify_mode, good_mode, oracle_scores, visual_quality


def evaluate(student, enc, world, prompts, levels):
    v = sample_student(student, enc, prompts, toy.LATENT_SHAPE, levels, seed=5)
    student.train()
    d = []
    for i, p in enumerate(prompts):
        idx = [j for j, c in enumerate(world.captions) if c == p]
        d.append(torch.stack([(v[i] - world.videos[j]).pow(2).mean().sqrt() for j in idx]).min())
    d = torch.stack(d)
    s = oracle_scores(v, prompts)
    vq = visual_quality(v)
    modes = classify_mode(s)
    return {"good": good_mode(s).float().mean().item(), "near_med": d.median().item(),
            "near_q10": d.quantile(0.1).item(), "fid": vq["fidelity"].median().item(),
            "opa": vq["opacity"].median().item(), "sharp": vq["sharpness"].median().item(),
            "noise": vq["noise"].median().item(), "modes": {m: modes.count(m) for m in set(modes)}}
