"""Child processes that never outlive their parent, without ``preexec_fn``.

``subprocess``'s ``preexec_fn`` runs Python code in the child between fork and
exec; in a parent with gRPC threads (every test and supervisor here) that
child can crash or deadlock before it ever execs (seen: gRPC's fork handlers
skipped, then "eventfd_write: Bad file descriptor" and a dead child). So the
child arranges it itself: the parent puts its pid in the environment
(``child_env``), and the ``cistern`` command calls ``die_with_parent_if_asked``
first thing, which sets PR_SET_PDEATHSIG and then checks that the parent it
was started by is still its parent (closing the race with a parent that died
before the prctl). Linux sends the signal when the *thread* that forked the
child exits, so start long-lived children from long-lived threads.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import time

ENV_VAR = "CISTERN_DIE_WITH_PARENT"
signal_poll_interval_s = 0.2
_PR_SET_PDEATHSIG = 1


def child_env(env: dict | None = None) -> dict:
    """A copy of ``env`` (default: ours) telling a ``cistern`` child to die
    with this process."""
    out = dict(os.environ if env is None else env)
    out[ENV_VAR] = str(os.getpid())
    return out


def die_with_parent_if_asked() -> None:
    """In a ``cistern`` child started with ``child_env``: get SIGTERM when the
    parent dies (even by SIGKILL); exit at once if it already has."""
    parent = os.environ.pop(ENV_VAR, "")
    if not parent.isdigit():
        return
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != int(parent):
        os._exit(1)


def serve_until_signalled(name: str, stopped, stop) -> None:
    """Block until SIGTERM or SIGINT (or until ``stopped``, an Event, is set
    by someone else), then call ``stop()``. Main thread only: signal handlers
    can only be installed there. The daemons' ``run_forever``."""
    requested: list[int] = []
    # The handler only appends to a list: it runs on the main thread between
    # bytecodes, possibly while that thread holds a lock (an Event's, inside
    # Event.wait), so taking any lock there can deadlock the process.
    previous = {sig: signal.signal(sig, lambda signum, frame: requested.append(signum))
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        while not requested and not stopped.is_set():
            time.sleep(signal_poll_interval_s)
        if requested:
            logging.getLogger(__name__).info("%s: signal %d, stopping", name, requested[0])
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        stop()
