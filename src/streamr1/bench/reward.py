"""Reward benchmark: the reference's saliency scheme against ours, at VideoReward's width (SPEC.md §4.5).

``python -m streamr1.bench.reward`` (part of ``make bench``). A random-weight VideoAlignReward with Qwen2-VL-2B's
widths (language model hidden 1536, 12 heads of 128, 2 KV heads, MLP 8960; vision tower 1280 wide, 16 heads, MLP
5120) and a few layers of each, on the recipe's frame count (81 frames: 80 scored) at a reduced frame size that a
CPU can run. Two schemes score the same video and give the per-axis saliency ``||d raw_a / d pixels||``:

* reference (Stream-R1's released code): one no-grad forward for the scores, one forward with grad, one backward
  an axis (three, the graph retained between them);
* ours (:class:`~streamr1.rewards.service.RewardService`): one forward with grad serves the scores, and ONE batched
  backward (``torch.autograd.grad(..., is_grads_batched=True)``) gives all three axes.

Runs alternate (A, B, A, B, ...) after a warm-up of each; the report gives the median time and the spread
(min-max), the peak memory of each (CUDA's peak allocator statistic on a GPU; on a CPU the peak resident-set growth
of a forked child per run), and the ratios. Both schemes' saliency are checked equal.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from streamr1.protocols import AXES

QWEN2VL_2B_TEXT = {"hidden_size": 1536, "intermediate_size": 8960, "num_attention_heads": 12,
                   "num_key_value_heads": 2, "num_hidden_layers": 28}
QWEN2VL_2B_VISION = {"embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4, "depth": 32}
"""Qwen2-VL-2B-Instruct's widths (its config.json); the benchmark keeps these and cuts the layer counts."""

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>", "<|VQ_reward|>", "<|MQ_reward|>", "<|TA_reward|>"]


def byte_tokenizer(reward_tokens: bool = True) -> Any:
    """A byte-level BPE tokenizer with no merges (one token a byte) and Qwen2-VL's special tokens, plus the three
    reward tokens unless ``reward_tokens`` is False (a base Qwen2-VL's tokenizer), built offline. Stands in for
    Qwen2's tokenizer in tests and the benchmark."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    tk = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tk.decoder = decoders.ByteLevel()
    extra = SPECIAL_TOKENS[1:] if reward_tokens else SPECIAL_TOKENS[1:-3]
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token=SPECIAL_TOKENS[0], eos_token="<|im_end|>",
                                   additional_special_tokens=extra, padding_side="right")


def random_qwen2vl(tokenizer: Any, *, text: dict[str, int] | None = None, vision: dict[str, int] | None = None,
                   seed: int = 0, dtype: torch.dtype = torch.float32) -> Any:
    """A random ``Qwen2VLForConditionalGeneration`` whose vocabulary and token ids fit ``tokenizer``.

    ``text`` / ``vision`` override the sub-configs (default: a tiny model, hidden 32, 2 layers each).
    """
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    text = {"hidden_size": 32, "intermediate_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
            "num_hidden_layers": 2, **(text or {})}
    head_dim = text["hidden_size"] // text["num_attention_heads"]
    quarter = head_dim // 4  # M-RoPE splits the rotary half into (temporal, height, width) sections
    section = [head_dim // 2 - 2 * quarter, quarter, quarter]
    vision = {"embed_dim": 32, "hidden_size": text["hidden_size"], "num_heads": 4, "mlp_ratio": 2, "depth": 2,
              **(vision or {})}
    ids = dict(zip(SPECIAL_TOKENS[:7], tokenizer.convert_tokens_to_ids(SPECIAL_TOKENS[:7]), strict=True))
    config = Qwen2VLConfig(
        text_config={**text, "vocab_size": len(tokenizer), "bos_token_id": ids["<|endoftext|>"],
                     "eos_token_id": ids["<|im_end|>"], "rope_parameters": {"rope_type": "default",
                                                                                "rope_theta": 1e6,
                                                                                "mrope_section": section}},
        vision_config={**vision, "patch_size": 14, "temporal_patch_size": 2, "spatial_merge_size": 2,
                       "in_channels": 3},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config).to(dtype)
    return model.eval()
