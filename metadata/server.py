"""One metad process: the LMDB store, the namespace state machine, the Raft
replica, the gRPC service and the Prometheus endpoint, started and stopped
in order.

``cistern meta`` (cli/meta.py) builds a ``MetaServer`` from its flags and
calls ``start()`` then ``run_forever()``; tests do the same in-process.

Extensions (``MetaServer(..., extensions=[...])``) let the composition root
host more on the same process without metadata importing them (the
scheduler master does). An extension is any object with:

* ``machines(store) -> [(code range, machine), ...]``: state machines to
  register on the replica's log (called once the store is open, before the
  replica is built; ranges must not overlap 1-999);
* ``attach(grpc_server, replica, registry)``: add its servicers to the
  metad gRPC server and start its threads (called after the replica
  started, before the server serves);
* ``stop()``: stop its threads (called before the replica stops; must be
  idempotent and safe after a failed ``attach``).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from cistern.core import procs
from cistern.core import metrics, rpc
from cistern.core.errors import CisternError
from cistern.metadata import limits
from cistern.metadata.service import MetadataService, add_to_server

log = logging.getLogger(__name__)

# Each client stream holds one worker thread (its reply generator) for as long
# as it lives, so the pool bounds the number of concurrent client streams.
grpc_workers_max = 256
message_bytes_max = limits.batch_bytes_max + 1024 * 1024   # a full batch plus envelope
grpc_stop_grace_s = 2.0


def parse_peers(text: str) -> dict[str, tuple[str, str]]:
    """``"m2=10.0.0.2:7002/10.0.0.2:8002,m3=..."`` -> ``{"m2": (raft, rpc), ...}``.

    Raises CisternError(EINVAL) naming the bad item."""
    peers: dict[str, tuple[str, str]] = {}
    for item in (part.strip() for part in text.split(",")):
        if not item:
            continue
        node_id, sep, addresses = item.partition("=")
        raft, slash, rpc_address = addresses.partition("/")
        if not sep or not node_id.strip() or not slash:
            raise CisternError(errno.EINVAL, f"bad peer {item!r}: expected ID=RAFT_HOST:PORT/RPC_HOST:PORT")
        node_id = node_id.strip()
        for address in (raft, rpc_address):
            _check_address(item, address)
        if node_id in peers:
            raise CisternError(errno.EINVAL, f"peer id {node_id!r} is listed twice")
        peers[node_id] = (raft, rpc_address)
    return peers


def _check_address(item: str, address: str) -> None:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise CisternError(errno.EINVAL, f"bad peer {item!r}: {address!r} is not HOST:PORT")


class MetaServer:
    def __init__(self, node_id: str, rpc_address: str, raft_address: str,
                 peers: dict[str, tuple[str, str]], data_dir: str, *,
                 metrics_address: str | None = None, replica_conf=None, extensions=()):
        self.node_id = node_id
        self.rpc_address = rpc_address
        self.raft_address = raft_address
        # The peers may or may not list this replica itself; it is dropped here.
        self.peers = {pid: tuple(addrs) for pid, addrs in peers.items() if pid != node_id}
        for pid, (raft, _) in self.peers.items():
            if raft == raft_address:
                raise CisternError(errno.EINVAL, f"peer {pid!r} has this replica's raft address {raft}")
        self.data_dir = data_dir
        self.metrics_address = metrics_address
        self.replica_conf = replica_conf
        self.extensions = list(extensions)
        self.registry = metrics.new_registry()
        self.store = None
        self.namespace = None
        self.replica = None
        self.nodes = None
        self.service = None
        self._grpc = None
        self._metrics = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()
        self.failure: str | None = None   # why the replica stopped applying; run_forever raises it

    def start(self) -> None:
        """Open the store, start the replica, then serve RPCs and metrics.
        Raises CisternError when an address is taken or the data is unusable."""
        from cistern.metadata import nodes_service
        from cistern.metadata.replica import Replica, ReplicaConf
        from cistern.metadata.state import Namespace
        from cistern.metadata.store import Store

        os.makedirs(self.data_dir, exist_ok=True)
        try:
            # LMDB need not fsync each commit: the replica fsyncs the Raft
            # journal before acknowledging, and replays it on top of LMDB's
            # applied index after a crash (see replica.py, Durability).
            self.store = Store(os.path.join(self.data_dir, "state"), sync=False)
            self.namespace = Namespace(self.store)
            rpc_addresses = {raft: rpc_address for raft, rpc_address in self.peers.values()}
            rpc_addresses[self.raft_address] = self.rpc_address
            members = {pid: raft for pid, (raft, _) in self.peers.items()}
            conf = self.replica_conf or ReplicaConf()
            if conf.registry is None:
                conf.registry = self.registry
            extra = [pair for extension in self.extensions for pair in extension.machines(self.store)]
            if extra:
                conf = dataclasses.replace(conf, extra_machines=tuple(conf.extra_machines) + tuple(extra))
            self.replica = Replica(self.node_id, self.raft_address, members,
                                   self.data_dir, self._machines(),
                                   rpc_addresses=rpc_addresses, conf=conf)
            self.replica.on_failure = self._replica_failed
            self.replica.start()
            self.service = MetadataService(self.replica, registry=self.registry)
            self._grpc = grpc.server(ThreadPoolExecutor(grpc_workers_max, thread_name_prefix="metad-rpc"),
                                     options=rpc.server_options(message_bytes_max),
                                     maximum_concurrent_rpcs=grpc_workers_max)
            add_to_server(self.service, self._grpc)
            # The storage-node face (heartbeats, block reports, placement,
            # healing) shares the server; its monitor acts only on the leader.
            self.nodes = nodes_service.add_to_server(self._grpc, self.replica, registry=self.registry)
            for extension in self.extensions:
                extension.attach(self._grpc, self.replica, self.registry)
            try:
                port = self._grpc.add_insecure_port(self.rpc_address)
            except RuntimeError:
                port = 0
            if not port:
                raise CisternError(errno.EADDRINUSE, f"cannot listen on {self.rpc_address} (in use?)")
            self._grpc.start()
            if self.metrics_address:
                try:
                    self._metrics = metrics.start_metrics_server(self.metrics_address, self.registry)
                except OSError as e:
                    raise CisternError(e.errno or errno.EADDRINUSE,
                                       f"cannot serve metrics on {self.metrics_address}: {e.strerror}") from None
        except BaseException:
            self.stop()
            raise
        log.info("metad %s serving rpc %s raft %s", self.node_id, self.rpc_address, self.raft_address)

    def _machines(self):
        # The namespace is the state machine this process always hosts; the
        # composition root (cli) may register more on the same log through
        # replica_conf.
        return {"namespace": self.namespace}

    def wait_leader(self, timeout_s: float = 30.0):
        """Block until the group has a leader; returns its RPC address."""
        return self.replica.wait_leader(timeout_s)

    def stop(self) -> None:
        """Stop serving, then the replica, then close the store. Idempotent."""
        with self._stop_lock:
            if self._grpc is not None:
                self._grpc.stop(grpc_stop_grace_s).wait(grpc_stop_grace_s + 1)
                self._grpc = None
            if self.nodes is not None:
                self.nodes.stop()
                self.nodes = None
            for extension in self.extensions:
                extension.stop()
            if self._metrics is not None:
                self._metrics.stop()
                self._metrics = None
            if self.replica is not None:
                try:
                    self.replica.stop()
                finally:
                    self.replica = None
            if self.store is not None:
                self.store.close()
                self.store = None
            self._stopped.set()

    def _replica_failed(self, message: str) -> None:
        """The replica met an entry or snapshot of a newer state machine
        (replica.py, Versions) and stopped applying: a metad that cannot
        apply its log stops, and ``run_forever`` raises the reason."""
        self.failure = message
        threading.Thread(target=self.stop, name=f"metad-{self.node_id}-stop", daemon=True).start()

    def run_forever(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop cleanly. Main thread only.
        Raises CisternError(ENOTSUP) when the replica stopped applying."""
        procs.serve_until_signalled(f"metad {self.node_id}", self._stopped, self.stop)
        if self.failure is not None:
            raise CisternError(errno.ENOTSUP, self.failure)
