"""Data: prompts (DMD is data-free) and video files.

Names are imported on first use (PEP 562), so ``import streamr1.data.videos`` does not import Lightning.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from streamr1.lazy import lazy_exports

if TYPE_CHECKING:  # pragma: no cover
    from streamr1.data.prompts import PromptDataModule, PromptDataset, read_prompts

_WHERE = {"PromptDataModule": "prompts", "PromptDataset": "prompts", "read_prompts": "prompts"}

__all__ = ["PromptDataModule", "PromptDataset", "read_prompts"]


__getattr__, __dir__ = lazy_exports(__name__, _WHERE, globals())
