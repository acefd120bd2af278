"""The framework SDK: submit tasks with their input, get status callbacks;
offers, locality, acknowledgements, failover and reconciliation are done
for the author.

    from cistern.scheduler.framework import Framework

    with Framework("cluster.json", "wordcount", on_update=print) as fw:
        tasks = [fw.submit(f"wc-{i}", ["sh", "-c", 'wc -w < "$CISTERN_INPUT" > "$CISTERN_OUTPUT/n"'],
                           input_path="/logs/big.txt", block_index=i, output_dir="/out")
                 for i in range(len(fw.client.block_locations("/logs/big.txt")))]
        fw.wait(600)
        print([(t.name, t.state, t.node_id, t.local) for t in tasks])

Contract
    Placement: each task prefers the nodes holding its input blocks (from
    ``client.block_locations``) and is placed by ``locality.place``: on a
    node holding its input when one offers room within ``locality_wait_s``
    (a wait that restarts whenever a local task of ours on one of those
    nodes is launched or changes state: they are working through our local
    work), on any node after that, at once when no live agent holds its
    input.
    Unused offers are declined with a filter no longer than the next
    waiting task's wait; with nothing pending the framework suppresses
    offers, and a submit revives them.
    Delivery: every status update that carries a uuid is acknowledged
    (duplicates too: the master resends until acknowledged); a non-terminal
    one ``ack_delay_s`` late, and not at all when a newer update of the
    same attempt comes first (the master needs only its latest acknowledged). ``on_update``
    is called once per new state of each attempt, on the framework's own
    thread: keep it short and do not block in it.
    Failover: the framework id survives reconnects. When the stream breaks
    (the metadata leader moved, or died) the SDK reconnects to the new
    leader, subscribes with the same id and asks for the state of every
    task it believes is not finished (explicit reconciliation).
    Task ids: each attempt has a fresh, unique id; an attempt is launched at
    most once. A task whose attempt ends TASK_LOST (its agent died, or the
    master answers a reconciliation with "unknown task": it never committed
    the launch) or is refused at launch (TASK_ERROR "invalid launch", e.g.
    its offer was rescinded) is run again as a new attempt, at most
    ``attempts_max`` attempts in all. The master commits a launch before
    it acts on it and answers reconciliation from its replicated state, so
    a LOST attempt is never still running unknown to it: no task runs twice
    knowingly (a LOST attempt's agent, if it comes back, is told to kill it).
    Durability: the task table lives in this process. If it dies, the
    master keeps its tasks for ``failover_timeout_s``; a new ``Framework``
    given the same ``framework_id`` takes them over (``reconcile()`` tells
    it their states), after that they are killed.
    Threads: ``submit``, ``kill``, ``wait`` and ``close`` are thread-safe.
    Errors: a refused subscription (unknown framework id, bad name) makes
    ``wait_subscribed`` and ``wait`` raise ``CisternError`` with the
    master's message; bad arguments to ``submit`` raise ValueError, a bad
    input path OSError (as the client raises it).
"""

from __future__ import annotations

import collections
import errno
import logging
import queue
import re
import threading
import time
import uuid
from typing import Callable

from cistern.core.errors import CisternError
from cistern.scheduler import limits, locality
from cistern.scheduler.client import MasterConnection, master_status
from cistern.scheduler.proto import scheduler_pb2 as pb

__all__ = ["Framework", "Task", "PENDING", "LAUNCHING", "TERMINAL_STATES",
           "cpus_default", "mem_bytes_default", "attempts_max_default"]

log = logging.getLogger(__name__)

cpus_default = 0.5
mem_bytes_default = 256 << 20
attempts_max_default = 3            # one run and two re-runs after TASK_LOST
failover_timeout_default_s = 60.0   # the master kills our tasks after we are gone this long
loop_tick_s = 0.05                  # the framework thread's longest sleep between duties
ack_delay_s = 1.0                   # a running task's update is acknowledged this late (see AckSchedule)
assert ack_delay_s < limits.update_resend_interval_s
live_refresh_interval_s = 1.0       # how often the live agents are asked for while tasks wait
reconcile_quiet_s = 10.0            # a launched attempt not heard of this long is reconciled explicitly
offer_refusals_max = 20             # launches refused for their offer (a race with a rescind) before giving up
kill_retry_s = 0.2                  # a kill the master could not do yet (launch being committed): again after
heartbeats_missed_max = 3           # no event for this many master heartbeats: the stream is dead, reconnect
locations_ttl_s = 5.0               # block_locations answers reused for submits within this long
update_log_max = 100_000            # entries kept in Framework.update_log (oldest dropped)
task_name_length_max = 64           # of the name part of a generated task id
close_flush_s = 2.0                 # close(): how long the last calls (teardown) may take to go out

