"""The allocator (scheduler/allocator.py): DRF fairness, decline filters,
suppress/revive, rescinds, and resource accounting, with a fake clock."""

import errno

import pytest

from cistern.scheduler.allocator import AllocError, Allocator, dominant_share

GIB = 1 << 30


def make(**kw):
    a = Allocator(offer_timeout_s=10.0, refuse_seconds_default=5.0, **kw)
    return a


def agents(a, count, cpus=4.0, mem=4 * GIB):
    for i in range(count):
        a.add_agent(f"a{i}", f"n{i}", f"h:{i}", (cpus, mem, 0))


def test_one_offer_per_agent_of_all_its_free_resources():
    a = make()
    agents(a, 2)
    a.add_framework("f1")
    offers = a.allocate(0.0)
    assert [(o.agent_id, o.framework_id, o.resources) for o in offers] == [
        ("a0", "f1", (4.0, 4 * GIB, 0)), ("a1", "f1", (4.0, 4 * GIB, 0))]
    assert a.allocate(0.1) == []          # everything is offered already
    assert a.outstanding() == 2


def test_drf_gives_each_agent_to_the_framework_with_the_lowest_dominant_share():
    a = make()
    agents(a, 4)
    a.add_framework("big")
    a.add_framework("small")
    # "big" already runs tasks holding a quarter of the cluster's cpus.
    a.add_agent("a9", "n9", "h:9", (4.0, 4 * GIB, 0))
    a.hold("big", "a9", (4.0, GIB, 0))
    offers = a.allocate(0.0)
    by_fw = {}
    for o in offers:
        by_fw.setdefault(o.framework_id, []).append(o.agent_id)
    # 20 cpus in all: big holds 4 (0.2). small takes a0 (0.2), tie -> big (subscribed first)...
    assert by_fw == {"small": ["a0", "a2"], "big": ["a1", "a3"]}
    shares = a.shares()
    assert shares["small"] == pytest.approx(0.4) and shares["big"] == pytest.approx(0.6)


def test_dominant_share_is_the_largest_fraction():
    assert dominant_share((1.0, 3 * GIB, 0), (10.0, 10 * GIB, 0)) == pytest.approx(0.3)
    assert dominant_share((0.0, 0, 0), (0.0, 0, 0)) == 0.0


def test_decline_filters_the_agent_for_refuse_seconds_then_offers_again():
    a = make()
    agents(a, 1)
    a.add_framework("f1")
    (offer,) = a.allocate(0.0)
    assert a.decline("f1", [offer.offer_id, "unknown"], 2.0, 1.0) == [offer.offer_id]
    assert a.allocate(2.9) == []
    (again,) = a.allocate(3.0)
    assert again.agent_id == "a0" and again.offer_id != offer.offer_id


def test_declined_agent_goes_to_another_framework_meanwhile():
    a = make()
    agents(a, 1)
    a.add_framework("f1")
    a.add_framework("f2")
    (offer,) = a.allocate(0.0)
    assert offer.framework_id == "f1"
    a.decline("f1", [offer.offer_id], 0, 0.0)        # 0: the default, 5 s
    (other,) = a.allocate(0.1)
    assert other.framework_id == "f2"


def test_suppress_stops_offers_and_rescinds_revive_clears_filters():
    a = make()
    agents(a, 2)
    a.add_framework("f1")
    offers = a.allocate(0.0)
    a.decline("f1", [offers[0].offer_id], 100.0, 0.0)
    rescinded = a.suppress("f1")
    assert [o.offer_id for o in rescinded] == [offers[1].offer_id]
    assert a.allocate(1.0) == []
    a.revive("f1")
    assert sorted(o.agent_id for o in a.allocate(1.0)) == ["a0", "a1"]   # the filter is gone too


def test_offers_time_out_and_are_rescinded():
    a = make()
    agents(a, 1)
    a.add_framework("f1")
    (offer,) = a.allocate(0.0)
    assert a.expire(9.9) == []
    assert a.expire(10.0) == [offer]
    assert a.offer(offer.offer_id) is None
    (again,) = a.allocate(10.0)
    assert again.offer_id != offer.offer_id


