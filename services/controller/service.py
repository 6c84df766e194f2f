"""What the routes do, apart from HTTP: build job payloads, create rows, enqueue, cancel.

Every submission creates its database rows first and enqueues second. If the queue refuses,
the job is cancelled with the reason (nothing half-submitted stays QUEUED forever) and
:class:`QueueError` reaches the route as a 503.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from hyctas_core.config import ModelConfig
from hyctas_core.evaluate import EvaluatorSpec
from hyctas_core.presets import get_preset, modules_of, preset_model
from hyctas_core.retrain import RetrainConfig
from hyctas_core.search import SearchConfig
from hyctas_core.search_space import Arch, ArchError, validate
from hyctas_core.storage import DuplicateName, IllegalTransition, SearchRecord, SearchState
from hyctas_core.train import SupernetTrainConfig
from hyctas_core.verify import VerifyConfig
from services.controller import limits as limits_
from services.controller.schemas import ModelsCreate, SearchCreate, SupernetCreate
from services.devices import resolve_target
from services.queue import EventBus, JobQueue, QueueError
from services.storage.base import JobRecord, JobState, ModelRecord, Storage

__all__ = [
    "Conflict",
    "Invalid",
    "NotFound",
    "owned",
    "owned_supernet",
    "cancel_job",
    "delete_deployment",
    "deploy_model",
    "cancel_search",
    "publish",
    "submit_models",
    "submit_search",
    "submit_supernet",
]


class Invalid(ValueError):
    """A request that passed the schema but makes no sense (422), e.g. an arch that breaks a constraint."""


class Conflict(RuntimeError):
    """A request that clashes with stored state (409), e.g. a duplicate name or a supernet still training."""


def publish(events: EventBus | None, event: dict[str, Any]) -> None:
    """Best effort: progress events are a convenience, the database is the truth."""
    if events is None:
        return
    try:
        events.publish(event)
    except QueueError:
        pass


def _enqueue(storage: Storage, queue: JobQueue, job_id: int, kind: str) -> None:
    try:
        queue.enqueue(job_id, kind)
    except QueueError as exc:
        storage.finish_job(job_id, JobState.CANCELLED, error=f"could not enqueue: {exc}")
        raise


def _device(value: str) -> str:
    return value  # "auto" is resolved by the worker, where the GPUs are


def _within_limits(check: Callable[..., None], **kwargs: Any) -> None:
    try:
        check(**kwargs)
    except limits_.LimitExceeded as exc:
        raise Invalid(str(exc)) from None


def submit_supernet(
    storage: Storage, queue: JobQueue, events: EventBus | None, owner: str, req: SupernetCreate, *, limits: Any
) -> JobRecord:
    """A supernet-training job.

    Raises:
        Invalid: the training config is inconsistent, or over a cost limit.
        QueueError: the queue is down (the job is cancelled).
    """
    dataset_ref = req.dataset.model_dump(mode="json")
    _within_limits(limits_.check_dataset, dataset=dataset_ref, limits=limits)
    _within_limits(
        limits_.check_training, epochs=req.epochs, batch_size=req.batch_size, crop_size=tuple(req.crop_size),
        steps_per_epoch=req.steps_per_epoch, dataset=dataset_ref, limits=limits, workers=req.workers,
    )  # fmt: skip
    _within_limits(limits_.check_active_jobs, storage=storage, owner=owner, limits=limits)
    try:
        train = SupernetTrainConfig(
            model=ModelConfig(base_channels=req.base_channels, num_layers=req.num_layers),
            epochs=req.epochs,
            batch_size=req.batch_size,
            lr=req.lr,
            lr_final=req.lr_final,
            crop_size=tuple(req.crop_size),  # type: ignore[arg-type]
            steps_per_epoch=req.steps_per_epoch,
            sampling=req.sampling,
            sandwich_random=req.sandwich_random,
            distill=req.distill,
            warmup_steps=req.warmup_steps,
            class_weighting=req.class_weighting,
            seed=req.seed,
            checkpoint_every=20,
        )
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    payload = {
        "name": req.name,
        "dataset": req.dataset.model_dump(mode="json"),
        "train": train.to_dict(),
        "device": _device(req.device),
        "parallel": req.parallel(),
    }
    job_id = storage.create_job("train_supernet", payload, owner=owner, stream=queue.stream)
    _enqueue(storage, queue, job_id, "train_supernet")
    publish(events, {"type": "job", "owner": owner, "job_id": job_id, "kind": "train_supernet", "state": "queued"})
    return storage.get_job(job_id)


class NotFound(LookupError):
    """An id the caller cannot see, unknown or someone else's (both look the same): a 404."""