PENDING = "PENDING"                 # waiting for an offer (framework side, never on the wire)
LAUNCHING = "LAUNCHING"             # accepted; no update heard yet
TERMINAL_STATES = frozenset({"TASK_FINISHED", "TASK_FAILED", "TASK_KILLED", "TASK_LOST", "TASK_ERROR"})
_RERUN_STATES = frozenset({"TASK_LOST"})
_TERMINAL_PB = frozenset(pb.TaskState.Value(name) for name in TERMINAL_STATES)
_INVALID_LAUNCH = "invalid launch"  # TASK_ERROR reason for a launch the master refused (e.g. a rescinded offer)


class Task:
    """A submitted task, the same object across re-runs. Read its fields;
    they change on the framework's thread. ``task_id`` is the current
    attempt's id, ``attempts`` every id used so far."""

    def __init__(self, name: str, argv: list, inputs: list, preferred: frozenset, resources: locality.Resources,
                 output_dir: str, env: dict, network: bool):
        self.name = name
        self.argv = list(argv)
        self.inputs = inputs              # [{"block_id", "path", "offset", "length", "nodes"}]
        self.preferred = preferred
        self.resources = resources
        self.output_dir = output_dir
        self.env = dict(env)
        self.network = network
        self.task_id = ""
        self.attempts: list[str] = []
        self.offer_refusals = 0           # attempts refused for their offer (never launched; not counted)
        self.state = PENDING
        self.reason = ""
        self.message = ""
        self.node_id = ""
        self.agent_id = ""
        self.local: bool | None = None    # placed on a node holding its input (None: not placed)
        self.exit_code: int | None = None
        self.stdout_tail = b""
        self.stderr_tail = b""
        self.bytes_local = 0
        self.bytes_remote = 0
        self.started_at = 0.0             # agent's wall clock (epoch s)
        self.finished_at = 0.0
        self.submitted_mono = time.monotonic()
        self.queued_mono = self.submitted_mono    # last (re)queued: the delay-scheduling clock
        self.running_mono: float | None = None    # first RUNNING heard (launch latency = this - submitted)
        self.final = False
        self.history: list[tuple] = []    # (task_id, state, reason, monotonic time)
        self._done = threading.Event()
        self._heard_mono = 0.0

    @property
    def input_bytes(self) -> int:
        return sum(int(i["length"]) for i in self.inputs)

    @property
    def duration_s(self) -> float | None:
        if self.started_at and self.finished_at:
            return max(0.0, self.finished_at - self.started_at)
        return None

    def done(self) -> bool:
        """True once the task reached its final state (no re-run will follow)."""
        return self._done.is_set()

    def wait(self, timeout_s: float | None = None) -> bool:
        return self._done.wait(timeout_s)

    def __repr__(self) -> str:
        return f"<Task {self.name} {self.task_id or '-'} {self.state} on {self.node_id or '-'}>"


class AckSchedule:
    """When to acknowledge status updates. Pure (the caller gives the time).

    A terminal update is acknowledged at once; a non-terminal one
    ``delay_s`` later, and not at all when a newer update of the same
    attempt comes first: the master needs only the ack of a task's latest
    update (an ack of an older one is ignored), and each ack is a Raft
    commit, so a short task's RUNNING, superseded by its end, costs
    nothing. ``delay_s`` must stay below the master's resend interval
    (``update_resend_interval_s``), or delayed updates are resent."""

    def __init__(self, delay_s: float):
        self.delay_s = delay_s
        self._later: dict = {}           # attempt id -> (uuid, when)

    def on_update(self, task_id: str, uuid: bytes, terminal: bool, now: float) -> bytes | None:
        """An update came: the uuid to acknowledge now, or None (later, or never)."""
        if terminal or self.delay_s <= 0:
            self._later.pop(task_id, None)
            return uuid
        self._later[task_id] = (uuid, now + self.delay_s)
        return None

    def due(self, now: float) -> list:
        """[(attempt id, uuid), ...] to acknowledge now (each once)."""
        out = [(task_id, uuid) for task_id, (uuid, at) in self._later.items() if at <= now]
        for task_id, _ in out:
            del self._later[task_id]
        return out


