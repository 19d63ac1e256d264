"""Atomic file output: reports, plots, exports and definitions are written beside their target, then renamed.

A reader (or a rerun after a kill, a full disk or a crash) finds either the old file or the new one, never a
truncated one: the bytes go to a hidden temporary file in the target's directory, are flushed to disk, and
``os.replace`` swaps it in (a rename within one directory is atomic on POSIX and Windows). On an error the
temporary file is removed; a process killed while writing leaves at most a hidden ``.NAME.*.tmp`` file.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path

__all__ = ["atomic_open"]


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", **kwargs):
    """Open a temporary file for writing that replaces ``path`` when the ``with`` block ends without error.

    ``mode`` is a write mode (``"w"``, ``"wb"``); ``kwargs`` go to :func:`open` (``newline=""`` for CSV).
    The file gets the permissions a new file would get (``0o666`` less the umask).
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        fh = open(fd, mode, **kwargs)
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    try:
        with fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())  # the data is on disk before the name points at it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
