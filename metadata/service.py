"""The metadata service's gRPC face: batches of operations in, replies out.

The service never parses an operation's arguments: it checks the envelope
(known code range, a msgpack list, size limits), hands the bytes to the
replica, and sends each reply as soon as its future completes. Replies that
complete together travel in one ``ReplyBatch``; replies that say "not the
leader" travel in a batch of their own with ``not_leader`` set, so the client
can resend exactly those operations elsewhere.

Threads: a ``Stream`` call uses the gRPC worker thread that runs its reply
generator plus one reader thread that submits incoming batches; replica
futures complete on the replica's threads and only enqueue replies.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import queue
import threading

import grpc
import msgpack

from cistern.core.errors import CisternError, NotLeader, grpc_status_for
from cistern.metadata import limits, model
from cistern.metadata.proto import metadata_pb2 as pb
from cistern.metadata.proto import metadata_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

client_id_length_bytes = 16
stream_idle_poll_s = 1.0           # how often an idle stream notices a cancelled call
# Operations one stream may have submitted and not yet answered. Past it the
# stream stops reading, so gRPC flow control slows the client down instead of
# the replica's queue growing without bound.
stream_ops_in_flight_max = 4 * limits.batch_ops_max
call_wait_max_s = 60.0             # a unary Call without a deadline waits at most this long

_FIRST_WRITE_CODE = 100
# msgpack array headers: fixarray (0x90-0x9f), array16 (0xdc), array32 (0xdd).
_ARRAY_HEADERS = frozenset(range(0x90, 0xA0)) | {0xDC, 0xDD}
_DONE = object()   # the reader's end-of-requests marker in a reply queue


class ServiceStats:
    """Counters the service keeps for Status (and tests): cheap plain ints
    updated under the GIL; Prometheus metrics mirror them when given."""

    def __init__(self, registry=None):
        self.request_batches = 0
        self.requests = 0
        self.reply_batches = 0
        self.streams_open = 0
        self._metrics = None
        if registry is not None:
            from prometheus_client import Counter, Gauge, Histogram

            requests = Counter("metad_requests", "operations received", ["kind"], registry=registry)
            self._metrics = (
                Counter("metad_request_batches", "request batches received", registry=registry),
                # The children, bound once: labels() per batch costs a lock and a lookup.
                (requests.labels("read"), requests.labels("write")),
                Counter("metad_reply_batches", "reply batches sent", registry=registry),
                Gauge("metad_streams_open", "client streams open", registry=registry),
                Histogram("metad_request_batch_ops", "operations per request batch",
                          buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096), registry=registry),
            )

    def batch_in(self, n_reads: int, n_writes: int) -> None:
        self.request_batches += 1
        self.requests += n_reads + n_writes
        if self._metrics:
            batches, requests, _, _, sizes = self._metrics
            batches.inc()
            if n_reads:
                requests[0].inc(n_reads)
            if n_writes:
                requests[1].inc(n_writes)
            sizes.observe(n_reads + n_writes)

    def batch_out(self) -> None:
        self.reply_batches += 1
        if self._metrics:
            self._metrics[2].inc()

    def stream(self, delta: int) -> None:
        self.streams_open += delta
        if self._metrics:
            self._metrics[3].inc(delta)

    def as_dict(self) -> dict:
        return {"request_batches": self.request_batches, "requests": self.requests,
                "reply_batches": self.reply_batches, "streams_open": self.streams_open}


# A reply travels inside the service as a tuple (seq, errno, message, packed
# value) and becomes a pb.Reply only when added to the ReplyBatch that
# carries it (_reply_batch): a list of pb.Reply handed to
# ReplyBatch(replies=...) is copied, twice the protobuf work per reply.

def _error_reply(seq: int, err: int, message: str) -> tuple:
    return (seq, err, message, b"")


def _reply_batch(replies, **fields) -> pb.ReplyBatch:
    """One ReplyBatch of reply tuples (see _error_reply), plus ``fields``."""
    message = pb.ReplyBatch(**fields)
    add = message.replies.add
    for seq, err, text, value in replies:
        if err:
            add(seq=seq, errno=err, message=text)
        else:
            add(seq=seq, value=value)
    return message


def check_batch(batch: pb.RequestBatch) -> str:
    """'' when the batch's envelope is acceptable, else why not (EINVAL for all)."""
    if len(batch.requests) > limits.batch_ops_max:
        return f"batch of {len(batch.requests)} operations exceeds batch_ops_max {limits.batch_ops_max}"
    return ""


