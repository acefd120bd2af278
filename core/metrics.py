"""Metrics helpers: every daemon serves Prometheus metrics on its own port.

Each daemon builds its metrics on its own registry (``new_registry``) rather
than prometheus_client's process-global one, so several daemons (or tests)
in one process never collide on metric names.
"""

from __future__ import annotations

import threading

import prometheus_client
from prometheus_client import CollectorRegistry


def new_registry() -> CollectorRegistry:
    return CollectorRegistry(auto_describe=True)


class MetricsServer:
    """A Prometheus HTTP endpoint for one registry on ``host:port`` (port 0
    picks a free one; ``address`` tells which)."""

    def __init__(self, address: str, registry: CollectorRegistry):
        host, _, port = address.rpartition(":")
        self._server, self._thread = prometheus_client.start_http_server(
            int(port), addr=host or "0.0.0.0", registry=registry)
        self.address = f"{host or '0.0.0.0'}:{self._server.server_port}"

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


def start_metrics_server(address: str, registry: CollectorRegistry) -> MetricsServer:
    """Serve ``registry`` at http://address/metrics until ``.stop()``."""
    return MetricsServer(address, registry)