class _Owned(Protocol):
    @property
    def owner(self) -> str | None: ...


OwnedRecord = TypeVar("OwnedRecord", bound=_Owned)


def owned(
    find: Callable[[], OwnedRecord | None],
    owner: str,
    what: str,
    *,
    accept: Callable[[OwnedRecord], bool] | None = None,
) -> OwnedRecord:
    """The record ``find()`` returns if ``owner`` owns it (and ``accept`` takes it).

    The one ownership check of the API: another user's record and an unknown id give the same
    answer, so ids leak nothing.

    Raises:
        NotFound: ``no {what}``; also when ``find`` raises KeyError.
    """
    try:
        record = find()
    except KeyError:
        record = None
    if record is None or record.owner != owner or (accept is not None and not accept(record)):
        raise NotFound(f"no {what}")
    return record


def owned_supernet(storage: Storage, supernet_id: int, owner: str) -> JobRecord:
    """The owner's supernet-training job. Raises: NotFound."""
    return owned(
        lambda: storage.get_job(supernet_id),
        owner,
        f"supernet {supernet_id}",
        accept=lambda job: job.kind == "train_supernet",
    )


def _ready_supernet(storage: Storage, supernet_id: int, owner: str) -> JobRecord:
    try:
        supernet = owned_supernet(storage, supernet_id, owner)
    except NotFound:
        raise Invalid(f"supernet_id: no supernet {supernet_id}") from None
    if supernet.state is not JobState.SUCCEEDED or not (supernet.result or {}).get("checkpoint"):
        raise Conflict(f"supernet {supernet_id} is {supernet.state.value}: submit when it has succeeded")
    return supernet


def _target_device(queue: JobQueue, requested: str | None) -> str | None:
    """The device class a new search times latency on, from what the workers last said of the
    cluster; None when no worker said anything lately (the worker then resolves it).

    Raises:
        Invalid: none named and the cluster has several classes.
    """
    try:
        known = queue.device_classes()
    except QueueError:
        known = None
    if requested is None and not known:
        return None
    try:
        return resolve_target(requested, known or {})
    except ValueError as exc:  # MixedCluster
        raise Invalid(str(exc)) from None


