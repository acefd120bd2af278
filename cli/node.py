"""``cistern node``: one storage node in the foreground: blockd and, beside
it, the task agent (scheduler/agent.py), which offers this node's cpus and
memory to the scheduler master and runs tasks in isolation.

The agent needs the metadata addresses (the master runs in the metadata
leader) and root (cgroups, namespaces, mounts). Without addresses, or with
``--no-agent``, the node only serves blocks. A node that cannot isolate
tasks (not root, no cgroup controllers) says why once and serves blocks.
"""

from __future__ import annotations

import errno
import logging
import os
import sys
import threading

from cistern.core import cluster as cluster_spec
from cistern.core.errors import CisternError

log = logging.getLogger(__name__)


def register(commands) -> None:
    p = commands.add_parser("node", help="run one storage node (blockd and the task agent) in the foreground")
    p.add_argument("--id", required=True, help="this node's id, e.g. n1")
    p.add_argument("--data", required=True, metavar="DIR", help="block files and index (the agent's under DIR/agent)")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="block service address")
    p.add_argument("--meta", default=None, metavar="ADDRS",
                   help="metadata replicas (cluster.json or comma-separated addresses; default $CISTERN_CLUSTER)")
    p.add_argument("--metrics", default=None, metavar="HOST:PORT", help="Prometheus metrics address")
    p.add_argument("--block-size", type=int, default=None, metavar="BYTES", help="block size for new blocks")
    p.add_argument("--cpus", type=float, default=None, help="cpus the agent offers to tasks (default: all)")
    p.add_argument("--mem", default=None, metavar="SIZE",
                   help="memory the agent offers to tasks, e.g. 4G (default: 80%% of RAM)")
    p.add_argument("--no-agent", action="store_true", help="serve blocks only; run no tasks")
    from cistern.blockstore.server import add_transfer_port_argument

    add_transfer_port_argument(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from cistern.blockstore.server import NodeServer
    from cistern.core import procs

    # A node without metadata addresses still serves blocks; it just reports
    # to nobody (useful for testing the block service on its own).
    meta = cluster_spec.resolve(args.meta).meta_addresses if (args.meta or os.environ.get(cluster_spec.ENV_VAR)) else ()
    agent_options = _agent_options(args)          # bad --cpus/--mem fail before anything starts
    options = {"meta_addresses": tuple(meta), "metrics_address": args.metrics}
    if args.block_size is not None:
        options["block_size_bytes"] = args.block_size
    options["transfer_port"] = args.transfer_port
    server = NodeServer(args.id, args.listen, args.data, **options)
    server.start()
    agent = None
    try:
        if meta and not args.no_agent:
            agent = _start_agent(server, tuple(meta), agent_options)
    except BaseException:
        server.stop()
        raise
    stopped = threading.Event()

    def stop() -> None:
        # The agent first: it reads block files from the store the server closes.
        if agent is not None:
            agent.stop()
        server.stop()
        stopped.set()
    procs.serve_until_signalled(f"node {args.id}", stopped, stop)
    return 0


def _agent_options(args) -> dict:
    options = {}
    if args.cpus is not None:
        if not args.cpus > 0:
            raise CisternError(errno.EINVAL, f"--cpus {args.cpus} must be positive")
        options["cpus"] = args.cpus
    if args.mem is not None:
        from cistern.scheduler.jobs import parse_mem

        try:
            options["mem_bytes"] = parse_mem(args.mem)
        except ValueError as e:
            raise CisternError(errno.EINVAL, f"--mem: {e}") from None     # parse_mem refuses 0 too
    return options


def _start_agent(server, meta: tuple, options: dict):
    """The agent beside ``server``, started; None (and one warning) when
    this machine cannot isolate tasks."""
    from cistern.scheduler import isolation
    from cistern.scheduler.agent import Agent

    try:
        isolation.check_available()
    except CisternError as e:
        print(f"cistern node: warning: running no tasks: {e.message}", file=sys.stderr)
        return None
    agent = Agent(server.node_id, server.rpc_address, server.data_dir, meta, store=lambda: server.store,
                  registry=server.registry, **options)
    agent.start()
    return agent
