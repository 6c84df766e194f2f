"""The job handlers a worker runs: supernet training, search, verification, retrain, deploy.

Each takes a :class:`~services.worker.context.JobContext` and returns the job's result (JSON).
Heavy work runs on Ray: supernet training in one actor (a GPU when the cluster has one),
evaluations on a pool of evaluator actors sized to the cluster, retraining as Ray Tune trials.
Every handler resumes: a search from its last committed generation, training from its last
checkpoint, a retrain from each model's checkpoint (finished models are skipped).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import ray

from hyctas_core.evaluate import EvaluatorSpec
from hyctas_core.search import SearchConfig
from hyctas_core.search_runner import GenerationProgress, SearchFinishedError, run_search
from hyctas_core.search_space import Arch
from hyctas_core.storage import SearchRecord, SearchState
from services.datasets import resolve_dataset
from services.devices import resolve_target
from services.metrics import EVALUATION_SECONDS, EVALUATIONS, GENERATION_SECONDS, SEARCHES_WAITING
from services.queue import QueueError
from services.worker.context import Handler, JobContext, JobStopped
from services.worker.data_parallel import ParallelSpec, fit_data_parallel
from services.worker.devices import LatencyPlacement, cluster_device_classes
from services.worker.ray_init import init_ray

__all__ = [
    "default_handlers",
    "ray_cluster_id",
    "reconcile_deployments",
    "worker_maintenance",
    "pick_device",
    "run_deploy",
    "run_retrain",
    "run_search_job",
    "run_train_supernet",
    "run_verify",
]

log = logging.getLogger(__name__)


def _ensure_ray(ctx: JobContext) -> None:
    """Ray for the handlers: the worker's cluster (``HYCTAS_RAY_ADDRESS``) or its own local one."""
    init_ray(
        ctx.settings.ray_address, timeout_s=ctx.settings.ray_init_timeout_s, serve_ingress=ctx.settings.serve_ingress
    )


def pick_device(requested: str) -> str:
    """``auto``: CUDA when the Ray cluster has a GPU, else CPU."""
    if requested != "auto":
        return requested
    resources: dict[str, float] = ray.cluster_resources()  # type: ignore[no-untyped-call]
    return "cuda" if resources.get("GPU", 0) > 0 else "cpu"


def _data_dir(ctx: JobContext, ref: dict[str, Any]) -> Path:
    return resolve_dataset(ref, data_dir=Path(ctx.settings.data_dir).resolve(), artifact_dir=ctx.artifact_dir)


# -- supernet training ---------------------------------------------------------------------------
@ray.remote(max_restarts=0)
class SupernetTrainerActor:
    """Holds one :class:`~hyctas_core.train.SupernetTrainer` in a Ray worker (1 CPU or GPU)."""

    def __init__(self, config: dict[str, Any], data_dir: str, run_dir: str, device: str) -> None:
        import torch

        from hyctas_core.data.cityscapes import CityscapesDataset
        from hyctas_core.data.transforms import SegTransform
        from hyctas_core.train import SupernetTrainConfig, SupernetTrainer

        if device == "cpu":
            torch.set_num_threads(1)
        cfg = SupernetTrainConfig.from_dict(config)
        transform = SegTransform(crop_size=cfg.crop_size, scale_range=cfg.scale_range, base_size=cfg.base_size)
        dataset = CityscapesDataset(Path(data_dir), "train", transform=transform, seed=cfg.seed)
        self.trainer = SupernetTrainer(cfg, dataset, Path(run_dir), device=device)
        self.resumed = self.trainer.resume()
        self.last: dict[str, Any] = {}

    def state(self) -> dict[str, Any]:
        t = self.trainer
        return {"step": t.step, "total_steps": t.total_steps, "epoch": t.epoch, "resumed": self.resumed, **self.last}

    def train(self, steps: int) -> dict[str, Any]:
        """Train ``steps`` more steps (or to the end); a checkpoint is written when it returns."""
        t = self.trainer

        def keep(p: Any) -> None:
            self.last = {"loss": p.loss, "lr": p.lr, "images_per_s": p.images_per_s}

        summary = t.fit(max_steps=min(t.step + steps, t.total_steps), progress=keep)
        return {**self.state(), "finished": t.finished, "summary": summary}


