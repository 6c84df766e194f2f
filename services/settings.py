"""Settings of the controller and the workers, read from ``HYCTAS_*`` environment variables.

One class for both processes, so a deployment sets each variable once (docker-compose and the
Kubernetes manifests set every field here; ``tests/deploy`` checks that). Defaults are the
embedded single-machine set-up: SQLite under ``runs/``, Redis on localhost, a local Ray.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from hyctas_core.search import MAX_GENERATIONS, MAX_POPULATION, MIN_POPULATION

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Every knob of the service; ``HYCTAS_<FIELD>`` in the environment overrides the default."""

    model_config = SettingsConfigDict(env_prefix="HYCTAS_", extra="ignore")

    database_url: str = Field("sqlite:///runs/hyctas.db", description="SQLAlchemy URL (PostgreSQL in production)")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="job stream and progress events")
    artifact_dir: Path = Field(Path("runs/artifacts"), description="checkpoints, datasets, tables (shared volume)")
    data_dir: Path = Field(Path("runs/data"), description="where dataset references by path resolve")
    ray_address: str | None = Field(
        None, description="Ray cluster address for workers ('auto' joins a local head); none: a new local Ray"
    )
    ray_init_timeout_s: float = Field(120.0, gt=0, description="a worker whose Ray does not start in this long exits")
    # queue and leases
    stream: str = Field("hyctas:jobs", description="Redis stream of jobs")
    events_channel: str = Field("hyctas:events", description="Redis pub/sub channel of progress events")
    lease_s: float = Field(30.0, gt=0, description="a job whose worker is silent this long is re-claimed")
    heartbeat_s: float = Field(5.0, gt=0, description="worker heartbeat period (well under lease_s)")
    max_attempts: int = Field(
        3,
        ge=1,
        description="a job whose handler fails this many times is failed for good (a dead worker is not a failure)",
    )
    stall_s: float = Field(
        3600.0,
        gt=0,
        description="a job that reports no progress this long is stopped and handed to another worker",
    )
    stop_grace_s: float = Field(
        30.0,
        gt=0,
        description="a job told to stop (shutdown, stall) that has not stopped this long is handed back regardless",
    )
    max_takeovers: int = Field(
        20,
        ge=1,
        description="a job whose worker died this many times while running it is failed as a poison job",
    )
    # HTTP
    key_cache_s: float = Field(
        1.0, ge=0, description="a verified API key is remembered this long (a revocation holds within it; 0: never)"
    )
    read_cache_s: float = Field(
        1.0,
        ge=0,
        description="a GET of the API is answered from memory this long per user (own writes and events show at "
        "once; 0: never)",
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="larger request bodies get 413")
    worker_metrics_port: int = Field(9101, ge=0, le=65535, description="Prometheus port of a worker (0: none)")
    # serving (Ray Serve HTTP proxy and the segmentation gateway)
    serve_host: str = Field("127.0.0.1", description="Ray Serve HTTP bind address (0.0.0.0 in a cluster)")
    serve_port: int = Field(8001, ge=1, le=65535, description="Ray Serve HTTP port: POST /segment/{name}")
    serve_ingress: Literal["auto", "haproxy", "proxy"] = Field(
        "auto",
        description="how requests reach a local Ray's model replicas: HAProxy straight to the replica (auto: where "
        "a binary exists, as ray[serve] bundles on Linux) or Serve's Python proxy",
    )
    serve_max_bytes: int = Field(16_000_000, ge=1024, description="larger images get 413 at /segment")
    serve_max_pixels: int = Field(4_200_000, ge=1024, description="images with more pixels get 413 at /segment")
    # processes serving the REST API (`hyctas controller --workers`); about one per core
    controller_workers: int = Field(1, ge=1, le=64)
    # what one search may ask for (422 beyond)
    max_population: int = Field(512, ge=MIN_POPULATION, le=MAX_POPULATION)
    max_generations: int = Field(500, ge=1, le=MAX_GENERATIONS)
    # cost limits (services/controller/limits.py; the defaults fit one GPU node for about a day)
    max_search_evaluations: int = Field(20_000, ge=1, description="population x generations x branch counts")
    max_search_megapixels: float = Field(
        2_000_000, gt=0, description="evaluations x (calibration + validation images) x image pixels, in MP"
    )
    max_train_megapixels: float = Field(
        3_000_000, gt=0, description="per training job: steps x batch x crop pixels (x models), in MP"
    )
    max_dataset_megapixels: float = Field(
        5_000, gt=0, description="a synthetic dataset to render: (train + val) x pixels, in MP"
    )
    max_active_jobs_per_user: int = Field(20, ge=1, description="queued plus running jobs of one user")
    max_train_workers: int = Field(8, ge=1, le=64, description="data-parallel workers of one training run")
