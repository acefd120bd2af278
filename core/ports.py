"""Loopback ports for daemons a local cluster or a test starts.

A port the kernel hands out for ``bind(0)`` comes from its ephemeral range,
the same range every outgoing connection takes its local port from. A
daemon given such a port and later restarted (``cistern up`` again, a test's
kill -9 and restart) can find it taken by somebody's outgoing connection in
the meantime, typically a peer reconnecting to it ("Address already in
use"; seen in CI). ``free_port`` therefore picks below the ephemeral range,
where the kernel never allocates, and checks that nothing listens there.
A port is still only free when it was checked: the daemon fails loudly if
another process bound it since.
"""

from __future__ import annotations

import random
import socket

RANGE_FILE = "/proc/sys/net/ipv4/ip_local_port_range"
lowest_port = 10000               # below: well-known and registered services
attempts_max = 200
recent_kept_max = 4096            # ports this process handed out, never handed out twice

_recent: dict[int, None] = {}


def ephemeral_range(path: str = RANGE_FILE) -> tuple[int, int]:
    """The kernel's ephemeral port range (Linux's default when unreadable)."""
    try:
        with open(path, encoding="ascii") as f:
            low, high = (int(v) for v in f.read().split())
        return low, high
    except (OSError, ValueError):
        return 32768, 60999


def pick_range(ephemeral: tuple[int, int]) -> tuple[int, int]:
    """Where to pick: below the ephemeral range when there is room, else
    above it (a range configured to start low)."""
    low, high = ephemeral
    if low - 1 - lowest_port >= 1000:
        return lowest_port, low - 1
    if 65535 - high >= 1000:
        return high + 1, 65535
    return lowest_port, 65535


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1", *, rng: random.Random | None = None) -> int:
    """A port outside the ephemeral range that nothing is bound to now and
    that this process has not handed out recently."""
    rng = rng or random
    low, high = pick_range(ephemeral_range())
    for _ in range(attempts_max):
        port = rng.randint(low, high)
        if port in _recent or not _bindable(host, port):
            continue
        _recent[port] = None
        if len(_recent) > recent_kept_max:
            del _recent[next(iter(_recent))]
        return port
    raise OSError(f"no free port in {low}-{high} after {attempts_max} tries")
