"""The scrubber: re-verifies every stored block in the background.

A pass walks the block list and checks each block in full (every sub-chunk
and the whole-block checksum, see ``BlockStore.verify``), sleeping between
blocks so it reads at most ``rate_bytes_per_s``. A corrupt block is
quarantined (moved aside and dropped from the index, so it is no longer
served or reported) and handed to ``on_corrupt(block_id, message)``; the
metadata side replaces it from a good replica (not built yet: the server
passes the reporter's hook).

``scrub_once`` is the whole logic and runs in the caller's thread (tests);
``start`` runs passes on a daemon thread every ``interval_s``. Sleeping goes
through ``wait(seconds) -> stop requested`` so tests need not wait.
"""

from __future__ import annotations

import errno
import logging
import threading

from cistern.blockstore import limits
from cistern.core.errors import CisternError

log = logging.getLogger(__name__)


class Scrubber:
    def __init__(self, store, on_corrupt=None, *, rate_bytes_per_s: float = limits.scrub_rate_bytes_per_s,
                 interval_s: float = limits.scrub_interval_s, first_pass_delay_s: float = 60.0):
        assert rate_bytes_per_s > 0 and interval_s > 0 and first_pass_delay_s >= 0
        self.store = store
        self.on_corrupt = on_corrupt or (lambda block_id, message: None)
        self.rate_bytes_per_s = rate_bytes_per_s
        self.interval_s = interval_s
        self.first_pass_delay_s = first_pass_delay_s
        self.passes = 0
        self.blocks_checked = 0
        self.corrupt_found = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def wait(self, seconds: float) -> bool:
        """Sleep up to seconds; True when a stop was requested."""
        return self._stop.wait(seconds)

    def scrub_once(self) -> list[bytes]:
        """One pass over every block; the ids found corrupt (quarantined)."""
        corrupt = []
        for block_id, length in self.store.list():
            problem = self._check(block_id)
            if problem:
                corrupt.append(block_id)
                self._quarantine(block_id, problem)
            if self.wait(length / self.rate_bytes_per_s):
                break
        self.passes += 1
        return corrupt

    def _check(self, block_id: bytes) -> str:
        try:
            problem = self.store.verify(block_id)
        except CisternError as e:
            if e.errno == errno.ENOENT:   # deleted since the list was taken
                return ""
            raise
        self.blocks_checked += 1
        return problem

    def _quarantine(self, block_id: bytes, problem: str) -> None:
        self.corrupt_found += 1
        self.store.quarantine(block_id)
        log.error("scrubber: %s", problem)
        try:
            self.on_corrupt(block_id, problem)
        except Exception:   # a failing reporter must not stop the scrubber
            log.exception("scrubber: reporting corrupt block %s failed", block_id.hex())

    def start(self) -> None:
        assert self._thread is None
        self._thread = threading.Thread(target=self._run, name="blockd-scrubber", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        if self.wait(self.first_pass_delay_s):
            return
        while not self._stop.is_set():
            try:
                self.scrub_once()
            except Exception:
                log.exception("scrubber pass failed")
            if self.wait(self.interval_s):
                return

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