def test_accept_holds_task_resources_and_frees_the_rest():
    a = make()
    agents(a, 1)
    a.add_framework("f1")
    (offer,) = a.allocate(0.0)
    agent_id, held = a.accept("f1", [offer.offer_id], [(1.0, GIB, 0), (0.5, GIB, 0)], 0.0, 0.0)
    assert agent_id == "a0" and held == (4.0, 4 * GIB, 0)
    (rest,) = a.allocate(0.1)                 # no filter on the rest unless asked
    assert rest.resources == (2.5, 2 * GIB, 0)
    a.release("f1", "a0", (1.0, GIB, 0))
    a.decline("f1", [rest.offer_id], 0.001, 0.1)
    (more,) = a.allocate(1.0)
    assert more.resources == (3.5, 3 * GIB, 0)


@pytest.mark.parametrize("case, err", [
    ("unknown", errno.ENOENT), ("rescinded", errno.ENOENT), ("other framework", errno.EPERM),
    ("too big", errno.EINVAL), ("two agents", errno.EINVAL), ("none", errno.EINVAL), ("twice", errno.EINVAL),
])
def test_bad_accepts_raise_and_change_nothing(case, err):
    a = make()
    agents(a, 2)
    a.add_framework("f1")
    if case != "two agents":
        a.add_framework("f2")
    offers = a.allocate(0.0)
    mine = [o for o in offers if o.framework_id == "f1"][0]
    theirs = [o for o in offers if o is not mine][0]
    ids, needs = [mine.offer_id], [(1.0, GIB, 0)]
    if case == "unknown":
        ids = ["nope"]
    elif case == "rescinded":
        a.expire(100.0)
    elif case == "other framework":
        ids = [theirs.offer_id]
    elif case == "too big":
        needs = [(3.0, GIB, 0), (1.5, GIB, 0)]
    elif case == "two agents":
        ids = [mine.offer_id, theirs.offer_id]   # both f1's, on a0 and a1
    elif case == "none":
        ids = []
    elif case == "twice":
        ids = [mine.offer_id, mine.offer_id]
    before = a.outstanding()
    with pytest.raises(AllocError) as info:
        a.accept("f1", ids, needs, 0.0, 0.0)
    assert info.value.errno == err and info.value.message
    assert a.outstanding() == before


def test_disconnected_framework_loses_its_offers_and_gets_none():
    a = make()
    agents(a, 1)
    a.add_framework("f1")
    (offer,) = a.allocate(0.0)
    assert a.deactivate_framework("f1") == [offer]
    assert a.allocate(0.1) == []
    a.add_framework("f1")
    assert len(a.allocate(0.2)) == 1


def test_agent_removed_rescinds_its_offers_and_resource_change_rescinds_too():
    a = make()
    agents(a, 2)
    a.add_framework("f1")
    offers = a.allocate(0.0)
    assert a.add_agent("a0", "n0", "h:0", (4.0, 4 * GIB, 0)) == []          # registered again, unchanged
    assert a.add_agent("a0", "n0", "h:0", (8.0, 8 * GIB, 0)) == [offers[0]]
    assert a.remove_agent("a1") == [offers[1]]
    (new,) = a.allocate(0.1)
    assert new.resources == (8.0, 8 * GIB, 0)


def test_accept_with_refuse_seconds_filters_the_rest():
    a = make()
    agents(a, 1)
    a.add_framework("f1")
    (offer,) = a.allocate(0.0)
    a.accept("f1", [offer.offer_id], [(1.0, GIB, 0)], 2.0, 0.0)
    assert a.allocate(1.9) == []
    assert a.allocate(2.0)[0].resources == (3.0, 3 * GIB, 0)


def test_small_leftovers_are_not_offered():
    a = make()
    agents(a, 1, cpus=1.0, mem=GIB)
    a.add_framework("f1")
    a.hold("f1", "a0", (0.999, GIB // 2, 0))
    assert a.allocate(0.0) == []


def test_disconnected_agent_is_not_offered_until_it_registers_again():
    a = make()
    agents(a, 2)
    a.add_framework("f1")
    offers = a.allocate(0.0)
    assert a.deactivate_agent("a0") == [offers[0]]
    assert a.allocate(0.1) == []
    a.add_agent("a0", "n0", "h:0", (4.0, 4 * GIB, 0))
    assert [o.agent_id for o in a.allocate(0.2)] == ["a0"]
