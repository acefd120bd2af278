"""cistern.core.cluster: finding the cluster, and which of its nodes share this host."""

import json

import pytest

from cistern.core.cluster import resolve
from cistern.core.errors import CisternError


def _write(tmp_path, nodes):
    path = tmp_path / "cluster.json"
    path.write_text(json.dumps({"version": 1, "meta": [{"id": "m1", "rpc": "127.0.0.1:7000"}], "nodes": nodes}))
    return str(path)


def test_local_node_dirs_are_loopback_nodes_whose_block_directory_is_here(tmp_path):
    (tmp_path / "n1" / "blocks").mkdir(parents=True)
    (tmp_path / "n3" / "blocks").mkdir(parents=True)
    spec = resolve(_write(tmp_path, [
        {"id": "n1", "rpc": "127.0.0.1:7001", "data": str(tmp_path / "n1")},
        {"id": "n2", "rpc": "127.0.0.1:7002", "data": str(tmp_path / "missing")},   # not on this host
        {"id": "n3", "rpc": "10.1.2.3:7003", "data": str(tmp_path / "n3")},         # another host's address
        {"id": "n4", "rpc": "localhost:7004"},                                        # no data dir listed
    ]))
    assert spec.meta_addresses == ("127.0.0.1:7000",)
    assert spec.local_node_dirs() == {"n1": str(tmp_path / "n1")}


def test_addresses_alone_name_no_local_nodes_and_bad_input_is_one_line():
    assert resolve("127.0.0.1:1,127.0.0.1:2").local_node_dirs() == {}
    with pytest.raises(CisternError) as e:
        resolve("no-port-here")
    assert "\n" not in e.value.message
