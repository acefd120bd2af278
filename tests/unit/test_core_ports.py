"""core.ports: daemon ports never come from the kernel's ephemeral range,
where a restarted daemon could find its port taken by an outgoing connection."""

import random
import socket

from cistern.core import ports


def test_ports_are_picked_below_the_ephemeral_range_and_are_bindable():
    low, high = ports.ephemeral_range()
    picked = [ports.free_port() for _ in range(50)]
    assert len(set(picked)) == 50
    for port in picked:
        assert not low <= port <= high
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_something_listens_on_is_never_picked():
    rng = random.Random(7)
    low, high = ports.pick_range(ports.ephemeral_range())
    busy = []
    try:
        # Occupy the first ports the seeded generator would choose.
        probe = random.Random(7)
        for _ in range(5):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", probe.randint(low, high)))
            except OSError:
                s.close()
                continue
            s.listen()
            busy.append(s)
        taken = {s.getsockname()[1] for s in busy}
        assert taken
        assert ports.free_port(rng=rng) not in taken
    finally:
        for s in busy:
            s.close()


def test_the_pick_range_avoids_the_ephemeral_range(tmp_path):
    default = tmp_path / "range"
    default.write_text("32768\t60999\n")
    assert ports.ephemeral_range(str(default)) == (32768, 60999)
    assert ports.pick_range((32768, 60999)) == (10000, 32767)
    assert ports.pick_range((10500, 60000)) == (60001, 65535)   # configured low: pick above
    assert ports.ephemeral_range(str(tmp_path / "missing")) == (32768, 60999)