def check_request(code: int, args: bytes, client_id: bytes) -> tuple[int, str]:
    """(0, '') when one request's envelope (its code and argument bytes,
    each read once from the message: every access to a protobuf bytes
    field copies it) is acceptable, else (errno, message)."""
    if code < _FIRST_WRITE_CODE and code not in model.READ_OPS:
        return errno.ENOSYS, f"unknown operation code {code}"
    if len(args) > limits.op_args_bytes_max:
        return errno.E2BIG, f"arguments of {len(args)} bytes exceed op_args_bytes_max {limits.op_args_bytes_max}"
    if not args or args[0] not in _ARRAY_HEADERS:
        return errno.EINVAL, "arguments are not a msgpack list"
    if code >= _FIRST_WRITE_CODE and len(client_id) != client_id_length_bytes:
        return errno.EINVAL, f"a write needs a {client_id_length_bytes}-byte client_id"
    return 0, ""


class MetadataService(pb_grpc.MetadataServicer):
    """Serves one ``Replica`` (see metadata/replica.py for the interface used:
    submit_writes and submit_reads, or else submit_write and submit_read;
    status, is_leader, leader_rpc_address)."""

    def __init__(self, replica, *, registry=None):
        self._replica = replica
        self._submit_writes = getattr(replica, "submit_writes", None) or _writes_by_future(replica)
        self._submit_reads = getattr(replica, "submit_reads", None) or _reads_by_future(replica)
        self.stats = ServiceStats(registry)

    # -- submitting ------------------------------------------------------

    def _submit_batch(self, batch: pb.RequestBatch, on_replies) -> int:
        """Submit every request of batch; ``on_replies(replies, not_leader_hint)``
        is called with lists of reply tuples (``_error_reply``), one reply per request in all (hint
        is None unless the replica said it is not the leader). The batch's
        reads go to the replica as one group (one barrier slot, one
        callback). Returns the number of requests."""
        problem = check_batch(batch)
        if problem:
            on_replies([_error_reply(request.seq, errno.EINVAL, problem) for request in batch.requests], None)
            return len(batch.requests)
        client_id = batch.client_id
        read_seqs, reads, writes = [], [], []
        for request in batch.requests:
            seq, code, args = request.seq, request.code, request.args
            err, message = check_request(code, args, client_id)
            if err:
                on_replies([_error_reply(seq, err, message)], None)
                continue
            if code < _FIRST_WRITE_CODE:
                read_seqs.append(seq)
                reads.append((code, args))
            else:
                writes.append((seq, code, args))
        if writes:
            callback = _writes_callback([seq for seq, _, _ in writes], on_replies)
            try:
                self._submit_writes(client_id, batch.acked_below, writes, callback)
            except Exception as e:  # the replica refused at once
                callback([(i, None) for i in range(len(writes))], e)
        if reads:
            try:
                self._submit_reads(reads, _reads_callback(read_seqs, on_replies),
                                   linearizable=not batch.stale_ok)
            except Exception as e:  # the replica refused at once
                _reads_callback(read_seqs, on_replies)(None, e)
        self.stats.batch_in(len(reads), len(writes))
        return len(batch.requests)

    # -- RPCs ------------------------------------------------------------

    def Stream(self, request_iterator, context):
        replies: queue.SimpleQueue = queue.SimpleQueue()
        state = {"submitted": 0, "replied": 0, "reading": True}
        room = threading.Event()   # set by the writer: answered operations made room

        def on_replies(batch, hint):
            replies.put((batch, hint))

        def read():
            try:
                for batch in request_iterator:
                    state["submitted"] += self._submit_batch(batch, on_replies)
                    while (state["submitted"] - state["replied"] > stream_ops_in_flight_max
                           and context.is_active()):
                        room.wait(stream_idle_poll_s)
                        room.clear()
            except Exception as e:  # a cancelled or broken call ends the iterator this way
                if context.is_active():
                    log.warning("stream reader stopped: %s", e)
            finally:
                state["reading"] = False
                replies.put(_DONE)

        context.add_callback(lambda: replies.put(_DONE))
        reader = threading.Thread(target=read, name="metad-stream-reader", daemon=True)
        self.stats.stream(+1)
        reader.start()
        try:
            yield from self._reply_batches(replies, state, room, context)
        finally:
            self.stats.stream(-1)

    def _reply_batches(self, replies, state, room, context):
        while context.is_active():
            try:
                item = replies.get(timeout=stream_idle_poll_s)
            except queue.Empty:
                continue
            items = [item]
            while True:   # coalesce everything that is already done
                try:
                    items.append(replies.get_nowait())
                except queue.Empty:
                    break
            ordinary, redirected, hint = [], [], ""
            for item in items:
                if item is _DONE:
                    continue
                batch, leader = item
                if leader is None:
                    ordinary.extend(batch)
                else:
                    redirected.extend(batch)
                    hint = hint or leader
            state["replied"] += len(ordinary) + len(redirected)
            room.set()
            if ordinary:
                self.stats.batch_out()
                yield _reply_batch(ordinary)
            if redirected:
                # Apart from the ordinary replies: the client resends every
                # operation of a not_leader batch elsewhere.
                self.stats.batch_out()
                yield _reply_batch(redirected, not_leader=True, leader=hint)
            if not state["reading"] and state["replied"] >= state["submitted"]:
                return

    def Call(self, request, context):
        done = threading.Event()
        collected: list = []
        expected = len(request.requests)
        lock = threading.Lock()

        def on_replies(batch, hint):
            with lock:
                collected.extend((reply, hint) for reply in batch)
                if len(collected) == expected:
                    done.set()

        if expected == 0:
            return pb.ReplyBatch()
        self._submit_batch(request, on_replies)
        remaining = context.time_remaining()
        wait_s = call_wait_max_s if remaining is None else min(remaining, call_wait_max_s)
        if not done.wait(timeout=wait_s):
            context.abort(grpc_status_for(errno.ETIMEDOUT), "deadline passed before every operation completed")
        hints = [hint for _, hint in collected if hint is not None]
        self.stats.batch_out()
        return _reply_batch([reply for reply, _ in collected],
                            not_leader=bool(hints), leader=hints[0] if hints else "")

    def Status(self, request, context):
        try:
            status = self._replica.status()
        except CisternError as e:
            context.abort(grpc_status_for(e.errno), e.message)
        return status_reply(status, self.stats.as_dict())


