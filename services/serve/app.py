"""Ray Serve applications: one ``SegmentationModel`` app per deployed model, one ``Gateway`` in front.

- ``SegmentationModel`` (handle only, no HTTP route): builds a :class:`Segmenter` from its
  ``user_config`` and swaps it in place on ``reconfigure`` (requests already batched keep the
  model they started with, so an update drops nothing). Concurrent requests are batched with
  ``@serve.batch``; batch size and wait come from the same config.
- ``Gateway`` (the HTTP ingress, route ``/``): ``POST /segment/{deployment}`` authenticates the
  API key (or lets anyone call a public deployment), checks the body (size in bytes and pixels,
  PNG or JPEG, not truncated) and only then hands a decoded image to the model, so bad input
  is a 4xx and never reaches, let alone crashes, a replica. ``GET /health``, ``GET /ready``.

Metrics go through ``ray.serve.metrics`` into Ray's Prometheus endpoint:
``hyctas_serve_requests_total``, ``hyctas_serve_request_duration_seconds``,
``hyctas_serve_batch_size`` and ``hyctas_serve_errors_total``.
"""

import asyncio
import base64
import hashlib
import io
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, HTTPException, Request, status
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from ray import serve
from ray.serve import metrics

from services.serve.segmenter import Segmenter, SegmenterConfig

__all__ = ["APP_PREFIX", "GATEWAY_APP", "Gateway", "SegmentationModel", "build_app", "decode_image"]

APP_PREFIX = "hyctas-model-"
GATEWAY_APP = "hyctas-gateway"
_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]


@serve.deployment(ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64, health_check_period_s=10)
class SegmentationModel:
    """One model; ``user_config`` = :class:`SegmenterConfig` fields plus ``max_batch_size`` / ``batch_wait_s``."""

    def __init__(self) -> None:
        self.segmenter: Segmenter | None = None
        self.config: dict[str, Any] = {}
        self.batch_sizes = metrics.Histogram(
            "hyctas_serve_batch_size", "Images per model call", boundaries=[1, 2, 4, 8, 16, 32, 64]
        )

    def reconfigure(self, config: dict[str, Any]) -> None:
        """Build the new model first, then swap: requests in flight finish on the old one."""
        segmenter = Segmenter(SegmenterConfig.from_dict(config))
        warm = config.get("warm_up_size")
        if warm:
            segmenter.warm_up((int(warm[0]), int(warm[1])))
        self.segmenter = segmenter
        self.config = dict(config)
        batched: Any = self.predict  # @serve.batch adds the setters
        batched.set_max_batch_size(int(config.get("max_batch_size", 8)))
        batched.set_batch_wait_timeout_s(float(config.get("batch_wait_s", 0.01)))

    def check_health(self) -> None:
        if self.segmenter is None:
            raise RuntimeError("no model loaded")

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def predict(self, images: list[np.ndarray]) -> list[dict[str, Any]]:
        segmenter = self.segmenter  # one model for the whole batch, even if reconfigured meanwhile
        assert segmenter is not None
        self.batch_sizes.observe(len(images))
        labels = await asyncio.to_thread(segmenter.predict, images)
        return [{"labels": lab, "batch_size": len(images), "model": segmenter.identity} for lab in labels]

    async def __call__(self, image: np.ndarray) -> dict[str, Any]:
        result: dict[str, Any] = await self.predict(image)
        return result

    async def panoptic(self, image: np.ndarray) -> dict[str, Any]:
        """Panoptic output of one image, or ``{"error": ...}`` for a semantic model."""
        segmenter = self.segmenter
        assert segmenter is not None
        if segmenter.panoptic_config is None:
            return {"error": "this deployment serves a semantic model: output=panoptic needs a panoptic one"}
        png, info = await asyncio.to_thread(segmenter.predict_panoptic, image)
        return {"png": png, "segments_info": info, "model": segmenter.identity}


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


