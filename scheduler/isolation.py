"""Run one task in isolation on this machine, and find it again after an
agent restart.

``launch(spec, agent_id=, work_dir=, inputs=[(source_path, InputBlock)])``
returns a ``TaskHandle`` as soon as the task's shim (``shim.py``) is
started; ``handle.wait_started()`` says when the command was exec'd,
``poll()``/``wait()`` give its ``TaskResult`` once it has ended,
``kill()`` ends it, ``cleanup()`` removes its cgroup and sandbox after its
output was collected. ``handle.checkpoint()`` is a JSON-able dict;
``recover(checkpoint)`` gives a handle to the same task in a new agent
process (the task keeps running while no agent watches it).

What a task gets (every guarantee is enforced by the kernel, not by trust):

* cgroup ``<controller>/cistern/<agent_id>/<task_id>`` (``cgroups.py``): a
  CFS quota of ``resources.cpus`` cpus, a hard memory limit of
  ``resources.mem_bytes`` with no swap, ``pids_max`` processes. An OOM kill
  in it ends the whole task with reason "memory limit".
* new pid (its command is pid 1 and /proc shows only its processes), mount,
  ipc, uts (hostname = task id) and, unless ``spec.network``, network
  namespaces (an empty one with only ``lo``, up: it reaches nothing else).
* uid/gid ``nobody`` (default), no supplementary groups, no capabilities,
  no_new_privs.
* its file system: everything read-only and nosuid, except its sandbox
  (cwd and HOME, at ``shim.SANDBOX_MOUNT``, a fresh directory it owns,
  holding ``out/`` for outputs and ``input/<n>``, each input bound
  read-only) and private tmpfs at /tmp, /var/tmp and /dev/shm (charged to
  its memory limit, gone with it); a read-only /dev of null, zero, full,
  random, urandom, tty; its own /proc. Host files it may read stay
  readable (read-only): there is no private root image.
* signals at their defaults, none blocked; only fds 0-2 (stdin /dev/null).
* environment: PATH, HOME, TMPDIR, LANG, USER, then ``spec.env`` and
  ``extra_env``, then the ``CISTERN_*`` variables of the scheduler contract
  (``task_env``), which win.
* stdout/stderr in files of the task dir (outside the sandbox), each kept to
  the newest ``log_bytes_max`` (plus one rotated file); results carry tails
  of at most ``tail_bytes_max``.

Errors: ``launch`` raises ``CisternError`` — EINVAL for a bad spec (task id
unsafe as a path or cgroup name, empty argv, no cpus or memory), EEXIST for
a task id already on this agent, ENOTSUP when this machine cannot isolate
(not root, no cgroup controllers), EIO when the cgroup cannot be made.
A command that cannot be exec'd is not an exception: its result is FAILED
with reason "bad command".

Shims: a warm launcher process per agent process forks them (``shim.py``;
``shutdown()`` stops it); when it cannot, an interpreter per shim.
Threads: a ``TaskHandle`` may be used from several threads; the first
``wait_started`` starts one reader thread of the process's inotify
instance (``_DirEvents``), which wakes the waiters.
Durability: the task dir's files are written atomically but not fsynced;
they survive an agent crash, not a machine crash (nor does the task).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import pwd
import re
import select
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass

from cistern.core.errors import CisternError
from cistern.scheduler import cgroups, shim
from cistern.scheduler import limits as sched_limits

# -- limits and defaults of isolation ---------------------------------------------
pids_max_default = 1024
log_bytes_max_default = 1 << 20      # per stream on disk (plus one rotated file)
tail_bytes_max = sched_limits.output_tail_max_bytes
tmpfs_bytes_max = 1 << 30            # each private tmpfs (its pages count against the memory limit anyway)
task_id_length_max = 128
start_timeout_s = 30.0               # shim started -> command exec'd, at most
kill_timeout_s = 10.0
shim_exit_wait_s = 5.0               # exit.json written -> shim gone, at most
shim_wait_step_s = 1.0               # a pidfd wait wakes at the shim's exit anyway
poll_interval_min_s = 0.002
poll_interval_max_s = 0.05
start_poll_interval_s = 0.003        # wait_started looks this often at first: launch latency is a target
start_quick_s = 0.2                  # (p50 < 100 ms) ... and backs off after this long
start_safety_poll_s = 0.5            # with inotify: a look this often all the same (a shim killed by hand)
cgroup_parent_default = "cistern"
runtime_parent_default = "/dev/shm"  # the tmpfs under which an agent's runtime dir is made (``runtime_dir``)
default_path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SANDBOX_MOUNT = shim.SANDBOX_MOUNT

_task_id_re = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@+-]*")


@dataclass(frozen=True)
class TaskResult:
    """How a task ended. ``state``: "finished" (exit 0), "failed" or
    "killed"; ``reason`` one of "", "memory limit", "non-zero exit", "bad
    command", "setup failed", "killed", "isolation lost"."""
    state: str
    reason: str
    message: str
    exit_code: int
    started_at: float
    finished_at: float
    stdout_tail: bytes
    stderr_tail: bytes
    oom_kills: int = 0
    pids_limit_hits: int = 0


