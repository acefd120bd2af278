"""MetaClient: the batched metadata client.

Contract
    ``submit(code, args)`` returns a ``concurrent.futures.Future`` that resolves
    to the operation's decoded value or raises ``CisternError`` with the
    reply's errno and message; ``call`` is its blocking form and ``acall`` its
    asyncio form. ``submit_callback(code, args, callback)`` is the leanest
    form: no future, ``callback(value, error)`` is called exactly once, with
    ``error`` None or the ``CisternError`` the future would raise. Any
    number of threads may call them at once.

How operations travel
    One long-lived bidirectional stream to the leader. Operations wait in a
    queue; whenever the stream can take a message, every waiting operation
    (up to ``limits.batch_ops_max``) rides one ``RequestBatch``, so
    concurrent callers share messages and the leader commits them as one Raft
    entry. A receiver thread resolves futures by ``seq`` as replies arrive.

Leader discovery and retries
    Every operation gets a ``seq`` from one per-client counter;
    ``acked_below`` is the lowest seq still waiting for its reply, so the
    replica's session table may forget everything below it. When the stream
    breaks or the replica says it is not the leader, the client reconnects to
    the hinted leader (or the next address, with backoff) and resends every
    unanswered operation with the SAME seq, so a write that the old leader
    already committed is applied once. A reply with errno EAGAIN (the
    replica's "busy, or outcome unknown: resend") is resent the same way
    after a short pause. An operation fails with ``Unavailable``
    (ETIMEDOUT) only when ``timeout_s`` passes without an answer: a caller
    never sees an election. A stream that holds unanswered operations but
    delivers nothing for ``stall_timeout_s`` (a frozen leader, a one-way
    partition: TCP still looks healthy) is abandoned the same way, and its
    address is skipped once when choosing the next.

Delegation refusals
    An operation the service refused because a directory create delegation
    could change its answer (errno ``model.DELEGATED_ERRNO``) never reaches
    the caller: the client sends DELEG_RECALL for it and resends it with a
    NEW seq (the refusal is the answer the session table holds for the old
    one) after a short backoff (``refusal_retry_delay_s``), until its
    deadline; then it fails with ``Unavailable`` (ETIMEDOUT). The check is
    one integer comparison per reply, so ordinary operations pay nothing.

Threads: one receiver ("metaclient-recv") that also reconnects, one reaper
that expires overdue operations, and gRPC's own thread that pulls batches
from ``_requests``. Future callbacks and ``submit_callback`` callbacks run
on the receiver thread (on the reaper's for an expired operation, on the
caller's once closed): keep them short (hand long work to another thread),
or they delay every other reply.
"""

from __future__ import annotations

import asyncio
import errno
import itertools
import logging
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, InvalidStateError

import grpc

from cistern.core import rpc
from cistern.core.errors import CisternError, Unavailable, errno_for_grpc_status
from cistern.metadata import limits, model
from cistern.metadata.proto import metadata_pb2 as pb
from cistern.metadata.proto import metadata_pb2_grpc as pb_grpc
from cistern.metadata.service import status_dict

log = logging.getLogger(__name__)

reaper_interval_s = 0.05
message_bytes_max = limits.batch_bytes_max + 1024 * 1024   # a full batch plus envelope
batch_envelope_bytes = 16                                   # per-request protobuf overhead, generously
hint_hops_max = 3                                           # leader hints followed without backoff
# Request batches one stream may have out that are not wholly answered. The
# sender waits for a free slot, so under load operations pile up meanwhile
# and ride one message: every gRPC message costs both ends a few hundred
# microseconds of CPU, and without a window each completed operation let the
# next one out alone (measured ~6 operations per message at 16 x 64 in
# flight). With nothing outstanding an operation leaves at once, so one at a
# time pays no extra latency.
stream_batches_in_flight_max = 4
# A delegation-refused operation is resent after this backoff, doubling
# from the first to the last: the holder needs a commit and a release
# (milliseconds) once it has seen the recall at its next renewal.
refusal_retry_initial_s = 0.005
refusal_retry_max_s = 0.05


