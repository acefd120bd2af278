"""The scheduler's replicated operations: codes, argument shapes, records.
The contract between the master (which produces them) and ``state.py``
(which applies them on every metadata replica).

Operations ride the metadata Raft log (codes 1000-1999, routed to
``SchedState`` by the replica) and use its encoding (msgpack, never pickle):
``args`` is a list whose first item is the credentials ``[uid, gid, []]``
(root only: the master writes as root; anything else is EPERM). Results are
``(errno, message, value)`` as in ``metadata/model.py``; a failed write
changed nothing. Times come from the Raft entry's ``time_ns`` (the leader's
clock); ids and uuids are chosen by the leader and carried in the args, so
every replica applies the same bytes to the same state.

Records (msgpack maps, the values reads return)
    framework  ``{"id", "name", "failover_timeout_s", "connected",
               "disconnected_ns" (None while connected), "registered_ns"}``
    agent      ``{"id", "node_id", "address", "resources": [cpus, mem_bytes,
               disk_bytes], "state": "registered"|"unreachable",
               "registered_ns", "changed_ns"}``
    task       ``{"id", "framework_id", "agent_id", "node_id", "spec",
               "state" (TaskState number), "status" (the latest status map),
               "acked" (its framework acknowledged the latest status),
               "history": [[state, time_ns], ...] (last few), "launched_ns"}``
    spec       ``{"task_id", "name", "argv": [str], "env": {str: str},
               "resources": [cpus, mem_bytes, disk_bytes], "inputs":
               [[block_id, path, file_offset, length], ...], "network",
               "output_dir", "output_bytes_max"}``
    status     ``{"task_id", "framework_id", "agent_id", "state", "reason",
               "message", "uuid", "timestamp", "exit_code", "stdout_tail",
               "stderr_tail", "bytes_local", "bytes_remote", "started_at",
               "finished_at"}`` (the fields of the proto's TaskStatus)

Task lifecycle (as Mesos): STAGING (launch committed) -> STARTING ->
RUNNING -> one terminal state (FINISHED, FAILED, KILLED, LOST, ERROR). A
terminal task stays until its framework acknowledges the terminal update;
then it is kept among the last ``completed_tasks_max`` completed tasks (for
explicit reconciliation and status) and the oldest are forgotten.
"""

from __future__ import annotations

import enum

from cistern.metadata.model import ROOT_CRED, encode_args, pack, unpack  # one encoding end to end

__all__ = ["SchedOp", "TaskState", "TERMINAL", "ACTIVE", "ROOT_CRED", "encode_args", "pack", "unpack",
           "AGENT_REGISTERED", "AGENT_UNREACHABLE", "READ_OPS"]

CODE_RANGE = range(1000, 2000)


class SchedOp(enum.IntEnum):
    """Operation codes: 1000-1099 reads, 1100-1999 writes."""

    # Reads (linearizable on the leader, or stale from any replica's applied state).
    GET_FRAMEWORK = 1000   # (cred, framework_id) -> framework | None
    LIST_FRAMEWORKS = 1001 # (cred,) -> [framework, ...]
    GET_AGENT = 1002       # (cred, agent_id) -> agent | None
    LIST_AGENTS = 1003     # (cred,) -> [agent, ...]
    GET_TASK = 1004        # (cred, task_id) -> task | None (active, unacknowledged or recently completed)
    LIST_TASKS = 1005      # (cred, framework_id|None, agent_id|None, after task_id|None, limit) -> [[task, ...], done]
                           #   agent_id given: that agent's ACTIVE tasks; framework_id given: all its tasks
    COUNTS = 1006          # (cred,) -> {"tasks_by_state": {name: n}, "frameworks": n, "agents": n, "completed": n}

    # Writes (committed through Raft).
    FRAMEWORK_SUBSCRIBE = 1100   # (cred, framework_id, name, failover_timeout_s, new: bool) -> framework
                                 #   new: EEXIST if the id exists; not new: ENOENT if unknown. Marks it connected.
    FRAMEWORK_DISCONNECT = 1101  # (cred, framework_id) -> framework (connected False, disconnected_ns = now)
    FRAMEWORK_REMOVE = 1102      # (cred, framework_id) -> [[task_id, agent_id], ...] its active tasks (to kill);
                                 #   the framework and all its tasks are forgotten
    AGENT_REGISTER = 1110        # (cred, agent_id, node_id, address, [cpus, mem, disk]) -> agent (registered)
    AGENT_UNREACHABLE = 1111     # (cred, agent_id, uuid_seed bytes) -> [status, ...]: the agent is unreachable and
                                 #   each of its active tasks LOST ("agent lost"); uuids derive from the seed
    TASK_LAUNCH = 1120           # (cred, framework_id, agent_id, spec, uuid) -> task (STAGING)
                                 #   ENOENT unknown framework/agent, EAGAIN agent unreachable, EEXIST task id taken
    TASK_UPDATE = 1121           # (cred, status) -> [task, changed: bool]
                                 #   ENOENT unknown task; ESTALE when the task is already terminal with another uuid
                                 #   (the master told the agent to kill it: never a second terminal state);
                                 #   the same uuid again is a no-op (changed False)
    TASK_ACK = 1122              # (cred, framework_id, task_id, uuid) -> task; ESTALE when uuid is not the latest


READ_OPS = frozenset(op for op in SchedOp if op < 1100)
assert all(op in CODE_RANGE for op in SchedOp)


class TaskState(enum.IntEnum):
    """The proto's TaskState numbers."""

    TASK_UNKNOWN = 0
    TASK_STAGING = 1
    TASK_STARTING = 2
    TASK_RUNNING = 3
    TASK_FINISHED = 4
    TASK_FAILED = 5
    TASK_KILLED = 6
    TASK_LOST = 7
    TASK_ERROR = 8


TERMINAL = frozenset({TaskState.TASK_FINISHED, TaskState.TASK_FAILED, TaskState.TASK_KILLED,
                      TaskState.TASK_LOST, TaskState.TASK_ERROR})
ACTIVE = frozenset({TaskState.TASK_STAGING, TaskState.TASK_STARTING, TaskState.TASK_RUNNING})

AGENT_REGISTERED = "registered"
AGENT_UNREACHABLE = "unreachable"

# Reasons (TaskStatus.reason).
REASON_MEMORY_LIMIT = "memory limit"
REASON_AGENT_LOST = "agent lost"
REASON_KILLED_BY_FRAMEWORK = "killed by framework"
REASON_FRAMEWORK_REMOVED = "framework removed"
REASON_BAD_COMMAND = "bad command"
REASON_NON_ZERO_EXIT = "non-zero exit"
REASON_AGENT_RESTARTED = "agent restarted"
REASON_RECONCILIATION = "reconciliation"
REASON_INVALID_LAUNCH = "invalid launch"
REASON_GAVE_UP = "the master gave up on it"   # a kill's reason: the task was LOST or its framework removed

STATUS_FIELDS = ("task_id", "framework_id", "agent_id", "state", "reason", "message", "uuid", "timestamp",
                 "exit_code", "stdout_tail", "stderr_tail", "bytes_local", "bytes_remote", "started_at",
                 "finished_at", "node_id")
SPEC_FIELDS = ("task_id", "name", "argv", "env", "resources", "inputs", "network", "output_dir",
               "output_bytes_max")


def sched_args(*args) -> bytes:
    """One scheduler operation's encoded arguments (root credentials first)."""
    return encode_args(ROOT_CRED, *args)

