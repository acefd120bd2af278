"""One task's control group: cpu, memory and pids limits, membership,
kill-everything, and what the kernel counted (OOM kills, pids refusals, use).

Standard library only: the per-task shim (``shim.py``) imports this and
must start in a few tens of milliseconds.

Layout (``detect()`` picks it once per process):

* cgroup v1 (controllers mounted one per hierarchy, as on this project's
  machines): ``<mount of c>/<parent>/<agent_id>/<task_id>`` for c in cpu,
  memory, pids, plus cpuacct and freezer when mounted (cpu accounting, and a
  frozen kill).
* cgroup v2, used only when the unified hierarchy is where cpu, memory and
  pids live: ``<cgroup2 mount>/<parent>/<agent_id>/<task_id>``, with the
  three controllers enabled in every ancestor's ``cgroup.subtree_control``.

Limits: cpu is a CFS quota of ``cpus`` periods (``cpu.cfs_quota_us`` /
``cpu.max``) plus a proportional share; memory is a hard limit with no swap
(``memory.memsw.limit_in_bytes`` / ``memory.swap.max`` when the kernel has
swap accounting, ``swappiness`` 0); pids is ``pids.max``.

A ``Cgroup`` is a plain description (``to_json``/``from_json`` round-trip
it through checkpoints); every method reads or writes the kernel's files
and raises ``OSError`` as the file system does.
"""

from __future__ import annotations

import errno
import os
import signal
import time

cpu_period_us = 100_000
cpu_quota_min_us = 1_000          # the kernel refuses less
cpu_shares_per_cpu = 1024
kill_poll_interval_s = 0.01
remove_retry_s = 5.0              # rmdir of a cgroup whose last process is still exiting
required_controllers = ("cpu", "memory", "pids")
optional_controllers_v1 = ("cpuacct", "freezer")


class CgroupsUnavailable(OSError):
    pass


def detect(mounts_path: str = "/proc/self/mounts") -> dict:
    """Where the controllers live: ``{"version": 1, "mounts": {controller:
    mountpoint}}`` or ``{"version": 2, "mount": mountpoint}``. v1 wins when
    it has all of cpu, memory and pids; v2 when its root offers all three.
    Raises ``CgroupsUnavailable`` (ENOTSUP) otherwise."""
    v1, v2 = {}, None
    with open(mounts_path) as f:
        for line in f:
            _, mountpoint, fstype, options = line.split()[:4]
            if fstype == "cgroup":
                for option in options.split(","):
                    if option in required_controllers + optional_controllers_v1:
                        v1.setdefault(option, unescape_mountpoint(mountpoint))
            elif fstype == "cgroup2" and v2 is None:
                v2 = unescape_mountpoint(mountpoint)
    if all(c in v1 for c in required_controllers):
        return {"version": 1, "mounts": v1}
    if v2 is not None:
        with open(os.path.join(v2, "cgroup.controllers")) as f:
            offered = set(f.read().split())
        if set(required_controllers) <= offered:
            return {"version": 2, "mount": v2}
    raise CgroupsUnavailable(errno.ENOTSUP, "no cgroup hierarchy offers the cpu, memory and pids controllers "
                                            "(tasks cannot be isolated on this machine)")


def for_task(layout: dict, parent: str, agent_id: str, task_id: str) -> "Cgroup":
    """The (not yet created) cgroup of one task under ``layout``."""
    rel = os.path.join(parent, agent_id, task_id)
    if layout["version"] == 1:
        return CgroupV1({c: os.path.join(m, rel) for c, m in layout["mounts"].items()})
    return CgroupV2(os.path.join(layout["mount"], rel), layout["mount"])


def agent_dirs(layout: dict, parent: str, agent_id: str) -> list[str]:
    """The agent-level directories (parents of its tasks' cgroups)."""
    if layout["version"] == 1:
        return [os.path.join(m, parent, agent_id) for m in layout["mounts"].values()]
    return [os.path.join(layout["mount"], parent, agent_id)]


def remove_agent_dirs(layout: dict, parent: str, agent_id: str) -> None:
    """Remove the agent's (empty) cgroup directories; ones that still hold a
    task's cgroup stay."""
    for d in agent_dirs(layout, parent, agent_id):
        try:
            os.rmdir(d)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.EBUSY, errno.ENOTEMPTY):
                raise


def from_json(doc: dict) -> "Cgroup":
    if doc["version"] == 1:
        return CgroupV1(dict(doc["dirs"]))
    return CgroupV2(doc["dir"], doc["mount"])


def cpu_quota_us(cpus: float) -> int:
    """The CFS quota (per ``cpu_period_us``) that gives ``cpus`` cpus."""
    return max(cpu_quota_min_us, int(round(cpus * cpu_period_us)))


