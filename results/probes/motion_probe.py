"""Probe (results/world_curves.md, "Fifth round"): where a student's motion error comes from. Samples 32 videos a
caption of the recipe's world with each student (the few-step sampler from fixed noise) and prints, per frame, the mean
centroid speed and the mean |second difference| of the centroid (32-px scale: the oracle's MQ is minus its mean), the
MQ quantiles, the share passing MQ at -0.5 / -1 / -1.5, and the oracle's modes. The world's good and motion-flawed
videos are printed first for scale. A chunk-wise student that under-moves inside a chunk and catches up across the
boundary shows a sawtooth in the speeds.
`.venv/bin/python results/probes/motion_probe.py STUDENT.safetensors[:CHUNK_FRAMES] ...` (chunk frames default:
the recipe's)."""
import sys, torch
torch.set_num_threads(1)
from streamr1 import toy
from streamr1.models import CausalWanDenoiser
from streamr1.toy import assets
from streamr1.toy.text import ToyTextEncoder
from streamr1.toy.evaluation import sample_student
from streamr1.toy.oracle import track, oracle_scores, classify_mode
world = assets.build_world()
te = ToyTextEncoder(dim=toy.TEXT_DIM)
prompts = [p for p in world.train_prompts() for _ in range(32)]
def report(name, v, prompts):
    c = track(v)[0] * 32.0 / v.shape[-1]
    sec = (c[:, 2:] - 2 * c[:, 1:-1] + c[:, :-2]).norm(dim=-1)
    s = oracle_scores(v, prompts)
    modes, mq = classify_mode(s), s["MQ"]
    print(name, "|2nd diff| by centre frame", [round(x, 2) for x in sec.mean(0).tolist()],
          "MQ q10/50/90", [round(x, 2) for x in mq.quantile(torch.tensor([0.1, 0.5, 0.9])).tolist()],
          "pass MQ -0.5/-1/-1.5", [round(float((mq >= t).float().mean()), 3) for t in (-0.5, -1.0, -1.5)],
          {m: modes.count(m) for m in sorted(set(modes))}, flush=True)
    print("   speed by frame", [round(x, 2) for x in (c[:, 1:] - c[:, :-1]).norm(dim=-1).mean(0).tolist()])
for mode in ("good", "motion"):
    idx = [i for i in range(len(world)) if world.modes[i] == mode]
    report(f"world {mode}", world.videos[idx], [world.captions[i] for i in idx])
for arg in sys.argv[1:]:
    path, _, chunk = arg.partition(":")
    student = CausalWanDenoiser(pretrained=path, config=dict(toy.STUDENT_CONFIG),
                                chunk_frames=int(chunk) if chunk else toy.CHUNK_FRAMES)
    v = sample_student(student, te, prompts, tuple(world.videos.shape[1:]), assets._levels(), seed=1234)
    report(f"{path} (chunks of {student.chunk_frames})", v, prompts)
