"""The LMDB store: named databases, durability across reopen, compact copies
for snapshots, and a namespace that survives them."""

import lmdb
import pytest

from cistern.metadata import store as store_mod
from cistern.metadata.model import Op
from cistern.metadata.state import Namespace
from cistern.metadata.store import Store

CRED = [0, 0, []]


def _populate(st, count=50):
    ns = Namespace(st)
    with st.env.begin(write=True) as txn:
        ns.bootstrap(txn)
        ns.apply(txn, 1, Op.MKDIR, [CRED, b"/d", 0o755])
        for i in range(count):
            assert ns.apply(txn, 2, Op.CREATE, [CRED, b"/d/f%d" % i, 0o644, True])[0] == 0
    return ns


def _listing(st):
    ns = Namespace(st)
    with st.env.begin() as txn:
        ns.check_invariants(txn)
        return ns.read(txn, Op.READDIR, [CRED, b"/d", None, 1000])


def test_all_named_databases_exist_and_replica_db_is_reserved(tmp_path):
    with Store(str(tmp_path / "s"), sync=False) as st:
        for name in store_mod.ALL_DBS:
            assert st.db(name) is not None
        assert store_mod.DB_REPLICA not in store_mod.NAMESPACE_DBS
        _populate(st)
        with st.env.begin() as txn:
            assert txn.stat(st.db(store_mod.DB_REPLICA))["entries"] == 0


def test_committed_state_survives_reopen(tmp_path):
    path = str(tmp_path / "s")
    with Store(path, sync=True) as st:
        _populate(st)
        before = _listing(st)
    with Store(path) as st:
        assert _listing(st) == before
        assert len(before[2][0]) == 50


def test_compact_copy_is_a_consistent_snapshot(tmp_path):
    with Store(str(tmp_path / "s"), sync=False) as st:
        ns = _populate(st, 500)
        with st.env.begin(write=True) as txn:
            for i in range(0, 500, 2):
                ns.apply(txn, 3, Op.UNLINK, [CRED, b"/d/f%d" % i])
        before = _listing(st)
        st.copy_to(str(tmp_path / "copy"))
    with Store(str(tmp_path / "copy")) as copy:
        assert _listing(copy) == before
        assert len(before[2][0]) == 250


def test_copy_into_a_non_empty_directory_fails(tmp_path):
    with Store(str(tmp_path / "s"), sync=False) as st:
        _populate(st, 1)
        st.copy_to(str(tmp_path / "copy"))
        with pytest.raises(lmdb.Error):
            st.copy_to(str(tmp_path / "copy"))


def test_map_size_is_sparse(tmp_path):
    with Store(str(tmp_path / "s"), sync=False, map_size_bytes=64 << 30) as st:
        _populate(st, 10)
        assert st.env.info()["map_size"] == 64 << 30
    assert (tmp_path / "s" / "data.mdb").stat().st_blocks * 512 < 16 << 20


def test_a_full_map_is_enospc_not_an_exception_and_a_bigger_map_recovers(tmp_path):
    path = str(tmp_path / "s")
    with Store(path, sync=False, map_size_bytes=256 << 10) as st:
        ns = Namespace(st)
        with st.env.begin(write=True) as txn:
            ns.bootstrap(txn)
        txn = st.env.begin(write=True)
        results = [ns.apply(txn, 1, Op.CREATE, [CRED, b"/f%05d" % i + b"x" * 200, 0o644, True])
                   for i in range(2000)]
        txn.abort()  # a full map cannot commit the batch: the replica must grow the map
        errnos = [r[0] for r in results]
        assert errnos[0] == 0 and errnos[-1] == 28 and 5 not in errnos  # ENOSPC, never EIO
    with Store(path, sync=False, map_size_bytes=64 << 20) as st:
        ns = Namespace(st)
        with st.env.begin(write=True) as txn:
            assert ns.apply(txn, 1, Op.CREATE, [CRED, b"/after", 0o644, True])[0] == 0
        with st.env.begin() as txn:
            ns.check_invariants(txn)
