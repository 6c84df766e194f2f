"""Create, update, inspect and delete served models on a Ray cluster (used by the worker and the CLI)."""

from __future__ import annotations

import logging
from typing import Any

from ray import serve

from services.serve.app import (
    APP_PREFIX,
    GATEWAY_APP,
    LATENCY_REPORT_S,
    Endpoint,
    Gateway,
    SegmentationModel,
    route_prefix,
)

__all__ = ["DeployOptions", "deploy_model", "deployment_status", "ensure_gateway", "undeploy_model"]

log = logging.getLogger(__name__)

DeployOptions = dict[str, Any]  # validated by the API's DeploymentCreate


def ensure_gateway(endpoint: Endpoint, *, http_host: str = "127.0.0.1", http_port: int = 8001) -> None:
    """Start Serve's HTTP proxy and the gateway app if they are not running."""
    serve.start(http_options={"host": http_host, "port": http_port})
    if GATEWAY_APP in serve.status().applications:
        return
    gateway: Any = Gateway  # a Serve deployment: .bind / .options come from @serve.deployment
    app = gateway.bind(endpoint.to_dict())
    serve.run(app, name=GATEWAY_APP, route_prefix="/")
    log.info("segmentation gateway on http://%s:%d", http_host, http_port)


# How long a replica waits to fill a batch when a deployment does not say: on a CPU a batch is
# no faster per image than one image (benchmarks/serve.py measured 1.00-1.06x at 16 clients), so
# waiting only adds latency; on a GPU a batch pays.
DEFAULT_BATCH_WAIT_S = {"cpu": 0.0, "cuda": 0.01}


def replica_config(
    name: str, checkpoint: str, options: DeployOptions, *, model_id: int | None = None, deployment_id: int | None = None
) -> dict[str, Any]:
    """The ``user_config`` of a model's replicas (``options``: the deployment's, device resolved)."""
    device = str(options.get("device", "cpu"))
    wait = options.get("batch_wait_s")
    if wait is None:
        wait = DEFAULT_BATCH_WAIT_S["cuda" if device.startswith("cuda") else "cpu"]
    return {
        "checkpoint": checkpoint,
        "backend": options.get("backend", "onnxruntime"),
        "device": device,
        "threads": int(options.get("threads", 1)),
        "name": name,
        "model_id": model_id,
        "deployment_id": deployment_id,
        "max_batch_size": int(options.get("max_batch_size", 8)),
        "adaptive_batching": bool(options.get("adaptive_batching", True)),
        "batch_wait_s": float(wait),
        "warm_up_size": options.get("warm_up_size"),
        "latency_report_s": float(options.get("latency_report_s", LATENCY_REPORT_S)),
    }


def deploy_model(
    name: str,
    checkpoint: str,
    options: DeployOptions,
    *,
    endpoint: Endpoint,
    model_id: int | None = None,
    deployment_id: int | None = None,
) -> None:
    """Create or update the app serving ``checkpoint`` as ``name`` at ``/segment/{name}`` (its own
    HTTP ingress: one hop from Serve's proxy); returns without waiting for it to be healthy.

    Only ``user_config`` changes (checkpoint, backend, batching) reconfigure the running
    replicas in place; replica counts and resources roll replicas without dropping requests.
    """
    device = str(options.get("device", "cpu"))
    user_config = replica_config(name, checkpoint, options, model_id=model_id, deployment_id=deployment_id)
    autoscaling = {
        "min_replicas": int(options.get("min_replicas", 1)),
        "max_replicas": int(options.get("max_replicas", 1)),
        "initial_replicas": int(options.get("min_replicas", 1)),
        "target_ongoing_requests": float(options.get("target_ongoing_requests", 8)),
    }
    gpu = 1 if device.startswith("cuda") else 0
    model: Any = SegmentationModel
    app = model.options(
        user_config=user_config,
        autoscaling_config=autoscaling,
        ray_actor_options={"num_cpus": 1, "num_gpus": gpu},
    ).bind(endpoint.to_dict())
    serve.run(app, name=APP_PREFIX + name, route_prefix=route_prefix(name), blocking=False)


def undeploy_model(name: str) -> None:
    """Delete the app serving ``name`` (no error if it is already gone)."""
    if APP_PREFIX + name in serve.status().applications:
        serve.delete(APP_PREFIX + name)


def deployment_status(name: str) -> dict[str, Any]:
    """``{"status": RUNNING|DEPLOYING|..., "replicas": n}`` of the app serving ``name``, or NOT_FOUND."""
    apps = serve.status().applications
    app = apps.get(APP_PREFIX + name)
    if app is None:
        return {"status": "NOT_FOUND", "replicas": 0}
    replicas = 0
    for dep in app.deployments.values():
        replicas += sum(int(n) for state, n in dep.replica_states.items() if str(state).endswith("RUNNING"))
    return {"status": str(app.status), "replicas": replicas}
