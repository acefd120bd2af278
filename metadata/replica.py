"""The metadata replica: Raft (pysyncobj) wiring around LMDB-backed state
machines. The only module that imports pysyncobj.

Contract (what ``service.py`` and ``server.py`` code against)
    ``Replica(node_id, raft_address, peers, data_dir, machines, *,
    rpc_addresses={}, conf=None)``; ``start()``, ``stop()``,
    ``submit_write(client_id, seq, acked_below, code, args) -> Future``,
    ``submit_read(code, args, *, linearizable=True) -> Future``,
    ``submit_reads([(code, args), ...], on_done, *, linearizable=True)`` and
    ``submit_writes(client_id, acked_below, [(seq, code, args), ...],
    on_done)`` (groups with one callback per batch, no future per
    operation),
    ``is_leader()``, ``leader_rpc_address()``, ``status()``,
    ``wait_leader(timeout_s)``. Every method is thread-safe.

    * ``peers``: the other members, as ``{node_id: raft_address}`` (what
      ``server.py`` passes), ``{raft_address: node_id}``, or a list of raft
      addresses. This replica's own address is ignored if listed.
    * ``machines``: ``{name: machine}``, a list of machines, or a list of
      ``(codes, machine)`` pairs. A machine owns the codes in its
      ``code_range`` attribute when it has one; otherwise ``namespace`` (or
      the first machine) owns 1-999 and ``scheduler`` owns 1000 and up. A
      machine has ``bootstrap(txn)``, ``apply(txn, time_ns, code, args) ->
      (errno, message, value)`` and ``read(txn, code, args)``; ``args`` is the
      decoded msgpack list. ``apply`` acts only through ``txn`` (no state
      outside LMDB): the leader may apply an entry ahead of its commit and
      abort that transaction (see Apply). The replica finds the LMDB ``Store`` in
      ``conf.store`` or in a machine's ``store``/``_store`` attribute.
    * Futures resolve to the operation's value, or raise ``CisternError``
      with the operation's errno. ``NotLeader(leader_rpc_address)`` (EAGAIN)
      means: not applied here, or outcome unknown (leadership was lost while
      the entry was in flight). A write with a client id is then safe to
      resend with the same ``(client_id, seq)``: it applies at most once and
      a resend returns the original result. Internal writes (``client_id ==
      b""``) have no such protection.
    * Durability: a write's future resolves only after its Raft entry is
      fsynced on a majority and applied on the leader.

Group commit
    ``submit_write`` queues the operation; whichever thread finds a free
    in-flight slot (a submitter, or the completion of an earlier entry) packs
    every queued operation (up to ``batch_ops_max`` / ``batch_bytes_max``)
    into ONE Raft entry, msgpack ``[time_ns, [[client_id, seq, acked_below, code,
    args_bytes], ...], version]`` (``model.py``), copying the client's argument bytes
    unparsed. Up to ``batches_in_flight_max`` entries are in flight at once,
    so throughput is not one batch per round trip; under load each entry
    carries what arrived while the previous ones were replicating.

Apply (one replicated method, on every replica, in log order)
    A follower learns the commit index from the leader's next append (the
    next write's, a ReadIndex round's, or the heartbeat within
    ``append_entries_period_s``): pysyncobj's extra append round after every
    apply, which carried only that, is dropped (``_RaftNode``), so a
    follower's applied state may trail the leader's by up to a heartbeat.
    One LMDB write transaction per entry: skip it when its Raft index is at or
    below the applied index stored in the ``replica`` database (a restart
    replays pysyncobj's journal from its last snapshot on top of LMDB state);
    expire idle client sessions by entry time; per operation, dedupe by
    ``(client_id, seq)`` (``sessions.py``), route by code to a machine
    (its ``apply_direct`` when it has one: no nested transaction for the
    operations that refuse before writing; one that fails after writing
    re-runs the entry with it nested), store the result; then store the applied index and the running digest
    ``xxh3_128(previous_digest + entry)`` (16 zero bytes before the first
    entry), and commit. The Raft index of the
    entry being applied is ``SyncObj._SyncObj__raftLastApplied + 1``: pysyncobj
    applies entries strictly in order and bumps that counter right after each
    one (read from our subclass; a documented reliance on a private name).
    A machine that raises is a bug: that operation's result becomes EIO, the
    entry is re-run without it (so nothing it half-wrote survives), and the
    error is logged loudly; nothing escapes into pysyncobj, which would retry
    the entry forever. An LMDB failure (disk full) does escape: the replica
    stalls on that entry, logging, rather than skip it and diverge.
    Ahead of the commit, on the leader (``_prepare_next``): once its tick
    has sent an entry's appends, and every committed entry is applied, the
    leader applies the oldest batch it submitted in a write transaction it
    keeps open while the followers fsync; at the commit, pysyncobj's apply
    of that index only commits it. A lone write's apply (~0.1 ms) thus
    leaves the path from the followers' acknowledgement to the reply.
    Nothing is visible before the commit (readers use their own
    transactions), and the guess that the batch sits at the next index is
    checked when that index is applied: other bytes or another index (a
    no-op entry in between), a leadership change, a snapshot import or the
    end of the tick loop abort the transaction, so a wrong guess costs the
    work, never the state. Only the tick thread opens write transactions.

Linearizable reads: ReadIndex (Raft thesis 6.4), no log entry
    A linearizable read is queued and wakes the tick thread, which, before
    its next tick, gives every queued read one *round*: it records the read
    index, ``max(commit index, index of this term's no-op)``, and bumps the
    round stamp. From then on every ``append_entries`` the leader sends
    carries the stamp (``_DurableTransport.send``: heartbeats and the appends
    that carry writes alike; if the tick sent none, ``_before_poll`` sends a
    heartbeat round), and a follower's answer to an append
    (``next_node_idx``, success or not) echoes the stamp of the append it
    answers. Once a majority counting the leader answered a stamp at or past
    the round's, the round is confirmed; once pysyncobj's applied index
    reaches its read index, its reads run together in one LMDB read
    transaction (on the tick thread up to ``inline_reads_max`` reads, else
    on the reader pool). One round
    serves every read queued since the previous one, and nothing enters the
    log; at most ``read_rounds_in_flight_max`` rounds await answers, so
    under load a round carries what queued meanwhile instead of each tick
    sending one (the followers' CPU). ``linearizable=False`` reads the local applied state on any replica.
    Safety: let read R arrive at time t0 on leader L of term T, and W be a
    write acknowledged before t0. (1) If W was committed in a term <= T, it
    is in L's log (Leader Completeness) at or below the commit index, or
    below this term's no-op when L has not committed an entry of its own
    term yet; so its index is at most R's read index, and R is served only
    after L applied that far. (2) W cannot have been committed by a leader of
    a later term T' > T: that leader was elected before t0 by a majority
    that had moved to term T' before t0; R's round was stamped after R
    arrived, so each answer L counts was sent by a member that accepted an
    append of term T after t0 (pysyncobj answers no append whose term is
    below the member's), hence had not moved to T' yet; two majorities
    share a member, a contradiction. Stamps only grow over the process's
    life and the rounds are dropped (their reads failed with NotLeader) on
    the tick thread the moment leadership is lost, so an answer to an append
    sent before the round, or in an earlier term, never confirms it; the
    answers are matched by their echoed stamp, not by arrival time, so
    answers buffered while the leader was frozen (SIGSTOP) confirm nothing
    newer than what they answer. A leader that cannot reach a majority never
    confirms a round and fails its reads when it steps down
    (``leader_fallback_timeout_s``). No clock is trusted: no leader lease
    (pysyncobj's followers grant votes while hearing from a leader, so a
    lease would not be safe). Tested by a partitioned leader that still
    believes it leads, and by a leader frozen while its peers elect a new
    one and acknowledge a write: neither may answer a read stale.

Durability (pysyncobj does not fsync)
    * Journal: ``FileJournal`` writes through mmap and never syncs, and
      each add rewrites its first page in a file grown sparse, so a sync of
      it writes two pages and block allocations. pysyncobj gets no journal
      file (``journalFile=None``); right after ``SyncObj.__init__``, before
      the first tick (we run the tick loop ourselves, ``autoTick=False``),
      ``_RaftNode`` swaps its MemoryJournal for ``_DurableJournal``, our
      ``RecordLog`` (``journal.py``: one ``pwrite`` per record over zeros
      written ahead, checksummed records, atomic compaction) behind
      pysyncobj's journal interface, which fdatasyncs on demand. The
      transport subclass ``_DurableTransport`` syncs the journal before any
      message but ``append_entries`` leaves, so a follower's ``next_node_idx``
      acknowledgment always follows its fsync. The leader's ``append_entries``
      leave at once; the tick thread then fsyncs the leader's journal itself
      (``_before_poll``, after the tick's sends, while the followers sync
      theirs, and before it polls for their answers), and pysyncobj counts
      the leader in the majority only when computing the commit index at the
      start of a tick. Measured cost (bench/raft_bench.py, 3 processes, one
      shared virtual disk with ~0.47 ms fdatasync): one-at-a-time p50
      ~0.9-1.05 ms -> ~1.9 ms; throughput with 4096 in flight ~20-26k -> ~19k
      ops/s.
    * Wake-ups, not ticks (``_RaftNode._before_poll``, pysyncobj's on-tick
      hook, which runs just before the tick's poll): a leader with entries
      past its commit index syncs there (a lone member
      sends no append_entries, so nothing else would: it used to acknowledge
      without any fsync), and when a majority counting itself already holds
      the next entry -- always so for a lone member -- it wakes its own poll
      through pysyncobj's pipe notifier, since the commit index advances
      only at the start of a tick. A 1-member group took ~21 ms per write
      (the 20 ms tick period); now ~0.6 ms with its fsync.
    * Vote file: ``MetaStorer.storeMeta`` writes ``.meta`` without fsync.
      ``_DurableMetaStorer`` writes the same bytes (pysyncobj's own ``dumps``)
      to a temp file, fsyncs it, renames it over, and fsyncs the directory,
      before ``setCurrentTerm`` returns (i.e. before a vote is sent).
    * Compaction (``deleteEntriesTo``) writes the kept entries to a new
      file and renames it over the log, synced: a crash keeps the old log or
      the new one (FileJournal rewrote its file in place, so a crash in the
      middle lost the entries after the snapshot on that replica).
    * LMDB: the store may be opened with ``sync=False``: the journal is the
      durable record, apply is idempotent, and the snapshot path syncs LMDB
      before pysyncobj drops journal entries.

Snapshots (log compaction)
    pysyncobj's custom ``serializer`` / ``serializeChecker`` /
    ``deserializer`` hooks. The dump is a compact LMDB copy (taken from one
    read transaction, so it is exactly the state at pysyncobj's
    ``raftLastApplied``) followed by a trailer: msgpack header (the two Raft
    entries pysyncobj wants back, cluster addresses, our applied index and
    digest) + 8-byte length + magic. The copy runs on a background thread so
    a large environment does not stall the tick thread; the checker reports
    SERIALIZING until the thread has fsynced the dump, synced LMDB, and
    renamed the dump into place itself. pysyncobj's ``Serializer.serialize``
    calls ``atomicReplace(fileName + '.tmp', fileName)`` right after our
    serializer returns: we never create that ``.tmp`` file, so that rename
    fails with ENOENT, which ``Serializer.serialize`` swallows (with a
    checker installed its outcome is ignored), and the previous dump stays
    intact until ours replaces it.
    The deserializer, at startup, keeps the local LMDB when it is at or past
    the dump's applied index (the usual case: LMDB is newer than our own
    dump); otherwise, and always when the dump came from the leader (install
    snapshot to a lagging follower), it imports the dump into the live
    environment in ONE write transaction (every named database emptied and
    refilled). Readers need no coordination: an LMDB read transaction sees
    the state wholly before or wholly after the import, and database handles
    stay valid. ``snapshot_generation`` counts imports for callers that cache
    derived state. The import runs on the tick thread (heartbeats pause for
    its duration; installs are rare).

Versions (replicas running different code)
    The digest covers entries, not the state they produce, so two replicas
    whose code applies an entry differently would diverge unseen. So every
    entry carries the ``model.STATE_MACHINE_VERSION`` of the leader that
    built it (entries without one are version 1), and before applying it a
    replica hands that version to its machines (their ``entry_version``
    attribute, where they have one): an entry means what its version says,
    whatever the applying code. A replica whose code is older than an
    entry's version refuses it before writing anything: its tick thread
    stops, ``status()["failed"]`` says why, ``on_failure(message)`` is
    called (``server.py`` then stops the metad, which exits with that
    message), and the entry stays in the log for a newer cistern to apply.
    The ``replica`` database records the newest version applied
    (``KEY_VERSION``); ``start()`` refuses (ENOTSUP) a store that newer code
    wrote, and a snapshot whose header names a newer version is refused
    before it is imported. So upgrade a group one replica at a time in any
    order: an old member stops at the first new entry, not diverging.

Divergence: "truncating already-applied log entries ... may have diverged"
    Finding (pysyncobj 0.3.17 ``syncobj.py``, ``__onMessageReceived``): a
    follower truncates its log after ``prevLogIdx`` whenever it holds more
    entries, even when they match the leader's (Raft truncates only on a term
    conflict), and warns when that cuts into applied entries. The leader
    re-sends entries a follower already holds in two ways: (1) with
    ``appendEntriesUseBatch=False`` it pipelines appends, and a *success*
    acknowledgment of an older append makes it set ``nextIndex`` back to that
    ack (it only checks that ``matchIndex`` grew), so the next append starts
    from entries already sent — this fires even with one write at a time (we
    saw ~15 warnings per 200 sequential writes); (2) a lagging follower
    answers each pipelined append with the same ``reset`` index and the
    leader rewinds once per answer. In both cases the re-sent entries are
    committed ones (a follower applies only up to a commit index learnt from
    a message whose consistency check passed, and committed entries are the
    same on every leader), so the follower re-appends identical bytes and the
    state does NOT diverge: reproduced under load with equal digests at equal
    applied index on all replicas. It costs journal churn (truncate,
    re-append, extra fsyncs), so ``_RaftNode`` keeps ``nextIndex`` from moving
    back on a success ack (Raft moves it back only on a rejection); the test
    ``test_concurrent_writes_share_raft_entries_and_all_replicas_agree``
    asserts the warning no longer appears.
    The real hole is elsewhere: an install-snapshot message (``append_entries``
    without ``prevLogIdx``, also sent with ``serialized=None`` while the
    leader is still serializing) raises the follower's commit index to
    ``min(leader_commit, last_log_index)`` with NO consistency check, so a
    deposed leader holding uncommitted entries of an old term would apply
    them — real divergence, which the warning then reports when those entries
    are truncated. ``_RaftNode`` closes it: such a message cannot raise the
    commit index. Detection: every replica reports ``(applied_index,
    digest)`` in ``status()`` (and the DIGEST read); equal indexes must carry
    equal digests (tests compare them after every scenario), and an entry
    replayed at an already-applied index is checked against the hash recorded
    when it was applied (``cistern_replica_divergence_detected``).

Threads: pysyncobj's tick loop (ours, ``autoTick=False``: it also applies
entries, runs callbacks, completes batches of up to
``inline_completion_max`` operations, runs ReadIndex rounds and answers
rounds of up to ``inline_reads_max`` reads), one completer for bigger
batches, a snapshot writer while one runs,
and a small reader pool. pysyncobj state is only mutated on the tick
thread; other threads read plain attributes for status.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import errno
import logging
import os
import pickle
import queue
import struct
import threading
import time
import zlib

import msgpack
import xxhash
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from pysyncobj import SyncObj, SyncObjConf, replicated
from pysyncobj import pickle as _pysyncobj_pickle
from pysyncobj import tcp_connection as _pysyncobj_tcp
from pysyncobj.syncobj import SyncObjException
from pysyncobj.config import FAIL_REASON, SERIALIZER_STATE
from pysyncobj.journal import FileJournal, Journal, MetaStorer
from pysyncobj.monotonic import monotonic as _raft_monotonic   # pysyncobj's clock, not time.monotonic
from pysyncobj.pickle import dumps as _pysyncobj_dumps
from pysyncobj.transport import TCPTransport

from cistern.core.durable import fsync_dir, replace_durably
from cistern.core.errors import CisternError, NotLeader
from cistern.metadata import limits, model, store
from cistern.metadata.journal import RecordLog
from cistern.metadata import sessions as sessions_mod

log = logging.getLogger(__name__)

DB_REPLICA = b"replica"
KEY_APPLIED = b"applied"
KEY_DIGEST = b"digest"
KEY_VERSION = b"version"              # u64: the newest entry version applied (absent: 1)
KEY_RING = b"ring:"                  # + u16: [index, xxh3_64(entry)] of recent entries
DIGEST_ZERO = b"\0" * 16
recent_entry_hashes_max = 4096       # entries whose hash is kept to check a replayed entry
inline_completion_max = 256          # batches completed on the tick thread itself (see inline_reads_max)
# Reads of one ReadIndex round run on the tick thread itself up to this many
# (past it, on the reader pool). The GIL runs one thread at a time, so the
# pool overlaps nothing for short rounds; it only adds a wake-up and a GIL
# hand-off per round. Long rounds still leave the tick thread free for Raft.
# (An interleaved A/B of meta_bench, 8 vs these limits, with clients sending
# ~55 operations per message: equal within the run-to-run noise, ~15%.)
inline_reads_max = 128
read_rounds_in_flight_max = 2        # unconfirmed ReadIndex rounds; later reads wait for the next
bind_attempts_max = 10               # x 0.2 s: the raft port must come free within ~2 s
_U64 = struct.Struct(">Q")
_RING = struct.Struct(">QQ")
_SNAP_MAGIC = b"CSTNSNP1"
_SNAP_TRAILER = struct.Struct(">Q8s")
_ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}
_ROLE_LEADER = 2
_READ_DIGEST = int(model.Op.DIGEST)
_ROUND_KEY = "cistern_read_round"    # added to append_entries, echoed in next_node_idx


@dataclasses.dataclass
class ReplicaConf:
    """Tuning knobs; the defaults are the production settings.

    How they map onto pysyncobj (``Replica._syncobj_conf``) and why:

    * ``autoTick=False``: we run the tick loop, so the journal is swapped for
      the durable one before the first tick and the loop can wait for the
      leader's own fsync before pysyncobj counts it in a majority.
    * ``appendEntriesUseBatch=False``: each command wakes the poller through
      the pipe notifier and is sent at once. pysyncobj's default waits for
      its tick: one write at a time measured ~10/s (p50 ~100 ms).
    * heartbeat (``appendEntriesPeriod``) 50 ms, election timeout
      (``raftMin/MaxTimeout``) 0.6-1.2 s: failover measured 0.65-1.9 s;
      ``leaderFallbackTimeout`` 1.5 s (default 30 s) so a partitioned leader
      steps down and stops accepting writes quickly; ``connectionTimeout``
      2 s (pysyncobj requires >= the election timeout);
      ``connectionRetryTime`` 0.25 s (default 5 s) so a restarted member is
      back within a heartbeat or so; TCP keepalive (2, 1, 3).
    * ``appendEntriesBatchSizeBytes`` 2 x ``batch_bytes_max``: one of our
      entries never takes pysyncobj's chunked "transmission" path (whose
      last-chunk test compares against the command's length, not the
      pickled entry's). ``logCompactionBatchSize`` 1 MiB snapshot chunks.
    * ``logCompactionMinEntries`` 20000 / ``MinTime`` 900 s: the log (``journal.py``)
      keeps every entry in RAM as well, and a restart replays (and skips)
      what follows the last snapshot; tests set them small.
    * ``commandsWaitLeader=False``: with no leader a command fails at once
      (we already refuse on a non-leader before submitting).
    * Not a pysyncobj setting: ``TcpConnection.send`` zlib-compresses every
      message at level 3; ``message_compress_level`` (0) replaces the
      ``zlib`` its module uses (``_MessageZlib``), same stream format. And
      its messages and commands are pickled at protocol 4, not 2
      (``_pickle_dumps``).
    """

    tick_period_s: float = 0.02              # poll timeout; I/O and submissions wake it earlier
    append_entries_period_s: float = 0.05    # heartbeat
    election_timeout_min_s: float = 0.6
    election_timeout_max_s: float = 1.2
    connection_timeout_s: float = 2.0        # no bytes for this long: the link is dead
    connection_retry_s: float = 0.25         # reconnect quickly to a restarted member
    leader_fallback_timeout_s: float = 1.5   # a partitioned leader steps down after this
    # SO_SNDBUF/SO_RCVBUF, and also pysyncobj's recv() size: CPython
    # allocates the whole recv buffer per call (measured: 3 us at 64 KiB,
    # 15 us at 256 KiB, 50+ us from 1 MiB), so bigger costs every small message.
    socket_buffer_bytes: int = 256 << 10
    log_compaction_min_entries: int = 20000  # journal entries before a snapshot
    log_compaction_min_time_s: float = 900.0
    batches_in_flight_max: int = 4
    batch_ops_max: int = limits.batch_ops_max
    batch_bytes_max: int = limits.batch_bytes_max
    session_ttl_s: float = limits.session_ttl_s
    durable: bool = True                     # fsync journal and vote file (off only to measure its cost)
    # zlib level of Raft messages (pysyncobj hard-codes 3). 0 still writes a
    # zlib stream (stored blocks) that any pysyncobj peer decompresses; level
    # 3 cost ~15 us per heartbeat and ~180 us per 256-op entry per follower,
    # on the tick thread, to save bytes on loopback.
    message_compress_level: int = 0
    registry: CollectorRegistry | None = None
    store: object | None = None              # the Store, when no machine exposes it
    extra_machines: tuple = ()               # (codes, machine) pairs, e.g. the scheduler

    def validate(self) -> None:
        assert self.append_entries_period_s * 3 < self.election_timeout_min_s
        assert self.election_timeout_min_s < self.election_timeout_max_s <= self.connection_timeout_s
        assert self.append_entries_period_s < self.leader_fallback_timeout_s
        assert 1 <= self.batches_in_flight_max
        assert 1 <= self.batch_ops_max <= limits.batch_ops_max
        assert 1024 <= self.batch_bytes_max <= limits.batch_bytes_max
        assert self.log_compaction_min_entries >= 2
        assert 0 <= self.message_compress_level <= 9


# -- metrics -------------------------------------------------------------------

class _Metrics:
    """One set of metric families per registry, labelled by replica id."""

    _by_registry: dict[int, "_Metrics"] = {}
    _lock = threading.Lock()

    @classmethod
    def for_registry(cls, registry: CollectorRegistry) -> "_Metrics":
        with cls._lock:
            found = cls._by_registry.get(id(registry))
            if found is None or found.registry is not registry:
                found = cls._by_registry[id(registry)] = cls(registry)
            return found

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        r = dict(registry=registry)
        self.role = Gauge("cistern_raft_role", "0 follower, 1 candidate, 2 leader", ["replica"], **r)
        self.term = Gauge("cistern_raft_term", "current Raft term", ["replica"], **r)
        self.commit_index = Gauge("cistern_raft_commit_index", "Raft commit index", ["replica"], **r)
        self.applied_index = Gauge("cistern_raft_applied_index", "last Raft index applied to LMDB", ["replica"], **r)
        self.ops_applied = Counter("cistern_replica_ops_applied", "operations applied", ["replica", "code"], **r)
        self.entries = Counter("cistern_replica_entries_applied", "Raft entries applied", ["replica"], **r)
        self.entries_committed = Counter("cistern_replica_entries_committed",
                                         "entries this replica led to commit", ["replica"], **r)
        self.apply_seconds = Histogram("cistern_replica_apply_seconds", "time to apply one Raft entry",
                                       ["replica"], buckets=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0),
                                       **r)
        self.batch_ops = Histogram("cistern_replica_batch_ops", "operations per Raft entry", ["replica"],
                                   buckets=(0, 1, 2, 4, 8, 16, 64, 256, 1024, 4096), **r)
        self.divergence = Counter("cistern_replica_divergence_detected",
                                  "replayed entries whose hash differs from the applied one", ["replica"], **r)


class _BoundMetrics:
    """The hot path's children of ``_Metrics`` for one replica label, looked
    up once: ``labels()`` takes a lock and builds a key per call (measured
    ~4 us each, five or more per Raft entry on every replica)."""

    def __init__(self, m: _Metrics, label: str):
        self._m, self._label = m, label
        self.applied_index = m.applied_index.labels(label)
        self.entries = m.entries.labels(label)
        self.apply_seconds = m.apply_seconds.labels(label)
        self.batch_ops = m.batch_ops.labels(label)
        self.entries_committed = m.entries_committed.labels(label)
        self._ops_applied: dict = {}

    def ops_applied(self, code: int):
        child = self._ops_applied.get(code)
        if child is None:
            child = self._ops_applied[code] = self._m.ops_applied.labels(self._label, str(code))
        return child


MODULE_REGISTRY = CollectorRegistry()


# -- pysyncobj wrapping --------------------------------------------------------

class _MessageZlib:
    """Stands in for the ``zlib`` module inside ``pysyncobj.tcp_connection``
    (its ``TcpConnection.send`` calls ``zlib.compress(data, 3)``; no setting
    reaches it), compressing at ``level`` instead. The wire format is
    unchanged: a zlib stream, which every pysyncobj peer decompresses.
    Installed process-wide by ``Replica.start`` (a metad runs only our Raft
    nodes; the bare-pysyncobj baseline never starts a Replica)."""

    def __init__(self, level: int):
        self.level = level
        self.decompress = zlib.decompress

    def compress(self, data, level=-1):
        return zlib.compress(data, self.level)


def _pickle_dumps(obj, protocol=None):
    """Stands in for ``pysyncobj.pickle.dumps`` (installed by
    ``Replica.start``, like ``_MessageZlib``): pickle protocol 4 instead of
    pysyncobj's hard-coded 2, which has no bytes opcode and pickles every
    bytes object (our entries, inside every command and append) through
    ``_codecs.encode(str, 'latin1')`` -- measured 10 us vs 1 us per small
    append, on the tick thread of every replica, each way. Any Python 3
    ``pickle.loads`` (pysyncobj's ``loads`` included) reads either, so
    journals and peers of either kind stay readable."""
    return pickle.dumps(obj, 4)


class _DurableMetaStorer(MetaStorer):
    """``.meta`` (currentTerm, votedFor, commit index) written durably: same
    bytes as pysyncobj, but fsync file, rename, fsync directory."""

    def storeMeta(self, meta):
        path = self.getPath()
        tmp = path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(_pysyncobj_dumps(meta))
            f.flush()
            os.fsync(f.fileno())
        replace_durably(tmp, path)


class _DurableJournal(Journal):
    """pysyncobj's journal interface over ``RecordLog`` (``journal.py``: a
    record is one ``pwrite`` over zeros, ``sync()`` one fdatasync that
    writes nothing but the record's pages), with the term, vote and commit
    index in pysyncobj's ``.meta`` file as FileJournal keeps them: the term
    and vote written durably before ``setCurrentTerm`` returns
    (``_DurableMetaStorer``), the commit index once a second (a hint: it is
    re-learnt from the leader).

    ``sync()`` makes all writes so far durable before returning (a no-op
    when nothing was written since the last one). Only the tick thread
    syncs (and ``stop`` after it ended): there is no syncer thread. One used
    to run the leader's sync in parallel with the tick's poll; handing each
    sync to it and back cost more (two wake-ups and GIL hand-offs per entry
    on every replica, ~50 us fdatasync here) than the overlap saved, and the
    tick waited for it anyway.

    A replica whose ``raft/journal`` is still pysyncobj's FileJournal (data
    written before the log existed) has its entries copied into the log,
    synced, before that file is removed.
    """

    def __init__(self, log_path: str, meta_path: str, durable: bool, legacy_path: str | None = None):
        if legacy_path and os.path.exists(legacy_path):
            if not os.path.exists(log_path):
                old = FileJournal(legacy_path)
                entries = [old[i] for i in range(len(old))]
                old._destroy()
                RecordLog(log_path, durable=durable, entries=entries).close()
            # (A log beside it was made from it: the rename that created the
            # log is synced before the old file goes.)
            os.remove(legacy_path)
            fsync_dir(os.path.dirname(legacy_path))
        self._log = RecordLog(log_path, durable=durable)
        self._meta_storer = (_DurableMetaStorer if durable else MetaStorer)(meta_path)
        self._meta = self._meta_storer.getMeta()
        self._meta_saved = True

    @property
    def syncs(self) -> int:
        return self._log.syncs

    def sync(self) -> None:
        """Every write so far is on disk when this returns."""
        self._log.sync()

    def add(self, command, idx, term):
        self._log.add(command, idx, term)

    def clear(self):
        self._log.clear()

    def deleteEntriesFrom(self, entryFrom):
        self._log.delete_from(entryFrom)

    def deleteEntriesTo(self, entryTo):
        self._log.delete_to(entryTo)

    def __getitem__(self, item):
        return self._log.entries[item]

    def __len__(self):
        return len(self._log.entries)

    def _destroy(self):
        self._log.close()
        self._store_meta()

    def setRaftCommitIndex(self, raftCommitIndex):
        self._meta["raftCommitIndex"] = raftCommitIndex
        self._meta_saved = False

    def getRaftCommitIndex(self):
        return self._meta.get("raftCommitIndex", 1)

    def setCurrentTerm(self, term, votedForNodeId):
        self._meta["currentTerm"] = term
        self._meta["votedForNodeId"] = votedForNodeId
        self._meta_saved = False
        self._store_meta()         # before any vote or message of the new term leaves

    def getCurrentTerm(self):
        return self._meta.get("currentTerm", 0)

    def getVotedForNodeId(self):
        return self._meta.get("votedForNodeId")

    def onOneSecondTimer(self):
        self._store_meta()

    def _store_meta(self):
        if not self._meta_saved:
            self._meta_storer.storeMeta(self._meta)
            self._meta_saved = True


class _DurableTransport(TCPTransport):
    """Journal durability at the only door out of the node.

    Any message but ``append_entries`` (a follower's ``next_node_idx``
    acknowledgment, votes) leaves only after the journal is synced. The
    leader's ``append_entries`` may leave first (Raft allows it, thesis
    10.2.1): the tick thread syncs the leader's journal right after the
    tick's sends (``_RaftNode._before_poll``), while the followers sync
    theirs, and again (a no-op by then) before each tick; pysyncobj
    computes the commit index, counting the leader itself, only at the
    start of a tick.
    """

    def send(self, node, message):
        raft = self._syncObj
        journal = getattr(raft, "_cistern_journal", None)
        if journal is not None:
            kind = message.get("type") if isinstance(message, dict) else None
            if kind == "append_entries":
                # ReadIndex: every append carries the current read round.
                stamp = raft._cistern_replica._read_stamp
                if stamp:
                    message[_ROUND_KEY] = stamp
                    raft._cistern_replica._read_stamp_sent = stamp
            else:
                journal.sync()
                if kind == "next_node_idx" and raft._cistern_echo is not None:
                    message[_ROUND_KEY] = raft._cistern_echo   # the round of the append answered
        return super().send(node, message)


class _RaftNode(SyncObj):
    """The SyncObj: one replicated method, plus two documented reaches into
    pysyncobj internals (the applied counter, the message handler)."""

    def __init__(self, replica: "Replica", self_address, other_addresses, conf: SyncObjConf, durable: bool,
                 paths: dict):
        self._cistern_replica = replica
        self._cistern_journal = None
        self._cistern_echo = None        # follower: read round of the append being answered
        self._cistern_acked = {}         # leader: node -> highest read round it answered
        super().__init__(self_address, other_addresses, conf, transportClass=_DurableTransport)
        # conf.journalFile is None, so pysyncobj made a MemoryJournal holding
        # its first no-op entry, and autoTick is off, so nothing has ticked
        # yet: swap in the durable log, then restore what SyncObj.__init__
        # restores from a journal (Raft's persistent term and vote, and the
        # commit index hint) from ours.
        memory = self._SyncObj__raftLog
        journal = _DurableJournal(paths["log"], paths["meta"], durable, paths.get("legacy"))
        if len(journal) == 0:
            journal.add(*memory[0])
        self._SyncObj__raftLog = journal
        self._SyncObj__raftCurrentTerm = max(journal.getCurrentTerm(), journal[-1][2])
        self._SyncObj__votedForNodeId = journal.getVotedForNodeId()
        self._SyncObj__raftCommitIndex = journal.getRaftCommitIndex()
        self._cistern_journal = journal
        self._cistern_woken_at = -1
        self.addOnTickCallback(self._before_poll)

    def _before_poll(self) -> None:
        """pysyncobj on-tick hook: runs on the tick thread after the tick's
        work, just before it polls (up to the tick period).

        The leader's own entries must be synced before it counts itself: it
        syncs them here, after this tick sent its appends (so the followers'
        syncs run meanwhile) and before it polls for their answers; a lone
        member, which sends nothing, syncs here too. The sync comes before
        the apply-ahead (``_prepare_next``), not after it: the members share
        one disk on a test machine (and a flush waits for the writes queued
        before it), so a leader that applied first joined the disk's queue
        last and its own flush, not the followers', decided the commit
        (traced here: leader fdatasync 0.8-1.2 ms against the followers'
        0.25-0.5; figures in ARCHITECTURE). And pysyncobj advances the
        commit index only at the start of a tick: when a majority (counting this
        leader) already holds the next entry -- always so for a lone member
        -- nothing would wake the poll, and the entry would wait out the
        tick period. Wake it instead (once per commit index, so an entry of
        an older term, which counting does not commit, cannot make it spin).

        ReadIndex: when no append left since the newest read round began,
        send one heartbeat round now; then confirm and serve what can be."""
        if self._SyncObj__raftState != _ROLE_LEADER:
            return
        replica = self._cistern_replica
        if replica._read_rounds or replica._read_ready:
            if replica._read_stamp_sent != replica._read_stamp:
                self._SyncObj__sendAppendEntries()   # one heartbeat round for the reads
            replica._check_read_rounds()
        self._cistern_journal.sync()
        replica._prepare_next()
        commit = self._SyncObj__raftCommitIndex
        if self.last_log_index() <= commit:
            return
        if commit != self._cistern_woken_at and self.commit_ready():
            self._cistern_woken_at = commit
            self._SyncObj__pipeNotifier.notify()

    def _SyncObj__applyLogEntries(self):
        # pysyncobj (appendEntriesUseBatch=False) sends an extra append round
        # after every apply, only to tell the followers the new commit index.
        # Every append carries it anyway: the next write's, a ReadIndex
        # round's, or the heartbeat within append_entries_period_s. One write
        # at a time, that round doubled the Raft messages per write (two
        # sends and two answers on the leader, one of each on a follower) and
        # competed for the CPU with the reply. Followers' applied state may
        # trail by up to a heartbeat; nothing reads it for linearizable
        # answers, and acknowledgments never depend on a follower applying.
        SyncObj._SyncObj__applyLogEntries(self)
        return False

    @replicated
    def apply_entry(self, entry: bytes):
        index = self._SyncObj__raftLastApplied + 1
        return self._cistern_replica._apply_committed(index, entry)

    def _SyncObj__onMessageReceived(self, node, message):
        # An install-snapshot message carries no prevLogIdx, so no consistency
        # check runs before pysyncobj raises the commit index from it; a
        # follower holding stale uncommitted entries would then apply them.
        # Such a message must not raise our commit index (see module docstring).
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "append_entries":
            if "prevLogIdx" not in message and "commit_index" in message:
                message["commit_index"] = min(message["commit_index"], self.raftCommitIndex)
            # Any answer pysyncobj sends to this append (it answers only an
            # append whose term is at least ours) echoes the append's round.
            self._cistern_echo = message.get(_ROUND_KEY)
            try:
                SyncObj._SyncObj__onMessageReceived(self, node, message)
            finally:
                self._cistern_echo = None
            return
        if kind == "next_node_idx" and self._SyncObj__raftState == _ROLE_LEADER:
            stamp = message.get(_ROUND_KEY)
            if stamp is not None and stamp > self._cistern_acked.get(node, 0):
                self._cistern_acked[node] = stamp
                self._cistern_replica._check_read_rounds()
        if kind != "next_node_idx" or not message.get("success") or message.get("reset"):
            SyncObj._SyncObj__onMessageReceived(self, node, message)
            return
        # A success acknowledgment of an older append (pipelining: the
        # leader already sent more) makes pysyncobj rewind nextIndex and
        # re-send entries the follower holds, which the follower truncates
        # and re-appends ("truncating already-applied log entries"). Raft
        # only ever moves nextIndex back on a rejection: keep it.
        next_index = self._SyncObj__raftNextIndex
        before = next_index.get(node)
        SyncObj._SyncObj__onMessageReceived(self, node, message)
        after = next_index.get(node)
        if before is not None and after is not None and after < before:
            next_index[node] = before

    def read_index_now(self) -> int:
        """ReadIndex (Raft thesis 6.4) as of now: the commit index, but at
        least this term's first entry (the no-op pysyncobj appends on
        election), which holds every entry an earlier leader committed."""
        return max(self._SyncObj__raftCommitIndex, self._SyncObj__noopIDx or 0)

    def majority_answered(self, stamp: int) -> bool:
        """A majority, counting this leader, answered an append carrying read
        round ``stamp`` or a later one."""
        others = self._SyncObj__otherNodes
        acked = self._cistern_acked
        holders = 1 + sum(1 for node in others if acked.get(node, 0) >= stamp)
        return holders * 2 > len(others) + 1

    def commit_ready(self) -> bool:
        """This leader's next tick would commit a new entry: a majority,
        counting itself, holds the entry after the commit index."""
        if self._SyncObj__raftState != _ROLE_LEADER:
            return False
        commit = self._SyncObj__raftCommitIndex
        if self.last_log_index() <= commit:
            return False
        others = self._SyncObj__otherNodes
        match = self._SyncObj__raftMatchIndex
        holders = 1 + sum(1 for node in others if match.get(node, 0) > commit)
        return holders * 2 > len(others) + 1

    def last_log_index(self) -> int:
        try:
            return self._SyncObj__raftLog[-1][1]
        except (IndexError, TypeError):
            return 0

    def first_log_index(self) -> int:
        """The oldest index still in the journal (the snapshot's, once compacted)."""
        try:
            return self._SyncObj__raftLog[0][1]
        except (IndexError, TypeError):
            return 0

    def match_indexes(self) -> dict:
        try:
            return {node.address: idx for node, idx in list(self._SyncObj__raftMatchIndex.items())}
        except RuntimeError:
            return {}

    def connected(self) -> set:
        try:
            return {node.address for node in list(self._SyncObj__connectedNodes)}
        except RuntimeError:
            return set()


# -- helpers -------------------------------------------------------------------

def _looks_like_address(s) -> bool:
    host, sep, port = str(s).rpartition(":")
    return bool(sep and host and port.isdigit())


def _normalize_peers(raft_address: str, peers) -> dict[str, str]:
    """{raft_address: node_id} of the other members."""
    if isinstance(peers, dict):
        items = list(peers.items())
        if items and all(_looks_like_address(v) for _, v in items) and \
                not all(_looks_like_address(k) for k, _ in items):
            items = [(v, k) for k, v in items]      # given as {node_id: raft}
        result = {str(a): str(i) for a, i in items}
    else:
        result = {str(a): str(a) for a in peers}
    result.pop(raft_address, None)
    return result


def _find_store(machines, conf: ReplicaConf):
    if conf.store is not None:
        return conf.store
    for _, machine in machines:
        for attr in ("store", "_store"):
            candidate = getattr(machine, attr, None)
            if candidate is not None and hasattr(candidate, "env") and hasattr(candidate, "db"):
                return candidate
    raise ValueError("no Store: pass ReplicaConf(store=...) or a machine with a .store attribute")


def _routes(machines, conf: ReplicaConf) -> list[tuple[range, object]]:
    """[(codes, machine)] from the accepted ``machines`` shapes."""
    if isinstance(machines, dict):
        named = list(machines.items())
    else:
        named = [(None, m) for m in machines]
    routes = []
    for name, item in named:
        if isinstance(item, tuple) and len(item) == 2:
            codes, machine = item
        else:
            machine = item
            codes = getattr(machine, "code_range", None)
            if codes is None:
                if name == "scheduler":
                    codes = range(1000, 1 << 31)
                elif name in (None, "namespace") and not any(r.start == 1 for r, _ in routes):
                    codes = range(1, 1000)
                else:
                    raise ValueError(f"machine {name!r} has no code_range")
        routes.append((codes if isinstance(codes, range) else range(codes[0], codes[1] + 1), machine))
    routes.extend(conf.extra_machines)
    for i, (a, _) in enumerate(routes):
        for b, _ in routes[i + 1:]:
            assert a.stop <= b.start or b.stop <= a.start, f"code ranges overlap: {a} {b}"
    return routes


def _result_tuple(result) -> tuple:
    if not isinstance(result, (tuple, list)) or len(result) != 3 or not isinstance(result[0], int):
        raise TypeError(f"machine returned {result!r}, not (errno, message, value)")
    return result[0], result[1], result[2]


def _future_from(result, future: concurrent.futures.Future) -> None:
    if future.done():
        return
    try:
        err, message, value = result
        if err:
            future.set_exception(CisternError(err, message or os.strerror(err)))
        else:
            future.set_result(value)
    except concurrent.futures.InvalidStateError:
        pass


def _fail(future: concurrent.futures.Future, exc: BaseException) -> None:
    try:
        if not future.done():
            future.set_exception(exc)
    except concurrent.futures.InvalidStateError:
        pass


def _deliver(sinks, results, exc) -> None:
    """Hand results (or one exception) to what waits for a batch's writes:
    a Future each, or ``(on_done, position)`` from ``submit_writes``, whose
    group gets one call per batch."""
    groups: dict = {}
    for n, sink in enumerate(sinks):
        result = results[n] if exc is None else None
        if type(sink) is tuple:
            on_done, position = sink
            pairs = groups.get(on_done)
            if pairs is None:
                pairs = groups[on_done] = []
            pairs.append((position, result))
        elif exc is None:
            _future_from(result, sink)
        else:
            _fail(sink, exc)
    for on_done, pairs in groups.items():
        try:
            on_done(pairs, exc)
        except Exception:
            log.exception("a write callback failed")


def _fail_reads(groups, exc: BaseException) -> None:
    for _, on_done in groups:
        try:
            on_done(None, exc)
        except Exception:
            log.exception("a read callback failed")


class _Batch:
    __slots__ = ("futures", "done", "ops", "entry")

    def __init__(self, futures, ops):
        self.futures = futures
        self.ops = ops
        self.done = False
        self.entry = b""


class _Prepared:
    """An entry applied ahead of its commit (``Replica._prepare_next``): the
    open write transaction and what ``_apply_in_txn`` returned in it."""
    __slots__ = ("index", "entry", "txn", "outcome")

    def __init__(self, index: int, entry: bytes, txn, outcome):
        self.index, self.entry, self.txn, self.outcome = index, entry, txn, outcome


class _ReadRound:
    """Linearizable reads waiting for one ReadIndex round (tick thread)."""
    __slots__ = ("stamp", "term", "read_index", "groups", "n_reads")

    def __init__(self, stamp: int, term: int, read_index: int, groups: list):
        self.stamp = stamp              # appends sent from now on carry it
        self.term = term
        self.read_index = read_index    # serve once applied reaches it
        self.groups = groups            # [(reads, on_done), ...]
        self.n_reads = sum(len(reads) for reads, _ in groups)


class _SnapshotJob:
    """One background snapshot write; its state is what the checker reports."""

    def __init__(self):
        self.state = SERIALIZER_STATE.SERIALIZING
        self.thread: threading.Thread | None = None
        self.generation = 0      # snapshot_generation when it started


# -- the replica ---------------------------------------------------------------

class Replica:
    """One member of the metadata Raft group. See the module docstring."""

    def __init__(self, node_id: str, raft_address: str, peers, data_dir: str, machines, *,
                 rpc_addresses: dict[str, str] | None = None, conf: ReplicaConf | None = None):
        self.node_id = node_id
        self.raft_address = raft_address
        self.conf = conf or ReplicaConf()
        self.conf.validate()
        self._peers = _normalize_peers(raft_address, peers)
        self._ids = dict(self._peers)
        self._ids[raft_address] = node_id
        self._rpc = dict(rpc_addresses or {})
        self.data_dir = data_dir
        self._routes = _routes(machines, self.conf)
        # Each machine's apply without a nested transaction where it has one
        # (Namespace.apply_direct; see _call_machine).
        self._direct_apply = {machine: getattr(machine, "apply_direct", machine.apply)
                              for _, machine in self._routes}
        self.store = _find_store(self._routes, self.conf)
        self._env = self.store.env
        self._db = self.store.db(DB_REPLICA)
        self._ttl_ns = int(self.conf.session_ttl_s * 1e9)
        self.registry = self.conf.registry or MODULE_REGISTRY   # where this replica's metrics live
        self._m = _Metrics.for_registry(self.registry)
        self._label = node_id
        self._hot = _BoundMetrics(self._m, node_id)
        self._raft_dir = os.path.join(data_dir, "raft")
        # The Raft log (journal.py); pysyncobj's meta file beside it, still
        # named after the FileJournal that replicas before the log used (and
        # whose entries move into the log on the first start).
        self._journal_paths = {"log": os.path.join(self._raft_dir, "log"),
                               "meta": os.path.join(self._raft_dir, "journal.meta"),
                               "legacy": os.path.join(self._raft_dir, "journal")}
        self._dump_path = os.path.join(self._raft_dir, "snapshot")
        self._node: _RaftNode | None = None
        self._applied = (0, DIGEST_ZERO)          # (index, digest), replaced atomically
        self._state_version = 1                   # the newest entry version applied (KEY_VERSION)
        self._entry_version = model.STATE_MACHINE_VERSION   # what the machines were last told
        self._versioned = [m for _, m in self._routes if hasattr(m, "entry_version")]
        for machine in self._versioned:
            machine.entry_version = self._entry_version
        self.failed: str | None = None            # why this replica stops applying (Versions)
        self.on_failure = None                    # called once with that message (tick thread)
        self.snapshot_generation = 0
        self._snapshot: _SnapshotJob | None = None
        self._startup_dump = False
        self._lock = threading.Lock()                 # pending queues and in-flight set
        self._submit_lock = threading.RLock()         # take a batch + hand it to pysyncobj, in order
        self._kick_wanted = False                     # work may wait: whoever holds _submit_lock looks again
        self._pending_writes: collections.deque = collections.deque()
        self._pending_bytes = 0
        self._pending_reads: collections.deque = collections.deque()
        self._read_wake = False                       # the tick thread was woken for pending reads
        # ReadIndex rounds (tick thread only): the stamp outgoing appends carry,
        # the last stamp that left, rounds awaiting a majority's answer, and
        # confirmed rounds awaiting apply up to their read index.
        self._read_stamp = 0
        self._read_stamp_sent = 0
        self._read_rounds: collections.deque = collections.deque()
        self._read_ready: collections.deque = collections.deque()
        self._in_flight: set = set()
        self._running = False
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._completions: queue.SimpleQueue = queue.SimpleQueue()
        self._readers = None
        self.batches = 0
        self.ticks = 0
        self.entries_applied = 0
        self.entries_preapplied = 0                   # applied by _prepare_next before their commit
        # Leader: batches handed to pysyncobj and not yet called back, in log
        # order (submitters append, the tick thread removes); the oldest is
        # what _prepare_next applies ahead of its commit into _prepared.
        self._unapplied: collections.deque = collections.deque()
        self._prepared: _Prepared | None = None
        self._result_packer = msgpack.Packer(use_bin_type=True)   # tick thread only (_pack_result)

    # -- lifecycle -------------------------------------------------------

    def start(self) -> None:
        os.makedirs(self._raft_dir, exist_ok=True)
        if self._env.flags().get("sync"):
            log.info("replica %s: the store fsyncs every apply; Store(sync=False) is safe here (the "
                     "journal is durable and snapshots sync LMDB) and saves ~1 ms per entry", self.node_id)
        self._bootstrap()
        _pysyncobj_tcp.zlib = _MessageZlib(self.conf.message_compress_level)
        _pysyncobj_pickle.dumps = _pickle_dumps
        self._startup_dump = os.path.exists(self._dump_path)
        try:
            self._node = _RaftNode(self, self.raft_address, list(self._peers), self._syncobj_conf(),
                                   self.conf.durable, self._journal_paths)
        except SyncObjException as e:
            raise CisternError(errno.EADDRINUSE, f"cannot bind raft address {self.raft_address}: {e}") from None
        self._running = True
        self._readers = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix=f"replica-{self.node_id}-read")
        for name, target in (("tick", self._tick_loop), ("complete", self._complete_loop)):
            t = threading.Thread(target=target, name=f"replica-{self.node_id}-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _syncobj_conf(self) -> SyncObjConf:
        """pysyncobj's configuration (see ReplicaConf for the timings)."""
        c = self.conf
        return SyncObjConf(
            autoTick=False,
            appendEntriesUseBatch=False,       # wake the poller per command: no 1/tick latency floor
            appendEntriesPeriod=c.append_entries_period_s,
            raftMinTimeout=c.election_timeout_min_s,
            raftMaxTimeout=c.election_timeout_max_s,
            connectionTimeout=c.connection_timeout_s,
            connectionRetryTime=c.connection_retry_s,
            leaderFallbackTimeout=c.leader_fallback_timeout_s,
            sendBufferSize=c.socket_buffer_bytes,
            recvBufferSize=c.socket_buffer_bytes,
            # One of our entries is at most batch_bytes_max: keep it out of
            # pysyncobj's chunked 'transmission' path.
            appendEntriesBatchSizeBytes=2 * limits.batch_bytes_max,
            logCompactionBatchSize=1 << 20,
            logCompactionMinEntries=c.log_compaction_min_entries,
            logCompactionMinTime=c.log_compaction_min_time_s,
            commandsWaitLeader=False,
            journalFile=None,                  # a MemoryJournal, swapped for ours (_RaftNode)
            fullDumpFile=self._dump_path,
            serializer=self._serialize,
            serializeChecker=self._check_serializing,
            deserializer=self._deserialize,
            onStateChanged=self._on_state_changed,
            useFork=False,
            tcp_keepalive=(2, 1, 3),
            bindAddress=self.raft_address,     # pysyncobj would listen on 0.0.0.0
            bindRetryTime=0.2,
            maxBindRetries=bind_attempts_max,   # then start() raises instead of retrying forever
        )

    def stop(self) -> None:
        """Stop ticking, fail what is pending with NotLeader(''), close the
        Raft transport and flush the journal. Idempotent. The store is the
        caller's to close."""
        if not self._running:
            return
        self._running = False
        self._stopping.set()
        self._completions.put(None)
        for t in self._threads:
            t.join(timeout=30)
        self._threads = []
        job = self._snapshot
        if job is not None and job.thread is not None:
            job.thread.join(timeout=60)
        self._node.destroy()      # autoTick off: closes transport, flushes journal now
        self._readers.shutdown(wait=True)
        self._fail_everything(NotLeader(""), self._take_read_rounds())

    def _bootstrap(self) -> None:
        with self._env.begin(write=True) as txn:
            for _, machine in self._routes:
                machine.bootstrap(txn)
            raw_index = txn.get(KEY_APPLIED, db=self._db)
            digest = txn.get(KEY_DIGEST, db=self._db) or DIGEST_ZERO
            self._state_version = self._stored_version(txn)
        self._applied = (_U64.unpack(raw_index)[0] if raw_index else 0, bytes(digest))
        self._m.applied_index.labels(self._label).set(self._applied[0])
        if self._state_version > model.STATE_MACHINE_VERSION:
            raise CisternError(errno.ENOTSUP, _newer_message(
                f"the state in {self.store.path} was written by", self._state_version))

    def _stored_version(self, txn) -> int:
        raw = txn.get(KEY_VERSION, db=self._db)
        return _U64.unpack(raw)[0] if raw else 1

    # -- the public surface ----------------------------------------------

    def submit_write(self, client_id: bytes, seq: int, acked_below: int, code: int,
                     args: bytes) -> concurrent.futures.Future:
        """Commit one operation through Raft (group commit). Never raises:
        failures arrive through the future (see module docstring)."""
        future: concurrent.futures.Future = concurrent.futures.Future()
        if not self._running:
            _fail(future, NotLeader(""))
            return future
        if not self._node._isLeader():
            _fail(future, NotLeader(self.leader_rpc_address()))
            return future
        if len(args) > limits.op_args_bytes_max:
            _fail(future, CisternError(errno.E2BIG, f"arguments exceed {limits.op_args_bytes_max} bytes"))
            return future
        op = model.pack([bytes(client_id), int(seq), int(acked_below), int(code), bytes(args)])
        with self._lock:
            self._pending_writes.append((op, future))
            self._pending_bytes += len(op)
        self._kick()
        return future

    def submit_writes(self, client_id: bytes, acked_below: int, writes: list, on_done) -> None:
        """Commit a group of one client's operations ``[(seq, code, args),
        ...]`` as ``submit_write`` does each, without a future apiece:
        ``on_done(pairs, exc)`` is called with ``[(position in writes,
        result), ...]`` as parts of the group commit (``exc`` None, results
        ``(errno, message, value)``), or with ``[(position, None), ...]`` and
        the exception those operations failed with (NotLeader,
        CisternError). Every position is reported exactly once. Runs on a
        replica thread (keep it short) or, when refused at once, the caller's."""
        if not self._running or not self._node._isLeader():
            exc = NotLeader(self.leader_rpc_address() if self._running else "")
            on_done([(i, None) for i in range(len(writes))], exc)
            return
        client_id, acked_below = bytes(client_id), int(acked_below)
        packed, too_big = [], []
        pack = model.pack
        for i, (seq, code, args) in enumerate(writes):
            if len(args) > limits.op_args_bytes_max:
                too_big.append((i, None))
            else:
                packed.append((pack([client_id, int(seq), acked_below, int(code), bytes(args)]), (on_done, i)))
        if too_big:
            on_done(too_big, CisternError(errno.E2BIG, f"arguments exceed {limits.op_args_bytes_max} bytes"))
        if not packed:
            return
        with self._lock:
            self._pending_writes.extend(packed)
            self._pending_bytes += sum(len(op) for op, _ in packed)
        self._kick()

    def submit_read(self, code: int, args: bytes, *, linearizable: bool = True) -> concurrent.futures.Future:
        """Answer a read; linearizable ones only on the leader after a shared
        barrier, others from this replica's applied state."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def done(results, exc):
            if exc is not None:
                _fail(future, exc)
            else:
                _future_from(results[0], future)

        self.submit_reads([(code, args)], done, linearizable=linearizable)
        return future

    def submit_reads(self, reads: list, on_done, *, linearizable: bool = True) -> None:
        """Answer a group of reads ``[(code, args), ...]`` together: calls
        ``on_done(results, None)`` once with their ``(errno, message,
        value)`` results in order, or ``on_done(None, exc)`` (NotLeader,
        CisternError) for all of them. Linearizable groups are answered on
        the leader after a barrier as ``submit_read``; ``on_done`` runs on a
        replica thread (keep it short) or, when refused at once, on the
        caller's. Saves a future per operation on the hot path."""
        if not reads:
            on_done([], None)
        elif not self._running:
            on_done(None, NotLeader(""))
        elif not linearizable:
            self._run_reads([(reads, on_done)])
        elif not self._node._isLeader():
            on_done(None, NotLeader(self.leader_rpc_address()))
        else:
            with self._lock:
                self._pending_reads.append((reads, on_done))
                wake, self._read_wake = not self._read_wake, True
            if wake:
                self._node._SyncObj__pipeNotifier.notify()

    def is_leader(self) -> bool:
        return self._node is not None and self._node._isLeader()

    def leader_rpc_address(self) -> str:
        """The leader's client RPC address, '' when unknown."""
        leader = self._node._getLeader() if self._node is not None else None
        return self._rpc.get(leader.address, "") if leader is not None else ""

    def wait_leader(self, timeout_s: float) -> str:
        """Wait until a leader is known; its RPC address (its raft address if
        no RPC address is known), or '' on timeout. Truthy iff found."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            leader = self._node._getLeader() if self._node is not None else None
            if leader is not None:
                return self._rpc.get(leader.address) or leader.address
            time.sleep(0.02)
        return ""

    def status(self) -> dict:
        node = self._node
        leader = node._getLeader() if node is not None else None
        leader_addr = leader.address if leader is not None else ""
        index, digest = self._applied
        matches = node.match_indexes() if node is not None and node._isLeader() else {}
        connected = node.connected() if node is not None else set()
        members = []
        for raft in sorted(self._ids):
            member = {"id": self._ids[raft], "raft": raft, "rpc": self._rpc.get(raft, "")}
            if raft != self.raft_address:
                member["connected"] = raft in connected
                if raft in matches:
                    member["match_index"] = matches[raft]
            members.append(member)
        role = node._SyncObj__raftState if node is not None else 0
        journal = node._cistern_journal if node is not None else None
        return {
            "id": self.node_id,
            "role": _ROLE_NAMES.get(role, "follower"),
            "leader_id": self._ids.get(leader_addr, leader_addr),
            "leader_rpc": self._rpc.get(leader_addr, ""),
            "term": node.raftCurrentTerm if node is not None else 0,
            "commit_index": node.raftCommitIndex if node is not None else 0,
            "applied_index": index,
            "raft_applied_index": node.raftLastApplied if node is not None else 0,
            "last_log_index": node.last_log_index() if node is not None else 0,
            "first_log_index": node.first_log_index() if node is not None else 0,
            "digest": digest.hex(),
            "state_machine_version": model.STATE_MACHINE_VERSION,
            "state_version": self._state_version,
            "failed": self.failed,
            "members": members,
            "batches": self.batches,
            "entries_applied": self.entries_applied,
            "entries_preapplied": self.entries_preapplied,
            "ticks": self.ticks,
            "in_flight": len(self._in_flight),
            "snapshot_generation": self.snapshot_generation,
            "journal_syncs": journal.syncs if journal is not None else 0,
        }

    def applied(self) -> tuple[int, bytes]:
        """(applied index, digest) of the local LMDB state, consistently paired."""
        return self._applied

    # -- threads ---------------------------------------------------------

    def _tick_loop(self) -> None:
        node = self._node
        period = self.conf.tick_period_s
        last_metrics = 0.0
        journal = node._cistern_journal
        while not self._stopping.is_set():
            try:
                journal.sync()   # the leader's own sync, before it counts itself (no-op: done before the poll)
                if self._pending_reads and len(self._read_rounds) < read_rounds_in_flight_max:
                    self._start_read_round()
                node.doTick(period)
                self.ticks += 1
            except NewerStateMachine as e:
                self.failed = str(e)
            except Exception:
                log.exception("replica %s: pysyncobj tick failed; retrying", self.node_id)
                time.sleep(period)
            if self.failed is not None:
                self._stop_applying()
                break
            now = time.monotonic()
            if now - last_metrics > 0.25:
                last_metrics = now
                self._update_gauges()
        # LMDB's writer lock belongs to the thread that took it: this one.
        self._drop_prepared()

    def _stop_applying(self) -> None:
        """Tick thread, once ``failed`` says why (an entry or snapshot of a
        newer state machine): stop taking part (ticks end here; the group
        goes on without this member, or waits for a majority of newer ones)
        and tell ``on_failure``."""
        log.critical("replica %s: %s", self.node_id, self.failed)
        if self.on_failure is not None:
            try:
                self.on_failure(self.failed)
            except Exception:
                log.exception("replica %s: on_failure raised", self.node_id)

    def _update_gauges(self) -> None:
        node, label = self._node, self._label
        self._m.role.labels(label).set(node._SyncObj__raftState)
        self._m.term.labels(label).set(node.raftCurrentTerm)
        self._m.commit_index.labels(label).set(node.raftCommitIndex)

    def _kick(self) -> None:
        """Submit the next batch when a slot is free. Called by whoever may
        have made that true: a submitter (work arrived) or a completion (a
        slot freed). So there is no committer thread to wake: under load each
        batch carries whatever queued while the slots were busy. Taking a
        batch and queueing it into pysyncobj happen under one lock, so
        batches enter the log in the order operations were submitted.

        Never waits for that lock (measured: a third of the stream readers'
        time went to waiting for it under load): a caller that finds it
        held leaves ``_kick_wanted`` set, and the holder, which checks the
        flag after releasing the lock, goes round again. A caller that finds
        every slot taken leaves too: the completion that frees one kicks."""
        self._kick_wanted = True
        slots = self.conf.batches_in_flight_max
        while self._kick_wanted:
            if len(self._in_flight) >= slots or not self._submit_lock.acquire(blocking=False):
                return
            try:
                self._kick_wanted = False
                while True:
                    with self._lock:
                        if not (self._running and self._pending_writes and len(self._in_flight) < slots):
                            break
                        batch = self._take_batch()
                        self._in_flight.add(batch)
                    self._submit(batch)
            finally:
                self._submit_lock.release()

    def _take_batch(self) -> _Batch:
        ops, futures = [], []
        size = 0
        pending = self._pending_writes
        while pending and len(ops) < self.conf.batch_ops_max:
            op, future = pending[0]
            if ops and size + len(op) > self.conf.batch_bytes_max - 64:
                break
            pending.popleft()
            self._pending_bytes -= len(op)
            if type(future) is not tuple and future.done():   # cancelled by the caller
                continue
            ops.append(op)
            futures.append(future)
            size += len(op)
        return _Batch(futures, ops)

    def _submit(self, batch: _Batch) -> None:
        if not self._node._isLeader():
            self._finish(batch, exc=NotLeader(self.leader_rpc_address()))
            return
        header = msgpack.Packer(use_bin_type=True)
        entry = b"".join([header.pack_array_header(3), header.pack(time.time_ns()),
                          header.pack_array_header(len(batch.ops)), *batch.ops, _ENTRY_VERSION])
        self.batches += 1
        self._hot.batch_ops.observe(len(batch.ops))
        batch.entry = entry
        self._unapplied.append(batch)
        self._node.apply_entry(entry, callback=lambda res, err: self._on_committed(batch, res, err))

    def _on_committed(self, batch: _Batch, res, err) -> None:
        """pysyncobj callback (tick thread). A batch of up to
        ``inline_completion_max`` operations completes here: that saves a
        thread hop and a GIL hand-off per entry (the GIL lets the completer
        overlap nothing); see ``inline_reads_max`` for what was measured.
        Bigger ones go to the completer."""
        unapplied = self._unapplied
        if unapplied and unapplied[0] is batch:
            unapplied.popleft()
        else:
            try:
                unapplied.remove(batch)
            except ValueError:
                pass
        if len(batch.futures) <= inline_completion_max:
            try:
                self._complete(batch, res, err)
            except Exception:
                log.exception("replica %s: completing a batch failed", self.node_id)
        else:
            self._completions.put((batch, res, err))

    def _complete_loop(self) -> None:
        while True:
            item = self._completions.get()
            if item is None:
                return
            batch, res, err = item
            try:
                self._complete(batch, res, err)
            except Exception:
                log.exception("replica %s: completing a batch failed", self.node_id)

    def _complete(self, batch: _Batch, res, err) -> None:
        if err == FAIL_REASON.SUCCESS and isinstance(res, list) and len(res) == len(batch.ops):
            self._hot.entries_committed.inc()
            _deliver(batch.futures, res, None)
            self._finish(batch)
        elif err == FAIL_REASON.SUCCESS:
            # Applied before (index at or below LMDB's applied index): the
            # outcome of these ops is not known here; a resend dedupes.
            self._finish(batch, exc=CisternError(errno.EAGAIN, "outcome unknown; resend with the same seq"))
        elif err == FAIL_REASON.QUEUE_FULL:
            self._finish(batch, exc=CisternError(errno.EAGAIN, "raft command queue full"))
        else:
            self._finish(batch, exc=NotLeader(self.leader_rpc_address()))

    def _finish(self, batch: _Batch, *, exc: BaseException | None = None) -> None:
        with self._lock:
            if batch.done:
                return
            batch.done = True
            self._in_flight.discard(batch)
        if exc is not None:
            _deliver(batch.futures, None, exc)
        self._kick()

    def _fail_everything(self, exc: BaseException, rounds=()) -> None:
        """Fail every queued and in-flight operation. ``rounds``: read groups
        the tick thread took out of its ReadIndex rounds for this."""
        with self._lock:
            batches = list(self._in_flight)
            pending = list(self._pending_writes)
            reads = list(self._pending_reads)
            self._pending_writes.clear()
            self._pending_reads.clear()
            self._pending_bytes = 0
            self._read_wake = False
        for batch in batches:
            self._finish(batch, exc=exc)
        _deliver([sink for _, sink in pending], None, exc)
        _fail_reads(list(rounds) + reads, exc)

    def _take_read_rounds(self) -> list:
        """Empty the ReadIndex rounds (tick thread, or after it stopped);
        their read groups."""
        groups = [g for r in (*self._read_rounds, *self._read_ready) for g in r.groups]
        self._read_rounds.clear()
        self._read_ready.clear()
        return groups

    def _on_state_changed(self, old_state, new_state) -> None:
        """pysyncobj callback (tick thread)."""
        self._m.role.labels(self._label).set(new_state)
        if (old_state == _ROLE_LEADER) != (new_state == _ROLE_LEADER):
            self._drop_prepared()
            self._unapplied.clear()
        if old_state == _ROLE_LEADER and new_state != _ROLE_LEADER:
            log.warning("replica %s: lost leadership; failing in-flight operations", self.node_id)
            # Outcome unknown: they may still commit. Clients resend with the
            # same (client_id, seq), which applies at most once. Reads waiting
            # for a round leave the rounds now, on this thread, so no answer
            # that arrives later can confirm them.
            rounds = self._take_read_rounds()
            threading.Thread(target=self._fail_everything, args=(NotLeader(""), rounds), daemon=True).start()
        elif new_state == _ROLE_LEADER:
            log.info("replica %s: leader in term %d", self.node_id, self._node.raftCurrentTerm)

    # -- linearizable reads: ReadIndex (tick thread) ------------------------

    def _start_read_round(self) -> None:
        """Give every pending linearizable read one new ReadIndex round:
        record the read index now, bump the stamp that appends carry from now
        on (the tick sends them; ``_before_poll`` sends a heartbeat if it did
        not), and wait in ``_read_rounds`` for a majority to answer one."""
        node = self._node
        with self._lock:
            groups = list(self._pending_reads)
            self._pending_reads.clear()
            self._read_wake = False
        if not groups:
            return
        if node._SyncObj__raftState != _ROLE_LEADER:
            _fail_reads(groups, NotLeader(self.leader_rpc_address()))
            return
        self._read_stamp += 1
        self._read_rounds.append(_ReadRound(self._read_stamp, node.raftCurrentTerm,
                                            node.read_index_now(), groups))
        self._check_read_rounds()   # a lone member is its own majority

    def _check_read_rounds(self) -> None:
        """Confirm rounds a majority answered, then serve confirmed rounds
        whose read index is applied (called on answers and every tick)."""
        node = self._node
        rounds, ready = self._read_rounds, self._read_ready
        term = node.raftCurrentTerm
        while rounds and node.majority_answered(rounds[0].stamp):
            confirmed = rounds.popleft()
            if confirmed.term != term or node._SyncObj__raftState != _ROLE_LEADER:
                _fail_reads(confirmed.groups, NotLeader(self.leader_rpc_address()))
            else:
                ready.append(confirmed)
        if not ready:
            return
        applied = node.raftLastApplied
        groups, n_reads = [], 0
        while ready and ready[0].read_index <= applied:
            served = ready.popleft()
            groups.extend(served.groups)
            n_reads += served.n_reads
        if not groups:
            return
        if n_reads <= inline_reads_max:
            self._run_reads(groups)
        else:
            self._readers.submit(self._run_reads, groups)

    # -- reads -----------------------------------------------------------

    def _run_reads(self, groups) -> None:
        """Run groups of reads in one LMDB read transaction, then hand each
        group its results (outside the transaction)."""
        read_one = self._read_one
        try:
            with self._env.begin(write=False) as txn:
                answers = [[read_one(txn, code, args) for code, args in reads] for reads, _ in groups]
        except Exception as e:   # LMDB itself failed
            log.exception("replica %s: read transaction failed", self.node_id)
            _fail_reads(groups, CisternError(errno.EIO, f"read failed: {e}"))
            return
        for (_, on_done), results in zip(groups, answers):
            try:
                on_done(results, None)
            except Exception:
                log.exception("replica %s: a read callback failed", self.node_id)

    def _read_one(self, txn, code: int, args: bytes):
        if code == _READ_DIGEST:
            raw = txn.get(KEY_APPLIED, db=self._db)
            digest = txn.get(KEY_DIGEST, db=self._db) or DIGEST_ZERO
            return 0, "", [_U64.unpack(raw)[0] if raw else 0, bytes(digest)]
        machine, decoded = self._route(code, args)
        if machine is None:
            return decoded   # the refusal: ENOSYS or EINVAL
        try:
            return _result_tuple(machine.read(txn, code, decoded))
        except Exception as e:
            log.exception("replica %s: machine raised on read code %d", self.node_id, code)
            return errno.EIO, f"internal error in read {code}: {type(e).__name__}", None

    def _route(self, code: int, args: bytes):
        """(machine, decoded argument list) for an operation, or (None, the
        error result) when no machine owns the code or the arguments are not
        a msgpack list. Shared by reads and applies, so both refuse alike."""
        machine = self._machine_for(code)
        if machine is None:
            return None, (errno.ENOSYS, f"no state machine for code {code}", None)
        try:
            decoded = model.unpack(args)
        except Exception:
            return None, (errno.EINVAL, "arguments are not valid msgpack", None)
        if not isinstance(decoded, list):
            return None, (errno.EINVAL, "arguments are not a msgpack list", None)
        return machine, decoded

    def _machine_for(self, code: int):
        for codes, machine in self._routes:
            if code in codes:
                return machine
        return None

    # -- apply (tick thread) -----------------------------------------------

    def _apply_committed(self, index: int, entry: bytes):
        """Apply one committed entry at Raft ``index``. Returns the list of
        results (one per op), or None when the entry was applied before.
        Commits the transaction ``_prepare_next`` left open when it holds
        this very entry at this index; otherwise applies it now."""
        started = time.perf_counter()
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared.index == index and prepared.entry == entry:
            txn, outcome = prepared.txn, prepared.outcome
            self.entries_preapplied += 1
        else:
            if prepared is not None:
                prepared.txn.abort()
            try:
                txn, outcome = self._apply_in_new_txn(index, entry)
            except NewerStateMachine:
                raise
            except BaseException:
                log.critical("replica %s: cannot apply entry %d (LMDB failure); stalling", self.node_id,
                             index, exc_info=True)
                raise
        if outcome is None:
            txn.abort()
            return None
        results, digest, n_ops, codes, version = outcome
        txn.commit()
        self._applied = (index, digest)
        if version > self._state_version:
            self._state_version = version
        self.entries_applied += 1
        hot = self._hot
        hot.applied_index.set(index)
        hot.entries.inc()
        for code, n in codes.items():
            hot.ops_applied(code).inc(n)
        hot.apply_seconds.observe(time.perf_counter() - started)
        return results

    def _apply_in_new_txn(self, index: int, entry: bytes):
        """``(txn, outcome)``: entry ``index`` applied in a new write
        transaction, left open (``outcome`` as ``_apply_in_txn``'s). Re-runs
        the entry when an operation must be nested or fails (``_MachineFault``).
        An LMDB failure aborts and raises."""
        poisoned: set[int] = set()
        nested: set[int] = set()
        while True:
            txn = self._env.begin(write=True)
            try:
                return txn, self._apply_in_txn(txn, index, entry, poisoned, nested)
            except _MachineFault as fault:
                txn.abort()
                (nested if fault.undo else poisoned).add(fault.position)
            except BaseException:
                txn.abort()
                raise

    def _prepare_next(self) -> None:
        """Leader, tick thread, after its own sync and just before the
        poll for the followers' answers: apply the oldest batch this leader
        submitted and pysyncobj has not applied yet in a write transaction
        that stays open (``_prepared``), while the followers fsync. Its commit then only
        commits that transaction (``_apply_committed``); nothing is visible
        to readers before. Only when every committed entry is applied: the
        entry would be the next applied, on top of exactly this LMDB state.
        The guess (that batch is at the next index) is checked when the next
        entry is applied: a different index or different bytes (a no-op
        entry in between, a lost leadership) aborts it, so a wrong guess costs
        the work, never the state."""
        node = self._node
        batches = self._unapplied
        if self._prepared is not None or not batches:
            return
        applied = node._SyncObj__raftLastApplied
        if applied != node._SyncObj__raftCommitIndex or node.last_log_index() <= applied:
            return
        index, entry = applied + 1, batches[0].entry
        if index <= self._applied[0]:
            return   # a replay: nothing to prepare
        try:
            txn, outcome = self._apply_in_new_txn(index, entry)
        except Exception:
            return   # LMDB failed: the real apply meets it again, and stalls loudly
        self._prepared = _Prepared(index, entry, txn, outcome)

    def _drop_prepared(self) -> None:
        """Abort the prepared transaction, if any (tick thread: LMDB's writer
        lock is the thread's): before anything else writes, when the
        leadership changes, and when the tick loop ends."""
        prepared, self._prepared = self._prepared, None
        if prepared is not None:
            prepared.txn.abort()

    def _apply_in_txn(self, txn, index: int, entry: bytes, poisoned: set, nested: set):
        db = self._db
        raw = txn.get(KEY_APPLIED, db=db)
        applied = _U64.unpack(raw)[0] if raw else 0
        if index <= applied:
            self._check_replayed(txn, index, entry)
            return None
        prev = txn.get(KEY_DIGEST, db=db) or DIGEST_ZERO
        time_ns, ops, version = self._decode_entry(index, entry)
        if version != self._entry_version:
            if version > model.STATE_MACHINE_VERSION:
                raise NewerStateMachine(_newer_message(f"log entry {index} was written by", version))
            for machine in self._versioned:
                machine.entry_version = version
            self._entry_version = version
        if version > self._state_version:
            txn.put(KEY_VERSION, _U64.pack(version), db=db)
        table = sessions_mod.SessionTable(sessions_mod.LmdbKV(txn, db), self._ttl_ns)
        table.expire(time_ns)
        results = []
        codes: dict[int, int] = {}
        for position, op in enumerate(ops):
            results.append(self._apply_op(txn, table, time_ns, position, op, position in poisoned,
                                          position in nested, codes))
        digest = xxhash.xxh3_128(bytes(prev) + entry).digest()
        txn.put(KEY_APPLIED, _U64.pack(index), db=db)
        txn.put(KEY_DIGEST, digest, db=db)
        txn.put(KEY_RING + struct.pack(">H", index % recent_entry_hashes_max),
                _RING.pack(index, xxhash.xxh3_64_intdigest(entry)), db=db)
        return results, digest, len(ops), codes, version

    def _decode_entry(self, index: int, entry: bytes):
        """``(time_ns, ops, version)``; version 1 for entries written before
        versions were recorded (two items)."""
        try:
            decoded = msgpack.unpackb(entry, raw=False)
            time_ns, ops, version = decoded if len(decoded) == 3 else (*decoded, 1)
            if (not isinstance(time_ns, int) or not isinstance(ops, list) or type(version) is not int
                    or version < 1):
                raise ValueError("bad entry shape")
            return time_ns, ops, version
        except Exception:
            # Every replica holds the same bytes, so every replica skips the
            # same way: the index and digest still advance.
            log.critical("replica %s: entry %d is not a valid batch; applying it as empty",
                         self.node_id, index)
            return 0, [], self._entry_version

    def _apply_op(self, txn, table, time_ns: int, position: int, op, poisoned: bool, nested: bool,
                  codes) -> tuple:
        try:
            client_id, seq, acked_below, code, args = op
            client_id = bytes(client_id)
            if not isinstance(seq, int) or not isinstance(code, int) or not isinstance(acked_below, int):
                raise ValueError
        except (TypeError, ValueError):
            return errno.EINVAL, "malformed operation in entry", None
        if client_id:
            verdict, result = table.lookup(client_id, seq)
            if verdict != sessions_mod.NEW:
                table.touch(client_id, acked_below, time_ns)
                return result
        if poisoned:
            result = (errno.EIO, f"internal error applying operation code {code}", None)
        else:
            result = self._call_machine(txn, time_ns, position, code, args, nested)
        codes[code] = codes.get(code, 0) + 1
        if client_id:
            table.remember(client_id, seq, self._pack_result(result))
            table.touch(client_id, acked_below, time_ns)
        return result

    def _call_machine(self, txn, time_ns: int, position: int, code: int, args, nested: bool) -> tuple:
        """One operation's result from its machine: through ``apply_direct``
        (no nested transaction) unless ``nested``. When that raises
        ``store.Undo`` (it failed after it may have written), the entry is
        re-run with this operation nested: its ``apply`` undoes the failure
        alone and makes it the result."""
        machine, decoded = self._route(code, args)
        if machine is None:
            return decoded   # the refusal: ENOSYS or EINVAL
        try:
            if nested:
                return _result_tuple(machine.apply(txn, time_ns, code, decoded))
            return _result_tuple(self._direct_apply[machine](txn, time_ns, code, decoded))
        except store.Undo:
            log.warning("replica %s: operation code %d failed when applied directly; re-running the "
                        "entry with it nested", self.node_id, code)
            raise _MachineFault(position, undo=True) from None
        except Exception as e:
            log.critical("replica %s: state machine raised applying code %d (a bug); the operation "
                         "fails with EIO and the entry is re-run without it", self.node_id, code,
                         exc_info=True)
            raise _MachineFault(position) from e

    def _pack_result(self, result) -> bytes:
        # One Packer reused on the tick thread (apply's only thread): same
        # bytes as model.pack, without building a Packer per operation.
        try:
            return self._result_packer.pack(list(result))
        except Exception:
            log.critical("replica %s: result %r is not msgpack-encodable", self.node_id, result)
            return model.pack([errno.EIO, "result not encodable", None])

    def _check_replayed(self, txn, index: int, entry: bytes) -> None:
        raw = txn.get(KEY_RING + struct.pack(">H", index % recent_entry_hashes_max), db=self._db)
        if raw is None:
            return
        recorded_index, recorded_hash = _RING.unpack(raw)
        if recorded_index == index and recorded_hash != xxhash.xxh3_64_intdigest(entry):
            self._m.divergence.labels(self._label).inc()
            log.critical("replica %s: DIVERGENCE: the log holds a different entry at index %d than "
                         "the one applied", self.node_id, index)

    # -- snapshots (tick thread, plus one writer thread) ---------------------

    def _serialize(self, tmp_path: str, data) -> None:
        """pysyncobj serializer hook: start writing a dump of the state as of
        now (pysyncobj's raftLastApplied) and return at once. ``tmp_path`` is
        deliberately not created (see module docstring)."""
        last_entry, prev_entry, cluster = data
        txn = self._env.begin(write=False)
        try:
            raw = txn.get(KEY_APPLIED, db=self._db)
            header = {
                "last": [bytes(last_entry[0]), last_entry[1], last_entry[2]],
                "prev": [bytes(prev_entry[0]), prev_entry[1], prev_entry[2]],
                "cluster": sorted(getattr(n, "address", str(n)) for n in cluster),
                "applied": _U64.unpack(raw)[0] if raw else 0,
                "digest": bytes(txn.get(KEY_DIGEST, db=self._db) or DIGEST_ZERO),
                "version": self._stored_version(txn),
            }
        except BaseException:
            txn.abort()
            raise
        job = _SnapshotJob()
        job.generation = self.snapshot_generation
        job.thread = threading.Thread(target=self._write_snapshot, args=(job, txn, header),
                                      name=f"replica-{self.node_id}-snapshot", daemon=True)
        self._snapshot = job
        job.thread.start()

    def _write_snapshot(self, job: _SnapshotJob, txn, header: dict) -> None:
        partial = self._dump_path + ".partial"
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                self._env.copyfd(fd, compact=True, txn=txn)
                os.lseek(fd, 0, os.SEEK_END)
                head = msgpack.packb(header, use_bin_type=True)
                os.write(fd, head + _SNAP_TRAILER.pack(len(head), _SNAP_MAGIC))
                os.fsync(fd)
            finally:
                os.close(fd)
                txn.abort()
            # LMDB must hold at least the dumped state durably before
            # pysyncobj drops the journal entries it replaces.
            self._env.sync(True)
            if job.generation != self.snapshot_generation:
                # The leader's snapshot was installed meanwhile and is the
                # dump pysyncobj's journal now starts from: keep it.
                os.unlink(partial)
                log.info("replica %s: own snapshot superseded by an installed one", self.node_id)
                job.state = SERIALIZER_STATE.FAILED
                return
            replace_durably(partial, self._dump_path)
            log.info("replica %s: snapshot at applied index %d written", self.node_id, header["applied"])
            job.state = SERIALIZER_STATE.SUCCESS
        except Exception:
            log.exception("replica %s: snapshot failed", self.node_id)
            job.state = SERIALIZER_STATE.FAILED

    def _check_serializing(self):
        """pysyncobj serializeChecker hook (tick thread)."""
        job = self._snapshot
        if job is None:
            return SERIALIZER_STATE.NOT_SERIALIZING
        if job.state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
            self._snapshot = None
        return job.state

    def _deserialize(self, path: str):
        """pysyncobj deserializer hook (tick thread): make LMDB hold at least
        the dump's state; return what pysyncobj serialized with it."""
        startup, self._startup_dump = self._startup_dump, False
        header = read_snapshot_header(path)
        if header.get("version", 1) > model.STATE_MACHINE_VERSION:
            # pysyncobj swallows what a deserializer raises: the tick loop
            # stops on the reason recorded here.
            self.failed = _newer_message(
                f"the snapshot at applied index {header['applied']} was written by", header["version"])
            raise NewerStateMachine(self.failed)
        local_index, local_digest = self._applied
        if startup and local_index >= header["applied"]:
            if local_index == header["applied"] and local_digest != header["digest"]:
                self._m.divergence.labels(self._label).inc()
                log.critical("replica %s: DIVERGENCE: local state and own snapshot differ at index %d",
                             self.node_id, local_index)
            log.info("replica %s: keeping local state at %d (snapshot at %d)", self.node_id,
                     local_index, header["applied"])
        else:
            self._import_snapshot(path, header)
        last, prev = header["last"], header["prev"]
        return (bytes(last[0]), last[1], last[2]), (bytes(prev[0]), prev[1], prev[2]), set(header["cluster"])

    def _import_snapshot(self, path: str, header: dict) -> None:
        import lmdb  # the store's own dependency; only needed to open the dump

        self._drop_prepared()
        started = time.monotonic()
        src = lmdb.open(path, subdir=False, readonly=True, lock=False, max_dbs=64)
        try:
            with src.begin() as stxn:
                names = [bytes(k) for k in stxn.cursor().iternext(keys=True, values=False)]
            with self._env.begin() as rtxn:
                live = [bytes(k) for k in rtxn.cursor().iternext(keys=True, values=False)]
            # Open every handle before the write transaction: the store opens
            # an unknown database in a transaction of its own.
            handles = {name: self.store.db(name) for name in set(names) | set(live)}
            with src.begin() as stxn, self._env.begin(write=True) as wtxn:
                for name in live:
                    wtxn.drop(handles[name], delete=False)
                for name in names:
                    sdb = src.open_db(name, txn=stxn, create=False)
                    ddb = handles[name]
                    dup = bool(ddb.flags(wtxn).get("dupsort"))
                    wtxn.cursor(ddb).putmulti(stxn.cursor(sdb).iternext(), dupdata=dup, append=not dup)
                raw = wtxn.get(KEY_APPLIED, db=self._db)
                digest = bytes(wtxn.get(KEY_DIGEST, db=self._db) or DIGEST_ZERO)
                self._state_version = self._stored_version(wtxn)
        finally:
            src.close()
        self._applied = (_U64.unpack(raw)[0] if raw else 0, digest)
        self.snapshot_generation += 1
        # The import held the tick thread; the leader's heartbeats are queued,
        # not missing. Without this the next tick would see its election
        # deadline passed and depose a healthy leader.
        if self._node is not None:
            self._node._SyncObj__raftElectionDeadline = _raft_monotonic() + self.conf.election_timeout_max_s
        self._m.applied_index.labels(self._label).set(self._applied[0])
        log.warning("replica %s: installed snapshot at applied index %d in %.2fs", self.node_id,
                    self._applied[0], time.monotonic() - started)


class NewerStateMachine(Exception):
    """An entry or snapshot needs a newer state machine than this code's."""


def _newer_message(what: str, version: int) -> str:
    return (f"{what} state-machine version {version}, and this cistern applies versions up to "
            f"{model.STATE_MACHINE_VERSION}: run a cistern at least as new as the group's newest member")


_ENTRY_VERSION = msgpack.packb(model.STATE_MACHINE_VERSION)   # the last item of every entry built here


class _MachineFault(Exception):
    """The entry must be re-run: operation ``position`` raised (a bug: it
    fails with EIO), or, with ``undo``, must be applied nested."""

    def __init__(self, position: int, undo: bool = False):
        super().__init__(position)
        self.position = position
        self.undo = undo


def read_snapshot_header(path: str) -> dict:
    """The trailer of a dump written by ``Replica._write_snapshot``."""
    with open(path, "rb") as f:
        f.seek(-_SNAP_TRAILER.size, os.SEEK_END)
        length, magic = _SNAP_TRAILER.unpack(f.read(_SNAP_TRAILER.size))
        if magic != _SNAP_MAGIC:
            raise ValueError(f"{path} is not a Cistern snapshot")
        f.seek(-_SNAP_TRAILER.size - length, os.SEEK_END)
        return msgpack.unpackb(f.read(length), raw=False)


# -- the benchmark baseline ------------------------------------------------------

class _BaselineDict(SyncObj):
    """Bare pysyncobj: one replicated dict update per call, nothing of ours."""

    def __init__(self, self_address, other_addresses, conf):
        super().__init__(self_address, other_addresses, conf)
        self.data = {}

    @replicated
    def set(self, key, value):
        self.data[key] = value
        return len(self.data)


def baseline_dict_node(self_address: str, other_addresses: list[str], **conf_kwargs):
    """A bare pysyncobj node (its default configuration unless overridden)
    with ``set(key, value, callback=...)`` replicated: the baseline that
    ``bench/raft_bench.py`` measures the replica against. Lives here because
    this module is the only pysyncobj importer. Returns the SyncObj; call
    ``destroy()`` when done."""
    return _BaselineDict(self_address, other_addresses, SyncObjConf(**conf_kwargs))
