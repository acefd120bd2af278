"""``BlockClient``: the block service's client side (write, read, delete,
info, copy, stat), one cached gRPC channel per node address.

Contract:

* Thread-safe: one client may be shared by any number of threads.
* Errors: every method raises ``CisternError`` with an errno: the node's gRPC
  status through ``cistern.core.errors`` (ENOENT unknown block, EINVAL bad
  input, EIO a checksum failure on the node, EAGAIN unreachable, ETIMEDOUT),
  and EBADMSG when the bytes that arrive here fail their checksums. The
  message names the node, so a caller can fail over and report it.
* Reads stream over the node's transfer port (``transfer.py``, found once
  per node through ``Stat``; the same verified sub-chunks, a third of
  gRPC's CPU per byte) and fall back to gRPC ``Read`` when the port is
  unknown or cannot be reached before any data came (``transfer=False``:
  gRPC only). Writes stream over it too (``transfer_writes``), the same
  messages as gRPC ``Write``, falling back to gRPC when the port is unknown
  or the first node's transfer connection is refused or breaks (EAGAIN; a
  block is rewritten whole, which is idempotent). Either way the errors
  are the same.
* Durability: a node listed by ``write_block`` has the block fsynced.
* Idempotency: writing the same block (same id and bytes) again succeeds;
  delete of a missing block is not an error; copy of a present block is a
  no-op.
"""

from __future__ import annotations

import bisect
import errno
import itertools
import logging
import threading
import time

import grpc
import xxhash

from cistern.blockstore import limits
from cistern.blockstore.pipeline import (Downstream, ReplicaResult, TransferDownstream, encode_parts, encode_with_data,
                                         merge_results, results_after_failure, split_data)
from cistern.blockstore.proto import blockstore_pb2 as pb
from cistern.blockstore.proto import blockstore_pb2_grpc as pb_grpc
from cistern.blockstore.store import block_checksum, check_block_id, chunk_checksums
from cistern.blockstore.transfer import TransferClient, TransferUnavailable
from cistern.core import rpc
from cistern.core.errors import CisternError, errno_for_grpc_status

__all__ = ["BlockClient", "BlockPieces", "ReplicaResult"]

log = logging.getLogger(__name__)

_WRITE = "/cistern.blockstore.Block/Write"
_READ = "/cistern.blockstore.Block/Read"


def _error(address: str, e: grpc.RpcError) -> CisternError:
    return CisternError(errno_for_grpc_status(e.code()), f"{address}: {e.code().name}: {e.details()}")


