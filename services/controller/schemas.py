"""Request and response bodies of the REST API (pydantic), one group per resource.

Requests refuse unknown fields and carry limits, so a bad config is a 422 naming the field.
Responses are read from the storage's records with ``model_validate`` (``from_attributes``);
what a response shows but a record does not hold is a computed field.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, computed_field, field_validator, model_validator

from hyctas_core.losses import ClassWeighting
from hyctas_core.presets import PresetName
from hyctas_core.search import MIN_POPULATION, Objective, SearchConfig
from hyctas_core.storage import SearchState
from hyctas_core.train import Sampling
from hyctas_core.verify import MAX_VERIFY_K
from services.devices import DEVICE_CLASS_PATTERN
from services.serve.segmenter import Backend
from services.storage.base import JobState, SearchSummary

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$"
Name = Annotated[str, Field(pattern=NAME_PATTERN, description="letters, digits, '_', '.', '-' (1-100)")]
Side = Annotated[int, Field(ge=16, le=4096)]
Size = tuple[Side, Side]


class Strict(BaseModel):
    """A request body: unknown keys are refused; numbers and booleans must be JSON numbers and booleans."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _numbers_are_numbers(cls, data: Any) -> Any:
        """No ``false`` for 0 or ``"8"`` for 8 (pydantic's lax mode would take both)."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                value = data.get(field.alias or name)
                if field.annotation in _NUMERIC and isinstance(value, bool | str):
                    raise ValueError(f"{name} must be a number, not {type(value).__name__} {value!r}")
                if field.annotation in _BOOLEAN and name in data and not isinstance(value, bool | None):
                    raise ValueError(f"{name} must be true or false, not {type(value).__name__} {value!r}")
        return data


class Record(BaseModel):
    """A response read from a storage record's attributes (``Model.model_validate(record)``)."""

    model_config = ConfigDict(from_attributes=True)


_NUMERIC = (int, float, int | None, float | None)
_BOOLEAN = (bool, bool | None)


class Message(BaseModel):
    detail: str


# -- datasets --------------------------------------------------------------------------------
class SyntheticDataset(Strict):
    """The built-in procedural street scenes (Cityscapes layout), generated on first use."""

    kind: Literal["synthetic"]
    train: int = Field(24, ge=1, le=5000)
    val: int = Field(8, ge=1, le=1000)
    size: tuple[Annotated[int, Field(ge=32, le=2048)], Annotated[int, Field(ge=32, le=4096)]] = (64, 128)
    seed: int = Field(0, ge=0, le=2**31 - 1)


class CityscapesDataset(Strict):
    """A dataset in the Cityscapes layout below the workers' data root (``HYCTAS_DATA_DIR``)."""

    kind: Literal["cityscapes"]
    path: str = Field(min_length=1, max_length=500, pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./-]*$")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        if ".." in value.split("/"):
            raise ValueError("must not contain '..'")
        return value


DatasetRef = Annotated[SyntheticDataset | CityscapesDataset, Field(discriminator="kind")]


# -- jobs ------------------------------------------------------------------------------------
class JobPublic(Record):
    id: int
    kind: str
    state: JobState
    attempts: int = Field(description="starts: the first, takeovers after a worker died, retries after an error")
    failures: int = Field(0, description="attempts that ended in the handler's own error")
    worker: str | None
    heartbeat_at: datetime | None
    progress: dict[str, Any] | None
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    updated_at: datetime


class JobsPublic(BaseModel):
    data: list[JobPublic]
    count: int


# -- supernets -------------------------------------------------------------------------------
Resource = Annotated[float, Field(ge=0, le=1e6, strict=True)]


