"""Reward models, the shared reward service, and per-axis normalisation (SPEC.md §4.1).

Reward models: :mod:`streamr1.rewards.openclip` (any open_clip architecture with VQ/MQ/TA heads) and
:mod:`streamr1.rewards.videoalign` (VideoReward, the paper's reward: Qwen2-VL + LoRA + reward head, SPEC §4.6).
"""
