"""Ray Serve applications: one ``SegmentationModel`` app per deployed model, one ``Gateway`` beside them.

- ``SegmentationModel`` is its own HTTP ingress at route prefix ``/segment/{name}``: Serve's proxy
  hands a request straight to a replica, which authenticates the API key (or lets anyone call
  a public deployment), checks the body (size in bytes and pixels, PNG or JPEG, not truncated),
  decodes it, runs the model and encodes the answer: one hop, with decoding and encoding in
  threads off the event loop. Concurrent requests meet in ``@serve.batch``; batch size and wait
  come from ``user_config``. ``reconfigure`` swaps the model in place (requests already batched
  keep the one they started with, so an update drops nothing). Bad input is a 4xx and never
  reaches the model.
- ``Gateway`` (route ``/``): ``GET /health``, ``GET /ready``, and every ``/segment/{name}`` that no
  model app routes: 404 for a deployment that does not exist (or is not yours), 503 with
  ``Retry-After`` for one whose replicas are not serving yet.

Metrics go through ``ray.serve.metrics`` into Ray's Prometheus endpoint:
``hyctas_serve_requests_total``, ``hyctas_serve_request_duration_seconds``,
``hyctas_serve_model_latency_seconds`` (the model call per request, tagged ``model``: the deployment),
``hyctas_serve_batch_size`` and ``hyctas_serve_errors_total``. Each replica also writes a summary
of its measured model latency to the deployment's row at most every ``LATENCY_REPORT_S`` (see
:class:`LatencyWindow`; the write runs in a thread after a response, and at health checks), so
the API can set it beside the search's prediction.
"""

import asyncio
import base64
import io
import re
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from ray import serve
from ray.serve import metrics

from services.auth import KeyCache, TTLCache, authenticate
from services.serve.segmenter import Segmenter, SegmenterConfig

__all__ = [
    "APP_PREFIX",
    "GATEWAY_APP",
    "Endpoint",
    "Gateway",
    "LatencyWindow",
    "SegmentationModel",
    "build_app",
    "decode_image",
    "route_prefix",
]

APP_PREFIX = "hyctas-model-"
GATEWAY_APP = "hyctas-gateway"
_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
LATENCY_REPORT_S = 10.0  # how often a replica writes its latency summary to the deployment row
Output = Literal["labels", "overlay", "json", "panoptic"]


def route_prefix(name: str) -> str:
    """Where deployment ``name`` answers: the Serve route prefix of its app."""
    return f"/segment/{name}"


@dataclass(frozen=True)
class Endpoint:
    """What every HTTP front shares: where API keys and deployments live (None: no auth, every
    model public, as ``hyctas serve`` runs one local model) and the body limits (413 above)."""

    database_url: str | None = None
    max_bytes: int = 16_000_000
    max_pixels: int = 4_200_000

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def decode_image(body: bytes, *, max_pixels: int) -> np.ndarray:
    """An RGB uint8 HxWx3 array from PNG / JPEG bytes.

    Raises:
        HTTPException: 400 for anything that is not a complete, non-empty PNG or JPEG;
            413 when it has more than ``max_pixels`` pixels (checked before decoding).
    """
    if not body:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "empty body: send a PNG or JPEG image")
    try:
        image = Image.open(io.BytesIO(body))
        fmt = image.format
        width, height = image.size
    except Image.DecompressionBombError:  # a header claiming far more pixels than any limit
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"image has more pixels than the limit of {max_pixels} pixels"
        ) from None
    except UnidentifiedImageError:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "not a readable image: send a PNG or JPEG") from None
    except (OSError, ValueError) as exc:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"not a readable image: {_clean(exc)}") from None
    if fmt not in ("PNG", "JPEG"):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"unsupported image format {fmt}: send PNG or JPEG")
    if width == 0 or height == 0:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "zero-size image")
    if width * height > max_pixels:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"image has {width}x{height} pixels; the limit is {max_pixels} pixels"
        )
    try:
        rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except Image.DecompressionBombError:
        raise HTTPException(
            status.HTTP_413_CONTENT_TOO_LARGE, f"image has more pixels than the limit of {max_pixels} pixels"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"corrupt or truncated {fmt}: {_clean(exc)}") from None
    return rgb


