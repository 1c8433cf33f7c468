"""The toy recipe (configs/quickstart.yaml) composes with every callback stack in callbacks/ and trains.

Each stack runs two student turns through the real CLI (``streamr1 fit --config configs/quickstart.yaml --config
callbacks/<stack>.yaml --config configs/rewards/toy.yaml``) on the shipped toy student and toy reward.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import yaml

from streamr1 import toy
from streamr1.cli import main
from streamr1.toy.runs import check_assets, reward_fragment

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RECIPE = os.path.join(ROOT, "configs", "quickstart.yaml")
STACKS = sorted(f[:-5] for f in os.listdir(os.path.join(ROOT, "callbacks")) if f.endswith(".yaml"))
WEIGHTING = {"ReliabilityWeighting", "SaliencyWeighting", "AdaptiveAxisBalancing"}


pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_shipped_toy_files_exist():
    check_assets()  # raises with the `make toy-assets` fix when one is missing


def test_recipe_spells_out_the_toy_constants():
    cfg = yaml.safe_load(open(RECIPE))["model"]
    assert tuple(cfg["latent_shape"]) == toy.LATENT_SHAPE
    assert tuple(float(s) for s in cfg["sampling"]["denoising_steps"]) == toy.DENOISING_STEPS
    assert cfg["sampling"]["shift"] == toy.SHIFT and cfg["dmd"]["guidance_scale"] == toy.GUIDANCE_SCALE
    assert cfg["student"]["init_args"]["chunk_frames"] == toy.CHUNK_FRAMES
    assert cfg["student"]["init_args"]["config"] == toy.STUDENT_CONFIG == cfg["critic"]["init_args"]["config"]
    assert cfg["text_encoder"]["init_args"]["dim"] == toy.TEXT_DIM == cfg["teacher"]["init_args"]["text_dim"]
    assert {k: cfg["teacher"]["init_args"][k] for k in toy.WORLD} == toy.WORLD
    assert {k: cfg["evaluator"]["init_args"][k] for k in toy.WORLD} == toy.WORLD
    data = yaml.safe_load(open(RECIPE))["data"]["init_args"]
    assert data["num_captions"] == toy.WORLD["num_captions"] and data["world_seed"] == toy.WORLD["seed"]
    # the critic starts from the pretrained model (the analogue of Wan2.1), not from the student
    assert cfg["critic"]["init_args"]["pretrained"] == "pkg://streamr1/assets/toy_pretrained.safetensors"
    assert cfg["dmd"]["critic_init_from_student"] is False


def test_there_is_a_stack_for_every_row_of_the_table():
    from streamr1.toy.quality import STACKS as TABLE

    assert sorted(TABLE) == STACKS and len(STACKS) == 8


@pytest.mark.parametrize("stack", STACKS)
def test_each_stack_composes_with_the_recipe_and_runs_two_student_turns(stack, tmp_path):
    reward = reward_fragment(stack)  # the toy reward (the oracle for oracle_reliability); none for dmd
    assert (reward is None) == (stack == "dmd")
    cli = main([
        "fit", "--config", RECIPE, "--config", os.path.join(ROOT, "callbacks", f"{stack}.yaml"),
        *(["--config", os.path.join(ROOT, reward)] if reward else []),
        "--model.dmd.student_every", "1", "--trainer.max_steps", "4",  # 2 cycles: critic + student each
        "--trainer.limit_val_batches", "0", "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger.init_args.save_dir", str(tmp_path),
        "--data.init_args.batch_size", "2",
    ])
    m = cli.model
    assert (m.student_steps, m.critic_steps) == (2, 2)
    names = {type(cb).__name__ for cb in cli.trainer.callbacks}
    assert "StudentEMA" in names and "RunCheckpoint" in names  # no stack drops the checkpoint
    if stack == "dmd":
        assert not names & WEIGHTING and "RewardService" not in names
    else:
        assert "RewardService" in names and "ReliabilityWeighting" in names
        service = next(cb for cb in cli.trainer.callbacks if type(cb).__name__ == "RewardService")
        # one reward forward per student turn (SPEC §4.1), never per critic turn; one batched backward when a
        # consumer needs saliency (the stacks without SaliencyWeighting need none)
        assert service.forward_calls == 2
        assert service.backward_calls == (2 if "SaliencyWeighting" in names else 0)
    assert all(math.isfinite(float(v)) for k, v in cli.trainer.logged_metrics.items() if "loss" in k)
    for p in m.student.parameters():
        assert torch.isfinite(p).all()
