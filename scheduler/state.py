"""The scheduler master's replicated state: a pure, deterministic state
machine over the metadata replica's LMDB ``Store`` (its own named
databases), on the same Raft log as the namespace.

``SchedState.apply(txn, time_ns, code, args) -> (errno, message, value)``
applies one write of ``model.SchedOp``; ``read(txn, code, args)`` answers a
read; ``bootstrap(txn)`` creates the counters. Same contract as
``metadata/state.py`` Namespace:

* ``apply`` never raises: malformed arguments give EINVAL, an unknown code
  ENOSYS, a caller other than root EPERM; each operation runs in a nested
  transaction committed only on success, so a failed operation changes
  nothing (a bug that raises mid-way answers EIO and still changes nothing).
* No clock but ``time_ns`` (the Raft entry's), no randomness (ids and uuids
  are the leader's, carried in the arguments), no I/O but the transaction.
* The semantics of each operation are in ``model.SchedOp``'s comments.

Invariants (``check_invariants`` asserts them; the unit tests run it after
every step):

* every task's framework exists; an active task's agent exists;
* the agent index lists exactly the active tasks, under their agent; an
  unreachable agent has no active task;
* the framework index lists exactly the tasks, under their framework;
* a terminal task never changes state again (a late update with another
  uuid is ESTALE), so no task is reported finished twice;
* the done ring lists exactly the acknowledged terminal tasks, at most
  ``completed_tasks_max`` of them; the per-state counters match the tasks.

Databases (keys are utf-8 ids; ``\\0`` separates the parts of a compound key):

=====================  ============================  =======================
name                   key                           value
=====================  ============================  =======================
``sched_frameworks``   framework id                  msgpack framework record
``sched_agents``       agent id                      msgpack agent record
``sched_tasks``        task id                       msgpack task record
``sched_fw_tasks``     framework id \\0 task id       b""
``sched_agent_tasks``  agent id \\0 task id           b"" (active tasks only)
``sched_done``         u64 sequence                  task id (acked terminal tasks, oldest first)
``sched_meta``         b"counters"                   msgpack {"done_seq", "done_count", "by_state"}
=====================  ============================  =======================
"""

from __future__ import annotations

import errno as E
import math
import os
import struct

import xxhash

from cistern.metadata.store import Refused, apply_op, read_op
from cistern.scheduler import limits, model
from cistern.scheduler.model import ACTIVE, TERMINAL, SchedOp, TaskState

__all__ = ["SchedState", "SCHED_DBS", "check_invariants", "check_spec", "lost_uuid"]

DB_FRAMEWORKS = b"sched_frameworks"
DB_AGENTS = b"sched_agents"
DB_TASKS = b"sched_tasks"
DB_FW_TASKS = b"sched_fw_tasks"
DB_AGENT_TASKS = b"sched_agent_tasks"
DB_DONE = b"sched_done"
DB_META = b"sched_meta"
SCHED_DBS = (DB_FRAMEWORKS, DB_AGENTS, DB_TASKS, DB_FW_TASKS, DB_AGENT_TASKS, DB_DONE, DB_META)

_COUNTERS_KEY = b"counters"
_SEQ = struct.Struct(">Q")
_SEP = b"\0"
_INT64_MAX = (1 << 63) - 1
_STATE_NUMBERS = frozenset(int(s) for s in TaskState if s != TaskState.TASK_UNKNOWN)


def _empty_counters() -> dict:
    return {"done_seq": 0, "done_count": 0, "by_state": {}}


_Fail = Refused   # an expected failure found while validating: nothing was changed yet


def _run_write(child, handler, time_ns: int, args):
    _root(args[0])
    return handler(child, time_ns, list(args[1:]))


def _run_read(txn, handler, args):
    _root(args[0])
    return handler(txn, list(args[1:]))


def _fail(err: int, what: str = "") -> _Fail:
    return _Fail(err, f"{what}: {os.strerror(err)}" if what else os.strerror(err))


# -- pure argument validation -----------------------------------------------------

def _args(args, count: int) -> list:
    if type(args) not in (list, tuple) or len(args) != count:
        raise _Fail(E.EINVAL, f"expected {count} arguments")
    return list(args)


