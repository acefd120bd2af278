"""The pipeline's pure parts: which replicas a reply says stored a block."""

import errno
import os

import pytest

from cistern.blockstore.pipeline import ReplicaResult, check_targets, merge_results, results_after_failure
from cistern.blockstore.proto import blockstore_pb2 as pb


def test_a_failed_first_target_means_the_rest_were_never_reached():
    assert results_after_failure(["a:1", "b:2", "c:3"], errno.EAGAIN, "down") == [
        ReplicaResult("a:1", errno=errno.EAGAIN, message="down"),
        ReplicaResult("b:2", errno=errno.ECANCELED, message="not reached: a:1 failed upstream"),
        ReplicaResult("c:3", errno=errno.ECANCELED, message="not reached: a:1 failed upstream"),
    ]


def test_reply_entries_are_named_by_our_targets_and_missing_ones_count_as_failed():
    reply = pb.WriteReply(replicas=[pb.ReplicaResult(node_id="n2"),
                                    pb.ReplicaResult(address="x", errno=errno.EAGAIN, message="down")])
    got = merge_results(["b:2", "c:3", "d:4"], reply)
    assert got[0] == ReplicaResult("b:2", "n2") and got[0].ok
    assert got[1] == ReplicaResult("c:3", "", errno.EAGAIN, "down")
    assert got[2].address == "d:4" and got[2].errno == errno.EIO


def test_target_lists_are_checked():
    assert check_targets([]) == ""
    assert check_targets(["127.0.0.1:5", "[::1]:6"]) == ""
    assert "HOST:PORT" in check_targets(["nohost"])
    assert "HOST:PORT" in check_targets(["h:port"])
    assert "twice" in check_targets(["h:1", "h:1"])
    assert "pipeline_depth_max" in check_targets([f"h:{i}" for i in range(1, 20)])


def test_hand_built_data_messages_are_ordinary_protobuf():
    from cistern.blockstore.pipeline import encode_with_data, split_data

    header = pb.WriteHeader(block_id=b"i" * 16, length=300, targets=["a:1"])
    for data in (b"", b"x", b"y" * 300, bytes(range(256)) * 1000):
        raw = encode_with_data(data, pb.WriteChunk(header=header).SerializeToString())
        parsed = pb.WriteChunk.FromString(raw)        # any protobuf reader agrees
        assert parsed.data == data and parsed.header == header
        got, rest = split_data(raw, pb.WriteChunk)
        assert bytes(got) == data and rest.header == header and not rest.data
        # protobuf's own field order (header first) takes the general path
        got, rest = split_data(pb.WriteChunk(header=header, data=data).SerializeToString(), pb.WriteChunk)
        assert bytes(got) == data and rest.header == header


def test_malformed_data_messages_raise():
    from cistern.blockstore.pipeline import encode_with_data, split_data

    import pytest

    for raw in (b"\x12", b"\x12\x05abc", b"\x12\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01",
                encode_with_data(b"a", encode_with_data(b"b"))):
        with pytest.raises(Exception):
            split_data(raw, pb.WriteChunk)


def test_block_pieces_slice_like_the_joined_bytes():
    import random

    from cistern.blockstore.client import BlockPieces

    rng = random.Random(7)
    parts = [os.urandom(n) for n in (5, 0, 17, 1, 64, 3)]
    joined = b"".join(parts)
    pieces = BlockPieces([memoryview(b"xx" + p + b"yy")[2:2 + len(p)] for p in parts])
    assert len(pieces) == len(joined) and bytes(pieces) == joined
    for _ in range(500):
        a, b = rng.randrange(-5, len(joined) + 5), rng.randrange(-5, len(joined) + 5)
        got = pieces[a:b]
        assert type(got) is bytes and got == joined[a:b], (a, b)
    assert pieces[:] == joined and pieces[10:] == joined[10:] and BlockPieces([])[:] == b""
    with pytest.raises(TypeError):
        pieces[3]
    with pytest.raises(ValueError):
        pieces[::2]


def test_a_message_sent_in_parts_arrives_as_the_joined_message():
    """Vectored sends (the client's transfer writes): the parts go out in
    order, whole, however the socket splits them."""
    import socket
    import threading

    from cistern.blockstore.pipeline import encode_parts, encode_with_data
    from cistern.blockstore.transfer import _send_vectored

    data = memoryview(os.urandom(3 << 20))[5:]
    header = pb.WriteChunk(header=pb.WriteHeader(block_id=b"i" * 16)).SerializeToString()
    parts = (b"LEN!",) + encode_parts(data, header) + encode_parts(b"") + encode_parts(data[:10])
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)   # many partial sends
    got = bytearray()
    reader = threading.Thread(target=lambda: [got.extend(chunk) for chunk in iter(lambda: b.recv(1 << 16), b"")])
    reader.start()
    try:
        _send_vectored(a, parts)
    finally:
        a.close()
        reader.join(30)
        b.close()
    assert bytes(got) == b"LEN!" + encode_with_data(data, header) + encode_with_data(b"") + encode_with_data(data[:10])


def test_views_of_a_reused_receive_buffer_are_parsed_and_queued_as_copies():
    """A node receives transfer write messages into one buffer per
    connection: what outlives the next message (the parsed header, a
    message queued for a gRPC downstream) must not refer into it."""
    import queue

    from cistern.blockstore.pipeline import Downstream, encode_with_data, split_data

    header = pb.WriteHeader(block_id=b"i" * 16, length=3, targets=["a:1"])
    buffer = bytearray(encode_with_data(b"abc", pb.WriteChunk(header=header).SerializeToString()))
    data, rest = split_data(memoryview(buffer), pb.WriteChunk)
    assert bytes(data) == b"abc"
    buffer[:] = bytes(len(buffer))                  # the next message lands
    assert rest.header.block_id == b"i" * 16 and list(rest.header.targets) == ["a:1"]

    class Call:
        def future(self, messages, timeout):
            return self

        def done(self):
            return False

    stream = Downstream(Call(), header, b"", ["a:1"], timeout_s=5)
    stream._queue = queue.Queue()
    message = bytearray(b"message one")
    assert stream.send(memoryview(message))
    message[:] = b"message two"
    assert stream._queue.get_nowait() == b"message one"
