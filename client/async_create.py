"""Asynchronous creates under directory create delegations: the shell
around ``delegation.DirDelegation`` (grants, batched commits, renewals,
releases).

``AsyncCreates(client)`` is used by one process (the FUSE mount) that
creates many files in one directory. Contract:

* ``create(path, mode, cred)`` answers at once, with the attributes the
  file will have, when this client holds a usable delegation on the
  parent: checked locally as the metadata service would check an
  exclusive create (name, EEXIST, EACCES), given an inode number reserved
  for this holder, and queued. It returns None when it cannot (the caller
  creates synchronously), and asks for a delegation on a directory after
  ``grant_after_creates`` synchronous creates there within a second.
* Queued creates are committed in batches (one DELEG_CREATE, one Raft
  entry, per batch; the next batch leaves when the previous one is
  answered), so the cluster sees them in the order they were answered.
* Ordering for this client's other operations: ``flush_dir(path)`` waits
  until every create answered in that directory is committed;
  ``release_dir(path)`` also gives the delegation back (for operations the
  delegation would refuse: listing it, adding a name to it without this
  class, changing it); ``flush_ino(ino)`` flushes the directory of a file
  created here. The caller must call these; nothing orders
  them for it. ``lookup(path, cred)`` answers what it knows locally.
* Durability: a create is durable once its batch is committed
  (``flush_dir``/``flush_ino`` return). Until then it lives in this
  process only: if the process dies the create is lost (as are the
  processes that saw it succeed, on this host). A create whose commit
  fails (the delegation was removed after lapsing while this client was
  cut off, the inode limit) is logged and its inode is put in ``failed``;
  the caller answers EIO for it afterwards.
* Others: while the delegation lives, other clients' operations that could
  observe a name missing from the directory are refused by the service;
  the metadata client (``metadata.client.MetaClient``, and every ``Client``
  call goes through one) recalls the delegation and retries with backoff,
  so they wait until this holder has committed and released (about one
  renewal interval plus two commits), or at most one term after a dead
  holder's last renewal.
* Threads: one worker thread ("cistern-async-create") sends grants,
  batches, renewals and releases; replies are handled on the metadata
  client's receiver thread, briefly, under one lock. Every public method is
  thread-safe. ``close()`` commits and releases everything.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from concurrent.futures import Future

from cistern.core.errors import CisternError
from cistern.metadata import limits, model
from cistern.metadata.model import ROOT_CRED, Op
from cistern.metadata.state import X_OK, new_entry_errno, permits

from . import paths
from .delegation import GRANTING, HELD, LOST, RECALLED, DirDelegation

__all__ = ["AsyncCreates"]

log = logging.getLogger(__name__)

grant_after_creates = 2          # synchronous creates in one directory within a second before asking
grant_wait_s = 5.0               # a lookup or create in a directory being granted waits this long at most
regrant_backoff_s = 2.0          # a directory whose delegation was recalled or refused is not asked for again sooner
delegations_max = 64             # delegations one client holds at once
# Answered creates wait this long at most for others to share their commit
# (one Raft entry each): a flush sends at once. Every batch costs the mount,
# and each metadata replica, a message's CPU, so fewer, larger ones let the
# creates run faster on a busy host.
batch_delay_s = 0.02


def _split(path: str) -> tuple[str, bytes]:
    parent, name = paths.split(path)
    return parent, os.fsencode(name)


class AsyncCreates:
    """See the module docstring. ``client`` is a ``Client`` (any view: the
    delegation operations run as root over its metadata client)."""

    def __init__(self, client, *, holder: bytes | None = None, clock=time.monotonic):
        self._meta = client.meta
        self.holder = holder or b"dlg-" + os.urandom(12).hex().encode()
        self._clock = clock
        self._cond = threading.Condition(threading.Lock())
        self._dirs: dict[str, DirDelegation] = {}
        self._recent: dict[str, list] = {}           # path -> times of recent synchronous creates
        self._not_before: dict[str, float] = {}      # path -> no grant asked before
        self._pending_inos: dict[int, str] = {}      # ino answered here, not yet committed -> its directory
        self.failed: set[int] = set()                # inodes whose create failed at commit
        self.statistics = {"async": 0, "batches": 0, "grants": 0, "recalled": 0, "failed": 0}
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="cistern-async-create", daemon=True)
        self._thread.start()

    # -- the caller's side -----------------------------------------------

    def create(self, path: str, mode: int, cred):
        """The new file's Attr if answered here; None to create it
        synchronously. Raises OSError (EEXIST, EACCES, ENAMETOOLONG) for a
        create the service would refuse."""
        parent, name = _split(path)
        with self._cond:
            d = self._usable(parent)
            if d is None:
                self._note_sync_create(parent)
                return None
            err = d.check_create(name, cred)
            if err:
                raise OSError(err, os.strerror(err), path)
            attr = d.create(name, mode, cred, time.time_ns(), self._clock())
            self._pending_inos[attr.ino] = parent
            self.statistics["async"] += 1
            self._cond.notify_all()
            return attr

    def lookup(self, path: str, cred) -> tuple[int, object]:
        """What this holder knows of ``path`` looked up by ``cred``:
        ``(errno, None)`` when it is known missing (ENOENT) or the lookup
        would fail (EACCES without search permission on the directory,
        ENAMETOOLONG); ``(0, attr)`` for a file created here and not yet
        committed (its attributes cannot have changed: every change is
        ordered after the commit); ``(0, None)``: ask the service."""
        parent, name = _split(path)
        with self._cond:
            d = self._usable(parent)
            if d is None:
                return 0, None
            if not permits(d.mode, d.uid, d.gid, cred, X_OK):
                return errno.EACCES, None
            if d.absent(name):
                err = new_entry_errno(name)
                return (err if err and err != errno.EEXIST else errno.ENOENT), None
            return 0, d.pending.get(name)

    def delegated(self, path: str) -> bool:
        """Whether this client holds or is asking for a delegation on ``path``."""
        return path in self._dirs

    def flush_dir(self, path: str, release: bool = False) -> None:
        """Wait until every create answered in directory ``path`` is
        committed (and, with ``release``, the delegation given back)."""
        with self._cond:
            d = self._dirs.get(path)
            if d is None:
                return
            if release:
                d.release_soon()
            d.urgent = bool(d.queue)
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._dirs.get(path) is not d or (d.settled() and not release),
                                timeout=self._meta.timeout_s)

    def release_dir(self, path: str) -> None:
        self.flush_dir(path, release=True)

    def flush_ino(self, ino: int) -> None:
        """Wait until the create of ``ino`` answered here is committed (or
        has failed: then ``ino in failed``)."""
        path = self._pending_inos.get(ino)
        if path is None:
            return
        self.flush_dir(path)
        with self._cond:
            self._cond.wait_for(lambda: ino not in self._pending_inos, timeout=self._meta.timeout_s)

    def release_all(self) -> None:
        for path in list(self._dirs):
            self.release_dir(path)

    def close(self) -> None:
        """Commit and release everything, then stop the worker."""
        self.release_all()
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=5)

    # -- decisions (under the lock) ------------------------------------------

    def _usable(self, parent: str):
        """The usable delegation on ``parent``, or None when there is none.
        One being granted, renewed late, or given back is waited for (its
        replies notify), so a create never races this holder's own
        delegation to the service (which would refuse it)."""
        deadline = self._clock() + grant_wait_s
        while True:
            d = self._dirs.get(parent)
            if d is None:
                return None
            now = self._clock()
            if d.usable(now):
                return d
            if now >= deadline:
                return None
            self._cond.wait(timeout=min(deadline - now, limits.delegation_renew_interval_s))

    def _note_sync_create(self, parent: str) -> None:
        now = self._clock()
        if parent in self._dirs or now < self._not_before.get(parent, 0.0) or len(self._dirs) >= delegations_max:
            return
        times = [t for t in self._recent.get(parent, ()) if now - t < 1.0] + [now]
        if len(times) < grant_after_creates:
            self._recent[parent] = times
            if len(self._recent) > 4 * delegations_max:
                self._recent.clear()
            return
        self._recent.pop(parent, None)
        self._dirs[parent] = DirDelegation(parent, now)
        self._cond.notify_all()

    def _forget(self, d: DirDelegation, backoff: bool) -> None:
        if self._dirs.get(d.path) is d:
            del self._dirs[d.path]
        if backoff:
            self._not_before[d.path] = self._clock() + regrant_backoff_s
            if len(self._not_before) > 4 * delegations_max:
                now = self._clock()
                self._not_before = {p: t for p, t in self._not_before.items() if t > now}
        self._cond.notify_all()

    def _work(self, now: float) -> list:
        """What to send now, as (kind, delegation, payload); marks it out."""
        todo = []
        for d in list(self._dirs.values()):
            out = d.out
            if d.state == GRANTING:
                if "grant" not in out:
                    out.add("grant")
                    todo.append(("grant", d, None))
                continue
            if d.state == LOST:
                for c, err in [(c, errno.ESTALE) for c in d.unsent()]:
                    self._failed(d, c, err)
            if "batch" not in out and d.batch_due(now, batch_delay_s):
                creds, items = d.take_batch()
                out.add("batch")
                d.renew_sent_at = now     # a batch renews the delegation too
                todo.append(("batch", d, (creds, items, now)))
            if d.state == HELD and "renew" not in out and now - d.renew_sent_at >= limits.delegation_renew_interval_s:
                out.add("renew")
                d.renew_sent_at = now
                todo.append(("renew", d, now))
            if d.should_release(now) and d.settled() and "release" not in out and "batch" not in out:
                d.releasing = True     # no create may be answered under it from now on
                if d.state == LOST:
                    self._forget(d, True)
                else:
                    out.add("release")
                    todo.append(("release", d, None))
        return todo

    def _failed(self, d: DirDelegation, c, err: int) -> None:
        self._pending_inos.pop(c.attr.ino, None)
        self.failed.add(c.attr.ino)
        self.statistics["failed"] += 1
        log.error("asynchronous create of %s/%s (inode %d) failed at commit: %s; it answers EIO",
                  d.path.rstrip("/"), os.fsdecode(c.name), c.attr.ino, os.strerror(err))

    # -- the worker and the replies ------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._closed:
                    return
                todo = self._work(self._clock())
                if not todo:
                    queued = any(d.queue and not d.sending for d in self._dirs.values())
                    self._cond.wait(timeout=batch_delay_s / 2 if queued else limits.delegation_renew_interval_s / 3)
                    continue
            for kind, d, payload in todo:
                self._send(kind, d, payload)

    def _send(self, kind: str, d: DirDelegation, payload) -> None:
        if kind == "grant":
            args = (os.fsencode(d.path), self.holder, limits.delegation_inodes_max)
            sent_at = self._clock()
            self._submit(Op.DELEG_GRANT, args, lambda f: self._granted(d, f, sent_at))
        elif kind == "batch":
            creds, items, sent_at = payload
            self._submit(Op.DELEG_CREATE, (d.dino, self.holder, creds, items),
                         lambda f: self._committed(d, f, sent_at))
        elif kind == "renew":
            self._submit(Op.DELEG_RENEW, (d.dino, self.holder), lambda f: self._renewed(d, f, payload))
        else:
            self._submit(Op.DELEG_RELEASE, (d.dino, self.holder), lambda f: self._released(d, f))

    def _submit(self, code: int, args: tuple, callback) -> None:
        try:
            future = self._meta.submit(code, model.encode_args(ROOT_CRED, *args))
        except Exception as e:   # noqa: BLE001 - a closed client: answer as a failed call
            future = Future()
            future.set_exception(e)
        future.add_done_callback(callback)

    def _done(self, d: DirDelegation, kind: str) -> None:
        d.out.discard(kind)
        self._cond.notify_all()

    def _granted(self, d: DirDelegation, f: Future, sent_at: float) -> None:
        with self._cond:
            self._done(d, "grant")
            error = f.exception()
            if error is not None:
                if not (isinstance(error, CisternError) and error.errno in (errno.EBUSY, errno.E2BIG, errno.ENOENT)):
                    log.warning("delegation of %s not granted: %s", d.path, error)
                self._forget(d, True)
                return
            attr, first, end, names = f.result()
            d.granted(model.Attr(*attr), first, end, names, sent_at)
            self.statistics["grants"] += 1
            log.debug("delegation of %s granted: %d names, inodes %d-%d", d.path, len(names), first, end - 1)

    def _committed(self, d: DirDelegation, f: Future, sent_at: float) -> None:
        with self._cond:
            self._done(d, "batch")
            error = f.exception()
            if error is not None:
                err = error.errno if isinstance(error, CisternError) else errno.EIO
                results = err
                if err == errno.ESTALE:
                    d.lost()
            else:
                recalled, results = f.result()
                d.renewed(bool(recalled), sent_at)
                self.statistics["recalled"] += bool(recalled)
            self.statistics["batches"] += 1
            sent = list(d.sending)
            for c, err in d.committed(results):
                self._failed(d, c, err)
            for c in sent:
                self._pending_inos.pop(c.attr.ino, None)

    def _renewed(self, d: DirDelegation, f: Future, sent_at: float) -> None:
        with self._cond:
            self._done(d, "renew")
            error = f.exception()
            if error is None:
                if f.result():
                    self.statistics["recalled"] += 1
                d.renewed(bool(f.result()), sent_at)
            elif isinstance(error, CisternError) and error.errno == errno.ESTALE:
                d.lost()
            # Anything else (a timeout): the next renewal tries again.

    def _released(self, d: DirDelegation, f: Future) -> None:
        with self._cond:
            self._done(d, "release")
            log.debug("delegation of %s released (%s%s)", d.path, d.state, ", given back" if d.give_back else "")
            self._forget(d, d.state in (RECALLED, LOST) or d.give_back)
