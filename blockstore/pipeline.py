"""The replication pipeline: one node forwards a write stream to the next.

HDFS-style: the receiving node opens a Write stream to ``targets[0]`` with the
rest of the list in the header, forwards every data message as it arrives
(while writing its own copy), and after its own fsync waits for the
downstream reply. The reply of a node lists one result per node from itself
to the end of the pipeline, so a failed downstream node is reported to the
client, never hidden; the client decides what to do with fewer replicas.

``results_after_failure`` and ``merge_results`` are pure; ``Downstream`` and
``TransferDownstream`` are the only parts that do I/O, with one interface
(``send``, ``finish``, ``cancel``): a gRPC client stream fed from a bounded
queue, so a slow next node slows this one down instead of buffering without
bound, or a write stream on the next node's transfer port (transfer.py),
sent from the caller's thread (the socket's buffer is the bound).
"""

from __future__ import annotations

import errno
import logging
import queue
import threading
from dataclasses import dataclass

import grpc

from cistern.blockstore import limits
from cistern.blockstore.proto import blockstore_pb2 as pb
from cistern.core.errors import CisternError, errno_for_grpc_status

log = logging.getLogger(__name__)

queue_poll_s = 0.2     # how often a blocked producer or consumer re-checks for an end


@dataclass(frozen=True)
class ReplicaResult:
    """What one node of a pipeline did with a block: errno 0 means stored."""
    address: str
    node_id: str = ""
    errno: int = 0
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.errno == 0

    def to_pb(self) -> pb.ReplicaResult:
        return pb.ReplicaResult(address=self.address, node_id=self.node_id, errno=self.errno, message=self.message)


def results_after_failure(targets, err: int, message: str) -> list[ReplicaResult]:
    """targets[0] failed with (err, message); the nodes after it were never reached."""
    if not targets:
        return []
    first = ReplicaResult(targets[0], errno=err, message=message)
    rest = [ReplicaResult(t, errno=errno.ECANCELED, message=f"not reached: {targets[0]} failed upstream")
            for t in targets[1:]]
    return [first] + rest


def merge_results(targets, reply: pb.WriteReply) -> list[ReplicaResult]:
    """The results for ``targets`` from the reply of targets[0]: entry i is
    targets[i] (the address as we named it); missing entries count as failed."""
    got = list(reply.replicas)
    out = []
    for i, target in enumerate(targets):
        if i < len(got):
            r = got[i]
            out.append(ReplicaResult(target, r.node_id, r.errno, r.message))
        else:
            out.append(ReplicaResult(target, errno=errno.EIO, message=f"missing from {targets[0]}'s reply"))
    return out


def check_targets(targets) -> str:
    """'' when a header's downstream target list is acceptable, else why not."""
    if len(targets) + 1 > limits.pipeline_depth_max:
        return f"a pipeline of {len(targets) + 1} nodes exceeds pipeline_depth_max {limits.pipeline_depth_max}"
    for t in targets:
        host, sep, port = t.rpartition(":")
        if not sep or not host or not port.isdigit() or len(t) > limits.address_length_max_bytes:
            return f"pipeline target {t[:80]!r} is not HOST:PORT"
    if len(set(targets)) != len(targets):
        return "a pipeline names the same target twice"
    return ""


_END = object()


def first_message(header: pb.WriteHeader, first_data, targets, *, parts: bool = False):
    """The serialized first message of a write stream to targets[0]: the
    header naming targets[1:], with ``first_data``; with ``parts``, as
    ``encode_parts`` gives it (not joined)."""
    forwarded = pb.WriteHeader()
    forwarded.CopyFrom(header)
    del forwarded.targets[:]
    forwarded.targets.extend(targets[1:])
    encoded = encode_parts(first_data, pb.WriteChunk(header=forwarded).SerializeToString())
    return encoded if parts else b"".join(encoded)