class Framework:
    """A Mesos-style framework over one FrameworkStream (see the module
    docstring for the contract). Starts connecting at once; ``close()`` (or
    ``with``) ends it."""

    def __init__(self, cluster, name: str, *, failover_timeout_s: float = failover_timeout_default_s,
                 locality_wait_s: float = locality.locality_wait_default_s,
                 on_update: Callable | None = None, framework_id: str = "",
                 attempts_max: int = attempts_max_default, client=None):
        """``cluster``: a cluster.json path or metadata addresses (None:
        $CISTERN_CLUSTER). ``framework_id``: resume that framework (after
        this program restarted within its failover timeout); empty = a new
        one. ``client``: a ``cistern.client.Client`` to use instead of a new
        one (the framework then does not close it). ``on_update(task,
        status)``: called with the ``Task`` handle (already updated) and the
        ``TaskStatus`` message for every new state of its current attempt,
        and for an attempt that ends and will be run again."""
        if not name or not isinstance(name, str):
            raise ValueError("a framework needs a name")
        if locality_wait_s < 0 or failover_timeout_s < 0 or attempts_max < 1:
            raise ValueError("locality_wait_s and failover_timeout_s must be >= 0, attempts_max >= 1")
        self.name = name
        self.failover_timeout_s = float(failover_timeout_s)
        self.locality_wait_s = float(locality_wait_s)
        self.attempts_max = int(attempts_max)
        self.framework_id = framework_id
        self._on_update = on_update
        self._owns_client = client is None
        if client is None:
            from cistern.client import connect

            client = connect(cluster)
        self.client = client
        self._addresses = list(client.meta.addresses)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._tasks: list[Task] = []
        self._by_attempt: dict[str, Task] = {}
        self._pending: dict[str, Task] = {}          # attempt id -> task waiting for an offer
        self._launched_on: dict[str, list] = {}      # offer id -> attempts sent with it (until heard of)
        self._kills: set = set()                     # attempt ids we asked to kill (resent after failover)
        self._kill_again: dict = {}                  # attempt id -> when to send its kill again
        self._acks = AckSchedule(ack_delay_s)
        self._locations: dict = {}                   # path -> (monotonic time, block_locations)
        self._live: set | None = None                # None until the master first told us
        self._live_fetched = 0.0
        self._live_fetching = False
        self._lost_agents: set = set()               # nodes whose agent we saw lost, until they offer again
        self._offered_from: dict = {}                # node id -> last offer time
        self._local_progress: dict = {}              # node id -> when a local task of ours there last moved on
        self._subscribed = threading.Event()
        self._suppressed = False
        self._fatal: CisternError | None = None
        self._closing = False
        self._close_called = False
        # Every update the master delivered, stale and duplicate ones too:
        # (attempt id, state name, reason, node id, uuid) -- an empty uuid marks
        # a reconciliation answer or a refused launch -- for tests and post-mortems.
        self.update_log: collections.deque = collections.deque(maxlen=update_log_max)
        self._stats = {"offers": 0, "accepts": 0, "declines": 0, "launched": 0, "reruns": 0,
                       "subscriptions": 0, "updates": 0, "acks": 0, "errors": 0}
        self._thread = threading.Thread(target=self._run, name=f"framework-{name}", daemon=True)
        self._thread.start()
        # The connection's callbacks only hand what comes to the framework thread, in order.
        self._connection = MasterConnection(
            self._addresses, lambda stub, requests: stub.FrameworkStream(requests),
            on_connect=self._subscribe_calls, on_message=lambda event: self._inbox.put(("event", event)),
            on_disconnect=lambda error: self._inbox.put(("closed", error)),
            stall_timeout_s=heartbeats_missed_max * limits.framework_heartbeat_interval_s,
            name=f"framework-{name}")

    # -- the author's face -----------------------------------------------------------

    def submit(self, name: str, argv, *, input_path=None, block_index: int | None = None, inputs=None,
               resources=None, cpus: float | None = None, mem_bytes: int | None = None, disk_bytes: int = 0,
               output_dir: str | None = None, env: dict | None = None, network: bool = False) -> Task:
        """Queue a task; returns its handle at once (it launches when an
        offer fits). Input: ``input_path`` (every block of that Cistern
        file, or only block ``block_index``), or ``inputs``, a list of
        ``{"block_id", "path", "offset", "length", "nodes"}`` (as
        ``block_locations`` gives, plus "path"), or none. Resources:
        ``resources`` (``locality.Resources``) or ``cpus``/``mem_bytes``
        (defaults 0.5 and 256 MiB). Raises ValueError (bad argv, resources,
        block index), OSError (no such input path), CisternError if the
        framework failed or is closed."""
        argv = _check_argv(argv)
        need = _resources(resources, cpus, mem_bytes, disk_bytes)
        if input_path is not None and inputs is not None:
            raise ValueError("give input_path or inputs, not both")
        if input_path is not None:
            inputs = self._inputs_of(input_path, block_index)
        elif block_index is not None:
            raise ValueError("block_index needs input_path")
        inputs = [_check_input(i) for i in (inputs or [])]
        task = Task(str(name), argv, inputs, _preferred(inputs), need, output_dir or "", env or {}, bool(network))
        self._raise_if_failed()
        if self._close_called:
            raise CisternError(errno.ESHUTDOWN, f"framework {self.name} is closed")
        with self._lock:
            self._tasks.append(task)
        self._inbox.put(("submit", task))
        return task

    def kill(self, task: Task) -> None:
        """Kill a task: a pending one never launches, a launched one is
        killed by its agent (TASK_KILLED, reason "killed by framework")."""
        self._inbox.put(("kill", task))

    def reconcile(self, task_ids=None) -> None:
        """Ask the master for the state of the attempts ``task_ids``
        (explicit reconciliation; e.g. ``[t.task_id for t in tasks]``), or of
        every task of ours it still holds (implicit) when None. The answers
        come as updates with no uuid: they change a task that is not final,
        and are all in ``update_log``."""
        self._inbox.put(("reconcile", None if task_ids is None else list(task_ids)))

    def tasks(self) -> list[Task]:
        with self._lock:
            return list(self._tasks)

    def wait(self, timeout_s: float | None = None) -> bool:
        """Block until every submitted task is final; True if they all are,
        False on timeout. Raises CisternError when the framework failed
        (e.g. its subscription was refused)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._changed:
            while True:
                if self._fatal is not None:
                    raise self._fatal
                if all(t.final for t in self._tasks):
                    return True
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(0.5 if left is None else min(0.5, left))

    def wait_subscribed(self, timeout_s: float = 30.0) -> str:
        """Block until the master accepted our subscription; the framework
        id. Raises CisternError when refused, TimeoutError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while not self._subscribed.wait(0.1):
            self._raise_if_failed()
            if time.monotonic() > deadline:
                raise TimeoutError(f"framework {self.name}: no subscription within {timeout_s:.0f}s")
        self._raise_if_failed()
        return self.framework_id

    def statistics(self) -> dict:
        """Counters: offers seen, accepts, declines, launched attempts,
        re-runs, subscriptions, updates, acks, errors; and tasks by state."""
        with self._lock:
            out = dict(self._stats)
            by_state: dict = {}
            for t in self._tasks:
                by_state[t.state] = by_state.get(t.state, 0) + 1
        out["tasks_by_state"] = by_state
        return out

    def close(self, *, teardown: bool = True, timeout_s: float = 10.0) -> None:
        """Stop. ``teardown`` (default): tell the master to kill every task
        of ours still running and forget the framework; otherwise just
        disconnect (the tasks keep running for the failover timeout, and a
        new Framework with our ``framework_id`` can take them over)."""
        if self._close_called:
            return
        self._close_called = True
        self._inbox.put(("close", teardown))
        self._thread.join(timeout_s)
        _close_quietly(self._connection)
        if self._owns_client:
            _close_quietly(self.client)

    def __enter__(self) -> "Framework":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- inputs ----------------------------------------------------------------------

    def _inputs_of(self, path, block_index: int | None) -> list:
        now = time.monotonic()
        cached = self._locations.get(path)
        if cached is None or now - cached[0] > locations_ttl_s:
            cached = self._locations[path] = (now, self.client.block_locations(path))
        blocks = cached[1]
        if block_index is not None:
            if not 0 <= block_index < len(blocks):
                raise ValueError(f"{path} has {len(blocks)} blocks; no block {block_index}")
            blocks = [blocks[block_index]]
        return [dict(b, path=path if isinstance(path, str) else path.decode()) for b in blocks]

    def _raise_if_failed(self) -> None:
        if self._fatal is not None:
            raise self._fatal

    # -- the framework thread: the one owner of the task table ------------------------

    def _run(self) -> None:
        try:
            while True:
                try:
                    item = self._inbox.get(timeout=loop_tick_s)
                except queue.Empty:
                    item = None
                if item is not None and item[0] == "close":
                    self._shutdown(item[1])
                    return
                if item is not None:
                    self._handle(item)
                self._duties(time.monotonic())
                if self._fatal is not None:     # e.g. the subscription was refused: stop asking
                    self._shutdown(False)
                    self._connection.close()
                    return
        except Exception as e:     # a bug: make it visible to wait() instead of hanging it
            log.exception("framework %s: thread died", self.name)
            self._fail(CisternError(errno.EIO, f"framework {self.name}: internal error: {e!r}"))

    def _handle(self, item) -> None:
        kind = item[0]
        if kind == "submit":
            self._queue(item[1])
        elif kind == "kill":
            self._kill(item[1])
        elif kind == "live":
            self._live_fetching = False
            if item[1] is not None:
                self._live = item[1]
        elif kind == "event":
            self._on_event(item[1])
        elif kind == "reconcile":
            self._send(reconcile=pb.Reconcile(task_ids=item[1] or []))
        elif kind == "closed":
            self._on_stream_closed(item[1])

    def _duties(self, now: float) -> None:
        for task_id, uuid in self._acks.due(now):
            self._send_ack(task_id, uuid)
        if self._pending and not self._live_fetching and now - self._live_fetched > live_refresh_interval_s:
            self._refresh_live(now)
        if self._subscribed.is_set():
            self._reconcile_quiet(now)
            for task_id, at in list(self._kill_again.items()):
                if at <= now:
                    del self._kill_again[task_id]
                    if task_id in self._kills:
                        self._send(kill=pb.Kill(task_id=task_id))

    # -- the stream ------------------------------------------------------------------

    def _subscribe_calls(self, address: str) -> list:
        """MasterConnection's on_connect: the first call on every stream
        (with our id once we have one, so a new master knows us again)."""
        return [pb.FrameworkCall(subscribe=pb.Subscribe(framework_id=self.framework_id, name=self.name,
                                                        failover_timeout_s=self.failover_timeout_s))]

    def _on_stream_closed(self, error) -> None:
        log.info("framework %s: stream ended (%s); reconnecting", self.name, error or "closed by the master")
        self._subscribed.clear()
        self._launched_on.clear()     # offers die with the stream; their attempts are reconciled

    def _send(self, **call) -> None:
        """Queue a call on the current stream. Dropped while there is none:
        what matters is sent again after the next subscription (kills,
        reconciliation, the offer wish) or resent by the master (updates
        to acknowledge)."""
        connection = getattr(self, "_connection", None)
        if connection is not None:
            connection.send(pb.FrameworkCall(**call))

    def _on_event(self, event) -> None:
        kind = event.WhichOneof("kind")
        if kind == "subscribed":
            self._on_subscribed(event.subscribed)
        elif kind == "offers":
            self._on_offers(list(event.offers.offers))
        elif kind == "update":
            self._on_update_event(event.update.status)
        elif kind == "error":
            self._on_error(event.error)
        # rescind: offers are used or declined the moment they come, none is held;
        # heartbeat: keeps the stream alive (MasterConnection stall_timeout_s)

    def _on_subscribed(self, subscribed) -> None:
        first = not self.framework_id
        self.framework_id = subscribed.framework_id
        with self._lock:
            self._stats["subscriptions"] += 1
        log.info("framework %s: subscribed as %s", self.name, self.framework_id)
        # After a failover the master's view is the truth: ask it about every attempt
        # we believe is launched and not finished (Mesos's explicit reconciliation).
        unsettled = [t.task_id for t in self._tasks if not t.final and t.state != PENDING]
        if unsettled and not first:
            self._send(reconcile=pb.Reconcile(task_ids=unsettled))
        for task_id in sorted(self._kills):
            self._send(kill=pb.Kill(task_id=task_id))
        # A new master offers to a new subscriber at once; with nothing pending
        # those offers are declined and offers suppressed then (_on_offers), not
        # here: a suppress now would rescind offers already on their way, and a
        # submit racing it would accept rescinded offers.
        self._suppressed = False
        self._subscribed.set()

    def _on_error(self, error) -> None:
        with self._lock:
            self._stats["errors"] += 1
        log.warning("framework %s: master says (%s) %s", self.name, error.call or "?", error.message)
        if error.call == "subscribe":
            self._fail(CisternError(error.errno or errno.EINVAL, f"framework {self.name}: {error.message}"))
            return
        if error.call == "kill" and error.errno == errno.EAGAIN and error.task_id in self._kills:
            self._kill_again[error.task_id] = time.monotonic() + kill_retry_s
            return
        if error.call == "accept":
            # No task id: the offers were refused (used, rescinded, too small) and
            # nothing ran, so the attempt does not count. A task id: that task was
            # refused (a bad spec, or its launch could not be committed): it counts.
            refused = [error.task_id] if error.task_id else \
                [a for offer_id in error.offer_ids for a in self._launched_on.get(offer_id, ())]
            for attempt in refused:
                task = self._by_attempt.get(attempt)
                if task is not None and task.task_id == attempt and task.state == LAUNCHING:
                    self._rerun(task, "TASK_ERROR", _INVALID_LAUNCH, error.message, heard=False,
                                counted=bool(error.task_id))

    # -- offers ----------------------------------------------------------------------

    def _on_offers(self, offers: list) -> None:
        now = time.monotonic()
        with self._lock:
            self._stats["offers"] += len(offers)
        for offer in offers:
            self._offered_from[offer.node_id] = now
            self._lost_agents.discard(offer.node_id)
        pending = [locality.PendingTask(t.task_id, t.preferred, t.queued_mono, t.resources)
                   for t in self._pending.values()]
        views = [locality.OfferView(o.offer_id, o.node_id, o.resources) for o in offers]
        placement = locality.place(pending, views, now_s=now, live_nodes=self._live_nodes(),
                                   locality_wait_s=self.locality_wait_s, local_progress_s=self._local_progress)
        by_id = {o.offer_id: o for o in offers}
        for offer_id, chosen in placement.launch.items():
            self._accept(by_id[offer_id], chosen, placement.refuse_s[offer_id], now)
        declines: dict = {}
        for offer_id, refuse_s in placement.decline.items():
            declines.setdefault(round(refuse_s, 3), []).append(offer_id)
        for refuse_s, offer_ids in declines.items():
            self._send(decline=pb.Decline(offer_ids=offer_ids, refuse_seconds=refuse_s))
        with self._lock:
            self._stats["declines"] += len(placement.decline)
        if not self._pending and not self._suppressed:
            self._suppressed = True
            self._send(suppress=pb.Suppress())

    def _accept(self, offer, chosen: list, refuse_s: float, now: float) -> None:
        specs = []
        for attempt, local in chosen:
            task = self._pending.pop(attempt)
            task.state, task.local = LAUNCHING, local
            if local:
                self._local_progress[offer.node_id] = now
            else:
                log.info("framework %s: %s goes to %s, away from its input on %s (queued %.2fs ago)", self.name,
                         attempt, offer.node_id, ",".join(sorted(task.preferred)) or "-", now - task.queued_mono)
            task.node_id, task.agent_id = offer.node_id, offer.agent_id
            task._heard_mono = now
            task.history.append((attempt, LAUNCHING, "", now))
            specs.append(_spec(task))
        self._launched_on[offer.offer_id] = [s.task_id for s in specs]
        self._send(accept=pb.Accept(offer_ids=[offer.offer_id], tasks=specs, refuse_seconds=refuse_s))
        with self._lock:
            self._stats["accepts"] += 1
            self._stats["launched"] += len(specs)
            self._changed.notify_all()

    def _live_nodes(self) -> set:
        """Nodes with a live agent: the master's registered agents (refreshed
        every ``live_refresh_interval_s`` while tasks wait), less those we
        saw lost since, plus any that offered since."""
        recent = {n for n, at in self._offered_from.items() if at >= self._live_fetched}
        if self._live is None:       # not heard yet: assume every holder lives (a task waits, at most its wait)
            return {n for t in self._pending.values() for n in t.preferred} - self._lost_agents | recent
        return (self._live - self._lost_agents) | recent

    def _refresh_live(self, now: float) -> None:
        self._live_fetched = now
        self._live_fetching = True
        addresses, inbox = self._addresses, self._inbox   # the fetch thread touches nothing else of ours

        def fetch():
            try:
                live = _registered_agent_nodes(addresses)
            except Exception as e:      # an unreachable master: keep what we knew (None: no news)
                log.debug("live agents: %s", e)
                live = None
            inbox.put(("live", live))

        threading.Thread(target=fetch, name="framework-live", daemon=True).start()

    # -- tasks -----------------------------------------------------------------------

    def _queue(self, task: Task) -> None:
        attempt = _attempt_id(task.name)
        task.task_id = attempt
        task.attempts.append(attempt)
        task.state, task.local, task.node_id, task.agent_id = PENDING, None, "", ""
        task.queued_mono = time.monotonic()
        self._by_attempt[attempt] = task
        self._pending[attempt] = task
        if self._suppressed:
            self._suppressed = False
            self._send(revive=pb.Revive())

    def _kill(self, task: Task) -> None:
        if task.final:
            return
        if task.state == PENDING:
            self._pending.pop(task.task_id, None)
            self._finish(task, "TASK_KILLED", "killed by framework", "killed before it was launched")
            return
        self._kills.add(task.task_id)
        self._send(kill=pb.Kill(task_id=task.task_id))

    def _on_update_event(self, status) -> None:
        with self._lock:
            self._stats["updates"] += 1
        if status.uuid:
            self._acknowledge(status)
        self.update_log.append((status.task_id, pb.TaskState.Name(status.state), status.reason, status.node_id,
                                bytes(status.uuid)))
        task = self._by_attempt.get(status.task_id)
        if task is None or task.task_id != status.task_id or task.final:
            return       # an attempt we already gave up on, or not ours: acknowledged, nothing else
        state = pb.TaskState.Name(status.state)
        now = time.monotonic()
        task._heard_mono = now
        for offer_id, attempts in list(self._launched_on.items()):
            if task.task_id in attempts:
                del self._launched_on[offer_id]
        self._record(task, status, state, now)
        if state in TERMINAL_STATES:
            self._kills.discard(task.task_id)
            if status.agent_id and status.reason == "agent lost":
                self._lost_agents.add(task.node_id)
            if state in _RERUN_STATES or (state == "TASK_ERROR" and status.reason == _INVALID_LAUNCH):
                self._rerun(task, state, status.reason, status.message)
            else:
                self._finish(task, state, status.reason, status.message)

    def _acknowledge(self, status) -> None:
        uuid = self._acks.on_update(status.task_id, bytes(status.uuid), status.state in _TERMINAL_PB,
                                    time.monotonic())
        if uuid is not None:
            self._send_ack(status.task_id, uuid)

    def _send_ack(self, task_id: str, uuid: bytes) -> None:
        self._send(acknowledge=pb.Acknowledge(task_id=task_id, uuid=uuid))
        with self._lock:
            self._stats["acks"] += 1

    def _record(self, task: Task, status, state: str, now: float) -> None:
        changed = state != task.state
        task.state, task.reason, task.message = state, status.reason, status.message
        task.agent_id = status.agent_id or task.agent_id
        task.node_id = status.node_id or task.node_id
        if task.node_id and task.local is None:
            task.local = task.node_id in task.preferred
        if state == "TASK_RUNNING" and task.running_mono is None:
            task.running_mono = now
        if status.started_at:
            task.started_at = status.started_at
        if status.finished_at:
            task.finished_at = status.finished_at
        if state in TERMINAL_STATES:
            task.exit_code = status.exit_code
            task.stdout_tail, task.stderr_tail = status.stdout_tail, status.stderr_tail
            task.bytes_local, task.bytes_remote = status.bytes_local, status.bytes_remote
        if changed:
            if task.local and task.node_id:
                self._local_progress[task.node_id] = now    # the holder is working through our local tasks
            task.history.append((task.task_id, state, status.reason, now))
            self._callback(task, status)
        with self._lock:
            self._changed.notify_all()

    def _rerun(self, task: Task, state: str, reason: str, message: str, *, heard: bool = True,
               counted: bool = True) -> None:
        """The attempt ended without running to an end (``state``): run the
        task again as a new attempt, or give up after ``attempts_max``
        counted attempts (or ``offer_refusals_max`` uncounted ones: refused
        offers). ``heard``: the master's update was already recorded (and
        called back); otherwise this records the end and calls back itself."""
        if not heard:
            task.state, task.reason, task.message = state, reason, message
            task.history.append((task.task_id, state, reason, time.monotonic()))
            self._callback(task, pb.TaskStatus(task_id=task.task_id, state=pb.TaskState.Value(state),
                                               reason=reason, message=message, node_id=task.node_id))
        if not counted:
            task.offer_refusals += 1
        if len(task.attempts) - task.offer_refusals >= self.attempts_max or task.offer_refusals > offer_refusals_max:
            self._finish(task, state, reason, f"{message} (gave up after {len(task.attempts)} attempts)")
            return
        log.info("framework %s: %s %s (%s); running it again", self.name, task.task_id, state, reason)
        with self._lock:
            self._stats["reruns"] += 1
        self._queue(task)

    def _finish(self, task: Task, state: str, reason: str, message: str) -> None:
        task.state, task.reason, task.message = state, reason, message
        task.final = True
        task._done.set()
        with self._lock:
            self._changed.notify_all()

    def _callback(self, task: Task, status) -> None:
        if self._on_update is None:
            return
        try:
            self._on_update(task, status)
        except Exception:
            log.exception("framework %s: on_update raised", self.name)

    def _reconcile_quiet(self, now: float) -> None:
        """Ask about attempts not heard of for a while (a launch whose answer
        was lost, a task the master forgot)."""
        quiet = []
        for task in self._tasks:
            if task.final or task.state == PENDING:
                continue
            if now - task._heard_mono >= reconcile_quiet_s:
                task._heard_mono = now
                quiet.append(task.task_id)
        if quiet:
            self._send(reconcile=pb.Reconcile(task_ids=quiet))

    # -- ending ------------------------------------------------------------------------

    def _fail(self, error: CisternError) -> None:
        with self._lock:
            self._fatal = error
            self._changed.notify_all()

    def _shutdown(self, teardown: bool) -> None:
        """Teardown goes out on the stream; the master ends the stream when
        it has done it (we give it ``close_flush_s``)."""
        self._closing = True
        if teardown and self.framework_id and self._subscribed.is_set():
            self._send(teardown=pb.Teardown())
            deadline = time.monotonic() + close_flush_s
            while time.monotonic() < deadline:
                try:
                    item = self._inbox.get(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if item[0] == "closed":
                    break
        with self._lock:
            self._changed.notify_all()


# -- helpers: pure, or one call into the master connection -----------------------------


def _registered_agent_nodes(addresses) -> set:
    """Node ids of the agents the master counts as registered (alive)."""
    status = master_status(addresses, timeout_s=live_refresh_interval_s * 2)
    return {a.node_id for a in status.agents if a.state == "registered"}


_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _attempt_id(name: str) -> str:
    """A fresh task id: the task's name made safe, and 16 random hex digits."""
    safe = _NAME_UNSAFE.sub("_", name)[:task_name_length_max] or "task"
    return f"{safe}-{uuid.uuid4().hex[:16]}"


def _check_argv(argv) -> list:
    if isinstance(argv, (str, bytes)) or not argv:
        raise ValueError("argv must be a non-empty list of strings (the command and its arguments)")
    out = [str(a) for a in argv]
    if not out[0]:
        raise ValueError("argv[0] (the command) is empty")
    return out


def _resources(resources, cpus, mem_bytes, disk_bytes) -> locality.Resources:
    if resources is not None:
        need = locality.Resources(float(resources.cpus), int(resources.mem_bytes), int(resources.disk_bytes))
    else:
        need = locality.Resources(cpus_default if cpus is None else float(cpus),
                                  mem_bytes_default if mem_bytes is None else int(mem_bytes), int(disk_bytes))
    if not need.cpus > 0 or need.mem_bytes <= 0 or need.disk_bytes < 0:
        raise ValueError(f"a task needs cpus > 0 and mem_bytes > 0 (got {need.cpus} cpus, {need.mem_bytes} bytes)")
    return need


def _check_input(item: dict) -> dict:
    missing = {"block_id", "path", "offset", "length"} - set(item)
    if missing:
        raise ValueError(f"an input needs {', '.join(sorted(missing))}")
    return {"block_id": bytes(item["block_id"]), "path": str(item["path"]), "offset": int(item["offset"]),
            "length": int(item["length"]), "nodes": list(item.get("nodes", ()))}


def _preferred(inputs: list) -> frozenset:
    """The nodes holding the most of the task's input bytes."""
    held: dict = {}
    for item in inputs:
        for node in item["nodes"]:
            held[node] = held.get(node, 0) + item["length"]
    if not held:
        return frozenset()
    most = max(held.values())
    return frozenset(n for n, b in held.items() if b == most)


def _spec(task: Task) -> pb.TaskSpec:
    r = task.resources
    return pb.TaskSpec(
        task_id=task.task_id, name=task.name, argv=task.argv, env=task.env,
        resources=pb.Resources(cpus=r.cpus, mem_bytes=r.mem_bytes, disk_bytes=r.disk_bytes),
        inputs=[pb.InputBlock(block_id=i["block_id"], path=i["path"], file_offset=i["offset"], length=i["length"])
                for i in task.inputs],
        network=task.network, output_dir=task.output_dir)


def _close_quietly(thing) -> None:
    try:
        thing.close()
    except Exception:
        log.debug("close failed", exc_info=True)
