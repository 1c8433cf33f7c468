"""The toy reward's training data (issue 13, item 5): the world's captions and the student's own rollouts."""

from __future__ import annotations

import pytest
import torch

from streamr1 import toy
from streamr1.toy.oracle import classify_mode, oracle_scores
from streamr1.toy.reward import concat_examples, reward_examples, reward_loss, rollout_examples, toy_reward
from streamr1.toy.world import ToyWorld

pytestmark = pytest.mark.usefixtures("one_thread")


def test_renders_of_the_world_use_its_captions_and_size():
    world = ToyWorld(**toy.WORLD)
    data = reward_examples(24, seed=5, world=world)
    assert data["video"].shape == (24, *toy.LATENT_SHAPE)
    assert set(data["prompt"]) <= set(world.train_prompts()) and bool(data["clip"].all())


def test_rollouts_are_labelled_by_the_oracle_and_left_out_of_the_contrastive_loss():
    world = ToyWorld(**toy.WORLD)
    video = world.videos[:6]
    prompts = world.captions[:6]
    data = rollout_examples(video, prompts)
    assert data["mode"] == classify_mode(oracle_scores(video, prompts)) == world.modes[:6]
    assert not data["clip"].any() and data["shown"] == prompts
    pool = concat_examples(reward_examples(4, seed=1, world=world), data)
    assert pool["video"].shape[0] == 10 and pool["clip"].tolist() == [True] * 4 + [False] * 6

    reward = toy_reward(seed=0, size=world.size)
    oracle = {a: v for a, v in data["oracle"].items()}
    torch.manual_seed(0)
    _, logs_none = reward_loss(reward, video, prompts, prompts, oracle, data["clip"])
    assert logs_none["clip"] == 0.0  # no video takes part: no contrastive term
    _, logs_all = reward_loss(reward, video, prompts, prompts, oracle)
    assert logs_all["clip"] > 0.0
    # the regression terms do not depend on the mask
    assert logs_none["reg_VQ"] == pytest.approx(logs_all["reg_VQ"])


def test_toy_reward_size_must_give_64_patches():
    assert toy_reward(seed=0, size=16).image_size == (16, 16)
    with pytest.raises(ValueError, match="divisible by 8"):
        toy_reward(seed=0, size=20)