class Downstream:
    """The stream to the next node (``write_call``: BlockClient.write_call,
    which sends bytes as they are): ``send`` each received message, then
    ``finish`` for the results of targets[0:], or ``cancel`` to abandon it.
    Used by one thread (the Write handler) plus gRPC's own sender thread."""

    def __init__(self, write_call, header: pb.WriteHeader, first_data, targets, *, timeout_s: float):
        assert targets
        self.targets = list(targets)
        self._future = None   # set below; gRPC may start pulling messages before that
        self._queue: queue.Queue = queue.Queue(maxsize=limits.pipeline_queue_messages_max)
        self._closed = threading.Event()
        self._queue.put(first_message(header, first_data, self.targets))
        self._future = write_call.future(self._messages(), timeout=timeout_s)

    def _messages(self):
        while True:
            try:
                item = self._queue.get(timeout=queue_poll_s)
            except queue.Empty:
                if self._closed.is_set() or (self._future is not None and self._future.done()):
                    return
                continue
            if item is _END:
                return
            yield item

    def send(self, message) -> bool:
        """Queue one serialized data message; False (and nothing queued) once the
        downstream call has ended, so a dead next node never blocks us. A
        message that is not bytes (a view of a buffer its producer reuses)
        is copied: the queue keeps it past the call."""
        if type(message) is not bytes:
            message = bytes(message)
        while not self._future.done():
            try:
                self._queue.put(message, timeout=queue_poll_s)
                return True
            except queue.Full:
                continue
        return False

    def finish(self, timeout_s: float) -> list[ReplicaResult]:
        """End the stream and wait for the downstream reply."""
        self._end()
        try:
            reply = self._future.result(timeout=timeout_s)
        except grpc.FutureTimeoutError:
            self._future.cancel()
            return results_after_failure(self.targets, errno.ETIMEDOUT,
                                         f"no reply from {self.targets[0]} within {timeout_s:.0f}s")
        except grpc.RpcError as e:
            return results_after_failure(self.targets, errno_for_grpc_status(e.code()),
                                         f"{e.code().name}: {e.details()}")
        return merge_results(self.targets, reply)

    def cancel(self) -> None:
        self._end()
        self._future.cancel()

    def _end(self) -> None:
        self._closed.set()
        try:
            self._queue.put_nowait(_END)
        except queue.Full:
            pass   # the consumer sees _closed at its next poll


class TransferDownstream:
    """``Downstream``'s interface over a ``transfer.WriteStream`` to
    targets[0]. The constructor sends the first message and raises
    ``transfer.TransferUnavailable`` when the connection broke before the
    node answered (the caller then uses gRPC)."""

    def __init__(self, stream, header: pb.WriteHeader, first_data, targets):
        assert targets
        self.targets = list(targets)
        self._stream = stream
        stream.send(first_message(header, first_data, self.targets, parts=True))
        self.send = stream.send
        self.cancel = stream.cancel

    def finish(self, timeout_s: float) -> list[ReplicaResult]:
        """End the stream and wait for the downstream reply."""
        try:
            raw = self._stream.finish(timeout_s)
        except CisternError as e:
            return results_after_failure(self.targets, e.errno, e.message)
        try:
            reply = pb.WriteReply.FromString(raw)
        except Exception as e:   # protobuf's DecodeError: the node sent garbage
            return results_after_failure(self.targets, errno.EBADMSG, f"malformed write reply: {e}")
        return merge_results(self.targets, reply)


# -- the data messages' wire form --------------------------------------------------
#
# WriteChunk and ReadChunk both carry their data in field 2. The data path
# builds these messages by hand with the data field first and takes them
# apart the same way, so a megabyte of data is copied once per hop instead of
# three times (protobuf's serialize and parse copy it, and reading ``.data``
# copies it again), and a node forwards a data message downstream as the
# bytes it received. The bytes are ordinary protobuf (fields may come in any
# order), so any protobuf client or server still reads them, and messages
# built by protobuf itself (header first) take the general path.

DATA_TAG = b"\x12"   # field 2, wire type 2 (length-delimited)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low = n & 0x7F
        n >>= 7
        if n:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _read_varint(raw, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(raw) or shift > 63:
            raise ValueError("truncated varint")
        byte = raw[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7


def encode_parts(data, rest: bytes = b"") -> tuple:
    """``encode_with_data``'s message as the parts it is made of (the tag
    and length, ``data`` itself, ``rest``), for a vectored send that copies
    no data."""
    return DATA_TAG + _varint(len(data)), data, rest


def encode_with_data(data, rest: bytes = b"") -> bytes:
    """A message of field 2 = data followed by ``rest`` (the other fields,
    already serialized)."""
    return b"".join(encode_parts(data, rest))


def split_data(raw, message_type):
    """(data, message) of a serialized WriteChunk or ReadChunk (bytes or a
    memoryview): data as a memoryview of ``raw`` when it comes first (no
    copy), and message holding the other fields (copied out of raw).
    Raises ValueError (or protobuf's DecodeError) when raw is not a valid
    message."""
    if raw[:1] == DATA_TAG:
        length, pos = _read_varint(raw, 1)
        if pos + length > len(raw):
            raise ValueError("data field runs past the end of the message")
        # The other fields are parsed from bytes of their own: nothing parsed
        # may refer into raw, which may be a buffer its producer reuses.
        rest = message_type.FromString(bytes(raw[pos + length:])) if pos + length < len(raw) else message_type()
        if rest.data:
            raise ValueError("the data field appears twice")
        return memoryview(raw)[pos:pos + length], rest
    message = message_type.FromString(bytes(raw))
    data = message.data
    message.ClearField("data")
    return memoryview(data), message
