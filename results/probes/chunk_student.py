"""Probe (results/world_curves.md, "Fifth round"): stage 2 of the toy recipe (teacher-forcing flow matching, then
ODE regression on the exact teacher's causal ODE; the `long` budget) from a given pretrained model, with a given chunk
size, on the recipe's world; then the init check (32 samples a caption). One thread, about 14 minutes.
`.venv/bin/python results/probes/chunk_student.py PRETRAINED.safetensors CHUNK_FRAMES OUT` writes
OUT_student.safetensors and OUT.json."""
import json, sys, time, torch
torch.set_num_threads(1)
from streamr1 import toy
toy.CHUNK_FRAMES = int(sys.argv[2])
from streamr1.toy import assets
from streamr1.toy.init_check import check_student, format_report
from streamr1.toy.text import ToyTextEncoder
out, t0 = sys.argv[3], time.time()
student, summary = assets.make_student(assets.BUDGETS["long"], sys.argv[1], 0)
assets.save_student(student, out + "_student.safetensors")
r = check_student(student, assets.build_world(), ToyTextEncoder(dim=toy.TEXT_DIM), assets._levels(), repeats=32)
print(format_report(r), flush=True)
json.dump({"world": toy.WORLD, "chunk_frames": toy.CHUNK_FRAMES, "student": summary, "check": r,
           "seconds": time.time() - t0}, open(out + ".json", "w"), default=str)
