"""How requests reach Serve's replicas (``services.serve.ingress``): the mode a setting asks
for, what it sets before a local Ray starts, and a clear error where it cannot run."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.serve import ingress
from services.settings import Settings
from services.worker.ray_init import RayStartError, init_ray

SWITCHES = ("RAY_SERVE_ENABLE_HA_PROXY", "RAY_SERVE_ENABLE_DIRECT_INGRESS", "RAY_SERVE_HAPROXY_BINARY_PATH",
            "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "RAY_SERVE_HAPROXY_METRICS_PORT",
            "RAY_SERVE_HAPROXY_STATS_PORT")  # fmt: skip


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No Serve switch set at the start, as in a fresh process (nor apply()'s record of what it
    wrote); every RAY_SERVE_* as it was afterwards (apply() writes the process environment, which
    later tests' local Rays inherit)."""
    monkeypatch.setattr(ingress, "_applied", {})
    saved = {k: v for k, v in os.environ.items() if k.startswith("RAY_SERVE_")}
    for key in SWITCHES:
        os.environ.pop(key, None)
    yield
    for key in [k for k in os.environ if k.startswith("RAY_SERVE_")]:
        del os.environ[key]
    os.environ.update(saved)


def _fake_haproxy(tmp_path: Path, executable: bool = True) -> str:
    path = tmp_path / "haproxy"
    path.write_text("#!/bin/sh\nexit 0\n")
    if executable:
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_the_default_setting_is_auto() -> None:
    assert Settings().serve_ingress == "auto"


