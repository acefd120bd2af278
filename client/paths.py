"""Paths as the user gives them, turned into the bytes the state machine takes.

Pure functions, no I/O. The rules are the ``os`` module's and the kernel's,
restricted to what can be decided without a round trip; the state machine is
the authority on everything else (``.``/``..``, symlinks, permissions).

* A path is ``str`` (encoded with ``os.fsencode``), ``bytes``, or an
  ``os.PathLike`` returning either. Results that hold names (``listdir``,
  ``readlink``, ``scandir``, ``walk``) come back in the type the caller used.
* The client has no working directory: a relative path is relative to the
  Cistern root, so ``"a/b"`` means ``"/a/b"``.
* Repeated slashes collapse (``"//a///b"`` is ``"/a/b"``).
* A trailing slash asks for a directory, as in the kernel: it is stripped from
  the path sent to the state machine and remembered in ``Target.dir_only``;
  lookups then resolve ``path/.`` (ENOTDIR for a non-directory, and a symlink
  to a directory is followed, as ``lstat("link/")`` does), and the operations
  that act on the last component check it themselves.
* Checked locally because it saves a round trip and the answer cannot differ:
  an empty path (ENOENT), an embedded NUL (ValueError, as ``os``), a path of
  ``path_length_max_bytes`` or more (ENAMETOOLONG: PATH_MAX counts the
  terminating NUL), a component longer than ``name_length_max_bytes``
  (ENAMETOOLONG), and a type that is not a path (TypeError).
"""

from __future__ import annotations

import errno
import os
import re
from typing import NamedTuple

from cistern.core.errors import to_oserror
from cistern.metadata import limits

__all__ = ["Target", "parse", "join", "split", "decode_like"]

_SLASHES = re.compile(rb"/{2,}")


class Target(NamedTuple):
    """One path argument, parsed."""

    wire: bytes        # absolute, slashes collapsed, trailing slash removed
    dir_only: bool     # the user wrote a trailing slash: the target must be a directory
    given: str | bytes  # os.fspath of what the user passed: errors name this
    as_bytes: bool     # names in results are bytes (else str)

    @property
    def lookup(self) -> bytes:
        """The path to resolve when the operation follows the whole path:
        ``wire + b"/."`` when a directory is required, so the state machine
        answers ENOTDIR for a non-directory and follows a final symlink."""
        if self.dir_only and self.wire != b"/":
            return self.wire + b"/."
        return self.wire

    @property
    def name(self) -> bytes:
        """The last component of the wire path (b"" for the root)."""
        return self.wire.rpartition(b"/")[2]


def parse(path, *, function: str = "path") -> Target:
    """Parse one path argument; raises TypeError, ValueError or OSError like
    the ``os`` function named ``function`` would for the same argument."""
    given = _fspath(path, function)
    raw = os.fsencode(given) if isinstance(given, str) else given
    if b"\0" in raw:
        raise ValueError(f"{function}: embedded null character in path")
    if not raw:
        raise to_oserror(errno.ENOENT, "", given)
    if len(raw) >= limits.path_length_max_bytes:
        raise to_oserror(errno.ENAMETOOLONG, "", given)
    wire = _SLASHES.sub(b"/", raw if raw.startswith(b"/") else b"/" + raw)
    dir_only = len(wire) > 1 and wire.endswith(b"/")
    if dir_only:
        wire = wire[:-1]
    for component in wire.split(b"/"):
        if len(component) > limits.name_length_max_bytes:
            raise to_oserror(errno.ENAMETOOLONG, "", given)
    return Target(wire, dir_only, given, isinstance(given, bytes))


def _fspath(path, function: str) -> str | bytes:
    try:
        return os.fspath(path)
    except TypeError:
        raise TypeError(
            f"{function}: path should be string, bytes or os.PathLike, not {type(path).__name__}"
        ) from None


def join(top: str | bytes, name: bytes) -> str | bytes:
    """``os.path.join(top, name)`` with ``name`` in ``top``'s type."""
    return os.path.join(top, decode_like(top, name))


def split(path: str | bytes) -> tuple[str | bytes, str | bytes]:
    """``os.path.split`` after stripping trailing slashes, as ``os.makedirs``
    walks up a path."""
    sep = b"/" if isinstance(path, bytes) else "/"
    stripped = path.rstrip(sep) or path[:1]
    return os.path.split(stripped)


def decode_like(like, name: bytes) -> str | bytes:
    """``name`` as bytes when ``like`` is bytes (or True), else ``os.fsdecode``."""
    as_bytes = like if isinstance(like, bool) else isinstance(like, bytes)
    return name if as_bytes else os.fsdecode(name)
