"""Making a file's content, or a folder's entries, durable by its path (``fsync``)."""

from __future__ import annotations

import os


def fsync_path(path: str | os.PathLike[str], folder: bool = False) -> None:
    """fsync the file at ``path``, or with ``folder`` the folder (the names made, renamed or
    removed in it). OSError goes to the caller."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
