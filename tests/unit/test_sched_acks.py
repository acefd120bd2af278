"""The framework SDK's acknowledgement schedule (scheduler/framework.py
AckSchedule): terminal updates at once, running ones late and only when
still the latest, each exactly once."""

from cistern.scheduler import limits
from cistern.scheduler.framework import AckSchedule, ack_delay_s


def test_a_terminal_update_is_acknowledged_at_once():
    acks = AckSchedule(1.0)
    assert acks.on_update("t", b"u1", True, 10.0) == b"u1"
    assert acks.due(100.0) == []


def test_a_running_update_is_acknowledged_after_the_delay_once():
    acks = AckSchedule(1.0)
    assert acks.on_update("t", b"u1", False, 10.0) is None
    assert acks.due(10.5) == []
    assert acks.due(11.0) == [("t", b"u1")]
    assert acks.due(20.0) == []                   # once


def test_a_running_update_superseded_by_the_end_is_never_acknowledged():
    acks = AckSchedule(1.0)
    assert acks.on_update("t", b"u1", False, 10.0) is None
    assert acks.on_update("t", b"u2", True, 10.2) == b"u2"
    assert acks.due(12.0) == []


def test_a_newer_running_update_replaces_the_older_and_restarts_its_delay():
    acks = AckSchedule(1.0)
    acks.on_update("t", b"u1", False, 10.0)
    acks.on_update("other", b"o1", False, 10.0)
    acks.on_update("t", b"u2", False, 10.8)       # e.g. STARTING then RUNNING, or a resend
    assert acks.due(11.0) == [("other", b"o1")]
    assert acks.due(11.8) == [("t", b"u2")]


def test_no_delay_acknowledges_everything_at_once():
    acks = AckSchedule(0.0)
    assert acks.on_update("t", b"u1", False, 10.0) == b"u1"


def test_the_delay_is_below_the_masters_resend_interval():
    assert 0 < ack_delay_s < limits.update_resend_interval_s
