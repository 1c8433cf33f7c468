"""Video files: reading, atomic writing and a folder dataset (reward calibration and evaluation).

Videos are ``[T, 3, H, W]`` float tensors in ``[-1, 1]`` (the project's pixel convention, SPEC.md). Reading tries
decord first and falls back to PyAV: decord 0.6 fails on some frame widths (``DECORDArrayCopyFromTo: The size must
exactly match`` for widths 16, 24, 48 and 72, decord issue #336), so those widths go straight to PyAV and any
decord error falls back to it as well. Writing is mp4 (H.264, yuv420p) through PyAV, to a temporary name first and
then ``os.replace``: a reader never sees a half-written file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from streamr1.io import atomic_output

VIDEO_EXTENSIONS: tuple[str, ...] = (".mp4", ".avi", ".mov", ".mkv", ".webm")
DECORD_BAD_WIDTHS: frozenset[int] = frozenset({16, 24, 48, 72})
"""Frame widths decord 0.6 cannot copy out (measured with H.264 yuv420p files; decord issue #336)."""


def _fail(path: str, problem: str, fix: str, exc: type[Exception] = ValueError) -> Exception:
    return exc(f"Cannot read video {path!r}: {problem}. {fix}")


def _probe_width(path: str) -> int | None:
    """Frame width from the container header (PyAV), ``None`` when there is no video stream."""
    import av

    with av.open(path) as container:
        if not container.streams.video:
            return None
        return int(container.streams.video[0].codec_context.width)


def _read_decord(path: str) -> np.ndarray:
    import decord

    reader = decord.VideoReader(path, ctx=decord.cpu(0))
    n = len(reader)
    if n == 0:
        raise RuntimeError("decord found no frames")
    return reader.get_batch(list(range(n))).asnumpy()  # [T, H, W, 3] uint8


def _read_pyav(path: str) -> np.ndarray:
    import av

    with av.open(path) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if not frames:
        raise RuntimeError("PyAV decoded no frames")
    return np.stack(frames)


def read_video(path: str, num_frames: int | None = None, size: int | tuple[int, int] | None = None,
               backend: str = "auto") -> Tensor:
    """Read a video file as ``[T, 3, H, W]`` float32 in ``[-1, 1]``.

    Args:
        path: the file.
        num_frames: ``T``: that many frames evenly spaced over the clip (``linspace`` over the frame indices, so
            frames repeat when the clip is shorter); all frames when ``None``.
        size: resize to ``size x size`` or ``(H, W)`` (bilinear, antialiased); native size when ``None``.
        backend: ``"auto"`` (decord, PyAV for widths decord cannot read or when decord fails), ``"decord"`` or
            ``"pyav"``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is empty, is not a readable video, or has no frames.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise _fail(path, "no such file", "Check the path (and the dataset root).", FileNotFoundError)
    if os.path.getsize(path) == 0:
        raise _fail(path, "the file is empty (0 bytes)", "Re-create it, e.g. with streamr1.data.videos.write_video; "
                    "an interrupted copy or write leaves empty files.")
    if backend not in ("auto", "decord", "pyav"):
        raise ValueError(f"backend={backend!r}: expected 'auto', 'decord' or 'pyav'.")
    errors: list[str] = []
    frames: np.ndarray | None = None
    use_decord = backend == "decord"
    if backend == "auto":
        try:
            width = _probe_width(path)
        except Exception as e:  # noqa: BLE001 - PyAV cannot open it; let decord try before giving up
            errors.append(f"PyAV: {type(e).__name__}: {e}")
            width = None
        use_decord = width not in DECORD_BAD_WIDTHS
    if use_decord:
        try:
            frames = _read_decord(path)
        except Exception as e:  # noqa: BLE001 - any decord failure falls back to PyAV
            errors.append(f"decord: {type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}")
    if frames is None and backend != "decord" and not (errors and errors[0].startswith("PyAV")):
        try:
            frames = _read_pyav(path)
        except Exception as e:  # noqa: BLE001 - reported below with the decord error
            errors.append(f"PyAV: {type(e).__name__}: {e}")
    if frames is None:
        raise _fail(path, "the file is corrupt or not a video (" + "; ".join(errors) + ")",
                    "Re-encode it (e.g. `ffmpeg -i in -c:v libx264 -pix_fmt yuv420p out.mp4`) or delete it.")
    video = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if num_frames is not None:
        if num_frames < 1:
            raise ValueError(f"num_frames must be >= 1 (got {num_frames}).")
        idx = torch.linspace(0, video.shape[0] - 1, num_frames).round().long()
        video = video[idx]
    if size is not None:
        hw = (size, size) if isinstance(size, int) else tuple(size)
        if tuple(video.shape[-2:]) != hw:
            video = F.interpolate(video, size=hw, mode="bilinear", align_corners=False, antialias=True)
    return video.clamp(-1.0, 1.0)


def write_video(path: str, video: Tensor, fps: int = 8, crf: int = 12) -> None:
    """Write ``video`` ``[T, 3, H, W]`` in ``[-1, 1]`` to an mp4 (H.264, yuv420p) atomically.

    The file is written under a temporary name in the same folder and moved into place with ``os.replace``;
    parent folders are created.

    Args:
        path: the ``.mp4`` to write.
        video: ``H`` and ``W`` must be even (yuv420p halves the chroma resolution).
        fps: frame rate.
        crf: x264 constant rate factor (0 lossless luma, 12 visually lossless, 23 the x264 default).
    """
    import av

    path = os.fspath(path)
    if video.ndim != 4 or video.shape[1] != 3:
        raise ValueError(f"write_video({path!r}): video must be [T, 3, H, W] in [-1, 1]; got {tuple(video.shape)}.")
    t, _, h, w = video.shape
    if t < 1 or h % 2 or w % 2:
        raise ValueError(f"write_video({path!r}): H.264 yuv420p needs at least one frame and even height and width; "
                         f"got T={t}, H={h}, W={w}. Crop or pad the video to even sizes.")
    frames = ((video.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    frames = frames.permute(0, 2, 3, 1).contiguous().numpy()  # [T, H, W, 3]
    with atomic_output(path, fsync=False) as tmp, av.open(tmp, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(int(crf))}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


class VideoFolderDataset(Dataset):
    """Videos under ``root`` (recursively, sorted by relative path) with their prompts.

    Prompts come from ``prompts_file`` when given: either every line is ``relative/path.mp4<TAB>prompt``, or it has
    one prompt a line in the sorted order of the videos (blank lines skipped). Otherwise each video ``x.mp4`` has a
    sidecar ``x.txt`` holding its prompt; a video without a prompt is an error unless ``require_prompts=False``
    (then its prompt is ``""``).

    Items: ``{"video": [T, 3, H, W] in [-1, 1], "prompt": str, "path": str}``.

    Args:
        root: the folder.
        prompts_file: see above.
        num_frames, size: passed to :func:`read_video` (set both to batch videos of different shapes).
        extensions: file endings counted as videos.
        require_prompts: raise when a video has no (or an empty) prompt.
    """

    def __init__(self, root: str, prompts_file: str | None = None, num_frames: int | None = None,
                 size: int | tuple[int, int] | None = None, extensions: Sequence[str] = VIDEO_EXTENSIONS,
                 require_prompts: bool = True) -> None:
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"Video folder {root!r} does not exist: set the dataset root to a folder of "
                                    "videos.")
        exts = tuple(e.lower() for e in extensions)
        paths = []
        for folder, _, files in os.walk(root):
            paths += [os.path.join(folder, f) for f in files if f.lower().endswith(exts) and not f.startswith(".tmp-")]
        self.root, self.num_frames, self.size = root, num_frames, size
        self.paths = sorted(paths, key=lambda p: os.path.relpath(p, root))
        if not self.paths:
            raise ValueError(f"Video folder {root!r} holds no videos (looked for {', '.join(exts)} files, "
                             "recursively). Put videos there, e.g. with streamr1.data.videos.write_video.")
        if prompts_file is not None:
            self.prompts = self._prompts_from_file(prompts_file)
        else:
            self.prompts = [self._sidecar(p) for p in self.paths]
        if require_prompts:
            missing = [p for p, q in zip(self.paths, self.prompts, strict=True) if not q]
            if missing:
                raise ValueError(f"{len(missing)} videos have no prompt, e.g. {missing[0]!r}: add a sidecar .txt "
                                 "next to each video, pass `prompts_file`, or set `require_prompts=False`.")

    def _sidecar(self, path: str) -> str:
        txt = os.path.splitext(path)[0] + ".txt"
        if not os.path.isfile(txt):
            return ""
        with open(txt, encoding="utf-8") as fh:
            return fh.read().strip()

    def _prompts_from_file(self, prompts_file: str) -> list[str]:
        if not os.path.isfile(prompts_file):
            raise FileNotFoundError(f"Prompts file {prompts_file!r} not found: pass an existing file or leave "
                                    "`prompts_file` unset to use sidecar .txt files.")
        with open(prompts_file, encoding="utf-8") as fh:
            lines = [ln.rstrip("\n") for ln in fh if ln.strip()]
        if lines and all("\t" in ln for ln in lines):
            mapping = {}
            for ln in lines:
                name, prompt = ln.split("\t", 1)
                mapping[os.path.normpath(name.strip())] = prompt.strip()
            rel = [os.path.normpath(os.path.relpath(p, self.root)) for p in self.paths]
            missing = [r for r in rel if r not in mapping]
            if missing:
                raise ValueError(f"Prompts file {prompts_file!r} has no line for {missing[0]!r} ({len(missing)} videos "
                                 "missing): add `relative/path<TAB>prompt` lines for every video.")
            return [mapping[r] for r in rel]
        if len(lines) != len(self.paths):
            raise ValueError(f"Prompts file {prompts_file!r} has {len(lines)} prompts for {len(self.paths)} videos "
                             f"in {self.root!r}: give one prompt a line in sorted video order, or `path<TAB>prompt` "
                             "lines.")
        return [ln.strip() for ln in lines]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        path = self.paths[i]
        return {"video": read_video(path, self.num_frames, self.size), "prompt": self.prompts[i], "path": path}