def classify(record: dict, kill_requested: bool) -> tuple[str, str, str]:
    """(state, reason, message) of a shim exit record. Pure."""
    stage, code, sig = record.get("error_stage", ""), record.get("exit_code", 0), record.get("signal", 0)
    pids_note = f"; hit its pids limit {record['pids_limit_hits']} time(s)" if record.get("pids_limit_hits") else ""
    if stage == "exec":
        return "failed", "bad command", f"cannot run the command: {record.get('error', '')}"
    if stage == "killed":
        return "killed", "killed", record.get("error", "killed before it started")
    if stage == "lost":
        return "failed", "isolation lost", record.get("error", "")
    if stage:
        return "failed", "setup failed", f"{stage}: {record.get('error', '')}"
    if record.get("oom_killed"):
        return "failed", "memory limit", f"exceeded its memory limit ({record.get('oom_kills', 1)} OOM kill(s))" + pids_note
    if kill_requested:
        return "killed", "killed", "killed on request" + pids_note
    if code == 0:
        return "finished", "", "exited 0" + pids_note
    if record.get("oom_kills", 0) > 0:
        return "failed", "memory limit", f"exceeded its memory limit (exit {code})" + pids_note
    if sig:
        return "failed", "non-zero exit", f"killed by signal {sig} ({_signal_name(sig)})" + pids_note
    return "failed", "non-zero exit", f"exited {code}" + pids_note


def task_env(spec, inputs, extra_env: dict | None = None, *, sandbox: str = SANDBOX_MOUNT) -> dict:
    """The task's environment (see the module docstring). ``inputs`` are
    the spec's InputBlocks, in the order of ``input/<n>``. Pure."""
    env = {"PATH": default_path, "HOME": sandbox, "TMPDIR": "/tmp", "LANG": "C.UTF-8",
           "USER": "nobody", "LOGNAME": "nobody"}
    env.update(extra_env or {})
    env.update(dict(spec.env))
    described = [{"path": f"{sandbox}/input/{n}", "file": ib.path, "offset": ib.file_offset,
                  "length": ib.length, "block_id": bytes(ib.block_id).hex()} for n, ib in enumerate(inputs)]
    env.update({"HOME": sandbox, "CISTERN_TASK_ID": spec.task_id, "CISTERN_OUTPUT": f"{sandbox}/out",
                "CISTERN_INPUTS": json.dumps(described)})
    if described:
        first = described[0]
        env.update({"CISTERN_INPUT": first["path"], "CISTERN_INPUT_FILE": first["file"],
                    "CISTERN_INPUT_OFFSET": str(first["offset"]), "CISTERN_INPUT_LENGTH": str(first["length"])})
    return env


def check_available() -> None:
    """Raise CisternError(ENOTSUP) when tasks cannot be isolated here."""
    if os.geteuid() != 0:
        raise CisternError(errno.ENOTSUP, "task isolation needs root (cgroups, namespaces, mounts)")
    _layout()


@functools.lru_cache(maxsize=1)
def _layout_cached() -> dict:
    return cgroups.detect()


def _layout() -> dict:
    try:
        return _layout_cached()
    except OSError as e:
        raise CisternError(errno.ENOTSUP, str(e.strerror or e)) from None


