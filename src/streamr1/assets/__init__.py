"""Files shipped inside the package, and the ``pkg://`` paths configs use to name them.

The toy world's slow-to-make files live here, made by ``python -m streamr1.toy.assets --output src/streamr1/assets``
(``make toy-assets``):

- ``toy_pretrained.safetensors``: the tiny bidirectional Wan pretrained by flow matching on the world's videos (the
  analogue of Wan2.1-1.3B; the DMD critic starts from it);
- ``toy_student.safetensors``: the causal student (the pretrained weights, teacher-forcing flow matching, then
  ODE regression on the exact teacher);
- ``toy_reward.pt``: the toy :class:`~streamr1.rewards.openclip.OpenCLIPVideoReward` (CLIP and heads);
- ``toy_reward_stats.json``: the reward's per-axis mean and std on the initial student's rollouts (SPEC.md §4.1);
  ``toy_oracle_stats.json``: the same for the oracle used as a reward (the upper-bound stack);
- ``toy_reward_spearman.json``: the reward's Spearman correlation with the oracle per axis (held-out renders and
  held-out rollouts of the initial student);
- ``toy_assets.json``: how they were made (the command, budgets, timings, the initial student's init check).

A config names them ``pkg://streamr1/assets/<file>``; :func:`resolve` turns that into a path on disk wherever the
package is installed, so recipes work from any working directory.
"""

from __future__ import annotations

import os
from importlib import resources

PKG_SCHEME = "pkg://"
"""Prefix of a package-relative path: ``pkg://<package>/<path inside the package>``."""


def resolve(path: str | os.PathLike[str]) -> str:
    """``pkg://<package>/<relative path>`` -> the file's path inside the installed package; other paths unchanged.

    Example::

        resolve("pkg://streamr1/assets/toy_reward.pt")  # -> ".../site-packages/streamr1/assets/toy_reward.pt"

    Raises:
        ValueError: a ``pkg://`` path without a package or without a file part.
        ModuleNotFoundError: the package is not installed.
    """
    path = os.fspath(path)
    if not path.startswith(PKG_SCHEME):
        return path
    package, _, rel = path[len(PKG_SCHEME):].partition("/")
    if not package or not rel:
        raise ValueError(f"{path!r}: a package path is pkg://<package>/<path inside it>, e.g. "
                         "pkg://streamr1/assets/toy_reward.pt.")
    return str(resources.files(package).joinpath(rel))
