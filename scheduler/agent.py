"""The task agent beside blockd on every storage node: registers the node's
resources with the master, runs the tasks it is sent in isolation
(``isolation.py``), reports their status until acknowledged, and finds its
tasks again after a restart.

``Agent(node_id, address, data_dir, meta_addresses, store=..., registry=...)``;
``start()`` recovers checkpointed tasks and connects; ``stop()`` kills the
running tasks (a planned stop leaves nothing behind), waits briefly for
their last updates to be acknowledged, and disconnects. ``cli/node.py``
composes it with the ``NodeServer`` (whose block store it reads).

Task lifecycle on the agent (the master already committed STAGING):
``launch`` -> STARTING, only for a task with inputs (inputs staged: a
block this node holds is bound
read-only straight from the block store and counts as ``bytes_local``;
any other is read through ``cistern.client`` into the agent's fetch area
and counts as ``bytes_remote``) -> the shim starts it -> RUNNING once the
command was exec'd -> it ends -> for exit 0 with an ``output_dir``, the
sandbox's ``out/`` files are stored under ``<output_dir>/<task_id>/`` (only
then FINISHED; a store that fails makes it FAILED, "output not stored") ->
one terminal update (FINISHED, FAILED, KILLED) with exit code, output
tails and input byte counts -> the sandbox and cgroup are removed.

Delivery: every update carries a fresh uuid and stays in the task's
checkpoint at least until the master acks that uuid (an acknowledged
non-terminal update may stay on disk until the task's next change: a
restart then sends it again, which the master acks as a no-op); unacknowledged updates are
sent again, in order: all of them on every (re)registration, and each one
that went unacknowledged for ``update_retry_interval_s``. A task's record is forgotten once its terminal
update is acknowledged.

Checkpoints: ``<data_dir>/agent/checkpoints/<hex of task_id>.json`` (written to a
temporary file, fdatasynced, renamed) when a task arrives, starts or
changes state, and when a kill is asked (not when an update is acked,
nor after a terminal task's cleanup). On start,
each checkpointed task is: re-attached when still running (the shim kept
it alive without us), finished now when it ended meanwhile, reported FAILED
("agent restarted") when the agent died before starting it; leftovers of
tasks with no checkpoint are killed and removed (``isolation.sweep``). The
registration lists every known task's latest status; the master answers
with kills for the ones it gave up on.

Kill: ``kill`` from the master kills every process of the task and reports
KILLED with the master's reason; a kill for a task this agent does not have
is answered KILLED ("not on this agent") so the master can settle it.

Threads: the master connection's thread (commands are handled in a few
microseconds: real work goes to threads), one thread per task (start,
watch, finish), and a ticker (heartbeats and resends). ``_lock`` guards the
task book and the checkpoints.

Logging: exactly one INFO line per task start contains the task id and the
word "launch" (tests count launches in node logs); no other line does.
"""

from __future__ import annotations

import base64
import collections
import dataclasses
import errno
import functools
import json
import logging
import os
import shutil
import threading
import time

from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from cistern.core.errors import CisternError
from cistern.scheduler import isolation, limits
from cistern.scheduler.proto import scheduler_pb2 as pb

log = logging.getLogger(__name__)

TaskState = pb.TaskState
TERMINAL = frozenset({pb.TASK_FINISHED, pb.TASK_FAILED, pb.TASK_KILLED, pb.TASK_LOST, pb.TASK_ERROR})

# -- limits and defaults of the agent -------------------------------------------------
mem_fraction_default = 0.8             # of the machine's RAM offered to tasks
update_retry_interval_s = 2.0          # unacknowledged updates are sent again this often
heartbeat_interval_default_s = limits.agent_heartbeat_interval_s   # until the master says otherwise
ticker_interval_s = 0.1
watch_interval_s = 0.25                # a task thread looks whether the agent stopped this often
stop_drain_timeout_s = 3.0             # a stopping agent waits this long for its last acks
task_thread_join_s = 15.0
output_bytes_max_default = 1 << 30     # stored per task when its spec names no limit
copy_chunk_bytes = 1 << 20
fetch_timeout_s = 60.0                 # the cistern client's per-call timeout for inputs and outputs
launch_latency_buckets_s = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

assert update_retry_interval_s > ticker_interval_s


# -- the task book: pure bookkeeping of tasks and their unacknowledged updates ----------