def runtime_dir(work_dir: str, parent: str | None = runtime_parent_default) -> str:
    """Where an agent keeps its task dirs and sandboxes: a private directory
    (root's, 0700, made by ``mkdtemp``) on the tmpfs ``parent``, recorded
    in ``work_dir/runtime_dir`` so a restarted agent finds its running
    tasks there again; ``work_dir`` itself when ``parent`` is None or not a
    tmpfs, or cannot be used.

    Why tmpfs: a task makes and removes about a dozen files and directories
    (plan, started, exit, logs, sandbox), and on an ext4 without a journal
    (this machine's) every new inode scans past the inodes deleted in the
    last half minute (``recently_deleted``), so at 50 tasks/s inode
    allocation became a fifth of the machine's CPU. Like Mesos's
    ``runtime_dir``, it lasts until a reboot, as the tasks do. A task's
    sandbox writes count against its memory limit (tmpfs pages are charged
    to the writer's cgroup), so sandbox use is bounded by it."""
    record = os.path.join(work_dir, "runtime_dir")
    known = _recorded(record)
    if known and _private_tmpfs_dir(known):
        return known
    if parent is None or not _on_tmpfs(parent):
        return work_dir
    try:
        path = tempfile.mkdtemp(prefix="cistern-agent-", dir=parent)
        tmp = f"{record}.tmp.{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(path + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, record)
    except OSError:
        return work_dir
    return path


def remove_runtime_dir(work_dir: str) -> None:
    """Remove the agent's runtime dir and its record when no task is left
    in it (a clean agent stop); a no-op otherwise."""
    record = os.path.join(work_dir, "runtime_dir")
    path = _recorded(record)
    if not path or path == work_dir or not _private_tmpfs_dir(path):
        return
    if any(os.listdir(os.path.join(path, sub)) for sub in ("tasks", "sandboxes")
           if os.path.isdir(os.path.join(path, sub))):
        return
    with contextlib.suppress(OSError):
        os.unlink(record)
    shutil.rmtree(path, ignore_errors=True)


def _private_tmpfs_dir(path: str) -> bool:
    """A directory (not a link) of ours that nobody else may enter, on tmpfs."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077 and _on_tmpfs(path)


def _recorded(record: str) -> str:
    """The runtime dir path a record names ("" when there is none)."""
    try:
        with open(record) as f:
            return f.read().strip()
    except FileNotFoundError:
        return ""


def _on_tmpfs(path: str) -> bool:
    """Whether ``path``'s file system is a tmpfs (the longest mount point in
    /proc/self/mounts that holds it)."""
    path = os.path.realpath(path)
    best, fstype = "", ""
    try:
        with open("/proc/self/mounts") as f:
            for line in f:
                _, mount_point, kind = line.split()[:3]
                mount_point = cgroups.unescape_mountpoint(mount_point)
                inside = path == mount_point or path.startswith(mount_point.rstrip("/") + "/")
                if inside and len(mount_point) >= len(best):
                    best, fstype = mount_point, kind
    except (OSError, ValueError):
        return False
    return fstype == "tmpfs"


def task_paths(work_dir: str, task_id: str) -> tuple[str, str]:
    """(task dir, sandbox dir) of a task under an agent's work dir."""
    return os.path.join(work_dir, "tasks", task_id), os.path.join(work_dir, "sandboxes", task_id)


