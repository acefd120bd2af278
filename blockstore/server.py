"""One storage node process (blockd): the block store, the gRPC block
service, the scrubber and the Prometheus endpoint, started and stopped in
order.

``cistern node`` builds a ``NodeServer`` from its flags (``add_node_arguments``
and ``run_node`` are the wiring cli calls) and runs it until SIGTERM/SIGINT;
tests do the same in-process or through ``main(argv)`` in a child process.

Registration, heartbeats and block reports to the metadata leader go
through ``reporter``: an object with the hooks of ``service.NullReporter``
(start(node), stop(), block_stored, blocks_deleted, block_corrupt). By
default it is ``reporter.Reporter`` when ``meta_addresses`` are given, and
a ``NullReporter`` otherwise.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

from cistern.blockstore import limits
from cistern.blockstore.scrubber import Scrubber
from cistern.blockstore.service import BlockService, NullReporter, StoreCollector, add_to_server
from cistern.blockstore.store import BlockStore
from cistern.blockstore.transfer import TransferServer
from cistern.blockstore.tuning import tune_malloc
from cistern.core import procs
from cistern.core import metrics, rpc
from cistern.core.errors import CisternError

log = logging.getLogger(__name__)

# Each Write holds a worker for its whole stream, and a pipelined write holds
# one on every node of the pipeline, so the pool bounds concurrent writes.
grpc_workers_max = 64
grpc_stop_grace_s = 2.0


class NodeServer:
    def __init__(self, node_id: str, rpc_address: str, data_dir: str, *, meta_addresses=(),
                 metrics_address: str | None = None,
                 block_size_bytes: int = limits.block_size_default_bytes,
                 reporter=None, sync: bool = True, scrub: bool = True,
                 scrub_rate_bytes_per_s: float = limits.scrub_rate_bytes_per_s,
                 scrub_interval_s: float = limits.scrub_interval_s, transfer_port: int | None = 0):
        """``transfer_port``: where block reads and writes also stream over
        plain TCP (transfer.py), on the RPC address's host: 0 a free port,
        None none (clients then use gRPC alone)."""
        if not limits.block_size_min_bytes <= block_size_bytes <= limits.block_size_max_bytes \
                or block_size_bytes % limits.chunk_size_bytes:
            raise CisternError(errno.EINVAL, f"block size {block_size_bytes} must be a multiple of "
                                             f"{limits.chunk_size_bytes} in [{limits.block_size_min_bytes}, "
                                             f"{limits.block_size_max_bytes}]")
        self.node_id = node_id
        self.rpc_address = rpc_address
        self.data_dir = data_dir
        self.meta_addresses = tuple(meta_addresses)
        self.metrics_address = metrics_address
        self.block_size_bytes = block_size_bytes
        self.reporter = reporter or _default_reporter(node_id, rpc_address, self.meta_addresses)
        self.sync = sync
        self.scrub = scrub
        self.scrub_rate_bytes_per_s = scrub_rate_bytes_per_s
        self.scrub_interval_s = scrub_interval_s
        self.transfer_port = transfer_port
        self.registry = metrics.new_registry()
        self.store: BlockStore | None = None
        self.service: BlockService | None = None
        self.scrubber: Scrubber | None = None
        self._grpc = None
        self._transfer = None
        self._metrics = None
        self._stopped = threading.Event()
        self._stop_lock = threading.Lock()

    def start(self) -> None:
        """Open the store (cleaning up after a crash), serve RPCs and metrics,
        start the scrubber and the reporter. Raises CisternError when an
        address is taken or the data directory is unusable."""
        try:
            # The configured block size is also the longest block this node
            # takes: a writer with another idea of the cluster's block size
            # gets a clear INVALID_ARGUMENT instead of odd-sized blocks.
            self.store = BlockStore(self.data_dir, sync=self.sync, block_size_max_bytes=self.block_size_bytes)
            self.registry.register(StoreCollector(self.store))
            self.service = BlockService(self.store, self.node_id, block_size_bytes=self.block_size_bytes,
                                        registry=self.registry, reporter=self.reporter)
            self._serve_rpc()
            if self.transfer_port is not None:
                self._serve_transfer()
            if self.metrics_address:
                self._serve_metrics()
            if self.scrub:
                self.scrubber = Scrubber(self.store, self.reporter.block_corrupt,
                                         rate_bytes_per_s=self.scrub_rate_bytes_per_s,
                                         interval_s=self.scrub_interval_s)
                self.scrubber.start()
            self.reporter.start(self)
        except BaseException:
            self.stop()
            raise
        log.info("node %s serving blocks on %s from %s", self.node_id, self.rpc_address, self.data_dir)

    def _serve_rpc(self) -> None:
        self._grpc = grpc.server(ThreadPoolExecutor(grpc_workers_max, thread_name_prefix="blockd-rpc"),
                                 options=rpc.server_options(limits.wire_message_bytes_max),
                                 maximum_concurrent_rpcs=grpc_workers_max)
        add_to_server(self.service, self._grpc)
        try:
            port = self._grpc.add_insecure_port(self.rpc_address)
        except RuntimeError:
            port = 0
        if not port:
            raise CisternError(errno.EADDRINUSE, f"cannot listen on {self.rpc_address} (in use?)")
        self._grpc.start()

    def _serve_transfer(self) -> None:
        """The plain TCP port of block reads and writes (transfer.py), on the RPC
        address's host and ``transfer_port`` (0: a free one); Stat tells
        clients which."""
        try:
            self._transfer = TransferServer(self.service.read_range, self.rpc_address.rpartition(":")[0],
                                            self.transfer_port, write=self.service.transfer_write).start()
        except OSError as e:
            raise CisternError(e.errno or errno.EADDRINUSE,
                               f"cannot serve block transfers on {self.rpc_address}'s host: {e.strerror}") from None
        self.service.transfer_port = self._transfer.port

    def _serve_metrics(self) -> None:
        try:
            self._metrics = metrics.start_metrics_server(self.metrics_address, self.registry)
        except OSError as e:
            raise CisternError(e.errno or errno.EADDRINUSE,
                               f"cannot serve metrics on {self.metrics_address}: {e.strerror}") from None

    def stop(self) -> None:
        """Stop the reporter, serving, the scrubber, then close the store. Idempotent."""
        with self._stop_lock:
            if self.service is not None:
                self.reporter.stop()
            if self._transfer is not None:
                self._transfer.stop()
                self._transfer = None
            if self._grpc is not None:
                self._grpc.stop(grpc_stop_grace_s).wait(grpc_stop_grace_s + 1)
                self._grpc = None
            if self._metrics is not None:
                self._metrics.stop()
                self._metrics = None
            if self.scrubber is not None:
                self.scrubber.stop()
                self.scrubber = None
            if self.service is not None:
                self.service.peers.close()
                self.service = None
            if self.store is not None:
                self.store.close()
                self.store = None
            self._stopped.set()

    def run_forever(self) -> None:
        """Serve until SIGTERM or SIGINT, then stop cleanly. Main thread only."""
        procs.serve_until_signalled(f"node {self.node_id}", self._stopped, self.stop)


def _default_reporter(node_id: str, rpc_address: str, meta_addresses: tuple):
    """The reporter to the metadata leader when metadata addresses are
    known; a node without them serves blocks and reports to nobody."""
    if not meta_addresses:
        return NullReporter()
    from cistern.blockstore.reporter import Reporter

    return Reporter(node_id, rpc_address, meta_addresses)


# -- command-line wiring (cli/node.py calls these) -----------------------------------

def add_node_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--id", required=True, help="this node's id, e.g. n1")
    p.add_argument("--data", required=True, metavar="DIR", help="this node's data directory")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="block service address")
    p.add_argument("--meta", default="", metavar="ADDRS",
                   help="comma-separated metadata addresses (for registration and reports, once built)")
    p.add_argument("--metrics", default=None, metavar="HOST:PORT", help="Prometheus metrics address")
    p.add_argument("--block-size", type=int, default=limits.block_size_default_bytes, metavar="BYTES",
                   help=f"the block size this node expects (default {limits.block_size_default_bytes})")
    p.add_argument("--scrub-rate", type=float, default=limits.scrub_rate_bytes_per_s, metavar="BYTES_PER_S",
                   help="the scrubber's read bandwidth at most")
    p.add_argument("--no-scrub", action="store_true", help="do not re-verify blocks in the background")
    p.add_argument("--unsafe-no-fsync", action="store_true",
                   help="acknowledge blocks without fsync (tests and benchmarks only: a crash loses them)")
    add_transfer_port_argument(p)


def add_transfer_port_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("--transfer-port", default="0", type=transfer_port_option, metavar="PORT|off",
                   help="port (on the block service's host) where block reads and writes also stream over plain TCP, "
                        "as HDFS's data-transfer port; 0 (default) picks a free one, off serves them through gRPC alone")


def transfer_port_option(text: str) -> int | None:
    """``--transfer-port``'s value: a port number, 0 for a free one, or None
    for ``off``; argparse's one-line usage error otherwise."""
    if text == "off":
        return None
    if text.isdigit() and 0 <= int(text) <= 65535:
        return int(text)
    raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0-65535) or off")


def run_node(args) -> int:
    """Run one node in the foreground from parsed ``add_node_arguments`` flags.
    Raises CisternError when it cannot start (cli prints it and exits 1)."""
    if not tune_malloc():
        log.info("malloc thresholds left as they are (not glibc)")
    meta = tuple(a.strip() for a in args.meta.split(",") if a.strip())
    server = NodeServer(args.id, args.listen, args.data, meta_addresses=meta,
                        metrics_address=args.metrics, block_size_bytes=args.block_size,
                        scrub=not args.no_scrub, scrub_rate_bytes_per_s=args.scrub_rate,
                        sync=not args.unsafe_no_fsync, transfer_port=args.transfer_port)
    server.start()
    server.run_forever()
    return 0


def main(argv: list[str] | None = None) -> int:
    """A stand-alone entry (``python -P -c "from cistern.blockstore.server import
    main; main()"``) for tests and tools until cli wires ``cistern node``."""
    procs.die_with_parent_if_asked()
    p = argparse.ArgumentParser(prog="blockd")
    p.add_argument("--log-level", default=os.environ.get("CISTERN_LOG", "WARNING"))
    add_node_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return run_node(args)
    except CisternError as e:
        print(f"blockd: {e.message}", file=sys.stderr)
        return 1