def _writes_by_future(replica):
    """``submit_writes`` over a replica that only has ``submit_write``."""
    def submit_writes(client_id, acked_below, writes, on_done):
        for i, (seq, code, args) in enumerate(writes):
            future = replica.submit_write(client_id, seq, acked_below, code, args)
            future.add_done_callback(lambda f, i=i: on_done(*_pair_of(i, f)))
    return submit_writes


def _reads_by_future(replica):
    """``submit_reads`` over a replica that only has ``submit_read``: one
    call of ``on_done`` once every read of the group is answered."""
    def submit_reads(reads, on_done, *, linearizable=True):
        futures = [replica.submit_read(code, args, linearizable=linearizable) for code, args in reads]
        remaining = [len(futures)]
        lock = threading.Lock()

        def one_done(_):
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            results = []
            for future in futures:
                pairs, exc = _pair_of(0, future)
                if exc is not None:
                    on_done(None, exc)
                    return
                results.append(pairs[0][1])
            on_done(results, None)

        for future in futures:
            future.add_done_callback(one_done)
    return submit_reads


def _pair_of(i: int, future):
    """([(i, result)], None) for an answered operation, ([(i, None)], exc)
    for one that must be redirected or failed as a whole."""
    try:
        return [(i, (0, "", future.result()))], None
    except NotLeader as e:
        return [(i, None)], e
    except CisternError as e:
        return [(i, (e.errno, e.message, None))], None
    except BaseException as e:
        return [(i, None)], e


