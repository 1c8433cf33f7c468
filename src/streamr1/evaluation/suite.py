"""The evaluation protocol's pure parts: file names, seeds, the split across ranks, the output folder's manifest.

Every repository generates its VBench videos its own way (prompt extension, seeds, frame rate, file names), which is
why VBench numbers do not reproduce across papers. Here each choice is a function of its inputs only:

- **file name** (:func:`video_name`): VBench's standard-mode layout ``{prompt}-{i}.mp4``, ``i = 0..N-1``
  (VBench ``build_full_info_json`` looks each video up by exactly this name). A prompt that cannot be a file name
  as it is (see :func:`video_stem`) gets a documented, stable rename: unsafe characters replaced, the name truncated
  at a UTF-8 character boundary, and ``~`` plus the first 10 hex digits of the prompt's SHA-256 appended, so two
  prompts never share a name. Self-Forcing's ``prompt[:100]`` truncation instead silently drops the videos of
  every longer VBench prompt from standard-mode scoring and can merge two prompts into one name.
- **seed** (:func:`video_seed`): a hash of ``(base_seed, prompt, i)``: the noise of a video does not depend on the
  batch it lands in, the rank that makes it, or the prompts before it, so two runs, or two ranks splitting the suite,
  write the same video.
- **split** (:func:`rank_batches`): the suite's (prompt, i) items in prompt-major order are cut into batches of
  ``batch_size`` once, globally; rank ``r`` of ``W`` takes batches ``r, r + W, ...``. Every item is in exactly one
  batch and every batch on exactly one rank (no duplicates, no gaps; unlike a padded ``DistributedSampler``), and a
  video is generated in the same batch whatever ``W`` is, so its floating-point result is the same too.
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

MAX_NAME_BYTES = 255
"""Longest file name (bytes, UTF-8) that ext4, XFS, btrfs and APFS accept."""

INDEX_RESERVE = len("-999999.mp4")
"""Bytes kept free after the stem for ``-{i}.mp4`` (up to 10^6 videos a prompt), so a prompt's stem does not depend
on how many videos it gets."""

HASH_CHARS = 10
"""Hex digits of the prompt's SHA-256 appended to a renamed stem (40 bits: no collision in any realistic suite)."""

MANIFEST = "manifest.json"
MANIFEST_FORMAT = "streamr1-evaluation/1"
VIDEOS_DIR = "videos"


def _unsafe(ch: str) -> bool:
    """A character that cannot (``/``, NUL) or should not (``\\``, control characters) be in a file name."""
    return ch in "/\\" or unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp")


def video_stem(prompt: str, max_bytes: int = MAX_NAME_BYTES) -> str:
    """The file-name stem of ``prompt``'s videos: the prompt itself when it is a safe, short enough name.

    The rule (VBench standard mode needs the exact prompt, so the prompt is kept whenever it can be):

    1. If ``prompt`` has no unsafe character (``/``, ``\\``, control or format characters such as ``\\n``), does not
       start with ``.`` and ``len(prompt.encode("utf-8")) + 11 <= max_bytes`` (11 = ``len("-999999.mp4")``), the
       stem is ``prompt``.
    2. Otherwise: unsafe characters become ``_``, a leading ``.`` becomes ``_``, the result is cut to
       ``max_bytes - 11 - 11`` bytes at a UTF-8 character boundary, and ``~`` + the first 10 hex digits of
       ``sha256(prompt)`` are appended. Such videos are listed as renamed in the manifest and the summary; VBench
       standard mode cannot find them (it looks for the exact prompt), every other metric can.

    Raises:
        ValueError: an empty or all-blank prompt.
    """
    if not prompt or not prompt.strip():
        raise ValueError("An empty prompt cannot name a video: remove blank entries from the prompt suite.")
    budget = max_bytes - INDEX_RESERVE
    if not any(_unsafe(ch) for ch in prompt) and not prompt.startswith(".") and len(prompt.encode()) <= budget:
        return prompt
    clean = "".join("_" if _unsafe(ch) else ch for ch in prompt)
    if clean.startswith("."):
        clean = "_" + clean[1:]
    tag = "~" + hashlib.sha256(prompt.encode()).hexdigest()[:HASH_CHARS]
    cut = clean.encode()[: budget - len(tag)].decode("utf-8", errors="ignore")
    return cut + tag


def video_name(prompt: str, index: int) -> str:
    """``{stem}-{index}.mp4`` (VBench standard mode; :func:`video_stem` for the stem)."""
    if not 0 <= index < 10**6:
        raise ValueError(f"video index must be in [0, 10^6), got {index}.")
    return f"{video_stem(prompt)}-{index}.mp4"


