"""Service commands of the ``hyctas`` CLI: ``controller``, ``worker``, ``apikey``.

Mounted by :mod:`hyctas_cli.main` when the ``services`` extra is installed. Settings come from
``HYCTAS_*`` environment variables (:class:`services.settings.Settings`); options override them.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from hyctas_cli.utils import fail

__all__ = ["apikey_app", "controller", "deploy", "fold_serving", "serve_local", "worker"]

apikey_app = typer.Typer(no_args_is_help=True, help="API keys: create, list, revoke.")

DbOpt = Annotated[str | None, typer.Option("--db", help="database URL (default: HYCTAS_DATABASE_URL)")]


def _settings(**overrides: Any) -> Any:
    from pydantic import ValidationError

    from services.settings import Settings

    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        fail(f"invalid settings: {str(exc).splitlines()[0]} ({exc.errors()[0]['loc']}: {exc.errors()[0]['msg']})")


def _storage(url: str) -> Any:
    from hyctas_cli.search import open_storage

    return open_storage(url)


def controller(
    host: Annotated[str, typer.Option(help="bind address (0.0.0.0 in a container)")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    db: DbOpt = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    workers: Annotated[
        int | None,
        typer.Option(min=1, max=64, help="processes serving requests (default: HYCTAS_CONTROLLER_WORKERS, 1)"),
    ] = None,
) -> None:
    """Run the REST controller (migrates the database to the current schema first)."""
    import uvicorn

    settings = _settings(database_url=db, controller_workers=workers)
    if settings.controller_workers == 1:
        from services.controller.main import create_app

        uvicorn.run(create_app(settings), host=host, port=port, log_level=log_level)
        return
    _serve_processes(settings, host, port, log_level)


def _serve_processes(settings: Any, host: str, port: int, log_level: str) -> None:
    """Several uvicorn worker processes, each building its app from the environment.

    The schema is migrated once here, before any of them opens the database; their HTTP metrics
    are summed across processes through prometheus_client's multiprocess mode, in
    ``PROMETHEUS_MULTIPROC_DIR`` if set (emptied of old metric files first) or else a private
    directory removed at exit; the state gauges come from the database.
    """
    import os
    import shutil
    import tempfile
    from pathlib import Path

    import uvicorn

    from hyctas_core.storage import StorageError
    from services.storage.migrate import upgrade_database

    try:
        upgrade_database(settings.database_url)
    except StorageError as exc:
        fail(str(exc))
    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    metrics_dir = Path(given) if given else Path(tempfile.mkdtemp(prefix="hyctas-metrics-"))
    metrics_dir.mkdir(parents=True, exist_ok=True)
    for stale in metrics_dir.glob("*.db"):  # counts of a previous run must not add to this one
        stale.unlink()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    os.environ["HYCTAS_DATABASE_URL"] = settings.database_url
    try:
        uvicorn.run(
            "services.controller.main:create_app",
            factory=True,
            host=host,
            port=port,
            log_level=log_level,
            workers=settings.controller_workers,
        )
    finally:
        if not given:
            shutil.rmtree(metrics_dir, ignore_errors=True)


def worker(
    ray_address: Annotated[
        str | None, typer.Option("--ray-address", help="Ray cluster ('auto': a local head); default: a local Ray")
    ] = None,
    db: DbOpt = None,
    name: Annotated[str | None, typer.Option(help="worker name (default host-pid-random)")] = None,
    max_jobs: Annotated[int | None, typer.Option(min=1, help="exit after this many jobs")] = None,
    metrics_port: Annotated[int | None, typer.Option(min=0, max=65535, help="Prometheus port (0: none)")] = None,
) -> None:
    """Claim jobs from the Redis stream and run them on Ray until stopped (SIGINT / SIGTERM)."""
    from hyctas_core.storage import StorageError
    from services.controller.main import open_storage
    from services.queue import QueueError, RedisEventBus, RedisQueue
    from services.worker.runner import Worker

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = _settings(database_url=db, ray_address=ray_address, worker_metrics_port=metrics_port)
    try:
        storage = open_storage(settings.database_url)
        queue = RedisQueue(settings.redis_url, stream=settings.stream, lease_s=settings.lease_s)
        queue.ping()
    except (StorageError, QueueError) as exc:
        fail(str(exc))
    events = RedisEventBus(settings.redis_url, channel=settings.events_channel)
    from services.worker.ray_init import RayStartError, init_ray
    from services.worker.reaper import start_reaper

    start_reaper()  # a `kill -9` of this worker must not leave its Ray processes behind
    try:  # before any job is claimed: a worker whose Ray cannot start takes nothing
        init_ray(settings.ray_address, timeout_s=settings.ray_init_timeout_s, serve_ingress=settings.serve_ingress)
    except RayStartError as exc:
        fail(str(exc))
    if settings.worker_metrics_port:
        from prometheus_client import start_http_server

        start_http_server(settings.worker_metrics_port)
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        logging.getLogger(__name__).info("signal %d: stopping; the current job is handed back", signum)
        stop.set()
        w.shutdown(f"worker shutting down (signal {signum})")

    from services.worker.jobs import worker_maintenance

    def maintenance() -> None:
        worker_maintenance(storage, queue, settings.lease_s)

    w = Worker(storage, queue, events, settings, name=name, maintenance=maintenance)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    typer.echo(f"worker {w.name}: database {getattr(storage, 'url', '?')}, queue {settings.stream}")
    w.run(stop, max_jobs=max_jobs)


@apikey_app.command("create")
def apikey_create(
    user: Annotated[str, typer.Option(help="the user the key acts as")],
    name: Annotated[str, typer.Option(help="a label, e.g. 'laptop'")] = "",
    db: DbOpt = None,
) -> None:
    """Create an API key and print it (the only time it is shown; only its hash is stored)."""
    from services.auth import issue_api_key

    storage = _storage(_settings(database_url=db).database_url)
    try:
        key = issue_api_key(storage, user, name=name)
    except ValueError as exc:
        fail(str(exc))
    typer.echo(key)


@apikey_app.command("list")
def apikey_list(user: Annotated[str | None, typer.Option()] = None, db: DbOpt = None) -> None:
    """List keys (id, user, prefix, name, created, revoked)."""
    storage = _storage(_settings(database_url=db).database_url)
    for k in storage.list_api_keys(user):
        revoked = k.revoked_at.isoformat(timespec="seconds") if k.revoked_at else "-"
        typer.echo(f"{k.id}\t{k.user}\t{k.prefix}...\t{k.name or '-'}\t{k.created_at:%Y-%m-%d %H:%M}\t{revoked}")


@apikey_app.command("revoke")
def apikey_revoke(
    key_id: Annotated[int, typer.Argument(help="id from `hyctas apikey list`")], db: DbOpt = None
) -> None:
    """Revoke a key: requests with it get 401 within HYCTAS_KEY_CACHE_S (1 s)."""
    storage = _storage(_settings(database_url=db).database_url)
    try:
        storage.revoke_api_key(key_id)
    except KeyError:
        fail(f"no API key with id {key_id}")
    typer.echo(f"revoked key {key_id}")


def serve_local(
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="a retraining checkpoint (best.pt / last.pt)")],
    arch: Annotated[
        str | None, typer.Option("--arch", help="official arch JSON: checked against the checkpoint")
    ] = None,
    name: Annotated[str, typer.Option(help="route /segment/{name}")] = "local",
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8001,
    backend: Annotated[str, typer.Option(help="onnxruntime, torchscript or torch")] = "onnxruntime",
    max_batch_size: Annotated[int, typer.Option(min=1, max=64)] = 8,
    batch_wait_s: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.01,
    replicas: Annotated[int, typer.Option(min=1, max=64)] = 1,
) -> None:
    """Serve one trained model on a local Ray Serve (no controller, no keys): POST /segment/NAME."""
    import json
    import time
    from pathlib import Path

    from hyctas_core.retrain import load_model
    from hyctas_core.search_space import Arch

    path = Path(checkpoint)
    try:
        _, trained, _ = load_model(path)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc).splitlines()[0])
    if arch is not None:
        try:
            wanted = Arch.from_official(json.loads(Path(arch).read_text())).canonical()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            fail(f"cannot read --arch {arch!r}: {exc}")
        if wanted.hash != trained.hash:
            fail(f"--arch {arch!r} ({wanted.hash}) is not the checkpoint's architecture ({trained.hash})")
    if backend not in ("onnxruntime", "torchscript", "torch"):
        fail(f"unknown backend {backend!r}; choose onnxruntime, torchscript or torch")
    import ray

    from services.serve import ingress
    from services.serve.app import Endpoint
    from services.serve.deploy import deploy_model, ensure_gateway
    from services.worker.ray_init import RayStartError, init_ray

    settings = _settings()
    try:
        init_ray(timeout_s=settings.ray_init_timeout_s, serve_ingress=settings.serve_ingress)
    except RayStartError as exc:
        fail(str(exc))
    ensure_gateway(Endpoint(), http_host=host, http_port=port)
    options = {"backend": backend, "max_batch_size": max_batch_size, "batch_wait_s": batch_wait_s,
               "min_replicas": replicas, "max_replicas": replicas}  # fmt: skip
    deploy_model(name, str(path.resolve()), options, endpoint=Endpoint())  # one local model, no keys
    via = "HAProxy to the replica" if ingress.active() == "haproxy" else "Serve's proxy"
    typer.echo(f"serving {trained.hash} on http://{host}:{port}/segment/{name} via {via} (Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        from ray import serve

        serve.shutdown()  # type: ignore[no-untyped-call]
        ray.shutdown()


def deploy(
    model_id: Annotated[int, typer.Argument(help="a retrained model's id (GET /api/v1/models)")],
    url: Annotated[str, typer.Option(envvar="HYCTAS_URL", help="controller URL")] = "http://127.0.0.1:8000",
    key: Annotated[str | None, typer.Option(envvar="HYCTAS_API_KEY", help="API key")] = None,
    name: Annotated[str | None, typer.Option(help="deployment name (default model-ID)")] = None,
    public: Annotated[bool, typer.Option("--public", help="callable without a key")] = False,
    backend: Annotated[str, typer.Option()] = "onnxruntime",
    max_replicas: Annotated[int, typer.Option(min=1, max=64)] = 1,
    max_batch_size: Annotated[int, typer.Option(min=1, max=64)] = 8,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="wait until it serves")] = True,
) -> None:
    """Deploy a retrained model through the controller (POST /api/v1/models/ID/deploy)."""
    import time

    import httpx

    if not key:
        fail("an API key is needed: --key or HYCTAS_API_KEY")
    body: dict[str, Any] = {"public": public, "backend": backend, "max_replicas": max_replicas,
                            "max_batch_size": max_batch_size}  # fmt: skip
    if name:
        body["name"] = name
    headers = {"Authorization": f"Bearer {key}"}
    try:
        r = httpx.post(f"{url}/api/v1/models/{model_id}/deploy", json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the controller at {url}: {exc}")
    if r.status_code != 202:
        detail = r.json().get("detail") if r.headers.get("content-type", "").startswith("application/json") else r.text
        fail(f"HTTP {r.status_code}: {detail}")
    deployment = r.json()
    while wait and deployment["state"] == "deploying":
        time.sleep(1)
        deployment = httpx.get(f"{url}/api/v1/deployments/{deployment['name']}", headers=headers, timeout=30).json()
    if deployment["state"] == "failed":
        fail(f"deployment {deployment['name']!r} failed: {deployment['error']}")
    typer.echo(f"{deployment['name']}: {deployment['state']} at {deployment['route']}")


def fold_serving(
    table: Annotated[Path, typer.Option("--table", help="latency table (JSON) to calibrate")],
    out: Annotated[Path | None, typer.Option("--out", help="write here (default: the table itself)")] = None,
    db: DbOpt = None,
    deployment: Annotated[
        list[str] | None, typer.Option("--deployment", help="only these deployments (repeatable; default: all)")
    ] = None,
    min_requests: Annotated[int, typer.Option(min=1, help="ignore reports of fewer requests")] = 20,
) -> None:
    """Fold what served models measured into a latency table's calibration for their device.

    Takes every deployment whose replicas reported a latency at the table's input size, on its
    device class and with its model config, and fits the table to those end-to-end times
    (``hyctas_core.latency.fold_measurements``): later searches with the table predict what
    serving measures.
    """
    from hyctas_core.latency import LatencyTable, fold_measurements
    from hyctas_core.retrain import read_checkpoint
    from hyctas_core.search_space import Arch

    try:
        lut = LatencyTable.load(table)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    storage = _storage(_settings(database_url=db).database_url)
    wanted = set(deployment or [])
    used: list[tuple[str, Arch, float]] = []
    deployments = storage.list_deployments()
    for d in deployments:
        if wanted and d.name not in wanted:
            continue
        report = d.serving_latency
        why = _fold_mismatch(lut, d, report, min_requests)
        if why is None:
            model = storage.get_model(d.model_id)
            try:
                cfg, arch, _ = read_checkpoint(Path((model.checkpoint_uri or "").removeprefix("file://")))
            except (FileNotFoundError, ValueError, KeyError) as exc:
                why = f"its checkpoint does not load: {exc}"
            else:
                if not lut.matches(None, lut.input_size, cfg.model.to_dict()):
                    why = "its model config differs from the table's"
        if why is not None:
            typer.echo(f"  skip {d.name}: {why}")
            continue
        used.append((d.name, arch, float(report["p50_ms"])))
        typer.echo(f"  use  {d.name}: {report['p50_ms']} ms p50 over {report['requests']} requests")
    if missing := wanted - {d.name for d in deployments}:
        fail(f"no deployment {', '.join(sorted(missing))}")
    if not used:
        fail("no deployment's measurements match this table (see above)")
    note = fold_measurements(
        lut, [a for _, a, _ in used], [ms for _, _, ms in used], source="serving: " + ", ".join(n for n, _, _ in used)
    )
    lut.save(out or table)
    typer.echo(
        f"{note['method']}: error {note['mape_before_pct']} % -> {note['mape_after_pct']} % on {note['networks']} "
        f"served network(s); wrote {out or table}"
    )


def _fold_mismatch(table: Any, deployment: Any, report: dict[str, Any] | None, min_requests: int) -> str | None:
    """Why a deployment's report cannot calibrate ``table``, or None."""
    if not report:
        return "no latency reported yet"
    if int(report.get("requests", 0)) < min_requests:
        return f"only {report.get('requests', 0)} requests measured (--min-requests {min_requests})"
    if list(report.get("input_size") or []) != list(table.input_size):
        size = "x".join(str(v) for v in report.get("input_size") or [])
        return f"served at {size}, the table is for {table.input_size[0]}x{table.input_size[1]}"
    if table.device_class is not None and report.get("device_class") != table.device_class:
        return f"measured on {report.get('device_class')}, the table is for {table.device_class}"
    return None
