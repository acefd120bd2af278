"""Mounting and unmounting: option parsing, the FUSE main loop, the metrics
endpoint, and a supervised mount process for ``cistern mount`` (daemon
mode), ``cistern up --mount`` and tests.

Contract:

* ``parse_options(["allow_other,ro", "attr_timeout=2", ...])`` splits ``-o``
  strings into the kernel's FUSE options (``DEFAULT_FUSE_OPTIONS``
  overridden by the caller's) and the mount's own (``OWN_OPTIONS``:
  ``timeout`` seconds for a cluster call, ``attr_cache`` seconds,
  ``block_size`` bytes, ``read_ahead_kb``, ``statahead`` entries,
  ``async_create`` 0|1). Bad values are
  CisternError(EINVAL).
* ``serve(mountpoint, cluster, options, metrics_address)`` mounts in this
  process and serves until unmounted, SIGINT or SIGTERM (libfuse's own
  handlers end the loop and unmount), then returns. It fails with a
  one-line CisternError before mounting when the mountpoint is missing,
  already mounted, or the cluster does not answer within ``timeout``.
* ``unmount(mountpoint)`` always gets the mount off: ``fusermount -u``,
  then lazily (``fusermount -uz``, ``umount -l``) when it is busy or its
  daemon is dead. CisternError(EINVAL) when nothing is mounted there.
* ``MountProcess`` runs ``cistern mount MNT --foreground`` as a child,
  waits until the kernel lists the mount, and ``stop()`` unmounts and reaps
  it whatever state it is in.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

from cistern.core.errors import CisternError
from cistern.core.metrics import start_metrics_server

from .operations import FS_ENCODING, FUSE, Metrics, Operations, Settings
from .statahead import window_default as statahead_window_default

__all__ = ["DEFAULT_FUSE_OPTIONS", "OWN_OPTIONS", "parse_options", "check_mountpoint", "serve", "unmount",
           "is_mounted", "MountProcess"]

log = logging.getLogger(__name__)

# The kernel-side defaults (JuiceFS-like: attributes and entries cached 1 s,
# no negative caching so a name created elsewhere is seen at once).
DEFAULT_FUSE_OPTIONS = {
    "attr_timeout": 1.0,
    "entry_timeout": 1.0,
    "negative_timeout": 0.0,
    "big_writes": True,
    "max_write": 128 * 1024,     # libfuse 2's ceiling
    "max_read": 128 * 1024,
    "max_readahead": 128 * 1024,
    # The kernel checks permissions too, from the attributes it caches: without
    # it, a name cached in the kernel could be reached through a directory its
    # caller may not search (cached entries skip the lookup we would check in).
    "default_permissions": True,
    "use_ino": True,             # st_ino is Cistern's inode number (hard links, tar, git)
    "hard_remove": True,         # no .fuse_hidden files: operations.py hides files unlinked while open
    "fsname": "cistern",
    "subtype": "cistern",
}
# The mount's own options: name -> (parse, default).
OWN_OPTIONS = {
    "timeout": (float, 30.0),      # seconds a cluster call may take before ETIMEDOUT/EIO
    "attr_cache": (float, None),   # seconds; default: attr_timeout
    "block_size": (int, None),     # bytes of the blocks this mount writes; default: the nodes'
    # The kernel's read-ahead for the mount (its bdi's read_ahead_kb, set by
    # root after mounting; libfuse 2 cannot raise it above 128 KiB itself).
    "read_ahead_kb": (int, 4096),
    # Entries a stat-ahead pass fetches ahead of a caller traversing a
    # directory (operations.py, statahead.py); 0 turns stat-ahead off.
    "statahead": (int, statahead_window_default),
    # Asynchronous creates under directory create delegations (operations.py,
    # client/async_create.py): 1 on, 0 off.
    "async_create": (int, 1),
}
start_timeout_s = 60.0
stop_timeout_s = 30.0
poll_interval_s = 0.05


def parse_options(strings) -> tuple[dict, dict]:
    """(kernel FUSE options, own options) from ``-o`` strings."""
    fuse_options = dict(DEFAULT_FUSE_OPTIONS)
    own = {name: default for name, (_, default) in OWN_OPTIONS.items()}
    own["linearizable_attrs"] = False
    for string in strings:
        for item in string.split(","):
            item = item.strip()
            if not item:
                continue
            name, eq, value = item.partition("=")
            if name in OWN_OPTIONS:
                parse = OWN_OPTIONS[name][0]
                try:
                    own[name] = parse(value)
                except ValueError:
                    raise CisternError(errno.EINVAL, f"option {name} needs a number, not {value!r}") from None
                if own[name] < 0 or (name not in ("attr_cache", "read_ahead_kb", "statahead", "async_create")
                                     and own[name] == 0):
                    raise CisternError(errno.EINVAL, f"option {name} must be positive")
                if name == "async_create" and own[name] not in (0, 1):
                    raise CisternError(errno.EINVAL, "option async_create is 0 or 1")
            elif name in ("attr_timeout", "entry_timeout", "negative_timeout"):
                try:
                    fuse_options[name] = float(value)
                except ValueError:
                    raise CisternError(errno.EINVAL, f"option {name} needs seconds, not {value!r}") from None
            elif name == "rw":
                fuse_options.pop("ro", None)
            elif name == "linearizable_attrs":
                own["linearizable_attrs"] = True
            elif name == "no_default_permissions":
                fuse_options.pop("default_permissions", None)
            elif name in ("foreground", "debug", "nothreads") or name.startswith("-"):
                raise CisternError(errno.EINVAL, f"option {name} is not a mount option")
            else:
                fuse_options[name] = value if eq else True
    if own["attr_cache"] is None:
        own["attr_cache"] = fuse_options["attr_timeout"]
    return fuse_options, own


def is_mounted(mountpoint) -> bool:
    """Whether the kernel lists a mount at ``mountpoint`` (works for a mount
    whose daemon is dead, where ``os.path.ismount`` says False)."""
    return _mount_device(mountpoint) is not None


def _mount_device(mountpoint) -> str | None:
    """"major:minor" of the mount at ``mountpoint`` from /proc/self/mountinfo
    (never touching the mount itself), or None."""
    target = os.path.abspath(os.fspath(mountpoint))
    found = None
    try:
        with open("/proc/self/mountinfo", "rb") as f:
            for line in f:
                fields = line.split()
                if len(fields) > 4 and _unescape(fields[4]) == target:
                    found = fields[2].decode()   # the last one listed is on top
    except OSError:
        pass
    return found


def _set_read_ahead(mountpoint: str, kb: int, timeout_s: float = 30.0) -> None:
    """Once the mount appears, set its read-ahead (needs root; a failure is
    only logged: the mount works, reads are slower)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        device = _mount_device(mountpoint)
        if device is not None:
            try:
                with open(f"/sys/class/bdi/{device}/read_ahead_kb", "w") as f:
                    f.write(str(kb))
            except OSError as e:
                log.info("could not set read_ahead_kb=%d for %s: %s", kb, mountpoint, e)
            return
        time.sleep(poll_interval_s)


