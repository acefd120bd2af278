"""``cistern status``: the cluster's health at a glance; exit 0 only when a
leader exists and a majority of the metadata replicas answer."""

from __future__ import annotations

import json

from cistern.core import cluster as cluster_spec
from cistern.core.errors import CisternError

status_timeout_s = 2.0


def register(commands) -> None:
    p = commands.add_parser("status", help="leader, term, members and their indexes; exit 0 when healthy")
    p.add_argument("--cluster", default=None, help="cluster.json path or comma-separated metadata addresses")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(run=run)


def collect(addresses: list[str]) -> dict:
    """Ask every known replica for its status; the membership is the union of
    the addresses given and the members the replicas report."""
    from cistern.metadata.client import MetaClient

    known = list(dict.fromkeys(addresses))
    answers: dict[str, dict | None] = {}
    with MetaClient(known, timeout_s=status_timeout_s) as client:
        pending = list(known)
        while pending:
            address = pending.pop(0)
            try:
                answers[address] = client.status(address, timeout_s=status_timeout_s)
            except (CisternError, OSError):
                answers[address] = None
                continue
            for member in answers[address].get("members", []):
                rpc = member.get("rpc")
                if rpc and rpc not in answers and rpc not in pending:
                    pending.append(rpc)
    summary = summarize(answers)
    summary["storage"] = _storage(known) if summary["leader"] else None
    summary["scheduler"] = _scheduler(known) if summary["leader"] else None
    summary["healthy"] = summary["healthy"] and not (summary["storage"] or {}).get("missing_blocks")
    return summary


def _storage(addresses: list[str]) -> dict | None:
    """The leader's view of the storage nodes, or None when it cannot say."""
    from cistern.metadata.nodes_client import NodesClient

    try:
        with NodesClient(addresses, timeout_s=status_timeout_s) as client:
            reply = client.nodes()
    except (CisternError, OSError):
        return None
    nodes = [{"id": n.node_id, "address": n.address, "capacity_bytes": n.capacity_bytes,
              "used_bytes": n.used_bytes, "blocks": n.block_count,
              "last_heartbeat_s_ago": round(n.last_heartbeat_s_ago, 1)} for n in reply.nodes]
    return {
        "nodes": nodes,
        "capacity_bytes": sum(n["capacity_bytes"] for n in nodes),
        "used_bytes": sum(n["used_bytes"] for n in nodes),
        "under_replicated_blocks": reply.under_replicated_blocks,
        "missing_blocks": reply.missing_blocks,
        "pending_replications": reply.pending_replications,
        "settled": reply.settled,
    }


def _scheduler(addresses: list[str]) -> dict | None:
    """The scheduler master's view (tasks by state, agents, frameworks), or
    None when it cannot say."""
    from cistern.scheduler.client import master_status

    try:
        reply = master_status(addresses, timeout_s=status_timeout_s)
    except (CisternError, OSError):
        return None
    return json.loads(reply.json) if reply.json else {"tasks_by_state": dict(reply.tasks_by_state)}


def summarize(answers: dict[str, dict | None]) -> dict:
    """Pure: the health verdict from each address's status (None = no answer)."""
    up = {a: s for a, s in answers.items() if s is not None}
    leaders = [s for s in up.values() if s.get("role") == "leader"]
    # With two replicas claiming leadership (a stale one in an old term), the
    # higher term is the real one.
    leader = max(leaders, key=lambda s: s.get("term", 0)) if leaders else None
    members = [{"address": a, "up": s is not None, **(_member_fields(s) if s else {})}
               for a, s in answers.items()]
    majority = len(up) * 2 > len(answers)
    return {
        "healthy": leader is not None and majority,
        "leader": leader.get("id") if leader else None,
        "leader_rpc": leader.get("leader_rpc") if leader else None,
        "term": leader.get("term") if leader else max((s.get("term", 0) for s in up.values()), default=None),
        "members_total": len(answers),
        "members_up": len(up),
        "members": sorted(members, key=lambda m: (m.get("id") or "", m["address"])),
    }


def _member_fields(s: dict) -> dict:
    fields = {k: s.get(k) for k in ("id", "role", "term", "commit_index", "last_log_index", "digest")}
    # Raft's applied index counts pysyncobj's own entries too, so it matches
    # the commit index on a quiet cluster; the state's applied index (which
    # the digest belongs to) counts only entries that carried operations.
    fields["applied_index"] = s.get("raft_applied_index", s.get("applied_index"))
    fields["state_applied_index"] = s.get("applied_index")
    return fields


def render(summary: dict) -> str:
    lines = [
        f"leader:  {summary['leader'] or 'none'}" + (f" ({summary['leader_rpc']})" if summary['leader_rpc'] else ""),
        f"term:    {summary['term']}",
        f"members: {summary['members_up']}/{summary['members_total']} up",
        "",
        f"{'ID':<6} {'ROLE':<10} {'ADDRESS':<22} {'COMMIT':>8} {'APPLIED':>8}  DIGEST",
    ]
    for m in summary["members"]:
        if m["up"]:
            lines.append(f"{m.get('id') or '?':<6} {m.get('role') or '?':<10} {m['address']:<22} "
                         f"{m.get('commit_index', ''):>8} {m.get('applied_index', ''):>8}  {(m.get('digest') or '')[:16]}")
        else:
            lines.append(f"{'?':<6} {'down':<10} {m['address']:<22}")
    lines += _render_storage(summary.get("storage"))
    lines += _render_scheduler(summary.get("scheduler"))
    lines += ["", "healthy" if summary["healthy"] else "NOT healthy: " + _why_unhealthy(summary)]
    return "\n".join(lines)


def _why_unhealthy(summary: dict) -> str:
    if summary["leader"] is None:
        return "no leader"
    if summary["members_up"] * 2 <= summary["members_total"]:
        return "no majority up"
    return f"{summary['storage']['missing_blocks']} blocks missing"


def _render_storage(storage: dict | None) -> list[str]:
    if storage is None:
        return []
    gib = 1 << 30
    lines = ["", f"storage: {len(storage['nodes'])} nodes, {storage['used_bytes'] / gib:.1f} of "
                 f"{storage['capacity_bytes'] / gib:.1f} GiB used; {storage['under_replicated_blocks']} "
                 f"under-replicated, {storage['missing_blocks']} missing blocks"]
    for n in storage["nodes"]:
        lines.append(f"  {n['id']:<6} {n['address']:<22} {n['blocks']:>8} blocks  "
                     f"{n['used_bytes'] / gib:>7.2f} GiB  heartbeat {n['last_heartbeat_s_ago']} s ago")
    return lines


def _render_scheduler(sched: dict | None) -> list[str]:
    if sched is None:
        return []
    by_state = sched.get("tasks_by_state") or {}
    tasks = ", ".join(f"{n} {state.removeprefix('TASK_').lower()}" for state, n in sorted(by_state.items()))
    agents = sched.get("agents") or []
    live = sum(1 for a in agents if a.get("state") == "registered")
    frameworks = sched.get("frameworks") or []
    return ["", f"scheduler: tasks {tasks or 'none'}; agents {live} registered of {len(agents)}; "
                f"frameworks {sum(1 for f in frameworks if f.get('connected'))} connected of {len(frameworks)}"]


def run(args) -> int:
    spec = cluster_spec.resolve(args.cluster)
    summary = collect(list(spec.meta_addresses))
    print(json.dumps(summary, indent=2) if args.json else render(summary))
    return 0 if summary["healthy"] else 1
