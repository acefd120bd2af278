"""Storage nodes for tests: in-process (``local_node``) or real processes
(``NodeCluster``).

``NodeCluster(tmpdir, n=3)`` starts n blockd processes on free loopback ports
(through ``server.main`` in ``python -P``, so the repository root never lands
on sys.path), waits until each answers Stat, and lets a test kill and restart
them. Every process it starts is stopped by ``stop_all()`` (also on context
exit), and killed by the kernel if the test process dies first.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from cistern.blockstore import store
from cistern.blockstore.client import BlockClient
from cistern.core.errors import CisternError
from cistern.core import procs
from cistern.metadata.proc_testing import ProcessGroup, free_port

start_timeout_s = 20.0
stop_grace_s = 5.0

_ENTRY = "import sys; from cistern.blockstore.server import main; sys.exit(main(sys.argv[1:]))"


def local_node(data_dir: str, node_id: str = "n1", **kwargs):
    """A started in-process ``NodeServer`` on a free loopback port (unsynced,
    no scrubber unless asked); the caller stops it."""
    from cistern.blockstore.server import NodeServer

    kwargs.setdefault("sync", False)
    kwargs.setdefault("scrub", False)
    server = NodeServer(node_id, f"127.0.0.1:{free_port()}", data_dir, **kwargs)
    server.start()
    return server


class NodeCluster(ProcessGroup):
    def __init__(self, tmpdir, n: int = 3, *, block_size_bytes: int | None = None,
                 log_level: str = "INFO", start: bool = True, extra_args=()):
        assert n >= 1
        self.tmpdir = str(tmpdir)
        self.log_level = log_level
        self.block_size_bytes = block_size_bytes
        self.extra_args = list(extra_args)
        self.nodes = []
        for i in range(n):
            node_id = f"n{i + 1}"
            self.nodes.append({"id": node_id, "rpc": f"127.0.0.1:{free_port()}",
                               "metrics": f"127.0.0.1:{free_port()}",
                               "data": os.path.join(self.tmpdir, node_id),
                               "log": os.path.join(self.tmpdir, f"{node_id}.log"), "pid": None})
        self.procs: list[subprocess.Popen | None] = [None] * n
        self.client = BlockClient()
        if start:
            self.start()

    @property
    def addresses(self) -> list[str]:
        return [node["rpc"] for node in self.nodes]

    def _argv(self, i: int) -> list[str]:
        me = self.nodes[i]
        argv = [sys.executable, "-P", "-c", _ENTRY, "--log-level", self.log_level, "--id", me["id"],
                "--data", me["data"], "--listen", me["rpc"], "--metrics", me["metrics"]]
        if self.block_size_bytes:
            argv += ["--block-size", str(self.block_size_bytes)]
        return argv + self.extra_args

    def start(self, timeout_s: float = start_timeout_s) -> None:
        for i in range(len(self.nodes)):
            self.restart(i, wait=False)
        for i in range(len(self.nodes)):
            self.wait_serving(i, timeout_s)

    def restart(self, i: int, *, wait: bool = True) -> None:
        proc = self.procs[i]
        assert proc is None or proc.poll() is not None, f"{self.nodes[i]['id']} is still running"
        me = self.nodes[i]
        os.makedirs(me["data"], exist_ok=True)
        with open(me["log"], "ab") as log:
            self.procs[i] = subprocess.Popen(self._argv(i), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=self.tmpdir,
                                             start_new_session=True, env=procs.child_env())
        me["pid"] = self.procs[i].pid
        if wait:
            self.wait_serving(i)

    def wait_serving(self, i: int, timeout_s: float = start_timeout_s) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            proc = self.procs[i]
            if proc.poll() is not None:
                raise RuntimeError(f"{self.nodes[i]['id']} exited with {proc.returncode}:\n{self.log_tail(i)}")
            try:
                return self.client.stat(self.nodes[i]["rpc"], timeout_s=1.0)
            except CisternError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.nodes[i]['id']} not serving:\n{self.log_tail(i)}") from None
                time.sleep(0.05)

    def stop_all(self) -> list:
        """SIGTERM every node, SIGKILL whatever outlives the grace period;
        returns the exit codes."""
        codes = self._terminate_all()
        self.client.close()
        return codes

    def _log_path(self, i: int) -> str:
        return self.nodes[i]["log"]


class StorageCluster:
    """A whole cluster of real processes for integration tests: a
    ``MetaCluster`` (3 metad) plus ``cistern node`` processes started on
    demand. ``stop()`` ends every process; nothing outlives the test process
    (children die with it, see core/procs)."""

    def __init__(self, tmp, *, block_size: int, env: dict | None = None, node_log_level: str = "WARNING"):
        from cistern.metadata.proc_testing import MetaCluster

        self.tmp = tmp
        self.block_size = block_size
        self.node_log_level = node_log_level
        self.meta = MetaCluster(tmp / "meta", 3, env=env, log_level="WARNING")
        self.addresses = ",".join(self.meta.addresses)
        self.nodes: dict[str, dict] = {}

    def start_node(self, node_id: str, extra_args=()) -> str:
        """Start (or restart, on the same data and port) node ``node_id``
        (with ``extra_args`` for ``cistern node``); returns its address."""
        from cistern.metadata.proc_testing import cistern_command

        node = self.nodes.get(node_id) or {"address": f"127.0.0.1:{free_port()}", "data": str(self.tmp / node_id)}
        argv = cistern_command() + ["--log-level", self.node_log_level, "node", "--id", node_id,
                                    "--data", node["data"], "--listen", node["address"],
                                    "--meta", self.addresses, "--block-size", str(self.block_size), *extra_args]
        with open(self.tmp / f"{node_id}.log", "ab") as log:
            node["proc"] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                            start_new_session=True, env=procs.child_env())
        self.nodes[node_id] = node
        return node["address"]

    def cluster_json(self) -> str:
        """Write ``cluster.json`` listing the metadata replicas and the nodes
        started so far, as ``cistern up`` does (clients on this host then
        read those nodes' blocks straight from their files); return its path."""
        path = self.meta.cluster_json()
        with open(path, encoding="utf-8") as f:
            doc = json.load(f)
        doc["nodes"] = [{"id": node_id, "rpc": node["address"], "pid": node["proc"].pid, "data": node["data"]}
                        for node_id, node in self.nodes.items()]
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        return path

    def kill_node(self, node_id: str) -> None:
        proc = self.nodes[node_id]["proc"]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def address(self, node_id: str) -> str:
        return self.nodes[node_id]["address"]

    def block_file(self, node_id: str, block_id: bytes) -> str:
        return store.block_file(self.nodes[node_id]["data"], block_id)

    def block_ids_on(self, node_id: str) -> set:
        root = os.path.join(self.nodes[node_id]["data"], "blocks")
        return {bytes.fromhex(f) for _, _, files in os.walk(root) for f in files if len(f) == 32}

    def stop(self) -> None:
        for node in self.nodes.values():
            proc = node.get("proc")
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        self.meta.stop_all()
