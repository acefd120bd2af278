"""The holder's side of a directory create delegation, as a pure core
(no I/O, no clock: callers pass ``now``, a monotonic time in seconds).

A ``DirDelegation`` is what one client knows about the delegation it holds
on one directory D (state.py's DELEG_* operations): D's attributes and
complete listing as the grant returned them, the inode numbers it reserved,
and the creates it has answered but not yet committed. While it is
``usable``, only this holder can add names to D, so a name missing from
``names`` is missing from D, and a create can be answered at once: checked
here exactly as the state machine will check it (``check_create``), given
the next reserved inode number and queued (``create``). The shell
(``async_create.py``) commits the queue in batches (``take_batch`` /
``committed``), renews, and releases.

Usable means: granted, not recalled, not lost, numbers left, and renewed
recently enough (``renewed_at`` is when the last successful renewal or the
grant was *sent*, so the state machine's expiry, counted from the entry
that applied it, is later than ``renewed_at + term``). A create is answered
only while ``now < renewed_at + term * usable_fraction``, so its commit has
most of a term to land before anyone else may remove the record.
"""

from __future__ import annotations

import errno as E
import stat as S
from typing import NamedTuple

from cistern.metadata import limits
from cistern.metadata.model import Attr
from cistern.metadata.state import W_OK, X_OK, new_entry_errno, new_file_gid, permits

__all__ = ["DirDelegation", "Create", "usable_fraction"]

# Creates are answered in the first half of a term after the last renewal
# was sent; the other half is the commit's margin.
usable_fraction = 0.5

GRANTING, HELD, RECALLED, LOST = "granting", "held", "recalled", "lost"


class Create(NamedTuple):
    """A create answered locally and not yet committed."""

    name: bytes
    attr: Attr
    cred: tuple          # (uid, gid, (supplementary gids)) of the caller


