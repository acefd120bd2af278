"""The agent's runtime dir (task dirs and sandboxes) on tmpfs: made private,
recorded so a restarted agent finds it again, never taken over from someone
else, and removed by a clean stop only when no task is left in it."""

import os
import shutil

import pytest

from cistern.scheduler import isolation

TMPFS = "/dev/shm"


@pytest.fixture
def work_dir(tmp_path):
    d = tmp_path / "agent"
    d.mkdir()
    yield str(d)
    record = d / "runtime_dir"
    if record.exists():
        shutil.rmtree(record.read_text().strip(), ignore_errors=True)


def test_a_private_dir_on_tmpfs_is_made_recorded_and_found_again(work_dir):
    run_dir = isolation.runtime_dir(work_dir, TMPFS)
    assert os.path.dirname(run_dir) == TMPFS
    st = os.lstat(run_dir)
    assert (st.st_mode & 0o777, st.st_uid) == (0o700, os.geteuid())
    assert isolation.runtime_dir(work_dir, TMPFS) == run_dir          # a restarted agent
    assert isolation.runtime_dir(work_dir, None) == run_dir           # found without making one


def test_a_parent_that_is_not_tmpfs_keeps_tasks_in_the_work_dir(work_dir, tmp_path):
    assert isolation.runtime_dir(work_dir, str(tmp_path)) == work_dir
    assert isolation.runtime_dir(work_dir, None) == work_dir
    assert not os.path.exists(os.path.join(work_dir, "runtime_dir"))


@pytest.mark.parametrize("spoil", ["open to others", "a symlink", "gone"])
def test_a_recorded_dir_that_is_not_ours_alone_is_not_used(work_dir, spoil):
    run_dir = isolation.runtime_dir(work_dir, TMPFS)
    if spoil == "open to others":
        os.chmod(run_dir, 0o777)
    elif spoil == "a symlink":
        os.rmdir(run_dir)
        os.symlink("/", run_dir)
    else:
        os.rmdir(run_dir)
    fresh = isolation.runtime_dir(work_dir, TMPFS)
    try:
        assert fresh != run_dir and os.path.dirname(fresh) == TMPFS
        assert oct(os.lstat(fresh).st_mode & 0o777) == oct(0o700)
    finally:
        if os.path.islink(run_dir):
            os.unlink(run_dir)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)


def test_a_clean_stop_removes_the_dir_only_when_no_task_is_left(work_dir):
    run_dir = isolation.runtime_dir(work_dir, TMPFS)
    os.makedirs(os.path.join(run_dir, "tasks", "t1"))
    isolation.remove_runtime_dir(work_dir)
    assert os.path.isdir(os.path.join(run_dir, "tasks", "t1"))       # a task another agent will recover
    os.rmdir(os.path.join(run_dir, "tasks", "t1"))
    isolation.remove_runtime_dir(work_dir)
    assert not os.path.exists(run_dir)
    assert isolation.runtime_dir(work_dir, None) == work_dir
