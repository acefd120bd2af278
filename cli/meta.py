"""``cistern meta``: one metadata replica in the foreground, for real
multi-host deployments (``cistern up`` starts several of these). It also
hosts the scheduler master (its state on the same Raft log, its service on
the same port; active on the leader only)."""

from __future__ import annotations

import errno

from cistern.core.errors import CisternError


def register(commands) -> None:
    p = commands.add_parser("meta", help="run one metadata replica (metad) in the foreground")
    p.add_argument("--id", required=True, help="this replica's id, e.g. m1")
    p.add_argument("--listen", required=True, metavar="HOST:PORT", help="client RPC address")
    p.add_argument("--raft", required=True, metavar="HOST:PORT", help="Raft peer address")
    p.add_argument("--peers", default="", metavar="ID=RAFT/RPC,...",
                   help="the other replicas, e.g. m2=10.0.0.2:7002/10.0.0.2:8002,m3=...")
    p.add_argument("--data", required=True, metavar="DIR", help="this replica's data directory")
    p.add_argument("--metrics", default=None, metavar="HOST:PORT", help="Prometheus metrics address")
    p.set_defaults(run=run)


def run(args) -> int:
    from cistern.metadata.server import MetaServer, parse_peers
    from cistern.scheduler.service import SchedulerExtension

    peers = parse_peers(args.peers) if args.peers else {}
    if args.id in peers:
        raise CisternError(errno.EINVAL, f"--peers lists this replica's own id {args.id!r}")
    server = MetaServer(args.id, args.listen, args.raft, peers, args.data,
                        metrics_address=args.metrics, extensions=[SchedulerExtension()])
    server.start()
    server.run_forever()
    return 0