_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>")


def _clean(exc: BaseException) -> str:
    """A decoder's message for a client: one line, no object reprs (they show memory addresses)."""
    text = _REPR.sub("the image", str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    return text[:200]


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


async def _multipart_image(request: Request, max_bytes: int) -> bytes:
    """The ``image`` field (or the only file) of a multipart body."""
    try:
        form = await request.form(max_files=1, max_fields=16, max_part_size=max_bytes)
    except HTTPException:
        raise
    except Exception as exc:  # malformed multipart
        raise HTTPException(status.HTTP_400_BAD_REQUEST, f"malformed multipart body: {exc}") from None
    field = form.get("image")
    if field is None:
        files = [v for v in form.values() if hasattr(v, "read")]
        field = files[0] if files else None
    if field is None or not hasattr(field, "read"):
        raise HTTPException(status.HTTP_400_BAD_REQUEST, "multipart body without an 'image' file field")
    data: bytes = await field.read()
    if len(data) > max_bytes:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"image over the {max_bytes}-byte limit")
    return data


def _bearer(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return None


class _Access:
    """Who may call which deployment, from the database: keys and deployment rows cached for
    1 s, so a request costs no query while a revocation or a state change holds within a second."""

    def __init__(self, database_url: str | None) -> None:
        self.storage: Any = None
        if database_url is not None:
            from services.storage import SQLStorage

            self.storage = SQLStorage(database_url)
        self._keys = KeyCache(self._authenticate)
        self._deployments = TTLCache(self._find, ttl_s=1.0, size=256)

    def _authenticate(self, key: str) -> str | None:
        return authenticate(self.storage, key)

    def _find(self, name: str) -> Any:
        record = self.storage.find_deployment(name)
        return record if record is not None and record.state in ("running", "deploying") else None

    async def check_async(self, deployment: str, authorization: str | None) -> Any:
        """:meth:`check`, on the event loop when the row and the key are cached (read without ever
        fetching: no query can run on the loop), else in a thread."""
        if self.storage is None:
            return None
        record = self._deployments.peek(deployment)
        if record is not None:
            if record.public:
                return record
            key = _bearer(authorization)
            user = self._keys.remembered(key) if key else None
            if key is None or user is not None:
                return self._allowed(deployment, record, user)
        return await asyncio.to_thread(self.check, deployment, authorization)

    def check(self, deployment: str, authorization: str | None) -> Any:
        """The deployment's row (None without a database); 404 for unknown (or not yours), 401 for
        a private deployment without a valid key."""
        if self.storage is None:
            return None
        record = self._deployments.get(deployment)
        if record is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no deployment {deployment!r}")
        if record.public:
            return record
        key = _bearer(authorization)
        return self._allowed(deployment, record, self._keys.user(key) if key else None)

    @staticmethod
    def _allowed(deployment: str, record: Any, user: str | None) -> Any:
        """``record`` for its owner; 401 without a valid key, 404 for another user's."""
        if user is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "this deployment needs 'Authorization: Bearer <key>'")
        if user != record.owner:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no deployment {deployment!r}")
        return record


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The request's image bytes (raw body or multipart field ``image``); 413 over ``max_bytes``."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body over the {max_bytes}-byte limit")
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        data = await _multipart_image(request, max_bytes)
    else:
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body over the {max_bytes}-byte limit")
        data = bytes(body)
    return data


def _render(image: np.ndarray, labels: np.ndarray, output: str) -> bytes | dict[str, Any]:
    """What a request asked for: a PNG (``labels``, ``overlay``) or the class fractions (``json``)."""
    from hyctas_core.segment import class_stats, overlay

    if output == "json":
        return {"size": list(labels.shape), "classes": class_stats(labels)}
    return _png(overlay(image, labels) if output == "overlay" else labels)


