"""The block service's gRPC face over one ``BlockStore``.

Every bad input becomes a gRPC status with a one-line message through
``cistern.core.errors.grpc_status_for``; nothing a client sends can crash the
node or leave a partial block visible (the store only publishes verified,
fsynced blocks).

Writes come through gRPC ``Write`` or the transfer port (transfer.py), one
write loop for both (``write``): only the transport of the raw messages
differs. Threads: each call runs on a gRPC worker thread or a transfer
connection's thread; a pipelined write forwarded through gRPC also uses the
gRPC sender thread of its downstream stream (see pipeline.py). Metrics
counters are plain ints under the GIL, mirrored into Prometheus when a
registry is given.
"""

from __future__ import annotations

import errno
import json
import logging
import time

import grpc

from cistern.blockstore import limits
from cistern.blockstore.client import BlockClient
from cistern.blockstore.pipeline import (Downstream, ReplicaResult, TransferDownstream, check_targets, encode_with_data,
                                         split_data)
from cistern.blockstore.proto import blockstore_pb2 as pb
from cistern.blockstore.proto import blockstore_pb2_grpc as pb_grpc
from cistern.blockstore.store import BlockStore
from cistern.core.errors import CisternError, grpc_status_for

log = logging.getLogger(__name__)

_CORRUPTION_ERRNOS = (errno.EBADMSG, errno.EIO)


class NodeStats:
    """What the service counts; Prometheus metrics mirror it when given a
    registry. The store's own gauges (bytes, blocks, capacity, checksum
    failures) are read at scrape time by ``StoreCollector``."""

    def __init__(self, registry=None):
        self.write_bytes = 0
        self.read_bytes = 0
        self.blocks_written = 0
        self.writes_refused = 0
        self._m = None
        if registry is not None:
            from prometheus_client import Counter, Histogram

            self._m = {
                "write": Counter("blockd_write_bytes", "block bytes received and stored", registry=registry),
                "read": Counter("blockd_read_bytes", "block bytes sent to readers", registry=registry),
                "blocks": Counter("blockd_blocks_written", "blocks stored by Write or Copy", registry=registry),
                "refused": Counter("blockd_writes_refused", "writes refused", ["reason"], registry=registry),
                "latency": Histogram("blockd_pipeline_latency_seconds",
                                     "a Write call from first message to reply (own fsync + downstream ack)",
                                     ["depth"], registry=registry,
                                     buckets=(.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30)),
            }

    def wrote(self, n_bytes: int, depth: int, seconds: float) -> None:
        self.write_bytes += n_bytes
        self.blocks_written += 1
        if self._m:
            self._m["write"].inc(n_bytes)
            self._m["blocks"].inc()
            self._m["latency"].labels(str(depth)).observe(seconds)

    def read(self, n_bytes: int) -> None:
        self.read_bytes += n_bytes
        if self._m:
            self._m["read"].inc(n_bytes)

    def refused(self, err: int) -> None:
        self.writes_refused += 1
        if self._m:
            self._m["refused"].labels(errno.errorcode.get(err, str(err))).inc()

    def as_dict(self) -> dict:
        return {"write_bytes": self.write_bytes, "read_bytes": self.read_bytes,
                "blocks_written": self.blocks_written, "writes_refused": self.writes_refused}


class StoreCollector:
    """Prometheus collector of the store's state, read at scrape time."""

    def __init__(self, store: BlockStore):
        self._store = store

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        cap = self._store.capacity()
        yield GaugeMetricFamily("blockd_stored_bytes", "bytes of final blocks stored", value=cap["used_bytes"])
        yield GaugeMetricFamily("blockd_stored_blocks", "final blocks stored", value=cap["block_count"])
        yield GaugeMetricFamily("blockd_capacity_bytes", "size of the data directory's file system",
                                value=cap["capacity_bytes"])
        yield GaugeMetricFamily("blockd_free_bytes", "free bytes of the data directory's file system",
                                value=cap["free_bytes"])
        yield CounterMetricFamily("blockd_checksum_failures", "sub-chunk or block checksum mismatches seen",
                                  value=self._store.checksum_failures)


class _Refused(CisternError):
    """A Write ended early with (errno, message); raised only inside Write."""