def run_train_supernet(ctx: JobContext) -> dict[str, Any]:
    """Train a supernet with the paper's sampling prior; resumable from ``last.pt``.

    One worker (the default) trains in one Ray actor; ``parallel.workers > 1`` trains data-parallel
    on Ray Train (:mod:`services.worker.data_parallel`) with the configured global batch.
    """
    _ensure_ray(ctx)
    payload = ctx.job.payload
    data = _data_dir(ctx, payload["dataset"])
    run_dir = ctx.artifact_dir / "supernets" / f"job-{ctx.job.id}"
    device = pick_device(payload.get("device", "auto"))
    spec = ParallelSpec.from_mapping(payload.get("parallel"))
    t0 = time.perf_counter()
    if spec.workers > 1:
        step = _train_supernet_parallel(ctx, payload, data, run_dir, spec, device)
    else:
        step = _train_supernet_actor(ctx, payload, data, run_dir, device)
    return {
        "checkpoint": str(run_dir / "supernet.pt"),
        "run_dir": str(run_dir),
        "data_dir": str(data),
        "steps": step,
        "device": device,
        "workers": spec.workers,
        "train_s": time.perf_counter() - t0,
    }


def _train_supernet_actor(ctx: JobContext, payload: dict[str, Any], data: Path, run_dir: Path, device: str) -> int:
    """The single-worker path: one actor trains in chunks of ``checkpoint_every`` steps; the last step."""
    chunk = int(payload["train"].get("checkpoint_every", 20))
    actor_cls: Any = SupernetTrainerActor
    actor = actor_cls.options(num_cpus=1, num_gpus=1 if device.startswith("cuda") else 0).remote(
        payload["train"], str(data), str(run_dir), device
    )
    try:
        state = ray.get(actor.state.remote())
        if state["resumed"]:
            log.info("job %s: supernet training resumed at step %d", ctx.job.id, state["step"])
        ctx.report(force=True, phase="train_supernet", **state)
        while True:
            ctx.check()
            ref = actor.train.remote(chunk)
            while True:  # wait, but notice a cancel while the chunk runs
                done, _ = ray.wait([ref], timeout=1.0)
                if done:
                    break
                if ctx.should_stop():
                    raise JobStopped(ctx.reason or "stopped")
            state = ray.get(ref)
            ctx.report(force=True, **{k: v for k, v in state.items() if k != "summary"})
            if state["finished"]:
                return int(state["step"])
    finally:
        ray.kill(actor)


def _train_supernet_parallel(
    ctx: JobContext, payload: dict[str, Any], data: Path, run_dir: Path, spec: ParallelSpec, device: str
) -> int:
    """The data-parallel path: Ray Train workers; progress from rank 0; a cancel stops every rank."""
    if device.startswith("cuda") and not spec.use_gpu:
        spec = dataclasses.replace(spec, use_gpu=True)
    ctx.report(force=True, phase="train_supernet", workers=spec.workers)
    keys = ("step", "total_steps", "epoch", "loss", "lr", "images_per_s", "workers")

    def progress(record: dict[str, Any]) -> None:
        ctx.report(**{k: record[k] for k in keys if k in record})

    summary = fit_data_parallel(
        "supernet",
        {"config": payload["train"], "data_dir": str(data)},
        run_dir,
        spec,
        storage_path=ctx.artifact_dir / "ray_train",
        on_progress=progress,
        should_stop=ctx.should_stop,
    )
    if summary["stopped"]:
        raise JobStopped(ctx.reason or "stopped")
    ctx.report(force=True, step=summary["step"], finished=True, workers=spec.workers)
    return int(summary["step"])


# -- search --------------------------------------------------------------------------------------
class _PoolEvaluator:
    """The :class:`~hyctas_core.evaluate.ArchEvaluator` a search sees: a Ray pool that stops on cancel."""

    def __init__(self, pool: Any, ctx: JobContext) -> None:
        self.pool = pool
        self.ctx = ctx
        self.cache_key: str = pool.cache_key

    def evaluate(self, archs: list[Arch]) -> list[dict[str, Any]]:
        from services.worker.ray_pool import EvaluationStopped

        done = 0

        def counted(seconds: float) -> None:
            nonlocal done
            done += 1
            EVALUATIONS.labels("ok").inc()
            EVALUATION_SECONDS.observe(seconds)
            self.ctx.report(evaluating=f"{done}/{len(archs)}", actors=self.pool.size)

        self.ctx.check()
        try:
            return list(self.pool.evaluate(archs, should_stop=self.ctx.should_stop, on_result=counted))
        except EvaluationStopped:
            raise JobStopped(self.ctx.reason or "stopped") from None
        except Exception:
            EVALUATIONS.labels("error").inc()
            raise

    def close(self) -> None:
        self.pool.close()