def _unescape(field: bytes) -> str:
    # mountinfo writes space, tab, newline and backslash as \\ooo.
    out, i = bytearray(), 0
    while i < len(field):
        if field[i] == 0x5C and i + 4 <= len(field) and field[i + 1:i + 4].isdigit():
            out.append(int(field[i + 1:i + 4], 8))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return os.fsdecode(bytes(out))


def check_mountpoint(mountpoint) -> str:
    """The absolute mountpoint, or CisternError: ENOENT/ENOTDIR when it is
    not a directory, EBUSY when something is mounted there already."""
    mountpoint = os.path.abspath(os.fspath(mountpoint))
    if is_mounted(mountpoint):
        raise CisternError(errno.EBUSY, f"{mountpoint} is already a mount point (cistern umount {mountpoint})")
    if not os.path.isdir(mountpoint):
        err = errno.ENOTDIR if os.path.exists(mountpoint) else errno.ENOENT
        raise CisternError(err, f"{mountpoint}: {os.strerror(err)}")
    return mountpoint


def serve(mountpoint, cluster, options=(), metrics_address: str | None = None, *, ready=None) -> int:
    """Mount and serve in this process until unmounted or signalled; 0 then.
    ``ready(metrics_address)`` is called just before the kernel mount."""
    from cistern.client import connect

    mountpoint = check_mountpoint(mountpoint)
    fuse_options, own = parse_options(options)
    client = connect(cluster, uid=0, gid=0, groups=[], timeout_s=own["timeout"], umask=0,
                     block_size=own["block_size"])
    metrics_server = None
    try:
        try:
            client.attr("/")
        except OSError as e:
            raise CisternError(e.errno or errno.EIO,
                               f"cannot reach the cluster: {e.strerror or e}") from None
        metrics = Metrics()
        if metrics_address:
            metrics_server = start_metrics_server(metrics_address, metrics.registry)
            log.info("metrics at http://%s/metrics", metrics_server.address)
        settings = Settings(read_only="ro" in fuse_options, attr_cache_s=own["attr_cache"],
                            linearizable_attrs=own["linearizable_attrs"], statahead_entries=own["statahead"],
                            async_create=bool(own["async_create"]))
        operations = Operations(client, settings, metrics)
        if not settings.read_only and operations.remove_leftovers():
            log.info("removed files left unlinked-while-open by mounts that died")
        if ready is not None:
            ready(metrics_server.address if metrics_server else None)
        log.info("mounting %s with %s", mountpoint, fuse_options)
        if own["read_ahead_kb"]:
            threading.Thread(target=_set_read_ahead, args=(mountpoint, own["read_ahead_kb"]),
                             name="cistern-read-ahead", daemon=True).start()
        try:
            FUSE(operations, mountpoint, foreground=True, nothreads=False, raw_fi=True,
                        encoding=FS_ENCODING, **fuse_options)
        except RuntimeError as e:
            raise CisternError(errno.EIO, f"libfuse could not mount {mountpoint} (status {e}; "
                                          "see its message above)") from None
        log.info("unmounted %s", mountpoint)
        return 0
    finally:
        if metrics_server is not None:
            metrics_server.stop()
        client.close()


