"""CLI commands for the NSGA-II search and its stored results (``search``, ``pareto``, ``export-arch``)."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from hyctas_cli.utils import cli_console, cli_progress, fail, parse_size

if TYPE_CHECKING:
    from hyctas_core.evaluate import EvaluatorSpec
    from hyctas_core.storage import IndividualRecord, SearchRecord
    from services.storage.base import Storage

__all__ = ["DEFAULT_DB", "db_app", "export_arch", "open_storage", "pareto", "search"]

DEFAULT_DB = "sqlite:///runs/hyctas.db"

DbOpt = Annotated[str, typer.Option("--db", help="database URL (sqlite:///FILE or postgresql+psycopg://...)")]


def open_storage(url: str) -> Storage:
    """Connect (and migrate to the current schema); exit 2 with one line if that fails."""
    try:
        from services.storage.sql import SQLStorage
    except ImportError as e:  # the services extra is not installed
        fail(f"database storage needs the 'services' extra (pip install 'hyctas[services]'): {e}")
    from hyctas_core.storage import StorageError

    if url.startswith("sqlite:///"):
        db_path = Path(url.removeprefix("sqlite:///"))
        if db_path.parent and not db_path.parent.exists():
            db_path.parent.mkdir(parents=True, exist_ok=True)
    from services.storage.sql import create_storage_engine, mask_url, one_line

    try:
        engine = create_storage_engine(url, pooled=False)
    except StorageError as e:
        fail(str(e))
    try:
        with engine.connect():
            pass
    except Exception as e:  # the DBAPI's own connection errors
        fail(f"cannot connect to {mask_url(url)}: {one_line(e)}")
    finally:
        engine.dispose()
    try:
        return SQLStorage(url, create=True)
    except StorageError as e:
        fail(str(e))


def _find(storage: Storage, name: str) -> SearchRecord:
    record = storage.find_search(name)
    if record is None:
        names = [s.name for s in storage.list_searches(limit=20)[0]]
        fail(f"no search named {name!r} in this database (known: {', '.join(names) if names else 'none'})")
    return record


def _parse_branches(text: str | None) -> tuple[int, ...] | None:
    if text is None or text.strip() in ("", "all", "mixed"):
        return None
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        fail(f"--branches {text!r} must be a comma-separated subset of 1,2,3 (e.g. 1,2,3)")
    return values


def _front_rows(storage: Storage, search: SearchRecord) -> list[IndividualRecord]:
    return storage.pareto_front(search.id)


def _print_front(search: SearchRecord, front: list[IndividualRecord], cost_key: str) -> None:
    from rich.table import Table

    from hyctas_core.verify import verification_summary

    retrained = {
        r["arch_hash"]: r["retrained_miou"]
        for r in (search.verification or {}).get("rows", [])
        if r.get("retrained_miou") is not None
    }
    table = Table(
        title=f"Pareto front of {search.name!r} ({len(front)} archs, {search.state.value})",
        caption=verification_summary(search.verification) if search.verification else None,
    )
    columns = ["#", "arch", "branches", "mIoU %", cost_key, "GMACs", "params M"]
    if search.verification:
        columns.insert(4, "retrained mIoU %")
    for col in columns:
        table.add_column(col, justify="right" if col not in ("arch",) else "left")
    for i, ind in enumerate(front):
        o = ind.objectives
        cells = [
            str(i), ind.arch_hash, str(ind.num_branches), f"{100 * o['miou']:.2f}", f"{o[cost_key]:.3f}",
            f"{o['gmacs']:.3f}", f"{o['params_m']:.3f}",
        ]  # fmt: skip
        if search.verification:
            value = retrained.get(ind.arch_hash)
            cells.insert(4, f"{100 * value:.2f}" if value is not None else "")
        table.add_row(*cells)
    cli_console().print(table)


def _front_json(search: SearchRecord, front: list[IndividualRecord]) -> dict[str, Any]:
    return {
        "search": search.name,
        "state": search.state.value,
        "generation": search.generation,
        "objective": search.config["search"]["objective"],
        "verification": search.verification,
        "front": [
            {"arch_hash": i.arch_hash, "num_branches": i.num_branches, "objectives": i.objectives, "arch": i.arch}
            for i in front
        ],
    }


def _write_outputs(storage: Storage, search: SearchRecord, out: Path) -> tuple[Path, Path]:
    from hyctas_core.plots import plot_pareto
    from hyctas_core.search import SearchConfig

    cost_key = SearchConfig.from_dict(search.config["search"]).cost_key
    latest = storage.latest_generation(search.id)
    individuals = [
        {"arch_hash": i.arch_hash, "num_branches": i.num_branches, "objectives": i.objectives}
        for i in storage.list_individuals(search.id)
    ]
    out.mkdir(parents=True, exist_ok=True)
    png = plot_pareto(individuals, latest.front if latest else [], cost_key, out / "pareto.png", title=search.name)
    front_json = out / "pareto.json"
    front_json.write_text(json.dumps(_front_json(search, _front_rows(storage, search)), indent=1))
    return png, front_json


def search(
    supernet: Annotated[Path | None, typer.Option("--supernet", help="supernet checkpoint")] = None,
    data: Annotated[Path | None, typer.Option("--data", help="dataset root (Cityscapes layout)")] = None,
    objective: Annotated[str, typer.Option(help="latency, flops or params (minimised with -mIoU)")] = "latency",
    pop: Annotated[int, typer.Option("--pop", help="population size")] = 40,
    generations: Annotated[int, typer.Option(help="generations (per branch count with --branches)")] = 20,
    branches: Annotated[str | None, typer.Option(help="e.g. 1,2,3: one search per branch count")] = None,
    db: DbOpt = DEFAULT_DB,
    name: Annotated[str | None, typer.Option(help="search name (required with --resume)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="continue the stored search --name")] = False,
    workers: Annotated[int, typer.Option(min=0, help="Ray evaluator actors (0/1: in-process)")] = 1,
    seed: Annotated[int, typer.Option()] = 0,
    calib_images: Annotated[int, typer.Option(min=1)] = 64,
    val_images: Annotated[int, typer.Option(min=1)] = 32,
    eval_size: Annotated[str | None, typer.Option(help="resize images to HxW for scoring")] = None,
    input_size: Annotated[str | None, typer.Option(help="HxW for latency / FLOPs (default: image size)")] = None,
    latency_table: Annotated[Path | None, typer.Option(help="predict latency from this table")] = None,
    latency_seconds: Annotated[float, typer.Option(min=0.05)] = 1.0,
    crossover_prob: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.9,
    mutation_prob: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.02,
    out: Annotated[Path | None, typer.Option(help="where pareto.png / pareto.json go (default runs/<name>)")] = None,
    device: Annotated[str, typer.Option()] = "cpu",
    verify: Annotated[
        int,
        typer.Option(
            "--verify",
            min=0,
            help="after the search, retrain K front points briefly and report the supernet's rank fidelity (0: off)",
        ),
    ] = 0,
    verify_epochs: Annotated[int, typer.Option(min=1, help="training epochs per verified point")] = 8,
) -> None:
    """Multi-objective NSGA-II search over the supernet's sub-networks; resumable."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from hyctas_core.evaluate import EvaluatorSpec, LocalEvaluator
    from hyctas_core.search import OBJECTIVES, SearchConfig
    from hyctas_core.search_runner import SearchFinishedError, create_search, run_search
    from hyctas_core.storage import DuplicateName, SearchState
    from hyctas_core.train import load_supernet
    from hyctas_core.verify import VerifyConfig

    if objective not in OBJECTIVES:
        fail(f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)}")
    if resume and not name:
        fail("--resume needs the --name of the search to continue")
    storage = open_storage(db)
    if resume:
        assert name is not None
        record = _find(storage, name)
        if record.state == SearchState.SUCCEEDED:
            pending = record.config.get("verify") and (record.verification or {}).get("state") != "succeeded"
            if pending:
                typer.echo(f"search {name!r} already finished; resuming its verification")
                record = _verify(
                    storage,
                    record,
                    EvaluatorSpec.from_dict(record.config["evaluator"]),
                    Path(out or Path("runs") / name) / "verify",
                )
            else:
                typer.echo(f"search {name!r} already finished ({record.generation + 1} generations); nothing to resume")
            _print_front(record, _front_rows(storage, record), SearchConfig.from_dict(record.config["search"]).cost_key)
            return
        if record.state == SearchState.CANCELLED:
            fail(f"search {name!r} was cancelled; it cannot be resumed")
        spec = EvaluatorSpec.from_dict(record.config["evaluator"])
        typer.echo(f"resuming {name!r} after generation {record.generation} (config as stored)")
    else:
        if supernet is None or data is None:
            fail("--supernet and --data are required for a new search")
        assert supernet is not None and data is not None
        if not data.is_dir():
            fail(f"data directory {str(data)!r} does not exist")
        try:
            net = load_supernet(supernet)
        except (FileNotFoundError, ValueError) as e:
            fail(str(e))
        try:
            config = SearchConfig(
                objective=objective,
                pop_size=pop,
                generations=generations,
                crossover_prob=crossover_prob,
                mutation_prob=mutation_prob,
                branches=_parse_branches(branches),
                seed=seed,
                num_layers=net.cfg.num_layers,
            )
        except ValueError as e:
            fail(str(e))
        spec = EvaluatorSpec(
            supernet=str(supernet.resolve()),
            data=str(data.resolve()),
            calib_images=calib_images,
            val_images=val_images,
            eval_size=parse_size(eval_size) if eval_size else None,
            input_size=parse_size(input_size) if input_size else None,
            latency_table=str(latency_table.resolve()) if latency_table else None,
            latency_seconds=latency_seconds,
            seed=seed,
            device=device,
        )
        extra: dict[str, Any] = {}
        if verify:
            try:
                extra["verify"] = VerifyConfig(k=verify, epochs=verify_epochs, seed=seed).to_dict()
            except ValueError as e:
                fail(str(e))
        name = name or f"search-{time.strftime('%Y%m%d-%H%M%S')}"
        try:
            search_id = create_search(storage, name, config, spec.to_dict(), extra=extra)
        except DuplicateName:
            fail(f"a search named {name!r} already exists: pass --resume to continue it or choose another --name")
        record = storage.get_search(search_id)
    cfg = SearchConfig.from_dict(record.config["search"])
    try:
        if workers > 1:
            from dataclasses import replace

            from services.worker.ray_pool import RayEvaluatorPool

            evaluator: Any = RayEvaluatorPool(replace(spec, threads=1), workers)
        else:
            evaluator = LocalEvaluator(spec)
    except (FileNotFoundError, ValueError) as e:
        fail(str(e).splitlines()[0])
    columns = [
        TextColumn("generation"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("HV {task.fields[hv]:.4f}  front {task.fields[front]}  evaluated {task.fields[n]}"),
        TimeElapsedColumn(),
    ]
    try:
        with cli_progress(*columns) as bar:
            task = bar.add_task(
                "search", total=cfg.total_generations, completed=record.generation + 1, hv=0.0, front=0, n=0
            )
            record = run_search(
                storage,
                record.id,
                evaluator,
                progress=lambda p: bar.update(
                    task, completed=p.generation + 1, hv=p.hypervolume, front=p.front_size, n=p.n_evaluated
                ),
            )
    except SearchFinishedError as e:
        fail(str(e))
    finally:
        evaluator.close()
    if record.config.get("verify"):
        record = _verify(storage, record, spec, Path(out or Path("runs") / record.name) / "verify")
    _print_front(record, _front_rows(storage, record), cfg.cost_key)
    png, front_json = _write_outputs(storage, record, out or Path("runs") / record.name)
    typer.echo(f"plot: {png}\nfront: {front_json}\ndatabase: {db} (search {record.name!r})")


def _verify(storage: Storage, record: SearchRecord, spec: EvaluatorSpec, run_root: Path) -> SearchRecord:
    """Retrain the stored search's verification points in this process, with a bar per point."""
    from rich.progress import BarColumn, TextColumn, TimeElapsedColumn

    from hyctas_cli.verify import verify_search
    from hyctas_core.verify import NothingToVerify, VerifyConfig, verification_summary

    cfg = VerifyConfig.from_dict(record.config["verify"])
    if (record.verification or {}).get("state") == "succeeded":
        return record
    columns = [
        TextColumn("verify {task.fields[arch]} ({task.fields[i]}/{task.fields[k]})"),
        BarColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"),
        TimeElapsedColumn(),
    ]
    with cli_progress(*columns) as bar:
        task = bar.add_task("verify", total=None, arch="", i=0, k=cfg.k, loss=0.0)

        points = itertools.count(int((record.verification or {}).get("done", 0)) + 1)
        try:
            verify_search(
                storage, record.id, cfg, spec, run_root, bar=bar, task=task, val_images=spec.val_images,
                device=spec.device, fields=lambda row: {"arch": row["arch_hash"], "i": next(points), "k": cfg.k},
            )  # fmt: skip
        except NothingToVerify as e:  # a front of one point: the search stands, the check cannot run
            typer.echo(f"cannot verify: {str(e).splitlines()[0]}", err=True)
    record = storage.get_search(record.id)
    typer.echo(verification_summary(record.verification))
    return record


def pareto(
    search_name: Annotated[str, typer.Option("--search", help="search name")],
    db: DbOpt = DEFAULT_DB,
    as_json: Annotated[bool, typer.Option("--json")] = False,
    plot: Annotated[Path | None, typer.Option(help="also write the plot (and pareto.json) into this folder")] = None,
) -> None:
    """Print the stored Pareto front of a search."""
    from hyctas_core.search import SearchConfig

    storage = open_storage(db)
    record = _find(storage, search_name)
    front = _front_rows(storage, record)
    if as_json:
        typer.echo(json.dumps(_front_json(record, front)))
    else:
        _print_front(record, front, SearchConfig.from_dict(record.config["search"]).cost_key)
    if plot is not None:
        png, _ = _write_outputs(storage, record, plot)
        if not as_json:
            typer.echo(f"plot: {png}")


def export_arch(
    search_name: Annotated[str, typer.Option("--search", help="search name")],
    out: Annotated[Path, typer.Option("--out", help="output file (official JSON)")],
    db: DbOpt = DEFAULT_DB,
    arch_hash: Annotated[str | None, typer.Option("--hash", help="arch hash from the front table")] = None,
    index: Annotated[int | None, typer.Option("--index", help="position on the front (0 = cheapest)")] = None,
    knee: Annotated[bool, typer.Option("--knee", help="the front's knee point")] = False,
) -> None:
    """Write one point of a stored front as the official architecture JSON."""
    from hyctas_core.search import SearchConfig, knee_index

    if sum(x is not None and x is not False for x in (arch_hash, index, knee)) != 1:
        fail("choose exactly one of --hash H, --index I or --knee")
    storage = open_storage(db)
    record = _find(storage, search_name)
    front = _front_rows(storage, record)
    if not front:
        fail(f"search {search_name!r} has no evaluated generation yet")
    if arch_hash is not None:
        matches = [i for i in storage.list_individuals(record.id) if i.arch_hash == arch_hash]
        if not matches:
            fail(f"arch {arch_hash!r} was not evaluated in search {search_name!r}")
        chosen = matches[0]
    elif index is not None:
        if not 0 <= index < len(front):
            fail(f"--index {index} out of range: the front has {len(front)} archs (0..{len(front) - 1})")
        chosen = front[index]
    else:
        cost_key = SearchConfig.from_dict(record.config["search"]).cost_key
        chosen = front[knee_index([(i.objectives["miou"], i.objectives[cost_key]) for i in front])]
    if not out.parent.is_dir():
        fail(f"output directory {str(out.parent)!r} does not exist")
    out.write_text(json.dumps(chosen.arch))
    typer.echo(
        f"wrote {chosen.arch_hash} ({chosen.num_branches} branches, "
        f"mIoU {100 * chosen.objectives['miou']:.2f}) to {out}"
    )


db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)


@db_app.command("upgrade")
def db_upgrade(db: DbOpt = DEFAULT_DB, revision: Annotated[str, typer.Option()] = "head") -> None:
    """Migrate the database schema to ``revision`` (default: the newest)."""
    from hyctas_core.storage import StorageError
    from services.storage.migrate import current_revision, upgrade_database

    try:
        upgrade_database(db, revision)
        typer.echo(f"database at revision {current_revision(db)}")
    except StorageError as e:
        fail(str(e))


@db_app.command("current")
def db_current(db: DbOpt = DEFAULT_DB) -> None:
    """Print the schema revision of the database (none if never migrated)."""
    from hyctas_core.storage import StorageError
    from services.storage.migrate import current_revision, head_revision

    try:
        typer.echo(f"current: {current_revision(db) or 'none'}  head: {head_revision()}")
    except StorageError as e:
        fail(str(e))
