"""The pure parts of task isolation: how an exit record reads, the task's
environment, the CFS quota, the capped log and its tail, cgroup detection."""

import json
import os

from cistern.scheduler import cgroups, isolation, shim
from cistern.scheduler.proto import scheduler_pb2 as pb


def record(**kw):
    base = {"exit_code": 0, "signal": 0, "oom_kills": 0, "oom_killed": False, "pids_limit_hits": 0,
            "error": "", "error_stage": "", "finished_at": 1.0}
    base.update(kw)
    return base


def test_classify_names_each_way_a_task_ends():
    assert isolation.classify(record(), False) == ("finished", "", "exited 0")
    assert isolation.classify(record(exit_code=2), False) == ("failed", "non-zero exit", "exited 2")
    assert isolation.classify(record(exit_code=139, signal=11), False) == \
        ("failed", "non-zero exit", "killed by signal 11 (SIGSEGV)")
    assert isolation.classify(record(exit_code=137, signal=9, oom_kills=1), False)[:2] == ("failed", "memory limit")
    assert isolation.classify(record(exit_code=137, signal=9, oom_kills=1, oom_killed=True), True)[:2] == \
        ("failed", "memory limit")                         # the shim's OOM kill wins over a later kill request
    assert isolation.classify(record(exit_code=137, signal=9), True)[:2] == ("killed", "killed")
    assert isolation.classify(record(exit_code=127, error_stage="exec", error="No such file: x"), False) == \
        ("failed", "bad command", "cannot run the command: No such file: x")
    assert isolation.classify(record(exit_code=126, error_stage="setup", error="mount /mnt"), False)[:2] == \
        ("failed", "setup failed")
    assert isolation.classify(record(error_stage="killed", error="killed before it started"), True)[:2] == \
        ("killed", "killed")
    assert isolation.classify(record(exit_code=1, pids_limit_hits=3), False)[2] == \
        "exited 1; hit its pids limit 3 time(s)"


def test_task_env_follows_the_contract_and_the_contract_wins():
    spec = pb.TaskSpec(task_id="t1", argv=["x"], env={"A": "1", "HOME": "/root", "CISTERN_TASK_ID": "fake"})
    inputs = [pb.InputBlock(block_id=b"\x01" * 16, path="/f", file_offset=0, length=10),
              pb.InputBlock(block_id=b"\x02" * 16, path="/f", file_offset=10, length=5)]
    env = isolation.task_env(spec, inputs, {"CISTERN_CLUSTER": "a:1"}, sandbox="/s")
    assert env["A"] == "1" and env["HOME"] == "/s" and env["CISTERN_TASK_ID"] == "t1"
    assert env["CISTERN_CLUSTER"] == "a:1" and env["CISTERN_OUTPUT"] == "/s/out"
    assert (env["CISTERN_INPUT"], env["CISTERN_INPUT_FILE"], env["CISTERN_INPUT_OFFSET"],
            env["CISTERN_INPUT_LENGTH"]) == ("/s/input/0", "/f", "0", "10")
    assert json.loads(env["CISTERN_INPUTS"])[1] == {"path": "/s/input/1", "file": "/f", "offset": 10,
                                                    "length": 5, "block_id": "02" * 16}
    bare = isolation.task_env(pb.TaskSpec(task_id="t2", argv=["x"]), [], sandbox="/s")
    assert "CISTERN_INPUT" not in bare and json.loads(bare["CISTERN_INPUTS"]) == []


def test_cpu_quota_is_cpus_periods_with_the_kernels_floor():
    assert cgroups.cpu_quota_us(0.5) == 50_000
    assert cgroups.cpu_quota_us(2) == 200_000
    assert cgroups.cpu_quota_us(0.001) == cgroups.cpu_quota_min_us


def test_capped_log_keeps_the_newest_bytes_in_two_files(tmp_path):
    path = str(tmp_path / "stdout")
    log = shim.CappedLog(path, 100)
    written = b"".join(b"%05d\n" % i for i in range(1000))
    for at in range(0, len(written), 37):
        log.write(written[at:at + 37])
    log.close()
    assert (tmp_path / "stdout").stat().st_size <= 100 and (tmp_path / "stdout.1").stat().st_size <= 100
    assert isolation._tail(path, 150) == written[-150:]
    assert isolation._tail(path, 10) == written[-10:]
    big = shim.CappedLog(str(tmp_path / "big"), 10)
    big.write(b"0123456789abcdef")
    big.close()
    assert isolation._tail(str(tmp_path / "big"), 100) == b"6789abcdef"


