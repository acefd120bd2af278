"""NodesClient: the client side of the metadata leader's ``Nodes`` service
(proto: metadata/proto/nodes.proto) for storage nodes (heartbeats, block
reports, bad replicas) and writers (block placement), plus fsck and the node
table for tools.

Contract
    * Thread-safe: one client may be shared by any number of threads; each
      call is one unary RPC (no batching: these calls are few and small).
    * Leader discovery: a call goes to the last known leader (first the
      first address). A ``not_leader`` reply makes it follow the reply's
      ``leader`` hint (or, when empty, the next address) at once, up to
      ``hint_hops_max`` times in a row, then with jittered backoff; an
      unreachable replica (UNAVAILABLE, a per-attempt deadline) moves it to
      the next address the same way. So a caller never sees an election, only
      ``CisternError(ETIMEDOUT)`` when ``timeout_s`` (per call) passes with no
      leader answering.
    * Errors: any other gRPC status is a whole-call failure of the request
      itself and raises ``CisternError`` with ``errno_for_grpc_status`` (bad
      input EINVAL, no live node with room ENOSPC) without retrying.
    * Idempotency: every call is safe to retry. Heartbeats and reports are
      leader memory; ``allocate`` hands out fresh ids each time (a retried
      allocate may leave unused reservations, which the leader forgets).
      A leader change between the parts of a split full report is answered by
      the new leader with ``send_full_report``: the reporter starts over.
    * Durability: nothing here is durable by itself; the leader commits what
      must survive (a node declared dead, replica changes) through Raft.
"""

from __future__ import annotations

import errno
import threading
import time

import grpc

from cistern.core import rpc
from cistern.core.errors import CisternError, Unavailable, errno_for_grpc_status
from cistern.metadata import limits
from cistern.metadata.proto import nodes_pb2 as pb
from cistern.metadata.proto import nodes_pb2_grpc as pb_grpc

__all__ = ["NodesClient", "pb"]

message_bytes_max = limits.batch_bytes_max + 1024 * 1024   # as the metadata server's
attempt_timeout_max_s = 3.0       # one RPC attempt; a silent replica is left after this
hint_hops_max = 3                 # leader hints followed without backoff
# Retried statuses: the replica is unreachable, or did not answer in time.
_RETRIED = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


