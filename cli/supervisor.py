"""The local all-in-one supervisor behind ``cistern up``: starts the daemons
of a one-machine cluster as child processes, writes ``cluster.json`` once a
leader is elected, and stops every child on SIGINT/SIGTERM.

A data directory remembers its layout (ids and ports) in ``layout.json``, so
a second ``cistern up`` on the same directory restarts the same cluster with
its data: Raft members are known by address, so the addresses must not move.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

from cistern.core import procs
from cistern.core.errors import CisternError
from cistern.core.ports import free_port

log = logging.getLogger(__name__)

LAYOUT_FILE = "layout.json"
CLUSTER_FILE = "cluster.json"
ready_timeout_s = 60.0
stop_grace_s = 10.0
poll_interval_s = 0.2


@dataclass
class Child:
    role: str              # "meta" or "node"
    id: str
    addresses: dict        # rpc, raft (meta), metrics
    data: str
    process: subprocess.Popen | None = None


def cistern_command() -> str:
    """The installed ``cistern`` console script beside this interpreter. Never
    ``python -m``: that would put the working directory on sys.path, where our
    fuse/ folder would shadow fusepy."""
    candidate = os.path.join(os.path.dirname(sys.executable), "cistern")
    if os.access(candidate, os.X_OK):
        return candidate
    found = shutil.which("cistern")
    if not found:
        raise CisternError(errno.ENOENT, "the cistern command is not installed (run ./setup.sh)")
    return found


class LocalCluster:
    def __init__(self, data_dir: str, meta_count: int, node_count: int, log_level: str = "WARNING"):
        if meta_count < 1 or meta_count % 2 == 0:
            raise CisternError(errno.EINVAL, f"--meta must be an odd number >= 1, got {meta_count}")
        if node_count < 0:
            raise CisternError(errno.EINVAL, f"--nodes must be >= 0, got {node_count}")
        self.data_dir = os.path.abspath(data_dir)
        self.log_level = log_level
        self.children = self._load_or_make_layout(meta_count, node_count)

    # -- layout ------------------------------------------------------------

    def _load_or_make_layout(self, meta_count: int, node_count: int) -> list[Child]:
        os.makedirs(self.data_dir, exist_ok=True)
        path = os.path.join(self.data_dir, LAYOUT_FILE)
        if os.path.exists(path):
            return self._load_layout(path, meta_count, node_count)
        children = [Child("meta", f"m{i + 1}",
                          {"rpc": f"127.0.0.1:{free_port()}", "raft": f"127.0.0.1:{free_port()}",
                           "metrics": f"127.0.0.1:{free_port()}"},
                          os.path.join(self.data_dir, f"m{i + 1}"))
                    for i in range(meta_count)]
        children += [Child("node", f"n{i + 1}",
                           {"rpc": f"127.0.0.1:{free_port()}", "metrics": f"127.0.0.1:{free_port()}"},
                           os.path.join(self.data_dir, f"n{i + 1}"))
                     for i in range(node_count)]
        _write_json_atomically(path, {"version": 1, "children": [
            {"role": c.role, "id": c.id, "addresses": c.addresses, "data": c.data} for c in children]})
        return children

    def _load_layout(self, path: str, meta_count: int, node_count: int) -> list[Child]:
        try:
            with open(path, encoding="utf-8") as f:
                document = json.load(f)
            children = [Child(c["role"], c["id"], c["addresses"], c["data"]) for c in document["children"]]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CisternError(errno.EINVAL, f"{path} is damaged: {e}") from None
        metas = sum(c.role == "meta" for c in children)
        nodes = sum(c.role == "node" for c in children)
        if (metas, nodes) != (meta_count, node_count):
            raise CisternError(errno.EINVAL,
                               f"{self.data_dir} holds a cluster of {metas} metadata replicas and {nodes} nodes; "
                               f"start it with --meta {metas} --nodes {nodes}, or use a new --data directory")
        return children

    # -- processes -----------------------------------------------------------

    def start(self) -> None:
        command = cistern_command()
        metas = [c for c in self.children if c.role == "meta"]
        for child in metas:
            os.makedirs(child.data, exist_ok=True)
            peers = ",".join(f"{p.id}={p.addresses['raft']}/{p.addresses['rpc']}" for p in metas if p is not child)
            argv = [command, "--log-level", self.log_level, "meta", "--id", child.id,
                    "--listen", child.addresses["rpc"], "--raft", child.addresses["raft"],
                    "--data", child.data, "--metrics", child.addresses["metrics"]]
            if peers:
                argv += ["--peers", peers]
            child.process = self._spawn(argv, child)
        meta_rpcs = ",".join(c.addresses["rpc"] for c in metas)
        for child in self.children:
            if child.role != "node":
                continue
            os.makedirs(child.data, exist_ok=True)
            argv = [command, "--log-level", self.log_level, "node", "--id", child.id,
                    "--listen", child.addresses["rpc"], "--data", child.data,
                    "--metrics", child.addresses["metrics"], "--meta", meta_rpcs]
            child.process = self._spawn(argv, child)

    def _spawn(self, argv: list[str], child: Child) -> subprocess.Popen:
        log_path = os.path.join(child.data, f"{child.role}.log")
        with open(log_path, "ab") as out:
            return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    env=procs.child_env(), close_fds=True)

    def wait_ready(self, timeout_s: float = ready_timeout_s, should_stop=lambda: False) -> dict:
        """Wait until a leader is elected and a majority answers; returns the
        leader's status. Raises CisternError(ETIMEDOUT), CisternError(EIO)
        naming a child that exited and its log, or CisternError(ECANCELED)
        as soon as ``should_stop()`` says so (a signal during start-up)."""
        from cistern.metadata.client import MetaClient

        metas = [c for c in self.children if c.role == "meta"]
        deadline = time.monotonic() + timeout_s
        with MetaClient([c.addresses["rpc"] for c in metas], timeout_s=timeout_s) as client:
            while time.monotonic() < deadline:
                if should_stop():
                    raise CisternError(errno.ECANCELED, "interrupted while starting; stopped every daemon")
                self._check_children_alive()
                answers = [_status_or_none(client, c.addresses["rpc"]) for c in metas]
                up = [a for a in answers if a is not None]
                leaders = [a for a in up if a.get("role") == "leader"]
                if leaders and len(up) * 2 > len(metas):
                    return leaders[0]
                time.sleep(poll_interval_s)
        raise CisternError(errno.ETIMEDOUT, f"no leader elected within {timeout_s:.0f} s (see logs under {self.data_dir})")

    def _check_children_alive(self) -> None:
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                raise CisternError(errno.EIO, f"{child.id} exited with status {child.process.returncode}; "
                                              f"see {os.path.join(child.data, child.role + '.log')}")

    def write_cluster_json(self) -> str:
        document = {"version": 1, "meta": [], "nodes": []}
        for child in self.children:
            entry = {"id": child.id, **child.addresses, "pid": child.process.pid if child.process else None,
                     "data": child.data}
            document["meta" if child.role == "meta" else "nodes"].append(entry)
        path = os.path.join(self.data_dir, CLUSTER_FILE)
        _write_json_atomically(path, document)
        return path

    def exited_children(self) -> list[Child]:
        return [c for c in self.children if c.process is not None and c.process.poll() is not None]

    def stop(self) -> None:
        """SIGTERM every child, wait for a clean exit, SIGKILL stragglers.
        cluster.json goes first, so no script finds a cluster that is going."""
        try:
            os.unlink(os.path.join(self.data_dir, CLUSTER_FILE))
        except FileNotFoundError:
            pass
        running = [c.process for c in self.children if c.process is not None and c.process.poll() is None]
        for process in running:
            process.terminate()
        deadline = time.monotonic() + stop_grace_s
        for process in running:
            try:
                process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in %.0f s; killing it", process.pid, stop_grace_s)
                process.kill()
                process.wait()


def _status_or_none(client, address: str) -> dict | None:
    try:
        return client.status(address, timeout_s=1.0)
    except (CisternError, OSError):
        return None


def _write_json_atomically(path: str, document: dict) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(document, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
