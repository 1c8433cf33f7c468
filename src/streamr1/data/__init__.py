"""Data: prompts (DMD is data-free), video files, and the procedural toy world."""

from streamr1.data.prompts import PromptDataModule, PromptDataset, read_prompts

__all__ = ["PromptDataModule", "PromptDataset", "read_prompts"]
