"""The scheduler's replicated state machine (scheduler/state.py): every
operation, its errnos, idempotence, and the invariants after every step."""

import errno as E

import pytest

from cistern.metadata.store import Store
from cistern.scheduler import limits
from cistern.scheduler import model
from cistern.scheduler.model import SchedOp, TaskState
from cistern.scheduler.state import SchedState, check_invariants

CRED = [0, 0, []]
NS = 1_000_000_000


class Machine:
    """SchedState over a throwaway Store; every write checks the invariants."""

    def __init__(self, path):
        self.store = Store(str(path), sync=False)
        self.state = SchedState(self.store)
        self.now = 10 * NS
        with self.store.env.begin(write=True) as txn:
            self.state.bootstrap(txn)

    def write(self, code, *args, cred=CRED):
        self.now += NS
        with self.store.env.begin(write=True) as txn:
            result = self.state.apply(txn, self.now, code, [cred, *args])
            check_invariants(self.state, txn)
        # What the replica does: the value must survive msgpack.
        assert model.unpack(model.pack(result[2])) is not None or result[2] is None
        return result

    def ok(self, code, *args):
        err, message, value = self.write(code, *args)
        assert err == 0, message
        return value

    def read(self, code, *args):
        with self.store.env.begin() as txn:
            return self.state.read(txn, code, [CRED, *args])

    def close(self):
        self.store.close()


@pytest.fixture
def m(tmp_path):
    machine = Machine(tmp_path / "state")
    yield machine
    machine.close()


def spec(task_id="t1", **over):
    base = {"task_id": task_id, "name": "n", "argv": ["/bin/true"], "env": {"A": "1"},
            "resources": [0.5, 64 << 20, 0], "inputs": [[b"\1" * 16, "/f", 0, 10]], "network": False,
            "output_dir": "", "output_bytes_max": 0}
    base.update(over)
    return base


def status(task_id, state, uuid, **over):
    base = {"task_id": task_id, "state": int(state), "uuid": uuid, "timestamp": 1.5}
    base.update(over)
    return base


def setup_running(m, task_id="t1", agent="a1", framework="f1"):
    if m.read(SchedOp.GET_FRAMEWORK, framework)[2] is None:
        m.ok(SchedOp.FRAMEWORK_SUBSCRIBE, framework, "fw", 30.0, True)
    if m.read(SchedOp.GET_AGENT, agent)[2] is None:
        m.ok(SchedOp.AGENT_REGISTER, agent, "n-" + agent, "127.0.0.1:1", [4.0, 1 << 30, 0])
    m.ok(SchedOp.TASK_LAUNCH, framework, agent, spec(task_id), b"u0" + task_id.encode())
    task, changed = m.ok(SchedOp.TASK_UPDATE, status(task_id, TaskState.TASK_RUNNING, b"u1" + task_id.encode()))
    assert changed
    return task


# -- frameworks -----------------------------------------------------------------

def test_subscribe_new_then_resubscribe_and_disconnect(m):
    fw = m.ok(SchedOp.FRAMEWORK_SUBSCRIBE, "f1", "jobs", 30.0, True)
    assert fw["connected"] and fw["failover_timeout_s"] == 30.0 and fw["registered_ns"] == m.now
    assert m.write(SchedOp.FRAMEWORK_SUBSCRIBE, "f1", "jobs", 30.0, True)[0] == E.EEXIST
    assert m.write(SchedOp.FRAMEWORK_SUBSCRIBE, "nope", "jobs", 30.0, False)[0] == E.ENOENT
    fw = m.ok(SchedOp.FRAMEWORK_DISCONNECT, "f1")
    assert not fw["connected"] and fw["disconnected_ns"] == m.now
    again = m.ok(SchedOp.FRAMEWORK_DISCONNECT, "f1")
    assert again["disconnected_ns"] == fw["disconnected_ns"]        # idempotent: the first time stands
    fw = m.ok(SchedOp.FRAMEWORK_SUBSCRIBE, "f1", "jobs2", 5.0, False)
    assert fw["connected"] and fw["disconnected_ns"] is None and fw["name"] == "jobs2"
    assert [f["id"] for f in m.read(SchedOp.LIST_FRAMEWORKS)[2]] == ["f1"]


