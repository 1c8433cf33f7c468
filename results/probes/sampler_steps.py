"""Probe (results/world_curves.md): a flow_student.py checkpoint's x0 prediction at each level of the 4-step sampler
for 4 captions of the X2 world (edit the ToyWorld line for another), next to the caption's mean video (the Bayes answer at t = 1000), as a PNG. Scratch-quality.
`.venv/bin/python results/probes/sampler_steps.py x2.json.pt steps.png`."""
import torch, sys
from PIL import Image
from streamr1 import toy
from streamr1.toy.world import ToyWorld
from streamr1.toy.text import ToyTextEncoder
from streamr1.models import CausalWanDenoiser
from streamr1.flow import warped_steps, add_noise
torch.set_num_threads(1)
w = ToyWorld(num_captions=16, videos_per_caption=4, good_per_caption=2, size=16, seed=0, starts_per_caption=1, shape_radius=0.22)
st = CausalWanDenoiser(config=dict(toy.STUDENT_CONFIG), chunk_frames=2); st.load_state_dict(torch.load(sys.argv[1])); st.eval()
enc = ToyTextEncoder(dim=32)
caps = w.train_prompts()[:4]
cond = enc.encode(caps).float()
levels = warped_steps(toy.DENOISING_STEPS, 1.0)
g = torch.Generator().manual_seed(3)
x = torch.randn(4, 2, 3, 16, 16, generator=g)
rows = []
with torch.no_grad():
    for i, lev in enumerate(levels):
        t = torch.full((4, 2), lev)
        x0 = st.causal(x, t, cond) if False else None
        v = st.causal(x, t, cond); x0 = x - lev/1000 * v
        # also the plain forward (x0 predictor)
        x0b = st(x, t, cond)
        print(lev, "flow-vs-forward diff", (x0 - x0b).abs().max().item())
        rows.append(torch.cat([x0[j, 0] for j in range(4)], dim=-1))
        if i + 1 < len(levels):
            x = add_noise(x0, torch.randn(x0.shape, generator=g), torch.full((4,), levels[i+1]))
mean = torch.stack([w.videos[[k for k, c in enumerate(w.captions) if c == cap]].mean(0)[0] for cap in caps])
rows.append(torch.cat(list(mean), dim=-1))
img = torch.cat(rows, dim=-2); img = ((img.clamp(-1,1)+1)*127.5).byte().permute(1,2,0).numpy()
Image.fromarray(img).resize((img.shape[1]*6, img.shape[0]*6), Image.NEAREST).save(sys.argv[2])
