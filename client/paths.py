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
* A trailing slash asks for a directory, as in the kernel. It is kept (one
  slash) in the path sent, because the state machine applies Linux's rules
  for it per operation (ENOTDIR for a non-directory, EISDIR for
  ``create("x/")``, ENOENT for ``symlink(t, "x/")``, a final symlink to a
  directory followed by ``lstat("link/")``); ``Target.dir_only`` records it.
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

__all__ = ["Target", "parse", "fspath", "join", "split", "decode_like"]

_SLASHES = re.compile(rb"/{2,}")


class Target(NamedTuple):
    """One path argument, parsed."""

    wire: bytes        # absolute, slashes collapsed (a trailing one kept)
    dir_only: bool     # the user wrote a trailing slash: the target must be a directory
    given: str | bytes  # os.fspath of what the user passed: errors name this
    as_bytes: bool     # names in results are bytes (else str)


def parse(path, *, function: str = "path") -> Target:
    """Parse one path argument; raises TypeError, ValueError or OSError like
    the ``os`` function named ``function`` would for the same argument."""
    given = fspath(path, function)
    raw = os.fsencode(given) if isinstance(given, str) else given
    if b"\0" in raw:
        raise ValueError(f"{function}: embedded null character in path")
    if not raw:
        raise to_oserror(errno.ENOENT, "", given)
    if len(raw) >= limits.path_length_max_bytes:
        raise to_oserror(errno.ENAMETOOLONG, "", given)
    wire = _SLASHES.sub(b"/", raw if raw.startswith(b"/") else b"/" + raw)
    dir_only = len(wire) > 1 and wire.endswith(b"/")
    for component in wire.split(b"/"):
        if len(component) > limits.name_length_max_bytes:
            raise to_oserror(errno.ENAMETOOLONG, "", given)
    return Target(wire, dir_only, given, isinstance(given, bytes))


def fspath(path, function: str) -> str | bytes:
    """``os.fspath`` with the TypeError message ``os`` functions give."""
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
