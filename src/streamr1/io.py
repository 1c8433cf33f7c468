"""Crash-safe file writes: every file streamr1 writes (checkpoints, statistics, videos, assets) goes through here.

A reader (or a resumed run) must never see a half-written file. :func:`atomic_output` hands out a temporary path
beside the target; the caller writes it; on success the file is flushed to disk and ``os.replace``-d over the target
(atomic within one file system), and the folder is fsynced so the rename survives a power loss. On any error,
``KeyboardInterrupt`` included, the temporary file is removed and the target is left as it was.

Example::

    with atomic_output("stats.json") as tmp:
        with open(tmp, "w") as fh:
            json.dump(stats, fh)
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


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
    ``0o600`` of ``tempfile.mkstemp``, so shipped files stay readable by others.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.tmp-", suffix=os.path.splitext(path)[1],
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