def test_remove_framework_returns_its_active_tasks_and_forgets_everything(m):
    setup_running(m, "t1")
    setup_running(m, "t2")
    m.ok(SchedOp.TASK_UPDATE, status("t2", TaskState.TASK_FINISHED, b"fin"))
    to_kill = m.ok(SchedOp.FRAMEWORK_REMOVE, "f1")
    assert to_kill == [["t1", "a1"]]
    assert m.read(SchedOp.GET_FRAMEWORK, "f1")[2] is None
    assert m.read(SchedOp.GET_TASK, "t1")[2] is None and m.read(SchedOp.GET_TASK, "t2")[2] is None
    assert m.read(SchedOp.COUNTS)[2]["tasks_by_state"] == {}
    assert m.write(SchedOp.FRAMEWORK_REMOVE, "f1")[0] == E.ENOENT


# -- agents ------------------------------------------------------------------------

def test_agent_register_and_reregister_updates_resources(m):
    a = m.ok(SchedOp.AGENT_REGISTER, "a1", "n1", "h:1", [2, 1 << 30, 0])
    assert a["state"] == model.AGENT_REGISTERED and a["resources"] == [2.0, 1 << 30, 0]
    a = m.ok(SchedOp.AGENT_REGISTER, "a1", "n1", "h:2", [4.0, 1 << 30, 5])
    assert a["address"] == "h:2" and a["resources"] == [4.0, 1 << 30, 5]
    assert len(m.read(SchedOp.LIST_AGENTS)[2]) == 1
    assert m.write(SchedOp.AGENT_REGISTER, "a2", "n2", "h:1", [-1, 0, 0])[0] == E.EINVAL
    assert m.write(SchedOp.AGENT_REGISTER, "", "n2", "h:1", [1, 0, 0])[0] == E.EINVAL


def test_agent_unreachable_loses_its_active_tasks_with_derived_uuids(m):
    setup_running(m, "t1")
    setup_running(m, "t2")
    setup_running(m, "t3", agent="a2")
    m.ok(SchedOp.TASK_UPDATE, status("t2", TaskState.TASK_FINISHED, b"fin"))
    lost = m.ok(SchedOp.AGENT_UNREACHABLE, "a1", b"seed5678")
    assert [s["task_id"] for s in lost] == ["t1"]
    assert lost[0]["state"] == TaskState.TASK_LOST and lost[0]["reason"] == model.REASON_AGENT_LOST
    assert lost[0]["framework_id"] == "f1" and len(lost[0]["uuid"]) == 16
    assert m.read(SchedOp.GET_AGENT, "a1")[2]["state"] == model.AGENT_UNREACHABLE
    assert m.read(SchedOp.GET_TASK, "t3")[2]["state"] == TaskState.TASK_RUNNING
    # A launch on an unreachable agent is refused; re-registration revives it.
    assert m.write(SchedOp.TASK_LAUNCH, "f1", "a1", spec("t9"), b"u")[0] == E.EAGAIN
    m.ok(SchedOp.AGENT_REGISTER, "a1", "n-a1", "h:1", [4.0, 1 << 30, 0])
    m.ok(SchedOp.TASK_LAUNCH, "f1", "a1", spec("t9"), b"u")
    assert m.write(SchedOp.AGENT_UNREACHABLE, "a1", b"short")[0] == E.EINVAL
    assert m.write(SchedOp.AGENT_UNREACHABLE, "zz", b"seed5678")[0] == E.ENOENT


def test_lost_task_reported_later_by_its_agent_is_stale_never_terminal_twice(m):
    setup_running(m, "t1")
    m.ok(SchedOp.AGENT_UNREACHABLE, "a1", b"seed5678")
    m.ok(SchedOp.AGENT_REGISTER, "a1", "n-a1", "h:1", [4.0, 1 << 30, 0])
    err, message, _ = m.write(SchedOp.TASK_UPDATE, status("t1", TaskState.TASK_FINISHED, b"late", agent_id="a1"))
    assert err == E.ESTALE and "TASK_LOST" in message
    assert m.read(SchedOp.GET_TASK, "t1")[2]["state"] == TaskState.TASK_LOST


# -- tasks --------------------------------------------------------------------------