class DataParallelFields(Strict):
    """Data-parallel training on Ray Train (1 worker: the single-process fast path)."""

    workers: int = Field(1, ge=1, le=64, description="data-parallel workers; batch_size must split evenly over them")
    use_gpu: bool | None = Field(None, description="one GPU per worker; default: when the device resolves to cuda")
    sync_batchnorm: bool = Field(
        True, description="BatchNorm over the global batch (exact); off: per worker, faster where collectives are slow"
    )
    resources_per_worker: dict[Annotated[str, Field(min_length=1, max_length=100)], Resource] | None = Field(
        None, max_length=16, description='Ray resources per worker, e.g. {"CPU": 4, "GPU": 1}; default 1 CPU (+1 GPU)'
    )

    @model_validator(mode="after")
    def _batch_splits(self) -> DataParallelFields:
        batch = getattr(self, "batch_size", None)
        if batch is not None and batch % self.workers:
            raise ValueError(f"batch_size {batch} does not split evenly over {self.workers} workers")
        if self.use_gpu and getattr(self, "device", None) == "cpu":
            raise ValueError("use_gpu contradicts device cpu")
        return self

    def parallel(self) -> dict[str, Any]:
        """The job payload's ``parallel`` entry (``ParallelSpec`` of the worker)."""
        use_gpu = self.use_gpu if self.use_gpu is not None else getattr(self, "device", "auto") == "cuda"
        return {
            "workers": self.workers,
            "use_gpu": use_gpu,
            "resources_per_worker": self.resources_per_worker,
            "sync_batchnorm": self.sync_batchnorm,
        }


class SupernetCreate(DataParallelFields):
    """A supernet-training job (the paper's recipe; sizes here for what the cluster can afford)."""

    name: Name
    dataset: DatasetRef
    epochs: int = Field(10, ge=1, le=2000)
    batch_size: int = Field(8, ge=1, le=512)
    crop_size: Size = (64, 128)
    steps_per_epoch: int | None = Field(None, ge=1, le=1_000_000)
    base_channels: int = Field(12, ge=2, le=64)
    num_layers: int = Field(20, ge=2, le=40)
    lr: float = Field(0.02, gt=0, le=10)
    lr_final: float | None = Field(
        None, gt=0, le=1, description="last epoch's LR as a fraction of lr (exponential decay); null: the paper's 0.992"
    )
    sampling: Sampling = Field(
        "prior", description="prior: one sub-network per step (paper); sandwich: largest + smallest + random"
    )
    sandwich_random: int = Field(2, ge=0, le=16, description="prior-sampled sub-networks per sandwich step")
    distill: bool = Field(False, description="in-place distillation from the largest sub-network")
    warmup_steps: int = Field(0, ge=0, le=1_000_000, description="largest sub-networks only, LR ramped from 0")
    class_weighting: ClassWeighting = Field(
        "none", description="log: ENet's class weights 1 / ln(1.1 + share) in the loss, shares from the training labels"
    )
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"


class SupernetPublic(Record):
    """A supernet: its training job, read through the job's payload and result."""

    id: int
    state: JobState
    progress: dict[str, Any] | None
    attempts: int
    error: str | None
    created_at: datetime
    updated_at: datetime
    payload: dict[str, Any] = Field(exclude=True)
    result: dict[str, Any] | None = Field(exclude=True)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def name(self) -> str:
        return str(self.payload["name"])

    @computed_field  # type: ignore[prop-decorator]
    @property
    def dataset(self) -> dict[str, Any]:
        return dict(self.payload["dataset"])

    @computed_field  # type: ignore[prop-decorator]
    @property
    def config(self) -> dict[str, Any]:
        return dict(self.payload["train"])

    @computed_field  # type: ignore[prop-decorator]
    @property
    def checkpoint(self) -> str | None:
        value = (self.result or {}).get("checkpoint")
        return None if value is None else str(value)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def parallel(self) -> dict[str, Any]:
        """Data-parallel workers (jobs from before the option existed: one)."""
        return dict(self.payload.get("parallel") or {"workers": 1, "use_gpu": False, "resources_per_worker": None})


class SupernetsPublic(BaseModel):
    data: list[SupernetPublic]
    count: int