def _root(cred) -> None:
    if type(cred) not in (list, tuple) or len(cred) != 3 or type(cred[0]) is not int:
        raise _Fail(E.EINVAL, "bad credentials")
    if cred[0] != 0:
        raise _Fail(E.EPERM, "scheduler state is the master's (root only)")


def _text(value, what: str, max_bytes: int, *, empty_ok: bool = False) -> str:
    if type(value) is not str or (not value and not empty_ok) or len(value.encode()) > max_bytes or "\0" in value:
        raise _Fail(E.EINVAL, f"bad {what}")
    return value


def _id(value, what: str) -> str:
    return _text(value, what, limits.id_length_max_bytes)


def _int(value, lo: int, hi: int, what: str) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise _Fail(E.EINVAL, f"bad {what}")
    return value


def _number(value, lo: float, hi: float, what: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or not lo <= value <= hi:
        raise _Fail(E.EINVAL, f"bad {what}")
    return float(value)


def _bool(value, what: str) -> bool:
    if type(value) is not bool:
        raise _Fail(E.EINVAL, f"{what} must be a bool")
    return value


def _uuid(value) -> bytes:
    if type(value) is not bytes or not 1 <= len(value) <= limits.uuid_length_max_bytes:
        raise _Fail(E.EINVAL, "bad status uuid")
    return value


def resources(value) -> list:
    """[cpus, mem_bytes, disk_bytes], validated (cpus a float, the rest ints)."""
    if type(value) not in (list, tuple) or len(value) != 3:
        raise _Fail(E.EINVAL, "resources must be [cpus, mem_bytes, disk_bytes]")
    cpus = _number(value[0], 0, limits.cpus_max, "cpus")
    mem = _int(value[1], 0, limits.mem_bytes_max, "mem_bytes")
    disk = _int(value[2], 0, limits.disk_bytes_max, "disk_bytes")
    return [cpus, mem, disk]


def _strings(value, what: str, count_max: int, bytes_max: int) -> list:
    if type(value) not in (list, tuple) or len(value) > count_max:
        raise _Fail(E.EINVAL, f"bad {what}")
    total = 0
    for item in value:
        if type(item) is not str or "\0" in item:
            raise _Fail(E.EINVAL, f"bad {what} item")
        total += len(item.encode()) + 1
    if total > bytes_max:
        raise _Fail(E.EINVAL, f"{what} exceeds {bytes_max} bytes")
    return list(value)


def _env(value) -> dict:
    if type(value) is not dict or len(value) > limits.env_items_max:
        raise _Fail(E.EINVAL, "bad env")
    total = 0
    for key, item in value.items():
        if type(key) is not str or type(item) is not str or not key or "=" in key or "\0" in key + item:
            raise _Fail(E.EINVAL, "bad env entry")
        total += len(key.encode()) + len(item.encode()) + 2
    if total > limits.env_bytes_max:
        raise _Fail(E.EINVAL, f"env exceeds {limits.env_bytes_max} bytes")
    return dict(value)


def _inputs(value) -> list:
    if type(value) not in (list, tuple) or len(value) > limits.inputs_per_task_max:
        raise _Fail(E.EINVAL, "bad inputs")
    out = []
    for item in value:
        if type(item) not in (list, tuple) or len(item) != 4:
            raise _Fail(E.EINVAL, "an input is [block_id, path, file_offset, length]")
        block_id, path, offset, length = item
        if type(block_id) is not bytes or len(block_id) > limits.id_length_max_bytes:
            raise _Fail(E.EINVAL, "bad input block id")
        _text(path, "input path", 4096, empty_ok=True)
        out.append([block_id, path, _int(offset, 0, _INT64_MAX, "input offset"),
                    _int(length, 0, _INT64_MAX, "input length")])
    return out


def task_spec(value) -> dict:
    """A launch's spec, validated and normalized (absent optional fields
    take their defaults). Raises _Fail(EINVAL) naming what is wrong."""
    if type(value) is not dict or set(value) - set(model.SPEC_FIELDS):
        raise _Fail(E.EINVAL, "bad task spec")
    spec = {
        "task_id": _id(value.get("task_id"), "task id"),
        "name": _text(value.get("name", ""), "task name", limits.name_length_max_bytes, empty_ok=True),
        "argv": _strings(value.get("argv", []), "argv", limits.argv_items_max, limits.argv_bytes_max),
        "env": _env(value.get("env", {})),
        "resources": resources(value.get("resources")),
        "inputs": _inputs(value.get("inputs", [])),
        "network": _bool(value.get("network", False), "network"),
        "output_dir": _text(value.get("output_dir", ""), "output_dir", 4096, empty_ok=True),
        "output_bytes_max": _int(value.get("output_bytes_max", 0), 0, _INT64_MAX, "output_bytes_max"),
    }
    if not spec["argv"] or not spec["argv"][0]:
        raise _Fail(E.EINVAL, "argv is empty: a task needs a command")
    cpus, mem, _ = spec["resources"]
    if cpus < limits.cpus_min_per_task or mem < limits.mem_bytes_min_per_task:
        raise _Fail(E.EINVAL, f"a task needs at least {limits.cpus_min_per_task} cpus and "
                              f"{limits.mem_bytes_min_per_task} bytes of memory")
    return spec


def check_spec(spec) -> tuple[int, str]:
    """(0, '') when a launch's spec is well formed, else (errno, message):
    what TASK_LAUNCH would refuse it for, so the master can refuse a task
    before anything is committed."""
    try:
        task_spec(spec)
    except _Fail as failure:
        return failure.err, failure.msg
    return 0, ""


_STATUS_TYPES = {
    "framework_id": str, "agent_id": str, "reason": str, "message": str, "node_id": str,
    "stdout_tail": bytes, "stderr_tail": bytes,
}
_STATUS_NUMBERS = ("timestamp", "started_at", "finished_at")
_STATUS_INTS = ("exit_code", "bytes_local", "bytes_remote")


def task_status(value) -> dict:
    """A status update, validated and normalized to every field of
    ``model.STATUS_FIELDS``. Raises _Fail(EINVAL)."""
    if type(value) is not dict or set(value) - set(model.STATUS_FIELDS):
        raise _Fail(E.EINVAL, "bad task status")
    state = value.get("state")
    if type(state) is not int or state not in _STATE_NUMBERS:
        raise _Fail(E.EINVAL, "bad task state")
    status = {"task_id": _id(value.get("task_id"), "task id"), "state": state, "uuid": _uuid(value.get("uuid"))}
    for field, kind in _STATUS_TYPES.items():
        item = value.get(field, kind())
        if type(item) is not kind:
            raise _Fail(E.EINVAL, f"bad status {field}")
        status[field] = item
    for field in _STATUS_NUMBERS:
        status[field] = _number(value.get(field, 0.0), 0, 1e12, f"status {field}")
    for field in _STATUS_INTS:
        status[field] = _int(value.get(field, 0), -(1 << 31), _INT64_MAX, f"status {field}")
    _text(status["reason"], "status reason", limits.reason_length_max_bytes, empty_ok=True)
    status["message"] = status["message"][:limits.status_message_length_max_bytes]
    status["stdout_tail"] = status["stdout_tail"][-limits.output_tail_max_bytes:]
    status["stderr_tail"] = status["stderr_tail"][-limits.output_tail_max_bytes:]
    return status


def lost_uuid(seed: bytes, task_id: str) -> bytes:
    """The uuid of a master-made update, derived from a leader-chosen seed."""
    return xxhash.xxh3_128(seed + task_id.encode()).digest()


def _key(*parts: str) -> bytes:
    return _SEP.join(p.encode() for p in parts)


# -- the state machine ------------------------------------------------------------

class SchedState:
    """The scheduler's state machine over a ``metadata.store.Store``. Holds
    no state of its own besides database handles."""

    code_range = model.CODE_RANGE

    def __init__(self, st):
        self.store = st
        self._env = st.env
        # Opened here, outside any write transaction (Store.db's rule).
        self._fw = st.db(DB_FRAMEWORKS)
        self._agents = st.db(DB_AGENTS)
        self._tasks = st.db(DB_TASKS)
        self._fw_tasks = st.db(DB_FW_TASKS)
        self._agent_tasks = st.db(DB_AGENT_TASKS)
        self._done = st.db(DB_DONE)
        self._meta = st.db(DB_META)
        self._writes = {
            SchedOp.FRAMEWORK_SUBSCRIBE: self._subscribe, SchedOp.FRAMEWORK_DISCONNECT: self._disconnect,
            SchedOp.FRAMEWORK_REMOVE: self._remove_framework, SchedOp.AGENT_REGISTER: self._register_agent,
            SchedOp.AGENT_UNREACHABLE: self._agent_unreachable, SchedOp.TASK_LAUNCH: self._launch,
            SchedOp.TASK_UPDATE: self._update, SchedOp.TASK_ACK: self._ack,
        }
        self._reads = {
            SchedOp.GET_FRAMEWORK: self._get_framework, SchedOp.LIST_FRAMEWORKS: self._list_frameworks,
            SchedOp.GET_AGENT: self._get_agent, SchedOp.LIST_AGENTS: self._list_agents,
            SchedOp.GET_TASK: self._get_task, SchedOp.LIST_TASKS: self._list_tasks, SchedOp.COUNTS: self._counts,
        }

    def bootstrap(self, txn) -> None:
        """Create the counters when absent. Idempotent."""
        if txn.get(_COUNTERS_KEY, db=self._meta) is None:
            self._put_counters(txn, _empty_counters())

    def apply(self, txn, time_ns: int, code: int, args: list) -> tuple[int, str, object]:
        """Apply one write operation inside ``txn``; never raises."""
        return apply_op(self._env, txn, self._writes, code, time_ns, args, _run_write, "scheduler write")

    def read(self, txn, code: int, args: list) -> tuple[int, str, object]:
        """Answer one read operation from ``txn``; never raises."""
        return read_op(txn, self._reads, code, args, _run_read, "scheduler read")

    # -- records ------------------------------------------------------------------

    def _get(self, t, db, key: str):
        raw = t.get(key.encode(), db=db)
        return None if raw is None else model.unpack(raw)

    def _put(self, t, db, key: str, record) -> None:
        t.put(key.encode(), model.pack(record), db=db)

    def _counters(self, t) -> dict:
        raw = t.get(_COUNTERS_KEY, db=self._meta)
        return model.unpack(raw) if raw is not None else _empty_counters()

    def _put_counters(self, t, counters: dict) -> None:
        t.put(_COUNTERS_KEY, model.pack(counters), db=self._meta)

    def _count(self, counters: dict, state: int, delta: int) -> None:
        by_state = counters["by_state"]
        name = TaskState(state).name
        by_state[name] = by_state.get(name, 0) + delta
        assert by_state[name] >= 0, (name, by_state)
        if not by_state[name]:
            del by_state[name]

    def _prefix_ids(self, t, db, owner: str) -> list[str]:
        """The task ids under ``owner`` in an index database."""
        prefix = owner.encode() + _SEP
        out = []
        with t.cursor(db=db) as cur:
            if cur.set_range(prefix):
                for key in cur.iternext(values=False):
                    if not key.startswith(prefix):
                        break
                    out.append(key[len(prefix):].decode())
        return out

    def _framework(self, t, framework_id: str) -> dict:
        record = self._get(t, self._fw, framework_id)
        if record is None:
            raise _Fail(E.ENOENT, f"unknown framework {framework_id!r}")
        return record

    def _agent(self, t, agent_id: str) -> dict:
        record = self._get(t, self._agents, agent_id)
        if record is None:
            raise _Fail(E.ENOENT, f"unknown agent {agent_id!r}")
        return record

    def _task(self, t, task_id: str) -> dict:
        record = self._get(t, self._tasks, task_id)
        if record is None:
            raise _Fail(E.ENOENT, f"unknown task {task_id!r}")
        return record

    # -- frameworks -------------------------------------------------------------------

    def _subscribe(self, t, now: int, args) -> dict:
        framework_id, name, failover_s, new = _args(args, 4)
        framework_id = _id(framework_id, "framework id")
        name = _text(name, "framework name", limits.name_length_max_bytes, empty_ok=True)
        failover_s = _number(failover_s, 0, limits.framework_failover_timeout_max_s, "failover timeout")
        record = self._get(t, self._fw, framework_id)
        if _bool(new, "new"):
            if record is not None:
                raise _Fail(E.EEXIST, f"framework {framework_id!r} exists")
            record = {"id": framework_id, "registered_ns": now}
        elif record is None:
            raise _Fail(E.ENOENT, f"unknown framework {framework_id!r} (removed after its failover timeout?)")
        record.update(name=name, failover_timeout_s=failover_s, connected=True, disconnected_ns=None)
        self._put(t, self._fw, framework_id, record)
        return record

    def _disconnect(self, t, now: int, args) -> dict:
        (framework_id,) = _args(args, 1)
        record = self._framework(t, _id(framework_id, "framework id"))
        if record["connected"]:
            record.update(connected=False, disconnected_ns=now)
            self._put(t, self._fw, record["id"], record)
        return record

    def _remove_framework(self, t, now: int, args) -> list:
        (framework_id,) = _args(args, 1)
        framework_id = _id(framework_id, "framework id")
        self._framework(t, framework_id)
        counters = self._counters(t)
        to_kill = []
        for task_id in self._prefix_ids(t, self._fw_tasks, framework_id):
            task = self._get(t, self._tasks, task_id)
            if task["state"] in ACTIVE:
                to_kill.append([task_id, task["agent_id"]])
            self._forget_task(t, task, counters)
        self._put_counters(t, counters)
        t.delete(framework_id.encode(), db=self._fw)
        return to_kill

    def _forget_task(self, t, task: dict, counters: dict) -> None:
        task_id = task["id"]
        t.delete(task_id.encode(), db=self._tasks)
        t.delete(_key(task["framework_id"], task_id), db=self._fw_tasks)
        if task["state"] in ACTIVE:
            t.delete(_key(task["agent_id"], task_id), db=self._agent_tasks)
        if task.get("done_seq") is not None:
            t.delete(_SEQ.pack(task["done_seq"]), db=self._done)
            counters["done_count"] -= 1
        self._count(counters, task["state"], -1)

    # -- agents -------------------------------------------------------------------------

    def _register_agent(self, t, now: int, args) -> dict:
        agent_id, node_id, address, total = _args(args, 4)
        agent_id = _id(agent_id, "agent id")
        record = self._get(t, self._agents, agent_id) or {"id": agent_id, "registered_ns": now}
        record.update(node_id=_text(node_id, "node id", limits.id_length_max_bytes, empty_ok=True),
                      address=_text(address, "agent address", limits.address_length_max_bytes, empty_ok=True),
                      resources=resources(total), state=model.AGENT_REGISTERED, changed_ns=now)
        self._put(t, self._agents, agent_id, record)
        return record

    def _agent_unreachable(self, t, now: int, args) -> list:
        agent_id, seed = _args(args, 2)
        agent = self._agent(t, _id(agent_id, "agent id"))
        if type(seed) is not bytes or not 8 <= len(seed) <= 32:
            raise _Fail(E.EINVAL, "bad uuid seed")
        agent.update(state=model.AGENT_UNREACHABLE, changed_ns=now)
        self._put(t, self._agents, agent["id"], agent)
        counters = self._counters(t)
        statuses = []
        for task_id in self._prefix_ids(t, self._agent_tasks, agent["id"]):
            task = self._get(t, self._tasks, task_id)
            status = {"task_id": task_id, "state": int(TaskState.TASK_LOST), "reason": model.REASON_AGENT_LOST,
                      "message": f"agent {agent['id']} ({agent['node_id']}) stopped heartbeating",
                      "uuid": lost_uuid(seed, task_id), "timestamp": now / 1e9}
            statuses.append(self._set_status(t, task, task_status(status), now, counters))
        self._put_counters(t, counters)
        return statuses

    # -- tasks ------------------------------------------------------------------------

    def _launch(self, t, now: int, args) -> dict:
        framework_id, agent_id, spec, uuid = _args(args, 4)
        framework = self._framework(t, _id(framework_id, "framework id"))
        agent = self._agent(t, _id(agent_id, "agent id"))
        spec = task_spec(spec)
        uuid = _uuid(uuid)
        if agent["state"] != model.AGENT_REGISTERED:
            raise _Fail(E.EAGAIN, f"agent {agent_id!r} is unreachable")
        task_id = spec["task_id"]
        if t.get(task_id.encode(), db=self._tasks) is not None:
            raise _Fail(E.EEXIST, f"task id {task_id!r} is taken")
        status = task_status({"task_id": task_id, "framework_id": framework["id"], "agent_id": agent_id,
                              "node_id": agent["node_id"], "state": int(TaskState.TASK_STAGING),
                              "uuid": uuid, "timestamp": now / 1e9})
        task = {"id": task_id, "framework_id": framework["id"], "agent_id": agent_id, "node_id": agent["node_id"],
                "spec": spec, "state": status["state"], "status": status,
                "acked": True,   # STAGING is not an update the framework is sent (as Mesos)
                "history": [[status["state"], now]], "launched_ns": now, "done_seq": None}
        self._put(t, self._tasks, task_id, task)
        t.put(_key(framework["id"], task_id), b"", db=self._fw_tasks)
        t.put(_key(agent_id, task_id), b"", db=self._agent_tasks)
        counters = self._counters(t)
        self._count(counters, task["state"], +1)
        self._put_counters(t, counters)
        return task

    def _update(self, t, now: int, args) -> list:
        (status,) = _args(args, 1)
        status = task_status(status)
        task = self._task(t, status["task_id"])
        if status["agent_id"] and status["agent_id"] != task["agent_id"]:
            raise _Fail(E.EINVAL, f"task {task['id']!r} runs on agent {task['agent_id']!r}, "
                                  f"not {status['agent_id']!r}")
        if status["uuid"] == task["status"]["uuid"]:
            return [task, False]
        if task["state"] in TERMINAL:
            raise _Fail(E.ESTALE, f"task {task['id']!r} is already {TaskState(task['state']).name}")
        counters = self._counters(t)
        self._set_status(t, task, status, now, counters)
        self._put_counters(t, counters)
        return [task, True]

    def _set_status(self, t, task: dict, status: dict, now: int, counters: dict) -> dict:
        """Make ``status`` the task's latest (an active task's only)."""
        assert task["state"] in ACTIVE
        status.update(framework_id=task["framework_id"], agent_id=task["agent_id"], node_id=task["node_id"])
        self._count(counters, task["state"], -1)
        self._count(counters, status["state"], +1)
        task.update(state=status["state"], status=status, acked=False)
        task["history"] = (task["history"] + [[status["state"], now]])[-limits.status_history_max:]
        if status["state"] in TERMINAL:
            t.delete(_key(task["agent_id"], task["id"]), db=self._agent_tasks)
        self._put(t, self._tasks, task["id"], task)
        return status

    def _ack(self, t, now: int, args) -> dict:
        framework_id, task_id, uuid = _args(args, 3)
        task = self._task(t, _id(task_id, "task id"))
        if task["framework_id"] != _id(framework_id, "framework id"):
            raise _Fail(E.EINVAL, f"task {task_id!r} belongs to another framework")
        if _uuid(uuid) != task["status"]["uuid"]:
            raise _Fail(E.ESTALE, f"{uuid.hex()} is not the latest update of task {task_id!r}")
        if task["acked"]:
            return task
        task["acked"] = True
        if task["state"] not in TERMINAL:   # the counters change only when a task completes
            self._put(t, self._tasks, task_id, task)
            return task
        counters = self._counters(t)
        counters["done_seq"] += 1
        counters["done_count"] += 1
        task["done_seq"] = counters["done_seq"]
        t.put(_SEQ.pack(task["done_seq"]), task_id.encode(), db=self._done)
        self._put(t, self._tasks, task_id, task)
        self._prune_done(t, counters)
        self._put_counters(t, counters)
        return task

    def _prune_done(self, t, counters: dict) -> None:
        """Forget the oldest completed tasks beyond ``completed_tasks_max``."""
        while counters["done_count"] > limits.completed_tasks_max:
            with t.cursor(db=self._done) as cur:
                assert cur.first()
                task_id = bytes(cur.value()).decode()
            self._forget_task(t, self._get(t, self._tasks, task_id), counters)

    # -- reads -----------------------------------------------------------------------------

    def _get_framework(self, t, args):
        (framework_id,) = _args(args, 1)
        return self._get(t, self._fw, _id(framework_id, "framework id"))

    def _list_frameworks(self, t, args) -> list:
        _args(args, 0)
        return [model.unpack(v) for _, v in t.cursor(db=self._fw)]

    def _get_agent(self, t, args):
        (agent_id,) = _args(args, 1)
        return self._get(t, self._agents, _id(agent_id, "agent id"))

    def _list_agents(self, t, args) -> list:
        _args(args, 0)
        return [model.unpack(v) for _, v in t.cursor(db=self._agents)]

    def _get_task(self, t, args):
        (task_id,) = _args(args, 1)
        return self._get(t, self._tasks, _id(task_id, "task id"))

    def _list_tasks(self, t, args) -> list:
        framework_id, agent_id, after, limit = _args(args, 4)
        limit = _int(limit, 1, 100_000, "limit")
        if after is not None:
            after = _id(after, "after")
        if agent_id is not None:
            ids = self._prefix_ids(t, self._agent_tasks, _id(agent_id, "agent id"))
        elif framework_id is not None:
            ids = self._prefix_ids(t, self._fw_tasks, _id(framework_id, "framework id"))
        else:
            ids = [bytes(k).decode() for k in t.cursor(db=self._tasks).iternext(values=False)]
        if after is not None:
            ids = [i for i in ids if i > after]
        page = ids[:limit]
        return [[self._get(t, self._tasks, i) for i in page], len(ids) <= limit]

    def _counts(self, t, args) -> dict:
        _args(args, 0)
        counters = self._counters(t)
        return {"tasks_by_state": dict(counters["by_state"]), "completed": counters["done_count"],
                "frameworks": t.stat(self._fw)["entries"], "agents": t.stat(self._agents)["entries"]}


def check_invariants(st: SchedState, txn) -> None:
    """Assert the module docstring's invariants over the whole state (tests)."""
    tasks = {bytes(k).decode(): model.unpack(v) for k, v in txn.cursor(db=st._tasks)}
    frameworks = {bytes(k).decode() for k in txn.cursor(db=st._fw).iternext(values=False)}
    agents = {bytes(k).decode(): model.unpack(v) for k, v in txn.cursor(db=st._agents)}
    fw_index = {tuple(bytes(k).decode().split("\0")) for k in txn.cursor(db=st._fw_tasks).iternext(values=False)}
    agent_index = {tuple(bytes(k).decode().split("\0"))
                   for k in txn.cursor(db=st._agent_tasks).iternext(values=False)}
    assert fw_index == {(t["framework_id"], i) for i, t in tasks.items()}, "framework index"
    assert agent_index == {(t["agent_id"], i) for i, t in tasks.items() if t["state"] in ACTIVE}, "agent index"
    by_state: dict = {}
    for task_id, task in tasks.items():
        assert task["framework_id"] in frameworks, f"task {task_id} has no framework"
        assert task["status"]["state"] == task["state"] and task["status"]["task_id"] == task_id
        by_state[TaskState(task["state"]).name] = by_state.get(TaskState(task["state"]).name, 0) + 1
        if task["state"] in ACTIVE:
            assert agents[task["agent_id"]]["state"] == model.AGENT_REGISTERED, f"active task {task_id} unreachable"
    done = {bytes(v).decode() for _, v in txn.cursor(db=st._done)}
    assert done == {i for i, t in tasks.items() if t["state"] in TERMINAL and t["acked"]}, "done ring"
    counters = st._counters(txn)
    assert counters["done_count"] == len(done) <= limits.completed_tasks_max
    assert counters["by_state"] == by_state, (counters["by_state"], by_state)