def launch(spec, *, agent_id: str, work_dir: str, inputs=(), extra_env: dict | None = None,
           uid: int | None = None, gid: int | None = None, pids_max: int | None = None,
           log_bytes_max: int = log_bytes_max_default,
           cgroup_parent: str = cgroup_parent_default) -> "TaskHandle":
    """Start ``spec`` (a TaskSpec: task_id, argv, env, resources, network)
    isolated. ``inputs``: (source file on this machine, InputBlock) pairs,
    bound read-only at ``input/<n>``. ``pids_max`` defaults to
    ``pids_max_for(spec)``. Returns at once; see the module docstring for
    errors."""
    pids_max = pids_max_for(spec) if pids_max is None else int(pids_max)
    _validate(spec, agent_id, pids_max)
    check_available()
    uid, gid = _nobody(uid, gid)
    task_dir, sandbox = task_paths(work_dir, spec.task_id)
    cgroup = cgroups.for_task(_layout(), cgroup_parent, agent_id, spec.task_id)
    _make_dirs(task_dir, sandbox, len(inputs), uid, gid, spec.task_id)
    try:
        _make_cgroup(cgroup, spec, pids_max)
        mem_bytes = int(spec.resources.mem_bytes)
        plan = {"task_id": spec.task_id, "argv": list(spec.argv),
                "env": task_env(spec, [ib for _, ib in inputs], extra_env),
                "network": bool(spec.network), "uid": uid, "gid": gid, "hostname": spec.task_id[:63],
                "sandbox": sandbox, "input_sources": [os.path.abspath(src) for src, _ in inputs],
                "cgroup": cgroup.to_json(), "log_bytes_max": int(log_bytes_max),
                "tmpfs_bytes": min(mem_bytes, tmpfs_bytes_max)}
        shim.write_json_atomic(os.path.join(task_dir, "plan.json"), plan)
        started = _LAUNCHER.start(task_dir)
        proc = None if started else _start_shim(task_dir)
    except BaseException:
        _remove_quietly(cgroup, sandbox, task_dir)
        raise
    if proc is not None:
        return TaskHandle(spec.task_id, task_dir, sandbox, cgroup, proc.pid, shim.start_ticks(proc.pid), proc)
    return TaskHandle(spec.task_id, task_dir, sandbox, cgroup, started[0], started[1], None)


def shutdown() -> None:
    """Stop this process's shim launcher (tasks keep running; the next
    ``launch`` starts a new one). Idempotent."""
    _LAUNCHER.stop()


def recover(checkpoint: dict) -> "TaskHandle":
    """A handle to a task launched by an earlier agent process, from its
    ``checkpoint()``. The task may be running, ended, or gone."""
    return TaskHandle(checkpoint["task_id"], checkpoint["task_dir"], checkpoint["sandbox"],
                      cgroups.from_json(checkpoint["cgroup"]), checkpoint["shim_pid"],
                      checkpoint["shim_start_ticks"], None)


def sweep(agent_id: str, work_dir: str, keep=(), *, cgroup_parent: str = cgroup_parent_default) -> list[str]:
    """Kill and remove every task under ``work_dir`` not in ``keep`` (task
    ids): cgroups, sandboxes and task dirs an agent crash left without a
    checkpoint. Only tasks with a task dir or sandbox in ``work_dir`` are
    touched (``launch`` makes both before the cgroup), so another agent
    with the same id on this machine (a test cluster) loses nothing.
    Returns the task ids removed."""
    layout = _layout()
    keep = set(keep)
    found = set()
    for sub in ("tasks", "sandboxes"):
        root = os.path.join(work_dir, sub)
        if os.path.isdir(root):
            found.update(os.listdir(root))
    removed = sorted(found - keep)
    for task_id in removed:
        cgroup = cgroups.for_task(layout, cgroup_parent, agent_id, task_id)
        cgroup.kill_all(kill_timeout_s)
        task_dir, sandbox = task_paths(work_dir, task_id)
        _remove_quietly(cgroup, sandbox, task_dir)
    cgroups.remove_agent_dirs(layout, cgroup_parent, agent_id)
    return removed