class Cgroup:
    """Shared behaviour; subclasses name the files."""

    version = 0

    def procs(self) -> set[int]:
        """Every process in the cgroup (host pids); empty when it is gone."""
        out = set()
        for d in self._dirs():
            try:
                with open(os.path.join(d, "cgroup.procs")) as f:
                    out.update(int(p) for p in f.read().split())
            except OSError as e:
                if e.errno not in (errno.ENOENT, errno.ENODEV):   # ENODEV: removed while we read
                    raise
        return out

    def add(self, pid: int) -> None:
        for d in self._dirs():
            _write(os.path.join(d, "cgroup.procs"), str(pid))

    def kill_all(self, timeout_s: float = 10.0) -> bool:
        """SIGKILL every process in the cgroup, again and again until it is
        empty (a process forked between reading cgroup.procs and the kill
        is caught on the next round); True when empty within ``timeout_s``."""
        if not self.procs():
            return True                      # the usual case at cleanup: nothing to freeze
        deadline = time.monotonic() + timeout_s
        self._freeze(True)
        try:
            while True:
                pids = self.procs()
                if not pids:
                    return True
                for pid in pids:
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                if time.monotonic() > deadline:
                    return False
                # Frozen processes die only once thawed (v1): thaw so the
                # pending SIGKILLs are delivered, refreeze on the next round.
                self._freeze(False)
                time.sleep(kill_poll_interval_s)
                self._freeze(True)
        finally:
            self._freeze(False)

    def remove(self) -> None:
        """rmdir every directory of the cgroup (it must be empty of
        processes; an exiting process can keep it busy for a moment)."""
        deadline = time.monotonic() + remove_retry_s
        for d in self._dirs():
            while True:
                try:
                    os.rmdir(d)
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise
                    time.sleep(kill_poll_interval_s)

    def exists(self) -> bool:
        return any(os.path.isdir(d) for d in self._dirs())

    def _freeze(self, frozen: bool) -> None:
        pass


class CgroupV1(Cgroup):
    version = 1

    def __init__(self, dirs: dict):
        self.dirs = dirs                     # controller -> directory

    def to_json(self) -> dict:
        return {"version": 1, "dirs": dict(self.dirs)}

    def create(self, cpus: float, mem_bytes: int, pids_max: int) -> None:
        """Make the directories and set the limits. Raises OSError."""
        for d in self.dirs.values():
            _makedirs(d)
        cpu, mem, pids = self.dirs["cpu"], self.dirs["memory"], self.dirs["pids"]
        _write(os.path.join(cpu, "cpu.cfs_period_us"), str(cpu_period_us))
        _write(os.path.join(cpu, "cpu.cfs_quota_us"), str(cpu_quota_us(cpus)))
        _write(os.path.join(cpu, "cpu.shares"), str(max(2, int(cpus * cpu_shares_per_cpu))))
        _write_if_present(os.path.join(mem, "memory.swappiness"), "0")
        _write(os.path.join(mem, "memory.limit_in_bytes"), str(mem_bytes))
        # memsw >= limit is required, so it goes after the limit; equal = no swap.
        _write_if_present(os.path.join(mem, "memory.memsw.limit_in_bytes"), str(mem_bytes))
        _write(os.path.join(pids, "pids.max"), str(pids_max))

    def oom_kills(self) -> int:
        """Processes the OOM killer killed in this cgroup (``oom_kill`` of
        memory.oom_control, kernel 4.13+); -1 when the kernel does not say."""
        fields = _fields(os.path.join(self.dirs["memory"], "memory.oom_control"))
        return fields.get("oom_kill", -1)

    def memory_limit_hits(self) -> int:
        return _read_int(os.path.join(self.dirs["memory"], "memory.failcnt"), 0)

    def pids_limit_hits(self) -> int:
        return _fields(os.path.join(self.dirs["pids"], "pids.events")).get("max", 0)

    def usage(self) -> dict:
        """``{"mem_bytes", "mem_peak_bytes", "cpu_s", "pids"}`` now (cpu_s is
        -1 without a cpuacct hierarchy)."""
        mem = self.dirs["memory"]
        cpuacct = self.dirs.get("cpuacct")
        cpu_ns = _read_int(os.path.join(cpuacct, "cpuacct.usage"), -1) if cpuacct else -1
        return {"mem_bytes": _read_int(os.path.join(mem, "memory.usage_in_bytes"), 0),
                "mem_peak_bytes": _read_int(os.path.join(mem, "memory.max_usage_in_bytes"), 0),
                "cpu_s": cpu_ns / 1e9 if cpu_ns >= 0 else -1.0,
                "pids": _read_int(os.path.join(self.dirs["pids"], "pids.current"), 0)}

    def _dirs(self) -> list[str]:
        return list(self.dirs.values())

    def _freeze(self, frozen: bool) -> None:
        freezer = self.dirs.get("freezer")
        if freezer:
            _write_if_present(os.path.join(freezer, "freezer.state"), "FROZEN" if frozen else "THAWED")