class KeyCache:
    """API key -> user, for keys that verified: at most ``size`` of them (least recently used out),
    each for ``ttl_s`` (a revoked key stops working within that). A key that does not verify is
    never cached, so random bearer strings cannot fill it; keys are held as sha256 digests."""

    def __init__(
        self,
        verify: Callable[[str], str | None],
        *,
        ttl_s: float = 1.0,
        size: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.verify, self.ttl_s, self.size, self.clock = verify, ttl_s, size, clock
        self._entries: OrderedDict[str, tuple[float, str]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def user(self, key: str) -> str | None:
        digest = hashlib.sha256(key.encode()).hexdigest()
        now = self.clock()
        with self._lock:
            hit = self._entries.get(digest)
            if hit is not None and now - hit[0] < self.ttl_s:
                self._entries.move_to_end(digest)
                return hit[1]
            self._entries.pop(digest, None)
        user = self.verify(key)
        if user is not None:
            with self._lock:
                self._entries[digest] = (now, user)
                while len(self._entries) > self.size:
                    self._entries.popitem(last=False)
        return user


gateway_api = FastAPI(title="HyCTAS segmentation endpoint")


@serve.deployment(max_ongoing_requests=256, ray_actor_options={"num_cpus": 0.25})  # I/O-bound
@serve.ingress(gateway_api)
class Gateway:
    """HTTP front of every deployed model.

    Args:
        database_url: where API keys and deployments live; None serves every running model
            publicly (``hyctas serve``, a single local model).
        max_bytes / max_pixels: 413 above these.
    """

    def __init__(self, database_url: str | None = None, max_bytes: int = 16_000_000, max_pixels: int = 4_200_000):
        self.max_bytes = max_bytes
        self.max_pixels = max_pixels
        self.storage: Any = None
        if database_url is not None:
            from services.storage import SQLStorage

            self.storage = SQLStorage(database_url)
        self._keys = KeyCache(self._authenticate)
        self._handles: dict[str, Any] = {}
        self.requests = metrics.Counter(
            "hyctas_serve_requests_total",
            "Segmentation requests",
            tag_keys=("model", "status"),  # type: ignore[arg-type]
        )
        self.errors = metrics.Counter("hyctas_serve_errors_total", "Failed requests", tag_keys=("model", "reason"))  # type: ignore[arg-type]
        self.latency = metrics.Histogram(
            "hyctas_serve_request_duration_seconds", "End-to-end request latency", boundaries=_BUCKETS,
            tag_keys=("model",),
        )  # fmt: skip

    # -- auth and lookup --------------------------------------------------------------------------
    def _authenticate(self, key: str) -> str | None:
        from services.auth import authenticate

        return authenticate(self.storage, key)

    def _user(self, key: str | None) -> str | None:
        if key is None or self.storage is None:
            return None
        return self._keys.user(key)

    def _check_access(self, deployment: str, authorization: str | None) -> None:
        """404 for unknown (or not yours), 401 for a private deployment without a valid key."""
        if self.storage is None:
            return
        record = self.storage.find_deployment(deployment)
        if record is None or record.state not in ("running", "deploying"):
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no deployment {deployment!r}")
        if record.public:
            return
        key = authorization[7:].strip() if authorization and authorization.lower().startswith("bearer ") else None
        user = self._user(key)
        if user is None:
            raise HTTPException(status.HTTP_401_UNAUTHORIZED, "this deployment needs 'Authorization: Bearer <key>'")
        if user != record.owner:
            raise HTTPException(status.HTTP_404_NOT_FOUND, f"no deployment {deployment!r}")

    def _handle(self, deployment: str) -> Any:
        handle = self._handles.get(deployment)
        if handle is None:
            try:
                handle = serve.get_app_handle(APP_PREFIX + deployment)
            except Exception:  # Serve raises RayServeException for an unknown app
                raise HTTPException(status.HTTP_404_NOT_FOUND, f"no deployment {deployment!r}") from None
            self._handles[deployment] = handle
        return handle

    # -- routes ---------------------------------------------------------------------------------
    @gateway_api.get("/health")
    def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @gateway_api.get("/ready")
    def ready(self) -> JSONResponse:
        try:
            if self.storage is not None:
                self.storage.list_deployments(owner="__ready__")
        except Exception as exc:
            return JSONResponse({"status": "unavailable", "database": str(exc)}, status_code=503)
        return JSONResponse({"status": "ready"})

    @gateway_api.post("/segment/{deployment}")
    async def segment(
        self, deployment: str, request: Request, output: Literal["labels", "overlay", "json", "panoptic"] = "labels"
    ) -> Response:
        """Segment one PNG or JPEG (raw body or multipart field ``image``).

        ``output``: ``labels`` (train-id PNG), ``overlay`` (colour PNG), ``json`` (class fractions),
        ``panoptic`` (JSON: base64 COCO-panoptic PNG of segment ids and its ``segments_info``).
        """
        t0 = time.perf_counter()
        code = 500
        try:
            response = await self._segment(deployment, request, output)
            code = response.status_code
            return response
        except HTTPException as exc:
            code = exc.status_code
            self.errors.inc(tags={"model": deployment, "reason": str(code)})
            raise
        finally:
            self.requests.inc(tags={"model": deployment, "status": str(code)})
            self.latency.observe(time.perf_counter() - t0, tags={"model": deployment})

    async def _segment(self, deployment: str, request: Request, output: str) -> Response:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body over the {self.max_bytes}-byte limit")
        await asyncio.to_thread(self._check_access, deployment, request.headers.get("authorization"))
        handle = self._handle(deployment)
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            data = await _multipart_image(request, self.max_bytes)
        else:
            body = bytearray()
            async for chunk in request.stream():
                body += chunk
                if len(body) > self.max_bytes:
                    raise HTTPException(status.HTTP_413_CONTENT_TOO_LARGE, f"body over the {self.max_bytes}-byte limit")
            data = bytes(body)
        image = await asyncio.to_thread(decode_image, data, max_pixels=self.max_pixels)
        if output == "panoptic":
            out = await handle.panoptic.remote(image)
            if "error" in out:
                raise HTTPException(status.HTTP_400_BAD_REQUEST, out["error"])
            panoptic = {
                "deployment": deployment,
                "model": out["model"],
                "size": list(image.shape[:2]),
                "panoptic_png": base64.b64encode(out["png"]).decode(),
                "segments_info": out["segments_info"],
            }
            return JSONResponse(panoptic)
        result = await handle.remote(image)
        labels: np.ndarray = result["labels"]
        headers = {"X-Batch-Size": str(result["batch_size"]), "X-Model": str(result["model"]["arch_hash"])}
        if output == "json":
            from hyctas_core.segment import class_stats

            payload = {
                "deployment": deployment, "model": result["model"], "size": list(labels.shape),
                "batch_size": result["batch_size"], "classes": class_stats(labels),
            }  # fmt: skip
            return JSONResponse(payload, headers=headers)
        if output == "overlay":
            from hyctas_core.segment import overlay

            png = await asyncio.to_thread(_png, overlay(image, labels))
        else:
            png = await asyncio.to_thread(_png, labels)
        return Response(png, media_type="image/png", headers=headers)


def build_app(args: dict[str, str]) -> Any:
    """The gateway as a Serve application, for ``serve run`` / a KubeRay ``RayService`` import path.

    Configured from the ``HYCTAS_*`` settings; ``args`` (``database_url``, ``max_bytes``,
    ``max_pixels``) override them.
    """
    from services.settings import Settings

    s = Settings()
    gateway: Any = Gateway
    return gateway.bind(
        args.get("database_url", s.database_url),
        int(args.get("max_bytes", s.serve_max_bytes)),
        int(args.get("max_pixels", s.serve_max_pixels)),
    )