def test_launch_creates_a_staging_task_indexed_by_framework_and_agent(m):
    m.ok(SchedOp.FRAMEWORK_SUBSCRIBE, "f1", "fw", 30.0, True)
    m.ok(SchedOp.AGENT_REGISTER, "a1", "n1", "h:1", [4.0, 1 << 30, 0])
    task = m.ok(SchedOp.TASK_LAUNCH, "f1", "a1", spec("t1", argv=["echo", "hi"]), b"u0")
    assert task["state"] == TaskState.TASK_STAGING and task["acked"] and task["node_id"] == "n1"
    assert task["spec"]["argv"] == ["echo", "hi"] and task["status"]["uuid"] == b"u0"
    tasks, done = m.read(SchedOp.LIST_TASKS, None, "a1", None, 10)[2]
    assert [t["id"] for t in tasks] == ["t1"] and done
    assert m.read(SchedOp.COUNTS)[2]["tasks_by_state"] == {"TASK_STAGING": 1}


@pytest.mark.parametrize("args, err", [
    (("nofw", "a1", spec("x"), b"u"), E.ENOENT),
    (("f1", "noagent", spec("x"), b"u"), E.ENOENT),
    (("f1", "a1", spec("x", argv=[]), b"u"), E.EINVAL),
    (("f1", "a1", spec("x", argv=[""]), b"u"), E.EINVAL),
    (("f1", "a1", spec("x", resources=[0, 64 << 20, 0]), b"u"), E.EINVAL),
    (("f1", "a1", spec("x", resources=[1.0, 0, 0]), b"u"), E.EINVAL),
    (("f1", "a1", spec("x", resources=[float("nan"), 64 << 20, 0]), b"u"), E.EINVAL),
    (("f1", "a1", spec("x", env={"A=B": "c"}), b"u"), E.EINVAL),
    (("f1", "a1", spec("x", bogus=1), b"u"), E.EINVAL),
    (("f1", "a1", spec("x", inputs=[[b"b", "/f", -1, 3]]), b"u"), E.EINVAL),
    (("f1", "a1", spec("x", argv=["a" * (limits.argv_bytes_max + 1)]), b"u"), E.EINVAL),
    (("f1", "a1", spec("x"), b""), E.EINVAL),
    (("f1", "a1", "not a spec", b"u"), E.EINVAL),
    (("f1", "a1", spec("t1"), b"u"), E.EEXIST),
])
def test_bad_launches_are_refused_and_change_nothing(m, args, err):
    setup_running(m, "t1")
    before = m.read(SchedOp.COUNTS)[2]
    assert m.write(SchedOp.TASK_LAUNCH, *args)[0] == err
    assert m.read(SchedOp.COUNTS)[2] == before


def test_status_updates_move_the_task_and_the_same_uuid_is_a_noop(m):
    setup_running(m, "t1")
    task, changed = m.ok(SchedOp.TASK_UPDATE, status("t1", TaskState.TASK_RUNNING, b"u1t1"))
    assert not changed
    task, changed = m.ok(SchedOp.TASK_UPDATE, status("t1", TaskState.TASK_FAILED, b"u2", reason="non-zero exit",
                                                     exit_code=3, stderr_tail=b"x" * 100_000))
    assert changed and task["state"] == TaskState.TASK_FAILED and not task["acked"]
    assert task["status"]["exit_code"] == 3 and len(task["status"]["stderr_tail"]) == limits.output_tail_max_bytes
    assert [s for s, _ in task["history"]] == [TaskState.TASK_STAGING, TaskState.TASK_RUNNING, TaskState.TASK_FAILED]
    # Retried by the agent (its ack was lost): applied once.
    assert m.ok(SchedOp.TASK_UPDATE, status("t1", TaskState.TASK_FAILED, b"u2"))[1] is False
    assert m.read(SchedOp.LIST_TASKS, None, "a1", None, 10)[2] == [[], True]


@pytest.mark.parametrize("st, err", [
    (status("nope", TaskState.TASK_RUNNING, b"u"), E.ENOENT),
    (status("t1", TaskState.TASK_RUNNING, b"u", agent_id="a9"), E.EINVAL),
    (status("t1", 0, b"u"), E.EINVAL),
    (status("t1", 42, b"u"), E.EINVAL),
    (status("t1", TaskState.TASK_RUNNING, ""), E.EINVAL),
    (status("t1", TaskState.TASK_RUNNING, b"u", exit_code="x"), E.EINVAL),
    (status("t1", TaskState.TASK_RUNNING, b"u", extra=1), E.EINVAL),
    ("junk", E.EINVAL),
])
def test_bad_updates_are_refused(m, st, err):
    setup_running(m, "t1")
    assert m.write(SchedOp.TASK_UPDATE, st)[0] == err
    assert m.read(SchedOp.GET_TASK, "t1")[2]["state"] == TaskState.TASK_RUNNING