def video_seed(prompt: str, index: int, base_seed: int = 0) -> int:
    """The noise seed of video ``index`` of ``prompt``: the first 8 bytes (little-endian) of
    ``sha256(f"{base_seed}\\0{prompt}\\0{index}")``, masked to 63 bits (a valid ``torch.Generator`` seed)."""
    digest = hashlib.sha256(f"{int(base_seed)}\0{prompt}\0{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


@dataclass(frozen=True)
class VideoItem:
    """One video of the suite: its prompt (which names it), the text it is generated from, its index and seed."""

    prompt: str
    generate_from: str
    index: int
    seed: int
    name: str

    @property
    def renamed(self) -> bool:
        """Whether the file name is not the plain ``{prompt}-{index}.mp4`` (see :func:`video_stem`)."""
        return self.name != f"{self.prompt}-{self.index}.mp4"


def build_items(prompts: Sequence[str], num_samples: int, extended: Sequence[str] | None = None,
                base_seed: int = 0) -> list[VideoItem]:
    """The suite's videos in prompt-major order: ``num_samples`` a prompt.

    Args:
        prompts: the suite (each names its videos); surrounding whitespace is stripped.
        num_samples: videos a prompt (VBench: 5).
        extended: the text each prompt's videos are generated from (an extended prompt, aligned with ``prompts``),
            or ``None`` to generate from the prompts themselves. Names and seeds always follow the original prompt.
        base_seed: mixed into every seed (:func:`video_seed`).

    Raises:
        ValueError: an empty suite, ``num_samples < 1``, a blank prompt, a prompt listed twice, extended prompts not
            aligned with the suite, or two prompts that map to one file name.
    """
    prompts = [str(p).strip() for p in prompts]
    if not prompts:
        raise ValueError("The prompt suite is empty: give `prompts_file` (one prompt a line) or `prompts`.")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1 (videos a prompt; VBench uses 5), got {num_samples}.")
    blank = [i for i, p in enumerate(prompts) if not p]
    if blank:
        raise ValueError(f"The prompt suite has blank prompts at positions {blank[:5]}: remove them.")
    seen: dict[str, int] = {}
    dups = []
    for i, p in enumerate(prompts):
        if p in seen:
            dups.append((seen[p], i, p))
        seen.setdefault(p, i)
    if dups:
        a, b, p = dups[0]
        raise ValueError(f"The prompt suite lists {len(dups)} prompt(s) twice (e.g. {p!r} at positions {a} and {b}); "
                         "each prompt names its own videos, so each must appear once: remove the duplicates and raise "
                         "num_samples instead.")
    if extended is not None:
        extended = [str(p).strip() for p in extended]
        if len(extended) != len(prompts):
            raise ValueError(f"{len(extended)} extended prompts for {len(prompts)} prompts: the extended prompt file "
                             "must have one line per prompt, in the same order.")
        empty = [i for i, p in enumerate(extended) if not p]
        if empty:
            raise ValueError(f"Extended prompts at positions {empty[:5]} are blank.")
    items = [VideoItem(p, extended[k] if extended is not None else p, i, video_seed(p, i, base_seed),
                       video_name(p, i))
             for k, p in enumerate(prompts) for i in range(num_samples)]
    owner: dict[str, str] = {}
    for it in items:
        if owner.setdefault(it.name, it.prompt) != it.prompt:
            raise ValueError(f"Prompts {owner[it.name]!r} and {it.prompt!r} map to one file name {it.name!r}.")
    return items


def rank_batches(num_items: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[range]:
    """The batches (index ranges into the item list) rank ``rank`` of ``world_size`` generates (see module doc)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a world of {world_size}.")
    batches = [range(s, min(s + batch_size, num_items)) for s in range(0, num_items, batch_size)]
    return batches[rank::world_size]


def digest(values: Any) -> str:
    """SHA-256 (hex) of a JSON-serialisable value (stable key order)."""
    return hashlib.sha256(json.dumps(values, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def read_manifest(output_dir: str) -> dict[str, Any] | None:
    path = os.path.join(output_dir, MANIFEST)
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as fh:
        manifest = json.load(fh)
    if manifest.get("format") != MANIFEST_FORMAT:
        raise ValueError(f"{path} is not a streamr1 evaluation manifest (format {manifest.get('format')!r}).")
    return manifest


def check_output_dir(output_dir: str, fingerprint: dict[str, Any], names: Sequence[str],
                     overwrite: bool = False) -> list[str]:
    """Decide what to do with ``output_dir`` before generating; returns the video files to delete first.

    - empty or absent: start;
    - a manifest of this run (same ``fingerprint``): resume (videos already there are kept, the rest generated);
    - a manifest of another run, or videos with no manifest: refused with an error that names the difference,
      unless ``overwrite`` (then every ``.mp4`` in ``videos/`` is deleted first);
    - videos that this run would not write (another suite, N or naming) are refused likewise.

    Pure except for reading the folder: every rank can call it and reach the same decision.
    """
    videos = os.path.join(output_dir, VIDEOS_DIR)
    present = sorted(f for f in os.listdir(videos) if f.endswith(".mp4")) if os.path.isdir(videos) else []
    manifest = read_manifest(output_dir)
    problem = None
    if manifest is not None and manifest.get("fingerprint") != fingerprint:
        old = manifest.get("fingerprint", {})
        diff = sorted(k for k in set(old) | set(fingerprint) if old.get(k) != fingerprint.get(k))
        problem = (f"{output_dir!r} holds another evaluation (its manifest differs in {diff}: e.g. {diff[0]} = "
                   f"{old.get(diff[0])!r}, this run {fingerprint.get(diff[0])!r})") if diff else None
    elif manifest is None and present:
        problem = f"{output_dir!r} holds {len(present)} videos that no streamr1 evaluation manifest describes"
    if problem is None:
        stray = sorted(set(present) - set(names))
        if stray:
            problem = f"{output_dir!r} holds {len(stray)} videos this evaluation would not write (e.g. {stray[0]!r})"
    if problem is None:
        return []
    if not overwrite:
        raise ValueError(f"{problem}. Evaluate into an empty folder, or pass `overwrite: true` to delete its videos "
                         "first (mixing runs would make every score in it meaningless).")
    return [os.path.join(videos, f) for f in present]