def submit_search(
    storage: Storage, queue: JobQueue, events: EventBus | None, owner: str, req: SearchCreate, *, limits: Any
) -> SearchRecord:
    """A search job and its search row (the row holds everything needed to replay it).

    Raises:
        Invalid: limits exceeded or an unknown supernet. Conflict: the name exists, or the
        supernet is not trained yet. QueueError: the queue is down.
    """
    supernet = _ready_supernet(storage, req.supernet_id, owner)
    dataset_ref = req.dataset.model_dump(mode="json") if req.dataset else supernet.payload["dataset"]
    _within_limits(limits_.check_dataset, dataset=dataset_ref, limits=limits)
    _within_limits(
        limits_.check_search, population=req.population, generations=req.generations,
        branch_counts=len(req.branches) if req.branches else 1, calib_images=req.evaluation.calib_images,
        val_images=req.evaluation.val_images,
        eval_size=tuple(req.evaluation.eval_size) if req.evaluation.eval_size else None, dataset=dataset_ref,
        limits=limits,
    )  # fmt: skip
    _within_limits(limits_.check_active_jobs, storage=storage, owner=owner, limits=limits)
    if storage.find_search(req.name, owner=owner) is not None:
        raise Conflict(f"a search named {req.name!r} exists")
    num_layers = int(supernet.payload["train"]["model"]["num_layers"])
    try:
        config = SearchConfig(
            objective=req.objective,
            pop_size=req.population,
            generations=req.generations,
            crossover_prob=req.crossover_prob,
            mutation_prob=req.mutation_prob,
            branches=tuple(req.branches) if req.branches else None,
            seed=req.seed,
            num_layers=num_layers,
        )
    except ValueError as exc:
        raise Invalid(str(exc)) from None
    target = _target_device(queue, req.target_device)
    ev = req.evaluation
    spec = EvaluatorSpec(
        supernet=supernet.result["checkpoint"],  # type: ignore[index]
        data="",  # the worker resolves "dataset" on its own disk
        calib_images=ev.calib_images,
        val_images=ev.val_images,
        eval_size=tuple(ev.eval_size) if ev.eval_size else None,  # type: ignore[arg-type]
        latency_seconds=ev.latency_seconds,
        seed=req.seed,
        threads=1,
        device_class=target,
    )
    evaluator = {**spec.to_dict(), "data": None}
    verify = None
    if req.verify_top_k:
        try:
            verify = VerifyConfig(k=req.verify_top_k, epochs=req.verify_epochs, seed=req.seed).to_dict()
        except ValueError as exc:
            raise Invalid(str(exc)) from None
    dataset = req.dataset.model_dump(mode="json") if req.dataset else supernet.payload["dataset"]
    job_id = storage.create_job("search", {"search_name": req.name}, owner=owner, stream=queue.stream)
    stored = {
        "search": config.to_dict(),
        "evaluator": evaluator,
        "dataset": dataset,
        "supernet_id": supernet.id,
        "job_id": job_id,
        **({"verify": verify} if verify else {}),
    }
    try:
        search_id = storage.create_search(req.name, stored, owner=owner)
    except DuplicateName:
        storage.finish_job(job_id, JobState.CANCELLED, error="a search with this name was created concurrently")
        raise Conflict(f"a search named {req.name!r} exists") from None
    try:
        _enqueue(storage, queue, job_id, "search")
    except QueueError:
        storage.set_search_state(search_id, SearchState.CANCELLED, error="could not enqueue the job")
        raise
    publish(events, {"type": "search", "owner": owner, "search_id": search_id, "job_id": job_id, "state": "created"})
    return storage.get_search(search_id)


