"""gRPC's I/O model is chosen before grpc is imported (core/grpc_env.py):
each check runs a fresh interpreter, since gRPC reads the choice once."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cistern.core import grpc_env

pytestmark = pytest.mark.timeout(60)

# A module of each package that imports grpc at its top, plus the packages
# whose first import is something else.
FIRST_IMPORTS = [
    "cistern.metadata.client", "cistern.metadata.server", "cistern.blockstore.client",
    "cistern.blockstore.server", "cistern.client", "cistern.scheduler.client",
    "cistern.fuse.mount", "cistern.bench.meta_bench", "cistern.cli.main", "cistern.core.rpc",
]


def run(code: str, **env_changes) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in (grpc_env.ENV_VAR, grpc_env.BACKUP_POLL_VAR)}
    for key, value in env_changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=50, cwd="/")


@pytest.mark.parametrize("module", FIRST_IMPORTS)
def test_importing_any_cistern_package_first_chooses_iomgr_before_grpc_is_imported(module):
    # apply() refuses once grpc is imported, so the variable being set proves
    # it was set before: where gRPC reads it.
    done = run(f"import os, {module}, grpc; print(os.environ.get('GRPC_EXPERIMENTS'))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == grpc_env.IOMGR


def test_iomgr_comes_with_a_backup_poller_far_below_grpcs_five_seconds_unless_one_is_set():
    show = "import os, cistern.metadata.client; print(os.environ.get('GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS'))"
    done = run(show)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == int(grpc_env.BACKUP_POLL_MS) <= 100
    done = run(show, GRPC_CLIENT_CHANNEL_BACKUP_POLL_INTERVAL_MS="1000")
    assert done.stdout.strip() == "1000"
    done = run(show, GRPC_EXPERIMENTS="")   # gRPC's defaults chosen: nothing of ours
    assert done.stdout.strip() == "None"


def test_a_choice_already_in_the_environment_is_kept_even_an_empty_one():
    for preset in ("", "-event_engine_client"):
        done = run("import os, cistern.metadata.client; print(repr(os.environ['GRPC_EXPERIMENTS']))",
                   GRPC_EXPERIMENTS=preset)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == repr(preset)


def test_a_process_that_imported_grpc_first_is_left_alone():
    done = run("import os, grpc, cistern.metadata.client; print(os.environ.get('GRPC_EXPERIMENTS'))")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "None"
    environ, modules = {}, {"grpc": object()}
    assert grpc_env.apply(environ, modules) is False and environ == {}
    assert grpc_env.apply(environ, {}) is True
    assert environ == {grpc_env.ENV_VAR: grpc_env.IOMGR, grpc_env.BACKUP_POLL_VAR: grpc_env.BACKUP_POLL_MS}


def test_the_installed_grpc_knows_the_experiments_and_still_serves():
    # A grpcio that dropped these names would log "Unknown experiment" at
    # start-up of every cistern process: this fails first.
    code = """
import cistern.core.rpc as rpc
from concurrent.futures import ThreadPoolExecutor
import grpc
server = grpc.server(ThreadPoolExecutor(2))
handler = grpc.method_handlers_generic_handler("t", {"Echo": grpc.unary_unary_rpc_method_handler(
    lambda request, context: request[::-1], lambda b: b, lambda b: b)})
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port("127.0.0.1:0")
server.start()
channel = rpc.insecure_channel(f"127.0.0.1:{port}", 1 << 20)
print(channel.unary_unary("/t/Echo", lambda b: b, lambda b: b)(b"abc", timeout=10).decode())
channel.close()
server.stop(None)
"""
    done = run(code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "cba"
    assert "experiment" not in done.stderr.lower(), done.stderr
