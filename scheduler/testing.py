"""A whole cluster with task agents, for the scheduler's real-process tests
and its benchmark.

``SchedCluster(tmp, nodes=3, block_size=64 KiB)`` is a ``StorageCluster``
(3 metad, which host the master, and ``cistern node`` processes, which host
blockd and the agent) with the master's and the nodes' timings shortened
(``TEST_ENV``), so a killed agent is declared unreachable in seconds, not
tens of seconds. ``start()`` starts every node and waits until each storage
node is live and each agent registered with the master. ``stop()`` ends
every process (also on context exit).

Helpers: ``lines_block`` / ``write_lines_file`` make text whose lines end
exactly on block boundaries (so a per-block word count sums to the file's);
``wait_for`` polls a predicate; ``sched_status`` is the master's status as
a dict.
"""

from __future__ import annotations

import json
import os
import random
import time

from cistern.blockstore.testing import StorageCluster

__all__ = ["SchedCluster", "TEST_ENV", "lines_block", "write_lines_file", "wait_for"]

start_timeout_s = 60.0
poll_interval_s = 0.1

# Shorter than the defaults so fault tests take seconds: storage nodes heartbeat
# every 0.2 s, agents every 0.5 s and are unreachable after 2 s of silence.
TEST_ENV = {
    "CISTERN_NODES_HEARTBEAT_INTERVAL_S": "0.2",
    "CISTERN_NODES_NODE_DEAD_AFTER_S": "3.0",
    "CISTERN_NODES_MONITOR_INTERVAL_S": "0.2",
    "CISTERN_NODES_ORPHAN_GRACE_S": "30.0",
    "CISTERN_SCHED_AGENT_HEARTBEAT_INTERVAL_S": "0.5",
    "CISTERN_SCHED_AGENT_UNREACHABLE_AFTER_S": "2.0",
    "CISTERN_SCHED_AGENT_REREGISTER_GRACE_S": "3.0",
}


def wait_for(predicate, what: str, timeout_s: float = start_timeout_s, interval_s: float = poll_interval_s):
    """Poll ``predicate`` until it returns something true (returned); an
    OSError or CisternError from it counts as not yet. Raises
    AssertionError naming ``what`` after ``timeout_s``."""
    from cistern.core.errors import CisternError

    deadline = time.monotonic() + timeout_s
    last = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except (OSError, CisternError) as e:
            last = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}" + (f" ({last})" if last else ""))
        time.sleep(interval_s)


class SchedCluster(StorageCluster):
    def __init__(self, tmp, *, nodes: int = 3, block_size: int = 64 << 10, env: dict | None = None,
                 node_log_level: str = "INFO", agentless=()):
        """``agentless``: node ids that serve blocks but run no agent
        (``cistern node --no-agent``)."""
        super().__init__(tmp, block_size=block_size, env=dict(TEST_ENV, **(env or {})),
                         node_log_level=node_log_level)
        self.node_ids = [f"n{i + 1}" for i in range(nodes)]
        self.agentless = set(agentless)

    def __enter__(self) -> "SchedCluster":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Every process, then what an agent killed without a successor left
        in its runtime dir on tmpfs (tasks, sandboxes, the dir itself)."""
        from cistern.scheduler import isolation

        super().stop()
        for node_id, node in self.nodes.items():
            work_dir = os.path.join(node["data"], "agent")
            run_dir = isolation.runtime_dir(work_dir, None)
            if run_dir != work_dir:
                isolation.sweep(node_id, run_dir)
                isolation.remove_runtime_dir(work_dir)

    def start(self, timeout_s: float = start_timeout_s) -> "SchedCluster":
        for node_id in self.node_ids:
            self.start_node(node_id, ["--no-agent"] if node_id in self.agentless else [])
        self.wait_nodes(self.node_ids, timeout_s)
        self.wait_agents([n for n in self.node_ids if n not in self.agentless], timeout_s)
        return self

    def client(self, **kwargs):
        from cistern.client import connect

        kwargs.setdefault("uid", 0)
        kwargs.setdefault("gid", 0)
        kwargs.setdefault("groups", [])
        return connect(self.addresses, **kwargs)

    def live_nodes(self) -> set:
        from cistern.metadata.nodes_client import NodesClient

        nodes = NodesClient(self.meta.addresses, timeout_s=5.0)
        try:
            return {n.node_id for n in nodes.nodes().nodes if n.full_report}
        finally:
            nodes.close()

    def wait_nodes(self, node_ids, timeout_s: float = start_timeout_s) -> None:
        want = set(node_ids)
        wait_for(lambda: want <= self.live_nodes(), f"storage nodes {sorted(want)} live", timeout_s)

    def sched_status(self, timeout_s: float = 5.0) -> dict:
        """The master's status (SchedStatus.json) as a dict."""
        from cistern.scheduler.client import master_status

        return json.loads(master_status(self.meta.addresses, timeout_s=timeout_s).json or "{}")

    def agents(self, timeout_s: float = 5.0) -> dict:
        """{node id: AgentInfo} of the agents the master knows."""
        from cistern.scheduler.client import master_status

        return {a.node_id: a for a in master_status(self.meta.addresses, timeout_s=timeout_s).agents}

    def wait_agents(self, node_ids, timeout_s: float = start_timeout_s) -> None:
        want = set(node_ids)

        def registered():
            agents = self.agents()
            return all(n in agents and agents[n].state == "registered" for n in want)
        wait_for(registered, f"agents on {sorted(want)} registered", timeout_s)

    def node_log(self, node_id: str) -> str:
        try:
            with open(self.tmp / f"{node_id}.log", "rb") as f:
                return f.read().decode(errors="replace")
        except OSError:
            return ""

    def logs_tail(self, n_bytes: int = 3000) -> str:
        """The end of every node's and metad's log, for a failing test's message."""
        parts = [f"--- {node_id}\n{self.node_log(node_id)[-n_bytes:]}" for node_id in self.nodes]
        parts += [f"--- m{i + 1}\n{self.meta.log_tail(i, n_bytes)}" for i in range(len(self.meta.members))]
        return "\n".join(parts)


def lines_block(block_size: int, rng: random.Random) -> bytes:
    """``block_size`` bytes of words and newlines, ending in a newline, so a
    block boundary never splits a word or a line."""
    out = bytearray()
    while True:
        line = b" ".join(bytes(rng.choice(b"abcdefghij") for _ in range(rng.randint(1, 9)))
                         for _ in range(rng.randint(1, 12))) + b"\n"
        room = block_size - len(out)
        if len(line) >= room:
            # finish the block with one line of exactly the room left
            out += b"x" * (room - 1) + b"\n"      # room >= 1: a line is only added when shorter
            return bytes(out)
        out += line


def write_lines_file(client, path: str, blocks: int, block_size: int, *, replication: int | None = None,
                     seed: int = 1) -> bytes:
    """Write ``blocks`` blocks of ``lines_block`` text to ``path`` (making
    its directory); the bytes."""
    parent = path.rsplit("/", 1)[0]
    if parent:
        client.makedirs(parent, exist_ok=True)
    rng = random.Random(seed)
    data = b"".join(lines_block(block_size, rng) for _ in range(blocks))
    client.write_file(path, data, replication=replication)
    return data
