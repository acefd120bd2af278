"""Real mounts for tests: ``Mounted`` (one ``cistern mount`` child process)
and ``mounted_cluster`` (a cluster of real processes with a mount on it).

Every mount and process these start is gone when the ``with`` block ends,
even when the test fails inside it: ``Mounted.stop`` unmounts (lazily if
need be), reaps the child and kills it if it lingers; and the children die
with the test process (``core.procs``) if that is killed first.
"""

from __future__ import annotations

import contextlib
import os

from cistern.client.testing import free_port, storage_cluster, wait_nodes_live
from cistern.core.errors import CisternError

from .mount import MountProcess, is_mounted

__all__ = ["Mounted", "MountedCluster", "mounted_cluster", "NODES_ENV"]

default_block_size = 1 << 20
# Fast liveness, as the data path's integration tests use.
NODES_ENV = {
    "CISTERN_NODES_HEARTBEAT_INTERVAL_S": "0.2",
    "CISTERN_NODES_NODE_DEAD_AFTER_S": "3.0",
    "CISTERN_NODES_MONITOR_INTERVAL_S": "0.5",
}


class Mounted:
    """``cistern mount MOUNTPOINT --cluster CLUSTER --foreground -o ...`` as a
    child process: a context manager, or ``start()``/``stop()``.

    ``options``: ``-o`` items, e.g. ``("allow_other", "ro", "timeout=5")``;
    ``env``: added to the child's environment; ``log_path``: its output
    (default ``MOUNTPOINT.log`` beside the mountpoint); ``metrics=True`` (or
    a HOST:PORT) serves Prometheus metrics at ``metrics_address``.
    ``start()`` raises RuntimeError with the log's tail when the mount is
    not up within ``timeout_s``. Attributes: ``mountpoint``, ``proc``,
    ``metrics_address``, ``log_path``."""

    def __init__(self, cluster: str, mountpoint: str, *, options=(), env=None, log_path=None,
                 timeout_s: float = 30.0, metrics=False, log_level: str = "INFO"):
        self.mountpoint = os.path.abspath(os.fspath(mountpoint))
        self.cluster = os.fspath(cluster)
        self.options = tuple(options)
        self.timeout_s = timeout_s
        self.log_path = os.fspath(log_path) if log_path else self.mountpoint.rstrip("/") + ".log"
        if metrics is True:
            metrics = f"127.0.0.1:{free_port()}"
        self.metrics_address = metrics or None
        self._process = MountProcess(self.mountpoint, self.cluster, options=self.options,
                                     metrics_address=self.metrics_address, log_path=self.log_path,
                                     env=dict(env or {}), log_level=log_level, die_with_parent=True)

    @property
    def proc(self):
        return self._process.proc

    def start(self) -> "Mounted":
        os.makedirs(self.mountpoint, exist_ok=True)
        try:
            self._process.start(self.timeout_s)
        except CisternError as e:
            self._process.stop()
            raise RuntimeError(f"mount at {self.mountpoint} did not come up: {e.message}\n"
                               f"--- {self.log_path} ---\n{self.log_tail()}") from None
        return self

    def stop(self) -> int | None:
        """Unmount and reap the child; its exit status (0 after a clean unmount)."""
        return self._process.stop()

    def alive(self) -> bool:
        return self._process.alive()

    def mounted(self) -> bool:
        return is_mounted(self.mountpoint)

    def log_tail(self, n_bytes: int = 4000) -> str:
        return self._process.log_tail()[-n_bytes:]

    def path(self, *names) -> str:
        return os.path.join(self.mountpoint, *names)

    def __enter__(self) -> "Mounted":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MountedCluster:
    """What ``mounted_cluster`` yields: ``cluster`` (a StorageCluster),
    ``cluster_json`` (its path), ``mount`` (a started ``Mounted`` at
    tmp_path/'mnt'), ``node_ids``, and ``mount_again(path, options=())``
    for another mount of the same cluster (stopped with the rest)."""

    def __init__(self, tmp_path, cluster, cluster_json: str, env, options):
        self.tmp_path = tmp_path
        self.cluster = cluster
        self.cluster_json = cluster_json
        self.env = env
        self.options = tuple(options)
        self.mount: Mounted | None = None
        self.mounts: list[Mounted] = []
        self.node_ids: list[str] = []

    def mount_again(self, path, options=None, **kwargs) -> Mounted:
        m = Mounted(self.cluster_json, path, options=self.options if options is None else options,
                    env=self.env, **kwargs)
        self.mounts.append(m)
        return m.start()

    def client(self, **kwargs):
        """A root ``cistern.client.Client`` on the cluster (close it)."""
        from cistern.client import connect

        kwargs.setdefault("uid", 0)
        kwargs.setdefault("gid", 0)
        kwargs.setdefault("groups", [])
        return connect(self.cluster_json, **kwargs)

    def stop(self) -> None:
        errors = []
        for m in reversed(self.mounts):
            try:
                m.stop()
            except Exception as e:   # noqa: BLE001 - stop everything, then report
                errors.append(e)
        self.cluster.stop()
        if errors:
            raise errors[0]


@contextlib.contextmanager
def mounted_cluster(tmp_path, *, nodes: int = 3, options=(), block_size: int | None = None, env=None,
                    metrics: bool = False):
    """A StorageCluster (3 metad + ``nodes`` storage nodes, all live) with
    a mount at ``tmp_path/'mnt'``. ``options`` are the mount's ``-o``
    items (``allow_other`` is added when running as root, so tests can act
    as other users); ``env`` goes to every process. Yields a
    ``MountedCluster``; everything is stopped on exit."""
    import pathlib

    tmp_path = pathlib.Path(tmp_path)
    env = dict(NODES_ENV, **(env or {}))
    options = tuple(options)
    if os.getuid() == 0 and "allow_other" not in options:
        options = ("allow_other",) + options
    cluster = storage_cluster(tmp_path / "cluster", block_size=block_size or default_block_size, env=env)
    out = MountedCluster(tmp_path, cluster, cluster.meta.cluster_json(), env, options)
    try:
        out.node_ids = [f"n{i + 1}" for i in range(nodes)]
        for node_id in out.node_ids:
            cluster.start_node(node_id)
        if nodes:
            with out.client() as c:
                wait_nodes_live(c, out.node_ids)
        out.mount = out.mount_again(tmp_path / "mnt", metrics=metrics)
        yield out
    finally:
        out.stop()