class NodesClient:
    def __init__(self, addresses: list[str], *, timeout_s: float = 10.0):
        addresses = [a for a in addresses if a]
        if not addresses:
            raise CisternError(errno.EINVAL, "NodesClient needs at least one metadata address")
        assert timeout_s > 0
        self.addresses = list(addresses)
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}
        self._stubs: dict[str, pb_grpc.NodesStub] = {}    # made once per address: a stub builds a callable per method
        self._leader = self.addresses[0]
        self._next_index = 0
        self._closed = False

    # -- public API ------------------------------------------------------------

    def heartbeat(self, node_id: str, rpc_address: str, capacity_bytes: int, used_bytes: int,
                  block_count: int, failed_block_ids=(), reports_pending: int = 0) -> pb.HeartbeatReply:
        """One heartbeat; the reply carries instructions, ``send_full_report``
        and ``heartbeat_interval_s``. ``reports_pending``: report events not
        yet delivered (see nodes.proto)."""
        return self._call("Heartbeat", pb.HeartbeatRequest(
            node_id=node_id, rpc_address=rpc_address, capacity_bytes=int(capacity_bytes),
            used_bytes=int(used_bytes), block_count=int(block_count), failed_block_ids=list(failed_block_ids),
            reports_pending=int(reports_pending)))

    def block_report(self, node_id: str, full: bool, added=(), removed=(), more: bool = False
                     ) -> pb.BlockReportReply:
        """One block report message. ``added``: (block_id, length) pairs or
        ``pb.ReportedBlock``s; ``removed``: block ids. A reply with
        ``send_full_report`` was not taken."""
        blocks = [b if isinstance(b, pb.ReportedBlock) else pb.ReportedBlock(block_id=b[0], length=int(b[1]))
                  for b in added]
        return self._call("BlockReport", pb.BlockReportRequest(
            node_id=node_id, full=bool(full), more=bool(more), added=blocks, removed=list(removed)))

    def allocate(self, count: int = 1, *, replication: int = 3, writer_node: str | None = None,
                 exclude=(), block_size_bytes: int | None = None) -> list[tuple[bytes, list[tuple[str, str]]]]:
        """Fresh block ids and their pipelines: ``[(block_id, [(node_id,
        address), ...]), ...]`` (at most ``count``; fewer when placement ran
        out of room). Raises ENOSPC when no live node has room."""
        reply = self._call("Allocate", pb.AllocateRequest(
            count=int(count), replication=int(replication or 0), writer_node=writer_node or "",
            exclude=list(exclude), block_size_bytes=int(block_size_bytes or 0)))
        return [(b.block_id, [(t.node_id, t.address) for t in b.targets]) for b in reply.blocks]

    def report_bad_replica(self, block_id: bytes, node_id: str, reporter: str, reason: str = ""
                           ) -> pb.BadReplicaReply:
        """Tell the leader that ``node_id``'s copy of ``block_id`` is bad."""
        return self._call("ReportBadReplica", pb.BadReplica(block_id=block_id, node_id=node_id,
                                                            reporter=reporter, reason=reason))

    def fsck(self, path: str = "/", files_max: int | None = None) -> pb.FsckReply:
        """Block health of ``path`` (a file or a directory tree; '/' all)."""
        return self._call("Fsck", pb.FsckRequest(path=path, files_max=int(files_max or 0)))

    def nodes(self) -> pb.NodesReply:
        """The leader's table of live nodes and its healing counters."""
        return self._call("Nodes", pb.NodesRequest())

    @property
    def leader(self) -> str:
        """The address last believed to lead."""
        with self._lock:
            return self._leader

    def close(self) -> None:
        with self._lock:
            self._closed = True
            channels, self._channels = list(self._channels.values()), {}
            self._stubs = {}
        for channel in channels:
            channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- leader discovery ---------------------------------------------------------

    def _call(self, method: str, request, *, timeout_s: float | None = None):
        deadline = rpc.Deadline(self.timeout_s if timeout_s is None else timeout_s)
        backoff = rpc.Backoff(initial_s=0.02, max_s=0.5)
        address, hops, last = self.leader, 0, "no replica answered"
        while True:
            remaining = deadline.remaining()
            if remaining <= 0:
                raise Unavailable(f"no metadata leader answered {method} within "
                                  f"{self.timeout_s if timeout_s is None else timeout_s:.1f}s ({last})")
            try:
                reply = getattr(self._stub(address), method)(request, timeout=min(remaining, attempt_timeout_max_s))
            except grpc.RpcError as e:
                if e.code() not in _RETRIED:
                    # The leader's definite answer: its message is for the
                    # user (the address and status name only when it has none).
                    raise CisternError(errno_for_grpc_status(e.code()),
                                       e.details() or f"{address}: {method}: {e.code().name}") from None
                last = f"{address}: {e.code().name}"
                address, hops = self._next_address(address), hops + 1
            else:
                if not reply.not_leader:
                    self._set_leader(address)
                    return reply
                last = f"{address}: not the leader"
                address = reply.leader or self._next_address(address)
                hops += 1
            if hops > hint_hops_max:
                time.sleep(min(backoff.next_delay_s(), deadline.remaining()))

    def _next_address(self, current: str) -> str:
        with self._lock:
            self._next_index = (self._next_index + 1) % len(self.addresses)
            candidate = self.addresses[self._next_index]
            if candidate == current and len(self.addresses) > 1:
                self._next_index = (self._next_index + 1) % len(self.addresses)
                candidate = self.addresses[self._next_index]
            return candidate

    def _set_leader(self, address: str) -> None:
        with self._lock:
            self._leader = address

    def _stub(self, address: str) -> pb_grpc.NodesStub:
        with self._lock:
            if self._closed:
                raise CisternError(errno.ESHUTDOWN, "NodesClient is closed")
            stub = self._stubs.get(address)
            if stub is None:
                channel = self._channels[address] = rpc.insecure_channel(address, message_bytes_max)
                stub = self._stubs[address] = pb_grpc.NodesStub(channel)
        return stub
