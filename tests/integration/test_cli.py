"""The command-line contract, end to end: `cistern up` starts real daemons,
writes cluster.json once a leader is elected, stops every child on SIGTERM,
and a second `cistern up` on the same directory brings the data back."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

CISTERN = os.path.join(os.path.dirname(sys.executable), "cistern")
pytestmark = pytest.mark.timeout(180)


class Up:
    """One `cistern up` process and its cluster.json."""

    def __init__(self, data, *extra):
        self.data = str(data)
        self.cluster_file = os.path.join(self.data, "cluster.json")
        self.process = subprocess.Popen([CISTERN, "up", "--data", self.data, *extra],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def wait_ready(self, timeout_s=60):
        deadline = time.monotonic() + timeout_s
        while not os.path.exists(self.cluster_file):
            assert self.process.poll() is None, self.process.stdout.read()
            assert time.monotonic() < deadline, "no cluster.json in time"
            time.sleep(0.1)
        with open(self.cluster_file) as f:
            return json.load(f)

    def stop(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()


def cistern(*args, cluster=None):
    env = dict(os.environ)
    if cluster:
        env["CISTERN_CLUSTER"] = cluster
    return subprocess.run([CISTERN, *args], env=env, capture_output=True, text=True, timeout=60)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes: only its parent has not reaped it.
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"


@pytest.fixture
def up(tmp_path):
    started = []

    def start(*extra, data=None):
        u = Up(data or tmp_path / "cluster", "--nodes", "0", *extra)
        started.append(u)
        return u

    yield start
    for u in started:
        u.stop()


def test_up_writes_cluster_json_and_status_reports_a_healthy_cluster(up):
    u = up()
    document = u.wait_ready()
    assert [m["id"] for m in document["meta"]] == ["m1", "m2", "m3"]
    assert all(m["pid"] and alive(m["pid"]) for m in document["meta"])
    result = cistern("status", "--json", cluster=u.cluster_file)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["healthy"] and summary["leader"] in {"m1", "m2", "m3"}
    assert summary["members_up"] == 3


def test_sigterm_stops_every_daemon_and_a_restart_keeps_the_namespace(up, tmp_path):
    first = up()
    document = first.wait_ready()
    assert cistern("fs", "mkdir", "-p", "/keep/me", cluster=first.cluster_file).returncode == 0
    assert cistern("fs", "touch", "/keep/me/file", cluster=first.cluster_file).returncode == 0
    assert first.stop() == 0
    assert not os.path.exists(first.cluster_file)
    assert not any(alive(m["pid"]) for m in document["meta"])

    second = up(data=tmp_path / "cluster")
    second.wait_ready()
    listing = cistern("fs", "ls", "/keep/me", cluster=second.cluster_file)
    assert listing.returncode == 0, listing.stderr
    assert listing.stdout.split() == ["file"]


def test_status_exits_nonzero_when_the_majority_is_gone(up):
    u = up()
    document = u.wait_ready()
    for member in document["meta"][1:]:
        os.kill(member["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while True:
        result = cistern("status", cluster=u.cluster_file)
        if result.returncode != 0 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert result.returncode == 1
    assert "NOT healthy" in result.stdout


def test_fs_errors_are_one_line_with_a_nonzero_exit(up):
    u = up()
    u.wait_ready()
    c = u.cluster_file
    cases = [
        (("fs", "mkdir", "/no/such/parent"), "No such file or directory"),
        (("fs", "rm", "/missing"), "No such file or directory"),
        (("fs", "mkdir", "/" + "x" * 300), "File name too long"),
        (("fsck", "/no/such/file"), "/no/such/file: "),
    ]
    for args, reason in cases:
        result = cistern(*args, cluster=c)
        assert result.returncode == 1, (args, result)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and reason in lines[0], (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert "No such file or directory" in lines[0] or "too long" in lines[0], lines
        assert "NOT_FOUND" not in lines[0] and "127.0.0.1" not in lines[0], lines
    assert cistern("fs", "mkdir", "/d", cluster=c).returncode == 0
    assert cistern("fs", "touch", "/d/f", cluster=c).returncode == 0
    result = cistern("fs", "rm", "/d", cluster=c)
    assert result.returncode == 1 and "Is a directory" in result.stderr
    assert cistern("fs", "rm", "-r", "/d", cluster=c).returncode == 0
    assert cistern("fs", "ls", "/", cluster=c).stdout.split() == []


def test_bad_usage_exits_2_and_a_missing_cluster_exits_1(tmp_path):
    result = cistern("fs", "frobnicate")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    env_free = cistern("status", "--cluster", str(tmp_path / "nope.json"))
    assert env_free.returncode == 1
    assert env_free.stderr.strip() == f"cistern status: cluster file not found: {tmp_path / 'nope.json'}"


def test_five_replicas_stay_healthy_with_two_down(up):
    u = up("--meta", "5")
    document = u.wait_ready()
    assert len(document["meta"]) == 5
    status = json.loads(cistern("status", "--json", cluster=u.cluster_file).stdout)
    leader = status["leader"]
    followers = [m for m in document["meta"] if m["id"] != leader]
    for member in followers[:2]:
        os.kill(member["pid"], signal.SIGKILL)
    assert cistern("fs", "mkdir", "/after-two-losses", cluster=u.cluster_file).returncode == 0
    result = cistern("status", "--json", cluster=u.cluster_file)
    assert result.returncode == 0, result.stdout
    summary = json.loads(result.stdout)
    assert summary["members_up"] == 3 and summary["members_total"] == 5


def test_sigterm_during_start_up_and_repeated_sigterms_still_stop_everything(up, tmp_path):
    # A handler that took a lock could deadlock against the main thread that
    # held it, so hammer the supervisor with signals at both stages.
    early = up(data=tmp_path / "early")
    time.sleep(0.3)
    early.process.send_signal(signal.SIGTERM)
    # On a loaded machine the signal can land before Python has installed the
    # handler: then the default action ends it before it started anything.
    assert early.process.wait(timeout=30) in (0, 1, -signal.SIGTERM)
    assert not os.path.exists(early.cluster_file)

    u = up(data=tmp_path / "late")
    document = u.wait_ready()
    for _ in range(20):
        u.process.send_signal(signal.SIGTERM)
        time.sleep(0.01)
    assert u.process.wait(timeout=30) == 0
    assert not any(alive(m["pid"]) for m in document["meta"])
