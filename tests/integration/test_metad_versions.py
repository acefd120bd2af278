"""A metad that meets state written by a newer cistern stops with a one-line
reason instead of applying it differently (replica.py, Versions)."""

from __future__ import annotations

import errno
import os
import re
import struct
import subprocess
import sys
import time

import pytest

from cistern.core.errors import CisternError
from cistern.core.ports import free_port
from cistern.metadata import model
from cistern.metadata.model import Op
from cistern.metadata.replica import KEY_APPLIED, KEY_VERSION
from cistern.metadata.server import MetaServer
from cistern.metadata.store import DB_REPLICA, Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]

CISTERN = os.path.join(os.path.dirname(sys.executable), "cistern")
V = model.STATE_MACHINE_VERSION


def test_a_metad_that_meets_a_newer_entry_stops_and_run_forever_says_why(tmp_path):
    server = MetaServer("m1", f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}", {}, str(tmp_path))
    server.start()
    try:
        server.wait_leader(30)
        replica = server.replica
        newer = model.pack([time.time_ns(), [[os.urandom(16), 1, 0, Op.NOOP, model.encode_args(model.ROOT_CRED)]],
                            V + 1])
        replica._node.apply_entry(newer)
        started = time.monotonic()
        with pytest.raises(CisternError) as raised:
            server.run_forever()          # returns once the replica stopped the server
        assert time.monotonic() - started < 30
        assert raised.value.errno == errno.ENOTSUP
        found = re.match(rf"log entry (\d+) was written by state-machine version {V + 1}, and this "
                         rf"cistern applies versions up to {V}: ", raised.value.message)
        assert found, raised.value.message
        assert server.replica is None and server.store is None     # everything stopped
    finally:
        server.stop()
    # The entry stays unapplied in the state a newer cistern will start from.
    store = Store(os.path.join(str(tmp_path), "state"), sync=False)
    try:
        with store.env.begin() as txn:
            raw = txn.get(KEY_APPLIED, db=store.db(DB_REPLICA))
            assert (struct.unpack(">Q", raw)[0] if raw else 0) < int(found[1])
    finally:
        store.close()


def test_cistern_meta_refuses_a_data_directory_a_newer_cistern_wrote_in_one_line(tmp_path):
    data = str(tmp_path / "m1")
    store = Store(os.path.join(data, "state"), sync=False)
    with store.env.begin(write=True) as txn:
        txn.put(KEY_VERSION, struct.pack(">Q", V + 1), db=store.db(DB_REPLICA))
    store.close()
    done = subprocess.run([CISTERN, "meta", "--id", "m1", "--listen", f"127.0.0.1:{free_port()}",
                           "--raft", f"127.0.0.1:{free_port()}", "--data", data],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1, done
    assert done.stderr.splitlines() == [
        f"cistern meta: the state in {os.path.join(data, 'state')} was written by state-machine version "
        f"{V + 1}, and this cistern applies versions up to {V}: run a cistern at least as new as the "
        f"group's newest member"], done.stderr
    assert "Traceback" not in done.stderr
