"""Task isolation with real cgroups, namespaces and mounts (CI runs as root):
limits hold, a task sees and reaches nothing but its own, writes nothing but
its sandbox, and every process, cgroup and sandbox is gone afterwards.

Tasks run /usr/bin/python3 and /bin/sh (the venv's interpreter lives under
/root, which the task's uid cannot read)."""

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest

from cistern.scheduler import cgroups, isolation
from cistern.scheduler.proto import scheduler_pb2 as pb

pytestmark = pytest.mark.timeout(120)

PY = "/usr/bin/python3"


class Tasks:
    """Launches tasks for one test under a fresh agent id and makes sure
    nothing of them outlives it."""

    def __init__(self, work_dir):
        self.agent_id = f"test-{uuid.uuid4().hex[:8]}"
        self.work_dir = str(work_dir)
        self.handles = []

    def launch(self, argv, *, cpus=0.5, mem_bytes=128 << 20, network=False, inputs=(), env=None, **kwargs):
        task_id = f"t{len(self.handles)}-{uuid.uuid4().hex[:6]}"
        spec = pb.TaskSpec(task_id=task_id, argv=argv, env=env or {}, network=network,
                           resources=pb.Resources(cpus=cpus, mem_bytes=mem_bytes),
                           inputs=[ib for _, ib in inputs])
        handle = isolation.launch(spec, agent_id=self.agent_id, work_dir=self.work_dir, inputs=inputs, **kwargs)
        self.handles.append(handle)
        return handle

    def sh(self, script, **kwargs):
        return self.launch(["/bin/sh", "-c", script], **kwargs)

    def py(self, code, **kwargs):
        return self.launch([PY, "-c", textwrap.dedent(code)], **kwargs)

    def run(self, handle, timeout_s=60):
        result = handle.wait(timeout_s)
        assert result is not None, f"task {handle.task_id} still running after {timeout_s}s"
        return result

    def finish(self):
        for handle in self.handles:
            handle.kill()
            assert handle.wait(30) is not None
            handle.cleanup()
        isolation.sweep(self.agent_id, self.work_dir)
        isolation.shutdown()

    def leftovers(self) -> list[str]:
        """Processes, cgroups and sandboxes of this test still around."""
        left = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    if self.work_dir.encode() in f.read():
                        left.append(f"process {pid}")
            except OSError:
                pass
        layout = cgroups.detect()
        left += [d for d in cgroups.agent_dirs(layout, "cistern", self.agent_id) if os.path.exists(d)]
        sandboxes = os.path.join(self.work_dir, "sandboxes")
        left += [f"sandbox {n}" for n in (os.listdir(sandboxes) if os.path.isdir(sandboxes) else [])]
        return left


@pytest.fixture
def tasks(tmp_path):
    t = Tasks(tmp_path / "agent")
    try:
        yield t
    finally:
        t.finish()
    assert t.leftovers() == []


def _block_input(tmp_path, data: bytes, mode=0o644):
    path = tmp_path / "blocks" / "ab" / ("ab" * 16)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.chmod(path, mode)
    ib = pb.InputBlock(block_id=bytes.fromhex("ab" * 16), path="/data/words.txt", file_offset=8192, length=len(data))
    return str(path), ib


def test_task_runs_as_nobody_in_its_own_sandbox_with_the_contract_environment(tasks):
    h = tasks.py("""
        import json, os, socket
        print(json.dumps({"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups(), "cwd": os.getcwd(),
                          "home": os.environ["HOME"], "out": os.environ["CISTERN_OUTPUT"],
                          "task": os.environ["CISTERN_TASK_ID"], "hostname": socket.gethostname(),
                          "mine": os.environ.get("MINE")}))
        open(os.path.join(os.environ["CISTERN_OUTPUT"], "result.txt"), "w").write("hello")
    """, cpus=0.25, env={"MINE": "yes", "HOME": "/root"})
    assert h.wait_started(30)
    with open(os.path.join(h.cgroup.dirs["cpu"], "cpu.cfs_quota_us") if h.cgroup.version == 1 else
              os.path.join(h.cgroup.dir, "cpu.max")) as f:
        assert f.read().split()[0] == "25000"
    r = tasks.run(h)
    assert (r.state, r.reason, r.exit_code) == ("finished", "", 0), r
    seen = json.loads(r.stdout_tail)
    assert (seen["uid"], seen["gid"], seen["groups"]) == (65534, 65534, [])
    assert seen["cwd"] == seen["home"] == isolation.SANDBOX_MOUNT     # HOME is the sandbox, whatever env said
    assert seen["out"] == isolation.SANDBOX_MOUNT + "/out" and seen["mine"] == "yes"
    assert seen["task"] == seen["hostname"] == h.task_id
    with open(os.path.join(h.output_dir(), "result.txt")) as f:
        assert f.read() == "hello"
    h.cleanup()
    assert not os.path.exists(h.sandbox) and not os.path.exists(h.task_dir) and not h.cgroup.exists()