class BlockClient:
    def __init__(self, *, message_bytes: int = limits.message_data_max_bytes, transfer: bool = True,
                 transfer_writes: bool = True):
        """``transfer``: reads (and with ``transfer_writes``, writes, both
        the client's and a node's forwarding) use nodes' transfer ports."""
        assert 0 < message_bytes <= limits.message_data_max_bytes
        self.message_bytes = message_bytes
        self._channels: dict[str, grpc.Channel] = {}
        self._lock = threading.Lock()
        self._transfer = TransferClient() if transfer else None
        self._transfer_writes = transfer and transfer_writes
        self._transfer_ports: dict[str, tuple] = {}     # address -> (port or 0, when learned)
        self.transfer_reads = 0                          # reads served over a transfer port (tests, stats)
        self.transfer_writes = 0                         # write streams opened over a transfer port

    def channel(self, address: str) -> grpc.Channel:
        with self._lock:
            channel = self._channels.get(address)
            if channel is None:
                channel = self._channels[address] = rpc.insecure_channel(address, limits.wire_message_bytes_max)
        return channel

    def stub(self, address: str) -> pb_grpc.BlockStub:
        """The generated stub (protobuf in and out) for the unary calls."""
        return pb_grpc.BlockStub(self.channel(address))

    def write_call(self, address: str):
        """Block/Write taking already serialized WriteChunk bytes (see
        pipeline.encode_with_data), so the data is not copied again."""
        return self.channel(address).stream_unary(_WRITE, request_serializer=None,
                                                  response_deserializer=pb.WriteReply.FromString)

    def _read_call(self, address: str):
        # Replies stay bytes: pipeline.split_data takes the data out without a copy.
        return self.channel(address).unary_stream(_READ, request_serializer=pb.ReadRequest.SerializeToString,
                                                  response_deserializer=None)

    def close(self) -> None:
        with self._lock:
            channels, self._channels = list(self._channels.values()), {}
        for channel in channels:
            channel.close()
        if self._transfer is not None:
            self._transfer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- write -------------------------------------------------------------------

    def write_block_results(self, targets, block_id, data, *, checksum: bytes | None = None,
                            timeout_s: float = limits.write_call_timeout_s) -> list[ReplicaResult]:
        """Write one block down the pipeline ``targets`` (first target first);
        one result per target, in order. ``data`` is bytes-like or an iterable
        of bytes-like pieces (joined here: a block is at most 64 MiB);
        ``checksum``, when the caller has it already, its xxh3-128 (a wrong
        one is refused by the first node: DATA_LOSS).
        Raises EINVAL for bad arguments; a failed first target is a result,
        not an exception."""
        targets = list(targets)
        if not 1 <= len(targets) <= limits.pipeline_depth_max or len(set(targets)) != len(targets):
            raise CisternError(errno.EINVAL, f"need 1..{limits.pipeline_depth_max} distinct targets, got {targets}")
        block_id = check_block_id(block_id)
        if not isinstance(data, (bytes, bytearray, memoryview)):
            data = b"".join(data)
        header = pb.WriteHeader(block_id=block_id, length=len(data),
                                checksum=block_checksum(data) if checksum is None else checksum,
                                chunk_size=limits.chunk_size_bytes, chunk_checksums=chunk_checksums(data),
                                targets=targets[1:])
        view, step = memoryview(data), self.message_bytes
        deadline = time.monotonic() + timeout_s
        stream = self._transfer_stream(targets, header, view[:step], timeout_s)
        if stream is not None:
            for i in range(step, len(view), step):
                if not stream.send(encode_parts(view[i:i + step])):   # vectored: the data is not copied
                    break
            results = stream.finish(timeout_s)
            if results[0].errno != errno.EAGAIN:
                return results
            # The first node's transfer port refused (too many connections)
            # or broke: the block is all here, and writing it again is
            # idempotent, so gRPC gets a go.
            log.info("transfer write to %s failed (%s); writing through gRPC", targets[0], results[0].message)
        try:
            reply = self.write_call(targets[0])(self._messages(header, view),
                                                timeout=max(0.001, deadline - time.monotonic()))
        except grpc.RpcError as e:
            return results_after_failure(targets, errno_for_grpc_status(e.code()), f"{e.code().name}: {e.details()}")
        return merge_results(targets, reply)

    def _messages(self, header: pb.WriteHeader, view: memoryview):
        yield encode_with_data(view[:self.message_bytes], pb.WriteChunk(header=header).SerializeToString())
        yield from self._data_messages(view)

    def _data_messages(self, view: memoryview):
        """The serialized data messages after the first (which carries the header)."""
        step = self.message_bytes
        for i in range(step, len(view), step):
            yield encode_with_data(view[i:i + step])

    def open_write(self, targets, header: pb.WriteHeader, first_data, *, timeout_s: float):
        """A write stream to targets[0] carrying ``header`` (its targets
        replaced by targets[1:]) and ``first_data``, as a
        ``pipeline.Downstream`` (``send``, ``finish``, ``cancel``): over the
        node's transfer port when it has one, else through gRPC."""
        stream = self._transfer_stream(targets, header, first_data, timeout_s)
        if stream is not None:
            return stream
        return Downstream(self.write_call(targets[0]), header, first_data, targets, timeout_s=timeout_s)

    def _transfer_stream(self, targets, header: pb.WriteHeader, first_data, timeout_s: float):
        """A ``TransferDownstream`` with its first message sent, or None
        (write through gRPC): transfer writes off, no port known, or the
        port unusable before the node answered anything."""
        if not self._transfer_writes:
            return None
        target = self._transfer_target(targets[0])
        if target is None:
            return None
        try:
            stream = TransferDownstream(self._transfer.open_write(target, timeout_s), header, first_data, targets)
        except TransferUnavailable as e:
            self._forget_transfer_port(targets[0], target, e)
            return None
        self.transfer_writes += 1
        return stream

    def write_block(self, targets, block_id, data, *, timeout_s: float = limits.write_call_timeout_s) -> list[str]:
        """Write one block down the pipeline; the addresses that stored it
        (fsynced), in pipeline order. Raises the first target's error when no
        target stored it; a partial list means the others failed (see
        ``write_block_results`` for why)."""
        results = self.write_block_results(targets, block_id, data, timeout_s=timeout_s)
        stored = [r.address for r in results if r.ok]
        if not stored:
            first = results[0]
            raise CisternError(first.errno, f"{first.address}: {first.message}")
        return stored

    # -- read ---------------------------------------------------------------------

    def read_chunks(self, address: str, block_id, offset: int = 0, length: int | None = None, *,
                    timeout_s: float = limits.read_call_timeout_s):
        """Iterate over (offset, bytes) pieces of [offset, offset+length) of a
        block, each verified per sub-chunk before it is yielded."""
        for at, piece in self._pieces(address, block_id, offset, length, timeout_s):
            yield at, bytes(piece)

    def _pieces(self, address: str, block_id, offset: int, length: int | None, timeout_s: float,
                node_verifies: bool = True):
        block_id = check_block_id(block_id)
        request = pb.ReadRequest(block_id=block_id, offset=offset)
        if length is not None:
            request.length = length
        end = None if length is None else offset + length
        for data, msg in self._replies(address, block_id, request, timeout_s, node_verifies):
            lo = max(offset, msg.offset)
            hi = msg.offset + len(data) if end is None else min(end, msg.offset + len(data))
            if hi > lo:
                yield lo, data[lo - msg.offset:hi - msg.offset]

    def _replies(self, address: str, block_id: bytes, request: pb.ReadRequest, timeout_s: float,
                 node_verifies: bool = True):
        """(data memoryview, the reply's other fields) per verified reply."""
        for data, msg in self._unverified_replies(address, block_id, request, timeout_s, node_verifies):
            _verify_chunk(address, block_id, msg, data)
            yield data, msg

    def _unverified_replies(self, address: str, block_id: bytes, request: pb.ReadRequest, timeout_s: float,
                            node_verifies: bool = True):
        """The replies as they arrive: over the node's transfer port when it
        has one, else (or when the port fails before any data) through gRPC
        (where the node always verifies what it sends)."""
        target = self._transfer_target(address)
        if target is not None:
            length = request.length if request.HasField("length") else None
            frames = self._transfer.read(target, address, block_id, request.offset, length, timeout_s,
                                         node_verifies=node_verifies)
            try:
                first = next(frames)     # at least one: an empty range still brings the block's length
            except TransferUnavailable as e:
                self._forget_transfer_port(address, target, e)
            else:
                self.transfer_reads += 1
                yield first
                yield from frames
                return
        try:
            for raw in self._read_call(address)(request, timeout=timeout_s):
                try:
                    reply = split_data(raw, pb.ReadChunk)
                except Exception as e:   # DecodeError or ValueError: the node sent garbage
                    raise CisternError(errno.EBADMSG, f"{address}: block {block_id.hex()}: "
                                                      f"malformed read reply: {e}") from None
                yield reply
        except grpc.RpcError as e:
            raise _error(address, e) from None

    def _forget_transfer_port(self, address: str, target: tuple, why: Exception) -> None:
        """The transfer port at ``target`` failed: use gRPC until it is asked again."""
        log.info("transfer port %s:%d of %s unusable (%s); using gRPC", *target, address, why)
        with self._lock:
            self._transfer_ports.pop(address, None)

    def _transfer_target(self, address: str) -> tuple | None:
        """(host, port) of the node's transfer port, or None (gRPC only):
        the host as the caller names the node, the port from its Stat."""
        if self._transfer is None:
            return None
        now = time.monotonic()
        with self._lock:
            known = self._transfer_ports.get(address)
        if known is None or (not known[0] and now - known[1] > limits.transfer_port_recheck_s):
            try:
                port = int(self.stat(address, timeout_s=limits.transfer_connect_timeout_s).get("transfer_port", 0))
            except (CisternError, ValueError, TypeError):
                return None     # the gRPC read reports the node's state
            known = (port, now)
            with self._lock:
                self._transfer_ports[address] = known
        if not known[0]:
            return None
        return address.rpartition(":")[0].strip("[]"), known[0]

    def read_block(self, address: str, block_id, offset: int = 0, length: int | None = None, *,
                   checksum: bytes | None = None, timeout_s: float = limits.read_call_timeout_s,
                   node_verifies: bool = True) -> bytes:
        """The verified bytes [offset, offset+length) of a block (to its end
        when length is None). When ``checksum`` (the layout's xxh3-128) is
        given for a whole-block read, the block must match it too.
        ``node_verifies``: as for ``read_pieces``."""
        if checksum is not None and offset == 0 and length is None:
            return bytes(self.read_pieces(address, block_id, checksum=checksum, timeout_s=timeout_s,
                                          node_verifies=node_verifies)[0])
        return b"".join(piece for _, piece in self._pieces(address, block_id, offset, length, timeout_s,
                                                           node_verifies))

    def read_pieces(self, address: str, block_id, *, checksum: bytes | None = None,
                    timeout_s: float = limits.read_call_timeout_s, node_verifies: bool = True):
        """A whole block as (``BlockPieces``, xxh3-128, sub-chunk checksums),
        verified per sub-chunk against what the node's index says, without
        joining the messages it came in.

        ``node_verifies`` False tells a node's transfer port not to check
        the bytes it sends (they are checked here all the same): for a
        caller that reports a replica failing here to the metadata leader,
        which replaces it (``DataPath``); the node then neither counts nor
        quarantines it. True (the default, and always through gRPC): a
        corrupt block fails on the node too, which quarantines and reports
        it (a node's Copy, which has no leader to tell, relies on that).

        With ``checksum`` (the layout's xxh3-128) the node's index entry must
        be that block, and every byte has been checked against that entry's
        sub-chunk checksums (which the node verified together with the
        whole-block checksum when it stored the block), so the block is not
        hashed a second time: that pass was about a fifth of a reading
        client's CPU (HDFS readers likewise check chunk checksums only).
        Without it (a copy between nodes, which trusts no layout) the whole
        block is hashed too."""
        block_id = check_block_id(block_id)
        views, sums = [], []
        length, actual, received = 0, b"", 0
        hasher = None if checksum is not None else xxhash.xxh3_128()
        for data, msg in self._replies(address, block_id, pb.ReadRequest(block_id=block_id), timeout_s,
                                       node_verifies):
            if msg.block_checksum:
                length, actual = msg.block_length, msg.block_checksum
            if msg.offset != received:   # every byte once, in order
                raise CisternError(errno.EBADMSG, f"{address}: block {block_id.hex()}: "
                                                  f"read reply at {msg.offset}, expected {received}")
            received += len(data)
            if hasher is not None:
                hasher.update(data)
            views.append(data)
            sums.extend(msg.chunk_checksums)
        pieces = BlockPieces(views)
        if received != length or (hasher is not None and hasher.digest() != actual):
            raise CisternError(errno.EBADMSG, f"{address}: block {block_id.hex()} fails its whole-block checksum "
                                              f"({received} of {length} bytes)")
        if checksum is not None and actual != checksum:
            raise CisternError(errno.EBADMSG, f"{address}: block {block_id.hex()} is not the expected block")
        return pieces, actual, sums

    def fetch_block(self, address: str, block_id, *, timeout_s: float = limits.copy_call_timeout_s):
        """A whole block as (data, xxh3-128, sub-chunk checksums), verified
        per sub-chunk and as a whole against what the node's index says."""
        pieces, checksum, sums = self.read_pieces(address, block_id, timeout_s=timeout_s)
        return bytes(pieces), checksum, sums

    # -- the rest -----------------------------------------------------------------

    def delete(self, address: str, block_ids, *, timeout_s: float = limits.unary_call_timeout_s) -> int:
        """Delete blocks (one id or a list); how many were present."""
        ids = [block_ids] if isinstance(block_ids, (bytes, bytearray)) else list(block_ids)
        ids = [check_block_id(b) for b in ids]
        try:
            return self.stub(address).Delete(pb.DeleteRequest(block_ids=ids), timeout=timeout_s).deleted
        except grpc.RpcError as e:
            raise _error(address, e) from None

    def info(self, address: str, block_id, *, timeout_s: float = limits.unary_call_timeout_s) -> dict:
        """length, checksum, chunk_checksums, state, created_s of one block."""
        try:
            r = self.stub(address).Info(pb.InfoRequest(block_id=check_block_id(block_id)), timeout=timeout_s)
        except grpc.RpcError as e:
            raise _error(address, e) from None
        return {"block_id": r.block_id, "length": r.length, "checksum": r.checksum,
                "chunk_checksums": list(r.chunk_checksums), "state": r.state, "created_s": r.created_s}

    def copy(self, address: str, block_id, source: str, *, timeout_s: float = limits.copy_call_timeout_s) -> dict:
        """Tell the node at ``address`` to fetch a block from ``source`` and
        store it (verified): length, checksum, already_present."""
        try:
            r = self.stub(address).Copy(pb.CopyRequest(block_id=check_block_id(block_id), source=source),
                                        timeout=timeout_s)
        except grpc.RpcError as e:
            raise _error(address, e) from None
        return {"length": r.length, "checksum": r.checksum, "already_present": r.already_present}

    def stat(self, address: str, *, timeout_s: float = limits.unary_call_timeout_s) -> dict:
        """The node's id, capacity, free, used bytes, block count, block size."""
        import json

        try:
            r = self.stub(address).Stat(pb.StatRequest(), timeout=timeout_s)
        except grpc.RpcError as e:
            raise _error(address, e) from None
        return json.loads(r.json) if r.json else {"node_id": r.node_id}


