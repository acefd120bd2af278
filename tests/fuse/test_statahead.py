"""Stat-ahead on a real mount (3 metad + a mount, real FUSE): a caller
stat'ing the files of one directory one by one costs a few batched round
trips, not one per file (the mount's Prometheus metrics say so); a change
made through another mount is still seen within attr_cache + attr_timeout
while stat-ahead runs; and the mount's own chmod, unlink and rename are
never shadowed by a stat-ahead answer asked for before them."""

from __future__ import annotations

import os
import random
import threading
import time
import urllib.request

import pytest

from cistern.fuse.testing import mounted_cluster

pytestmark = [pytest.mark.timeout(300)]


@pytest.fixture(scope="module")
def mc(tmp_path_factory):
    with mounted_cluster(tmp_path_factory.mktemp("statahead"), nodes=0, metrics=True) as cluster:
        yield cluster


def metrics(mount) -> dict:
    """The mount's counters and gauges this test reads, by name (and label)."""
    text = urllib.request.urlopen(f"http://{mount.metrics_address}/metrics", timeout=10).read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith(("cistern_fuse_attr_cache_total", "cistern_fuse_statahead", "cistern_fuse_metadata")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def delta(after: dict, before: dict) -> dict:
    short = {'cistern_fuse_attr_cache_total{result="hit"}': "hits",
             'cistern_fuse_attr_cache_total{result="miss"}': "misses",
             "cistern_fuse_statahead_passes_total": "passes",
             "cistern_fuse_statahead_entries_total": "entries",
             "cistern_fuse_metadata_batches_sent": "round_trips"}
    return {short[k]: after[k] - before.get(k, 0.0) for k in short if k in after}


def make_files(mc, directory: str, n: int) -> list[str]:
    """``n`` empty files made through the client, not the mount (its caches
    know nothing of them); their names in stat order."""
    names = [f"f{i}" for i in range(n)]
    with mc.client() as c:
        c.mkdir(directory, 0o777)
        for f in [c.futures.create(f"{directory}/{name}", 0o644, exclusive=True) for name in names]:
            f.result()
    return names


def test_a_traversal_costs_a_few_round_trips_not_one_per_file(mc, tmp_path):
    n = 800
    names = make_files(mc, "/sweep", n)
    off = mc.mount_again(tmp_path / "off", options=mc.options + ("statahead=0",), metrics=True)
    for mount in (mc.mount, off):
        before = metrics(mount)
        for name in names:                              # one stat at a time, as ls -l or mdtest does
            assert os.stat(mount.path("sweep", name)).st_size == 0
        got = delta(metrics(mount), before)
        if mount is off:
            assert got["misses"] >= n and got["round_trips"] >= n * 0.9 and got.get("passes", 0) == 0, got
        else:
            assert got["passes"] >= 1 and got["entries"] >= n * 0.9, got
            assert got["misses"] < n / 8 and got["hits"] >= n * 0.85, got
            assert got["round_trips"] < n / 8, got      # each miss is one; a pass's batches a few more


def test_a_change_through_another_mount_is_seen_within_the_cache_times_during_stat_ahead(mc, tmp_path):
    n = 400
    names = make_files(mc, "/seen", n)
    other = mc.mount_again(tmp_path / "other")
    bound_s = 1.0 + 1.0 + 1.5       # attr_cache (1 s) + the kernel's attr_timeout (1 s) + a busy machine
    stop = threading.Event()
    sweeps = [0]

    def sweep():
        while not stop.is_set():
            for name in names:
                os.stat(mc.mount.path("seen", name))
            sweeps[0] += 1

    before = metrics(mc.mount)
    sweeper = threading.Thread(target=sweep, daemon=True)
    sweeper.start()
    try:
        time.sleep(1.5)
        for k, mode in enumerate((0o600, 0o640, 0o604, 0o660, 0o606)):
            name = names[(k * 97) % n]
            os.chmod(other.path("seen", name), mode)
            changed = time.monotonic()
            while os.stat(mc.mount.path("seen", name)).st_mode & 0o777 != mode:
                assert time.monotonic() - changed < bound_s, f"{name}: mode {mode:o} not seen in {bound_s} s"
                time.sleep(0.02)
            time.sleep(random.uniform(0.1, 0.6))
    finally:
        stop.set()
        sweeper.join(30)
    got = delta(metrics(mc.mount), before)
    assert sweeps[0] >= 2 and got["passes"] >= 2 and got["hits"] > got["misses"], (sweeps, got)


def test_the_mounts_own_changes_are_never_shadowed_by_stat_ahead(mc, tmp_path):
    # The kernel asks the mount at every stat (no kernel caching), and the
    # mount's cache keeps answers long: a stat-ahead answer asked for before
    # a change and cached after it would show at the next stat.
    mount = mc.mount_again(tmp_path / "own", options=mc.options + ("attr_timeout=0", "entry_timeout=0",
                                                                    "attr_cache=5"), metrics=True)
    n = 1500
    names = make_files(mc, "/own", n)
    path = lambda name: mount.path("own", name)     # noqa: E731
    stop = threading.Event()
    errors: list = []

    def sweep():
        while not stop.is_set():
            for name in names:
                try:
                    os.stat(path(name))
                except FileNotFoundError:
                    pass                 # unlinked or renamed by the test meanwhile
                except OSError as e:
                    errors.append(e)

    def check(expected: dict, gone: set) -> None:
        # Every change so far, again: a stale answer may land after the first look.
        for name, mode in expected.items():
            assert os.stat(path(name)).st_mode & 0o777 == mode, (name, oct(mode))
        for name in gone:
            assert not os.path.lexists(path(name)), name

    before = metrics(mount)
    sweeper = threading.Thread(target=sweep, daemon=True)
    sweeper.start()
    rng = random.Random(4)
    alive = list(names)
    expected: dict = {}      # name -> mode, of the names this test changed
    gone: set = set()
    try:
        time.sleep(0.5)
        for i in range(40):
            # A rename empties the cache: the sweeper misses again and a
            # pass starts, which the next changes race.
            old = alive.pop(rng.randrange(len(alive)))
            new = f"r{i}"
            ino = os.stat(path(old)).st_ino
            os.rename(path(old), path(new))
            expected[new] = expected.pop(old, 0o644)
            gone.add(old)
            assert os.stat(path(new)).st_ino == ino
            time.sleep(rng.uniform(0.0, 0.03))
            target = alive[rng.randrange(len(alive))]
            expected[target] = rng.choice((0o600, 0o640, 0o604, 0o444, 0o755))
            os.chmod(path(target), expected[target])
            victim = alive.pop(rng.randrange(len(alive)))
            os.unlink(path(victim))
            expected.pop(victim, None)
            gone.add(victim)
            if target == victim:
                continue
            check(expected, gone)
        time.sleep(0.3)
        check(expected, gone)
    finally:
        stop.set()
        sweeper.join(30)
    assert not errors, errors[:3]
    got = delta(metrics(mount), before)
    assert got["passes"] >= 10, got
