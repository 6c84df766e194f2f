"""Ports picked for servers started in another process (services.ports)."""

from __future__ import annotations

import socket

import pytest

from services import ports


def test_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = ports._ephemeral_low()
    picked = ports.free_ports(5) + [ports.free_port() for _ in range(5)]
    assert len(set(picked)) == 10  # never the same port twice in one process
    for port in picked:
        assert ports._RAY_WORKER_PORTS_END < port < low
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free: raises OSError if not


def test_a_taken_port_is_never_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        busy = int(held.getsockname()[1])
        # a tiny range: the held port and one free neighbour (range checks off for the test)
        monkeypatch.setattr(ports, "_ephemeral_low", lambda: 10**6)
        draws = iter([busy, busy, busy + 1])
        monkeypatch.setattr(ports.random.SystemRandom, "randint", lambda self, a, b: next(draws))
        ports._taken.discard(busy + 1)
        assert ports.free_ports(1) == [busy + 1]


def test_no_free_port_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        busy = int(held.getsockname()[1])
        monkeypatch.setattr(ports, "_ephemeral_low", lambda: 10**6)
        monkeypatch.setattr(ports.random.SystemRandom, "randint", lambda self, a, b: busy)
        with pytest.raises(RuntimeError, match="no free port"):
            ports.free_ports(1)
