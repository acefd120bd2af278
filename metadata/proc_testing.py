"""Real metad processes for integration and fault tests.

``MetaCluster(tmpdir, n=3)`` starts n ``cistern meta`` processes on free
loopback ports, waits for a leader, and lets a test kill, restart and inspect
them. Every process it starts is killed by ``stop_all()`` (also on context
exit and at interpreter exit), and by the kernel if the test process dies
without cleaning up, so no test leaves a daemon behind.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import time
import weakref

import grpc

from cistern.core import procs
from cistern.core.errors import CisternError, Unavailable
from cistern.core.ports import free_port  # noqa: F401  (re-exported for the test helpers)
from cistern.metadata.proto import metadata_pb2 as pb
from cistern.metadata.proto import metadata_pb2_grpc as pb_grpc
from cistern.metadata.service import status_dict

start_timeout_s = 30.0
stop_grace_s = 5.0

_live_clusters: "weakref.WeakSet[MetaCluster]" = weakref.WeakSet()


def cistern_command() -> list[str]:
    """The installed ``cistern`` console script of this interpreter's venv."""
    script = os.path.join(os.path.dirname(sys.executable), "cistern")
    if not os.path.exists(script):
        raise RuntimeError(f"the cistern console script is not installed at {script}")
    return [script]