class CgroupV2(Cgroup):
    version = 2

    def __init__(self, path: str, mount: str):
        self.dir = path
        self.mount = mount

    def to_json(self) -> dict:
        return {"version": 2, "dir": self.dir, "mount": self.mount}

    def create(self, cpus: float, mem_bytes: int, pids_max: int) -> None:
        """Make the directory, enabling cpu, memory and pids in every
        ancestor below the mount, and set the limits. Raises OSError."""
        rel = os.path.relpath(self.dir, self.mount).split(os.sep)
        parent = self.mount
        for part in rel:
            _write(os.path.join(parent, "cgroup.subtree_control"), " ".join("+" + c for c in required_controllers))
            parent = os.path.join(parent, part)
            _makedirs(parent)
        _write(os.path.join(self.dir, "cpu.max"), f"{cpu_quota_us(cpus)} {cpu_period_us}")
        _write(os.path.join(self.dir, "memory.max"), str(mem_bytes))
        _write_if_present(os.path.join(self.dir, "memory.swap.max"), "0")
        # One OOM kill takes the whole task, as the v1 shim does by hand.
        _write_if_present(os.path.join(self.dir, "memory.oom.group"), "1")
        _write(os.path.join(self.dir, "pids.max"), str(pids_max))

    def oom_kills(self) -> int:
        return _fields(os.path.join(self.dir, "memory.events")).get("oom_kill", -1)

    def memory_limit_hits(self) -> int:
        return _fields(os.path.join(self.dir, "memory.events")).get("max", 0)

    def pids_limit_hits(self) -> int:
        return _fields(os.path.join(self.dir, "pids.events")).get("max", 0)

    def usage(self) -> dict:
        cpu_us = _fields(os.path.join(self.dir, "cpu.stat")).get("usage_usec", -1)
        return {"mem_bytes": _read_int(os.path.join(self.dir, "memory.current"), 0),
                "mem_peak_bytes": _read_int(os.path.join(self.dir, "memory.peak"), 0),
                "cpu_s": cpu_us / 1e6 if cpu_us >= 0 else -1.0,
                "pids": _read_int(os.path.join(self.dir, "pids.current"), 0)}

    def kill_all(self, timeout_s: float = 10.0) -> bool:
        # cgroup.kill (5.14+) kills the whole subtree atomically; the loop
        # of the base class then only confirms it is empty.
        _write_if_present(os.path.join(self.dir, "cgroup.kill"), "1")
        return super().kill_all(timeout_s)

    def _dirs(self) -> list[str]:
        return [self.dir]

    def _freeze(self, frozen: bool) -> None:
        _write_if_present(os.path.join(self.dir, "cgroup.freeze"), "1" if frozen else "0")


# -- file helpers -----------------------------------------------------------------

def _makedirs(path: str, attempts: int = 3) -> None:
    """makedirs that survives another agent removing an empty parent
    (``remove_agent_dirs``) between two of its mkdirs."""
    for attempt in range(attempts):
        try:
            os.makedirs(path, exist_ok=True)
            return
        except FileNotFoundError:
            if attempt == attempts - 1:
                raise


def _write(path: str, value: str) -> None:
    """Write a knob that must exist: never O_CREAT (cgroupfs answers EACCES
    to a create, which would hide that the knob is missing)."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _write_if_present(path: str, value: str) -> None:
    """Write a knob the kernel may not have (no swap accounting, an old
    kernel): absent or refused is not an error."""
    try:
        _write(path, value)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENODEV):
            raise


def _read_int(path: str, default: int) -> int:
    try:
        with open(path) as f:
            return int(f.read().strip() or default)
    except (FileNotFoundError, ValueError):
        return default


def _fields(path: str) -> dict:
    """A flat-keyed cgroup file (``name value`` per line) as a dict of ints."""
    out = {}
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) == 2 and parts[1].lstrip("-").isdigit():
                    out[parts[0]] = int(parts[1])
    except FileNotFoundError:
        pass
    return out


def unescape_mountpoint(mountpoint: str) -> str:
    """/proc/mounts escapes space, tab, newline and backslash as octal."""
    return mountpoint.encode().decode("unicode_escape")