def refusal_retry_delay_s(attempt: int) -> float:
    """The pause before resending an operation refused ``attempt`` times before."""
    return min(refusal_retry_initial_s * 2 ** attempt, refusal_retry_max_s)


def recall_args(code: int, args: bytes) -> bytes:
    """DELEG_RECALL's arguments for operation ``code`` (with ``args``, as
    submitted) that a delegation refused: the same credentials."""
    cred, *rest = model.unpack(args)
    return model.pack([cred, int(code), rest])


def recall_and_resend(submit, code: int, args: bytes, deadline: float, attempt: int, resend) -> CisternError | None:
    """What a metadata client does with operation ``code`` that a delegation
    refused for the ``attempt``-th time: past its ``deadline``, the error to
    fail it with; else it sends DELEG_RECALL through ``submit`` (its answer
    is not needed), calls ``resend()`` after the backoff, and returns None."""
    if time.monotonic() >= deadline:
        return Unavailable(f"metadata operation {code}: directory stayed delegated")
    submit(model.Op.DELEG_RECALL, recall_args(code, args))
    timer = threading.Timer(refusal_retry_delay_s(attempt), resend)
    timer.daemon = True
    timer.start()
    return None


def refused(code: int, err: int) -> bool:
    """Whether a reply with errno ``err`` is a delegation's refusal of ``code``."""
    return err == model.DELEGATED_ERRNO and code not in model.NEVER_DELEGATED


class _Op:
    __slots__ = ("seq", "code", "args", "stale", "sink", "deadline", "sent_at", "batch", "refusals")

    def __init__(self, seq, code, args, stale, sink, deadline):
        self.seq = seq
        self.code = code
        self.args = args
        self.stale = stale
        self.sink = sink       # its Future, or submit_callback's callback(value, error)
        self.deadline = deadline
        self.sent_at = None    # monotonic time it last went out on a stream
        self.batch = None      # [unanswered ops] of the batch it went out in, on the current stream
        self.refusals = 0      # times a delegation refused it


class _Connection:
    """One stream to one address; ``alive`` turns False exactly once."""

    def __init__(self, address: str):
        self.address = address
        self.alive = True
        self.call = None
        self.last_reply = time.monotonic()


