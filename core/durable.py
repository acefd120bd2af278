"""Making renames and creates durable: the directory side of an fsync.

A file's fsync covers its data, not the directory entry that names it; after
``os.replace`` (or a create) the entry is durable only once the directory is
fsynced too. Used by the Raft log and its meta file, the snapshot writer and
the block store.
"""

from __future__ import annotations

import os

__all__ = ["fsync_dir", "replace_durably"]


def fsync_dir(path: str) -> None:
    """fsync a directory: a rename or create in it is durable once this returns."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_durably(src: str, dst: str) -> None:
    """``os.replace(src, dst)``, durable when it returns (``src``'s data must
    be synced already): the rename, then its directory's fsync."""
    os.replace(src, dst)
    fsync_dir(os.path.dirname(dst))
