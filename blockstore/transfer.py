"""Block reads and writes over plain TCP (HDFS's data-transfer port beside
its RPC port): the same verified sub-chunks as the gRPC ``Block/Read`` and
the same write stream as ``Block/Write``, without gRPC Python's per-byte
cost.

Why: through gRPC a remote read cost about 2.5 ms of CPU per MiB across
client and node (copies into and out of gRPC's buffers, HTTP/2 framing,
thread hand-offs per message); here it is the two kernel copies, the
checksums and one copy into the caller's bytes, about a third of that.
gRPC stays the control plane and the fallback: a node says where its
transfer port is in ``Stat`` (``transfer_port``), and a client that cannot
reach it reads through gRPC.

Wire format (all integers big-endian), one request at a time per connection,
the connection reused for the next request after a clean end:

* request: ``REQUEST`` = magic ``b"CBR1"``, flags (bit 0: length given;
  bit 1: the reader verifies, so the node sends the bytes unchecked; a
  node that does not know the bit checks them anyway), 16-byte block id,
  offset, length.
* reply head: ``HEAD`` = magic ``b"CBF1"``, errno (0 or the node's error),
  the block's length and xxh3-128; a non-zero errno is followed by a
  message (``u32`` length + UTF-8) and the node closes the connection.
* then frames: ``FRAME`` = errno, offset (sub-chunk aligned), sub-chunk
  checksum count n, data length; then n xxh3-64 (``u64``) and the data.
  A frame with errno != 0 carries the error message as its data and ends
  the stream (the node closes); a frame with errno 0 and no data ends it
  cleanly.

A write (``WRITE`` = magic ``b"CBW1"``, the caller's timeout in ms, 0 for
none) is followed by the very messages of a gRPC Write stream (serialized
``WriteChunk``, header first), each prefixed with its ``u32`` length; a
length 0 ends the stream (gRPC's half-close), an EOF before it cancels the
write. The reply is a ``HEAD`` whose length field is the length of the
serialized ``WriteReply`` that follows, or an error head as for reads. A
node that refuses a write before the stream's end sends the error head at
once and discards the rest of the stream until the writer, which checks
for an early reply before each message, closes the connection.

Errors keep the gRPC path's meaning: the client turns the node's errno into
the errno the gRPC status would have given (``errors.grpc_status_for`` then
``errno_for_grpc_status``), so callers see the same EIO, ENOENT, EINVAL.
Malformed input never crashes the node: the connection is closed.

``TransferServer`` (node side), ``TransferClient`` (client side, a pool
of idle connections per node) and its ``WriteStream`` are the only I/O here; the struct layouts and
``errno_seen_by_client`` are pure.
"""

from __future__ import annotations

import errno
import logging
import mmap
import select
import socket
import struct
import threading
import time
from typing import NamedTuple

from cistern.blockstore import limits
from cistern.core.errors import CisternError, errno_for_grpc_status, grpc_status_for

log = logging.getLogger(__name__)

__all__ = ["TransferServer", "TransferClient", "TransferUnavailable", "Frame", "WriteStream"]

REQUEST_MAGIC = b"CBR1"
WRITE_MAGIC = b"CBW1"
REPLY_MAGIC = b"CBF1"
MAGIC_LEN = 4
REQUEST = struct.Struct(">4sB16sQQ")
WRITE = struct.Struct(">4sI")
HEAD = struct.Struct(">4siQ16s")
FRAME = struct.Struct(">iQII")
MESSAGE_LEN = struct.Struct(">I")
_FLAG_LENGTH = 1
_FLAG_READER_VERIFIES = 2
message_max_bytes = 4096          # an error message is cut to this


class Frame(NamedTuple):
    """One data frame as the client sees it (the fields ``BlockClient``
    reads from a gRPC ReadChunk; the block's length and checksum, from the
    reply head, ride on every frame)."""

    offset: int
    chunk_checksums: tuple
    block_length: int = 0
    block_checksum: bytes = b""


