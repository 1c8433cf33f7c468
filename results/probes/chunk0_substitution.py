"""Probe (results/world_curves.md, "The last level"): the shipped student's 4-step samples (64: the world's 16 captions
x 4, noise seed 5) with chunk 0's x0 taken from the exact teacher at every level >= UPTO (the student does the rest of
chunk 0 and every later chunk), scored by the oracle. Scratch-quality.
`.venv/bin/python results/probes/chunk0_substitution.py STUDENT.safetensors UPTO SHIFT` (UPTO 2000: student only)."""
import sys

import torch

from streamr1 import toy
from streamr1.flow import warped_steps
from streamr1.toy import assets
from streamr1.toy.evaluation import sample_student
from streamr1.toy.oracle import classify_mode, good_mode, oracle_scores, visual_quality

torch.set_num_threads(1)
path, upto, shift = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
st = assets.build_student(path)
st.eval()
teacher = assets.build_teacher()
w, enc = teacher.world, teacher.text_encoder
prompts = [p for p in w.train_prompts() for _ in range(4)]
cond_all = enc.encode(prompts).float()
student_x0 = st.chunk_x0


def chunk_x0(x_t, t, cond, cache, write=False):
    out = student_x0(x_t, t, cond, cache, write=write)
    level = float(torch.as_tensor(t).reshape(-1)[0])
    if write or cache.num_tokens != 0 or level < upto:
        return out
    b, f = x_t.shape[:2]  # chunk 0: the teacher sees the full video, its later frames pure noise
    full = torch.cat([x_t, torch.randn(b, w.videos.shape[1] - f, *x_t.shape[2:])], 1)
    t_full = torch.full((b, w.videos.shape[1]), level)
    t_full[:, f:] = 1000.0
    return teacher(full, t_full, cond_all)[:, :f].to(out)


st.chunk_x0 = chunk_x0
v = sample_student(st, enc, prompts, toy.LATENT_SHAPE, warped_steps(toy.DENOISING_STEPS, shift), seed=5,
                   batch_size=len(prompts))
s = oracle_scores(v, prompts)
modes = classify_mode(s)
print(f"levels {[round(x, 1) for x in warped_steps(toy.DENOISING_STEPS, shift)]}, teacher for chunk 0 at >= {upto}:",
      f"good {good_mode(s).float().mean().item():.3f}", {k: round(float(s[k].mean()), 2) for k in s},
      f"fidelity {visual_quality(v)['fidelity'].median().item():.2f}", {m: modes.count(m) for m in sorted(set(modes))})
