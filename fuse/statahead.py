"""Stat-ahead (Lustre's statahead): notice a caller stat'ing the entries of
one directory one after another, and fetch that directory's attributes
ahead of it, so ``ls -l``, ``find``, ``rsync``, ``git status`` and
mdtest-style traversals cost a few batched round trips instead of one per
entry. This module is the pure part: ``Detector`` decides when a pass runs
and what it covers; ``Operations`` (operations.py) runs the passes.

Contract of ``Detector`` (thread-safe; no I/O; ``clock`` is injectable):

* ``miss(who, directory, name)`` is called for every attribute-cache miss that
  *found* the entry (a lookup of a name that does not exist, as every create
  makes, says nothing about a traversal). It returns a ``Pass`` to run now,
  or None. A pass starts when ``who`` (the caller's credentials) missed
  ``trigger_misses`` times in a row in ``directory`` with no miss elsewhere
  in between, and no pass of that (who, directory) is running.
* ``hit(who, directory)`` counts an answer from the cache in a directory
  with a pass on record (the pass's yield).
* ``finished(p, fetched, cursor)``: the pass fetched ``fetched`` entries
  and stopped before the name ``cursor`` (None: it reached the end of the
  listing). The next pass of that directory starts at the cursor, so a
  directory larger than one pass is covered window by window. A pass that
  ``failed`` (the caller may search the directory but not list it, or it
  is gone) ends stat-ahead there until the state is forgotten.
* Random access stops it: when a pass is judged (at the next trigger, once
  its answers have expired, i.e. ``expiry_s`` after it ended) and fewer than
  ``yield_min`` of the entries it fetched were asked for, the directory's
  trigger doubles (up to ``trigger_max``, where stat-ahead is off for that
  directory until it is forgotten); a pass that paid off resets it. A new
  window while the previous one is still fresh runs only if the previous
  one has paid off so far: a caller missing outside the window is followed,
  one fetching random names of a huge directory is not.
* Order: a pass fetches ``ahead_of`` the callers' last missed names:
  numbered names in number order (the order sweeps of made-in-order files
  follow; the listing's byte order scatters them), each series from where
  its caller is, parallel series interleaved, passed names last.
* Bounds: at most ``dirs_max`` (who, directory) states (least recently
  missed forgotten first), one pass per state at a time; the entries of one
  pass are bounded by its runner (``window``).
"""

from __future__ import annotations

import bisect
import collections
import itertools
import re
import threading
import time
from dataclasses import dataclass

__all__ = ["Detector", "Pass", "ahead_of", "natural_key", "trigger_misses_default", "dirs_max_default", "window_default"]

trigger_misses_default = 3       # consecutive found-misses in one directory that start a pass
trigger_max_default = 192        # a trigger doubled past this: stat-ahead off for that directory
dirs_max_default = 256           # (caller, directory) pairs tracked
window_default = 16384          # entries one pass fetches at most (the mount option statahead=N)
yield_min_default = 0.25         # fraction of a pass's entries that must be asked for
yield_judged_min_entries = 16    # passes smaller than this are never judged poor
recent_names_max = 16            # names of a caller's last misses a pass starts from


_DIGITS = re.compile(rb"(\d+)")


def ahead_of(entries: list, starts=()) -> list:
    """``entries`` (``(name bytes, ...)``) in the order a pass fetches them.
    Names are grouped in series (the same name but for its last run of
    digits: ``f3.7`` and ``f3.12`` are one series, ``f2.7`` another), each
    series in ``natural_key`` order and rotated to begin at the furthest of
    ``starts`` (names the callers just missed) in it: its caller's next
    names first, those it has passed last. The series are interleaved,
    those with a caller in them first in each round, so parallel sweeps
    (one series per process, as mdtest names its files) are all served
    early."""
    series: dict = {}       # series -> [(key, entry), ...] in key order
    for keyed in sorted(((natural_key(e), e) for e in entries), key=_first):
        series.setdefault(_series(keyed[1][0]), []).append(keyed)
    at_caller: dict = {}
    for name in starts:
        k = _series(name)
        if k in series:
            at = bisect.bisect_left(series[k], natural_key((name,)), key=_first)
            at_caller[k] = max(at, at_caller.get(k, 0))
    groups = [series[k][at:] + series[k][:at] for k, at in at_caller.items()]
    groups += [group for k, group in series.items() if k not in at_caller]
    out = []
    for row in itertools.zip_longest(*groups):
        out.extend(keyed[1] for keyed in row if keyed is not None)
    return out


def _first(pair):
    return pair[0]


_LAST_DIGITS = re.compile(rb"\d+(?=\D*$)")


def _series(name: bytes) -> bytes:
    return _LAST_DIGITS.sub(b"#", name, count=1)


