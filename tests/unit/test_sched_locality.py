"""Exact-output tests of delay scheduling (scheduler/locality.py)."""

from cistern.scheduler.locality import (OfferView, PendingTask, Resources, fits, place, refuse_max_s,
                                        refuse_min_s, refuse_preferred_s)

MiB = 1 << 20
SMALL = Resources(0.5, 256 * MiB, 0)
LIVE = {"n1", "n2", "n3"}


def task(task_id, *nodes, since=0.0, need=SMALL):
    return PendingTask(task_id, frozenset(nodes), since, need)


def offer(offer_id, node_id, cpus=2.0, mem_mib=1024, disk=0):
    return OfferView(offer_id, node_id, Resources(cpus, mem_mib * MiB, disk))


def test_local_task_takes_its_nodes_offer_at_once():
    p = place([task("t1", "n1")], [offer("o1", "n1")], now_s=0.0, live_nodes=LIVE)
    assert p.launch == {"o1": [("t1", True)]}
    assert p.decline == {}


def test_non_local_offer_is_refused_until_the_wait_is_over():
    pending = [task("t1", "n1", since=10.0)]
    early = place(pending, [offer("o2", "n2")], now_s=10.4, live_nodes=LIVE, locality_wait_s=1.0)
    assert early.launch == {}
    # declined only until t1 may go anywhere (0.6 s later), not for Mesos's default 5 s
    assert abs(early.decline["o2"] - 0.6) < 1e-9
    late = place(pending, [offer("o2", "n2")], now_s=11.0, live_nodes=LIVE, locality_wait_s=1.0)
    assert late.launch == {"o2": [("t1", False)]}


def test_no_live_holder_means_no_wait():
    pending = [task("t1", "n9", since=5.0), task("t2", since=5.0)]     # dead holder; no input at all
    p = place(pending, [offer("o2", "n2")], now_s=5.0, live_nodes=LIVE)
    assert p.launch == {"o2": [("t1", False), ("t2", False)]}


def test_zero_wait_takes_any_node():
    p = place([task("t1", "n1")], [offer("o2", "n2")], now_s=0.0, live_nodes=LIVE, locality_wait_s=0.0)
    assert p.launch == {"o2": [("t1", False)]}


def test_packs_as_many_as_fit_oldest_first():
    pending = [task(f"t{i}", "n1", since=float(i)) for i in range(6)]
    p = place(pending, [offer("o1", "n1", cpus=2.0, mem_mib=4096)], now_s=6.0, live_nodes=LIVE)
    assert p.launch == {"o1": [("t0", True), ("t1", True), ("t2", True), ("t3", True)]}   # 4 x 0.5 cpus


def test_memory_bounds_the_packing_and_smaller_tasks_behind_a_big_one_still_fit():
    big = Resources(0.5, 900 * MiB, 0)
    pending = [task("a", "n1", since=0.0), task("big", "n1", since=1.0, need=big), task("c", "n1", since=2.0)]
    p = place(pending, [offer("o1", "n1", mem_mib=1024)], now_s=3.0, live_nodes=LIVE)
    assert p.launch == {"o1": [("a", True), ("c", True)]}


def test_local_tasks_first_on_every_offer_before_any_non_local_one():
    # t_old (waited, wants n2) must not take n1's only slot from t_new (wants n1),
    # and goes local to n2 although n1's offer comes first.
    pending = [task("t_old", "n2", since=0.0), task("t_new", "n1", since=4.5)]
    offers = [offer("o1", "n1", cpus=0.5), offer("o2", "n2", cpus=0.5)]
    p = place(pending, offers, now_s=5.0, live_nodes=LIVE, locality_wait_s=1.0)
    assert p.launch == {"o1": [("t_new", True)], "o2": [("t_old", True)]}


def test_waited_task_fills_what_local_tasks_left():
    pending = [task("local", "n1", since=0.0), task("waited", "n3", since=0.0)]
    p = place(pending, [offer("o1", "n1", cpus=1.0)], now_s=2.0, live_nodes=LIVE)
    assert p.launch == {"o1": [("local", True), ("waited", False)]}


