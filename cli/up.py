"""``cistern up``: a whole local cluster in the foreground."""

from __future__ import annotations

import signal
import sys
import time

from cistern.core import procs


def register(commands) -> None:
    p = commands.add_parser("up", help="run a local cluster in the foreground (Ctrl-C stops it)")
    p.add_argument("--data", required=True, metavar="DIR", help="cluster data directory (reused on restart)")
    p.add_argument("--meta", type=int, default=3, help="metadata replicas (odd; default 3)")
    p.add_argument("--nodes", type=int, default=3, help="storage nodes (default 3; 0 for metadata only)")
    p.add_argument("--mount", default=None, metavar="MNT",
                   help="also mount the cluster at MNT once it is ready (unmounted when it stops)")
    p.add_argument("--mount-options", default="", metavar="OPT[,OPT...]",
                   help="-o options for --mount (see cistern mount --help)")
    p.set_defaults(run=run)


def run(args) -> int:
    from cistern.cli.supervisor import LocalCluster

    stop: list[int] = []
    # Signals only append to a list: the main thread does the stopping, in
    # order. (Setting an Event from a handler can deadlock: the handler runs
    # on the main thread, which may hold that Event's lock inside wait().)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda signum, frame: stop.append(signum))
    cluster = LocalCluster(args.data, args.meta, args.nodes, args.log_level.upper())
    mount = None
    try:
        cluster.start()
        leader = cluster.wait_ready(should_stop=lambda: bool(stop))
        path = cluster.write_cluster_json()
        print(f"cistern up: ready: {args.meta} metadata replicas, {args.nodes} storage nodes, leader {leader.get('id')} "
              f"(term {leader.get('term')}); cluster file {path}", flush=True)
        if args.mount:
            mount = _mount(args, cluster, path)
            print(f"cistern up: mounted at {mount.mountpoint} (log {mount.log_path})", flush=True)
        while not stop:
            time.sleep(procs.signal_poll_interval_s)
            if mount is not None and not mount.alive():
                print(f"cistern up: the mount at {mount.mountpoint} exited with status {mount.proc.returncode}",
                      file=sys.stderr, flush=True)
                mount.stop()
                mount = None
            for child in cluster.exited_children():
                if not getattr(child, "reported", False):
                    child.reported = True
                    print(f"cistern up: {child.id} exited with status {child.process.returncode}", flush=True)
            if len(cluster.exited_children()) == len(cluster.children):
                print("cistern up: every daemon has exited", file=sys.stderr, flush=True)
                return 1
        return 0
    finally:
        if mount is not None:
            mount.stop()   # before the cluster, so nothing is left writing into a dead one
        cluster.stop()
        print("cistern up: stopped", flush=True)


def _mount(args, cluster, cluster_json: str):
    """The mount at ``args.mount`` as a supervised child: it dies with us."""
    import os

    from cistern.fuse.mount import MountProcess

    if args.nodes == 0:
        print("cistern up: warning: no storage nodes, so files in the mount cannot hold data", file=sys.stderr)
    mount = MountProcess(args.mount, cluster_json, options=[args.mount_options],
                         log_path=os.path.join(cluster.data_dir, "mount.log"), log_level=args.log_level.upper())
    return mount.start()