class TaskHandle:
    def __init__(self, task_id: str, task_dir: str, sandbox: str, cgroup, shim_pid: int,
                 shim_start_ticks: int, proc: subprocess.Popen | None):
        self.task_id = task_id
        self.task_dir = task_dir
        self.sandbox = sandbox
        self.cgroup = cgroup
        self.shim_pid = shim_pid
        self.shim_start_ticks = shim_start_ticks
        self._proc = proc
        self._lock = threading.Lock()
        self._result: TaskResult | None = None
        self._started: dict | None = None

    def checkpoint(self) -> dict:
        return {"task_id": self.task_id, "task_dir": self.task_dir, "sandbox": self.sandbox,
                "cgroup": self.cgroup.to_json(), "shim_pid": self.shim_pid,
                "shim_start_ticks": self.shim_start_ticks}

    def started(self) -> dict | None:
        """``{"init_pid", "init_start_ticks", "started_at"}`` once the
        command was exec'd, else None. The shim writes the file once
        (atomically), so it is read until found and then kept."""
        if self._started is None:
            self._started = _read_json(os.path.join(self.task_dir, "started.json"))
        return self._started

    def wait_started(self, timeout_s: float = start_timeout_s) -> bool:
        """Wait until the command was exec'd (True) or the task ended
        without running (False). Raises TimeoutError. Woken by inotify
        when the shim renames started.json or exit.json into the task dir
        (no polling); it looks again every ``start_safety_poll_s`` anyway
        (a shim killed by hand writes neither), and polls as before where
        inotify is unavailable."""
        began = time.monotonic()
        pause = start_poll_interval_s
        with _DIR_EVENTS.watch(self.task_dir) as events:
            while True:
                events.clear()              # before looking: an event from now on wakes the wait below
                if self.started() is not None:
                    return True
                if self.poll() is not None:
                    return self.started() is not None
                waited = time.monotonic() - began
                if waited > timeout_s:
                    raise TimeoutError(f"task {self.task_id} did not start within {timeout_s:.0f}s")
                if events.live:
                    events.wait(min(start_safety_poll_s, max(0.0, timeout_s - waited) + 0.001))
                    continue
                # Quick looks while a start is still likely quick, then fewer (many tasks start at once).
                if waited > start_quick_s:
                    pause = min(pause * 2, poll_interval_max_s)
                events.wait(pause)

    def poll(self) -> TaskResult | None:
        """The result once every process of the task is gone, else None."""
        with self._lock:
            if self._result is not None:
                return self._result
            record = _read_json(os.path.join(self.task_dir, "exit.json"))
            if record is None:
                if self._shim_alive():
                    return None
                # The shim writes exit.json before it exits: look once more, then give up on it.
                record = _read_json(os.path.join(self.task_dir, "exit.json")) or self._lost()
            self._wait_shim_gone()
            self._result = self._make_result(record)
            return self._result

    def wait(self, timeout_s: float | None = None) -> TaskResult | None:
        """Block until the task ended (its result) or ``timeout_s`` passed (None)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            result = self.poll()
            if result is not None:
                return result
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            if self._proc is not None:
                try:
                    self._proc.wait(poll_interval_max_s if left is None else min(left, poll_interval_max_s))
                except subprocess.TimeoutExpired:
                    pass
            else:
                self._sleep_until_shim_exit(shim_wait_step_s if left is None else min(left, shim_wait_step_s))

    def _sleep_until_shim_exit(self, timeout_s: float) -> None:
        """Sleep up to ``timeout_s``, woken at once when the shim (not our
        child: a launcher forked it, or an earlier agent started it) exits."""
        try:
            fd = os.pidfd_open(self.shim_pid)
        except OSError:
            return                          # gone already
        try:
            if shim.start_ticks(self.shim_pid) == self.shim_start_ticks:   # still our shim, not a reused pid
                select.select([fd], [], [], timeout_s)
        finally:
            os.close(fd)

    def kill(self, timeout_s: float = kill_timeout_s) -> bool:
        """Kill every process of the task (its pid 1, whose death takes its
        pid namespace, then whatever is left in the cgroup until it is
        empty). Idempotent; True when the cgroup is empty. The result then
        says "killed" (unless it had ended by itself)."""
        _touch(os.path.join(self.task_dir, "kill"))
        started = self.started()
        if started and shim.start_ticks(started["init_pid"]) == started["init_start_ticks"]:
            try:
                os.kill(started["init_pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.cgroup.kill_all(timeout_s)

    @property
    def kill_requested(self) -> bool:
        return os.path.exists(os.path.join(self.task_dir, "kill"))

    def result(self) -> TaskResult:
        """The result of an ended task; raises CisternError(EBUSY) while it runs."""
        result = self.poll()
        if result is None:
            raise CisternError(errno.EBUSY, f"task {self.task_id} is still running")
        return result

    def usage(self) -> dict:
        """Its cgroup's use now: mem_bytes, mem_peak_bytes, cpu_s, pids."""
        return self.cgroup.usage()

    def output_dir(self) -> str:
        """The host path of the sandbox's out/ (read it before ``cleanup``)."""
        return os.path.join(self.sandbox, "out")

    def tail(self, stream: str, n_bytes: int = tail_bytes_max) -> bytes:
        """The last ``n_bytes`` of "stdout" or "stderr"."""
        assert stream in ("stdout", "stderr")
        return _tail(os.path.join(self.task_dir, stream), n_bytes)

    def cleanup(self, *, remove_task_dir: bool = True) -> None:
        """Remove the cgroup, the sandbox and (by default) the task dir of
        an ended task. Raises CisternError(EBUSY) while it runs."""
        self.result()
        self.cgroup.kill_all(kill_timeout_s)
        _remove_quietly(self.cgroup, self.sandbox, self.task_dir if remove_task_dir else None)

    # -- internals -----------------------------------------------------------------

    def _shim_alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return shim.start_ticks(self.shim_pid) == self.shim_start_ticks

    def _wait_shim_gone(self) -> None:
        """The shim exits right after writing exit.json: wait for that (reap
        it when it is our child) so a result means no process is left."""
        if self._proc is not None:
            self._proc.wait()
            return
        deadline = time.monotonic() + shim_exit_wait_s
        while self._shim_alive() and time.monotonic() < deadline:
            self._sleep_until_shim_exit(max(poll_interval_min_s, deadline - time.monotonic()))

    def _lost(self) -> dict:
        """The shim died without recording (killed by hand): nobody can
        say how the task ended, so whatever is left of it is killed."""
        self.cgroup.kill_all(kill_timeout_s)
        return {"exit_code": 137, "signal": signal.SIGKILL, "error_stage": "lost",
                "error": "the task's shim vanished without recording how it ended", "finished_at": time.time()}

    def _make_result(self, record: dict) -> TaskResult:
        state, reason, message = classify(record, self.kill_requested)
        started = self.started() or {}
        return TaskResult(state, reason, message, int(record.get("exit_code", 0)),
                          float(started.get("started_at", 0.0)), float(record.get("finished_at", 0.0)),
                          self.tail("stdout"), self.tail("stderr"), int(record.get("oom_kills", 0)),
                          int(record.get("pids_limit_hits", 0)))