class NullReporter:
    """The seam for the metadata side (blockstore/reporter.py, not built yet):
    registration, heartbeats, full and incremental block reports and
    corruption reports to the metadata leader. Every hook is called from the
    thread that caused it and must not block for long."""

    def start(self, node) -> None:
        """The node serves: register and send a full block report."""

    def stop(self) -> None:
        """The node is stopping."""

    def block_stored(self, block_id: bytes, length: int) -> None:
        """A block became final here (Write or Copy)."""

    def blocks_deleted(self, block_ids: list) -> None:
        """Blocks were deleted here on request."""

    def block_corrupt(self, block_id: bytes, message: str) -> None:
        """A block here failed its checksums and was quarantined."""


class BlockService(pb_grpc.BlockServicer):
    """Serves one store. A read that finds a stored block corrupt quarantines
    it and tells the reporter (as the scrubber does)."""

    def __init__(self, store: BlockStore, node_id: str, *, block_size_bytes: int = limits.block_size_default_bytes,
                 registry=None, reporter=None, clock=time.time, peers: BlockClient | None = None):
        self.store = store
        self.node_id = node_id
        self.block_size_bytes = block_size_bytes
        self.stats = NodeStats(registry)
        self.reporter = reporter or NullReporter()
        self._clock = clock
        self.peers = peers or BlockClient()
        self.transfer_port = 0     # the node's transfer port (transfer.py) once it serves one

    # -- Write ---------------------------------------------------------------------

    def Write(self, request_iterator, context):
        try:
            reply = self.write(request_iterator, context)
        except _Refused as e:
            context.abort(grpc_status_for(e.errno), e.message)
        return reply

    def write(self, messages, context) -> pb.WriteReply:
        """One write stream, whichever transport: ``messages`` iterates over
        the raw WriteChunk messages (header first; StopIteration at the
        stream's end, any other exception when it broke), ``context`` has
        ``time_remaining()``. The reply lists this node then every
        downstream node; raises CisternError when this node did not store
        the block."""
        started = time.monotonic()
        try:
            header, first_data = self._header(messages)
            results = self._write(header, first_data, messages, context)
        except _Refused as e:
            self.stats.refused(e.errno)
            raise
        self.stats.wrote(header.length, len(results), time.monotonic() - started)
        self._report("block_stored", bytes(header.block_id), header.length)
        return pb.WriteReply(replicas=[r.to_pb() for r in results])

    def transfer_write(self, messages, context) -> bytes:
        """``write`` for the transfer port: the serialized reply."""
        return self.write(messages, context).SerializeToString()

    def _header(self, request_iterator):
        try:
            raw = next(request_iterator)
        except StopIteration:
            raise _Refused(errno.EINVAL, "empty write stream: the first message must carry a header") from None
        except CisternError as e:   # the transport refused the stream (an oversized message)
            raise _Refused(e.errno, e.message) from None
        except Exception as e:   # the caller went away before sending anything
            raise _Refused(errno.ECANCELED, f"write stream broken: {e}") from None
        data, first = _parse_write_chunk(raw)
        if not first.HasField("header"):
            raise _Refused(errno.EINVAL, "the first message of a write stream must carry a header")
        header = first.header
        if header.chunk_size != limits.chunk_size_bytes:
            raise _Refused(errno.EINVAL, f"chunk_size {header.chunk_size} is not {limits.chunk_size_bytes}")
        problem = check_targets(list(header.targets))
        if problem:
            raise _Refused(errno.EINVAL, problem)
        return header, data

    def _write(self, header, first_data: bytes, request_iterator, context) -> list[ReplicaResult]:
        try:
            writer = self.store.begin_write(header.block_id, header.length, header.checksum,
                                            header.chunk_checksums, created_s=self._clock())
        except CisternError as e:
            raise _Refused(e.errno, e.message) from None
        downstream = None
        try:
            with writer:
                downstream = self._downstream(header, first_data, context)
                if first_data:
                    writer.write(first_data)
                for raw, data in _data_messages(request_iterator):
                    if downstream is not None:
                        downstream.send(raw)   # as received: no copy, no re-encoding
                    writer.write(data)
                writer.commit()
        except BaseException as e:
            # The next node must not wait for the rest of a stream that will
            # never come: it sees the cancellation and drops its copy too.
            if downstream is not None:
                downstream.cancel()
            if isinstance(e, CisternError):
                raise _Refused(e.errno, e.message) from None
            if isinstance(e, OSError):
                raise _Refused(e.errno or errno.EIO, f"node {self.node_id}: {e}") from None
            raise
        own = ReplicaResult("", self.node_id)
        if downstream is None:
            return [own]
        return [own] + downstream.finish(_remaining(context, limits.downstream_ack_timeout_s))

    def _downstream(self, header, first_data: bytes, context) -> Downstream | TransferDownstream | None:
        targets = list(header.targets)
        if not targets:
            return None
        return self.peers.open_write(targets, header, first_data,
                                     timeout_s=_remaining(context, limits.write_call_timeout_s))

    # -- Read ------------------------------------------------------------------------

    def Read(self, request, context):
        length = request.length if request.HasField("length") else None
        try:
            info, chunks = self.read_range(request.block_id, request.offset, length)
        except CisternError as e:
            context.abort(grpc_status_for(e.errno), e.message)
        first = True
        try:
            for start, data, sums in chunks:
                msg = pb.ReadChunk(offset=start, chunk_checksums=sums)
                if first:
                    msg.block_length, msg.block_checksum, first = info.length, info.checksum, False
                yield encode_with_data(data, msg.SerializeToString())
        except CisternError as e:
            failure = e
        else:
            failure = None
        if failure is not None:
            context.abort(grpc_status_for(failure.errno), failure.message)
        if first:   # an empty range still tells the block's length and checksum
            at = request.offset - request.offset % limits.chunk_size_bytes   # replies start sub-chunk aligned
            yield pb.ReadChunk(offset=at, block_length=info.length,
                               block_checksum=info.checksum).SerializeToString()

    def read_range(self, block_id, offset: int, length: int | None, *, verify: bool = True):
        """What both read streams (gRPC ``Read`` and the transfer port) send:
        (info, iterator of (start, data, sums)) as ``BlockStore.read_chunks``
        (verified unless ``verify`` is False: a transfer reader that checks
        every sub-chunk against the sums sent along and reports a bad
        replica to the leader itself), counted in the stats; a block the
        iterator finds corrupt (EBADMSG, EIO) is quarantined and reported
        before the error is raised. Transient: a piece's data is valid only
        until the next is asked for (both streams send it first)."""
        info, chunks = self.store.read_chunks(block_id, offset, length, transient=True, verify=verify)
        return info, self._counted(info, chunks)

    def _counted(self, info, chunks):
        try:
            for start, data, sums in chunks:
                self.stats.read(len(data))
                yield start, data, sums
        except CisternError as e:
            if e.errno in _CORRUPTION_ERRNOS:
                self._corrupt(info.block_id, e.message)
            raise

    def _report(self, hook: str, *args) -> None:
        # A failing reporter must never fail the call that already succeeded.
        try:
            getattr(self.reporter, hook)(*args)
        except Exception:
            log.exception("node %s: reporter.%s failed", self.node_id, hook)

    def _corrupt(self, block_id: bytes, message: str) -> None:
        log.error("node %s: %s; quarantined", self.node_id, message)
        self.store.quarantine(block_id)
        self._report("block_corrupt", block_id, message)

    # -- the rest ------------------------------------------------------------------------

    def Delete(self, request, context):
        if len(request.block_ids) > limits.delete_ids_max:
            context.abort(grpc_status_for(errno.E2BIG), f"more than {limits.delete_ids_max} ids in one Delete")
        try:
            deleted = self.store.delete_many(request.block_ids)   # all valid, or none deleted
        except CisternError as e:
            context.abort(grpc_status_for(e.errno), e.message)
        if deleted:
            self._report("blocks_deleted", deleted)
        return pb.DeleteReply(deleted=len(deleted))

    def Info(self, request, context):
        try:
            info = self.store.info(request.block_id)
        except CisternError as e:
            context.abort(grpc_status_for(e.errno), e.message)
        return pb.InfoReply(block_id=info.block_id, length=info.length, checksum=info.checksum,
                            chunk_checksums=info.chunk_checksums, state=info.state_name, created_s=info.created_s)

    def Copy(self, request, context):
        try:
            return self._copy(request.block_id, request.source, context)
        except CisternError as e:
            context.abort(grpc_status_for(e.errno), e.message)

    def _copy(self, block_id, source: str, context) -> pb.CopyReply:
        if check_targets([source]):
            raise CisternError(errno.EINVAL, f"copy source {source[:80]!r} is not HOST:PORT")
        present = self.store.info(block_id, missing_ok=True)
        if present is not None:
            return pb.CopyReply(length=present.length, checksum=present.checksum, already_present=True)
        data, checksum, sums = self.peers.fetch_block(source, block_id,
                                                      timeout_s=_remaining(context, limits.copy_call_timeout_s))
        started = time.monotonic()
        info = self.store.put(block_id, data, created_s=self._clock(), checksum=checksum, chunk_sums=sums)
        self.stats.wrote(info.length, 1, time.monotonic() - started)
        self._report("block_stored", info.block_id, info.length)
        return pb.CopyReply(length=info.length, checksum=info.checksum)

    def Stat(self, request, context):
        stats = self.stat()
        return pb.StatReply(node_id=self.node_id, capacity_bytes=stats["capacity_bytes"],
                            free_bytes=stats["free_bytes"], used_bytes=stats["used_bytes"],
                            block_count=stats["block_count"], block_size_bytes=self.block_size_bytes,
                            checksum_failures=stats["checksum_failures"], json=json.dumps(stats, sort_keys=True))

    def stat(self) -> dict:
        stats = dict(self.store.capacity(), node_id=self.node_id, block_size_bytes=self.block_size_bytes,
                     checksum_failures=self.store.checksum_failures)
        if self.transfer_port:
            stats["transfer_port"] = self.transfer_port
        stats.update(self.stats.as_dict())
        return stats


