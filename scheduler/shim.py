"""The per-task shim: the small root process that puts one task into its
cgroup and namespaces, execs it as an unprivileged user, copies its output
into size-capped log files, and records how it ended.

``isolation.launch`` has it forked by a warm ``launcher`` (``python -I -S
shim.py --launcher``, one per agent process), or starts it as ``python -I
-S shim.py <task_dir>`` when that fails; either way in a new session without
PDEATHSIG, so a task outlives a crashed agent: the shim
keeps recording and a restarted agent reads the task dir. Standard library
only, so it starts in a few tens of milliseconds; it has no threads, so it
may fork freely.

The task dir (outside the sandbox) holds, besides ``plan.json`` (what to run,
written by ``isolation``):

* ``started.json`` — ``{"init_pid", "init_start_ticks", "started_at"}`` once
  the task's command was exec'd (``init_pid``: the host pid of the task's
  pid 1).
* ``exit.json`` — ``{"exit_code", "signal", "oom_kills", "oom_killed",
  "pids_limit_hits", "error", "error_stage", "finished_at"}``, written once,
  atomically, after every process of the task is gone. ``error`` is set
  when the task never ran (``error_stage`` "setup" or "exec").
* ``stdout``, ``stderr`` (+ ``.1``, the previous ``log_bytes_max`` of each).
* ``kill`` — written by the agent before it kills the task.

Process tree: shim (root, host namespaces, outside the cgroup) -> task init
(joins the cgroup, then new mount/ipc/uts[/net] namespaces; it is pid 1 of
a new pid namespace) which builds the sandbox view and execs the command as
``uid``. When pid 1 exits the kernel kills everything else in its pid
namespace, so no process of the task outlives it.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import warnings  # noqa: F401 - os.execvpe imports it lazily, after the drop to a uid that cannot read the stdlib

try:
    from cistern.scheduler import cgroups
except ImportError:
    # Run as a script without site (``isolation`` starts ``python -I -S
    # shim.py``: about 30 ms less cpu per task than finding the package
    # through site-packages): the sibling module is the same file.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import cgroups

# Linux ABI constants (include/uapi/linux/sched.h, mount.h, fs.h).
CLONE_NEWNS = 0x00020000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x1, 0x2, 0x4, 0x8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 0x20, 0x1000, 0x4000, 0x40000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 0x1, 0x2, 0x4, 0x8
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
SYS_mount_setattr = 442          # the same number on every architecture
PR_SET_NO_NEW_PRIVS = 38
PR_SET_NAME = 15
SIOCSIFFLAGS, IFF_UP, IFF_LOOPBACK, IFF_RUNNING = 0x8914, 0x1, 0x8, 0x40

SANDBOX_MOUNT = "/mnt/cistern/sandbox"   # where a task sees its sandbox (cwd, HOME)
PRIVATE_TMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
             ("stderr", "/proc/self/fd/2"))
MNT_DETACH = 0x2
mnt_tmpfs_bytes = 64 * 1024
poll_interval_s = 0.25           # how often the shim looks at the cgroup's OOM counter
drain_timeout_s = 5.0            # output still arriving after pid 1 died (cannot: its namespace is dead)
read_chunk_bytes = 64 * 1024

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.syscall.restype = ctypes.c_long


class _MountAttr(ctypes.Structure):
    _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]


def main() -> None:
    if sys.argv[1] == "--launcher":
        launcher()
    else:
        serve(sys.argv[1])


def serve(task_dir: str) -> None:
    """Be the shim of the task in ``task_dir``."""
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)   # only the agent's SIGKILL of the task ends it
    with open(os.path.join(task_dir, "plan.json")) as f:
        plan = json.load(f)
    record = run(plan, task_dir)
    write_json_atomic(os.path.join(task_dir, "exit.json"), record)


def launcher() -> None:
    """A warm shim factory for one agent process: for each task dir read
    from stdin (one per line), fork a shim in a session of its own and
    answer ``<pid> <start ticks>``. Forking this threadless process costs
    about a millisecond; starting an interpreter per task costs tens of
    milliseconds of cpu. The launcher ignores SIGCHLD, so the kernel reaps
    its shims (each resets it): they never wait for it, and live on when
    it ends. Its objects are frozen out of the garbage collector, which
    stays off in the shims (they make no cycles worth collecting): a
    collection would write to every page the fork shares and copy them.
    Ends at EOF (its agent closed the pipe or died)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    gc.disable()
    gc.freeze()
    while True:
        line = sys.stdin.buffer.readline()
        if not line:
            return
        pid, ticks = _fork_shim(line.decode().rstrip("\n"))
        sys.stdout.write(f"{pid} {ticks}\n")
        sys.stdout.flush()