def run_search_job(ctx: JobContext) -> dict[str, Any]:
    """Run (or resume) the search of this job on a pool of Ray evaluator actors."""
    from services.worker.ray_pool import RayEvaluatorPool

    _ensure_ray(ctx)
    search = ctx.storage.find_search(ctx.job.payload["search_name"], owner=ctx.job.owner)
    if search is None:
        raise ValueError(f"job {ctx.job.id}: search {ctx.job.payload['search_name']!r} does not exist")
    if search.state is SearchState.CANCELLED:
        raise JobStopped("cancelled")
    config = SearchConfig.from_dict(search.config["search"])
    data = _data_dir(ctx, search.config["dataset"])
    device = pick_device(search.config["evaluator"].get("device", "auto"))
    stored = search.config["evaluator"]
    target = resolve_target(stored.get("device_class"), cluster_device_classes())  # MixedCluster: one line
    timed_here = stored.get("latency_table") is not None  # a table predicts: nothing to time
    spec = EvaluatorSpec.from_dict(
        {
            **stored,
            "data": str(data),
            "device": device,
            "threads": 1,
            "device_class": target,
            "defer_latency": not timed_here,
        }
    )
    ctx.report(
        force=True, phase="search", generation=search.generation + 1, total_generations=config.total_generations,
        target_device=target, waiting_for_device=None,
    )  # fmt: skip

    def waiting(device_class: str | None) -> None:
        """While latency waits for a node of the target class (None: the wait is over)."""
        SEARCHES_WAITING.labels(target).set(0 if device_class is None else 1)
        ctx.report(force=True, waiting_for_device=device_class)
        if device_class is not None:
            ctx.check()

    placement = None if timed_here else LatencyPlacement(target)
    try:
        pool = RayEvaluatorPool(spec, latency=placement, on_wait=waiting)
    except InterruptedError:
        raise JobStopped(ctx.reason or "stopped") from None
    evaluator = _PoolEvaluator(pool, ctx)
    last = time.perf_counter()

    def on_generation(p: GenerationProgress) -> None:
        nonlocal last
        now = time.perf_counter()
        GENERATION_SECONDS.observe(now - last)
        last = now
        ctx.report(force=True, generation=p.generation + 1, hypervolume=p.hypervolume, front_size=p.front_size,
                   n_evaluated=p.n_evaluated, evaluating=None)  # fmt: skip
        ctx.publish({"type": "generation", "search_id": search.id, **dataclasses.asdict(p)})

    try:
        record = run_search(ctx.storage, search.id, evaluator, progress=on_generation, should_stop=ctx.should_stop)
    except SearchFinishedError:
        record = ctx.storage.get_search(search.id)
        if record.state is not SearchState.SUCCEEDED:
            raise JobStopped(record.state.value) from None
    finally:
        evaluator.close()
    if record.state is not SearchState.SUCCEEDED:  # should_stop ended the loop between generations
        raise JobStopped(ctx.reason or "stopped")
    latest = ctx.storage.latest_generation(search.id)
    ctx.publish({"type": "search", "search_id": search.id, "state": "succeeded"})
    verify_job = _queue_verification(ctx, record)
    return {
        "search_id": search.id,
        "generations": record.generation + 1,
        "hypervolume": latest.hypervolume if latest else None,
        "front": latest.front if latest else [],
        **({"verify_job_id": verify_job} if verify_job is not None else {}),
    }


# -- verification --------------------------------------------------------------------------------
def _queue_verification(ctx: JobContext, search: SearchRecord) -> int | None:
    """Submit the search's verification job once (when it asked for one); its id, or None.

    The record names the job before the job is enqueued, so a worker that dies in between
    leaves a QUEUED job that the next sweep enqueues, and a rerun of this search job finds
    the record and submits nothing twice.
    """
    verify = search.config.get("verify")
    if not verify or search.verification is not None:
        return None
    job_id = ctx.storage.create_job(
        "verify", {"search_id": search.id, "search_name": search.name}, owner=ctx.job.owner, stream=ctx.job.stream
    )
    record = {"state": "queued", "k": int(verify["k"]), "done": 0, "rows": [], "job_id": job_id}
    ctx.storage.set_search_verification(search.id, record)
    if ctx.queue is not None:
        try:
            ctx.queue.enqueue(job_id, "verify")
        except QueueError as exc:  # the worker's sweep enqueues QUEUED jobs without a stream entry
            log.warning("verification job %s not enqueued yet (%s); the sweep will", job_id, exc)
    ctx.publish({"type": "job", "job_id": job_id, "kind": "verify", "state": "queued", "search_id": search.id})
    return job_id