def test_a_task_allocating_past_its_memory_limit_is_killed_for_memory(tasks):
    h = tasks.py("""
        chunks = []
        for _ in range(64):
            chunks.append(b"x" * (8 << 20))
        print("survived", flush=True)
    """, mem_bytes=64 << 20)
    r = tasks.run(h)
    assert (r.state, r.reason) == ("failed", "memory limit"), r
    assert r.oom_kills >= 1 and b"survived" not in r.stdout_tail


def test_a_fork_bomb_stops_at_its_pids_limit_and_is_killed_cleanly(tasks):
    h = tasks.py("""
        import os, time
        while True:
            try:
                os.fork()
            except OSError:
                time.sleep(0.05)
    """, pids_max=32, mem_bytes=512 << 20)
    assert h.wait_started(30)
    deadline = time.monotonic() + 30
    while h.cgroup.pids_limit_hits() == 0:
        assert time.monotonic() < deadline, "the bomb never reached its pids limit"
        time.sleep(0.05)
    assert h.usage()["pids"] <= 32 and len(h.cgroup.procs()) <= 32
    assert h.poll() is None
    assert h.kill()
    r = tasks.run(h)
    assert (r.state, r.reason) == ("killed", "killed") and r.pids_limit_hits > 0, r
    assert h.cgroup.procs() == set()


def test_a_task_sees_only_its_own_processes(tasks):
    other = tasks.sh("sleep 60")
    assert other.wait_started(30)
    h = tasks.py("""
        import os
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
        print(pids)
        print(open("/proc/1/cmdline").read().split("\\0")[0])
    """)
    r = tasks.run(h)
    assert r.state == "finished", r
    pids, init = r.stdout_tail.decode().splitlines()
    assert pids == "[1]" and init == PY                  # its own command is pid 1, and alone
    assert other.poll() is None                           # the other task is untouched


def test_a_task_cannot_reach_the_network_unless_it_asks(tasks):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)
    listener.settimeout(0)
    port = listener.getsockname()[1]
    code = f"""
        import socket, sys
        try:
            socket.create_connection(("127.0.0.1", {port}), timeout=5).close()
            print("connected")
        except OSError as e:
            print("refused", e)
            sys.exit(3)
    """
    try:
        r = tasks.run(tasks.py(code))
        assert (r.exit_code, r.stdout_tail.split()[0]) == (3, b"refused"), r
        with pytest.raises(BlockingIOError):
            listener.accept()                            # nothing ever reached the host's port
        allowed = tasks.run(tasks.py(code, network=True))
        assert (allowed.state, allowed.stdout_tail.strip()) == ("finished", b"connected"), allowed
    finally:
        listener.close()


def test_a_task_cannot_write_outside_its_sandbox(tasks):
    marker = f"cistern-iso-{uuid.uuid4().hex}"
    h = tasks.sh(f"""
        for p in /tmp/{marker} /var/tmp/{marker} /dev/shm/{marker}; do echo x > $p && echo private:$p; done
        for p in /{marker} /work/{marker} /etc/{marker} /sys/fs/cgroup/{marker}; do
            if echo x > $p 2>/dev/null; then echo WROTE:$p; else echo refused:$p; fi
        done
        echo kept > $HOME/{marker} && echo sandbox-ok
    """)
    r = tasks.run(h)
    out = r.stdout_tail.decode()
    assert "WROTE" not in out and out.count("refused:") == 4 and out.count("private:") == 3, out
    assert "sandbox-ok" in out
    for host_dir in ("/tmp", "/var/tmp", "/dev/shm", "/", "/work", "/etc"):
        assert not os.path.exists(os.path.join(host_dir, marker)), host_dir
    with open(os.path.join(h.sandbox, marker)) as f:
        assert f.read() == "kept\n"


def test_input_blocks_are_readable_and_not_writable(tasks, tmp_path):
    data = b"the quick brown fox\n" * 100
    source, ib = _block_input(tmp_path, data, mode=0o666)   # even a world-writable block file stays read-only
    h = tasks.sh("""
        echo "$CISTERN_INPUT_FILE $CISTERN_INPUT_OFFSET $CISTERN_INPUT_LENGTH"
        wc -c < "$CISTERN_INPUT"
        echo more >> "$CISTERN_INPUT" 2>/dev/null && echo APPENDED || echo append-refused
        rm -f "$CISTERN_INPUT" 2>/dev/null && echo REMOVED || echo rm-refused
        echo "$CISTERN_INPUTS"
    """, inputs=[(source, ib)])
    r = tasks.run(h)
    lines = r.stdout_tail.decode().splitlines()
    assert lines[:4] == [f"/data/words.txt 8192 {len(data)}", str(len(data)), "append-refused", "rm-refused"], lines
    described = json.loads(lines[4])
    assert described == [{"path": isolation.SANDBOX_MOUNT + "/input/0", "file": "/data/words.txt", "offset": 8192,
                          "length": len(data), "block_id": "ab" * 16}]
    with open(source, "rb") as f:
        assert f.read() == data