# -- helpers ----------------------------------------------------------------------------

def spec_problem(spec, agent_id: str = "agent", pids_max: int = 1) -> str:
    """Why ``launch`` would refuse ``spec`` (EINVAL), or '' when it would not. Pure."""
    for what, value in (("task id", spec.task_id), ("agent id", agent_id)):
        if not (0 < len(value) <= task_id_length_max and _task_id_re.fullmatch(value)):
            return (f"{what} {value!r} must be 1-{task_id_length_max} of [A-Za-z0-9._:@+-], "
                    "starting with a letter or digit")
    if not spec.argv:
        return f"task {spec.task_id}: empty argv"
    if not spec.resources.cpus > 0 or spec.resources.mem_bytes < sched_limits.mem_bytes_min_per_task:
        return (f"task {spec.task_id}: needs cpus > 0 and at least "
                f"{sched_limits.mem_bytes_min_per_task} bytes of memory")
    if pids_max < 1:
        return f"task {spec.task_id}: pids_max must be positive"
    return ""


def _validate(spec, agent_id: str, pids_max: int) -> None:
    problem = spec_problem(spec, agent_id, pids_max)
    if problem:
        raise CisternError(errno.EINVAL, problem)


@functools.lru_cache(maxsize=1)
def _nobody_ids() -> tuple[int, int]:
    """nobody's (uid, gid), looked up once (not per launch)."""
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _nobody(uid: int | None, gid: int | None) -> tuple[int, int]:
    default_uid, default_gid = _nobody_ids()
    uid = default_uid if uid is None else int(uid)
    gid = default_gid if gid is None else int(gid)
    if uid == 0 or gid == 0:
        raise CisternError(errno.EINVAL, "tasks never run as root")
    return uid, gid