def _packer():
    """``model.pack`` for one group's replies: a Packer made once per group
    and reused (same bytes; msgpack.packb builds a Packer per value, ~0.9 us
    more per reply). Callbacks run on several replica threads: one each."""
    return msgpack.Packer(use_bin_type=True).pack


def _writes_callback(seqs: list, on_replies):
    """The replica's callback for one group of writes: each call answers
    some of them (those that shared a Raft entry) as one list."""
    def done(pairs, exc):
        if exc is not None:
            replies = [_reply_for_exception(seqs[i], exc) for i, _ in pairs]
            on_replies([reply for reply, _ in replies], replies[0][1] if replies else None)
            return
        pack = _packer()
        out = []
        for i, (err, message, value) in pairs:
            if err:
                out.append((seqs[i], err, message or os.strerror(err), b""))
            else:
                out.append((seqs[i], 0, "", pack(value)))
        on_replies(out, None)
    return done


def _reads_callback(seqs: list, on_replies):
    """The replica's callback for one group of reads: their replies as one list."""
    def done(results, exc):
        if exc is not None:
            replies = [_reply_for_exception(seq, exc) for seq in seqs]
            on_replies([reply for reply, _ in replies], replies[0][1] if replies else None)
            return
        pack = _packer()
        out = []
        for seq, (err, message, value) in zip(seqs, results):
            if err:
                out.append((seq, err, message or os.strerror(err), b""))
            else:
                out.append((seq, 0, "", pack(value)))
        on_replies(out, None)
    return done


def _reply_for_exception(seq: int, e: BaseException):
    if isinstance(e, NotLeader):
        return _error_reply(seq, e.errno, e.message), e.leader or ""
    if isinstance(e, CisternError):
        return _error_reply(seq, e.errno, e.message), None
    log.exception("operation %d failed unexpectedly", seq, exc_info=e)
    return _error_reply(seq, errno.EIO, f"internal error: {type(e).__name__}: {e}"), None


def _jsonable(obj):
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).hex()
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    return str(obj)


def status_reply(status: dict, service_stats: dict | None = None) -> pb.StatusReply:
    """The replica's status dict as a StatusReply (the full dict also as json)."""
    digest = status.get("digest") or ""
    if isinstance(digest, (bytes, bytearray)):
        digest = bytes(digest).hex()
    members = []
    for m in status.get("members") or []:
        if isinstance(m, dict):
            members.append(pb.Member(id=str(m.get("id", "")), raft=str(m.get("raft", "")),
                                     rpc=str(m.get("rpc", ""))))
        else:
            members.append(pb.Member(raft=str(m)))
    full = dict(status)
    if service_stats is not None:
        full["service"] = service_stats
    return pb.StatusReply(
        id=str(status.get("id") or ""), role=str(status.get("role") or ""),
        leader_id=str(status.get("leader_id") or ""), leader_rpc=str(status.get("leader_rpc") or ""),
        term=int(status.get("term") or 0), commit_index=int(status.get("commit_index") or 0),
        applied_index=int(status.get("applied_index") or 0),
        last_log_index=int(status.get("last_log_index") or 0),
        digest=str(digest), members=members,
        json=json.dumps(full, default=_jsonable, sort_keys=True))


def status_dict(reply: pb.StatusReply) -> dict:
    """The status dict a StatusReply carries (the json field when present)."""
    if reply.json:
        return json.loads(reply.json)
    return {"id": reply.id, "role": reply.role, "leader_id": reply.leader_id,
            "leader_rpc": reply.leader_rpc, "term": reply.term,
            "commit_index": reply.commit_index, "applied_index": reply.applied_index,
            "last_log_index": reply.last_log_index, "digest": reply.digest,
            "members": [{"id": m.id, "raft": m.raft, "rpc": m.rpc} for m in reply.members]}


def add_to_server(service: MetadataService, server: grpc.Server) -> None:
    pb_grpc.add_MetadataServicer_to_server(service, server)

