"""The client side of the master's streams, shared by the agent
(``AgentStream``) and the framework SDK (``FrameworkStream``), plus a
one-shot ``master_status`` for tools.

``MasterConnection(addresses, open_stream, *, on_connect, on_message,
on_disconnect, stall_timeout_s=None, name="master", start=True)``

* ``addresses``: the metadata replicas' RPC addresses (a list, a
  comma-separated string, a ``cluster.json`` path, or a
  ``core.cluster.ClusterSpec``). The master runs in the metadata leader.
* ``open_stream(stub, requests) -> responses``: opens one bidi call on a
  ``MasterStub``, e.g. ``lambda stub, requests: stub.AgentStream(requests)``.
* ``on_connect(address) -> [messages]``: called (on the connection's thread)
  before every new stream, including after each reconnect; the messages it
  returns go out first on that stream. This is where the caller registers
  or subscribes again (a new master knows nothing of the old stream).
* ``on_message(message)``: every message from the master, in order, on the
  connection's thread. Keep it short: the next message waits for it. An
  exception it raises is logged and the stream goes on.
* ``on_disconnect(error)``: the stream ended (``error`` is the
  ``CisternError`` that ended it, or None when the master closed it). Called
  before reconnecting; not called after ``close()``.
* ``stall_timeout_s``: when set, a stream that delivers nothing for this long
  is abandoned and a new one opened (for streams the master heartbeats, so
  a frozen or partitioned leader is left behind).

``send(message) -> bool`` queues a message on the current stream (thread
safe, never blocks); False when no stream is open, and then the message is
dropped: callers resend what matters from ``on_connect`` (the agent resends
unacknowledged updates, the SDK reconciles). A message accepted by
``send`` may still be lost if the stream breaks before it leaves: delivery
guarantees come from acknowledgements, not from this class.
``connected`` is True once the current stream delivered a message;
``wait_connected(timeout_s)`` waits for that. ``close()`` ends the stream
and the thread; idempotent.

Leader discovery: a follower aborts the call with UNAVAILABLE and the
leader's address in the trailing metadata key ``LEADER_METADATA_KEY``; the
connection follows such hints at once (up to ``hint_hops_max`` in a row),
otherwise tries the next address after a jittered backoff
(``core.rpc.Backoff``), reset whenever a stream delivers a message.

Threads: one per connection (named ``<name>-conn``) runs the streams and the
callbacks, plus gRPC's own thread that drains the request queue, and a
watchdog when ``stall_timeout_s`` is set.
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
import time

import grpc

from cistern.core import cluster as cluster_spec
from cistern.core import rpc
from cistern.core.errors import CisternError, Unavailable, errno_for_grpc_status
from cistern.scheduler import limits
from cistern.scheduler.proto import scheduler_pb2 as pb
from cistern.scheduler.proto import scheduler_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

__all__ = ["LEADER_METADATA_KEY", "MasterConnection", "leader_hint", "master_status", "resolve_addresses"]

LEADER_METADATA_KEY = "cistern-leader"
hint_hops_max = 3                 # leader hints followed without backoff
backoff_initial_s = 0.05
backoff_max_s = 1.0
status_attempt_timeout_s = 2.0
_END = object()                   # ends a stream's request iterator


def resolve_addresses(addresses) -> list[str]:
    """The metadata RPC addresses from any of the accepted shapes."""
    if isinstance(addresses, cluster_spec.ClusterSpec):
        return list(addresses.meta_addresses)
    if isinstance(addresses, str):
        return list(cluster_spec.resolve(addresses).meta_addresses)
    found = [a for a in addresses if a]
    if not found:
        raise CisternError(errno.EINVAL, "no metadata address given")
    return found


def leader_hint(error: grpc.RpcError) -> str:
    """The leader address a follower put in an aborted call's trailers, or ''."""
    try:
        trailers = error.trailing_metadata() or ()
    except Exception:
        return ""
    for key, value in trailers:
        if key == LEADER_METADATA_KEY:
            return value if isinstance(value, str) else value.decode()
    return ""


class _Stream:
    """One call to one address; its request queue ends with _END."""

    def __init__(self, address: str):
        self.address = address
        self.requests: queue.SimpleQueue = queue.SimpleQueue()
        self.call = None
        self.alive = True
        self.received = False
        self.last_receive = time.monotonic()

    def iterate(self):
        while True:
            item = self.requests.get()
            if item is _END:
                return
            yield item

    def end(self) -> None:
        self.alive = False
        self.requests.put(_END)
        call = self.call
        if call is not None:
            call.cancel()