def _make_dirs(task_dir: str, sandbox: str, n_inputs: int, uid: int, gid: int, task_id: str) -> None:
    """The task dir (root only) and the sandbox (the task's own, with out/
    for it and input/ for the read-only binds, owned by root)."""
    for parent in (os.path.dirname(task_dir), os.path.dirname(sandbox)):
        os.makedirs(parent, mode=0o700, exist_ok=True)
    try:
        os.mkdir(task_dir, 0o700)
    except FileExistsError:
        raise CisternError(errno.EEXIST, f"task {task_id} already exists on this agent") from None
    try:
        shutil.rmtree(sandbox, ignore_errors=True)     # a leftover of a crashed launch with this id
        os.mkdir(sandbox, 0o700)
        os.mkdir(os.path.join(sandbox, "out"), 0o755)
        os.mkdir(os.path.join(sandbox, "input"), 0o755)
        for n in range(n_inputs):
            with open(os.path.join(sandbox, "input", str(n)), "wb"):
                pass
            os.chmod(os.path.join(sandbox, "input", str(n)), 0o444)
        for d in (sandbox, os.path.join(sandbox, "out")):
            os.chown(d, uid, gid)
    except OSError as e:
        shutil.rmtree(task_dir, ignore_errors=True)
        shutil.rmtree(sandbox, ignore_errors=True)
        raise CisternError(e.errno or errno.EIO, f"task {task_id}: cannot make its sandbox: {e}") from None


def _make_cgroup(cgroup, spec, pids_max: int) -> None:
    if cgroup.exists():
        raise CisternError(errno.EEXIST, f"task {spec.task_id} already has a cgroup on this agent")
    try:
        cgroup.create(float(spec.resources.cpus), int(spec.resources.mem_bytes), pids_max)
    except OSError as e:
        raise CisternError(errno.EIO, f"task {spec.task_id}: cannot set up its cgroup: {e}") from None


def pids_max_for(spec) -> int:
    """A task's process limit: CISTERN_PIDS_MAX in its env (lower only), or
    the default."""
    asked = dict(spec.env).get("CISTERN_PIDS_MAX", "")
    return min(int(asked), pids_max_default) if asked.isdigit() and int(asked) > 0 else pids_max_default


class _DirEvents:
    """One inotify instance for the whole process (an instance per task
    would run into ``fs.inotify.max_user_instances``, 128 by default): a
    reader thread wakes whoever waits on a directory when a file is
    renamed into it (the shim writes started.json and exit.json that way).
    ``watch(path)`` is a context manager giving a ``_DirWaiter``; its
    ``live`` is False when inotify is unavailable (then waits just sleep)."""

    _IN_MOVED_TO, _IN_IGNORED = 0x80, 0x8000
    _IN_CLOEXEC = 0o2000000
    _event = struct.Struct("iIII")

    def __init__(self):
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._failed = False
        self._waiters: dict[int, set] = {}      # watch descriptor -> its _DirWaiters

    @contextlib.contextmanager
    def watch(self, path: str):
        waiter = _DirWaiter()
        wd = self._add(path, waiter)
        waiter.live = wd is not None
        try:
            yield waiter
        finally:
            if wd is not None:
                self._remove(wd, waiter)

    def _add(self, path: str, waiter) -> int | None:
        with self._lock:
            if self._fd is None and not self._failed:
                self._start_locked()
            if self._fd is None:
                return None
            wd = _libc.inotify_add_watch(self._fd, path.encode(), self._IN_MOVED_TO)
            if wd < 0:
                return None
            self._waiters.setdefault(wd, set()).add(waiter)
            return wd

    def _remove(self, wd: int, waiter) -> None:
        with self._lock:
            waiters = self._waiters.get(wd)
            if waiters is None:
                return
            waiters.discard(waiter)
            if not waiters:
                del self._waiters[wd]
                _libc.inotify_rm_watch(self._fd, wd)    # fails harmlessly when the dir is gone

    def _start_locked(self) -> None:
        fd = _libc.inotify_init1(self._IN_CLOEXEC)
        if fd < 0:
            self._failed = True
            return
        self._fd = fd
        threading.Thread(target=self._read_loop, args=(fd,), name="isolation-inotify", daemon=True).start()

    def _read_loop(self, fd: int) -> None:
        size = self._event.size
        while True:
            try:
                data = os.read(fd, 64 * 1024)
            except InterruptedError:
                continue
            except OSError:
                return
            woken = set()
            with self._lock:
                for offset in _event_offsets(data, size, self._event):
                    wd, mask, _cookie, _length = self._event.unpack_from(data, offset)
                    woken.update(self._waiters.get(wd, ()))
                    if mask & self._IN_IGNORED:
                        self._waiters.pop(wd, None)     # the dir went: its watch is gone
            for waiter in woken:
                waiter.set()