def test_kill_kills_children_and_grandchildren(tasks):
    h = tasks.sh("(sleep 300 & setsid sleep 301 & wait) & sleep 302 & wait")
    assert h.wait_started(30)
    deadline = time.monotonic() + 10
    while len(h.cgroup.procs()) < 5:
        assert time.monotonic() < deadline, h.cgroup.procs()
        time.sleep(0.02)
    pids = h.cgroup.procs()
    assert h.kill()
    r = tasks.run(h)
    assert (r.state, r.reason) == ("killed", "killed"), r
    for pid in pids:
        assert isolation.shim.start_ticks(pid) == -1, f"process {pid} survived the kill"


def test_stdout_is_capped_on_disk_and_its_tail_reported(tasks):
    h = tasks.py("""
        import sys
        for i in range(400000):
            sys.stdout.write(f"{i:09d}\\n")
        sys.stderr.write("done\\n")
    """, log_bytes_max=64 << 10)
    r = tasks.run(h)
    assert r.state == "finished", r
    for name in ("stdout", "stdout.1"):
        assert os.path.getsize(os.path.join(h.task_dir, name)) <= 64 << 10
    assert len(r.stdout_tail) == isolation.tail_bytes_max
    assert r.stdout_tail.endswith(b"000399999\n") and r.stderr_tail == b"done\n"
    lines = r.stdout_tail.split(b"\n")[1:-1]
    assert [int(x) for x in lines] == list(range(400000 - len(lines), 400000))   # the newest, in order


def test_a_command_that_cannot_run_fails_with_reason_bad_command(tasks):
    r = tasks.run(tasks.launch(["/no/such/program", "x"]))
    assert (r.state, r.reason, r.exit_code) == ("failed", "bad command", 127), r
    assert "/no/such/program" in r.message
    r = tasks.run(tasks.launch(["no-such-program-in-path"]))
    assert (r.state, r.reason, r.exit_code) == ("failed", "bad command", 127), r
    r = tasks.run(tasks.launch(["sh", "-c", "exit 7"]))                # found through PATH, as the task's user
    assert (r.state, r.reason, r.exit_code) == ("failed", "non-zero exit", 7), r


LAUNCHER = r"""
import json, sys
from cistern.scheduler import isolation
from cistern.scheduler.proto import scheduler_pb2 as pb
out = []
for task_id, script in (("ends", "sleep 2; echo done; exit 3"), ("runs", "sleep 300 & sleep 301 & wait")):
    spec = pb.TaskSpec(task_id=task_id, argv=["/bin/sh", "-c", script], resources=pb.Resources(cpus=0.2, mem_bytes=64 << 20))
    h = isolation.launch(spec, agent_id=sys.argv[1], work_dir=sys.argv[2])
    assert h.wait_started(30)
    out.append(h.checkpoint())
print(json.dumps(out))
"""


def test_tasks_outlive_their_agent_and_a_new_agent_recovers_them(tasks):
    """The launching process exits (an agent crash): its tasks keep running;
    handles recovered from checkpoints see one end by itself and kill the other."""
    done = subprocess.run([sys.executable, "-P", "-c", LAUNCHER, tasks.agent_id, tasks.work_dir],
                          capture_output=True, timeout=60, check=True)
    ends, runs = (isolation.recover(cp) for cp in json.loads(done.stdout))
    tasks.handles += [ends, runs]
    assert ends.poll() is None and runs.poll() is None
    r = ends.wait(30)
    assert (r.state, r.exit_code, r.stdout_tail) == ("failed", 3, b"done\n"), r
    assert runs.poll() is None
    assert runs.kill()
    assert runs.wait(30).state == "killed"
    assert isolation.sweep(tasks.agent_id, tasks.work_dir, keep={"ends", "runs"}) == []


def test_bad_specs_are_refused_with_clear_errors(tasks):
    from cistern.core.errors import CisternError

    for argv, task_id, message in ((["true"], "../escape", "task id"), ([], "ok", "empty argv")):
        spec = pb.TaskSpec(task_id=task_id, argv=argv, resources=pb.Resources(cpus=1, mem_bytes=64 << 20))
        with pytest.raises(CisternError, match=message):
            isolation.launch(spec, agent_id=tasks.agent_id, work_dir=tasks.work_dir)
    h = tasks.sh("true")
    spec = pb.TaskSpec(task_id=h.task_id, argv=["true"], resources=pb.Resources(cpus=1, mem_bytes=64 << 20))
    with pytest.raises(CisternError, match="already exists"):
        isolation.launch(spec, agent_id=tasks.agent_id, work_dir=tasks.work_dir)
    assert tasks.run(h).state == "finished"