def _fork_shim(task_dir: str) -> tuple[int, int]:
    """(pid, start ticks) of a new shim for ``task_dir``, (-1, -1) when it
    could not start. The shim waits until its start ticks are read, so
    they name it even when it would end at once (and be reaped)."""
    r, w = os.pipe()
    try:
        pid = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        return -1, -1
    if pid == 0:
        try:
            os.close(w)
            os.read(r, 1)                    # EOF once the launcher read our start ticks
            os.close(r)
            os.setsid()
            signal.signal(signal.SIGCHLD, signal.SIG_DFL)   # the shim waits for its task
        except BaseException:                # noqa: B036 - the child must end here
            os._exit(1)
        _become_shim(task_dir)
    os.close(r)
    ticks = start_ticks(pid)
    if ticks < 0:
        os.kill(pid, signal.SIGKILL)         # cannot be named: it must not run unwatched
    os.close(w)
    return (pid, ticks) if ticks >= 0 else (-1, -1)


def _become_shim(task_dir: str) -> None:
    """In the forked shim: fresh stdio in the task dir, then serve; never returns."""
    code = 0
    try:
        _set_name(b"cistern-shim")
        os.chdir(task_dir)
        log = os.open(os.path.join(task_dir, "shim.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        null = os.open("/dev/null", os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(null)
        os.close(log)
        serve(task_dir)
    except BaseException as e:          # noqa: B036 - the shim must end here, whatever happened
        _write_quietly(2, f"shim: {type(e).__name__}: {e}\n".encode())
        code = 1
    finally:
        os._exit(code)


def run(plan: dict, task_dir: str) -> dict:
    """Start the task, pump its output, wait for its end; the exit record."""
    cgroup = cgroups.from_json(plan["cgroup"])
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    status_r, status_w = os.pipe()       # close-on-exec: EOF = exec'd (or died); data = why not
    go_r, go_w = os.pipe()
    _check(_libc.unshare(CLONE_NEWPID), "unshare(CLONE_NEWPID)")  # our next child is pid 1 of a new namespace
    pid = os.fork()
    if pid == 0:
        _child(plan, go_r, (go_w, out_r, err_r, status_r), out_w, err_w, status_w)
    for fd in (out_w, err_w, status_w, go_r):
        os.close(fd)
    try:
        cgroup.add(pid)
    except OSError as e:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        return _error_record("setup", f"joining the cgroup: {e}")
    if os.path.exists(os.path.join(task_dir, "kill")):
        os.close(go_w)                   # killed before it started: it never runs
        os.waitpid(pid, 0)
        return _error_record("killed", "killed before it started")
    _write_quietly(go_w, b"g")
    os.close(go_w)
    failure = _read_all(status_r)
    if failure:
        os.waitpid(pid, 0)
        stage, _, message = failure.decode(errors="replace").partition(": ")
        return _error_record(stage, message)
    pidfd = os.pidfd_open(pid)
    write_json_atomic(os.path.join(task_dir, "started.json"),
                      {"init_pid": pid, "init_start_ticks": start_ticks(pid), "started_at": time.time()})
    logs = {out_r: CappedLog(os.path.join(task_dir, "stdout"), plan["log_bytes_max"]),
            err_r: CappedLog(os.path.join(task_dir, "stderr"), plan["log_bytes_max"])}
    oom_killed = _pump_until_exit(pid, pidfd, logs, cgroup)
    _, status = os.waitpid(pid, 0)
    os.close(pidfd)
    _drain(logs)
    code = os.waitstatus_to_exitcode(status)
    return {"exit_code": code if code >= 0 else 128 - code, "signal": -code if code < 0 else 0,
            "oom_kills": max(0, cgroup.oom_kills()), "oom_killed": oom_killed,
            "pids_limit_hits": cgroup.pids_limit_hits(), "error": "", "error_stage": "",
            "finished_at": time.time()}


def _pump_until_exit(pid: int, pidfd: int, logs: dict, cgroup) -> bool:
    """Copy output until pid 1 exits; kill the task at its first OOM kill
    (an OOM-killed helper leaves a task that is not what was asked for).
    True when the shim killed it for memory."""
    oom_base = max(0, cgroup.oom_kills())
    oom_killed = False
    next_look = time.monotonic() + poll_interval_s     # not on every read of a chatty task's output
    while True:
        readable, _, _ = select.select(list(logs) + [pidfd], [], [], poll_interval_s)
        for fd in readable:
            if fd != pidfd and not logs[fd].copy_from(fd):
                logs.pop(fd).close()
                os.close(fd)
        if pidfd in readable:
            return oom_killed
        now = time.monotonic()
        if not oom_killed and now >= next_look:
            next_look = now + poll_interval_s
            if cgroup.oom_kills() > oom_base:
                oom_killed = True
                os.kill(pid, signal.SIGKILL)


def _drain(logs: dict) -> None:
    """Read what is left in the pipes: every writer is dead (the kernel
    killed pid 1's namespace), so EOF comes at once."""
    deadline = time.monotonic() + drain_timeout_s
    while logs and time.monotonic() < deadline:
        readable, _, _ = select.select(list(logs), [], [], 0.1)
        for fd in readable:
            if not logs[fd].copy_from(fd):
                logs.pop(fd).close()
                os.close(fd)
    for fd, log in logs.items():
        log.close()
        os.close(fd)


def _error_record(stage: str, message: str) -> dict:
    return {"exit_code": 127 if stage == "exec" else 126, "signal": 0, "oom_kills": 0, "oom_killed": False,
            "pids_limit_hits": 0, "error": message, "error_stage": stage, "finished_at": time.time()}


class CappedLog:
    """An append-only log that keeps at most ``cap_bytes`` in ``path`` and
    the previous ``cap_bytes`` in ``path.1`` (so at most twice that on disk,
    and the newest output is always kept)."""

    def __init__(self, path: str, cap_bytes: int):
        assert cap_bytes > 0
        self.path = path
        self.cap_bytes = cap_bytes
        self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
        self.size = os.fstat(self.fd).st_size

    def copy_from(self, fd: int) -> bool:
        """Copy one read's worth from ``fd``; False at EOF."""
        data = os.read(fd, read_chunk_bytes)
        if not data:
            return False
        self.write(data)
        return True

    def write(self, data: bytes) -> None:
        data = data[-self.cap_bytes:]
        if self.size + len(data) > self.cap_bytes:
            os.close(self.fd)
            os.replace(self.path, self.path + ".1")
            self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o640)
            self.size = 0
        os.write(self.fd, data)
        self.size += len(data)

    def close(self) -> None:
        os.close(self.fd)


# -- inside the task's namespaces (the forked child) ----------------------------------

def _child(plan: dict, go_r: int, parent_fds: tuple, out_w: int, err_w: int, status_w: int) -> None:
    """Runs in the forked child, pid 1 of the new pid namespace; never returns."""
    stage = "setup"
    try:
        for fd in parent_fds:
            os.close(fd)
        if os.read(go_r, 1) != b"g":
            os._exit(126)                  # the shim gave up (cgroup refused us)
        os.close(go_r)
        _set_name(b"cistern-init")         # until the exec
        flags = CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS | (0 if plan["network"] else CLONE_NEWNET)
        _check(_libc.unshare(flags), "unshare")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        hostname = plan["hostname"].encode()
        _check(_libc.sethostname(hostname, len(hostname)), "sethostname")
        if not plan["network"]:
            _loopback_up()
        _build_view(plan)
        _enter_as_user(plan, out_w, err_w)
        _default_signals()
        stage = "exec"
        argv = plan["argv"]
        os.execvpe(argv[0], argv, plan["env"])
    except BaseException as e:         # noqa: B036 - report anything, then die
        detail = f"{e.strerror}: {e.filename}" if isinstance(e, OSError) and e.filename else str(e)
        _write_quietly(status_w, f"{stage}: {detail}".encode()[:4096])
        os._exit(127 if stage == "exec" else 126)


def _build_view(plan: dict) -> None:
    """The task's file system: everything read-only and nosuid, except its
    sandbox (at SANDBOX_MOUNT) and fresh private tmpfs at /tmp, /var/tmp,
    /dev/shm; inputs bound read-only; a /dev of harmless devices; a /proc
    of its own pid namespace.
    Binds come first: the host paths they start from may be under /tmp."""
    _mount_setattr("/", AT_RECURSIVE, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0)
    _mount("tmpfs", "/mnt", "tmpfs", MS_NOSUID | MS_NODEV, f"size={mnt_tmpfs_bytes},mode=0755")
    os.makedirs(SANDBOX_MOUNT)
    _mount(plan["sandbox"], SANDBOX_MOUNT, None, MS_BIND)
    _mount_setattr(SANDBOX_MOUNT, 0, MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV, MOUNT_ATTR_RDONLY)
    for n, source in enumerate(plan["input_sources"]):
        target = os.path.join(SANDBOX_MOUNT, "input", str(n))
        _mount(source, target, None, MS_BIND)
        _mount_setattr(target, 0, MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC, 0)
    _private_dev()
    _mount_setattr("/mnt", 0, MOUNT_ATTR_RDONLY, 0)
    for d in PRIVATE_TMP_DIRS:
        if os.path.isdir(d):
            _mount("tmpfs", d, "tmpfs", MS_NOSUID | MS_NODEV, f"size={plan['tmpfs_bytes']},mode=1777")
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _private_dev() -> None:
    """A /dev of the harmless devices only (the host's /dev would show
    e.g. /dev/kmsg), read-only, with /dev/shm for its tmpfs. The host's
    nodes are bound from a staging bind of the host /dev, then it goes."""
    staging = os.path.join(os.path.dirname(SANDBOX_MOUNT), "hostdev")
    os.mkdir(staging)
    _mount("/dev", staging, None, MS_BIND)
    _mount("tmpfs", "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=0755")
    for name in DEV_NODES:
        open(os.path.join("/dev", name), "w").close()
        _mount(os.path.join(staging, name), os.path.join("/dev", name), None, MS_BIND)
    for name, target in DEV_LINKS:
        os.symlink(target, os.path.join("/dev", name))
    os.mkdir("/dev/shm")
    _check(_libc.umount2(staging.encode(), MNT_DETACH), f"umount {staging}")
    os.rmdir(staging)
    _mount_setattr("/dev", 0, MOUNT_ATTR_RDONLY, 0)


def _enter_as_user(plan: dict, out_w: int, err_w: int) -> None:
    """stdio to the shim's pipes, cwd the sandbox, then drop to ``uid``:
    no supplementary groups, no capabilities (lost with uid 0), and no new
    privileges through setuid binaries."""
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    for fd in (null, out_w, err_w):
        if fd > 2:
            os.close(fd)
    os.chdir(SANDBOX_MOUNT)
    os.setgroups([])
    os.setresgid(plan["gid"], plan["gid"], plan["gid"])
    os.setresuid(plan["uid"], plan["uid"], plan["uid"])
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    os.umask(0o022)


def _default_signals() -> None:
    """Ignored signals survive exec: the task must not inherit the shim's
    (HUP, INT, TERM) nor Python's (PIPE, XFSZ) ignores, nor a blocked mask."""
    for sig in signal.valid_signals():
        if sig not in (signal.SIGKILL, signal.SIGSTOP):
            try:
                signal.signal(sig, signal.SIG_DFL)
            except (OSError, ValueError):
                pass                        # signals Python may not touch (e.g. 32, 33: the C library's)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])


def _loopback_up() -> None:
    """An empty network namespace has only ``lo``, down; bring it up so the
    task can talk to itself (and to nothing else)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        fcntl.ioctl(s.fileno(), SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", IFF_UP | IFF_LOOPBACK | IFF_RUNNING))


def _mount(source, target, fstype, flags: int, data: str | None = None) -> None:
    enc = (lambda s: s.encode() if isinstance(s, str) else s)
    _check(_libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


def _mount_setattr(path: str, flags: int, attr_set: int, attr_clr: int) -> None:
    """mount_setattr(2) (Linux 5.12+), or a per-mount remount when missing."""
    attr = _MountAttr(attr_set, attr_clr, 0, 0)
    rc = _libc.syscall(SYS_mount_setattr, AT_FDCWD, path.encode(), flags, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc == 0:
        return
    if ctypes.get_errno() != errno.ENOSYS:
        _check(-1, f"mount_setattr {path}")
    targets = _mounts_under(path) if flags & AT_RECURSIVE else [path]
    for target in targets:
        _remount(target, attr_set, attr_clr)


def _remount(target: str, attr_set: int, attr_clr: int) -> None:
    """The old way: a bind remount keeping the flags the mount has (an
    unprivileged-locked flag cannot be dropped)."""
    st = os.statvfs(target)
    flags = st.f_flag & (MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    flags = (flags | attr_set) & ~attr_clr    # MOUNT_ATTR_* and MS_* agree on these four bits
    _mount(None, target, None, MS_REMOUNT | MS_BIND | flags)


def _mounts_under(path: str) -> list[str]:
    root = path.rstrip("/") + "/"
    with open("/proc/self/mountinfo") as f:
        points = [line.split()[4].encode().decode("unicode_escape") for line in f]
    return [p for p in points if p == path or (p + "/").startswith(root)]


def _set_name(name: bytes) -> None:
    """The process's name in ps and top (PR_SET_NAME; at most 15 bytes)."""
    _libc.prctl(PR_SET_NAME, ctypes.c_char_p(name[:15]), 0, 0, 0)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _read_all(fd: int) -> bytes:
    chunks = []
    while True:
        data = os.read(fd, 4096)
        if not data:
            os.close(fd)
            return b"".join(chunks)
        chunks.append(data)


def _write_quietly(fd: int, data: bytes) -> None:
    try:
        os.write(fd, data)
    except OSError:
        pass


# -- shared with isolation ------------------------------------------------------------

def start_ticks(pid: int) -> int:
    """The process's start time (clock ticks after boot, /proc/<pid>/stat
    field 22): with the pid it names one process, across pid reuse. -1 when
    there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return -1
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rindex(b")") + 2:].split()
    if fields[0] == b"Z":
        return -1                            # a zombie has ended
    return int(fields[19])


def write_json_atomic(path: str, doc: dict) -> None:
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(doc, f)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