def _data_messages(request_iterator):
    """(raw bytes, data) of each data message after the header; CisternError
    for a bad one or a broken stream (the caller cancelled or went away)."""
    while True:
        try:
            raw = next(request_iterator)
        except StopIteration:
            return
        except CisternError:   # the transport refused the stream (an oversized message)
            raise
        except Exception as e:
            raise CisternError(errno.ECANCELED, f"write stream broken: {e}") from None
        data, msg = _parse_write_chunk(raw)
        if msg.HasField("header"):
            raise CisternError(errno.EINVAL, "a header after the first message of a write stream")
        yield raw, data


def _parse_write_chunk(raw: bytes):
    """(data, the other fields) of one serialized WriteChunk; EINVAL when it
    is not one, EMSGSIZE when its data exceeds the per-message limit."""
    try:
        data, msg = split_data(raw, pb.WriteChunk)
    except Exception as e:   # protobuf's DecodeError or split_data's ValueError
        raise _Refused(errno.EINVAL, f"malformed write message: {e}") from None
    if len(data) > limits.message_data_max_bytes:
        raise _Refused(errno.EMSGSIZE, f"a write message carries {len(data)} bytes; "
                                       f"the limit is {limits.message_data_max_bytes}")
    return data, msg


def _remaining(context, cap_s: float) -> float:
    remaining = context.time_remaining()
    return cap_s if remaining is None else max(0.0, min(cap_s, remaining))


def add_to_server(service: BlockService, server: grpc.Server) -> None:
    """The generated registration, except that Write receives and Read sends
    serialized bytes (pipeline.split_data / encode_with_data do the work)."""
    handlers = {
        "Write": grpc.stream_unary_rpc_method_handler(
            service.Write, request_deserializer=None, response_serializer=pb.WriteReply.SerializeToString),
        "Read": grpc.unary_stream_rpc_method_handler(
            service.Read, request_deserializer=pb.ReadRequest.FromString, response_serializer=None),
    }
    for name, request, reply in (("Delete", pb.DeleteRequest, pb.DeleteReply), ("Info", pb.InfoRequest, pb.InfoReply),
                                 ("Copy", pb.CopyRequest, pb.CopyReply), ("Stat", pb.StatRequest, pb.StatReply)):
        handlers[name] = grpc.unary_unary_rpc_method_handler(
            getattr(service, name), request_deserializer=request.FromString,
            response_serializer=reply.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("cistern.blockstore.Block", handlers),))
    server.add_registered_method_handlers("cistern.blockstore.Block", handlers)