@dataclasses.dataclass
class TaskRecord:
    """What the agent remembers of one task (checkpointed as JSON)."""
    task_id: str
    framework_id: str
    spec: pb.TaskSpec
    state: int = pb.TASK_STAGING
    status: pb.TaskStatus | None = None          # the latest update made
    pending: list = dataclasses.field(default_factory=list)   # unacknowledged updates, oldest first
    handle: dict | None = None                   # isolation.TaskHandle.checkpoint() once started
    kill_reason: str = ""
    bytes_local: int = 0
    bytes_remote: int = 0
    received_s: float = 0.0                      # monotonic, this process only (launch latency)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL

    def to_json(self) -> dict:
        return {"task_id": self.task_id, "framework_id": self.framework_id, "spec": _b64(self.spec),
                "state": self.state, "status": _b64(self.status) if self.status else None,
                "pending": [_b64(s) for s in self.pending], "handle": self.handle,
                "kill_reason": self.kill_reason, "bytes_local": self.bytes_local,
                "bytes_remote": self.bytes_remote}

    @classmethod
    def from_json(cls, doc: dict) -> "TaskRecord":
        return cls(doc["task_id"], doc["framework_id"], _unb64(pb.TaskSpec, doc["spec"]), int(doc["state"]),
                   _unb64(pb.TaskStatus, doc["status"]) if doc.get("status") else None,
                   [_unb64(pb.TaskStatus, s) for s in doc.get("pending", [])], doc.get("handle"),
                   doc.get("kill_reason", ""), int(doc.get("bytes_local", 0)), int(doc.get("bytes_remote", 0)))


class TaskBook:
    """The agent's tasks and their unacknowledged updates. Pure: no I/O,
    no clock, no locks (the agent holds its lock around every call)."""

    def __init__(self, agent_id: str, node_id: str):
        self.agent_id = agent_id
        self.node_id = node_id
        self.tasks: dict[str, TaskRecord] = {}

    def add(self, record: TaskRecord) -> None:
        assert record.task_id not in self.tasks
        self.tasks[record.task_id] = record

    def update(self, record: TaskRecord, state: int, reason: str, message: str, *, uuid: bytes,
               timestamp: float, **fields) -> pb.TaskStatus:
        """A new status of ``record`` (to send, and pending until acked).
        A terminal task gets no further update (asserted)."""
        assert not record.terminal, f"task {record.task_id} is already terminal"
        status = pb.TaskStatus(task_id=record.task_id, framework_id=record.framework_id, agent_id=self.agent_id,
                               node_id=self.node_id, state=state, reason=reason[:limits.reason_length_max_bytes],
                               message=_clip(message, limits.status_message_length_max_bytes), uuid=uuid,
                               timestamp=timestamp, bytes_local=record.bytes_local,
                               bytes_remote=record.bytes_remote, **fields)
        if record.status is not None and not status.started_at:
            status.started_at = record.status.started_at
        record.state, record.status = state, status
        record.pending.append(status)
        return status

    def ack(self, task_id: str, uuid: bytes) -> TaskRecord | None:
        """Drop the acknowledged update; the record when it is now done
        with (terminal, nothing pending: forget it), else None."""
        record = self.tasks.get(task_id)
        if record is None:
            return None
        record.pending = [s for s in record.pending if s.uuid != uuid]
        if record.terminal and not record.pending:
            del self.tasks[task_id]
            return record
        return None

    def unacknowledged(self) -> list:
        """Every pending update, each task's in order."""
        return [s for record in self.tasks.values() for s in record.pending]

    def report(self) -> list:
        """The latest status of every task (for the registration)."""
        out = []
        for record in self.tasks.values():
            if record.status is not None:
                out.append(record.status)
            else:
                out.append(pb.TaskStatus(task_id=record.task_id, framework_id=record.framework_id,
                                         agent_id=self.agent_id, node_id=self.node_id, state=record.state))
        return out

    def active(self) -> list:
        return [r for r in self.tasks.values() if not r.terminal]

    def counts(self) -> dict:
        return collections.Counter(pb.TaskState.Name(r.state) for r in self.tasks.values())


# -- checkpoints -----------------------------------------------------------------------