@ray.remote(max_retries=0)
def _retrain_point_task(
    arch: dict[str, Any], supernet: str, data: str, cfg: dict[str, Any], val_images: int, run_dir: str, device: str
) -> float:
    import torch

    from hyctas_core.verify import VerifyConfig, retrain_point

    if device == "cpu":
        torch.set_num_threads(1)
    return retrain_point(
        arch,
        supernet=Path(supernet),
        data=Path(data),
        cfg=VerifyConfig.from_dict(cfg),
        val_images=val_images,
        run_dir=Path(run_dir),
        device=device,
    )


def run_verify(ctx: JobContext) -> dict[str, Any]:
    """Retrain k points of a finished search's front (one Ray task each) and store the fidelity.

    Resumes: points already retrained are kept in the search's record; a point interrupted
    mid-training continues from its own checkpoint.
    """
    from hyctas_core.verify import NothingToVerify, VerifyConfig, run_verification

    _ensure_ray(ctx)
    search = ctx.storage.get_search(int(ctx.job.payload["search_id"]))
    if search.state is not SearchState.SUCCEEDED:
        raise ValueError(f"search {search.name!r} is {search.state.value}: only a finished search can be verified")
    cfg = VerifyConfig.from_dict(search.config["verify"])
    data = _data_dir(ctx, search.config["dataset"])
    device = pick_device(ctx.job.payload.get("device", "auto"))
    evaluator = search.config["evaluator"]
    run_root = ctx.artifact_dir / "verify" / f"search-{search.id}"
    task: Any = _retrain_point_task

    def retrain(row: dict[str, Any]) -> float:
        ctx.report(force=True, phase="verify", arch_hash=row["arch_hash"])
        ref = task.options(num_cpus=1, num_gpus=1 if device.startswith("cuda") else 0).remote(
            row["arch"], evaluator["supernet"], str(data), cfg.to_dict(), evaluator["val_images"],
            str(run_root / row["arch_hash"]), device,
        )  # fmt: skip
        while True:  # wait, but notice a cancel while the point trains
            done, _ = ray.wait([ref], timeout=1.0)
            if done:
                return float(ray.get(ref))
            if ctx.should_stop():
                ray.cancel(ref, force=True)
                raise JobStopped(ctx.reason or "stopped")

    def on_point(record: dict[str, Any]) -> None:
        ctx.report(force=True, done=record["done"], k=record["k"])
        ctx.publish({"type": "verification", "search_id": search.id, "done": record["done"], "k": record["k"]})

    try:
        record = run_verification(ctx.storage, search.id, cfg, retrain, on_point=on_point, should_stop=ctx.should_stop)
    except NothingToVerify as exc:  # final, not worth a retry: the record says why
        ctx.publish({"type": "verification", "search_id": search.id, "state": "failed"})
        return {"search_id": search.id, "k": 0, "kendall_tau": None, "spearman": None, "error": str(exc)}
    if record["state"] != "succeeded":
        raise JobStopped(ctx.reason or "stopped")
    ctx.publish({"type": "verification", "search_id": search.id, "state": "succeeded"})
    return {key: record[key] for key in ("k", "kendall_tau", "spearman")} | {"search_id": search.id}


# -- retrain -------------------------------------------------------------------------------------
def run_retrain(ctx: JobContext) -> dict[str, Any]:
    """Retrain the job's models as Ray Tune trials (one per arch, optional ASHA)."""
    from hyctas_core.retrain import RetrainConfig
    from services.worker.retrain_tune import RetrainCancelled, run_retrain_job

    _ensure_ray(ctx)
    payload = ctx.job.payload
    data = _data_dir(ctx, payload["dataset"])
    try:
        return run_retrain_job(
            ctx.storage,
            ctx.job.id,
            data_dir=data,
            run_root=ctx.artifact_dir / "models" / f"job-{ctx.job.id}",
            config=RetrainConfig.from_dict(payload["retrain"]),
            asha=bool(payload.get("asha", False)),
            device=pick_device(payload.get("device", "auto")),
            should_stop=ctx.should_stop,
            on_progress=lambda p: ctx.report(models={**ctx.progress.get("models", {}), str(p.get("model_id")): p}),
            parallel=ParallelSpec.from_mapping(payload.get("parallel")),
        )
    except RetrainCancelled:
        raise JobStopped(ctx.reason or "cancelled") from None


# -- serving -------------------------------------------------------------------------------------
def _checkpoint_path(uri: str) -> str:
    return uri.removeprefix("file://")