def test_ack_needs_the_latest_uuid_and_completed_tasks_are_kept_then_pruned(m, monkeypatch):
    monkeypatch.setattr(limits, "completed_tasks_max", 3)
    for i in range(5):
        setup_running(m, f"t{i}")
        task = m.ok(SchedOp.TASK_ACK, "f1", f"t{i}", b"u1" + f"t{i}".encode())
        assert task["acked"]
        m.ok(SchedOp.TASK_UPDATE, status(f"t{i}", TaskState.TASK_FINISHED, b"fin"))
        assert m.write(SchedOp.TASK_ACK, "f1", f"t{i}", b"u1" + f"t{i}".encode())[0] == E.ESTALE
        assert m.write(SchedOp.TASK_ACK, "f2", f"t{i}", b"fin")[0] == E.EINVAL
        m.ok(SchedOp.TASK_ACK, "f1", f"t{i}", b"fin")
        m.ok(SchedOp.TASK_ACK, "f1", f"t{i}", b"fin")          # idempotent
    remembered = [i for i in range(5) if m.read(SchedOp.GET_TASK, f"t{i}")[2] is not None]
    assert remembered == [2, 3, 4]                            # the oldest completed are forgotten
    counts = m.read(SchedOp.COUNTS)[2]
    assert counts["completed"] == 3 and counts["tasks_by_state"] == {"TASK_FINISHED": 3}
    assert m.write(SchedOp.TASK_ACK, "f1", "t0", b"fin")[0] == E.ENOENT


def test_list_tasks_pages_by_framework(m):
    for i in range(7):
        setup_running(m, f"t{i}")
    tasks, done = m.read(SchedOp.LIST_TASKS, "f1", None, None, 3)[2]
    assert [t["id"] for t in tasks] == ["t0", "t1", "t2"] and not done
    tasks, done = m.read(SchedOp.LIST_TASKS, "f1", None, "t5", 3)[2]
    assert [t["id"] for t in tasks] == ["t6"] and done
    assert len(m.read(SchedOp.LIST_TASKS, None, None, None, 100)[2][0]) == 7


# -- the contract -------------------------------------------------------------------

def test_apply_never_raises_on_garbage_and_refuses_non_root(m):
    assert m.write(SchedOp.FRAMEWORK_SUBSCRIBE, "f", "n", 1.0, True, cred=[1000, 1000, []])[0] == E.EPERM
    with m.store.env.begin(write=True) as txn:
        assert m.state.apply(txn, 1, 1999, [CRED])[0] == E.ENOSYS
        assert m.state.apply(txn, 1, SchedOp.TASK_ACK, [])[0] == E.EINVAL
        assert m.state.apply(txn, -1, SchedOp.TASK_ACK, [CRED, "f", "t", b"u"])[0] == E.EINVAL
        assert m.state.apply(txn, 1, SchedOp.TASK_ACK, "garbage")[0] == E.EINVAL
        assert m.state.apply(txn, 1, SchedOp.FRAMEWORK_SUBSCRIBE, [CRED, None, None, None, None])[0] == E.EINVAL
        assert m.state.apply(txn, 1, SchedOp.FRAMEWORK_SUBSCRIBE, [CRED, "f", "n", 1e300, True])[0] == E.EINVAL
        assert m.state.read(txn, SchedOp.GET_TASK, [CRED, 5])[0] == E.EINVAL
        assert m.state.read(txn, 1099, [CRED])[0] == E.ENOSYS
        check_invariants(m.state, txn)


def test_same_entries_give_byte_identical_state(tmp_path):
    """Determinism: two replicas applying the same operations agree."""
    dumps = []
    for name in ("r1", "r2"):
        machine = Machine(tmp_path / name)
        setup_running(machine, "t1")
        setup_running(machine, "t2", agent="a2")
        machine.ok(SchedOp.AGENT_UNREACHABLE, "a2", b"seed5678")
        machine.ok(SchedOp.TASK_UPDATE, status("t1", TaskState.TASK_KILLED, b"k"))
        machine.ok(SchedOp.TASK_ACK, "f1", "t1", b"k")
        with machine.store.env.begin() as txn:
            dumps.append(sorted((bytes(k), bytes(v)) for name_ in
                                [b"sched_frameworks", b"sched_agents", b"sched_tasks", b"sched_done", b"sched_meta"]
                                for k, v in txn.cursor(db=machine.store.db(name_))))
        machine.close()
    assert dumps[0] == dumps[1]
