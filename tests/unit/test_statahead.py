"""The stat-ahead traversal detector (fuse/statahead.py), a pure core: when
a pass starts, where it resumes, and how a random access pattern stops it."""

from __future__ import annotations

from cistern.fuse.statahead import Detector, ahead_of

ME, OTHER = (1000, 1000, ()), (0, 0, ())


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def misses(d: Detector, n: int, who=ME, directory="/d"):
    """The passes ``n`` misses started (None where none did)."""
    return [d.miss(who, directory) for _ in range(n)]


def test_three_misses_in_a_row_in_one_directory_start_one_pass():
    d = Detector(trigger_misses=3)
    assert misses(d, 2) == [None, None]
    p = d.miss(ME, "/d")
    assert (p.who, p.directory, p.cursor) == (ME, "/d", None)
    assert misses(d, 10) == [None] * 10          # one pass at a time per (caller, directory)
    assert d.passes_started == 1


def test_misses_spread_over_directories_start_nothing():
    d = Detector(trigger_misses=3)
    for i in range(30):
        assert d.miss(ME, f"/d{i % 2}") is None    # a miss elsewhere breaks the run
    assert d.passes_started == 0
    # Another caller's misses are counted apart: two callers in one directory both trigger.
    assert [d.miss(w, "/x") for w in (ME, OTHER, ME, OTHER, ME)][-1] is not None
    assert d.miss(OTHER, "/x") is not None


def test_a_window_that_pays_off_is_followed_by_the_next_one_at_its_cursor():
    clock = Clock()
    d = Detector(trigger_misses=3, expiry_s=1.0, clock=clock)
    p = misses(d, 3)[-1]
    d.finished(p, fetched=100, cursor=b"n099")
    for _ in range(30):
        d.hit(ME, "/d")                            # the caller used the window
    p2 = misses(d, 3)[-1]                          # ... and misses past it, while it is fresh
    assert p2 is not None and p2.cursor == b"n099"
    d.finished(p2, fetched=50, cursor=None)        # reached the end: the next pass starts over
    for _ in range(40):
        d.hit(ME, "/d")
    clock.now += 1.5
    p3 = misses(d, 3)[-1]
    assert p3 is not None and p3.cursor is None


def test_a_window_not_used_while_fresh_is_not_followed():
    clock = Clock()
    d = Detector(trigger_misses=3, expiry_s=1.0, clock=clock)
    d.finished(misses(d, 3)[-1], fetched=1000, cursor=b"k")
    for _ in range(10):
        d.hit(ME, "/d")
    assert misses(d, 30) == [None] * 30
    assert d.passes_refused == 10


def test_random_access_backs_off_until_stat_ahead_stops():
    clock = Clock()
    d = Detector(trigger_misses=3, trigger_max=24, expiry_s=1.0, clock=clock)
    spent = []
    for _ in range(12):
        clock.now += 2.0                           # each pass has expired when it is judged
        for i in range(1000):
            p = d.miss(ME, "/huge")
            if p is not None:
                spent.append(i + 1)                # misses it took
                d.finished(p, fetched=4096, cursor=b"c")    # never used: no hits
                break
    # Each unused pass doubles the misses the next one waits for (a refusal
    # judges the expired pass, then a full trigger's worth of misses runs
    # the next); past trigger_max stat-ahead is off for the directory.
    assert spent == [3, 9, 18, 36]
    assert d.passes_started == 4


def test_a_pass_that_paid_off_resets_the_trigger():
    clock = Clock()
    d = Detector(trigger_misses=3, expiry_s=1.0, clock=clock)
    d.finished(misses(d, 3)[-1], fetched=100, cursor=None)
    clock.now += 2
    assert misses(d, 3)[-1] is None                # unused: refused, the trigger doubles
    p = misses(d, 6)[-1]
    assert p is not None
    d.finished(p, fetched=100, cursor=None)
    for _ in range(60):
        d.hit(ME, "/d")                            # this one is used
    clock.now += 2
    p = misses(d, 6)[-1]                           # judged at the doubled trigger: paid
    assert p is not None
    d.finished(p, fetched=100, cursor=None)
    for _ in range(60):
        d.hit(ME, "/d")
    clock.now += 2
    assert misses(d, 3)[-1] is not None            # back to 3 misses


def test_small_passes_are_never_judged_poor_and_state_is_bounded():
    clock = Clock()
    d = Detector(trigger_misses=2, dirs_max=8, expiry_s=1.0, clock=clock)
    for _ in range(5):
        p = misses(d, 2, directory="/small")[-1]
        assert p is not None
        d.finished(p, fetched=3, cursor=None)
        clock.now += 2
    for i in range(100):
        misses(d, 2, directory=f"/d{i}")
    assert d.tracked() <= 8
    d.forget()
    assert d.tracked() == 0 and not d.active()


def test_a_pass_fetches_from_the_callers_name_on_in_number_order():
    listing = sorted((f"f{i}".encode(), i, 0) for i in range(12))       # the service's byte order
    assert [e[0] for e in listing[:4]] == [b"f0", b"f1", b"f10", b"f11"]
    order = [e[0].decode() for e in ahead_of(listing, [b"f5", b"f7", b"f6"])]
    assert order == ["f7", "f8", "f9", "f10", "f11", "f0", "f1", "f2", "f3", "f4", "f5", "f6"]
    assert [e[0] for e in ahead_of(listing)][:3] == [b"f0", b"f1", b"f2"]
    mixed = [(n, 0, 0) for n in (b"b12", b"a", b"b3c", b"f1.10", b"f1.9", b"9x", b"")]
    assert sorted(e[0] for e in ahead_of(mixed)) == sorted(e[0] for e in mixed)
    # Parallel sweeps, one series each (f<process>.<i>), are interleaved, each from where it is.
    sweeps = sorted((f"f{k}.{i}".encode(), 0, 0) for k in range(3) for i in range(4))
    order = [e[0].decode() for e in ahead_of(sweeps, [b"f2.1", b"f0.2", b"f2.2"])]
    assert order == ["f2.2", "f0.2", "f1.0", "f2.3", "f0.3", "f1.1", "f2.0", "f0.0", "f1.2", "f2.1", "f0.1", "f1.3"]
    d = Detector(trigger_misses=3)
    assert [d.miss(ME, "/d", n) for n in (b"f0", b"f1", b"f2")][-1].starts == (b"f0", b"f1", b"f2")


def test_a_failed_pass_ends_stat_ahead_in_that_directory():
    d = Detector(trigger_misses=3)
    d.finished(misses(d, 3)[-1], fetched=0, cursor=None, failed=True)    # EACCES listing it
    assert misses(d, 500) == [None] * 500
    assert misses(d, 3, directory="/other")[-1] is not None