def batching_plan(segmenter: Segmenter, config: dict[str, Any]) -> dict[str, Any]:
    """How many requests one model call may take: ``max_batch_size``, unless batching does not pay.

    With ``adaptive_batching`` (the default), a batch must make each image at least 10 % faster
    than one image alone, or the replica serves one at a time (no batch queue at all). With
    ``warm_up_size`` this is measured at deploy time (3 calls of batch 1 against 2 of batch
    min(max, 4)); without it, a CPU replica serves unbatched, as ``benchmarks/serve.py``
    measured on CPU (a batch is no faster per image), and a GPU replica batches.
    """
    requested = int(config.get("max_batch_size", 8))
    plan: dict[str, Any] = {"requested": requested, "effective": requested}
    if requested == 1 or not config.get("adaptive_batching", True):
        return plan
    warm = config.get("warm_up_size")
    if not warm:
        pays = not str(segmenter.config.device).startswith("cpu")
        plan.update(effective=requested if pays else 1, why="default for the device (not measured)")
        return plan
    image = np.zeros((int(warm[0]), int(warm[1]), 3), np.uint8)
    k = min(requested, 4)
    one = statistics.median(_seconds(lambda: segmenter.predict([image])) for _ in range(3))
    many = statistics.median(_seconds(lambda: segmenter.predict([image] * k)) for _ in range(2)) / k
    pays = many < 0.9 * one
    plan.update(
        effective=requested if pays else 1,
        why=f"measured: {1000 * one:.1f} ms per image alone, {1000 * many:.1f} ms in a batch of {k}",
    )
    return plan


