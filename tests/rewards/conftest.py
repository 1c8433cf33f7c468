"""Tiny random open_clip rewards for the reward tests (nothing is downloaded; NOTES.md, open_clip)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

TINY_CLIP: dict[str, Any] = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def tiny_config() -> dict[str, Any]:
    return copy.deepcopy(TINY_CLIP)


@pytest.fixture(scope="session")
def tiny_reward():
    """One frozen tiny random OpenCLIPVideoReward (eval mode), shared: tests must not modify it."""
    from streamr1.rewards.openclip import OpenCLIPVideoReward

    return OpenCLIPVideoReward(model_config=tiny_config(), num_frames=None).eval()
