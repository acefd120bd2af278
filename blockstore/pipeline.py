"""The replication pipeline: one node forwards a write stream to the next.

HDFS-style: the receiving node opens a Write stream to ``targets[0]`` with the
rest of the list in the header, forwards every data message as it arrives
(while writing its own copy), and after its own fsync waits for the
downstream reply. The reply of a node lists one result per node from itself
to the end of the pipeline, so a failed downstream node is reported to the
client, never hidden; the client decides what to do with fewer replicas.

``results_after_failure`` and ``merge_results`` are pure; ``Downstream`` is the
only part that does I/O (a gRPC client stream fed from a bounded queue, so a
slow next node slows this one down instead of buffering without bound).
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
from cistern.core.errors import errno_for_grpc_status

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


class Downstream:
    """The stream to the next node: ``send`` each received message, then
    ``finish`` for the results of targets[0:], or ``cancel`` to abandon it.
    Used by one thread (the Write handler) plus gRPC's own sender thread."""

    def __init__(self, stub, header: pb.WriteHeader, first_data: bytes, targets, *, timeout_s: float):
        assert targets
        self.targets = list(targets)
        self._queue: queue.Queue = queue.Queue(maxsize=limits.pipeline_queue_messages_max)
        self._closed = threading.Event()
        forwarded = pb.WriteHeader()
        forwarded.CopyFrom(header)
        del forwarded.targets[:]
        forwarded.targets.extend(self.targets[1:])
        self._queue.put(pb.WriteChunk(header=forwarded, data=first_data))
        self._future = stub.Write.future(self._messages(), timeout=timeout_s)

    def _messages(self):
        while True:
            try:
                item = self._queue.get(timeout=queue_poll_s)
            except queue.Empty:
                if self._closed.is_set() or self._future.done():
                    return
                continue
            if item is _END:
                return
            yield item

    def send(self, message: pb.WriteChunk) -> bool:
        """Queue one data message; False (and nothing queued) once the
        downstream call has ended, so a dead next node never blocks us."""
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
