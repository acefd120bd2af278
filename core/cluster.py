"""Finding a cluster: ``--cluster`` or ``CISTERN_CLUSTER`` names either a
``cluster.json`` file or a comma-separated list of metadata RPC addresses.

``cluster.json`` (written by ``cistern up`` once a leader is elected)::

    {"version": 1,
     "meta":  [{"id": "m1", "rpc": "127.0.0.1:41001", "raft": "127.0.0.1:41002",
                "metrics": "127.0.0.1:41003", "pid": 1234, "data": "/d/m1"}, ...],
     "nodes": [{"id": "n1", "rpc": "...", "metrics": "...", "pid": 1240, "data": "/d/n1"}, ...]}
"""

from __future__ import annotations

import errno
import json
import os
from dataclasses import dataclass, field

from cistern.core.errors import CisternError

ENV_VAR = "CISTERN_CLUSTER"


_LOOPBACK_HOSTS = ("localhost", "[::1]", "::1")


@dataclass(frozen=True)
class ClusterSpec:
    meta_addresses: tuple[str, ...]
    document: dict = field(default_factory=dict)   # the parsed cluster.json, or {}

    def local_node_dirs(self) -> dict[str, str]:
        """{node id: data directory} of the storage nodes listed in
        cluster.json that run on this host: a loopback RPC address and a
        block directory this process can see. Clients read whole blocks of
        those nodes straight from their files (short-circuit reads)."""
        found = {}
        for node in self.document.get("nodes") or ():
            try:
                node_id, rpc, data = str(node["id"]), str(node["rpc"]), str(node["data"])
            except (KeyError, TypeError):
                continue
            host = rpc.rpartition(":")[0]
            if (host.startswith("127.") or host in _LOOPBACK_HOSTS) and os.path.isdir(os.path.join(data, "blocks")):
                found[node_id] = data
        return found


def resolve(spec: str | None) -> ClusterSpec:
    """Parse ``spec`` (or $CISTERN_CLUSTER when None). Raises CisternError
    (ENOENT, EINVAL) with a one-line message a CLI can print as is."""
    spec = spec or os.environ.get(ENV_VAR, "")
    if not spec:
        raise CisternError(errno.EINVAL, f"no cluster given: pass --cluster or set {ENV_VAR}")
    if spec.endswith(".json") or os.path.isfile(spec):
        return _from_file(spec)
    addresses = tuple(a.strip() for a in spec.split(",") if a.strip())
    for address in addresses:
        _check_address(address)
    return ClusterSpec(addresses)


def _from_file(path: str) -> ClusterSpec:
    try:
        with open(path, encoding="utf-8") as f:
            document = json.load(f)
    except FileNotFoundError:
        raise CisternError(errno.ENOENT, f"cluster file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise CisternError(errno.EINVAL, f"cannot read cluster file {path}: {e}") from None
    try:
        addresses = tuple(member["rpc"] for member in document["meta"])
    except (KeyError, TypeError):
        raise CisternError(errno.EINVAL, f"cluster file {path} has no meta[].rpc addresses") from None
    if not addresses:
        raise CisternError(errno.EINVAL, f"cluster file {path} lists no metadata replicas")
    return ClusterSpec(addresses, document)


def _check_address(address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CisternError(errno.EINVAL, f"not a host:port address: {address!r}")
