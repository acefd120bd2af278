"""gRPC's I/O model for Cistern processes, chosen before grpc is imported.

Since 1.62 grpcio does its socket I/O on EventEngine threads of its own: a
message that arrives wakes an EventEngine poller, which hands the read to a
second EventEngine thread, which completes the call for the Python thread
waiting on it. The iomgr model it replaces lets the thread that waits for a
completion poll the sockets itself, two thread hand-offs fewer per message.
On this 2-core VM, where waking an idle vCPU costs tens of microseconds,
that is about 0.1 ms per round trip (bidirectional-stream echo, p50: 0.33-
0.35 ms under EventEngine, 0.24-0.27 under iomgr), and a metadata operation
makes two such trips (client to leader, leader to client). Measured with
``meta_bench``, 12 interleaved pairs, 11 better: one create at a time,
median p50 1.45 against 1.57 ms; the clients' CPU per operation 302-358
against 375-454 us; 16x64 creates within noise.

gRPC takes the choice from ``GRPC_EXPERIMENTS`` (documented in gRPC's
doc/environment_variables.md) once, when ``grpc`` is imported: set after the
import, it changes nothing. So ``apply()`` runs from ``cistern.core``'s
``__init__``, and every other cistern package imports ``cistern.core``
before anything else. It sets the variable only where it takes effect and
nobody chose otherwise:

* a ``GRPC_EXPERIMENTS`` already in the environment, even empty, is left
  alone (``GRPC_EXPERIMENTS= cistern ...`` keeps gRPC's defaults);
* a process that imported ``grpc`` before ``cistern`` is left alone (the
  setting could not reach its gRPC, only its children's).

iomgr has one cliff EventEngine has not: the connectivity changes of a
channel that no thread is polling (a reconnect after a peer restarted, a
stream's failure noticed) wait for gRPC's backup poller, every 5 s by
default. The integration tests that restart nodes and replicas took 10-15 s
instead of 1.5-2 s that way (the suite 16 minutes instead of 10). So
``GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS`` (also in gRPC's
environment_variables.md) becomes ``BACKUP_POLL_MS`` unless it is set: with
100 ms or 50 those tests took what they take under EventEngine; it costs a timer
wake-up per interval per process.

Child processes (``cistern up``'s metads and nodes, benchmark workers)
inherit the variables. ``tests/unit/test_core_grpc_env.py`` fails should a
future grpcio no longer know these experiment names (it would log "Unknown
experiment" at start-up).

May import: the standard library only (never grpc: that is the point).
"""

from __future__ import annotations

import os
import sys

ENV_VAR = "GRPC_EXPERIMENTS"
IOMGR = "-event_engine_client,-event_engine_listener"
BACKUP_POLL_VAR = "GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS"
BACKUP_POLL_MS = "50"


def apply(environ=None, modules=None) -> bool:
    """Choose iomgr I/O for this process's gRPC, with a backup poller
    every ``BACKUP_POLL_MS`` unless one is set (see the module docstring).
    True when it set ``GRPC_EXPERIMENTS``."""
    environ = os.environ if environ is None else environ
    modules = sys.modules if modules is None else modules
    if ENV_VAR in environ or "grpc" in modules:
        return False
    environ[ENV_VAR] = IOMGR
    environ.setdefault(BACKUP_POLL_VAR, BACKUP_POLL_MS)
    return True