def _arch_of(storage: Storage, owner: str, choice: Any) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(official JSON, hash, source) of one requested architecture. Raises Invalid."""
    if choice.preset:
        arch = get_preset(choice.preset)
        return arch.to_official(), arch.hash, {"preset": choice.preset}
    if choice.arch is not None:
        try:
            arch = Arch.from_official(choice.arch).canonical()
            validate(arch)
        except (ArchError, ValueError, KeyError, TypeError, IndexError) as exc:
            raise Invalid(
                f"arch {choice.name!r}: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}"
            ) from None
        return arch.to_official(), arch.hash, {"uploaded": True}
    try:
        search = owned(lambda: storage.get_search(choice.search_id), owner, f"search {choice.search_id}")
    except NotFound as exc:
        raise Invalid(f"arch {choice.name!r}: {exc}") from None
    for ind in storage.list_individuals(search.id):
        if ind.arch_hash == choice.arch_hash:
            return ind.arch, ind.arch_hash, {"search_id": search.id, "generation": ind.generation}
    raise Invalid(f"arch {choice.name!r}: search {search.id} has no arch {choice.arch_hash}")


def submit_models(
    storage: Storage, queue: JobQueue, events: EventBus | None, owner: str, req: ModelsCreate, *, limits: Any
) -> tuple[JobRecord, list[ModelRecord]]:
    """One retrain job training every requested arch (one Ray Tune trial each).

    Raises:
        Invalid / Conflict / QueueError as for searches.
    """
    supernet = _ready_supernet(storage, req.supernet_id, owner) if req.supernet_id is not None else None
    dataset_ref = req.dataset.model_dump(mode="json") if req.dataset else supernet.payload["dataset"]  # type: ignore[union-attr]
    _within_limits(limits_.check_dataset, dataset=dataset_ref, limits=limits)
    _within_limits(
        limits_.check_training, epochs=req.epochs, batch_size=req.batch_size, crop_size=tuple(req.crop_size),
        steps_per_epoch=req.steps_per_epoch, dataset=dataset_ref, limits=limits, models=len(req.archs),
        workers=req.workers,
    )  # fmt: skip
    _within_limits(limits_.check_active_jobs, storage=storage, owner=owner, limits=limits)
    model_cfg = dict(supernet.payload["train"]["model"]) if supernet is not None else {}
    if req.base_channels is not None:
        model_cfg["base_channels"] = req.base_channels
    chosen = [_arch_of(storage, owner, c) for c in req.archs]
    depths = {Arch.from_official(arch_json).num_layers for arch_json, _, _ in chosen}
    if len(depths) != 1:
        raise Invalid(f"archs of one retrain job must have the same number of cells, got {sorted(depths)}")
    model_cfg["num_layers"] = depths.pop()
    presets = [c.preset for c in req.archs if c.preset]
    if supernet is None and presets and len(presets) == len(req.archs):
        # Presets without a supernet: their own modules (official, or light for -lite ones).
        modules = [modules_of(preset_model(p)) for p in presets]
        if any(m != modules[0] for m in modules):
            raise Invalid("presets of one retrain job must share their modules: do not mix hyctas-x and hyctas-x-lite")
        model_cfg = {**modules[0], **model_cfg}
    try:
        config = RetrainConfig(
            model=ModelConfig(**model_cfg),
            epochs=req.epochs,
            batch_size=req.batch_size,
            lr=req.lr,
            crop_size=tuple(req.crop_size),  # type: ignore[arg-type]
            steps_per_epoch=req.steps_per_epoch,
            val_images=req.val_images,
            seed=req.seed,
            checkpoint_every=50,
        )
    except (ValueError, TypeError) as exc:
        raise Invalid(str(exc).splitlines()[0]) from None
    dataset = req.dataset.model_dump(mode="json") if req.dataset else supernet.payload["dataset"]  # type: ignore[union-attr]
    if req.asha and req.workers > 1:
        raise Invalid("asha runs the models as competing Ray Tune trials: use it with workers 1")
    payload = {
        "dataset": dataset,
        "retrain": config.to_dict(),
        "asha": req.asha,
        "device": _device(req.device),
        "parallel": req.parallel(),
    }
    job_id = storage.create_job("retrain", payload, owner=owner, stream=queue.stream)
    model_ids = [
        storage.create_model(c.name, arch_json, arch_hash, owner=owner, job_id=job_id, source=source)
        for (arch_json, arch_hash, source), c in zip(chosen, req.archs, strict=True)
    ]
    try:
        _enqueue(storage, queue, job_id, "retrain")
    except QueueError:
        for mid in model_ids:
            storage.update_model(mid, state=JobState.CANCELLED, error="could not enqueue the job")
        raise
    publish(events, {"type": "job", "owner": owner, "job_id": job_id, "kind": "retrain", "state": "queued"})
    return storage.get_job(job_id), [storage.get_model(m) for m in model_ids]


def cancel_job(storage: Storage, events: EventBus | None, job: JobRecord) -> JobRecord:
    """Cancel a queued or running job (its worker stops within one evaluation or step).

    Raises:
        IllegalTransition: the job already finished.
    """
    storage.finish_job(job.id, JobState.CANCELLED, error="cancelled by user")
    if job.kind == "search":
        search = storage.find_search(job.payload["search_name"], owner=job.owner)
        if search is not None and not search.state.is_finished():
            storage.set_search_state(search.id, SearchState.CANCELLED, error="cancelled by user")
    for model in storage.list_models(job_id=job.id, limit=1000)[0]:
        if not model.state.is_finished():
            storage.update_model(model.id, state=JobState.CANCELLED, error="cancelled by user")
    if job.kind == "verify":
        record = storage.get_search(int(job.payload["search_id"])).verification or {}
        if record.get("state") != "succeeded":
            storage.set_search_verification(
                int(job.payload["search_id"]), {**record, "state": "cancelled", "error": "cancelled by user"}
            )
    publish(events, {"type": "job", "owner": job.owner, "job_id": job.id, "kind": job.kind, "state": "cancelled"})
    return storage.get_job(job.id)


def cancel_search(storage: Storage, events: EventBus | None, search: SearchRecord) -> SearchRecord:
    """Cancel a search and its job.

    Raises:
        IllegalTransition: the search already finished.
    """
    job_id = search.config.get("job_id")
    job = storage.get_job(job_id) if job_id is not None else None
    if search.state.is_finished() and (job is None or job.state.is_finished()):
        raise IllegalTransition(f"search {search.id} is {search.state.value}: it cannot be cancelled")
    if job is not None and not job.state.is_finished():
        cancel_job(storage, events, job)
    if not storage.get_search(search.id).state.is_finished():
        storage.set_search_state(search.id, SearchState.CANCELLED, error="cancelled by user")
    publish(events, {"type": "search", "owner": search.owner, "search_id": search.id, "state": "cancelled"})
    return storage.get_search(search.id)


def export_model(
    storage: Storage, owner: str, model_id: int, *, fmt: str, input_size: tuple[int, int] | None, out_dir: Path
) -> Path:
    """The trained network of a retrained model as an ONNX (one file) or TorchScript file; exported
    once per (format, input size) and kept in ``out_dir`` while the checkpoint is unchanged.

    Raises:
        NotFound: not the owner's model. Conflict: the model has no checkpoint yet.
        Invalid: the checkpoint cannot be read.
    """
    from hyctas_core.export import export_onnx, export_torchscript
    from hyctas_core.retrain import load_model

    model = owned(lambda: storage.get_model(model_id), owner, f"model {model_id}")
    if model.state is not JobState.SUCCEEDED or not model.checkpoint_uri:
        raise Conflict(f"model {model_id} is {model.state.value}: export it once it has been retrained")
    checkpoint = Path(model.checkpoint_uri.removeprefix("file://"))
    size = f"{input_size[0]}x{input_size[1]}" if input_size else "crop"  # "crop": the checkpoint's crop size
    out = out_dir / f"model-{model_id}-{size}.{'onnx' if fmt == 'onnx' else 'pt'}"
    if out.is_file() and checkpoint.is_file() and out.stat().st_mtime >= checkpoint.stat().st_mtime:
        return out  # exported before: no checkpoint to load
    try:
        net, _, cfg = load_model(checkpoint)
    except (FileNotFoundError, ValueError) as exc:
        raise Invalid(f"model {model_id}: {str(exc).splitlines()[0]}") from None
    h, w = input_size or cfg.crop_size
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")  # concurrent requests never see half a file
    if fmt == "onnx":
        export_onnx(net.eval(), (h, w), tmp)
    else:
        export_torchscript(net.eval(), (h, w), tmp)
    os.replace(tmp, out)
    return out


def deploy_model(
    storage: Storage, queue: JobQueue, events: EventBus | None, owner: str, model_id: int, req: Any
) -> Any:
    """Create (or update in place) the deployment of a trained model, through a ``deploy`` job.

    Raises:
        NotFound: not the owner's model. Conflict: the model has no checkpoint yet, or the name
        belongs to someone else's deployment. QueueError: the queue is down.
    """
    model = owned(lambda: storage.get_model(model_id), owner, f"model {model_id}")
    if model.state is not JobState.SUCCEEDED or not model.checkpoint_uri:
        raise Conflict(f"model {model_id} is {model.state.value}: deploy it once it has been retrained")
    name = req.name or f"model-{model_id}"
    options = req.model_dump(mode="json", exclude={"name", "public"})
    existing = storage.find_deployment(name)
    if existing is not None and existing.owner != owner:
        # Names are routes (/segment/{name}), hence global; the answer says nothing of whose it is.
        raise Conflict(f"the deployment name {name!r} is not available: choose another name")
    if existing is not None:
        if existing.state == "deleting":
            raise Conflict(f"deployment {name!r} is being deleted")
        storage.update_deployment(
            existing.id, state="deploying", options=options, model_id=model_id, public=req.public, error=""
        )
        deployment_id = existing.id
    else:
        deployment_id = storage.create_deployment(name, model_id, options, owner=owner, public=req.public)
    job_id = storage.create_job(
        "deploy", {"deployment_id": deployment_id, "action": "deploy"}, owner=owner, stream=queue.stream
    )
    try:
        _enqueue(storage, queue, job_id, "deploy")
    except QueueError:
        storage.update_deployment(deployment_id, state="failed", error="could not enqueue the deploy job")
        raise
    publish(events, {"type": "deployment", "owner": owner, "name": name, "state": "deploying", "job_id": job_id})
    return storage.get_deployment(deployment_id)


def serving_latency(storage: Storage, deployment: Any) -> dict[str, Any] | None:
    """What the replicas of ``deployment`` measured beside what the search predicted for its
    architecture, with the error; None before a replica has reported.

    The prediction is the latency the search stored for that architecture (a lookup-table or
    a measured figure, at the search's input size). The error is given only where the serving
    input size is the search's; otherwise ``note`` says why there is none.
    """
    measured = deployment.serving_latency
    if not measured:
        return None
    out: dict[str, Any] = {"measured": measured, "predicted": None, "error_ms": None, "error_pct": None, "note": None}
    model = storage.get_model(deployment.model_id)
    search_id = model.source.get("search_id")
    if search_id is None:
        out["note"] = "the model's architecture did not come from a search: nothing was predicted for it"
        return out
    try:
        search = storage.get_search(int(search_id))
    except KeyError:
        out["note"] = f"search {search_id} no longer exists"
        return out
    ind = next((i for i in storage.list_individuals(search.id) if i.arch_hash == model.arch_hash), None)
    if ind is None or ind.objectives.get("latency_ms") is None:
        out["note"] = f"search {search.id} holds no latency for architecture {model.arch_hash}"
        return out
    evaluator = search.config.get("evaluator") or {}
    size = evaluator.get("input_size") or evaluator.get("eval_size")
    predicted_ms = float(ind.objectives["latency_ms"])
    out["predicted"] = {
        "latency_ms": predicted_ms,
        "source": ind.objectives.get("latency_source"),
        "input_size": list(size) if size else None,
        "search_id": search.id,
    }
    if size and list(size) != list(measured["input_size"]):
        out["note"] = (
            f"served at {measured['input_size'][0]}x{measured['input_size'][1]}, predicted at "
            f"{size[0]}x{size[1]}: no error is given across input sizes"
        )
        return out
    out["error_ms"] = round(float(measured["p50_ms"]) - predicted_ms, 3)
    out["error_pct"] = round(100 * out["error_ms"] / predicted_ms, 2) if predicted_ms > 0 else None
    if not size:
        out["note"] = "the search timed at its validation images' size; the error assumes the same size"
    return out


def delete_deployment(storage: Storage, queue: JobQueue, events: EventBus | None, deployment: Any) -> Any:
    """Undeploy through a ``deploy`` job with action ``delete``.

    Raises: QueueError: the queue is down (nothing changes).
    """
    job_id = storage.create_job(
        "deploy", {"deployment_id": deployment.id, "action": "delete"}, owner=deployment.owner, stream=queue.stream
    )
    _enqueue(storage, queue, job_id, "deploy")
    storage.update_deployment(deployment.id, state="deleting")
    publish(events, {"type": "deployment", "owner": deployment.owner, "name": deployment.name, "state": "deleting"})
    return storage.get_deployment(deployment.id)
