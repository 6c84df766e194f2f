"""Connect to Ray without ever hanging: a fresh local Ray unless an address is given, bounded in time.

A plain ``ray.init()`` attaches to whatever cluster the ``ray_current_cluster`` file in Ray's
temp directory names; any ``ray start`` or ``ray.cluster_utils`` run leaves that file behind,
and when the cluster it names is dead ``ray.init`` retries for minutes. Here no address means
``RAY_ADDRESS`` when that is set, else ``address="local"`` (always a new local Ray, never the
file's cluster), and every attempt has a deadline.

A deadline inside ``ray.init`` is a SIGALRM, which Python runs only when Ray's C++ client gives
control back: connecting to a dead GCS blocks there for about 40 s whatever the deadline. So an
address ``host:port`` or ``ray://host:port`` is first probed with plain TCP connections, retried
until the deadline: an address where nothing listens fails in time, and a head still starting
is waited for.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from typing import Any

import ray

from services.serve import ingress

log = logging.getLogger(__name__)

__all__ = ["RayStartError", "init_ray"]

DEFAULT_TIMEOUT_S = 120.0


class RayStartError(RuntimeError):
    """Ray did not start (or the cluster could not be reached) in time; the message is one line."""


class _Deadline(BaseException):
    """Raised by the SIGALRM handler inside ``ray.init`` (a BaseException: Ray's retries do not catch it)."""


def _timed_out(signum: int, frame: Any) -> None:
    raise _Deadline


def _endpoint(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port``; None for ``auto`` and other forms."""
    rest = address.removeprefix("ray://")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit():
        return None
    return host.strip("[]"), int(port)


def _wait_for_listener(host: str, port: int, deadline: float) -> str | None:
    """None once a TCP connection to ``host:port`` opens before ``deadline`` (monotonic), else why not."""
    reason = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return reason
        try:
            with socket.create_connection((host, port), timeout=min(left, 2.0)):
                return None
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
        time.sleep(min(0.25, max(0.0, deadline - time.monotonic())))


def _shutdown_quietly() -> None:
    try:
        ray.shutdown()
    except Exception:  # noqa: BLE001 - half-started: nothing more to clean
        pass


def init_ray(
    address: str | None = None,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    serve_ingress: str | None = None,
    **kwargs: Any,
) -> bool:
    """``ray.init`` on ``address`` (None: a new local Ray) unless Ray is initialised already.

    Args:
        address: a cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``) or None
            (``RAY_ADDRESS``, else a new local Ray).
        timeout_s: give up after this long.
        serve_ingress: for a new local Ray, how HTTP reaches Serve's replicas
            (``services.serve.ingress``: ``auto``, ``haproxy``, ``proxy``); None leaves the
            environment as it is. A cluster at ``address`` has its own.
        kwargs: more ``ray.init`` arguments (``num_cpus`` ...); the dashboard, driver logs and
            Ray's logging set-up are off unless given.

    Returns:
        Whether this call initialised Ray (the caller then owns its shutdown).

    Raises:
        RayStartError: Ray failed, or did not answer within ``timeout_s``.
    """
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    options: dict[str, Any] = {
        "include_dashboard": False,
        "log_to_driver": False,
        "configure_logging": False,
        **kwargs,
        "address": address or "local",
    }
    where = f"Ray at {address}" if address else "a local Ray"
    if not address and serve_ingress is not None:
        try:
            resolved = ingress.apply(serve_ingress)
        except ingress.IngressError as exc:
            raise RayStartError(f"cannot start {where}: {exc}") from None
        if resolved == "haproxy":
            stopped = ingress.stop_orphaned_haproxies()
            if stopped:
                log.warning(
                    "stopped %d HAProxy process(es) that a killed local Ray left holding their ports (pids %s)",
                    len(stopped),
                    ", ".join(map(str, stopped)),
                )
    endpoint = _endpoint(address) if address else None
    if endpoint is not None:
        started = time.monotonic()
        reason = _wait_for_listener(*endpoint, started + timeout_s)
        if reason is not None:
            raise RayStartError(f"{where} did not answer within {timeout_s:g} s ({reason}; HYCTAS_RAY_INIT_TIMEOUT_S)")
        timeout_s = max(1.0, timeout_s - (time.monotonic() - started))
    # ray.init runs in this thread: Ray ties the processes of a local cluster to the thread that
    # started them (they die with it), so no helper thread. The deadline is a SIGALRM, which
    # only the main thread can take; elsewhere there is none.
    on_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGALRM, _timed_out) if on_main else None
    if on_main:
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        ray.init(**options)
    except _Deadline:
        _shutdown_quietly()
        raise RayStartError(f"{where} did not start within {timeout_s:g} s (HYCTAS_RAY_INIT_TIMEOUT_S)") from None
    except Exception as exc:
        _shutdown_quietly()
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RayStartError(f"cannot start {where}: {type(exc).__name__}: {first}"[:500]) from None
    finally:
        if on_main:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
    return True
