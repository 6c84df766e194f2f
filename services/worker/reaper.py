"""Nothing outlives a worker: a watchdog process that kills a dead worker's leftover processes.

``ray.init()`` in a worker starts a local Ray (GCS, raylet, agents, actor processes). When the
worker is killed with SIGKILL, Ray's own shutdown never runs: the raylet and GCS notice and
exit, but the dashboard and runtime-env agents live on for half a minute or more, and actor
processes can outlive their raylet. The reaper runs in its own session (a signal to the
worker's process group does not reach it), records every descendant of the worker while it
lives, and when the worker is gone terminates the recorded processes that are still alive
(SIGTERM, then SIGKILL after a grace period). Process identity is (pid, start time), so a
reused pid is never killed. Linux only (``/proc``); elsewhere :func:`start_reaper` does nothing.

    python -m services.worker.reaper WORKER_PID
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

__all__ = ["descendants", "start_reaper"]

Proc = tuple[int, int]  # (pid, start time in clock ticks since boot)


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process, None if it is gone (or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])


def _alive(proc: Proc) -> bool:
    stat = _stat(proc[0])
    return stat is not None and stat[1] == proc[1]


def descendants(root: int) -> set[Proc]:
    """Every live process below ``root`` (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is not None:
            children.setdefault(stat[0], []).append(int(entry))
            starts[int(entry)] = stat[1]
    found: set[Proc] = set()
    todo = list(children.get(root, []))
    while todo:
        pid = todo.pop()
        if pid in starts and (pid, starts[pid]) not in found:
            found.add((pid, starts[pid]))
            todo.extend(children.get(pid, []))
    return found


def _signal(procs: Iterable[Proc], sig: int) -> None:
    for pid, start in procs:
        if _alive((pid, start)):
            try:
                os.kill(pid, sig)
            except OSError:
                pass


def reap(worker: int, *, poll_s: float = 0.5, grace_s: float = 3.0) -> int:
    """Watch ``worker``; once it is gone, end what it left behind. Returns how many were still alive."""
    me = _stat(worker)
    if me is None:
        return 0
    seen: set[Proc] = set()
    while _alive((worker, me[1])):
        seen |= descendants(worker)
        time.sleep(poll_s)
    for proc in list(seen):  # orphans reparented to init keep their own children: record those too
        if _alive(proc):
            seen |= descendants(proc[0])
    left = [p for p in seen if _alive(p) and p[0] != os.getpid()]  # the reaper is the worker's child too
    _signal(left, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and any(_alive(p) for p in left):
        time.sleep(0.1)
    _signal(left, signal.SIGKILL)
    return len(left)


def start_reaper(worker: int | None = None) -> subprocess.Popen[bytes] | None:
    """Start the watchdog for ``worker`` (default: this process) in its own session; None off Linux."""
    if not Path("/proc/self/stat").exists():
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "services.worker.reaper", str(worker or os.getpid())],
        start_new_session=True,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # it must outlive a Ctrl-C of the worker
    reap(int(sys.argv[1]))
