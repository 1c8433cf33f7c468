"""Lazy package exports (PEP 562): a package's names are imported from their submodules on first use.

Used by ``streamr1.data`` and ``streamr1.models`` so that importing one submodule (or running ``streamr1 --help``)
does not import Lightning, diffusers or peft.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_exports(package: str, where: dict[str, str],
                 namespace: dict[str, Any]) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package``: name ``n`` comes from ``package.where[n]``, cached in
    ``namespace`` (the package's ``globals()``) after the first lookup."""

    def __getattr__(name: str) -> Any:
        if name in where:
            value = getattr(importlib.import_module(f"{package}.{where[name]}"), name)
            namespace[name] = value
            return value
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__() -> list[str]:
        return sorted([*namespace, *where])

    return __getattr__, __dir__