class _DirWaiter(threading.Event):
    live = False


def _event_offsets(data: bytes, size: int, event: struct.Struct):
    """The offsets of the inotify events in one read."""
    offset = 0
    while offset + size <= len(data):
        yield offset
        offset += size + event.unpack_from(data, offset)[3]


_libc = ctypes.CDLL(None, use_errno=True)
_DIR_EVENTS = _DirEvents()


class _Launcher:
    """The warm shim factory (``shim.launcher``) of this process, started
    on first use. ``start(task_dir)`` -> (shim pid, start ticks), or None
    when it cannot (the caller then starts an interpreter per task)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None

    def start(self, task_dir: str) -> tuple[int, int] | None:
        if "\n" in task_dir:
            return None
        with self._lock:
            try:
                if self._proc is None or self._proc.poll() is not None:
                    self._proc = self._spawn()
                self._proc.stdin.write(task_dir.encode() + b"\n")
                self._proc.stdin.flush()
                pid, ticks = (int(x) for x in self._proc.stdout.readline().split())
            except (OSError, ValueError):
                self._stop_locked()
                return None
        return (pid, ticks) if pid > 0 else None

    def stop(self) -> None:
        with self._lock:
            self._stop_locked()

    def _spawn(self) -> subprocess.Popen:
        # Not a session of its own: it goes when its agent goes (EOF on stdin);
        # the shims it forks have their own sessions and stay.
        return subprocess.Popen(_shim_argv("--launcher"), env=_shim_env(), stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True, cwd="/")

    def _stop_locked(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        try:
            proc.stdin.close()
            proc.wait(5)
        except (OSError, subprocess.TimeoutExpired):
            proc.kill()
            proc.wait()
        proc.stdout.close()


_LAUNCHER = _Launcher()


def _shim_argv(arg: str) -> list[str]:
    """``shim.py`` run as a script without site (see shim's imports)."""
    return [sys.executable, "-I", "-S", shim.__file__, arg]


def _shim_env() -> dict:
    return {"PATH": default_path, "LANG": "C.UTF-8"}


def _start_shim(task_dir: str) -> subprocess.Popen:
    """The shim, in a session of its own and without the die-with-parent
    request: it must outlive a crashed agent. No preexec_fn (the agent has
    gRPC threads)."""
    with open(os.path.join(task_dir, "shim.log"), "ab") as log:
        return subprocess.Popen(_shim_argv(task_dir), cwd=task_dir, env=_shim_env(),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, close_fds=True)


def _remove_quietly(cgroup, sandbox: str, task_dir: str | None) -> None:
    try:
        cgroup.remove()
    except OSError:
        pass
    shutil.rmtree(sandbox, ignore_errors=True)
    if task_dir:
        shutil.rmtree(task_dir, ignore_errors=True)


def _read_json(path: str) -> dict | None:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _touch(path: str) -> None:
    """Create ``path``; nothing when its directory is gone (a cleaned-up task)."""
    try:
        with open(path, "ab"):
            pass
    except FileNotFoundError:
        pass


def _tail(path: str, n_bytes: int) -> bytes:
    """The last ``n_bytes`` of a ``shim.CappedLog`` (its rotated file first)."""
    out = b""
    for p in (path, path + ".1"):
        try:
            with open(p, "rb") as f:
                size = f.seek(0, os.SEEK_END)
                f.seek(max(0, size - (n_bytes - len(out))))
                out = f.read() + out
        except FileNotFoundError:
            continue
        if len(out) >= n_bytes:
            break
    return out[-n_bytes:] if n_bytes else b""


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:
        return "?"
