"""Running the toy recipe in-process through the real CLI (``streamr1.cli.main``), shared by the demo and the table.

Both ``make demo`` and ``make bench-quality`` run exactly what a user types
(``streamr1 fit --config configs/quickstart.yaml --config callbacks/<stack>.yaml --config configs/rewards/toy.yaml
...``), in the current process, so the composed YAML, the callbacks and the checkpoints are the real ones.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from streamr1.assets import resolve

RECIPE = "configs/quickstart.yaml"
"""The toy recipe, relative to the repository root."""

REWARDS = {"oracle_reliability": "toy_oracle"}
"""The reward fragment (``configs/rewards/<name>.yaml``) of a stack, where it is not the toy reward."""

_REWARD_CONSUMERS = ("ReliabilityWeighting", "SaliencyWeighting", "AdaptiveAxisBalancing")


def repo_path(rel: str) -> str:
    """``rel`` (e.g. ``configs/quickstart.yaml``) from the current directory, else from the source checkout.

    Commands run from the repository root (``make demo``); an editable install also finds the checkout's files from
    anywhere.
    """
    if os.path.exists(rel):
        return rel
    checkout = Path(__file__).resolve().parents[3] / rel
    if checkout.exists():
        return str(checkout)
    raise FileNotFoundError(f"{rel!r} not found: run this from the streamr1 repository root (where configs/ and "
                            "callbacks/ are).")


def check_assets() -> None:
    """Fail early, with the fix, when the shipped toy files are missing."""
    from streamr1.toy.assets import PRETRAINED_FILE, REWARD_FILE, STATS_FILE, STUDENT_FILE

    missing = [f for f in (PRETRAINED_FILE, STUDENT_FILE, REWARD_FILE, STATS_FILE)
               if not os.path.isfile(resolve(f"pkg://streamr1/assets/{f}"))]
    if missing:
        raise FileNotFoundError(f"The toy world's shipped files {missing} are missing from streamr1/assets: make them "
                                "with `make toy-assets` (python -m streamr1.toy.assets --output src/streamr1/assets "
                                "--budget long).")


def asset_paths(folder: str | None) -> dict[str, str]:
    """The toy files a run reads, by role (``student``, ``pretrained``, ``reward``, ``stats``, ``oracle_stats``): from
    ``folder`` (made by ``python -m streamr1.toy.assets --output folder``), or the shipped ones when ``None``. Refuses
    a folder that lacks one, naming it and the command that makes it."""
    from streamr1.toy.assets import ORACLE_STATS_FILE, PRETRAINED_FILE, REWARD_FILE, STATS_FILE, STUDENT_FILE

    names = {"student": STUDENT_FILE, "pretrained": PRETRAINED_FILE, "reward": REWARD_FILE, "stats": STATS_FILE,
             "oracle_stats": ORACLE_STATS_FILE}
    if folder is None:
        return {role: resolve(f"pkg://streamr1/assets/{name}") for role, name in names.items()}
    paths = {role: os.path.join(folder, name) for role, name in names.items()}
    missing = sorted(name for role, name in names.items() if not os.path.isfile(paths[role]))
    if missing:
        raise FileNotFoundError(f"{folder} lacks the toy files {missing}: make them with `python -m "
                                f"streamr1.toy.assets --output {folder}` (with the budget and world options you want).")
    return paths


def asset_overrides(stack: str | None, folder: str | None) -> list[str]:
    """``streamr1 fit`` arguments that make a toy run of ``stack`` read its student, critic, reward and statistics
    from ``folder`` instead of the shipped files (none when ``folder`` is ``None``)."""
    if folder is None:
        return []
    paths = asset_paths(folder)
    out = ["--model.student.init_args.pretrained", paths["student"],
           "--model.critic.init_args.pretrained", paths["pretrained"]]
    fragment = reward_fragment(stack)
    if fragment is not None and fragment.endswith("/toy.yaml"):
        out += ["--reward.model.init_args.state_path", paths["reward"], "--reward.normalization", paths["stats"]]
    elif fragment is not None:  # the oracle as the reward: only its statistics are files
        out += ["--reward.normalization", paths["oracle_stats"]]
    return out


def reward_fragment(stack: str | None) -> str | None:
    """The reward fragment a toy run of ``stack`` layers (``configs/rewards/toy.yaml``; the oracle's for
    ``oracle_reliability``), or ``None`` when the stack weights by no reward (``dmd``, the recipe alone)."""
    if stack is None:
        return None
    import yaml

    with open(repo_path(f"callbacks/{stack}.yaml"), encoding="utf-8") as fh:
        callbacks = (yaml.safe_load(fh).get("trainer") or {}).get("callbacks") or []
    if not any(str(cb.get("class_path", "")).endswith(_REWARD_CONSUMERS) for cb in callbacks):
        return None
    return f"configs/rewards/{REWARDS.get(stack, 'toy')}.yaml"


def fit(stack: str | None, save_dir: str, name: str, extra: Sequence[str] = ()) -> Any:
    """``streamr1 fit --config configs/quickstart.yaml [--config callbacks/<stack>.yaml --config <reward>] ...``
    in-process.

    Args:
        stack: a callback stack from ``callbacks/`` (file stem, e.g. ``stream_r1``), or ``None`` (the recipe's own).
            A stack that weights by a reward gets its reward fragment (:func:`reward_fragment`) after it.
        save_dir, name: the TensorBoard logger's folder and run name.
        extra: further command-line arguments (they come last, so they win).

    Returns:
        The :class:`~streamr1.cli.StreamR1CLI` (``.model`` is the trained module, ``.trainer`` the trainer).
    """
    from streamr1.cli import main

    args = ["fit", "--config", repo_path(RECIPE)]
    if stack is not None:
        args += ["--config", repo_path(f"callbacks/{stack}.yaml")]
    reward = reward_fragment(stack)
    if reward is not None:
        args += ["--config", repo_path(reward)]
    args += ["--trainer.logger.init_args.save_dir", save_dir, "--trainer.logger.init_args.name", name, *extra]
    return main(args)


def find_callback(trainer: Any, cls_name: str) -> Any:
    """The trainer's first callback of class ``cls_name``, or ``None``."""
    return next((cb for cb in trainer.callbacks if type(cb).__name__ == cls_name), None)