class TransferUnavailable(Exception):
    """The transfer port could not be used before any data arrived (refused,
    reset, not a transfer server): the caller reads through gRPC instead."""


def errno_seen_by_client(node_errno: int) -> int:
    """The errno a gRPC reader would see for a node-side error. Pure."""
    return errno_for_grpc_status(grpc_status_for(node_errno))


def _utf8(text: str) -> bytes:
    """An error message as sent: UTF-8, cut to ``message_max_bytes``."""
    return text.encode("utf-8", errors="replace")[:message_max_bytes]


def _error_head(node_errno: int, text: str) -> bytes:
    """A reply head carrying an error, with its length-prefixed message."""
    raw = _utf8(text)
    return HEAD.pack(REPLY_MAGIC, node_errno, 0, bytes(16)) + MESSAGE_LEN.pack(len(raw)) + raw


def _client_error(name: str, node_errno: int, text: str) -> CisternError:
    """What a gRPC reader gets for a failure the node (or this side) saw as
    ``node_errno``: the errno through the one status table and the
    ``address: STATUS: details`` message of ``BlockClient``'s gRPC errors
    (without ``address: `` when ``name`` is empty, as a write's results say it)."""
    text = f"{grpc_status_for(node_errno).name}: {text}"
    return CisternError(errno_seen_by_client(node_errno), f"{name}: {text}" if name else text)


class CallDeadline:
    """The ``time_remaining()`` of a gRPC servicer context, for a call that
    came over the transfer port (None: no deadline)."""

    def __init__(self, timeout_s: float | None):
        self._deadline = None if timeout_s is None else time.monotonic() + timeout_s

    def time_remaining(self) -> float | None:
        return None if self._deadline is None else max(0.0, self._deadline - time.monotonic())


# -- node side -------------------------------------------------------------------------------

