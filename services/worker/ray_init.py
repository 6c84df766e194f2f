"""Connect to Ray without ever hanging: a fresh local Ray unless an address is given, bounded in time.

A plain ``ray.init()`` attaches to whatever cluster the ``ray_current_cluster`` file in Ray's
temp directory names; any ``ray start`` or ``ray.cluster_utils`` run leaves that file behind,
and when the cluster it names is dead ``ray.init`` retries for minutes. Here no address means
``RAY_ADDRESS`` when that is set, else ``address="local"`` (always a new local Ray, never the
file's cluster), and every attempt has a deadline.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import ray

__all__ = ["RayStartError", "init_ray"]

DEFAULT_TIMEOUT_S = 120.0


class RayStartError(RuntimeError):
    """Ray did not start (or the cluster could not be reached) in time; the message is one line."""


def init_ray(address: str | None = None, *, timeout_s: float = DEFAULT_TIMEOUT_S, **kwargs: Any) -> bool:
    """``ray.init`` on ``address`` (None: a new local Ray) unless Ray is initialised already.

    Args:
        address: a cluster (``"auto"``, ``"ray://host:10001"``, ``"host:6379"``) or None
            (``RAY_ADDRESS``, else a new local Ray).
        timeout_s: give up after this long.
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
    outcome: dict[str, BaseException] = {}

    def start() -> None:
        try:
            ray.init(**options)
        except BaseException as exc:  # reported to the caller below
            outcome["error"] = exc

    where = f"Ray at {address}" if address else "a local Ray"
    thread = threading.Thread(target=start, name="ray-init", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise RayStartError(f"{where} did not start within {timeout_s:g} s (HYCTAS_RAY_INIT_TIMEOUT_S)")
    if "error" in outcome:
        exc = outcome["error"]
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise RayStartError(f"cannot start {where}: {type(exc).__name__}: {first}"[:500])
    return True
