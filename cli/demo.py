"""``cistern demo``: start a local cluster, show what it does, stop it.

What ``./setup.sh demo`` runs on a fresh machine. Every step prints the
equivalent command a user would type."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from cistern.cli.supervisor import CLUSTER_FILE, cistern_command

ready_timeout_s = 90.0


def register(commands) -> None:
    p = commands.add_parser("demo", help="start a local cluster, walk through it, stop it")
    p.add_argument("--data", default=None, metavar="DIR", help="cluster directory (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the data directory afterwards")
    p.set_defaults(run=run)


def run(args) -> int:
    data = args.data or tempfile.mkdtemp(prefix="cistern-demo-")
    command = cistern_command()
    print(f"$ cistern up --data {data} --meta 3 --nodes 3 &", flush=True)
    up = subprocess.Popen([command, "up", "--data", data, "--meta", "3", "--nodes", "3"])
    cluster_file = os.path.join(data, CLUSTER_FILE)
    try:
        _wait_for(cluster_file, up)
        env = dict(os.environ, CISTERN_CLUSTER=cluster_file)
        sample = os.path.join(data, "sample.bin")
        with open(sample, "wb") as f:
            f.write(os.urandom(10 * 1024 * 1024))
        steps = [
            ["status"],
            ["fs", "mkdir", "-p", "/demo/reports/2026"],
            ["fs", "touch", "/demo/reports/2026/q1.csv", "/demo/reports/2026/q2.csv"],
            ["fs", "put", sample, "/demo/sample.bin"],
            ["fs", "ls", "-l", "/demo", "/demo/reports/2026"],
            ["fs", "mv", "/demo/reports/2026/q2.csv", "/demo/reports/q2-final.csv"],
            ["fs", "stat", "/demo/reports/q2-final.csv"],
            ["fs", "get", "/demo/sample.bin", sample + ".back"],
            ["fsck", "/demo"],
            ["fs", "rm", "/demo/reports"],
            ["fs", "rm", "-r", "/demo"],
            ["fs", "ls", "/"],
        ]
        for step in steps:
            print(f"\n$ cistern {' '.join(step)}", flush=True)
            subprocess.run([command, *step], env=env, check=False)
        same = _same_bytes(sample, sample + ".back")
        print(f"\n(the 10 MiB file came back {'byte for byte' if same else 'DIFFERENT'}; "
              "the `rm /demo/reports` above fails on purpose: a directory needs -r)")
        return 0
    finally:
        print(f"\n$ kill -TERM {up.pid}   # Ctrl-C stops `cistern up` cleanly", flush=True)
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=30)
        if not args.keep and not args.data:
            shutil.rmtree(data, ignore_errors=True)


def _wait_for(path: str, up: subprocess.Popen) -> None:
    deadline = time.monotonic() + ready_timeout_s
    while not os.path.exists(path):
        if up.poll() is not None:
            print(f"cistern demo: the cluster failed to start (exit {up.returncode})", file=sys.stderr)
            raise SystemExit(1)
        if time.monotonic() > deadline:
            raise SystemExit(f"cistern demo: no cluster after {ready_timeout_s:.0f} s")
        time.sleep(0.2)


def _same_bytes(a: str, b: str) -> bool:
    try:
        with open(a, "rb") as fa, open(b, "rb") as fb:
            return fa.read() == fb.read()
    except OSError:
        return False
