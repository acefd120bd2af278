"""``cistern fsck [PATH]``: block health of the namespace, as ``hdfs fsck``.

Exit 0 when no data is at risk, 1 when some is (a block missing, or a block
one failure from loss), so scripts can gate on it."""

from __future__ import annotations

import json

from cistern.core import cluster as cluster_spec
from cistern.core.errors import CisternError, Unavailable

fsck_timeout_s = 60.0


def register(commands) -> None:
    p = commands.add_parser("fsck", help="block health: missing, corrupt, under/over-replicated; exit 1 when data is at risk")
    p.add_argument("path", nargs="?", default="/", help="a file or directory (default: the whole namespace)")
    p.add_argument("--cluster", default=None, help="cluster.json path or comma-separated metadata addresses")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def report_dict(reply) -> dict:
    """The reply as plain data (what --json prints)."""
    return {
        "at_risk": reply.at_risk,
        "complete": reply.complete,
        "summary": json.loads(reply.summary_json or "{}"),
        "files": [{
            "ino": f.ino, "path": f.path or None, "replication": f.replication, "blocks": f.blocks,
            "at_risk": f.at_risk,
            "problems": [{"index": p.index, "block_id": p.block_id.hex(), "states": list(p.states),
                          "good_nodes": list(p.good_nodes), "corrupt_nodes": list(p.corrupt_nodes)}
                         for p in f.problems],
        } for f in reply.files],
    }


def render(report: dict) -> str:
    lines = []
    for f in report["files"]:
        name = f["path"] or f"inode {f['ino']}"
        for p in f["problems"]:
            lines.append(f"{name}: block {p['index']} ({p['block_id'][:12]}): {', '.join(p['states'])}; "
                         f"good replicas on {', '.join(p['good_nodes']) or 'no node'}"
                         f" (want {f['replication']})")
    summary = report["summary"]
    if summary:
        lines.append(" ".join(f"{k}={v}" for k, v in sorted(summary.items())))
    if not report["complete"]:
        lines.append("provisional: the leader has not heard from every storage node yet")
    lines.append("data AT RISK" if report["at_risk"] else "healthy")
    return "\n".join(lines)


def run(args) -> int:
    from cistern.metadata.nodes_client import NodesClient

    spec = cluster_spec.resolve(args.cluster)
    with NodesClient(list(spec.meta_addresses), timeout_s=fsck_timeout_s) as nodes:
        try:
            report = report_dict(nodes.fsck(args.path))
        except Unavailable:
            raise
        except CisternError as e:   # about the path: name it, as `cistern fs` does
            raise CisternError(e.errno, f"{args.path}: {e.message}") from None
    print(json.dumps(report, indent=2) if args.json else render(report))
    return 1 if report["at_risk"] else 0