def test_detect_prefers_v1_controllers_and_falls_back_to_v2(tmp_path):
    v1 = tmp_path / "mounts_v1"
    v1.write_text("cgroup /sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct 0 0\n"
                  "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
                  "cgroup /sys/fs/cgroup/pids cgroup rw,pids 0 0\n"
                  "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n")
    layout = cgroups.detect(str(v1))
    assert layout == {"version": 1, "mounts": {"cpu": "/sys/fs/cgroup/cpu,cpuacct",
                                               "cpuacct": "/sys/fs/cgroup/cpu,cpuacct",
                                               "memory": "/sys/fs/cgroup/memory", "pids": "/sys/fs/cgroup/pids"}}
    group = cgroups.for_task(layout, "cistern", "a1", "t1")
    assert group.dirs["memory"] == "/sys/fs/cgroup/memory/cistern/a1/t1"
    assert cgroups.from_json(group.to_json()).dirs == group.dirs
    root = tmp_path / "unified"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    v2 = tmp_path / "mounts_v2"
    v2.write_text(f"cgroup2 {root} cgroup2 rw 0 0\n")
    assert cgroups.detect(str(v2)) == {"version": 2, "mount": str(root)}
    (root / "cgroup.controllers").write_text("cpu io\n")
    try:
        cgroups.detect(str(v2))
        raise AssertionError("detect accepted a hierarchy without memory and pids")
    except cgroups.CgroupsUnavailable as e:
        assert "cpu, memory and pids" in e.strerror


def test_v2_cgroup_writes_its_limits_and_reads_its_counters(tmp_path):
    """cgroup v2 cannot run on this project's machines (v1 holds the
    controllers), so its file protocol is checked on a plain directory."""
    mount = tmp_path / "unified"
    task = mount / "cistern" / "a1" / "t1"
    task.mkdir(parents=True)
    # What the kernel would offer (a knob it lacks, memory.swap.max here, is skipped).
    for d in (mount, mount / "cistern", mount / "cistern" / "a1"):
        (d / "cgroup.subtree_control").write_text("")
    for knob in ("cpu.max", "memory.max", "memory.oom.group", "pids.max", "cgroup.procs"):
        (task / knob).write_text("")
    group = cgroups.for_task({"version": 2, "mount": str(mount)}, "cistern", "a1", "t1")
    assert group.dir == str(task)
    group.create(1.5, 64 << 20, 100)
    enable = "+cpu +memory +pids"
    assert (mount / "cgroup.subtree_control").read_text() == enable
    assert (mount / "cistern" / "a1" / "cgroup.subtree_control").read_text() == enable
    assert (task / "cpu.max").read_text() == "150000 100000"
    assert ((task / "memory.max").read_text(), (task / "pids.max").read_text()) == (str(64 << 20), "100")
    assert (task / "memory.oom.group").read_text() == "1"
    assert not (task / "memory.swap.max").exists()       # an absent knob is skipped, never created
    (task / "memory.events").write_text("low 0\nhigh 0\nmax 7\noom 2\noom_kill 2\n")
    (task / "pids.events").write_text("max 3\n")
    (task / "cpu.stat").write_text("usage_usec 2500000\nuser_usec 1\n")
    (task / "memory.current").write_text("4096\n")
    (task / "pids.current").write_text("5\n")
    assert (group.oom_kills(), group.memory_limit_hits(), group.pids_limit_hits()) == (2, 7, 3)
    assert group.usage() == {"mem_bytes": 4096, "mem_peak_bytes": 0, "cpu_s": 2.5, "pids": 5}
    assert group.procs() == set() and group.kill_all(1.0)
    assert cgroups.from_json(group.to_json()).dir == group.dir


def test_v1_cgroup_reads_the_oom_kill_counter_and_pids_events(tmp_path):
    dirs = {c: str(tmp_path / c / "t1") for c in ("cpu", "memory", "pids")}
    for d in dirs.values():
        os.makedirs(d)
    group = cgroups.CgroupV1(dirs)
    open(os.path.join(dirs["memory"], "memory.oom_control"), "w").write("oom_kill_disable 0\nunder_oom 0\noom_kill 4\n")
    open(os.path.join(dirs["pids"], "pids.events"), "w").write("max 9\n")
    assert (group.oom_kills(), group.pids_limit_hits()) == (4, 9)
    os.unlink(os.path.join(dirs["memory"], "memory.oom_control"))
    assert group.oom_kills() == -1                      # an old kernel: unknown, not zero


def test_inotify_events_of_one_read_are_found_past_their_names():
    event = isolation._DirEvents._event
    name = b"started.json\0\0\0\0"                 # the kernel pads names to a multiple of 16
    data = event.pack(3, 0x80, 0, len(name)) + name + event.pack(4, 0x8000, 0, 0) + event.pack(5, 0x80, 0, 0)
    offsets = list(isolation._event_offsets(data, event.size, event))
    assert [event.unpack_from(data, o)[0] for o in offsets] == [3, 4, 5]
    assert list(isolation._event_offsets(data[:event.size - 1], event.size, event)) == []