def run_deploy(ctx: JobContext) -> dict[str, Any]:
    """Create, update or delete a Ray Serve deployment; the row records the outcome."""
    from services.serve.app import Endpoint
    from services.serve.deploy import deploy_model, deployment_status, ensure_gateway, undeploy_model

    _ensure_ray(ctx)
    payload = ctx.job.payload
    deployment = ctx.storage.get_deployment(int(payload["deployment_id"]))
    if payload.get("action") == "delete":
        undeploy_model(deployment.name)
        ctx.storage.update_deployment(deployment.id, state="deleted")
        ctx.publish({"type": "deployment", "name": deployment.name, "state": "deleted"})
        return {"deployment": deployment.name, "state": "deleted"}
    s = ctx.settings
    try:
        model = ctx.storage.get_model(deployment.model_id)
        if not model.checkpoint_uri:
            raise ValueError(f"model {model.id} has no checkpoint")
        options = {**deployment.options, "device": pick_device(str(deployment.options.get("device", "auto")))}
        endpoint = Endpoint(s.database_url, s.serve_max_bytes, s.serve_max_pixels)
        ensure_gateway(endpoint, http_host=s.serve_host, http_port=s.serve_port)
        deploy_model(
            deployment.name, _checkpoint_path(model.checkpoint_uri), options,
            endpoint=endpoint, model_id=model.id, deployment_id=deployment.id,
        )  # fmt: skip
        deadline = time.monotonic() + 600
        state = deployment_status(deployment.name)
        while "RUNNING" not in state["status"]:
            if "FAIL" in state["status"] or time.monotonic() > deadline:
                raise RuntimeError(f"deployment {deployment.name!r} ended {state['status']}")
            ctx.check()
            time.sleep(0.5)
            state = deployment_status(deployment.name)
    except JobStopped:
        raise
    except Exception as exc:
        ctx.storage.update_deployment(deployment.id, state="failed", error=f"{type(exc).__name__}: {exc}"[:500])
        raise
    # Which Ray cluster serves it: only workers of that cluster reconcile it (reconcile_deployments).
    options = {**deployment.options, "ray_cluster": ray_cluster_id()}
    ctx.storage.update_deployment(deployment.id, state="running", error="", options=options)
    ctx.publish({"type": "deployment", "name": deployment.name, "state": "running", "replicas": state["replicas"]})
    return {"deployment": deployment.name, "state": "running", "replicas": state["replicas"],
            "route": f"/segment/{deployment.name}"}  # fmt: skip


def ray_cluster_id() -> str:
    """This driver's Ray cluster (its GCS address): deployments record the cluster that serves them."""
    return str(ray.get_runtime_context().gcs_address)


def worker_maintenance(storage: Any, queue: Any, lease_s: float) -> None:
    """What a worker does between jobs: tell the controller the cluster's device classes (kept for
    three leases, so one missed round does not forget them), then reconcile deployments."""
    from services.worker.devices import publish_device_classes

    try:
        publish_device_classes(queue, ttl_s=3 * lease_s)
    finally:
        reconcile_deployments(storage)


def reconcile_deployments(storage: Any, *, status: Any = None, cluster: str | None = None) -> list[str]:
    """Deployments stored as running on this Ray cluster whose Serve application is gone, or has no
    running replica any more, are marked failed with the reason (a redeploy brings them back).

    Run by each worker between jobs (``Worker(maintenance=...)``); deployments of another cluster
    are left to that cluster's workers. Returns the names marked failed.
    """
    from services.serve.deploy import deployment_status

    status = status or deployment_status
    cluster = cluster or ray_cluster_id()
    failed = []
    for deployment in storage.list_deployments():
        if deployment.state != "running" or deployment.options.get("ray_cluster") != cluster:
            continue
        state = status(deployment.name)
        if state["status"] == "NOT_FOUND":
            reason = "its Serve application is gone (the Ray cluster restarted, or the replicas died); redeploy it"
        elif state["replicas"] == 0 and state["status"] != "DEPLOYING":
            reason = f"no replica is running (Serve reports {state['status']}); redeploy it"
        else:
            continue
        storage.update_deployment(deployment.id, state="failed", error=reason)
        log.warning("deployment %s: %s", deployment.name, reason)
        failed.append(deployment.name)
    return failed


def default_handlers() -> dict[str, Handler]:
    return {
        "train_supernet": run_train_supernet,
        "search": run_search_job,
        "retrain": run_retrain,
        "verify": run_verify,
        "deploy": run_deploy,
    }
