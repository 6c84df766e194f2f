"""Listening ports for servers a test starts in another process.

A port found with ``bind(("127.0.0.1", 0))`` comes from the kernel's ephemeral range, the range
every other ``bind(0)`` and every outgoing connection also draws from. Between the moment a test
releases it and the moment its child process binds it, another process can take it: a Ray head
picks its agents' ports the same way and binds them seconds later, so a controller started on
such a port can find a Prometheus exporter already there, answering ``GET /ready`` with 200.

These ports come from below the ephemeral range instead, and above Ray's default worker ports
(10002-19999): nothing takes them unless asked to by number.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

_RAY_WORKER_PORTS_END = 19999
_taken: set[int] = set()  # handed out in this process: two servers of one test never share one


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems draw from higher ranges


def free_port() -> int:
    """A port on 127.0.0.1 that is free now and outside the ephemeral range."""
    low, high = _RAY_WORKER_PORTS_END + 1, _ephemeral_low() - 1
    if high - low < 1000:  # an unusual range leaves no room: fall back to the kernel's pick
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            return int(s.getsockname()[1])
    rng = random.SystemRandom()  # tests seed `random`; two processes must not walk the same sequence
    for _ in range(200):
        port = rng.randint(low, high)
        if port in _taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        _taken.add(port)
        return port
    raise RuntimeError(f"no free port in {low}-{high}")


def controller_ready(base: str) -> bool:
    """Whether the HyCTAS controller at ``base`` answers ``/ready`` as ready.

    The body is checked, not only the status: any server on a reused port answers 200 to a GET.
    """
    import httpx

    try:
        r = httpx.get(base + "/ready", timeout=2)
        return r.status_code == 200 and r.json().get("status") == "ready"
    except (httpx.HTTPError, ValueError, AttributeError):
        return False