class TransferServer:
    """Serves ``read_range(block_id, offset, length, verify=)``
    (``BlockService``'s: (info, iterator of (start, data, sums), verified
    unless the request says the reader verifies), raising CisternError)
    and, when given, ``write(messages, context)`` (``BlockService``'s: the
    serialized WriteReply for an iterator of raw WriteChunk messages,
    raising CisternError; ``context`` has ``time_remaining()``)
    on a TCP port of ``host``: one thread per connection, at most
    ``limits.transfer_connections_max`` (more are told EAGAIN and closed),
    each closed after ``limits.transfer_idle_timeout_s`` without a request
    or when a send stalls that long (a write stream: silent
    ``limits.write_idle_timeout_s``). Memory: one message per connection,
    of at most ``limits.message_data_max_bytes`` (a read's) or
    ``limits.wire_message_bytes_max`` (a write's)."""

    def __init__(self, read_range, host: str, port: int = 0, write=None):
        self._read_range = read_range
        self._write = write
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host.strip("[]"), port), family=family, backlog=64)
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._conns: set = set()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept_loop, name="blockd-transfer", daemon=True)

    def start(self) -> "TransferServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        """Close the port and every connection. Idempotent."""
        with self._lock:
            self._stopped = True
            conns, self._conns = list(self._conns), set()
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in conns:
            _shutdown(conn)
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5.0)

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._stopped:
                    return
                time.sleep(0.05)   # EMFILE and the like: try again shortly
                continue
            with self._lock:
                if self._stopped:
                    conn.close()
                    return
                full = len(self._conns) >= limits.transfer_connections_max
                if not full:
                    self._conns.add(conn)
            if full:
                self._refuse(conn)
                continue
            threading.Thread(target=self._serve, args=(conn,), name="blockd-transfer-conn", daemon=True).start()

    @staticmethod
    def _refuse(conn: socket.socket) -> None:
        try:
            conn.settimeout(1.0)
            conn.sendall(_error_head(errno.EAGAIN, "too many transfer connections"))
        except OSError:
            pass
        conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            # Blocking with the kernel's timeouts: a frame goes out in one
            # sendmsg, and a silent or stalled reader still ends in EAGAIN.
            conn.settimeout(None)
            _set_deadline(conn, time.monotonic() + limits.transfer_idle_timeout_s)
            scratch = _Scratch()     # this connection's write messages land here, one at a time
            while magic := _recv_bytes(conn, MAGIC_LEN, eof_ok=True):
                if magic == REQUEST_MAGIC:
                    _, flags, block_id, offset, length = REQUEST.unpack(magic + _recv_bytes(conn, REQUEST.size - MAGIC_LEN))
                    if not self._answer(conn, block_id, offset, length if flags & _FLAG_LENGTH else None,
                                        verify=not flags & _FLAG_READER_VERIFIES):
                        return
                elif magic == WRITE_MAGIC and self._write is not None:
                    _, timeout_ms = WRITE.unpack(magic + _recv_bytes(conn, WRITE.size - MAGIC_LEN))
                    if not self._answer_write(conn, timeout_ms / 1000 if timeout_ms else None, scratch):
                        return
                    _set_deadline(conn, time.monotonic() + limits.transfer_idle_timeout_s)
                else:
                    log.info("transfer: not a transfer request from %s; closing", _peer(conn))
                    return
        except OSError as e:   # the reader went away, or stalled past the timeout
            log.debug("transfer connection from %s ended: %s", _peer(conn), e)
        except Exception:       # never a dead node over one connection
            log.exception("transfer connection from %s failed", _peer(conn))
        finally:
            with self._lock:
                self._conns.discard(conn)
            conn.close()

    def _answer(self, conn: socket.socket, block_id: bytes, offset: int, length: int | None, *,
                verify: bool) -> bool:
        """Send one reply; False when the connection must close."""
        try:
            info, chunks = self._read_range(block_id, offset, length, verify=verify)
        except CisternError as e:
            conn.sendall(_error_head(e.errno, e.message))
            return False
        conn.sendall(HEAD.pack(REPLY_MAGIC, 0, info.length, info.checksum))
        try:
            for start, data, sums in chunks:
                head = FRAME.pack(0, start, len(sums), len(data)) + struct.pack(f">{len(sums)}Q", *sums)
                _send_vectored(conn, (head, data))
        except CisternError as e:
            raw = _utf8(e.message)
            conn.sendall(FRAME.pack(e.errno, 0, 0, len(raw)) + raw)
            return False
        conn.sendall(FRAME.pack(0, 0, 0, 0))
        return True

    def _answer_write(self, conn: socket.socket, timeout_s: float | None, scratch: "_Scratch") -> bool:
        """Take one write stream and send its reply; False when the
        connection must close (after an error)."""
        # A stream silent this long is abandoned (the kernel's per-recv timeout).
        _set_deadline(conn, time.monotonic() + limits.write_idle_timeout_s)
        stream = _IncomingWrite(conn, scratch)
        try:
            reply = self._write(iter(stream), CallDeadline(timeout_s))
        except CisternError as e:
            conn.sendall(_error_head(e.errno, e.message))
            if not stream.ended:
                _discard_rest(conn)
            return False
        conn.sendall(HEAD.pack(REPLY_MAGIC, 0, len(reply), bytes(16)) + reply)
        return True


class _Scratch:
    """One connection's receive buffer for write messages, grown to the
    largest message seen (at most ``limits.wire_message_bytes_max``) and
    kept while the connection lives. Receiving into it instead of a new
    bytes object per message spares a megabyte's allocation and the page
    faults of fresh memory (a fault per 4 KiB received was about 7% of a
    node's CPU while it was written to). Cost: a connection that has
    carried writes holds about one message (1 MiB) until it closes, at
    most ``transfer_connections_max`` of them. A message lands so that the
    data of a data-first message of 16 KiB to 2 MiB (its tag and a 3-byte
    length before it) starts on a page: the store writes such data with
    O_DIRECT straight from here, without copying it into a staging buffer
    (``store.FileAppender``)."""

    __slots__ = ("buffer",)
    offset = limits.direct_io_align_bytes - 4

    def __init__(self):
        self.buffer = None

    def view(self, n: int) -> memoryview:
        if self.buffer is None or len(self.buffer) < self.offset + n:
            self.buffer = mmap.mmap(-1, self.offset + n)      # page-aligned
        return memoryview(self.buffer)[self.offset:self.offset + n]


class _IncomingWrite:
    """The raw messages of one write stream on a connection, for
    ``BlockService``'s write loop: StopIteration at the end marker;
    ConnectionResetError when the writer closed the connection before it,
    TimeoutError when it was silent past the socket's timeout, CisternError
    EMSGSIZE for a message over ``limits.wire_message_bytes_max``.
    ``ended``: nothing more of this stream will come.

    Each message is a memoryview of the connection's ``_Scratch`` buffer,
    valid until the next one is asked for: the write loop hashes, stores
    and forwards a message (a transfer downstream sends it at once; the
    gRPC ``Downstream`` copies what it queues) before it asks."""

    def __init__(self, conn: socket.socket, scratch: _Scratch):
        self._conn = conn
        self._scratch = scratch
        self.ended = False

    def __iter__(self):
        try:
            while True:
                (n,) = MESSAGE_LEN.unpack(_recv_bytes(self._conn, MESSAGE_LEN.size))
                if n == 0:
                    self.ended = True
                    return
                if n > limits.wire_message_bytes_max:
                    raise CisternError(errno.EMSGSIZE, f"a write message of {n} bytes; the limit is "
                                                       f"{limits.wire_message_bytes_max}")
                view = self._scratch.view(n)
                _recv_into(self._conn, view)
                yield view
        except ConnectionResetError:
            self.ended = True
            raise ConnectionResetError(errno.ECONNRESET, "the writer closed the connection mid-stream") from None
        except (socket.timeout, BlockingIOError):
            raise TimeoutError(errno.ETIMEDOUT, f"no write message for {limits.write_idle_timeout_s:.0f}s") from None


def _discard_rest(conn: socket.socket) -> None:
    """After an early error reply: stop sending, then read and drop what the
    writer still sends until it closes (a close with unread data would reset
    the connection, and the writer could lose the reply), at most
    ``limits.transfer_drain_s``."""
    try:
        conn.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + limits.transfer_drain_s
        _set_deadline(conn, deadline, send=False)
        scratch = bytearray(limits.message_data_max_bytes)
        while conn.recv_into(scratch) and time.monotonic() < deadline:
            pass
    except OSError:
        pass


def _send_vectored(conn: socket.socket, parts) -> None:
    """All of ``parts`` (bytes-likes), in order, by sendmsg: the kernel
    gathers them, so nothing is joined into one buffer first."""
    views = [memoryview(p).cast("B") for p in parts if len(p)]
    while views:
        sent = conn.sendmsg(views)
        while views and sent >= views[0].nbytes:
            sent -= views[0].nbytes
            del views[0]
        if sent:
            views[0] = views[0][sent:]


def _shutdown(conn: socket.socket) -> None:
    try:
        conn.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _peer(conn: socket.socket) -> str:
    try:
        host, port = conn.getpeername()[:2]
        return f"{host}:{port}"
    except OSError:
        return "?"


# -- client side ------------------------------------------------------------------------------

class TransferClient:
    """Idle connections per transfer address (at most
    ``limits.transfer_idle_connections_max`` each, dropped after
    ``limits.transfer_client_idle_s``). Thread-safe."""

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: dict[tuple, list] = {}
        self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn, _ in conns:
                conn.close()

    def _take(self, target: tuple) -> tuple[socket.socket, bool]:
        now = time.monotonic()
        with self._lock:
            conns = self._idle.get(target, [])
            while conns:
                conn, since = conns.pop()
                if now - since < limits.transfer_client_idle_s:
                    return conn, True
                conn.close()
        conn = socket.create_connection(target, timeout=limits.transfer_connect_timeout_s)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Blocking, with the kernel's timeouts (_set_deadline) instead of
        # Python's: recv(MSG_WAITALL) then fills a whole frame in one call.
        conn.settimeout(None)
        return conn, False

    def _give(self, target: tuple, conn: socket.socket) -> None:
        with self._lock:
            conns = self._idle.setdefault(target, [])
            if not self._closed and len(conns) < limits.transfer_idle_connections_max:
                conns.append((conn, time.monotonic()))
                return
        conn.close()

    def read(self, target: tuple, name: str, block_id: bytes, offset: int, length: int | None,
             timeout_s: float, *, node_verifies: bool = True):
        """Iterate over (data, Frame) of one read, as the node sent them
        (verification is the caller's; with ``node_verifies`` False the
        node skips its own check of what it sends). Raises TransferUnavailable when
        nothing arrived from a transfer server (connect or first reply
        failed), CisternError otherwise (the node's errors as the gRPC path
        would report them, ETIMEDOUT, EAGAIN for a broken connection,
        EBADMSG for a malformed stream); ``name`` (the node's address)
        starts every message."""
        flags = (_FLAG_LENGTH if length is not None else 0) | (0 if node_verifies else _FLAG_READER_VERIFIES)
        request = REQUEST.pack(REQUEST_MAGIC, flags, block_id, offset, length or 0)
        deadline = time.monotonic() + timeout_s
        conn, head = self._start(target, name, request, deadline)
        clean = False
        try:
            _, err, block_length, block_checksum = HEAD.unpack(head)
            if err:
                raise _client_error(name, err, _recv_message(conn, name, None))
            first = True
            armed = deadline - timeout_s    # no later than _start set the kernel's timeouts
            while True:
                now = time.monotonic()
                if deadline <= now:
                    raise socket.timeout("deadline")
                if now - armed >= limits.transfer_deadline_slack_s:
                    # The whole call's deadline, not one recv's: re-armed now
                    # and then, not per frame (setsockopt holds the GIL).
                    _set_deadline(conn, deadline, send=False)
                    armed = now
                err, at, n_sums, n_data = FRAME.unpack(_recv_bytes(conn, FRAME.size))
                if err:
                    raise _client_error(name, err, _recv_message(conn, name, n_data))
                if n_data == 0 and n_sums == 0:
                    clean = True
                    if first:   # an empty range still tells the block's length and checksum
                        yield memoryview(b""), Frame(offset - offset % limits.chunk_size_bytes, (),
                                                     block_length, block_checksum)
                    return
                if n_data > limits.message_data_max_bytes or n_sums > limits.chunk_checksums_max:
                    raise CisternError(errno.EBADMSG, f"{name}: malformed transfer frame ({n_data} bytes, "
                                                      f"{n_sums} checksums)")
                sums_t = struct.unpack(f">{n_sums}Q", _recv_bytes(conn, 8 * n_sums))
                data = _recv_bytes(conn, n_data)
                first = False
                yield memoryview(data), Frame(at, sums_t, block_length, block_checksum)
        except (socket.timeout, BlockingIOError):   # SO_RCVTIMEO ran out: EAGAIN
            raise _client_error(name, errno.ETIMEDOUT, "transfer read timed out") from None
        except OSError as e:
            raise _client_error(name, errno.EAGAIN, f"transfer connection broke: {e}") from None
        finally:
            if clean:
                self._give(target, conn)
            else:
                conn.close()

    def _start(self, target: tuple, name: str, request: bytes, deadline: float) -> tuple[socket.socket, bytes]:
        """A connection with the request sent and the reply head read; a
        reused connection the node has closed meanwhile is replaced once."""
        for attempt in range(2):
            try:
                conn, reused = self._take(target)
            except OSError as e:
                raise TransferUnavailable(f"connect: {e}") from None
            try:
                _set_deadline(conn, deadline)
                conn.sendall(request)
                head = _recv_bytes(conn, HEAD.size)
            except (socket.timeout, BlockingIOError):
                conn.close()
                raise _client_error(name, errno.ETIMEDOUT, "no transfer reply") from None
            except OSError as e:
                conn.close()
                if reused and attempt == 0:
                    continue
                raise TransferUnavailable(f"request: {e}") from None
            if head[:4] != REPLY_MAGIC:
                conn.close()
                raise TransferUnavailable("not a transfer server")
            return conn, head
        raise AssertionError("unreachable")

    def open_write(self, target: tuple, timeout_s: float) -> "WriteStream":
        """A write stream to the transfer port at ``target``, its request
        sent; TransferUnavailable when it cannot be connected. ``timeout_s``
        bounds the whole write (the node learns it too)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                conn, reused = self._take(target)
            except OSError as e:
                raise TransferUnavailable(f"connect: {e}") from None
            if reused and _readable(conn):   # the node closed it meanwhile
                conn.close()
                continue
            try:
                _set_deadline(conn, deadline)
                conn.sendall(WRITE.pack(WRITE_MAGIC, min(max(1, int(timeout_s * 1000)), 0xFFFFFFFF)))
            except OSError as e:
                conn.close()
                if reused:
                    continue
                raise TransferUnavailable(f"request: {e}") from None
            return WriteStream(self, target, conn, deadline)


class WriteStream:
    """One write over a transfer connection, used by one thread: ``send``
    each serialized WriteChunk (header first), then ``finish`` for the
    serialized WriteReply, or ``cancel`` (the node drops the block). The
    first ``send`` raises TransferUnavailable when the connection broke
    before the node answered anything (nothing stored: write through gRPC)."""

    def __init__(self, client: TransferClient, target: tuple, conn: socket.socket, deadline: float):
        self._client = client
        self._target = target
        self._conn = conn
        self._deadline = deadline
        self._poll = _poller(conn)
        self._sent = 0
        self._stopped = False       # no more sends: the node replied early, or the connection broke
        self._broken: str = ""

    def send(self, message) -> bool:
        """Send one message (bytes-like, or a tuple of bytes-likes that
        together make it, sent without joining them); False (nothing sent)
        once the node has replied early (an error) or the connection broke,
        so ``finish`` tells why."""
        if self._stopped or self._conn is None:
            return False
        if self._poll.poll(0):
            self._stopped = True
            return False
        parts = message if type(message) is tuple else (message,)
        try:
            _send_vectored(self._conn, (MESSAGE_LEN.pack(sum(memoryview(p).nbytes for p in parts)),) + parts)
        except (socket.timeout, BlockingIOError):
            self._stopped, self._broken = True, "timed out sending"
            return False
        except OSError as e:
            if self._sent == 0 and not self._poll.poll(0):
                self.cancel()
                raise TransferUnavailable(f"send: {e}") from None
            self._stopped, self._broken = True, f"connection broke: {e}"
            return False
        self._sent += 1
        return True

    def finish(self, timeout_s: float) -> bytes:
        """End the stream and wait at most ``timeout_s`` (and the call's
        deadline) for the reply: the serialized WriteReply. Raises
        CisternError as the gRPC call would have failed (the errno through
        the status table, the message ``STATUS: details``)."""
        conn, clean = self._conn, False
        if conn is None:
            raise _client_error("", errno.ECANCELED, "the transfer write was cancelled")
        try:
            if not self._stopped:
                conn.sendall(MESSAGE_LEN.pack(0))
            _set_deadline(conn, min(self._deadline, time.monotonic() + timeout_s), send=False)
            head = _recv_bytes(conn, HEAD.size)
            magic, err, length, _ = HEAD.unpack(head)
            if magic != REPLY_MAGIC:
                raise CisternError(errno.EBADMSG, "malformed transfer write reply")
            if err:
                raise _client_error("", err, _recv_message(conn, "", None))
            if length > limits.transfer_write_reply_max_bytes:
                raise CisternError(errno.EBADMSG, f"a transfer write reply of {length} bytes")
            reply = _recv_bytes(conn, length)
            clean = True
            return reply
        except (socket.timeout, BlockingIOError):
            raise _client_error("", errno.ETIMEDOUT, f"no transfer write reply within {timeout_s:.0f}s") from None
        except OSError as e:
            raise _client_error("", errno.EAGAIN, f"transfer {self._broken or f'connection broke: {e}'}") from None
        finally:
            self._conn = None
            if clean:
                self._client._give(self._target, conn)
            else:
                conn.close()

    def cancel(self) -> None:
        """Abandon the write: the connection closes mid-stream. Idempotent."""
        conn, self._conn = self._conn, None
        if conn is not None:
            _shutdown(conn)
            conn.close()


def _poller(conn: socket.socket):
    """A poll object watching ``conn`` for something to read (or an EOF)."""
    poller = select.poll()
    poller.register(conn, select.POLLIN)
    return poller


def _readable(conn: socket.socket) -> bool:
    """Whether something (data or an EOF) is waiting to be read."""
    return bool(_poller(conn).poll(0))


def _recv_message(conn: socket.socket, name: str, n: int | None) -> str:
    """An error's message: n bytes, or (None) a ``u32`` length then that
    many; "(message lost)" when the connection broke first, EBADMSG when
    the length is over ``message_max_bytes``."""
    try:
        if n is None:
            (n,) = MESSAGE_LEN.unpack(_recv_bytes(conn, MESSAGE_LEN.size))
        if n > message_max_bytes:
            raise CisternError(errno.EBADMSG, f"{name}: malformed transfer error message")
        return _recv_bytes(conn, n).decode("utf-8", errors="replace")
    except OSError:
        return "(message lost)"


def _set_deadline(conn: socket.socket, deadline: float, *, send: bool = True) -> None:
    """The kernel's receive (and unless not ``send``, send) timeout,
    SO_RCVTIMEO and SO_SNDTIMEO, to what is left until ``deadline``: a
    blocking call then fails with EAGAIN."""
    remaining = max(0.001, deadline - time.monotonic())
    tv = struct.pack("ll", int(remaining), int(remaining % 1 * 1e6))
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
    if send:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)


def _recv_into(conn: socket.socket, view: memoryview) -> None:
    """Fill ``view`` from the connection (recv with MSG_WAITALL, more
    only when the timeout or a signal cut it short). ConnectionResetError
    on an EOF, BlockingIOError on a timeout."""
    n, got = len(view), 0
    while got < n:
        k = conn.recv_into(view[got:], n - got, socket.MSG_WAITALL)
        if not k:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed mid-message")
        got += k


def _recv_bytes(conn: socket.socket, n: int, *, eof_ok: bool = False) -> bytes:
    """Exactly n bytes as one bytes object: one recv(MSG_WAITALL) straight
    into it (no zero-fill, no copy), more only when the timeout or a signal
    cut it short. ConnectionResetError on an EOF (unless ``eof_ok`` and it
    comes before the first byte: then b""), BlockingIOError on a timeout."""
    data = conn.recv(n, socket.MSG_WAITALL)
    if len(data) == n or (eof_ok and not data):
        return data
    parts = [data]
    got = len(data)
    while got < n:
        if not data:
            raise ConnectionResetError(errno.ECONNRESET, "connection closed mid-reply")
        data = conn.recv(n - got, socket.MSG_WAITALL)
        parts.append(data)
        got += len(data)
    return b"".join(parts)