def _seconds(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class LatencyWindow:
    """The model's measured time per request over the last ``size`` requests, per input size.

    ``summary()`` is what a replica writes to its deployment's row: for the most requested
    input size, the count, p50 / p90 / mean milliseconds and the mean batch size.
    """

    def __init__(self, size: int = 2000) -> None:
        self._samples: deque[tuple[tuple[int, int], float, int]] = deque(maxlen=size)
        self._lock = threading.Lock()
        self.total = 0

    def add(self, image_size: tuple[int, int], seconds: float, batch: int) -> None:
        with self._lock:
            self._samples.append((image_size, seconds, batch))
            self.total += 1

    def summary(self) -> dict[str, Any] | None:
        with self._lock:
            samples = list(self._samples)
        if not samples:
            return None
        sizes: dict[tuple[int, int], int] = {}
        for size, _, _ in samples:
            sizes[size] = sizes.get(size, 0) + 1
        size = max(sizes, key=lambda s: sizes[s])
        ms = np.array([1000 * t for s, t, _ in samples if s == size])
        batches = [b for s, _, b in samples if s == size]
        return {
            "input_size": list(size),
            "requests": len(ms),
            "p50_ms": round(float(np.percentile(ms, 50)), 3),
            "p90_ms": round(float(np.percentile(ms, 90)), 3),
            "mean_ms": round(float(ms.mean()), 3),
            "mean_batch": round(float(np.mean(batches)), 2),
        }


# Module-level helpers of the deployments stay above them: Serve serializes a deployment's
# class when it is decorated, with the globals that exist at that moment.
def _device_class() -> str | None:
    """The device class of the node this replica runs on (see ``services.devices``)."""
    try:
        import ray

        from services.devices import node_device_class

        node = ray.get_runtime_context().get_node_id()
        resources = next(n.get("Resources", {}) for n in ray.nodes() if n["NodeID"] == node)  # type: ignore[no-untyped-call]
        return node_device_class(resources)
    except Exception:  # outside a Ray worker (tests calling the class directly)
        return None


class _PrefixIsRoot:
    """ASGI middleware: a request for the route prefix itself (``/segment/{name}``, no trailing
    slash) is the app's ``/`` route, served as is rather than redirected."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        root = scope.get("root_path", "")
        if scope["type"] == "http" and root and scope["path"] == root:
            scope = {**scope, "path": root + "/", "raw_path": (root + "/").encode()}
        await self.app(scope, receive, send)


model_api = FastAPI(title="HyCTAS segmentation model")
model_api.add_middleware(_PrefixIsRoot)


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64, health_check_period_s=10)
@serve.ingress(model_api)
class SegmentationModel:
    """One model at ``/segment/{name}``; ``user_config`` = :class:`SegmenterConfig` fields plus
    ``max_batch_size`` / ``batch_wait_s`` / ``warm_up_size`` / ``deployment_id`` /
    ``latency_report_s``.

    Args:
        endpoint: :meth:`Endpoint.to_dict` (database and limits).
    """

    def __init__(self, endpoint: dict[str, Any] | None = None) -> None:
        self.endpoint = Endpoint(**(endpoint or {}))
        self.access = _Access(self.endpoint.database_url)
        self.segmenter: Segmenter | None = None
        self.config: dict[str, Any] = {}
        self.batching: dict[str, Any] = {"requested": 1, "effective": 1}
        self.window = LatencyWindow()
        self._reported = (0, 0.0)  # (window total, monotonic time) of the last report
        self._reporting: asyncio.Task[None] | None = None
        self.device_class = _device_class()
        self.batch_sizes = metrics.Histogram(
            "hyctas_serve_batch_size", "Images per model call", boundaries=[1, 2, 4, 8, 16, 32, 64]
        )
        self.model_latency = metrics.Histogram(
            "hyctas_serve_model_latency_seconds", "The model call of each request (its batch's)",
            boundaries=_BUCKETS, tag_keys=("model",),  # Serve adds "application" (hyctas-model-<name>) itself
        )  # fmt: skip
        self.requests = metrics.Counter(
            "hyctas_serve_requests_total",
            "Segmentation requests",
            tag_keys=("model", "status"),  # type: ignore[arg-type]
        )
        self.errors = metrics.Counter("hyctas_serve_errors_total", "Failed requests", tag_keys=("model", "reason"))  # type: ignore[arg-type]
        self.latency = metrics.Histogram(
            "hyctas_serve_request_duration_seconds", "Request latency in the replica (auth, decode, model, encode)",
            boundaries=_BUCKETS, tag_keys=("model",),
        )  # fmt: skip

    @property
    def name(self) -> str:
        return str(self.config.get("name", ""))

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Build the new model first, then swap: requests in flight finish on the old one."""
        segmenter = Segmenter(SegmenterConfig.from_dict(config))
        warm = config.get("warm_up_size")
        if warm:
            segmenter.warm_up((int(warm[0]), int(warm[1])))
        if self.segmenter is not None and segmenter.identity != self.segmenter.identity:
            self.window = LatencyWindow()  # another model or backend: its own latency
        self.batching = batching_plan(segmenter, config)
        self.segmenter = segmenter
        self.config = dict(config)
        batched: Any = self.predict  # @serve.batch adds the setters
        batched.set_max_batch_size(self.batching["effective"])
        batched.set_batch_wait_timeout_s(float(config.get("batch_wait_s", 0.0)))

    async def check_health(self) -> None:
        if self.segmenter is None:
            raise RuntimeError("no model loaded")
        await asyncio.to_thread(self._report_latency)  # every health_check_period_s, off the request path

    def _report_due(self) -> bool:
        last_total, last_t = self._reported
        every = float(self.config.get("latency_report_s", LATENCY_REPORT_S))
        return self.window.total > last_total and time.monotonic() - last_t >= every

    def _report_latency(self) -> None:
        """Write the latency summary to the deployment's row when there is news and the last
        report is ``latency_report_s`` old (a failed write is retried at the next chance)."""
        deployment_id = self.config.get("deployment_id")
        storage = self.access.storage
        if storage is None or deployment_id is None or not self._report_due() or self.segmenter is None:
            return
        total = self.window.total
        summary = self.window.summary()
        if summary is None:
            return
        identity = self.segmenter.identity
        summary.update(backend=identity["backend"], device=self.segmenter.config.device, device_class=self.device_class)
        self._reported = (total, time.monotonic())
        try:
            storage.record_serving_latency(int(deployment_id), summary)
        except Exception:
            self._reported = (0, 0.0)  # retry at the next chance
            raise

    def _observe(self, images: list[np.ndarray], seconds: float) -> None:
        """Record one model call of ``images`` that took ``seconds``: the batch-size histogram, and
        for each request the model-latency histogram and the window the replica reports."""
        self.batch_sizes.observe(len(images))
        for image in images:
            self.window.add(image.shape[:2], seconds, len(images))
            self.model_latency.observe(seconds, tags={"model": self.name})

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.0)
    async def predict(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        segmenter = self.segmenter  # one model for the whole batch, even if reconfigured meanwhile
        assert segmenter is not None
        t0 = time.perf_counter()
        labels = await asyncio.to_thread(segmenter.predict, images)
        seconds = time.perf_counter() - t0
        self._observe(images, seconds)
        identity = segmenter.identity
        return [{"labels": lab, "batch_size": len(images), "model": identity, "model_s": seconds} for lab in labels]

    async def panoptic(self, image: np.ndarray) -> dict[str, Any]:
        """Panoptic output of one image, or ``{"error": ...}`` for a semantic model."""
        segmenter = self.segmenter
        assert segmenter is not None
        if segmenter.panoptic_config is None:
            return {"error": "this deployment serves a semantic model: output=panoptic needs a panoptic one"}
        png, info = await asyncio.to_thread(segmenter.predict_panoptic, image)
        return {"png": png, "segments_info": info, "model": segmenter.identity}

    @model_api.post("/")
    async def segment(self, request: Request, output: Output = "labels") -> Response:
        """Segment one PNG or JPEG (raw body or multipart field ``image``).

        ``output``: ``labels`` (train-id PNG), ``overlay`` (colour PNG), ``json`` (class fractions),
        ``panoptic`` (JSON: base64 COCO-panoptic PNG of segment ids and its ``segments_info``).
        """
        t0 = time.perf_counter()
        code = 500
        try:
            response = await self._segment(request, output)
            code = response.status_code
            return response
        except HTTPException as exc:
            code = exc.status_code
            self.errors.inc(tags={"model": self.name, "reason": str(code)})
            raise
        finally:
            self.requests.inc(tags={"model": self.name, "status": str(code)})
            self.latency.observe(time.perf_counter() - t0, tags={"model": self.name})
            if self._report_due() and (self._reporting is None or self._reporting.done()):
                self._reporting = asyncio.create_task(asyncio.to_thread(self._report_latency))

    async def _segment(self, request: Request, output: str) -> Response:
        t0 = time.perf_counter()
        timing: dict[str, float] = {}
        if self.access.storage is not None:
            await self.access.check_async(self.name, request.headers.get("authorization"))
        timing["auth"] = time.perf_counter() - t0
        data = await _read_body(request, self.endpoint.max_bytes)
        timing["read"] = time.perf_counter() - t0 - timing["auth"]
        if output == "panoptic":
            image = await asyncio.to_thread(decode_image, data, max_pixels=self.endpoint.max_pixels)
            out = await self.panoptic(image)
            if "error" in out:
                raise HTTPException(status.HTTP_400_BAD_REQUEST, out["error"])
            panoptic = {
                "deployment": self.name,
                "model": out["model"],
                "size": list(image.shape[:2]),
                "panoptic_png": base64.b64encode(out["png"]).decode(),
                "segments_info": out["segments_info"],
            }
            return JSONResponse(panoptic)
        if self.batching["effective"] == 1:
            # Unbatched: decode, model and encode in one thread hop, nothing queued in between.
            result, body = await asyncio.to_thread(self._segment_one, data, output, timing)
        else:
            t = time.perf_counter()
            image = await asyncio.to_thread(decode_image, data, max_pixels=self.endpoint.max_pixels)
            timing["decode"] = time.perf_counter() - t
            t = time.perf_counter()
            result = await self.predict(image)
            timing["model"] = result["model_s"]
            timing["batch_queue"] = time.perf_counter() - t - result["model_s"]
            t = time.perf_counter()
            body = await asyncio.to_thread(_render, image, result["labels"], output)
            timing["encode"] = time.perf_counter() - t
        timing["replica"] = time.perf_counter() - t0
        headers = {
            "X-Batch-Size": str(result["batch_size"]),
            "X-Model": str(result["model"]["arch_hash"]),
            "Server-Timing": ", ".join(f"{k};dur={1000 * v:.3f}" for k, v in timing.items()),  # ms
        }
        if isinstance(body, dict):
            payload = {
                "deployment": self.name, "model": result["model"], "batch_size": result["batch_size"],
                "batching": self.batching, **body,
            }  # fmt: skip
            return JSONResponse(payload, headers=headers)
        return Response(body, media_type="image/png", headers=headers)

    def _segment_one(
        self, data: bytes, output: str, timing: dict[str, float]
    ) -> tuple[dict[str, Any], bytes | dict[str, Any]]:
        t0 = time.perf_counter()
        image = decode_image(data, max_pixels=self.endpoint.max_pixels)
        segmenter = self.segmenter
        assert segmenter is not None
        t1 = time.perf_counter()
        labels = segmenter.predict([image])[0]
        t2 = time.perf_counter()
        body = _render(image, labels, output)
        timing.update(decode=t1 - t0, model=t2 - t1, encode=time.perf_counter() - t2)
        self._observe([image], t2 - t1)
        return {"batch_size": 1, "model": segmenter.identity, "model_s": t2 - t1}, body


gateway_api = FastAPI(title="HyCTAS segmentation endpoint")


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})  # I/O-bound
@serve.ingress(gateway_api)
class Gateway:
    """Health, readiness, and the answer for ``/segment/{name}`` paths no model app routes.

    Args:
        endpoint: :meth:`Endpoint.to_dict`.
    """

    def __init__(self, endpoint: dict[str, Any] | None = None) -> None:
        self.endpoint = Endpoint(**(endpoint or {}))
        self.access = _Access(self.endpoint.database_url)

    @gateway_api.get("/health")
    def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @gateway_api.get("/ready")
    def ready(self) -> JSONResponse:
        try:
            if self.access.storage is not None:
                self.access.storage.list_deployments(owner="__ready__")
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "database": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready"})

    @gateway_api.post("/segment/{deployment}")
    def segment(self, deployment: str, request: Request) -> JSONResponse:
        """A model app routes its own name; reaching here means it has none serving: 404 for a
        deployment that is unknown or not yours, else 503 until its replicas come up."""
        if self.access.storage is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no deployment {deployment!r}")
        self.access.check(deployment, request.headers.get("authorization"))
        return JSONResponse(
            {"detail": f"deployment {deployment!r} has no replica serving yet; retry shortly"},
            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "1"},
        )


def build_app(args: dict[str, str]) -> Any:
    """The gateway as a Serve application, for ``serve run`` / a KubeRay ``RayService`` import path.

    Configured from the ``HYCTAS_*`` settings; ``args`` (``database_url``, ``max_bytes``,
    ``max_pixels``) override them.
    """
    from services.settings import Settings

    s = Settings()
    endpoint = Endpoint(
        args.get("database_url", s.database_url),
        int(args.get("max_bytes", s.serve_max_bytes)),
        int(args.get("max_pixels", s.serve_max_pixels)),
    )
    gateway: Any = Gateway
    return gateway.bind(endpoint.to_dict())