class ProcessGroup:
    """Base of the test clusters of real processes: ``with`` stops them all
    (``stop_all``), and ``log_tail(i)`` shows the end of process i's log
    (``_log_path``) for a failing test's message."""

    procs: list   # subclasses keep one subprocess.Popen (or None) per process

    def stop_all(self):
        raise NotImplementedError

    def kill(self, i: int, sig: int = signal.SIGKILL, timeout_s: float = stop_grace_s) -> int | None:
        """Send sig to process i and wait (up to timeout_s) for it to exit;
        returns its exit code (None if it is still running)."""
        proc = self.procs[i]
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(sig)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return None

    def alive(self, i: int) -> bool:
        proc = self.procs[i]
        return proc is not None and proc.poll() is None

    def _terminate_all(self) -> list:
        """SIGTERM every process, SIGKILL whatever outlives the grace
        period; returns their exit codes."""
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + stop_grace_s
        for proc in self.procs:
            if proc is None:
                continue
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        return [proc.returncode if proc else None for proc in self.procs]

    def _log_path(self, i: int) -> str:
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop_all()

    def log_tail(self, i: int, n_bytes: int = 4000) -> str:
        try:
            with open(self._log_path(i), "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - n_bytes))
                return f.read().decode(errors="replace")
        except OSError:
            return ""


class MetaCluster(ProcessGroup):
    def __init__(self, tmpdir, n: int = 3, *, start: bool = True, log_level: str = "INFO",
                 env: dict | None = None):
        assert n >= 1
        self.tmpdir = str(tmpdir)
        self.log_level = log_level
        self.env = dict(os.environ, **(env or {}))
        self.members = []
        for i in range(n):
            node_id = f"m{i + 1}"
            self.members.append({
                "id": node_id,
                "rpc": f"127.0.0.1:{free_port()}",
                "raft": f"127.0.0.1:{free_port()}",
                "metrics": f"127.0.0.1:{free_port()}",
                "data": os.path.join(self.tmpdir, node_id),
                "log": os.path.join(self.tmpdir, f"{node_id}.log"),
                "pid": None,
            })
        self.procs: list[subprocess.Popen | None] = [None] * n
        self._channels: dict[str, grpc.Channel] = {}
        _live_clusters.add(self)
        if start:
            self.start()

    # -- addresses -------------------------------------------------------

    @property
    def addresses(self) -> list[str]:
        return [m["rpc"] for m in self.members]

    def cluster_json(self) -> str:
        """Write ``cluster.json`` (as ``cistern up`` does) and return its path."""
        path = os.path.join(self.tmpdir, "cluster.json")
        doc = {"version": 1, "meta": [{k: m[k] for k in ("id", "rpc", "raft", "metrics", "pid", "data")}
                                      for m in self.members], "nodes": []}
        with open(path, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1)
        return path

    # -- processes -------------------------------------------------------

    def _argv(self, i: int) -> list[str]:
        me = self.members[i]
        peers = ",".join(f"{m['id']}={m['raft']}/{m['rpc']}" for m in self.members if m is not me)
        argv = cistern_command() + ["--log-level", self.log_level, "meta", "--id", me["id"],
                                    "--listen", me["rpc"], "--raft", me["raft"],
                                    "--data", me["data"], "--metrics", me["metrics"]]
        if peers:
            argv += ["--peers", peers]
        return argv

    def start(self, timeout_s: float = start_timeout_s) -> None:
        for i in range(len(self.members)):
            self.restart(i)
        self.wait_leader(timeout_s)

    def restart(self, i: int) -> None:
        """Start replica i (again); it must not be running."""
        proc = self.procs[i]
        assert proc is None or proc.poll() is not None, f"m{i + 1} is still running"
        me = self.members[i]
        os.makedirs(me["data"], exist_ok=True)
        with open(me["log"], "ab") as log:
            # A new session, so a signal a test sends to one daemon reaches only it.
            self.procs[i] = subprocess.Popen(self._argv(i), stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=procs.child_env(self.env),
                                             cwd=self.tmpdir, start_new_session=True)
        me["pid"] = self.procs[i].pid

    def stop_all(self) -> None:
        """SIGTERM everything, then SIGKILL whatever outlives the grace period."""
        self._terminate_all()
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()

    def _log_path(self, i: int) -> str:
        return self.members[i]["log"]

    # -- inspection ------------------------------------------------------

    def status(self, i: int, timeout_s: float = 2.0) -> dict:
        """Replica i's Status; raises CisternError when it does not answer."""
        address = self.members[i]["rpc"]
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = grpc.insecure_channel(address)
        try:
            reply = pb_grpc.MetadataStub(channel).Status(pb.StatusRequest(), timeout=timeout_s)
        except grpc.RpcError as e:
            raise Unavailable(f"{address}: {e.code().name}") from None
        return status_dict(reply)

    def statuses(self) -> list[dict | None]:
        out = []
        for i in range(len(self.members)):
            try:
                out.append(self.status(i, 1.0) if self.alive(i) else None)
            except CisternError:
                out.append(None)
        return out

    def leader_index(self) -> int | None:
        """The index of the replica that says it leads, or None."""
        for i, status in enumerate(self.statuses()):
            if status and status.get("role") == "leader":
                return i
        return None

    def wait_leader(self, timeout_s: float = start_timeout_s, *, exclude: int | None = None) -> int:
        """Wait for a leader (other than replica ``exclude``); its index."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for i, proc in enumerate(self.procs):
                if proc is not None and proc.poll() is not None and proc.returncode not in (0, -9, -15):
                    raise RuntimeError(f"m{i + 1} exited with {proc.returncode}:\n{self.log_tail(i)}")
            i = self.leader_index()
            if i is not None and i != exclude:
                return i
            time.sleep(0.1)
        raise TimeoutError("no metadata leader within %.0fs; logs:\n%s" % (
            timeout_s, "\n".join(f"--- m{i + 1}\n{self.log_tail(i, 1500)}" for i in range(len(self.members)))))

    def wait_converged(self, timeout_s: float = 20.0) -> list[dict]:
        """Wait until every running replica reports the same applied index;
        returns their statuses, so the caller can compare digests (raises
        TimeoutError otherwise)."""
        deadline = time.monotonic() + timeout_s
        statuses: list = []
        while time.monotonic() < deadline:
            statuses = [s for i, s in enumerate(self.statuses()) if self.alive(i)]
            if statuses and all(s is not None for s in statuses):
                marks = {s.get("applied_index") for s in statuses}
                if len(marks) == 1:
                    return statuses
            time.sleep(0.1)
        raise TimeoutError(f"replicas did not converge: {statuses}")

    def client(self, **kwargs):
        from cistern.metadata.client import MetaClient

        return MetaClient(self.addresses, **kwargs)


@atexit.register
def _kill_leftovers() -> None:
    for cluster in list(_live_clusters):
        for proc in cluster.procs:
            if proc is not None and proc.poll() is None:
                proc.kill()