class MasterConnection:
    """A reconnecting stream to the master; see the module docstring."""

    def __init__(self, addresses, open_stream, *, on_connect=None, on_message=None, on_disconnect=None,
                 stall_timeout_s: float | None = None, name: str = "master", start: bool = True):
        self.addresses = resolve_addresses(addresses)
        self._open_stream = open_stream
        self._on_connect = on_connect
        self._on_message = on_message
        self._on_disconnect = on_disconnect
        self.stall_timeout_s = stall_timeout_s
        self.name = name
        self._lock = threading.Lock()
        self._stream: _Stream | None = None
        self._connected = threading.Event()
        self._closed = threading.Event()
        self._channels: dict[str, grpc.Channel] = {}
        self._next_address = 0
        self._hint = ""
        self._hops = 0
        self._backoff = rpc.Backoff(initial_s=backoff_initial_s, max_s=backoff_max_s)
        self.reconnects = 0
        self._thread = threading.Thread(target=self._run, name=f"{name}-conn", daemon=True)
        self._watchdog = None
        if stall_timeout_s:
            self._watchdog = threading.Thread(target=self._watch, name=f"{name}-watchdog", daemon=True)
        if start:
            self.start()

    # -- public API ------------------------------------------------------------

    def start(self) -> None:
        """Start connecting (done by the constructor unless start=False)."""
        self._thread.start()
        if self._watchdog is not None:
            self._watchdog.start()

    def send(self, message) -> bool:
        """Queue ``message`` on the current stream; False (dropped) when none."""
        with self._lock:
            stream = self._stream
            if stream is None or not stream.alive or self._closed.is_set():
                return False
            stream.requests.put(message)
            return True

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def address(self) -> str:
        """The address of the current stream, '' when none."""
        stream = self._stream
        return stream.address if stream is not None else ""

    def wait_connected(self, timeout_s: float) -> bool:
        """Wait until the current stream has delivered a message."""
        return self._connected.wait(timeout_s)

    def close(self) -> None:
        """End the stream and stop reconnecting. Idempotent; callbacks stop."""
        if self._closed.is_set():
            return
        self._closed.set()
        with self._lock:
            stream, self._stream = self._stream, None
        if stream is not None:
            stream.end()
        for thread in (self._thread, self._watchdog):
            if thread is not None and thread.is_alive() and thread is not threading.current_thread():
                thread.join(timeout=5)
        for channel in list(self._channels.values()):
            channel.close()
        self._channels.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- the connection thread ------------------------------------------------------

    def _channel(self, address: str) -> grpc.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = rpc.insecure_channel(address, limits.message_bytes_max)
        return channel

    def _pick_address(self) -> str:
        hint, self._hint = self._hint, ""
        if hint:
            return hint
        address = self.addresses[self._next_address % len(self.addresses)]
        self._next_address += 1
        return address

    def _run(self) -> None:
        while not self._closed.is_set():
            address = self._pick_address()
            error, hinted = self._run_stream(address)
            self._connected.clear()
            if self._closed.is_set():
                return
            if self._on_disconnect is not None:
                try:
                    self._on_disconnect(error)
                except Exception:
                    log.exception("%s: on_disconnect failed", self.name)
            self._hops = self._hops + 1 if hinted else 0
            if not hinted or self._hops > hint_hops_max:
                self._closed.wait(self._backoff.next_delay_s())

    def _run_stream(self, address: str) -> tuple[CisternError | None, bool]:
        """One stream until it ends: (the error that ended it, whether a
        leader hint was taken)."""
        stream = _Stream(address)
        self.reconnects += 1
        try:
            first = list(self._on_connect(address)) if self._on_connect is not None else []
        except Exception:
            log.exception("%s: on_connect failed", self.name)
            first = []
        for message in first:
            stream.requests.put(message)
        with self._lock:
            if self._closed.is_set():
                return None, False
            self._stream = stream
        try:
            stream.call = self._open_stream(pb_grpc.MasterStub(self._channel(address)), stream.iterate())
            if not stream.alive:     # closed while opening
                stream.call.cancel()
            for message in stream.call:
                self._received(stream)
                self._deliver(message)
            return None, False
        except grpc.RpcError as e:
            hint = leader_hint(e)
            if hint and hint != address:
                self._hint = hint
            code = e.code() if hasattr(e, "code") else grpc.StatusCode.UNKNOWN
            if stream.alive:
                log.debug("%s: stream to %s ended: %s %s", self.name, address, code, e.details())
            return CisternError(errno_for_grpc_status(code), f"{address}: {e.details() or code.name}"), \
                bool(self._hint)
        except Exception as e:   # e.g. a channel closed under us: reconnect rather than die
            if not self._closed.is_set():
                log.exception("%s: stream to %s failed", self.name, address)
            return CisternError(errno.EIO, f"{address}: {type(e).__name__}: {e}"), False
        finally:
            with self._lock:
                if self._stream is stream:
                    self._stream = None
            stream.end()

    def _received(self, stream: _Stream) -> None:
        stream.last_receive = time.monotonic()
        if not stream.received:
            stream.received = True
            self._backoff.reset()
            self._hops = 0
            self._connected.set()

    def _deliver(self, message) -> None:
        if self._on_message is None:
            return
        try:
            self._on_message(message)
        except Exception:
            log.exception("%s: on_message failed", self.name)

    def _watch(self) -> None:
        period = max(0.05, self.stall_timeout_s / 4)
        while not self._closed.wait(period):
            stream = self._stream
            if stream is not None and stream.alive and time.monotonic() - stream.last_receive > self.stall_timeout_s:
                log.warning("%s: stream to %s silent for %.1fs; reconnecting", self.name, stream.address,
                            self.stall_timeout_s)
                stream.end()


def master_status(addresses, timeout_s: float = 5.0) -> pb.SchedStatus:
    """The leader master's ``SchedStatus``, asking each replica in turn and
    following leader hints. Raises ``Unavailable`` (ETIMEDOUT) when no
    master answers within ``timeout_s``."""
    candidates = resolve_addresses(addresses)
    deadline = rpc.Deadline(timeout_s)
    last, hint, tried = "", "", 0
    while not deadline.expired():
        if hint:
            address, hint = hint, ""
        else:
            address = candidates[tried % len(candidates)]
            tried += 1
        channel = rpc.insecure_channel(address, limits.message_bytes_max)
        try:
            return pb_grpc.MasterStub(channel).Status(
                pb.StatusRequest(), timeout=max(0.05, min(status_attempt_timeout_s, deadline.remaining())))
        except grpc.RpcError as e:
            last = f"{address}: {e.details() or e.code().name}"
            hint = leader_hint(e)
            hint = hint if hint != address else ""
            if not hint and tried % len(candidates) == 0:
                time.sleep(min(0.1, deadline.remaining()))   # mid-election: ask around again shortly
        finally:
            channel.close()
    raise Unavailable(f"no scheduler master answered ({last or 'no replica'})")
