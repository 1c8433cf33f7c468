"""Crash-safe checkpoint files: write to a temporary file, fsync, then rename over the target.

A crash, a kill or Ctrl-C while a checkpoint is being written must never leave a truncated
``last.ckpt`` behind: the run could then not resume at all. :class:`AtomicCheckpointIO` writes the
whole checkpoint to a temporary file beside the target, flushes it to disk, and only then
``os.replace``-s it over ``<path>`` (atomic on POSIX and Windows within one file system), and
fsyncs the folder so that the rename itself survives a power loss. An interrupted save leaves the
previous checkpoint untouched and removes its temporary file (a hard kill may leave the
temporary file, never a broken target).

``streamr1``'s CLI installs this plugin by default (:class:`streamr1.cli.StreamR1CLI`); pass
another ``CheckpointIO`` in ``trainer.plugins`` to replace it. Sharded FSDP2 checkpoints
(``ModelParallelStrategy`` with ``save_distributed_checkpoint=True``, a folder) are written by
``torch.distributed.checkpoint`` and do not go through a ``CheckpointIO``.

Example::

    trainer:
      plugins:
        - class_path: streamr1.checkpoint.AtomicCheckpointIO

.. code-block:: python

    trainer = Trainer(plugins=[AtomicCheckpointIO()])
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.fabric.utilities.types import _PATH
from typing_extensions import override

from streamr1.io import atomic_output


def atomic_torch_save(obj: Any, path: _PATH) -> None:
    """``torch.save(obj, path)`` that never leaves a partly written ``path`` (:func:`streamr1.io.atomic_output`).

    Args:
        obj: anything ``torch.save`` accepts.
        path: a local file path; its folder is created if needed.

    Raises:
        OSError: the file system refused the write (disk full, quota, permissions): the OS error, the path and the
            free space, as the last line of the traceback (``torch.save`` itself reports a full disk as
            ``RuntimeError: [enforce fail at inline_container.cc...] unexpected pos``, the cause buried above).
            ``path`` is then unchanged and the temporary file removed.
        Whatever else ``torch.save`` raises, with the same guarantee.
    """
    try:
        with atomic_output(path) as tmp, open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
    except (OSError, RuntimeError) as err:
        os_error = _os_error_in(err)
        if os_error is None:
            raise
        raise _save_failed(path, os_error) from err


def _os_error_in(err: BaseException) -> OSError | None:
    """The first ``OSError`` with an ``errno`` in ``err``'s chain (``err`` itself included)."""
    seen: set[int] = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        if isinstance(link, OSError) and link.errno is not None:
            return link
        link = link.__cause__ or link.__context__
    return None


def _save_failed(path: _PATH, err: OSError) -> OSError:
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free there without the partial file"
    except OSError:
        free = "free space unknown"
    return type(err)(err.errno, f"{err.strerror}: could not save the checkpoint {os.fspath(path)} ({free}); the "
                                "previous file is unchanged. Free space, or point the checkpoint folder elsewhere.")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning ``CheckpointIO`` whose saves are atomic: a checkpoint file is either the old one or the new one.

    Local paths are written by :func:`atomic_torch_save`; remote URLs (``s3://`` and other fsspec
    protocols) go to :class:`~lightning.fabric.plugins.TorchCheckpointIO`, whose fsspec transaction is
    already all-or-nothing there. Loading and removal are Lightning's.
    """

    @override
    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        """Write ``checkpoint`` to ``path`` atomically.

        Raises:
            TypeError: ``storage_options`` given (not supported, as in ``TorchCheckpointIO``).
        """
        if storage_options is not None:
            raise TypeError(
                f"`Trainer.save_checkpoint(..., storage_options=...)` is not supported by {type(self).__name__}."
            )
        if "://" in os.fspath(path):
            super().save_checkpoint(checkpoint, path)
            return
        atomic_torch_save(checkpoint, path)
