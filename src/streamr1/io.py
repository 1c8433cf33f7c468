"""Crash-safe file writes: every file streamr1 writes (checkpoints, statistics, videos, assets) goes through here.

A reader (or a resumed run) must never see a half-written file. :func:`atomic_output` hands out a temporary path
beside the target; the caller writes it; on success the file is flushed to disk and ``os.replace``-d over the target
(atomic within one file system), and the folder is fsynced so the rename survives a power loss. On any error,
``KeyboardInterrupt`` included, the temporary file is removed and the target is left as it was.

A hard kill (``kill -9``, a node lost) cannot run that cleanup and leaves the temporary file (``.<name>.tmp-XXXXXXXX
<ext>``, as large as the checkpoint). The first write into a folder in each process therefore removes the temporary
files of this naming that are older than the process (:func:`remove_stale_temporaries`): they belong to writers
that are gone. Files of writers running now (other ranks, another run) are newer than this process's start and stay.

Example::

    with atomic_output("stats.json") as tmp:
        with open(tmp, "w") as fh:
            json.dump(stats, fh)
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)

TEMP_INFIX = ".tmp-"
# ``tempfile.mkstemp(prefix=f".{name}{TEMP_INFIX}", suffix=ext)``: 8 characters of ``tempfile``'s alphabet between
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)" + re.escape(TEMP_INFIX) + r"[a-z0-9_]{8}(?P<ext>\.[^.]*)?$")
_IMPORTED_AT = time.time()
_CLEANED: set[str] = set()  # folders this process has already cleaned


def process_start_time() -> float:
    """When this process started (seconds since the epoch; from Linux ``/proc``, to about 0.01 s), or when this
    module was imported where ``/proc`` is not available."""
    try:
        with open("/proc/self/stat", encoding="ascii") as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, in clock ticks after boot
        with open("/proc/uptime", encoding="ascii") as fh:
            boot = time.time() - float(fh.read().split()[0])
        return min(boot + ticks / os.sysconf("SC_CLK_TCK"), _IMPORTED_AT)
    except (OSError, ValueError, IndexError):
        return _IMPORTED_AT


def is_temporary_name(name: str) -> bool:
    """Whether ``name`` is a temporary file name of :func:`atomic_output` (``.last.ckpt.tmp-a1b2c3d4.ckpt``)."""
    m = _TEMP_NAME.match(name)
    return m is not None and (m.group("ext") or "") == os.path.splitext(m.group("target"))[1]


def remove_stale_temporaries(folder: str, older_than: float | None = None) -> list[str]:
    """Remove the temporary files that interrupted :func:`atomic_output` writes left in ``folder``.

    Only regular files whose name matches :func:`is_temporary_name` and whose last modification is before
    ``older_than`` (default: this process's start, :func:`process_start_time`) are removed; nothing else is touched.

    Returns:
        The removed paths.
    """
    limit = process_start_time() if older_than is None else older_than
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not is_temporary_name(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < limit:
                os.remove(entry.path)
                removed.append(entry.path)
        except FileNotFoundError:  # another process cleaned it first
            continue
    return removed


def _clean_once(folder: str) -> None:
    if folder in _CLEANED:
        return
    _CLEANED.add(folder)
    removed = remove_stale_temporaries(folder)
    if removed:
        names = ", ".join(os.path.basename(p) for p in removed[:3]) + (" ..." if len(removed) > 3 else "")
        print(f"[streamr1] removed {len(removed)} temporary file(s) of interrupted saves in {folder}: {names}")


def fsync_dir(path: str) -> None:
    """Make a rename inside folder ``path`` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], fsync: bool = True) -> Iterator[str]:
    """Yield a temporary path next to ``path``; move it over ``path`` when the block exits without an error.

    Args:
        path: the target file; its folder is created if needed.
        fsync: flush the file and the folder to disk before and after the rename (checkpoints; cheap elsewhere).

    The file gets the permissions a plain ``open(path, "w")`` would give it (``0o666`` less the umask), not the
    ``0o600`` of ``tempfile.mkstemp``, so shipped files stay readable by others. The first write into a folder in a
    process first removes what killed writers left there (:func:`remove_stale_temporaries`).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    _clean_once(folder)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}{TEMP_INFIX}", suffix=os.path.splitext(path)[1],
                               dir=folder)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)
        if fsync:
            with open(tmp, "rb+") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt included: never leave the temporary file behind
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    if fsync:
        fsync_dir(folder)
