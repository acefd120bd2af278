"""A daemon started with core.procs.child_env dies with its parent, even when
the parent is SIGKILLed, and no Python code runs between fork and exec."""

import os
import signal
import subprocess
import sys
import time

import pytest

from cistern.metadata.proc_testing import cistern_command, free_port

pytestmark = pytest.mark.timeout(60)

PARENT = r"""
import subprocess, sys
from cistern.core import procs
child = subprocess.Popen(sys.argv[1:], env=procs.child_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
print(child.pid, flush=True)
child.wait()
"""


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] == "Z"
    except FileNotFoundError:
        return True


def test_a_daemon_dies_when_its_parent_is_killed(tmp_path):
    argv = cistern_command() + ["meta", "--id", "m1", "--listen", f"127.0.0.1:{free_port()}",
                                "--raft", f"127.0.0.1:{free_port()}", "--data", str(tmp_path / "m1")]
    parent = subprocess.Popen([sys.executable, "-P", "-c", PARENT, *argv], stdout=subprocess.PIPE)
    child = int(parent.stdout.readline())
    try:
        time.sleep(1.0)
        assert not _gone(child), "the daemon did not start"
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        deadline = time.monotonic() + 20
        while not _gone(child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(child), "the daemon outlived its killed parent"
    finally:
        if not _gone(child):
            os.kill(child, signal.SIGKILL)