def test_replicated_input_goes_to_the_holder_with_most_cpus_left():
    pending = [task("t1", "n1", "n2", since=0.0)]
    offers = [offer("o1", "n1", cpus=1.0), offer("o2", "n2", cpus=2.0)]
    assert place(pending, offers, now_s=0.0, live_nodes=LIVE).launch == {"o2": [("t1", True)]}


def test_task_larger_than_any_offer_is_left_and_offers_come_back_soon():
    huge = Resources(8.0, 0, 0)
    p = place([task("t1", "n1", need=huge)], [offer("o1", "n1"), offer("o2", "n2")],
              now_s=10.0, live_nodes=LIVE)
    assert p.launch == {}
    assert p.decline == {"o1": refuse_min_s, "o2": refuse_min_s}


def test_full_preferred_node_is_asked_again_soon_others_later():
    pending = [task("t1", "n1", since=0.0)]
    p = place(pending, [offer("o1", "n1", cpus=0.25), offer("o2", "n2")], now_s=0.0, live_nodes=LIVE)
    assert p.launch == {}
    assert p.decline == {"o1": refuse_preferred_s, "o2": 1.0}


def test_nothing_pending_declines_for_long():
    p = place([], [offer("o1", "n1")], now_s=0.0, live_nodes=LIVE)
    assert p.decline == {"o1": refuse_max_s}


def test_each_task_placed_once_and_input_untouched():
    pending = [task(f"t{i}", "n1", "n2", since=0.0) for i in range(10)]
    before = list(pending)
    p = place(pending, [offer("o1", "n1"), offer("o2", "n2"), offer("o3", "n3")], now_s=5.0, live_nodes=LIVE)
    ids = p.task_ids()
    assert len(ids) == len(set(ids)) == 10
    assert pending == before
    assert [t for t, local in p.launch.get("o3", [])] == ["t8", "t9"]   # n1, n2 full (4 each), then any node


def test_fits_tolerates_float_sums():
    free = Resources(1.0, MiB, 0)
    for _ in range(3):
        free = Resources(free.cpus - 0.1, free.mem_bytes, 0)
    assert fits(Resources(0.7, 0, 0), free)
    assert not fits(Resources(0.8, 0, 0), free)
    assert not fits(Resources(0.1, 2 * MiB, 0), free)


def test_leftover_of_an_accepted_offer_gets_a_filter_too():
    pending = [task("a", "n1", since=0.0), task("b", "n1", since=0.0)]
    p = place(pending, [offer("o1", "n1", cpus=0.5)], now_s=0.0, live_nodes=LIVE)
    assert p.launch == {"o1": [("a", True)]}
    assert p.decline == {}
    assert p.refuse_s == {"o1": refuse_preferred_s}     # b still wants n1: offer it again soon


def test_the_wait_restarts_while_a_holder_keeps_making_local_progress():
    pending = [task("t1", "n3", since=0.0)]
    # t1 waited 2 s, but a local task of ours started or ended on n3 0.5 s ago: it is draining, keep waiting
    busy = place(pending, [offer("o1", "n1")], now_s=2.0, live_nodes=LIVE, local_progress_s={"n3": 1.5})
    assert busy.launch == {}
    assert abs(busy.decline["o1"] - 0.5) < 1e-9     # until 1 s after that local start
    # n3 stalled: no local progress there for the wait: any node
    stalled = place(pending, [offer("o1", "n1")], now_s=2.0, live_nodes=LIVE, local_progress_s={"n3": 0.5})
    assert stalled.launch == {"o1": [("t1", False)]}
    # progress on a node that does not hold t1's input changes nothing
    other = place(pending, [offer("o1", "n1")], now_s=2.0, live_nodes=LIVE, local_progress_s={"n1": 1.9})
    assert other.launch == {"o1": [("t1", False)]}
