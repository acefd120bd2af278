"""Client sessions (metadata/sessions.py): exactly-once bookkeeping, exact
outputs over an in-memory ordered KV, and the LMDB adapter."""

from __future__ import annotations

import errno

import lmdb
import msgpack
import pytest

from cistern.metadata.sessions import (
    DUPLICATE, NEW, STALE, LmdbKV, MemoryKV, SessionTable,
)

pytestmark = pytest.mark.timeout(60)

S = 1_000_000_000
TTL = 3600 * S
A = b"a" * 16
B = b"b" * 16


def packed(result):
    return msgpack.packb(list(result), use_bin_type=True)


def run(table, client_id, seq, acked_below, time_ns, apply):
    """What the replica does per operation; returns (result, applied?)."""
    verdict, result = table.lookup(client_id, seq)
    applied = verdict == NEW
    if applied:
        result = apply()
        table.remember(client_id, seq, packed(result))
    table.touch(client_id, acked_below, time_ns)
    return result, applied


def test_a_new_request_is_applied_and_a_resend_gets_the_stored_result():
    table = SessionTable(MemoryKV(), TTL)
    assert run(table, A, 1, 0, 10, lambda: (0, "", [1, b"x"])) == ((0, "", [1, b"x"]), True)
    assert run(table, A, 1, 0, 20, lambda: pytest.fail("applied twice")) == ((0, "", [1, b"x"]), False)


def test_failed_results_are_remembered_too():
    table = SessionTable(MemoryKV(), TTL)
    run(table, A, 3, 0, 10, lambda: (errno.EEXIST, "exists", None))
    assert table.lookup(A, 3) == (DUPLICATE, (errno.EEXIST, "exists", None))


def test_clients_do_not_share_sequence_numbers():
    table = SessionTable(MemoryKV(), TTL)
    run(table, A, 1, 0, 10, lambda: (0, "", "a"))
    assert table.lookup(B, 1) == (NEW, None)
    # a client id that is a prefix of another never aliases it
    run(table, b"ab", 5, 0, 10, lambda: (0, "", "short"))
    assert table.lookup(b"abc", 5) == (NEW, None)


def test_acked_below_forgets_older_results_and_rejects_them_as_stale():
    kv = MemoryKV()
    table = SessionTable(kv, TTL)
    for seq in range(5):
        run(table, A, seq, 0, 10, lambda: (0, "", seq))
    run(table, A, 5, 3, 11, lambda: (0, "", 5))
    assert table.lookup(A, 2)[0] == STALE
    assert table.lookup(A, 2)[1][0] == errno.EALREADY
    assert table.lookup(A, 3) == (DUPLICATE, (0, "", 3))
    result_keys = [k for k in kv.data if k.startswith(b"r:")]
    assert len(result_keys) == 3          # seqs 3, 4, 5 remain


def test_acked_below_never_moves_back():
    table = SessionTable(MemoryKV(), TTL)
    run(table, A, 10, 10, 10, lambda: (0, "", 10))
    run(table, A, 11, 2, 11, lambda: (0, "", 11))   # a reordered older window
    assert table.lookup(A, 5)[0] == STALE


def test_idle_sessions_expire_by_entry_time_and_only_them():
    kv = MemoryKV()
    table = SessionTable(kv, TTL)
    run(table, A, 1, 0, 100 * S, lambda: (0, "", "a"))
    run(table, B, 1, 0, 200 * S, lambda: (0, "", "b"))
    assert SessionTable(kv, TTL).expire(100 * S + TTL) == 0        # exactly ttl idle: kept
    table = SessionTable(kv, TTL)
    assert table.expire(150 * S + TTL) == 1
    assert table.lookup(A, 1) == (NEW, None)                       # forgotten: would apply again
    assert table.lookup(B, 1) == (DUPLICATE, (0, "", "b"))
    assert table.count() == 1
    assert not [k for k in kv.data if A in k]


def test_activity_keeps_a_session_alive():
    kv = MemoryKV()
    table = SessionTable(kv, TTL)
    run(table, A, 1, 0, 100 * S, lambda: (0, "", 1))
    run(table, A, 2, 0, 100 * S + TTL - S, lambda: (0, "", 2))
    table = SessionTable(kv, TTL)
    assert table.expire(100 * S + TTL + S) == 0
    assert table.lookup(A, 1) == (DUPLICATE, (0, "", 1))
    assert len([k for k in kv.data if k.startswith(b"i:")]) == 1   # one idle-index key per session


def test_time_stepping_back_across_leaders_does_not_shorten_a_session():
    kv = MemoryKV()
    table = SessionTable(kv, TTL)
    run(table, A, 1, 0, 500 * S, lambda: (0, "", 1))
    run(table, A, 2, 0, 400 * S, lambda: (0, "", 2))    # a new leader's clock is behind
    assert SessionTable(kv, TTL).expire(450 * S + TTL) == 0


def test_the_same_operations_give_the_same_bytes_on_every_replica(tmp_path):
    """Determinism: a MemoryKV and an LMDB-backed table end byte-identical."""
    env = lmdb.open(str(tmp_path), max_dbs=2, map_size=1 << 26)
    db = env.open_db(b"replica")
    memory = MemoryKV()
    script = [(A, 1, 0, 10 * S), (B, 1, 0, 11 * S), (A, 2, 1, 12 * S), (A, 2, 1, 13 * S),
              (B, 2, 2, 14 * S + TTL), (A, 3, 0, 20 * S + 2 * TTL)]
    with env.begin(write=True) as txn:
        for kv in (memory, LmdbKV(txn, db)):
            for client_id, seq, acked, now in script:
                table = SessionTable(kv, TTL)
                table.expire(now)
                run(table, client_id, seq, acked, now, lambda: (0, "", [client_id, seq]))
        lmdb_items = dict(txn.cursor(db=db).iternext())
    assert {bytes(k): bytes(v) for k, v in lmdb_items.items()} == memory.data
    env.close()