# -- searches --------------------------------------------------------------------------------
class EvaluationSettings(Strict):
    """How each sub-network is scored (BN recalibration images, validation images, latency)."""

    calib_images: int = Field(64, ge=1, le=10_000)
    val_images: int = Field(32, ge=1, le=10_000)
    eval_size: Size | None = None
    latency_seconds: float = Field(1.0, ge=0.05, le=60)


class SearchCreate(Strict):
    """An NSGA-II search over a trained supernet (paper: population 40, 20 generations)."""

    name: Name
    supernet_id: int = Field(ge=1, le=2**31 - 1)
    dataset: DatasetRef | None = Field(None, description="default: the supernet's training dataset")
    objective: Objective = "latency"
    population: int = Field(40, ge=MIN_POPULATION, description="at most HYCTAS_MAX_POPULATION")
    generations: int = Field(20, ge=1, description="at most HYCTAS_MAX_GENERATIONS")
    branches: list[Literal[1, 2, 3]] | None = Field(None, min_length=1, max_length=3)
    seed: int = Field(0, ge=0, le=2**31 - 1)
    crossover_prob: float = Field(0.9, ge=0, le=1)
    mutation_prob: float = Field(0.02, ge=0, le=1)
    evaluation: EvaluationSettings = EvaluationSettings()
    verify_top_k: int = Field(
        0,
        ge=0,
        le=MAX_VERIFY_K,
        description="after the search, retrain this many front points (spread over cost) briefly and report "
        "the rank agreement of their supernet and retrained mIoU; 0: off, else at least 2",
    )
    verify_epochs: int = Field(8, ge=1, le=1000, description="training epochs per verified front point")
    target_device: str | None = Field(
        None,
        pattern=DEVICE_CLASS_PATTERN,
        description="the device class latency is measured on (cpu, V100, RTX3090, ...); default: the "
        "cluster's only class (a cluster with several needs one named)",
    )

    @field_validator("verify_top_k")
    @classmethod
    def _rankable(cls, value: int) -> int:
        if value == 1:
            raise ValueError("verify_top_k must be 0 (off) or at least 2: a rank correlation needs 2 points")
        return value

    @field_validator("branches")
    @classmethod
    def _distinct(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("branch counts must not repeat")
        return value


class SearchTimings(BaseModel):
    elapsed_s: float
    eval_s: float
    mean_generation_s: float | None
    remaining_s: float | None


class VerificationRow(BaseModel):
    arch_hash: str
    num_branches: int
    supernet_miou: float
    cost: float
    retrained_miou: float | None


class VerificationPublic(BaseModel):
    """Front points retrained after the search and the supernet's rank fidelity on them."""

    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    k: int = Field(description="front points retrained (at most verify_top_k; fewer when the front is smaller)")
    done: int = 0
    epochs: int | None = None
    kendall_tau: float | None = Field(None, description="supernet mIoU against retrained mIoU, over the k points")
    spearman: float | None = None
    rows: list[VerificationRow] = []
    job_id: int | None = None
    error: str | None = None


def _waiting_for_device(summary: SearchSummary) -> str | None:
    job = summary.job
    if job is None or job.state is not JobState.RUNNING:
        return None
    value = (job.progress or {}).get("waiting_for_device")
    return None if value is None else str(value)


class SearchPublic(BaseModel):
    id: int
    name: str
    state: SearchState
    generation: int = Field(description="generations committed (k of total_generations)")
    total_generations: int
    objective: str
    hypervolume: float | None
    front_size: int
    n_evaluated: int
    supernet_id: int | None
    job: JobPublic | None
    config: dict[str, Any]
    error: str | None
    timings: SearchTimings
    verification: VerificationPublic | None = Field(
        None, description="the supernet fidelity check (verify_top_k > 0), once the search has succeeded"
    )
    target_device: str | None = Field(None, description="the device class latency is measured on")
    waiting_for_device: str | None = Field(
        None, description="set while the search waits for a node of its device class to join the cluster"
    )
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_summary(cls, summary: SearchSummary) -> SearchPublic:
        """The API view of a search: progress of k of n generations, hypervolume, timings, its job."""
        search = summary.search
        config = SearchConfig.from_mapping(search.config["search"])
        mean = summary.generation_s / summary.generations if summary.generations else None
        end = search.updated_at if search.state.is_finished() else datetime.now(UTC)
        remaining = None
        if mean is not None and search.state in (SearchState.CREATED, SearchState.RUNNING):
            remaining = mean * (config.total_generations - summary.generations)
        return cls(
            id=search.id,
            name=search.name,
            state=search.state,
            generation=search.generation + 1,
            total_generations=config.total_generations,
            objective=config.objective,
            hypervolume=summary.hypervolume,
            front_size=summary.front_size,
            n_evaluated=summary.n_evaluated,
            supernet_id=search.config.get("supernet_id"),
            job=None if summary.job is None else JobPublic.model_validate(summary.job),
            config=search.config,
            error=search.error,
            timings=SearchTimings(
                elapsed_s=max(0.0, (end - search.created_at).total_seconds()),
                eval_s=summary.eval_s,
                mean_generation_s=mean,
                remaining_s=remaining,
            ),
            target_device=(search.config.get("evaluator") or {}).get("device_class"),
            waiting_for_device=_waiting_for_device(summary),
            created_at=search.created_at,
            updated_at=search.updated_at,
            verification=VerificationPublic.model_validate(search.verification) if search.verification else None,
        )


class SearchesPublic(BaseModel):
    data: list[SearchPublic]
    count: int


class GenerationPublic(Record):
    index: int
    hypervolume: float
    front: list[str]
    n_evaluated: int
    n_new: int
    timings: dict[str, float]
    created_at: datetime | None


class GenerationsPublic(BaseModel):
    data: list[GenerationPublic]
    count: int


class IndividualPublic(Record):
    generation: int
    arch_hash: str
    arch: dict[str, Any]
    num_branches: int
    objectives: dict[str, float | int | str | None]
    status: str


class IndividualsPublic(BaseModel):
    data: list[IndividualPublic]
    count: int


class ParetoPublic(BaseModel):
    search_id: int
    generation: int
    cost_key: str
    hypervolume: float | None
    data: list[IndividualPublic]


# -- models ----------------------------------------------------------------------------------
class ArchChoice(Strict):
    """One architecture to retrain: from a search (by hash), as official JSON, or a paper preset."""

    name: Name
    search_id: int | None = Field(None, ge=1, le=2**31 - 1)
    arch_hash: str | None = Field(None, pattern=r"^[0-9a-f]{8,64}$")
    arch: dict[str, Any] | None = None
    preset: PresetName | None = None

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ArchChoice:
        sources = [self.arch_hash is not None or self.search_id is not None, self.arch is not None, bool(self.preset)]
        if sum(sources) != 1:
            raise ValueError("give exactly one of (search_id and arch_hash), arch, or preset")
        if (self.search_id is None) != (self.arch_hash is None):
            raise ValueError("search_id and arch_hash go together")
        return self


class ModelsCreate(DataParallelFields):
    """Retrain chosen architectures from scratch: one Ray Tune trial each (with ``workers > 1``, one
    data-parallel Ray Train run each, in turn)."""

    archs: list[ArchChoice] = Field(min_length=1, max_length=16)
    supernet_id: int | None = Field(None, ge=1, le=2**31 - 1, description="take the dataset and widths from it")
    dataset: DatasetRef | None = None
    epochs: int = Field(10, ge=1, le=2000)
    batch_size: int = Field(8, ge=1, le=512)
    crop_size: Size = (64, 128)
    steps_per_epoch: int | None = Field(None, ge=1, le=1_000_000)
    base_channels: int | None = Field(None, ge=2, le=64, description="default: the supernet's")
    lr: float = Field(0.01, gt=0, le=10)
    val_images: int | None = Field(None, ge=1, le=10_000)
    asha: bool = Field(False, description="stop weak candidates early (ASHA on validation mIoU)")
    seed: int = Field(0, ge=0, le=2**31 - 1)
    device: Literal["auto", "cpu", "cuda"] = "auto"

    @model_validator(mode="after")
    def _dataset_known(self) -> ModelsCreate:
        if self.supernet_id is None and self.dataset is None:
            raise ValueError("give a dataset or a supernet_id to take it from")
        return self


class ModelPublic(Record):
    id: int
    name: str
    state: JobState
    task: str
    job_id: int | None
    arch_hash: str
    arch: dict[str, Any]
    source: dict[str, Any]
    metrics: dict[str, Any]
    checkpoint_uri: str | None
    error: str | None
    created_at: datetime
    updated_at: datetime


class ModelsPublic(BaseModel):
    data: list[ModelPublic]
    count: int
    job_id: int | None = None


# -- deployments -----------------------------------------------------------------------------
class DeploymentCreate(Strict):
    """Serve a retrained model on Ray Serve (create, or update a deployment of yours in place)."""

    name: Name | None = Field(None, description="route /segment/{name}; default model-{id}")
    public: bool = Field(False, description="callable without an API key")
    backend: Backend = "onnxruntime"
    device: Literal["auto", "cpu", "cuda"] = "auto"
    min_replicas: int = Field(1, ge=1, le=64)
    max_replicas: int = Field(1, ge=1, le=64)
    target_ongoing_requests: float = Field(8, gt=0, le=1000, description="autoscaling target per replica")
    max_batch_size: int = Field(8, ge=1, le=64)
    batch_wait_s: float | None = Field(
        None,
        ge=0,
        le=1,
        description="wait to fill a batch; default 0 on CPU (a batch is no faster per image), 10 ms on GPU",
    )
    warm_up_size: Size | None = Field(
        None, description="compile the backend for this HxW at start-up (and measure whether batching pays there)"
    )
    adaptive_batching: bool = Field(
        True,
        description="serve one request per model call where a batch is not >= 10 % faster per image "
        "(measured at warm_up_size; without it: unbatched on CPU, batched on GPU)",
    )

    @model_validator(mode="after")
    def _replicas(self) -> DeploymentCreate:
        if self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self


class ServedLatency(BaseModel):
    """The model's time per request as the replicas measured it (the last report)."""

    input_size: list[int] = Field(description="the most requested HxW over the last requests")
    requests: int
    p50_ms: float
    p90_ms: float
    mean_ms: float
    mean_batch: float
    backend: str | None = None
    device: str | None = None
    device_class: str | None = None
    at: str | None = Field(None, description="when it was stored (UTC, ISO 8601)")


class PredictedLatency(BaseModel):
    latency_ms: float
    source: str | None = Field(None, description="lut:<device class> or measured:<device class>")
    input_size: list[int] | None = Field(None, description="None: the search's validation images' size")
    search_id: int


class LatencyComparison(BaseModel):
    """Serving latency beside the search's prediction for the same architecture."""

    measured: ServedLatency
    predicted: PredictedLatency | None
    error_ms: float | None = Field(description="measured p50 minus predicted")
    error_pct: float | None
    note: str | None = Field(description="why there is no prediction or no error, or what the error assumes")


class DeploymentPublic(Record):
    id: int
    name: str
    model_id: int
    state: str
    public: bool
    options: dict[str, Any]
    error: str | None
    created_at: datetime
    updated_at: datetime
    serving_latency: ServedLatency | None = Field(
        None, description="what the replicas measured; None until they report"
    )
    latency: LatencyComparison | None = Field(
        None, description="GET /deployments/{name} only: measured against the search's prediction"
    )

    @computed_field  # type: ignore[prop-decorator]
    @property
    def route(self) -> str:
        return f"/segment/{self.name}"


class DeploymentsPublic(BaseModel):
    data: list[DeploymentPublic]
    count: int