def test_a_task_runs_the_same_when_the_launcher_is_unavailable(tasks, monkeypatch):
    """The fallback: one interpreter per shim, started by the agent itself."""
    monkeypatch.setattr(isolation._LAUNCHER, "start", lambda task_dir: None)
    h = tasks.sh("echo $CISTERN_TASK_ID; exit 4")
    assert h._proc is not None
    r = tasks.run(h)
    assert (r.state, r.exit_code, r.stdout_tail) == ("failed", 4, h.task_id.encode() + b"\n"), r


def test_a_task_inherits_no_ignored_or_blocked_signal(tasks):
    """The shim ignores HUP, INT and TERM, Python ignores PIPE and XFSZ; a
    task must start with every signal at its default (a shell pipeline
    relies on SIGPIPE, a supervisor on SIGTERM)."""
    r = tasks.run(tasks.launch(["grep", "-E", "^Sig(Ign|Blk)", "/proc/self/status"]))
    assert r.stdout_tail.decode().split() == ["SigBlk:", "0" * 16, "SigIgn:", "0" * 16], r


def test_a_task_sees_only_harmless_devices(tasks):
    h = tasks.sh("ls /dev; echo x > /dev/null && echo null-writable; head -c 8 /dev/urandom | wc -c; "
                 "echo y > /dev/shm/f && cat /dev/shm/f; touch /dev/new 2>/dev/null || echo dev-read-only")
    r = tasks.run(h)
    lines = r.stdout_tail.decode().split()
    assert lines[:11] == ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom",
                          "zero"], lines                     # no kmsg, no disks
    assert lines[11:] == ["null-writable", "8", "y", "dev-read-only"], lines


RECOVERING = r"""
import json, sys
from cistern.scheduler import isolation
from cistern.scheduler.proto import scheduler_pb2 as pb
spec = pb.TaskSpec(task_id="later", argv=["/bin/sh", "-c", "sleep 300"], resources=pb.Resources(cpus=0.2, mem_bytes=64 << 20))
print(json.dumps(isolation.launch(spec, agent_id=sys.argv[1], work_dir=sys.argv[2]).checkpoint()))
"""


def test_wait_started_is_woken_by_the_shim_not_by_polling(tasks, tmp_path, monkeypatch):
    """started.json and exit.json wake wait_started through inotify: with
    its safety look pushed past its timeout it still answers at once for a
    task that runs, one that ends at once, one that never execs, one whose
    setup fails, and one launched by an agent that then died (recovered)."""
    monkeypatch.setattr(isolation, "start_safety_poll_s", 120.0)

    def wait_started(handle):
        began = time.monotonic()
        started = handle.wait_started(60)        # a missed wake-up would sleep all of it and raise
        return started, time.monotonic() - began

    assert wait_started(tasks.sh("sleep 300"))[0] is True
    instant = tasks.sh("exit 0")
    started, took = wait_started(instant)
    assert started is True and took < 30
    assert tasks.run(instant).state == "finished"
    bad = tasks.launch(["/no/such/program"])
    assert wait_started(bad)[0] is False
    assert tasks.run(bad).reason == "bad command"
    source, ib = _block_input(tmp_path, b"x" * 10)
    os.unlink(source)                             # the bind of its input fails: it never starts
    broken = tasks.launch(["true"], inputs=[(source, ib)])
    assert wait_started(broken)[0] is False
    assert tasks.run(broken).reason == "setup failed"
    done = subprocess.run([sys.executable, "-P", "-c", RECOVERING, tasks.agent_id, tasks.work_dir],
                          capture_output=True, timeout=60, check=True)
    recovered = isolation.recover(json.loads(done.stdout))
    tasks.handles.append(recovered)
    assert wait_started(recovered)[0] is True
    assert recovered.poll() is None


def test_wait_started_polls_where_inotify_is_unavailable(tasks, monkeypatch):
    dead = isolation._DirEvents()
    dead._failed = True
    monkeypatch.setattr(isolation, "_DIR_EVENTS", dead)
    h = tasks.sh("sleep 300")
    assert h.wait_started(60) is True
    assert tasks.run(tasks.launch(["/no/such/program"])).reason == "bad command"


def test_a_shim_that_ended_is_reaped_not_left_a_zombie(tasks):
    """The launcher ignores SIGCHLD, so the kernel reaps its shims."""
    h = tasks.sh("exit 0")
    assert tasks.run(h).state == "finished"
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{h.shim_pid}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{h.shim_pid}"), open(f"/proc/{h.shim_pid}/status").read()[:200]
