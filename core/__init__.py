"""Shared foundations of every Cistern role: the error table (POSIX errno <->
gRPC status), limits and config helpers, RPC helpers, metrics helpers.

May import: the standard library, grpc, prometheus_client. Never another
cistern package: everything else depends on this one.
"""

# Before anything imports grpc: its I/O model is read at import (grpc_env.py).
from cistern.core import grpc_env as _grpc_env

_grpc_env.apply()