def unmount(mountpoint, *, timeout_s: float = stop_timeout_s) -> None:
    """Take the mount at ``mountpoint`` off, lazily if it is busy or its
    daemon is gone. Raises CisternError(EINVAL) when nothing is mounted
    there, CisternError(EBUSY) when every way failed (with the reason)."""
    mountpoint = os.path.abspath(os.fspath(mountpoint))
    if not is_mounted(mountpoint):
        raise CisternError(errno.EINVAL, f"{mountpoint} is not mounted")
    fusermount = shutil.which("fusermount") or shutil.which("fusermount3")
    attempts = []
    if fusermount:
        attempts += [[fusermount, "-u", mountpoint], [fusermount, "-uz", mountpoint]]
    attempts.append(["umount", "-l", mountpoint])
    reason = ""
    for argv in attempts:
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired) as e:
            reason = str(e)
            continue
        if done.returncode == 0 or not is_mounted(mountpoint):
            return
        reason = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()[-1:] or [""]
        reason = reason[0]
    raise CisternError(errno.EBUSY, f"could not unmount {mountpoint}: {reason}")


def _log_tail(path, n_bytes: int = 3000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - n_bytes))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def last_error_line(log_text: str) -> str:
    """The line a failed ``cistern mount`` child left for its user."""
    lines = [line for line in log_text.splitlines() if line.strip()]
    for line in reversed(lines):
        if line.startswith("cistern mount:"):
            return line[len("cistern mount:"):].strip()
    return lines[-1] if lines else "the mount process exited"


class MountProcess:
    """``cistern mount MNT --foreground`` as a child process.

    ``start()`` returns once the kernel lists the mount, or raises
    CisternError with the child's last message (it exited) or ETIMEDOUT.
    ``stop()`` unmounts (``unmount``: lazily if need be), waits for the
    child, and kills it if it lingers; safe to call twice or after a
    failed start. ``die_with_parent`` makes the child die with this process
    (tests, ``cistern up``); a daemonised mount passes False."""

    def __init__(self, mountpoint, cluster: str, *, options=(), metrics_address: str | None = None,
                 log_path=None, env: dict | None = None, log_level: str = "WARNING",
                 die_with_parent: bool = True, command: list[str] | None = None):
        from cistern.core import procs

        self.mountpoint = os.path.abspath(os.fspath(mountpoint))
        self.cluster = str(cluster)
        self.options = [o for o in options if o]
        self.metrics_address = metrics_address
        self.log_path = os.fspath(log_path) if log_path else None
        base = dict(os.environ, **(env or {}))
        self.env = procs.child_env(base) if die_with_parent else base
        self.log_level = log_level
        self.command = command or [os.path.join(os.path.dirname(sys.executable), "cistern")]
        self.proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        argv = self.command + ["--log-level", self.log_level, "mount", self.mountpoint,
                               "--cluster", self.cluster, "--foreground"]
        if self.options:
            argv += ["-o", ",".join(self.options)]
        if self.metrics_address:
            argv += ["--metrics", self.metrics_address]
        return argv

    def start(self, timeout_s: float = start_timeout_s) -> "MountProcess":
        check_mountpoint(self.mountpoint)
        parse_options(self.options)    # a bad option is reported here, not as a dead child
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, env=self.env, start_new_session=True,
                                         close_fds=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        deadline = time.monotonic() + timeout_s
        while not is_mounted(self.mountpoint):
            if self.proc.poll() is not None:
                raise CisternError(errno.EIO, last_error_line(self.log_tail()))
            if time.monotonic() > deadline:
                self.stop()
                raise CisternError(errno.ETIMEDOUT, f"{self.mountpoint} not mounted after {timeout_s:.0f} s"
                                                    f"{': ' + self.log_tail()[-500:] if self.log_path else ''}")
            time.sleep(poll_interval_s)
        return self

    def log_tail(self) -> str:
        return _log_tail(self.log_path) if self.log_path else ""

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout_s: float = stop_timeout_s) -> int | None:
        """Unmount and reap; returns the child's exit status (None if never
        started: then a mount already at the mountpoint is not ours to touch)."""
        if self.proc is None:
            return None
        try:
            self._unmount_if_mounted(timeout_s)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("mount process %d still running after unmount; killing it", self.proc.pid)
                self.proc.send_signal(signal.SIGKILL)
                self.proc.wait(10)
            return self.proc.returncode
        finally:
            self._unmount_if_mounted(timeout_s)   # the child died with the mount still in place

    def _unmount_if_mounted(self, timeout_s: float) -> None:
        if is_mounted(self.mountpoint):
            try:
                unmount(self.mountpoint, timeout_s=timeout_s)
            except CisternError as e:
                log.warning("%s", e.message)
