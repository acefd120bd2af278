"""Errors: one table between POSIX errno, gRPC status codes and exceptions.

Every boundary translates errors through this module and never by matching
message strings:

* inside a role, an expected failure is a ``CisternError`` carrying an errno
  and a one-line message;
* on the wire, a per-operation failure travels as ``(errno, message)`` in the
  reply, and a whole-call failure as a gRPC status chosen by ``grpc_status_for``;
* at the user's side, ``to_oserror`` builds the matching ``OSError`` subclass
  (``FileNotFoundError`` for ENOENT, and so on), as the ``os`` module would.
"""

from __future__ import annotations

import errno as _errno
import os

import grpc

__all__ = [
    "CisternError",
    "NotLeader",
    "Unavailable",
    "errno_for_grpc_status",
    "grpc_status_for",
    "to_oserror",
]


class CisternError(Exception):
    """An expected failure with a POSIX errno and a one-line message."""

    def __init__(self, err: int, message: str = ""):
        assert isinstance(err, int) and err > 0, err
        self.errno = err
        self.message = message or os.strerror(err)
        super().__init__(err, self.message)

    def __str__(self) -> str:
        return f"[{_errno.errorcode.get(self.errno, self.errno)}] {self.message}"


class NotLeader(CisternError):
    """This replica is not the leader; ``leader`` is its best guess or ''."""

    def __init__(self, leader: str = ""):
        super().__init__(_errno.EAGAIN, f"not the leader (leader: {leader or 'unknown'})")
        self.leader = leader


class Unavailable(CisternError):
    """No replica answered within the caller's deadline."""

    def __init__(self, message: str = "metadata service unavailable"):
        super().__init__(_errno.ETIMEDOUT, message)


# The one table from errno to gRPC status, for whole-call failures. Anything
# not listed is INTERNAL: an errno we did not expect to cross the wire is a bug.
_GRPC_FOR_ERRNO: dict[int, grpc.StatusCode] = {
    _errno.ENOENT: grpc.StatusCode.NOT_FOUND,
    _errno.EEXIST: grpc.StatusCode.ALREADY_EXISTS,
    _errno.EACCES: grpc.StatusCode.PERMISSION_DENIED,
    _errno.EPERM: grpc.StatusCode.PERMISSION_DENIED,
    _errno.EINVAL: grpc.StatusCode.INVALID_ARGUMENT,
    _errno.ENAMETOOLONG: grpc.StatusCode.INVALID_ARGUMENT,
    _errno.E2BIG: grpc.StatusCode.INVALID_ARGUMENT,
    _errno.EMSGSIZE: grpc.StatusCode.INVALID_ARGUMENT,
    _errno.EBADMSG: grpc.StatusCode.DATA_LOSS,
    _errno.EIO: grpc.StatusCode.DATA_LOSS,
    _errno.ENOSPC: grpc.StatusCode.RESOURCE_EXHAUSTED,
    _errno.EDQUOT: grpc.StatusCode.RESOURCE_EXHAUSTED,
    _errno.EAGAIN: grpc.StatusCode.UNAVAILABLE,
    _errno.ETIMEDOUT: grpc.StatusCode.DEADLINE_EXCEEDED,
    _errno.ECANCELED: grpc.StatusCode.CANCELLED,
    _errno.ENOTSUP: grpc.StatusCode.UNIMPLEMENTED,
    _errno.ENOSYS: grpc.StatusCode.UNIMPLEMENTED,
    _errno.ESTALE: grpc.StatusCode.FAILED_PRECONDITION,
    _errno.ENOTEMPTY: grpc.StatusCode.FAILED_PRECONDITION,
    _errno.ENOTDIR: grpc.StatusCode.FAILED_PRECONDITION,
    _errno.EISDIR: grpc.StatusCode.FAILED_PRECONDITION,
    _errno.EBUSY: grpc.StatusCode.FAILED_PRECONDITION,
}

# The way back, for a client that receives a whole-call gRPC failure.
_ERRNO_FOR_GRPC: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.NOT_FOUND: _errno.ENOENT,
    grpc.StatusCode.ALREADY_EXISTS: _errno.EEXIST,
    grpc.StatusCode.PERMISSION_DENIED: _errno.EACCES,
    grpc.StatusCode.UNAUTHENTICATED: _errno.EACCES,
    grpc.StatusCode.INVALID_ARGUMENT: _errno.EINVAL,
    grpc.StatusCode.OUT_OF_RANGE: _errno.EINVAL,
    grpc.StatusCode.DATA_LOSS: _errno.EIO,
    grpc.StatusCode.RESOURCE_EXHAUSTED: _errno.ENOSPC,
    grpc.StatusCode.UNAVAILABLE: _errno.EAGAIN,
    grpc.StatusCode.DEADLINE_EXCEEDED: _errno.ETIMEDOUT,
    grpc.StatusCode.CANCELLED: _errno.ECANCELED,
    grpc.StatusCode.UNIMPLEMENTED: _errno.ENOSYS,
    grpc.StatusCode.FAILED_PRECONDITION: _errno.EINVAL,
    grpc.StatusCode.ABORTED: _errno.EAGAIN,
    grpc.StatusCode.INTERNAL: _errno.EIO,
    grpc.StatusCode.UNKNOWN: _errno.EIO,
}


def grpc_status_for(err: int) -> grpc.StatusCode:
    """The gRPC status a whole-call failure with this errno travels as."""
    return _GRPC_FOR_ERRNO.get(err, grpc.StatusCode.INTERNAL)


def errno_for_grpc_status(code: grpc.StatusCode) -> int:
    """The errno a client reports for a whole-call gRPC failure."""
    return _ERRNO_FOR_GRPC.get(code, _errno.EIO)


def to_oserror(err: int, message: str = "", filename: object = None, filename2: object = None) -> OSError:
    """The OSError subclass the ``os`` module would raise for ``err``.

    ``OSError(errno, ...)`` already picks the subclass (FileNotFoundError for
    ENOENT, and so on), so callers get ``except FileNotFoundError`` for free.
    """
    if filename2 is not None:
        return OSError(err, message or os.strerror(err), filename, None, filename2)
    if filename is not None:
        return OSError(err, message or os.strerror(err), filename)
    return OSError(err, message or os.strerror(err))