def test_auto_takes_haproxy_where_a_binary_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", _fake_haproxy(tmp_path))
    assert ingress.haproxy_binary() == str(tmp_path / "haproxy")
    assert ingress.resolve("auto") == "haproxy"
    assert ingress.apply("auto") == "haproxy"
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1" and os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "1"
    assert float(os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"]) == ingress.LOCAL_DRAIN_S
    assert ingress.active() == "haproxy"


def test_auto_falls_back_to_serves_proxy_without_a_binary(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: None)
    assert ingress.apply("auto") == "proxy"
    assert os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0" and ingress.active() == "proxy"


def test_a_binary_path_that_is_not_executable_is_no_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", _fake_haproxy(tmp_path, executable=False))
    assert ingress.haproxy_binary() is None
    with pytest.raises(ingress.IngressError, match="no HAProxy binary"):
        ingress.resolve("haproxy")


def test_proxy_overrides_and_auto_respects_serves_own_switch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", _fake_haproxy(tmp_path))
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")  # the user chose through Serve's variable
    assert ingress.apply("auto") == "proxy" and os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    assert ingress.apply("haproxy") == "haproxy" and os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert ingress.apply("proxy") == "proxy" and os.environ["RAY_SERVE_ENABLE_DIRECT_INGRESS"] == "0"


def test_a_users_drain_period_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", _fake_haproxy(tmp_path))
    monkeypatch.setenv("RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S", "30")
    ingress.apply("haproxy")
    assert os.environ["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "30"


def test_an_unknown_mode_is_refused() -> None:
    with pytest.raises(ingress.IngressError, match="unknown serve ingress 'nginx'"):
        ingress.resolve("nginx")
    with pytest.raises(ValueError):
        Settings(serve_ingress="nginx")


def test_init_ray_reports_an_ingress_that_cannot_run_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Before any Ray process starts: the worker and `hyctas serve` print this line and exit."""
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: None)
    with pytest.raises(RayStartError, match="cannot start a local Ray: .*no HAProxy binary") as info:
        init_ray(None, serve_ingress="haproxy")
    assert "\n" not in str(info.value)
    assert "RAY_SERVE_ENABLE_HA_PROXY" not in os.environ


def test_haproxy_listeners_get_free_ports_the_users_are_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Serve's HAProxy binds Prometheus on 9101 (a worker's own metrics port) and stats on 8404
    by default: a local Ray gets free ports, fresh for each Ray; a port the user set stays."""
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", _fake_haproxy(tmp_path))
    with socket.socket() as held:  # as a worker's metrics server would
        held.bind(("", 0))
        held.listen()
        taken = held.getsockname()[1]
        ingress.apply("auto")
        first = {k: os.environ[k] for k in ("RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT")}
        assert all(int(p) != taken and int(p) > 0 for p in first.values())
        assert int(first["RAY_SERVE_HAPROXY_METRICS_PORT"]) != Settings().worker_metrics_port
    monkeypatch.setenv("RAY_SERVE_HAPROXY_STATS_PORT", "18404")  # the user's
    with socket.socket() as first_ray:  # the first Ray's HAProxy still holds its metrics port
        first_ray.bind(("", int(first["RAY_SERVE_HAPROXY_METRICS_PORT"])))
        first_ray.listen()
        assert ingress.apply("auto") == "haproxy"  # a second local Ray in this process
    assert os.environ["RAY_SERVE_HAPROXY_STATS_PORT"] == "18404"
    assert os.environ["RAY_SERVE_HAPROXY_METRICS_PORT"] != first["RAY_SERVE_HAPROXY_METRICS_PORT"]


def test_auto_after_an_earlier_apply_decides_afresh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The switch an earlier apply() wrote is not the user's choice: with a binary found since,
    auto takes HAProxy; a switch the user changed afterwards still decides."""
    binary: list[str | None] = [None]
    monkeypatch.setattr(ingress, "haproxy_binary", lambda: binary[0])
    assert ingress.apply("auto") == "proxy" and os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"
    binary[0] = _fake_haproxy(tmp_path)  # installed since
    assert ingress.apply("auto") == "haproxy" and os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    monkeypatch.setenv("RAY_SERVE_ENABLE_HA_PROXY", "0")  # the user's, after our "1"
    assert ingress.apply("auto") == "proxy" and os.environ["RAY_SERVE_ENABLE_HA_PROXY"] == "0"


SLEEP = "import time; time.sleep(120)"


def _orphan_haproxy(cfg: Path) -> int:
    """A process that looks like Serve's HAProxy for ``cfg`` (``haproxy -db -f cfg``) and whose
    parent has exited, as when the local Ray that started it was killed; its pid."""
    spawn = (
        "import subprocess, sys\n"
        "quiet = dict(stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)\n"
        "print(subprocess.Popen(sys.argv[1:], executable=sys.executable, **quiet).pid)\n"
    )  # the grandchild holds none of our pipes, so run() returns when its parent exits
    out = subprocess.run(
        [sys.executable, "-c", spawn, "haproxy", "-c", SLEEP, "-db", "-f", str(cfg)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return int(out.stdout)


def _served_haproxy(cfg: Path) -> tuple[subprocess.Popen[str], int]:
    """The same under a live ``ray::HAProxyManager`` (a process titled so); (parent, its pid)."""
    manager = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen(['haproxy', '-c', {SLEEP!r}, '-db', '-f', sys.argv[1]], executable=sys.argv[2],\n"
        "                     stdout=subprocess.DEVNULL)\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen(
        # (titled so, Python cannot find itself from argv[0]: the interpreter's path is passed on)
        ["ray::HAProxyManager", "-c", manager, str(cfg), sys.executable],
        executable=sys.executable,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert parent.stdout is not None
    return parent, int(parent.stdout.readline())


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not ingress._alive(pid):
            return True
        time.sleep(0.05)
    return False


def _kill(*pids: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_an_haproxy_left_by_a_killed_local_ray_is_stopped_a_live_one_kept(tmp_path: Path) -> None:
    serve_dir = tmp_path / "haproxy-serve"
    orphan = _orphan_haproxy(serve_dir / "node-a" / "haproxy.cfg")
    elsewhere = _orphan_haproxy(tmp_path / "other" / "node-c" / "haproxy.cfg")  # not Serve's directory
    manager, served = _served_haproxy(serve_dir / "node-b" / "haproxy.cfg")
    try:
        assert ingress._alive(orphan) and ingress._alive(served) and ingress._alive(elsewhere)
        assert ingress.orphaned_haproxies(serve_dir) == [orphan]
        assert ingress.stop_orphaned_haproxies(serve_dir) == [orphan]
        assert _gone(orphan)
        assert ingress._alive(served) and ingress._alive(elsewhere)  # a running Serve's, and not Serve's
        assert ingress.orphaned_haproxies(serve_dir) == []
    finally:
        manager.kill()
        manager.wait()
        _kill(orphan, served, elsewhere)


def test_a_local_ray_with_haproxy_first_stops_the_orphans(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The restart a user makes after ``kill -9`` of a worker: its new local Ray would find the
    Serve port held by the old HAProxy; init_ray stops that one before Ray starts."""
    monkeypatch.setenv("RAY_SERVE_HAPROXY_BINARY_PATH", _fake_haproxy(tmp_path))
    monkeypatch.setenv("RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", str(tmp_path / "haproxy-serve" / "haproxy.cfg"))
    orphan = _orphan_haproxy(tmp_path / "haproxy-serve" / "node-a" / "haproxy.cfg")
    started: list[bool] = []

    def no_ray(**_: object) -> None:
        started.append(ingress._alive(orphan))
        raise RuntimeError("no Ray in this test")

    import services.worker.ray_init as ray_init

    monkeypatch.setattr(ray_init.ray, "init", no_ray)
    try:
        with pytest.raises(RayStartError, match="no Ray in this test"):
            init_ray(None, serve_ingress="haproxy")
        assert started == [False]  # gone before ray.init was called
    finally:
        _kill(orphan)