class Checkpoints:
    """One JSON file per task under ``directory``, replaced atomically and
    fsynced (a torn or lost write would orphan a running task)."""

    def __init__(self, directory: str):
        self.directory = directory
        os.makedirs(directory, mode=0o700, exist_ok=True)

    def save(self, record: TaskRecord) -> None:
        path = self._path(record.task_id)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(record.to_json(), f)
            f.flush()
            os.fdatasync(f.fileno())
        os.replace(tmp, path)

    def _path(self, task_id: str) -> str:
        # Hex: a task id is the master's word, and may hold '/' or be '..'.
        return os.path.join(self.directory, f"{task_id.encode().hex()}.json")

    def remove(self, task_id: str) -> None:
        try:
            os.unlink(self._path(task_id))
        except FileNotFoundError:
            pass

    def load(self) -> list[TaskRecord]:
        out = []
        for name in sorted(os.listdir(self.directory)):
            path = os.path.join(self.directory, name)
            if name.endswith(".tmp"):
                os.unlink(path)               # a write the crash interrupted; the previous file stands
                continue
            try:
                with open(path) as f:
                    out.append(TaskRecord.from_json(json.load(f)))
            except (ValueError, KeyError, OSError) as e:
                log.error("agent: unreadable checkpoint %s (%s); ignored", path, e)
        return out


# -- the agent --------------------------------------------------------------------------

