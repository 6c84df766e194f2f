"""Listening ports picked ahead of the process that binds them.

A port found with ``bind(("127.0.0.1", 0))`` comes from the kernel's ephemeral range, the range
every other ``bind(0)`` and every outgoing connection also draws from. Between the moment it is
released and the moment another process binds it, someone else can take it: a Ray head picks
its agents' ports the same way and binds them seconds later (CI once found a Prometheus
exporter on the port meant for the controller).

These ports come from below the ephemeral range instead, and above Ray's default worker ports
(10002-19999): nothing takes them unless asked to by number. Used where a server is started
in another process on a port chosen here: tests, benchmarks, HAProxy's listeners.
"""

from __future__ import annotations

import random
import socket
from contextlib import ExitStack
from pathlib import Path

__all__ = ["free_port", "free_ports"]

_RAY_WORKER_PORTS_END = 19999
_taken: set[int] = set()  # handed out in this process: two servers never share one


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; other systems draw from higher ranges


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct ports free on ``host`` now, outside the ephemeral range where it has room.

    Every socket stays bound until all ``n`` are picked, so the ports are distinct. Where the
    range below the ephemeral one is too small (an unusual ``ip_local_port_range``), the kernel
    picks (``bind(0)``).

    Raises:
        RuntimeError: no free port found in 200 tries per port.
    """
    low, high = _RAY_WORKER_PORTS_END + 1, _ephemeral_low() - 1
    kernel_picks = high - low < 1000  # an unusual range leaves no room
    rng = random.SystemRandom()  # callers seed `random`; two processes must not walk one sequence
    with ExitStack() as stack:
        ports: list[int] = []
        for _ in range(n):
            s = stack.enter_context(socket.socket())
            if kernel_picks:
                s.bind((host, 0))
                ports.append(int(s.getsockname()[1]))
                continue
            for _ in range(200):
                port = rng.randint(low, high)
                if port in _taken:
                    continue
                try:
                    s.bind((host, port))
                except OSError:
                    continue
                break
            else:
                raise RuntimeError(f"no free port in {low}-{high}")
            ports.append(port)
        _taken.update(ports)
        return ports


def free_port(host: str = "127.0.0.1") -> int:
    """One port free on ``host`` now (see :func:`free_ports`)."""
    return free_ports(1, host)[0]
