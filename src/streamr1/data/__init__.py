"""Data: prompts (DMD is data-free) and video files.

Names are imported on first use (PEP 562), so ``import streamr1.data.videos`` does not import Lightning.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from streamr1.data.prompts import PromptDataModule, PromptDataset, read_prompts

_WHERE = {"PromptDataModule": "prompts", "PromptDataset": "prompts", "read_prompts": "prompts"}

__all__ = ["PromptDataModule", "PromptDataset", "read_prompts"]


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        value = getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
