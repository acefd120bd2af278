"""RPC helpers shared by every role: channel and server options, deadlines,
and retry backoff.

The options matter for a cluster that loses members: gRPC's default reconnect
backoff grows to two minutes, which would keep a client away from a restarted
replica long after it is back, so channels here retry within a second.
Keepalive pings find a dead peer behind a silent connection (a killed host
sends no FIN) within ``keepalive_timeout_ms`` of the next ping.
"""

from __future__ import annotations

import random
import time

import grpc

keepalive_time_ms = 10_000            # ping an idle connection this often
keepalive_timeout_ms = 5_000          # a ping unanswered this long closes the connection
reconnect_backoff_initial_ms = 100
reconnect_backoff_max_ms = 1_000
server_ping_interval_min_ms = 5_000   # the server tolerates client pings this often

assert keepalive_timeout_ms < keepalive_time_ms
assert server_ping_interval_min_ms <= keepalive_time_ms


def _common_options(message_bytes_max: int) -> list[tuple[str, int]]:
    """What both ends of a channel must agree on: message size and keepalive."""
    assert message_bytes_max > 0
    return [
        ("grpc.max_send_message_length", message_bytes_max),
        ("grpc.max_receive_message_length", message_bytes_max),
        ("grpc.keepalive_time_ms", keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def channel_options(message_bytes_max: int) -> list[tuple[str, int]]:
    """Options for a client channel whose messages may reach message_bytes_max."""
    return _common_options(message_bytes_max) + [
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.initial_reconnect_backoff_ms", reconnect_backoff_initial_ms),
        ("grpc.min_reconnect_backoff_ms", reconnect_backoff_initial_ms),
        ("grpc.max_reconnect_backoff_ms", reconnect_backoff_max_ms),
        # Each client gets its own TCP connection even to the same address, so
        # two MetaClients in one process do not share (and serialize on) one.
        ("grpc.use_local_subchannel_pool", 1),
    ]


def server_options(message_bytes_max: int) -> list[tuple[str, int]]:
    """Options for a server whose messages may reach message_bytes_max."""
    return _common_options(message_bytes_max) + [
        ("grpc.http2.min_ping_interval_without_data_ms", server_ping_interval_min_ms),
        ("grpc.http2.max_ping_strikes", 0),
        # Two daemons must never share a port: the second bind has to fail.
        ("grpc.so_reuseport", 0),
    ]


def insecure_channel(address: str, message_bytes_max: int) -> grpc.Channel:
    return grpc.insecure_channel(address, options=channel_options(message_bytes_max))


class Deadline:
    """A point in monotonic time; ``remaining()`` never goes below zero."""

    __slots__ = ("at",)

    def __init__(self, timeout_s: float, *, now: float | None = None):
        self.at = (time.monotonic() if now is None else now) + timeout_s

    def remaining(self, *, now: float | None = None) -> float:
        return max(0.0, self.at - (time.monotonic() if now is None else now))

    def expired(self, *, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.at


class Backoff:
    """Exponential backoff with full jitter: delays grow from initial_s by
    ``factor`` up to max_s; ``reset()`` after a success. The random source is
    passed in so tests can make it deterministic."""

    def __init__(self, initial_s: float = 0.02, max_s: float = 0.5, factor: float = 2.0,
                 rng: random.Random | None = None):
        assert 0 < initial_s <= max_s and factor >= 1
        self.initial_s = initial_s
        self.max_s = max_s
        self.factor = factor
        self._rng = rng or random.Random()
        self._ceiling_s = initial_s

    def next_delay_s(self) -> float:
        delay = self._rng.uniform(self._ceiling_s / 2, self._ceiling_s)
        self._ceiling_s = min(self.max_s, self._ceiling_s * self.factor)
        return delay

    def reset(self) -> None:
        self._ceiling_s = self.initial_s
