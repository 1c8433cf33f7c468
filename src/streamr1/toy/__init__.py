"""The toy world: Stream-R1's whole recipe run and measured on a CPU (DESIGN.md, "The toy world").

One package; the framework core never imports it. What each file is:

- :mod:`streamr1.toy.world`: attributes, captions, rendering and the :class:`~streamr1.toy.world.ToyWorld` dataset;
- :mod:`streamr1.toy.world_options`: a world's parameters as command-line options and as ``fit`` overrides;
- :mod:`streamr1.toy.text`: the caption encoder; :mod:`streamr1.toy.teacher`: the exact mixture teacher;
- :mod:`streamr1.toy.oracle`: per-video oracle scores from the pixels; :mod:`streamr1.toy.metrics`: the same as
  torchmetrics (good-mode fraction, coverage, the module's ``evaluator``);
- :mod:`streamr1.toy.prompts`: the world's captions as a prompt datamodule;
- :mod:`streamr1.toy.pretrain`: flow-matching training of the tiny Wan (the pretrained model, the causal student);
- :mod:`streamr1.toy.ode`: the student's ODE-regression initialisation (Self-Forcing);
- :mod:`streamr1.toy.init_check`: the initial student's denoising errors and good-mode fraction;
- :mod:`streamr1.toy.reward`: the toy reward, a real ``OpenCLIPVideoReward`` trained on the world's renders;
  :mod:`streamr1.toy.oracle_reward`: the oracle as a reward (upper bound);
- :mod:`streamr1.toy.assets`: ``python -m streamr1.toy.assets`` makes the shipped files;
- :mod:`streamr1.toy.runs`, :mod:`streamr1.toy.evaluation`: fit a stack, evaluate a student or a folder of videos;
- :mod:`streamr1.toy.demo` (``make demo``), :mod:`streamr1.toy.quality` and :mod:`streamr1.toy.tilt`
  (``make bench-quality``).

The constants below are the recipe ``configs/quickstart.yaml`` spells out (a test checks they agree).
"""

from __future__ import annotations

from typing import Any

WORLD: dict[str, Any] = {"num_captions": 4, "videos_per_caption": 8, "good_per_caption": 4, "size": 16, "seed": 0,
                         "shape_radius": 0.22}
"""The :class:`~streamr1.toy.world.ToyWorld` of the recipe (teacher, evaluator, prompts): the exact layout, 4 fully
specified captions in 4 different (shape, colour, direction) cells, 8 videos each (4 good, 4 flawed), 16x16 pixels,
shapes of radius 0.22 of the frame (3.5 px). Chosen by the rounds in ``results/world_curves.md``: the original
512-video wildcard world at 32x32, then 16 captions with radius-0.14 shapes, gave students with no good sample at
init; larger shapes and fewer captions are what got a student past chunk 0 (fourth round)."""

LATENT_SHAPE: tuple[int, int, int, int] = (8, 3, 16, 16)
"""``[F, C, H, W]``: pixel space (the VAE is the identity), 8 frames of 16x16 RGB, 8 chunks of one frame."""

CHUNK_FRAMES = 1
"""Frames a chunk: the toy student is frame-wise causal (Self-Forcing trains both frame-wise and chunk-wise students;
the paper's is chunk-wise, 3 latent frames a chunk). Measured on the recipe's world (``results/world_curves.md``,
"Fifth round"): with 2-frame chunks the student moves the shape too little inside a chunk and catches up at the chunk
boundary (centroid speed 1.5 inside, 2.2-2.6 across, the world's 2.2), so 82% of its samples fail motion and 0.055
are good at init; the same recipe with one-frame chunks moves it evenly (1.9) and samples 0.42 good."""
DENOISING_STEPS: tuple[float, ...] = (1000.0, 750.0, 500.0, 250.0)
SHIFT = 1.0
"""The toy recipe samples at the unwarped levels 1000 / 750 / 500 / 250 (the paper: shift 5, i.e. 1000 / 937.5 /
833.3 / 625). A CPU-sized student's x0 error at the last level is what smudges its samples, and that error is the
level's sigma times its flow error: ``results/world_curves.md``, "The last level".
"""
GUIDANCE_SCALE = 3.0
TEXT_DIM = 32

STUDENT_CONFIG: dict[str, Any] = {
    "patch_size": [1, 2, 2], "num_attention_heads": 4, "attention_head_dim": 32, "in_channels": 3,
    "out_channels": 3, "text_dim": TEXT_DIM, "freq_dim": 64, "ffn_dim": 256, "num_layers": 4,
    "rope_max_seq_len": 32,
}
"""``WanTransformer3DModel`` arguments of the toy student, the pretrained model and the critic: 4 layers, 4 heads x 32,
patch (1, 2, 2) (64 tokens a 16x16 frame, each token 12 pixel values), about 0.95 M parameters."""