class DirDelegation:
    """One held (or requested) delegation on one directory."""

    def __init__(self, path: str, asked_at: float):
        self.path = path
        self.state = GRANTING
        self.asked_at = asked_at
        self.dino = 0
        self.mode = self.uid = self.gid = 0
        self.names: set[bytes] = set()
        self.next_ino = self.end_ino = 0
        self.renewed_at = asked_at
        self.last_create_at = asked_at
        self.queue: list[Create] = []       # answered, not yet sent
        self.sending: list[Create] = []     # in the batch being committed
        self.pending: dict[bytes, Attr] = {}  # name -> attr, answered and not yet committed (queue + sending)
        self.give_back = False              # this holder wants it released (after committing)
        self.releasing = False              # its release is on its way: no more creates under it
        self.urgent = False                 # someone waits for the queue to be committed
        self.queued_at = 0.0                # when the oldest create in the queue was answered
        self.out: set[str] = set()          # the shell's requests out for it ("grant", "batch", ...)
        self.renew_sent_at = asked_at       # the shell's last renewal sent

    # -- the grant and renewals ---------------------------------------------

    def granted(self, dir_attr: Attr, first_ino: int, end_ino: int, names, sent_at: float) -> None:
        self.state = HELD
        self.dino = dir_attr.ino
        self.mode, self.uid, self.gid = dir_attr.mode, dir_attr.uid, dir_attr.gid
        self.names = set(names)
        self.next_ino, self.end_ino = first_ino, end_ino
        self.renewed_at = self.renew_sent_at = sent_at

    def renewed(self, recalled: bool, sent_at: float) -> None:
        if recalled:
            self.state = RECALLED
        elif self.state == HELD:
            self.renewed_at = max(self.renewed_at, sent_at)

    def lost(self) -> None:
        self.state = LOST

    def release_soon(self) -> None:
        """Stop answering creates; commit them and give the delegation back."""
        self.give_back = True

    def usable(self, now: float) -> bool:
        return (self.state == HELD and not self.give_back and not self.releasing and self.next_ino < self.end_ino
                and now < self.renewed_at + limits.delegation_term_s * usable_fraction)

    # -- creates ---------------------------------------------------------------

    def absent(self, name: bytes) -> bool:
        """While usable: whether D lacks ``name`` (nobody else can add it)."""
        return name not in self.names

    def check_create(self, name: bytes, cred) -> int:
        """The errno an exclusive CREATE of ``name`` by ``cred`` would get, or 0."""
        err = new_entry_errno(name)
        if err:
            return err
        if name in self.names:
            return E.EEXIST
        if not permits(self.mode, self.uid, self.gid, cred, W_OK | X_OK):
            return E.EACCES
        return 0

    def create(self, name: bytes, mode: int, cred, time_ns: int, now: float) -> Attr:
        """Answer a create (``check_create`` said 0, and ``usable`` was true): its
        attributes, as DELEG_CREATE will store them."""
        # usable(now) was checked by the caller, perhaps a moment earlier:
        # the margin of the term covers that moment.
        assert self.state == HELD and self.next_ino < self.end_ino and self.check_create(name, cred) == 0, name
        ino = self.next_ino
        self.next_ino += 1
        gid = new_file_gid(self.mode, self.gid, cred)
        attr = Attr(ino, S.S_IFREG | (mode & 0o7777), 1, cred[0], gid, 0, time_ns, time_ns, time_ns, 0, 1)
        self.names.add(name)
        self.pending[name] = attr
        if not self.queue:
            self.queued_at = now
        self.queue.append(Create(name, attr, tuple(cred)))
        self.last_create_at = now
        return attr

    def batch_due(self, now: float, delay_s: float) -> bool:
        """Whether the queue should leave now: it is full, its oldest
        create has waited ``delay_s`` (creates arriving meanwhile share one
        commit), someone waits for it, or the delegation is ending."""
        if self.sending or not self.queue:
            return False
        return (self.urgent or self.give_back or self.state != HELD or now - self.queued_at >= delay_s
                or len(self.queue) >= limits.delegation_creates_max)

    def take_batch(self) -> tuple[list, list]:
        """The next DELEG_CREATE's (creds, items), and the creates are now
        being sent (``committed`` ends that). Empty when nothing waits or a
        batch is out."""
        if self.sending or not self.queue:
            return [], []
        self.sending = self.queue[:limits.delegation_creates_max]
        self.queue = self.queue[len(self.sending):]
        if not self.queue:
            self.urgent = False
        creds: list = []
        index: dict = {}
        items = []
        for c in self.sending:
            key = (c.cred[0], c.cred[1], tuple(c.cred[2]))
            if key not in index:
                index[key] = len(creds)
                creds.append([key[0], key[1], list(key[2])])
            items.append([c.name, c.attr.ino, c.attr.mode & 0o7777, index[key], c.attr.mtime_ns])
        return creds, items

    def committed(self, results) -> list[tuple[Create, int]]:
        """The sent batch's outcome: per-create ``[errno, attr]`` results, or
        an errno for the whole batch (a batch that was answered renewed the
        delegation: call ``renewed`` too). The creates that failed, with
        errnos."""
        sent, self.sending = self.sending, []
        if isinstance(results, int):
            results = [[results, None]] * len(sent)
        failed = []
        for c, (err, _) in zip(sent, results):
            self.pending.pop(c.name, None)
            if err:
                self.names.discard(c.name)
                failed.append((c, err))
        return failed

    def unsent(self) -> list[Create]:
        """Give up on what was never sent (the delegation is lost)."""
        dropped, self.queue = self.queue, []
        for c in dropped:
            self.pending.pop(c.name, None)
            self.names.discard(c.name)
        return dropped

    def settled(self) -> bool:
        """Every answered create has been committed (or has failed)."""
        return not self.queue and not self.sending

    def idle(self, now: float) -> bool:
        return self.settled() and now - self.last_create_at >= limits.delegation_idle_release_s

    def should_release(self, now: float) -> bool:
        """Commit what is queued and give the delegation back: recalled,
        lost, out of numbers, or idle."""
        if self.state in (RECALLED, LOST):
            return True
        return self.state == HELD and (self.give_back or self.next_ino >= self.end_ino or self.idle(now))
