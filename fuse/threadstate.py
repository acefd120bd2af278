"""Python thread states that last as long as libfuse's worker threads.

libfuse 2 serves requests on threads it starts itself; each fusepy callback
enters Python through ctypes, which makes a new Python thread state for a
thread Python does not know and deletes it when the callback returns. In
CPython 3.11 each new thread state maps a fresh frame stack that its
deletion unmaps again, so every FUSE request (128 KiB of a read) paid an
mmap, a munmap with its TLB shootdown on the other CPUs, and the page
faults of the new stack: about 2,300 pairs a second while one reader reads.

``keep()``, called at the start of every callback, takes one more reference
on the calling thread's state the first time that thread is seen, so later
callbacks on it reuse the state. States of threads that have exited
(libfuse ends idle workers) are deleted by the next ``keep()`` that sees a
new thread: a thread is gone when /proc/self/task has no entry for it, and
then nothing runs on its state any more.

Contract: ``keep()`` costs a set lookup after a thread's first call; it
ignores the main thread and is meant for threads Python did not start;
at most the states of live threads plus those of threads that ended since
the last new thread are kept. Where /proc or the C API calls are missing,
``keep()`` does nothing and callbacks work as before.
"""

from __future__ import annotations

import ctypes
import os
import threading

__all__ = ["keep", "kept"]

_lock = threading.Lock()
_states: dict[int, int] = {}      # native thread id -> the address of its kept PyThreadState
_main = threading.main_thread().ident
_api = ctypes.pythonapi
_api.PyGILState_GetThisThreadState.restype = ctypes.c_void_p
_api.PyGILState_Ensure.restype = ctypes.c_int
_api.PyThreadState_Clear.argtypes = (ctypes.c_void_p,)
_api.PyThreadState_Delete.argtypes = (ctypes.c_void_p,)
_enabled = os.path.isdir("/proc/self/task")


def keep() -> None:
    """Keep the calling (non-Python) thread's state for its later callbacks."""
    tid = threading.get_native_id()
    if tid in _states or not _enabled or threading.get_ident() == _main:
        return
    state = _api.PyGILState_GetThisThreadState()
    if not state:
        return
    _api.PyGILState_Ensure()      # the GIL is held here: one more reference, nothing else
    with _lock:
        gone = [t for t in _states if not os.path.exists(f"/proc/self/task/{t}")]
        dead = [_states.pop(t) for t in gone]
        _states[tid] = state
    for address in dead:
        _api.PyThreadState_Clear(address)
        _api.PyThreadState_Delete(address)


def kept() -> int:
    """How many thread states are kept now."""
    return len(_states)