class Agent:
    def __init__(self, node_id: str, address: str, data_dir: str, meta_addresses, *, store=None,
                 registry=None, cpus: float | None = None, mem_bytes: int | None = None,
                 disk_bytes: int | None = None, agent_id: str | None = None,
                 runtime_parent: str | None = isolation.runtime_parent_default):
        """``store``: a callable returning the node's open ``BlockStore`` (or
        None); ``registry``: the node's Prometheus registry;
        ``cpus``/``mem_bytes``/``disk_bytes``: what to offer (default: every
        cpu, ``mem_fraction_default`` of RAM, the free space of ``data_dir``);
        ``runtime_parent``: the tmpfs holding task dirs and sandboxes
        (``isolation.runtime_dir``; None keeps them under ``data_dir``)."""
        self.node_id = node_id
        self.agent_id = agent_id or node_id
        self.address = address
        self.data_dir = os.path.abspath(data_dir)
        self.work_dir = os.path.join(self.data_dir, "agent")
        self.runtime_parent = runtime_parent
        self.run_dir = self.work_dir         # task dirs and sandboxes: found at start, made at the first launch
        self._run_dir_chosen = False
        self._run_dir_lock = threading.Lock()
        self.meta_addresses = meta_addresses
        self._store = store or (lambda: None)
        self.total = pb.Resources(cpus=float(cpus or os.cpu_count() or 1),
                                  mem_bytes=int(mem_bytes or _mem_total_bytes() * mem_fraction_default),
                                  disk_bytes=int(disk_bytes if disk_bytes is not None else _free_bytes(self.data_dir)))
        self._lock = threading.Lock()
        self._book = TaskBook(self.agent_id, node_id)
        self._handles: dict[str, isolation.TaskHandle] = {}
        self._threads: dict[str, threading.Thread] = {}
        self._checkpoints: Checkpoints | None = None
        self._conn = None
        self._client = None
        self._client_lock = threading.Lock()
        self._registered = threading.Event()
        self._stopping = threading.Event()
        self._stopped = threading.Event()
        self._heartbeat_interval_s = heartbeat_interval_default_s
        self._last_heartbeat = 0.0
        self._sent_s: dict[bytes, float] = {}      # update uuid -> when it last went out (monotonic)
        self._ticker: threading.Thread | None = None
        self._metrics = _AgentMetrics(self, registry)

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Recover checkpointed tasks, then connect to the master. Raises
        CisternError(ENOTSUP) when this machine cannot isolate tasks."""
        isolation.check_available()
        os.makedirs(self.work_dir, mode=0o700, exist_ok=True)
        self.run_dir = isolation.runtime_dir(self.work_dir, None)     # an earlier agent's, if any
        self._checkpoints = Checkpoints(os.path.join(self.work_dir, "checkpoints"))
        self._recover()
        self._conn = self._connect()
        self._ticker = threading.Thread(target=self._tick, name="agent-ticker", daemon=True)
        self._ticker.start()
        log.info("agent %s: offering %.2f cpus, %d MiB memory, %d MiB disk; %d task(s) recovered",
                 self.agent_id, self.total.cpus, self.total.mem_bytes >> 20, self.total.disk_bytes >> 20,
                 len(self._book.tasks))

    def stop(self, *, kill_tasks: bool = True) -> None:
        """Kill the running tasks (unless ``kill_tasks`` is False: they then
        run on for the next agent to recover), give their updates
        ``stop_drain_timeout_s`` to be acknowledged, disconnect. Idempotent."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if kill_tasks:
            self._kill_all("agent stopped")
        else:
            self._stopped.set()             # task threads stop watching; the tasks run on
        for thread in list(self._threads.values()):
            thread.join(task_thread_join_s)
        if kill_tasks:
            self._drain(stop_drain_timeout_s)
        self._stopped.set()
        if self._conn is not None:
            self._conn.close()
        if self._ticker is not None:
            self._ticker.join(5)
        with self._client_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
        if kill_tasks:
            with self._lock:
                keep = [r.task_id for r in self._book.active()]
            isolation.sweep(self.agent_id, self.run_dir, keep)
            if not keep:
                isolation.remove_runtime_dir(self.work_dir)
        self._metrics.close()
        isolation.shutdown()
        log.info("agent %s: stopped", self.agent_id)

    def _launch_dir(self) -> str:
        """The runtime dir, made at the first launch (a node that never runs
        a task leaves nothing on tmpfs, even when it is killed)."""
        with self._run_dir_lock:
            if not self._run_dir_chosen:
                if self.run_dir == self.work_dir:
                    self.run_dir = isolation.runtime_dir(self.work_dir, self.runtime_parent)
                self._run_dir_chosen = True
            return self.run_dir

    def _kill_all(self, reason: str) -> None:
        with self._lock:
            for record in self._book.active():
                record.kill_reason = record.kill_reason or reason
                self._checkpoints.save(record)
        for handle in list(self._handles.values()):
            self._kill(handle)

    def _drain(self, timeout_s: float) -> None:
        """Wait (bounded) until the master acknowledged every update."""
        deadline = time.monotonic() + timeout_s
        while self.unacknowledged() and time.monotonic() < deadline and self._registered.is_set():
            time.sleep(0.05)

    # -- introspection (tests, metrics) ------------------------------------------------------

    @property
    def registered(self) -> bool:
        return self._registered.is_set()

    def wait_registered(self, timeout_s: float) -> bool:
        return self._registered.wait(timeout_s)

    def tasks(self) -> dict:
        """{task_id: state name} of every task the agent remembers."""
        with self._lock:
            return {t: pb.TaskState.Name(r.state) for t, r in self._book.tasks.items()}

    def unacknowledged(self) -> int:
        with self._lock:
            return len(self._book.unacknowledged())

    def handle(self, task_id: str) -> isolation.TaskHandle | None:
        return self._handles.get(task_id)

    # -- the master connection -----------------------------------------------------------

    def _connect(self):
        from cistern.scheduler.client import MasterConnection

        return MasterConnection(self.meta_addresses, lambda stub, requests: stub.AgentStream(requests),
                                on_connect=self._on_connect, on_message=self._on_message,
                                on_disconnect=self._on_disconnect, name=f"agent-{self.agent_id}")

    def _on_connect(self, address: str) -> list:
        """Register first on every new stream, with what runs here now."""
        self._registered.clear()
        with self._lock:
            tasks = self._book.report()
        log.info("agent %s: registering with the master at %s (%d task(s))", self.agent_id, address, len(tasks))
        return [pb.AgentMessage(register=pb.AgentRegister(agent_id=self.agent_id, node_id=self.node_id,
                                                          address=self.address, total=self.total, tasks=tasks))]

    def _on_disconnect(self, error) -> None:
        self._registered.clear()
        if not self._stopped.is_set():
            log.info("agent %s: master stream ended (%s); reconnecting", self.agent_id, error)

    def _on_message(self, command: pb.AgentCommand) -> None:
        kind = command.WhichOneof("kind")
        if kind == "registered":
            self._heartbeat_interval_s = command.registered.heartbeat_interval_s or heartbeat_interval_default_s
            self._registered.set()
            self._resend(everything=True)
        elif kind == "launch":
            self._on_launch(command.launch)
        elif kind == "kill":
            self._on_kill(command.kill)
        elif kind == "ack":
            self._on_ack(command.ack)
        elif kind == "error":
            e = command.error
            log.warning("agent %s: the master refused %s%s: %s", self.agent_id, e.call or "a message",
                        f" of task {e.task_id}" if e.task_id else "", e.message)

    def _send(self, message: pb.AgentMessage) -> bool:
        conn = self._conn
        return conn is not None and conn.send(message)

    def _send_update(self, status: pb.TaskStatus) -> None:
        if self._registered.is_set() and self._send(pb.AgentMessage(update=pb.StatusUpdate(status=status))):
            with self._lock:
                self._sent_s[status.uuid] = time.monotonic()

    def _resend(self, *, everything: bool) -> None:
        """Send again the unacknowledged updates: all of them (a new
        registration: the stream they went out on is gone), or those sent
        at least ``update_retry_interval_s`` ago."""
        now = time.monotonic()
        with self._lock:
            pending = self._book.unacknowledged()
            due = [s for s in pending if everything or now - self._sent_s.get(s.uuid, 0.0) >= update_retry_interval_s]
            # Forget send times of acknowledged updates.
            self._sent_s = {s.uuid: self._sent_s.get(s.uuid, 0.0) for s in pending}
        for status in due:
            if self._send(pb.AgentMessage(update=pb.StatusUpdate(status=status))):
                with self._lock:
                    self._sent_s[status.uuid] = now
        if due and not everything:
            self._metrics.resent.inc(len(due))

    def _tick(self) -> None:
        while not self._stopped.wait(ticker_interval_s):
            if not self._registered.is_set():
                continue
            now = time.monotonic()
            if now - self._last_heartbeat >= self._heartbeat_interval_s:
                self._last_heartbeat = now
                self._send(pb.AgentMessage(heartbeat=pb.Heartbeat()))
            self._resend(everything=False)

    # -- commands --------------------------------------------------------------------------

    def _on_launch(self, launch: pb.LaunchTask) -> None:
        spec = launch.task
        with self._lock:
            if spec.task_id in self._book.tasks:
                log.info("task %s: already on this agent; repeated start ignored", spec.task_id)
                return
            record = TaskRecord(spec.task_id, launch.framework_id, spec, received_s=time.monotonic())
            self._book.add(record)
            self._checkpoints.save(record)
        if self._stopping.is_set():
            self._finish_without_running(record, pb.TASK_FAILED, "agent stopped", "the agent is stopping")
            return
        self._spawn(record, self._run_task)

    def _on_kill(self, kill: pb.KillTask) -> None:
        reason = kill.reason or "killed by framework"
        with self._lock:
            record = self._book.tasks.get(kill.task_id)
            if record is None:
                record = TaskRecord(kill.task_id, kill.framework_id, pb.TaskSpec(task_id=kill.task_id))
                self._book.add(record)
                status = self._update(record, pb.TASK_KILLED, reason, "the task is not on this agent")
            else:
                status = None
                if not record.terminal and not record.kill_reason:
                    record.kill_reason = reason
                    self._checkpoints.save(record)
        if status is not None:
            self._send_update(status)
            return
        handle = self._handles.get(kill.task_id)
        if handle is not None and not record.terminal:
            log.info("task %s: killing (%s)", kill.task_id, reason)
            threading.Thread(target=self._kill, args=(handle,), name=f"kill-{kill.task_id}", daemon=True).start()

    def _kill(self, handle: isolation.TaskHandle) -> None:
        try:
            handle.kill()
        except OSError as e:        # the task's watcher reports how it ended; this only must not die loudly
            log.warning("task %s: kill: %s", handle.task_id, e)

    def _on_ack(self, ack: pb.AckUpdate) -> None:
        with self._lock:
            done = self._book.ack(ack.task_id, ack.uuid)
            if done is not None:
                self._checkpoints.remove(ack.task_id)
            # A non-terminal task's checkpoint keeps the acknowledged update: it
            # is rewritten at the task's next change anyway, and an agent that
            # restarts before then only sends it again (the master acks a uuid
            # it holds as a no-op), so no fsync here.

    # -- one task ----------------------------------------------------------------------------

    def _spawn(self, record: TaskRecord, target) -> None:
        thread = threading.Thread(target=self._task_main, args=(record, target), name=f"task-{record.task_id}",
                                  daemon=True)
        with self._lock:
            self._threads[record.task_id] = thread
        thread.start()

    def _task_main(self, record: TaskRecord, target) -> None:
        try:
            target(record)
        except Exception as e:              # a bug here must not leave the task unreported
            log.exception("task %s: agent error", record.task_id)
            with self._lock:
                terminal = record.terminal
            if not terminal:
                handle = self._handles.get(record.task_id)
                if handle is not None:
                    handle.kill()
                self._finish_without_running(record, pb.TASK_FAILED, "agent error", f"{type(e).__name__}: {e}")
        finally:
            with self._lock:
                self._threads.pop(record.task_id, None)

    def _run_task(self, record: TaskRecord) -> None:
        problem = isolation.spec_problem(record.spec, self.agent_id)
        if problem:                         # before its id names any path
            log.warning("task %r: refused: %s", record.task_id, problem)
            self._finish_without_running(record, pb.TASK_ERROR, "invalid launch", problem)
            return
        if record.spec.inputs:               # without inputs there is nothing to stage: RUNNING comes next
            self._emit(record, pb.TASK_STARTING, "", "staging inputs")
        fetch_dir = os.path.join(self.work_dir, "fetched", record.task_id)
        try:
            if record.kill_reason:
                raise _KilledBeforeStart()
            inputs = self._stage_inputs(record, fetch_dir)
            handle = isolation.launch(record.spec, agent_id=self.agent_id, work_dir=self._launch_dir(),
                                      inputs=inputs, extra_env=self._task_env(record.spec))
        except _KilledBeforeStart:
            shutil.rmtree(fetch_dir, ignore_errors=True)
            self._finish_without_running(record, pb.TASK_KILLED, record.kill_reason, "killed before it started")
            return
        except (CisternError, OSError) as e:
            shutil.rmtree(fetch_dir, ignore_errors=True)
            message = e.message if isinstance(e, CisternError) else f"{e.strerror or e}: {e.filename or ''}"
            log.warning("task %s: could not start: %s", record.task_id, message)
            self._finish_without_running(record, pb.TASK_FAILED, "start failed", message)
            return
        log.info("task %s: launch of framework %s's %r (%d input(s): %d bytes local, %d remote)",
                 record.task_id, record.framework_id, list(record.spec.argv)[:4], len(inputs),
                 record.bytes_local, record.bytes_remote)
        with self._lock:
            self._handles[record.task_id] = handle
            record.handle = handle.checkpoint()
            self._checkpoints.save(record)
        if record.kill_reason:
            handle.kill()
        self._watch(record, handle, fresh=True)

    def _watch(self, record: TaskRecord, handle: isolation.TaskHandle, *, fresh: bool) -> None:
        """Wait for the task (RUNNING once it was exec'd), then finish it."""
        try:
            running = handle.wait_started()
        except TimeoutError:
            handle.kill()
            running = False
        if running and record.state != pb.TASK_RUNNING:
            started = handle.started() or {}
            self._emit(record, pb.TASK_RUNNING, "", "running", started_at=started.get("started_at", 0.0))
            if fresh:
                self._metrics.launch_latency.observe(time.monotonic() - record.received_s)
        result = None
        while result is None:
            if self._stopped.is_set():
                return                      # stopped without killing: the next agent takes over
            result = handle.wait(watch_interval_s)
        self._finish(record, handle, result)

    def _finish(self, record: TaskRecord, handle: isolation.TaskHandle, result: isolation.TaskResult) -> None:
        state, reason, message = _STATES[result.state], result.reason, result.message
        if result.state == "killed" and record.kill_reason:
            reason = record.kill_reason
        if result.state == "finished" and record.spec.output_dir:
            try:
                message += "; " + self._store_outputs(record, handle)
            except (CisternError, OSError) as e:
                state, reason = pb.TASK_FAILED, "output not stored"
                message = f"exited 0 but its output was not stored: {getattr(e, 'message', None) or e}"
        self._emit(record, state, reason, message, exit_code=result.exit_code,
                   stdout_tail=result.stdout_tail[-limits.output_tail_max_bytes:],
                   stderr_tail=result.stderr_tail[-limits.output_tail_max_bytes:],
                   started_at=result.started_at, finished_at=result.finished_at)
        log.info("task %s: %s (%s%s)", record.task_id, pb.TaskState.Name(state), reason or "ok",
                 f": {message}" if reason else "")
        handle.cleanup()
        shutil.rmtree(os.path.join(self.work_dir, "fetched", record.task_id), ignore_errors=True)
        with self._lock:
            self._handles.pop(record.task_id, None)
            record.handle = None             # not saved: recovery never re-attaches a terminal task

    def _finish_without_running(self, record: TaskRecord, state: int, reason: str, message: str) -> None:
        self._emit(record, state, reason, message, finished_at=time.time())

    def _emit(self, record: TaskRecord, state: int, reason: str, message: str, **fields) -> None:
        """Make, checkpoint and send one status update."""
        with self._lock:
            status = self._update(record, state, reason, message, **fields)
        self._send_update(status)
        if state in TERMINAL:
            self._metrics.ended.labels(pb.TaskState.Name(state)).inc()

    def _update(self, record: TaskRecord, state: int, reason: str, message: str, **fields) -> pb.TaskStatus:
        """Under ``_lock``."""
        status = self._book.update(record, state, reason, message, uuid=os.urandom(16), timestamp=time.time(),
                                   **fields)
        self._checkpoints.save(record)
        return status

    # -- inputs and outputs ---------------------------------------------------------------------

    def _stage_inputs(self, record: TaskRecord, fetch_dir: str) -> list:
        """(source path, InputBlock) per input: the block file itself when
        this node holds exactly that block, else a copy read through the
        client. Counts bytes_local/bytes_remote on the record."""
        out = []
        for n, ib in enumerate(record.spec.inputs):
            source = self._local_block(ib)
            if source is not None:
                record.bytes_local += ib.length
                self._metrics.input_bytes.labels("local").inc(ib.length)
            else:
                os.makedirs(fetch_dir, mode=0o700, exist_ok=True)
                source = os.path.join(fetch_dir, str(n))
                self._fetch(ib, source)
                record.bytes_remote += ib.length
                self._metrics.input_bytes.labels("remote").inc(ib.length)
            out.append((source, ib))
        return out

    def _local_block(self, ib: pb.InputBlock) -> str | None:
        store = self._store()
        if store is None or len(ib.block_id) != 16:
            return None
        try:
            info = store.info(ib.block_id, missing_ok=True)
        except CisternError:
            return None
        if info is None or info.length != ib.length:
            # Absent, or holding more than the piece (a truncated file's
            # hidden tail): the task must see exactly ``length`` bytes.
            return None
        return store.block_path(ib.block_id)

    def _fetch(self, ib: pb.InputBlock, dest: str) -> None:
        if not ib.path:
            raise CisternError(errno.EINVAL, "an input block names no file to read it from")
        with self._cistern().open(ib.path, "rb") as src, open(dest, "wb") as out:
            src.seek(ib.file_offset)
            left = ib.length
            while left > 0:
                data = src.read(min(copy_chunk_bytes, left))
                if not data:
                    raise CisternError(errno.EIO, f"input {ib.path}: only {ib.length - left} of {ib.length} "
                                                  f"bytes at offset {ib.file_offset}")
                out.write(data)
                left -= len(data)

    def _store_outputs(self, record: TaskRecord, handle: isolation.TaskHandle) -> str:
        """Copy the sandbox's out/ files (regular files only: a symlink the
        task made is never followed) to ``<output_dir>/<task_id>/``."""
        files = _output_files(handle.output_dir())
        total = sum(size for _, _, size in files)
        limit = record.spec.output_bytes_max or output_bytes_max_default
        if total > limit:
            raise CisternError(errno.EFBIG, f"output of {total} bytes is over the task's limit of {limit}")
        base = f"{record.spec.output_dir.rstrip('/')}/{record.task_id}"
        client = self._cistern()
        client.makedirs(base, exist_ok=True)
        for rel, path, _ in files:
            dest = f"{base}/{rel}"
            if "/" in rel:
                client.makedirs(dest.rsplit("/", 1)[0], exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
            with os.fdopen(fd, "rb") as src, client.open(dest, "wb") as out:
                shutil.copyfileobj(src, out, copy_chunk_bytes)
        return f"stored {len(files)} file(s), {total} bytes under {base}"

    def _cistern(self):
        with self._client_lock:
            if self._client is None:
                from cistern.client import connect

                self._client = connect(_addresses_arg(self.meta_addresses), uid=0, gid=0, groups=[],
                                       timeout_s=fetch_timeout_s, node_id=self.node_id,
                                       local_data_dir=self.data_dir)
            return self._client

    def _task_env(self, spec: pb.TaskSpec) -> dict:
        """Extra environment: a task with network can reach the cluster."""
        env = {"CISTERN_NODE_ID": self.node_id}
        if spec.network:
            env["CISTERN_CLUSTER"] = _addresses_arg(self.meta_addresses)
        return env

    # -- recovery -------------------------------------------------------------------------------

    def _recover(self) -> None:
        records = self._checkpoints.load()
        keep = []
        for record in records:
            self._book.add(record)
            if record.terminal:
                if not record.pending:
                    self._book.tasks.pop(record.task_id)
                    self._checkpoints.remove(record.task_id)
                continue
            if record.handle is None:
                self._finish_without_running(record, pb.TASK_FAILED, "agent restarted",
                                             "the agent restarted before the task started")
                continue
            handle = isolation.recover(record.handle)
            self._handles[record.task_id] = handle
            keep.append(record.task_id)
            if record.kill_reason:
                handle.kill()               # asked before the restart: finish the job
            log.info("task %s: re-attached after an agent restart (%s)", record.task_id,
                     "still running" if handle.poll() is None else "ended meanwhile")
            self._spawn(record, lambda r, h=handle: self._watch(r, h, fresh=False))
        removed = isolation.sweep(self.agent_id, self.run_dir, keep)
        fetched = os.path.join(self.work_dir, "fetched")
        for task_id in (os.listdir(fetched) if os.path.isdir(fetched) else []):
            if task_id not in keep:
                shutil.rmtree(os.path.join(fetched, task_id), ignore_errors=True)
        if removed:
            log.warning("agent %s: removed %d task(s) left without a checkpoint: %s", self.agent_id,
                        len(removed), ", ".join(removed))


class _KilledBeforeStart(Exception):
    pass


_STATES = {"finished": pb.TASK_FINISHED, "failed": pb.TASK_FAILED, "killed": pb.TASK_KILLED}


# -- metrics --------------------------------------------------------------------------------

class _AgentMetrics:
    def __init__(self, agent: Agent, registry):
        self._agent = agent
        kw = {"registry": registry}                 # None: metrics of their own, registered nowhere
        self.tasks = Gauge("cistern_agent_tasks", "tasks this agent holds, by state", ["state"], **kw)
        self.ended = Counter("cistern_agent_tasks_ended", "tasks that ended here, by terminal state", ["state"], **kw)
        self.launch_latency = Histogram("cistern_agent_launch_latency_seconds",
                                        "launch command received -> task running", buckets=launch_latency_buckets_s,
                                        **kw)
        self.input_bytes = Counter("cistern_agent_input_bytes", "task input bytes staged, by locality",
                                   ["locality"], **kw)
        self.resent = Counter("cistern_agent_updates_resent", "status updates sent again (not yet acknowledged)", **kw)
        self._registry = registry
        self._collectors = [self.tasks, self.ended, self.launch_latency, self.input_bytes, self.resent]
        if registry is not None:
            self._collectors.append(_UsageCollector(agent))
            registry.register(self._collectors[-1])
        for name in pb.TaskState.keys():
            if name != "TASK_UNKNOWN":    # counted when scraped, not on every update (a pass over all tasks)
                self.tasks.labels(name).set_function(functools.partial(self._count_state, name))

    def close(self) -> None:
        """Leave the registry (a new agent of the same node may join it)."""
        if self._registry is not None:
            for collector in self._collectors:
                self._registry.unregister(collector)
            self._registry = None

    def _count_state(self, name: str) -> int:
        with self._agent._lock:
            return self._agent._book.counts().get(name, 0)


class _UsageCollector:
    """Resources offered, reserved by running tasks, and used (read from
    the tasks' cgroups at scrape time)."""

    def __init__(self, agent: Agent):
        self._agent = agent

    def collect(self):
        agent = self._agent
        with agent._lock:
            active = [r.spec.resources for r in agent._book.active()]
            handles = list(agent._handles.values())
        used = [h.usage() for h in handles]
        yield GaugeMetricFamily("cistern_agent_cpus_total", "cpus this agent offers", value=agent.total.cpus)
        yield GaugeMetricFamily("cistern_agent_mem_bytes_total", "memory this agent offers",
                                value=agent.total.mem_bytes)
        yield GaugeMetricFamily("cistern_agent_cpus_reserved", "cpus of the tasks running here",
                                value=sum(r.cpus for r in active))
        yield GaugeMetricFamily("cistern_agent_mem_bytes_reserved", "memory of the tasks running here",
                                value=sum(r.mem_bytes for r in active))
        yield GaugeMetricFamily("cistern_agent_task_mem_bytes", "memory the running tasks use now (cgroups)",
                                value=sum(u["mem_bytes"] for u in used))
        yield GaugeMetricFamily("cistern_agent_task_cpu_seconds", "cpu time the running tasks used (cgroups)",
                                value=sum(max(0.0, u["cpu_s"]) for u in used))


# -- helpers ----------------------------------------------------------------------------------

def _output_files(root: str) -> list:
    """(relative path, path, size) of the regular files under ``root``,
    without following symlinks."""
    out = []
    for top, dirs, files in os.walk(root, followlinks=False):
        for name in sorted(files):
            path = os.path.join(top, name)
            st = os.lstat(path)
            if os.path.islink(path) or not (st.st_mode & 0o170000 == 0o100000):
                continue
            out.append((os.path.relpath(path, root), path, st.st_size))
        dirs.sort()
    return out


def _addresses_arg(addresses) -> str:
    return addresses if isinstance(addresses, str) else ",".join(addresses)


def _mem_total_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def _free_bytes(path: str) -> int:
    try:
        st = os.statvfs(path)
    except OSError:
        return 0
    return st.f_bavail * st.f_frsize


def _clip(text: str, n_bytes: int) -> str:
    data = text.encode()
    return text if len(data) <= n_bytes else data[:n_bytes].decode(errors="ignore")


def _b64(message) -> str:
    return base64.b64encode(message.SerializeToString()).decode()


def _unb64(cls, text: str):
    message = cls()
    message.ParseFromString(base64.b64decode(text))
    return message