class MetaClient:
    def __init__(self, addresses: list[str], *, client_id: bytes | None = None,
                 timeout_s: float = 30.0, stall_timeout_s: float = 5.0):
        if not addresses:
            raise CisternError(errno.EINVAL, "MetaClient needs at least one metadata address")
        self.addresses = list(addresses)
        self.client_id = client_id or os.urandom(16)
        assert len(self.client_id) == 16, "client_id must be 16 bytes"
        self.timeout_s = timeout_s
        self.stall_timeout_s = stall_timeout_s
        self._avoid = ""                      # an address whose stream stalled: skipped once
        self._seqs = itertools.count(1)
        self._cond = threading.Condition(threading.Lock())
        self._ops: dict[int, _Op] = {}        # every unanswered operation, by seq
        self._unsent: deque[int] = deque()    # seqs to send on the current stream, in order
        self._retry: list[int] = []           # seqs answered EAGAIN: resent by the reaper
        self._waiting = 0                     # threads waiting on _cond
        self._batches_out = 0                 # sent batches on the current stream not wholly answered
        self._expiry_due = math.inf           # no operation in _ops has an earlier deadline
        self._conn: _Connection | None = None
        self._closed = False
        self._channels: dict[str, grpc.Channel] = {}
        self._channels_lock = threading.Lock()
        self._next_address = 0
        self._leader_hint = ""
        self._hops = 0                        # consecutive leader hints followed without a reply
        self._backoff = rpc.Backoff(initial_s=0.02, max_s=0.5)
        self.batches_sent = 0                 # statistics, for tests and benchmarks
        self.replies_received = 0             # reply batches
        self.reconnects = 0
        self.sender_wakeups = 0               # times the sender woke from waiting for work
        self._receiver = threading.Thread(target=self._run, name="metaclient-recv", daemon=True)
        self._reaper = threading.Thread(target=self._reap, name="metaclient-reaper", daemon=True)
        self._receiver.start()
        self._reaper.start()

    # -- public API ------------------------------------------------------

    def submit(self, code: int, args: bytes, *, stale: bool = False,
               timeout_s: float | None = None) -> Future:
        """Queue one operation; the future holds its decoded value or raises
        CisternError (Unavailable when no leader answered in time)."""
        future: Future = Future()
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        self._queue(_Op(0, int(code), args, bool(stale) and code in model.READ_OPS, future, deadline))
        return future

    def submit_callback(self, code: int, args: bytes, callback, *, stale: bool = False,
                        timeout_s: float | None = None) -> None:
        """Queue one operation; ``callback(value, error)`` gets its decoded
        value (``error`` None) or the CisternError ``submit``'s future would
        raise (``value`` None), exactly once. Saves the future's own cost
        (a Condition and an RLock made, entered and notified per operation,
        ~3-4 us of client CPU). An exception the callback raises is logged."""
        deadline = time.monotonic() + (self.timeout_s if timeout_s is None else timeout_s)
        self._queue(_Op(0, int(code), args, bool(stale) and code in model.READ_OPS, callback, deadline))

    def _queue(self, op: _Op) -> None:
        """Give ``op`` the next seq and queue it for the sender."""
        with self._cond:
            closed = self._closed
            if not closed:
                op.seq = seq = next(self._seqs)
                self._ops[seq] = op
                self._unsent.append(seq)
                if op.deadline < self._expiry_due:
                    self._expiry_due = op.deadline
                # Wake only a thread this op gives work: the receiver idling
                # with nothing outstanding, or a sender that waits for work
                # with room in its window. A sender that waits for a free
                # slot would only look and wait again: under load that was
                # a wake-up and two GIL hand-offs per operation.
                if self._waiting and (len(self._ops) == 1 or (
                        len(self._unsent) == 1 and self._batches_out < stream_batches_in_flight_max)):
                    self._cond.notify_all()
        if closed:   # outside the lock: a resent op's callbacks may submit
            _fail(op.sink, CisternError(errno.ESHUTDOWN, "MetaClient is closed"))

    def call(self, code: int, args: bytes, *, stale: bool = False, timeout_s: float | None = None):
        """Blocking form of submit: the decoded value, or raises CisternError."""
        return self.submit(code, args, stale=stale, timeout_s=timeout_s).result()

    async def acall(self, code: int, args: bytes, *, stale: bool = False,
                    timeout_s: float | None = None):
        """asyncio form of call."""
        return await asyncio.wrap_future(self.submit(code, args, stale=stale, timeout_s=timeout_s))

    def status(self, address: str | None = None, timeout_s: float = 2.0) -> dict:
        """Status of one replica; by default the leader's (found by asking
        each address until one is or names the leader)."""
        if address is not None:
            return self._status_of(address, timeout_s)
        deadline = rpc.Deadline(timeout_s)
        last: Exception | None = None
        candidates = [a for a in [self._leader_hint] if a] + self.addresses
        tried = set()
        while candidates and not deadline.expired():
            address = candidates.pop(0)
            if address in tried:
                continue
            tried.add(address)
            try:
                status = self._status_of(address, max(0.05, deadline.remaining()))
            except CisternError as e:
                last = e
                continue
            if status.get("role") == "leader":
                return status
            if status.get("leader_rpc"):
                candidates.insert(0, status["leader_rpc"])
            if not candidates and not deadline.expired():
                # Mid-election: nobody knows the leader yet; ask around again.
                time.sleep(0.05)
                tried.clear()
                candidates = list(self.addresses)
        raise last if isinstance(last, CisternError) else Unavailable("no metadata replica reports a leader")

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            conn = self._conn
            ops = list(self._ops.values())
            self._ops.clear()
            self._unsent.clear()
            self._cond.notify_all()
        if conn is not None:
            self._drop(conn)
        for op in ops:
            _fail(op.sink, CisternError(errno.ESHUTDOWN, "MetaClient closed"))
        self._receiver.join(timeout=5)
        self._reaper.join(timeout=5)
        with self._channels_lock:
            for channel in self._channels.values():
                channel.close()
            self._channels.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def statistics(self) -> dict:
        with self._cond:
            return {"outstanding": len(self._ops), "batches_sent": self.batches_sent,
                    "reconnects": self.reconnects,
                    "address": self._conn.address if self._conn else ""}

    # -- channels --------------------------------------------------------

    def _channel(self, address: str) -> grpc.Channel:
        with self._channels_lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = rpc.insecure_channel(address, message_bytes_max)
                self._channels[address] = channel
            return channel

    def _status_of(self, address: str, timeout_s: float) -> dict:
        stub = pb_grpc.MetadataStub(self._channel(address))
        try:
            return status_dict(stub.Status(pb.StatusRequest(), timeout=timeout_s))
        except grpc.RpcError as e:
            raise CisternError(errno_for_grpc_status(e.code()),
                               f"{address}: {e.details() or e.code().name}") from None

    # -- the stream ------------------------------------------------------

    def _pick_address(self) -> str:
        hint, self._leader_hint = self._leader_hint, ""
        if hint and hint != self._avoid:
            return hint
        for _ in range(2):
            address = self.addresses[self._next_address % len(self.addresses)]
            self._next_address += 1
            if address != self._avoid or len(self.addresses) == 1:
                break
        return address

    def _run(self) -> None:
        """Connect, receive until the stream breaks, reconnect; until closed."""
        while True:
            with self._cond:
                # Stay idle (no stream, no connection attempts) while nothing waits.
                while not self._closed and not self._ops:
                    self._wait()
                if self._closed:
                    return
                address = self._pick_address()
                conn = _Connection(address)
                self._conn = conn
                # Everything unanswered goes out again on the new stream, in seq
                # order and with its original seq.
                self._unsent = deque(sorted(self._ops))
                for op in self._ops.values():
                    op.sent_at = None
                    op.batch = None
                self._batches_out = 0
                self._retry.clear()
                self.reconnects += 1
            hinted = self._receive(conn)
            self._drop(conn)
            with self._cond:
                if self._closed:
                    return
                if self._conn is conn:
                    self._conn = None
            # Follow a hint at once, but not forever: replicas that disagree
            # about the leader mid-election must not make us spin.
            self._hops = self._hops + 1 if hinted else 0
            if not hinted or self._hops > hint_hops_max:
                time.sleep(self._backoff.next_delay_s())

    def _receive(self, conn: _Connection) -> bool:
        """Run one stream until it ends. True when it ended on a leader hint
        (reconnect at once), False on a failure (reconnect after backoff)."""
        stub = pb_grpc.MetadataStub(self._channel(conn.address))
        try:
            conn.call = stub.Stream(self._requests(conn))
            for reply_batch in conn.call:
                if reply_batch.not_leader:
                    with self._cond:
                        self._leader_hint = reply_batch.leader if reply_batch.leader != conn.address else ""
                    log.debug("%s is not the leader (hint %r)", conn.address, reply_batch.leader)
                    return bool(self._leader_hint)
                self.replies_received += 1
                self._backoff.reset()
                self._hops = 0
                conn.last_reply = time.monotonic()
                if self._avoid and self._avoid != conn.address:
                    self._avoid = ""
                self._resolve(reply_batch.replies)
        except grpc.RpcError as e:
            if conn.alive:
                log.debug("stream to %s broke: %s", conn.address, e.code())
        except Exception:
            log.exception("stream to %s failed", conn.address)
        return False

    def _resolve(self, replies) -> None:
        answered = []
        with self._cond:
            freed = self._batches_out
            for r in replies:
                op = self._ops.get(r.seq)
                if op is None:
                    continue   # answered already (a resent op's second reply) or expired
                self._answered(op)
                err = r.errno
                if err == errno.EAGAIN:
                    # The replica could not take it now, or lost track of its
                    # outcome: resend with the same seq (applied at most once).
                    self._retry.append(r.seq)
                    continue
                del self._ops[r.seq]
                answered.append((op, err, r))
            # A freed slot matters only to the sender with operations
            # waiting for one; one at a time there are none, and waking it
            # (to find nothing to send) cost the client two more thread
            # switches and GIL hand-offs per operation.
            if self._batches_out < freed and self._unsent and self._waiting:
                self._cond.notify_all()
        for op, err, r in answered:
            if err:
                if refused(op.code, err):
                    self._refused(op)
                else:
                    _fail(op.sink, CisternError(err, r.message))
                continue
            value = r.value
            try:
                value = model.unpack(value) if value else None
            except Exception as e:
                _fail(op.sink, CisternError(errno.EBADMSG, f"undecodable reply value: {e}"))
                continue
            _succeed(op.sink, value)

    def _refused(self, op: _Op) -> None:
        """A delegation refused ``op``: recall it, resend ``op`` after a backoff."""
        op.refusals += 1
        error = recall_and_resend(self.submit, op.code, op.args, op.deadline, op.refusals - 1,
                                  lambda: self._resend_refused(op))
        if error is not None:
            _fail(op.sink, error)

    def _resend_refused(self, op: _Op) -> None:
        op.sent_at = None
        op.batch = None
        self._queue(op)   # a new seq: the session table holds the refusal as the old one's answer

    def _answered(self, op: _Op) -> None:
        # Called with the lock held: op's batch has one unanswered op less.
        batch, op.batch = op.batch, None
        if batch is not None:
            batch[0] -= 1
            if batch[0] == 0:
                self._batches_out -= 1

    def _requests(self, conn: _Connection):
        """The request side of one stream: each message takes every waiting
        operation of one kind (stale reads or the rest), up to the limits,
        once fewer than ``stream_batches_in_flight_max`` batches are out."""
        while True:
            with self._cond:
                while conn.alive and not self._closed and (
                        not self._unsent or self._batches_out >= stream_batches_in_flight_max):
                    self._wait()
                    self.sender_wakeups += 1
                if not conn.alive or self._closed:
                    return
                batch = self._take_batch()
            if batch is not None:
                self.batches_sent += 1
                yield batch

    def _wait(self) -> None:
        # Called with the lock held; submit() notifies only while someone waits.
        self._waiting += 1
        try:
            self._cond.wait()
        finally:
            self._waiting -= 1

    def _take_batch(self) -> pb.RequestBatch | None:
        # Called with the lock held. Requests are added to the batch in
        # place: a list of pb.Request passed to RequestBatch(requests=...)
        # is copied, twice the protobuf work per operation.
        message = pb.RequestBatch(client_id=self.client_id)
        add = message.requests.add
        n = 0
        size = 0
        stale = None
        now = time.monotonic()
        batch = [0]       # its unanswered ops, counted down by _answered
        ops, unsent = self._ops, self._unsent
        while unsent and n < limits.batch_ops_max:
            op = ops.get(unsent[0])
            if op is None:               # answered or expired while waiting
                unsent.popleft()
                continue
            if stale is None:
                stale = op.stale
            elif op.stale != stale:
                break
            op_size = len(op.args) + batch_envelope_bytes
            if n and size + op_size > limits.batch_bytes_max:
                break
            unsent.popleft()
            size += op_size
            op.sent_at = now
            op.batch = batch
            add(seq=op.seq, code=op.code, args=op.args)
            n += 1
            last_seq = op.seq
        if not n:
            return None
        batch[0] = n
        self._batches_out += 1
        message.acked_below = min(ops) if ops else last_seq + 1
        message.stale_ok = bool(stale)
        return message

    def _drop(self, conn: _Connection) -> None:
        with self._cond:
            conn.alive = False
            self._cond.notify_all()
        call = conn.call
        if call is not None:
            call.cancel()

    def _stalled(self, conn: _Connection, now: float) -> bool:
        # Called with the lock held: an operation has waited on this stream
        # longer than stall_timeout_s, and the stream delivered nothing since.
        if now - conn.last_reply < self.stall_timeout_s:
            return False
        return any(op.sent_at is not None and now - op.sent_at > self.stall_timeout_s
                   for op in self._ops.values())

    def _expired(self, now: float) -> list:
        # Called with the lock held: take out the operations whose deadline
        # passed, and note when the next one's comes (the reaper scans no
        # sooner: under load a scan of every operation 20 times a second
        # was a measurable part of the client's CPU).
        expired = [op for op in self._ops.values() if op.deadline <= now]
        for op in expired:
            self._answered(op)
            del self._ops[op.seq]
        self._expiry_due = min((op.deadline for op in self._ops.values()), default=math.inf)
        return expired

    def _reap(self) -> None:
        """Fail operations whose deadline passed; requeue EAGAIN answers (so
        a retry waits one reaper interval, a small backoff)."""
        while True:
            with self._cond:
                if self._closed:
                    return
                now = time.monotonic()
                expired = self._expired(now) if now >= self._expiry_due else ()
                if expired:
                    self._cond.notify_all()
                if self._retry:
                    self._unsent.extend(seq for seq in self._retry if seq in self._ops)
                    self._retry.clear()
                    self._cond.notify_all()
                conn = self._conn
                address = conn.address if conn else "no replica"
                stalled = conn is not None and conn.alive and self._stalled(conn, now)
                if stalled:
                    self._avoid = conn.address
            if stalled:
                # A replica that holds our operations but sends nothing (a
                # frozen process, a one-way partition) looks alive to TCP:
                # leave it; the same-seq resend makes that safe.
                log.warning("metadata stream to %s stalled for %.1fs; trying another replica",
                            address, self.stall_timeout_s)
                self._drop(conn)
            for op in expired:
                _fail(op.sink, Unavailable(
                    f"metadata operation {op.code} got no answer in time (last tried {address})"))
            time.sleep(reaper_interval_s)


def _fail(sink, error: Exception) -> None:
    """Fail an operation's Future, or call its callback with ``error``."""
    if type(sink) is not Future:
        _call_back(sink, None, error)
    elif not sink.done():
        try:
            sink.set_exception(error)
        except Exception:   # raced with another resolver: the first answer stands
            pass


def _succeed(sink, value) -> None:
    """Resolve an operation's Future with ``value``, or call its callback."""
    if type(sink) is not Future:
        _call_back(sink, value, None)
        return
    try:
        sink.set_result(value)
    except InvalidStateError:   # cancelled by its caller, or failed by close()
        pass


def _call_back(callback, value, error) -> None:
    try:
        callback(value, error)
    except Exception:
        log.exception("a metadata operation's callback failed")


class AsyncMetaClient:
    """The asyncio face of a MetaClient (shares its stream and batching)."""

    def __init__(self, client: MetaClient):
        self.client = client

    async def call(self, code: int, args: bytes, *, stale: bool = False,
                   timeout_s: float | None = None):
        return await self.client.acall(code, args, stale=stale, timeout_s=timeout_s)

    async def status(self, address: str | None = None, timeout_s: float = 2.0) -> dict:
        return await asyncio.to_thread(self.client.status, address, timeout_s)