class BlockPieces:
    """A block's verified bytes as the pieces (memoryviews of the messages)
    they arrived in: nothing is joined until asked. ``len()``, ``bytes()``
    and slicing (``p[a:b]``, step 1) return bytes, copied once, or not at
    all when the slice is exactly one piece that views a whole bytes
    object (a transfer frame)."""

    __slots__ = ("_views", "_ends", "length")

    def __init__(self, views):
        self._views = [v for v in views if len(v)]
        self._ends = list(itertools.accumulate(len(v) for v in self._views))
        self.length = self._ends[-1] if self._ends else 0

    def __len__(self) -> int:
        return self.length

    def __bytes__(self) -> bytes:
        return self[:]

    def __getitem__(self, key: slice) -> bytes:
        if not isinstance(key, slice):
            raise TypeError("BlockPieces are sliced, not indexed")
        start, stop, step = key.indices(self.length)
        if step != 1:
            raise ValueError("BlockPieces slices take no step")
        out = []
        i = bisect.bisect_right(self._ends, start)
        while start < stop:
            view, end = self._views[i], self._ends[i]
            base = end - len(view)
            out.append(view[start - base:min(stop, end) - base])
            start = min(stop, end)
            i += 1
        if len(out) == 1:
            piece = out[0]
            if type(piece.obj) is bytes and len(piece) == len(piece.obj):
                return piece.obj      # a whole message that is all data (transfer frames): no copy
            return piece.tobytes()
        return b"".join(out)


def _verify_chunk(address: str, block_id: bytes, msg: pb.ReadChunk, data: memoryview) -> None:
    size = limits.chunk_size_bytes
    n = -(-len(data) // size)
    if msg.offset % size or len(msg.chunk_checksums) != n:
        raise CisternError(errno.EBADMSG, f"{address}: block {block_id.hex()}: malformed read reply at {msg.offset}")
    for i in range(n):
        if xxhash.xxh3_64_intdigest(data[i * size:(i + 1) * size]) != msg.chunk_checksums[i]:
            raise CisternError(errno.EBADMSG, f"{address}: block {block_id.hex()} sub-chunk "
                                              f"{msg.offset // size + i} arrived corrupt")