def natural_key(entry) -> tuple:
    """Sort key of a directory entry ``(name bytes, ...)``: runs of digits
    compare as numbers (``f2`` before ``f10``), the rest as bytes."""
    # split() alternates text and digits, text first: like positions compare alike.
    parts = _DIGITS.split(entry[0])
    parts[1::2] = map(int, parts[1::2])
    return tuple(parts)


@dataclass
class Pass:
    """One pass to run: fetch the attributes of ``directory``'s entries
    after ``cursor`` (None: from the start), as ``who``, in the order
    ``ahead_of(entries, starts)`` gives: ``starts`` are the names the
    callers missed last, where they are."""

    who: object
    directory: str
    cursor: bytes | None
    starts: tuple = ()


@dataclass
class _State:
    trigger: int
    running: bool = False
    cursor: bytes | None = None
    fetched: int = 0              # entries the passes since the last judgement fetched
    hits: int = 0                 # cache answers in this directory since then
    ended_at: float | None = None  # when the last pass ended
    passes: int = 0


class Detector:
    def __init__(self, *, trigger_misses: int = trigger_misses_default, trigger_max: int = trigger_max_default,
                 dirs_max: int = dirs_max_default, yield_min: float = yield_min_default,
                 expiry_s: float = 1.0, clock=time.monotonic):
        self.trigger_misses = max(1, int(trigger_misses))
        self.trigger_max = max(self.trigger_misses, int(trigger_max))
        self.dirs_max = max(1, int(dirs_max))
        self.yield_min = float(yield_min)
        self.expiry_s = float(expiry_s)
        self.clock = clock
        self._states: collections.OrderedDict = collections.OrderedDict()   # (who, dir) -> _State
        self._last: dict = {}       # who -> [directory, consecutive misses, the last names missed]
        self._lock = threading.Lock()
        self.passes_started = 0
        self.passes_refused = 0     # triggers turned down for a poor yield

    def tracked(self) -> int:
        return len(self._states)

    def active(self) -> bool:
        """Whether any directory has a pass on record (hits are worth counting)."""
        return bool(self._states)

    def miss(self, who, directory: str, name: bytes = b"") -> Pass | None:
        with self._lock:
            last = self._last.get(who)
            if last is not None and last[0] == directory:
                last[1] += 1
            else:
                if len(self._last) >= self.dirs_max:
                    self._last.clear()
                last = self._last[who] = [directory, 1, collections.deque(maxlen=recent_names_max)]
            count = last[1]
            last[2].append(name)
            key = (who, directory)
            state = self._states.get(key)
            if state is None:
                if count < self.trigger_misses:
                    return None
                state = _State(self.trigger_misses)
                self._states[key] = state
                while len(self._states) > self.dirs_max:
                    self._states.popitem(last=False)
            else:
                self._states.move_to_end(key)
            if state.running or count < state.trigger or state.trigger > self.trigger_max:
                return None
            if not self._judge(state):
                self._last[who][1] = 0
                return None
            self._last[who][1] = 0
            state.running = True
            state.passes += 1
            self.passes_started += 1
            return Pass(who, directory, state.cursor, tuple(last[2]))

    def _judge(self, state: _State) -> bool:
        """Whether another pass may run now (lock held); adjusts the trigger."""
        if state.ended_at is None:
            return True
        paid = state.fetched < yield_judged_min_entries or state.hits >= self.yield_min * state.fetched
        if self.clock() - state.ended_at >= self.expiry_s:
            # The last answers have expired: their yield is final. A poor one
            # doubles the misses the next pass waits for (past trigger_max:
            # none); the next pass is judged afresh.
            state.fetched = state.hits = 0
            if paid:
                state.trigger = self.trigger_misses
                return True
            state.trigger *= 2
            state.ended_at = None
            self.passes_refused += 1
            return False
        # Still fresh: a caller missing outside the window moves on to the
        # next one only if this one has paid off so far.
        if not paid:
            self.passes_refused += 1
        return paid

    def hit(self, who, directory: str) -> None:
        state = self._states.get((who, directory))
        if state is not None:
            state.hits += 1     # a lost increment under a race only makes the judgement stricter

    def finished(self, p: Pass, fetched: int, cursor: bytes | None, failed: bool = False) -> None:
        with self._lock:
            state = self._states.get((p.who, p.directory))
            if state is None:
                return
            state.running = False
            if failed:      # the caller may not list it, or it is gone: no more passes there
                state.trigger = self.trigger_max + 1
            state.cursor = cursor
            state.fetched += int(fetched)
            state.ended_at = self.clock()

    def forget(self) -> None:
        """Drop every state (a rename moved whole subtrees)."""
        with self._lock:
            self._states.clear()
            self._last.clear()
