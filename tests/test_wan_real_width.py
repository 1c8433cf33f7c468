"""The paper's recipe at the real widths, through the real CLI (issue 11, "Proof at real width"; slow).

``streamr1 fit --config configs/wan2.1_t2v.yaml --config callbacks/stream_r1.yaml --config
configs/rewards/videoreward.yaml --config <this test's overrides>``: one student turn and one critic turn with the
Wan2.1 widths (student and critic 1536 hidden = 12 heads of 128, teacher 5120 = 40 heads of 128, text 512 tokens x
4096), one transformer layer a model, random weights, a small latent (3 x 16 x 8 x 8: one chunk, 9 frames of
64x64 after a tiny Wan VAE with the real 4x/8x compression), and the VideoAlign reward built from a tiny random
Qwen2-VL saved in VideoReward's published folder layout. The overrides only replace what points at files a user
holds (pretrained paths, the prompt file) with config dicts, and shrink depth, latent and accumulation; the recipe,
the stack and the reward fragment are the files users run.
"""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from streamr1.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WAN_1_3B = {"patch_size": [1, 2, 2], "num_attention_heads": 12, "attention_head_dim": 128, "in_channels": 16,
            "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 8960, "num_layers": 1}
WAN_14B = {**WAN_1_3B, "num_attention_heads": 40, "ffn_dim": 13824}
TINY_WAN_VAE = {"base_dim": 8, "z_dim": 16, "dim_mult": [1, 1, 1, 1], "num_res_blocks": 1,
                "temperal_downsample": [False, True, True]}  # Wan's compression: 4x in time, 8x in space
REWARD_FRAME = [56, 84]  # the tiny Qwen2-VL's frames: 4 x 6 patches of 14 (the real reward: 336 x 588)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


PROMPTS = ["a red fox runs through fresh snow"]
"""The training prompts; the tiny reward's word-level tokenizer is built over them."""


def _overrides(tmp_path, folder: str, base: str, stats: str) -> str:
    cfg = {
        "trainer": {"accelerator": "cpu", "devices": 1, "max_steps": 2, "logger": False, "limit_val_batches": 0,
                    "num_sanity_val_steps": 0, "enable_progress_bar": False, "default_root_dir": str(tmp_path)},
        "model": {
            "student": {"init_args": {"pretrained": None, "config": WAN_1_3B}},
            "teacher": {"init_args": {"pretrained": None, "subfolder": None, "config": WAN_14B}},
            "critic": {"init_args": {"pretrained": None, "subfolder": None, "config": WAN_1_3B}},
            "text_encoder": {"class_path": "streamr1.models.HashTextEncoder",
                             "init_args": {"dim": 4096, "length": 512}},  # UMT5-XXL's output: 512 x 4096
            "vae": {"init_args": {"pretrained": None, "config": TINY_WAN_VAE}},
            "latent_shape": [3, 16, 8, 8],
            "dmd": {"accumulate": 1},  # one micro-batch a cycle: cycle 0 = one student turn + one critic turn
        },
        "data": {"init_args": {"prompts_file": None, "prompts": PROMPTS}},
        "reward": {"model": {"init_args": {"path": folder, "base_model": base, "size": REWARD_FRAME,
                                           "torch_dtype": "float32"}},
                   "normalization": stats},
    }
    path = tmp_path / "real_width.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    return str(path)


def test_one_student_and_one_critic_turn_of_the_wan_recipe_at_real_width(tmp_path, capsys):
    from streamr1.bench.reward import write_random_videoreward
    from streamr1.rewards.videoalign import main as videoalign_main

    folder, _ = write_random_videoreward(str(tmp_path / "weights"), prompts=PROMPTS)
    base = os.path.join(str(tmp_path / "weights"), "Qwen2-VL-tiny")
    stats = str(tmp_path / "videoreward_stats.json")
    videoalign_main(["stats", folder, "--output", stats])  # the recipe header's command for VideoReward's own stats

    cli = main(["fit", "--config", os.path.join(ROOT, "configs", "wan2.1_t2v.yaml"),
                "--config", os.path.join(ROOT, "callbacks", "stream_r1.yaml"),
                "--config", os.path.join(ROOT, "configs", "rewards", "videoreward.yaml"),
                "--config", _overrides(tmp_path, folder, base, stats)])
    m, trainer = cli.model, cli.trainer

    def width(denoiser):
        cfg = denoiser.transformer.config if hasattr(denoiser, "transformer") else denoiser.causal.transformer.config
        return cfg.num_attention_heads * cfg.attention_head_dim, cfg.num_attention_heads, cfg.text_dim

    assert width(m.student) == width(m.critic) == (1536, 12, 4096)
    assert width(m.teacher) == (5120, 40, 4096)
    assert tuple(m.encode_prompts(["x"]).shape) == (1, 512, 4096)
    assert (m.student_steps, m.critic_steps, trainer.global_step) == (1, 1, 2)

    service = next(cb for cb in trainer.callbacks if type(cb).__name__ == "RewardService")
    assert type(service.model).__name__ == "VideoAlignReward"
    assert (service.forward_calls, service.backward_calls) == (1, 1)  # one forward, one batched backward (SPEC §4.5)
    logged = trainer.logged_metrics
    for key in ("train/student_loss", "critic/loss", "weights/inter_mean", "reward/VQ", "reward/MQ", "reward/TA"):
        assert key in logged and math.isfinite(float(logged[key])), key
    for p in m.student.parameters():
        assert torch.isfinite(p).all()
    assert os.path.isfile(tmp_path / "checkpoints" / "last.ckpt")
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("[streamr1] weighting:"))
    assert "stream_r1.yaml: AdaptiveAxisBalancing" in line and f"VideoAlignReward, statistics {stats}" in line
