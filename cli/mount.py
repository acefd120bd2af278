"""``cistern mount MNT`` and ``cistern umount MNT``: the FUSE mount.

``cistern mount`` without ``--foreground`` starts itself again with it, in a
new session, logging to ``--log-file``, and returns once the kernel lists
the mount (exit 0) or the child failed (its one-line reason, exit 1): it
never forks a process that already has gRPC threads.
"""

from __future__ import annotations

import os
import tempfile


def register(commands) -> None:
    p = commands.add_parser("mount", help="mount the cluster at MNT (FUSE)")
    p.add_argument("mountpoint", metavar="MNT")
    p.add_argument("--cluster", default=None,
                   help="cluster.json path or metadata addresses (default: $CISTERN_CLUSTER)")
    p.add_argument("--foreground", "-f", action="store_true", help="serve in the foreground until unmounted")
    p.add_argument("-o", dest="options", action="append", default=[], metavar="OPT[,OPT...]",
                   help="mount options: allow_other, ro, attr_timeout=S (1), entry_timeout=S (1), "
                        "negative_timeout=S (0), timeout=S (30: a cluster call's limit), attr_cache=S "
                        "(attr_timeout), block_size=BYTES, read_ahead_kb=KB (4096), "
                        "no_default_permissions, linearizable_attrs (attribute misses pass a read barrier), "
                        "async_create=0|1 (1: creates in a directory this mount is filling are answered at "
                        "once and committed in batches; durable at fsync of the file or directory), "
                        "and libfuse 2's others")
    p.add_argument("--metrics", default=None, metavar="HOST:PORT", help="serve Prometheus metrics here")
    p.add_argument("--log-file", default=None, metavar="PATH",
                   help="where a background mount logs (default: a file in the temp directory)")
    p.set_defaults(run=run_mount)

    u = commands.add_parser("umount", help="unmount a Cistern mount (lazily if it is busy or dead)")
    u.add_argument("mountpoint", metavar="MNT")
    u.set_defaults(run=run_umount)


def run_mount(args) -> int:
    from cistern.core.cluster import resolve
    from cistern.fuse.mount import MountProcess, serve

    cluster = args.cluster or os.environ.get("CISTERN_CLUSTER")
    resolve(cluster)   # a missing or damaged cluster file is reported here, in the foreground
    if args.foreground:
        return serve(args.mountpoint, cluster, args.options, args.metrics)
    log_path = args.log_file or os.path.join(
        tempfile.gettempdir(), f"cistern-mount.{os.getuid()}.{os.path.abspath(args.mountpoint).strip('/').replace('/', '_') or 'root'}.log")
    child = MountProcess(args.mountpoint, cluster if not os.path.exists(cluster or "") else os.path.abspath(cluster),
                         options=args.options, metrics_address=args.metrics, log_path=log_path,
                         log_level=args.log_level, die_with_parent=False)
    child.start()   # a CisternError becomes cli.main's one-line message and exit 1
    print(f"cistern mount: {child.mountpoint} mounted (pid {child.proc.pid}, log {log_path})")
    return 0


def run_umount(args) -> int:
    from cistern.fuse.mount import unmount

    unmount(args.mountpoint)
    return 0
