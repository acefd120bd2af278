"""``cistern node``: one storage node in the foreground (blockd; the task
agent joins it with the scheduler)."""

from __future__ import annotations

import os

from cistern.core import cluster as cluster_spec


def register(commands) -> None:
    p = commands.add_parser("node", help="run one storage node in the foreground")
    p.add_argument("--id", required=True, help="this node's id, e.g. n1")
    p.add_argument("--data", required=True, metavar="DIR", help="block files and index")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="block service address")
    p.add_argument("--meta", default=None, metavar="ADDRS",
                   help="metadata replicas (cluster.json or comma-separated addresses; default $CISTERN_CLUSTER)")
    p.add_argument("--metrics", default=None, metavar="HOST:PORT", help="Prometheus metrics address")
    p.add_argument("--block-size", type=int, default=None, metavar="BYTES", help="block size for new blocks")
    p.set_defaults(run=run)


def run(args) -> int:
    from cistern.blockstore.server import NodeServer

    # A node without metadata addresses still serves blocks; it just reports
    # to nobody (useful for testing the block service on its own).
    meta = cluster_spec.resolve(args.meta).meta_addresses if (args.meta or os.environ.get(cluster_spec.ENV_VAR)) else ()
    options = {"meta_addresses": tuple(meta), "metrics_address": args.metrics}
    if args.block_size is not None:
        options["block_size_bytes"] = args.block_size
    server = NodeServer(args.id, args.listen, args.data, **options)
    server.start()
    server.run_forever()
    return 0
