"""A pool of Ray actors evaluating architectures, one CPU or GPU each.

Each actor builds its :class:`~hyctas_core.evaluate.CandidateEvaluator` once (supernet
checkpoint, calibration and validation data) and then scores architectures sent to it. The
pool hands out work dynamically (a free actor takes the next arch), keeps results in the
order asked, retries an arch on another actor when an actor or its node dies, and grows by
the cluster's free resources between batches (``workers=None``), so a GPU node added
mid-search adds evaluators, while CPUs / GPUs held by Serve replicas or Tune trials are left
to them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable
from typing import Any

import ray
from ray.exceptions import RayActorError, RayTaskError

from hyctas_core.evaluate import EvaluatorSpec, objectives_of
from hyctas_core.search_space import Arch
from services.worker.devices import LatencyPlacement
from services.worker.ray_init import init_ray

__all__ = ["EvaluationStopped", "EvaluatorActor", "RayEvaluatorPool"]

log = logging.getLogger(__name__)


class EvaluationStopped(RuntimeError):
    """``should_stop()`` asked the pool to stop in the middle of a batch."""


@ray.remote(max_restarts=2)
class EvaluatorActor:
    """Holds one evaluator (model and data loaded once) in a Ray worker process."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.evaluator = EvaluatorSpec.from_dict(spec).build()

    def ready(self) -> int:
        return os.getpid()

    def evaluate(self, arch_json: dict[str, Any]) -> dict[str, Any]:
        return objectives_of(self.evaluator.evaluate(Arch.from_official(arch_json)))

    def timing_job(self) -> dict[str, Any]:
        """What a timing slot needs to build and time a candidate: model config and input size."""
        return {"model": self.evaluator.supernet.cfg.to_dict(), "input_size": list(self.evaluator.input_size)}


class RayEvaluatorPool:
    """Evaluates batches of archs on Ray actors; same results as :class:`LocalEvaluator`.

    Args:
        spec: what each actor loads; ``spec.threads`` should be 1 on a shared CPU host.
        workers: number of actors; None adds one actor per free GPU (CUDA spec) or CPU
            before every batch (at least one actor in all).
        address: Ray cluster address; None starts (or joins) a local Ray.
        max_retries: attempts per arch on other actors after an actor failure.
        startup_timeout_s: how long new actors may take to start (load the supernet and data)
            before the pool goes on without them.
        latency: time candidates only in the timing slots of this placement's device class
            (:mod:`services.worker.devices`); the evaluator actors then defer latency
            (``spec.defer_latency``) and score mIoU, GMACs and params wherever they run.
        on_wait: called with the device class while latency waits for a node of its class, and
            with None when the wait ends.
    """

    def __init__(
        self,
        spec: EvaluatorSpec,
        workers: int | None = None,
        *,
        address: str | None = None,
        max_retries: int = 3,
        startup_timeout_s: float = 120.0,
        latency: LatencyPlacement | None = None,
        on_wait: Callable[[str | None], None] | None = None,
    ) -> None:
        if latency is not None and not spec.defer_latency:
            raise ValueError("a latency placement needs spec.defer_latency (the evaluators must not time)")
        self.latency = latency
        self.on_wait = on_wait
        self._timing_job: dict[str, Any] | None = None
        self.spec = spec
        self.cache_key = spec.cache_key()
        self.fixed_size = workers
        self.max_retries = max_retries
        self.startup_timeout_s = startup_timeout_s
        self._started_ray = False
        self._started_ray = init_ray(address)
        self.use_gpu = spec.device.startswith("cuda")
        self.actors: list[Any] = []
        if self.latency is not None:  # the slots hold their CPU / GPU before evaluators take the rest
            self.latency.slots(on_wait=self.on_wait)
        self._resize()

    def _target_size(self) -> int:
        if self.fixed_size is not None:
            return self.fixed_size
        # What is free now, not the cluster's total: Serve replicas, Tune trials and other
        # searches hold resources too, and an actor that cannot be placed would wait forever.
        free: dict[str, float] = ray.available_resources()  # type: ignore[no-untyped-call]
        if self.use_gpu:
            return max(1, len(self.actors) + int(free.get("GPU", 0)))
        # CPU timing slots hold no Ray CPU (so they can never starve the pool): leave them a core each.
        timing = self.latency.cpu_slots if self.latency is not None else 0
        return max(1, len(self.actors) + int(free.get("CPU", 0) - timing))

    def _resize(self) -> None:
        want = self._target_size()
        options: dict[str, Any] = {"num_cpus": 1, "num_gpus": 1 if self.use_gpu else 0}
        actor_cls: Any = EvaluatorActor  # a Ray actor class: .options() / .remote() are added by @ray.remote
        new = [actor_cls.options(**options).remote(self.spec.to_dict()) for _ in range(want - len(self.actors))]
        if not new:
            return
        refs = {actor.ready.remote(): actor for actor in new}
        if not self.actors:  # nothing to evaluate with yet: wait as long as it takes for the first one
            first, _ = ray.wait(list(refs), num_returns=1)
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self.startup_timeout_s)
            ready = list(dict.fromkeys([*first, *ready]))
        else:
            ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self.startup_timeout_s)
        ray.get(ready)  # load errors surface here, early
        for ref, actor in refs.items():
            if ref in ready:
                self.actors.append(actor)
            else:  # resources went elsewhere meanwhile: do not keep a pending actor
                ray.kill(actor)
        log.info("evaluator pool: %d actors", len(self.actors))

    @property
    def size(self) -> int:
        return len(self.actors)

    def evaluate(
        self,
        archs: list[Arch],
        *,
        should_stop: Callable[[], bool] | None = None,
        on_result: Callable[[float], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Objectives per arch, in order; an arch whose actor died is retried elsewhere.

        Args:
            archs: what to evaluate.
            should_stop: checked after every finished evaluation; when it returns True,
                :class:`EvaluationStopped` is raised (the evaluations in flight are abandoned).
            on_result: called with the seconds each successful evaluation took (submit to result).
        """
        timing: dict[Any, Any] = {}
        jobs: list[dict[str, Any]] = []
        if self.latency is not None:  # queued now: the slots time while the evaluators score mIoU
            try:
                slots = self.latency.slots(should_stop=should_stop, on_wait=self.on_wait)
            except InterruptedError as e:
                raise EvaluationStopped(str(e)) from None
            self._resize()
            jobs = self._timing_jobs(archs)
            timing = self.latency.submit(jobs, slots)
        else:
            self._resize()
        try:
            results: list[dict[str, Any] | None] = [None] * len(archs)
            pending: deque[tuple[int, int]] = deque((i, 0) for i in range(len(archs)))
            idle = deque(self.actors)
            running: dict[Any, tuple[int, int, Any, float]] = {}
            while pending or running:
                while pending and idle:
                    i, attempt = pending.popleft()
                    actor = idle.popleft()
                    running[actor.evaluate.remote(archs[i].to_official())] = (i, attempt, actor, time.perf_counter())
                done, _ = ray.wait(list(running), num_returns=1)
                ref = done[0]
                i, attempt, actor, started = running.pop(ref)
                try:
                    results[i] = ray.get(ref)
                    idle.append(actor)
                    if on_result is not None:
                        on_result(time.perf_counter() - started)
                    if should_stop is not None and should_stop():
                        raise EvaluationStopped(f"stopped after {sum(r is not None for r in results)} of {len(archs)}")
                except RayActorError:
                    if attempt + 1 > self.max_retries:
                        raise
                    log.warning("actor died evaluating arch %s; retrying on another actor", archs[i].hash)
                    pending.append((i, attempt + 1))
                    self.actors.remove(actor)
                    if not self.actors:
                        self._resize()
                        idle.extend(self.actors)
                except RayTaskError as e:
                    raise RuntimeError(f"evaluating arch {archs[i].hash} failed: {e.cause!r}") from None
            scored: list[dict[str, Any]] = [r for r in results if r is not None]
            if self.latency is not None:
                try:
                    timed = self.latency.collect(jobs, timing, should_stop=should_stop, on_wait=self.on_wait)
                except InterruptedError as e:
                    raise EvaluationStopped(str(e)) from None
                for result, latency in zip(scored, timed, strict=True):
                    result.update(latency)
            return scored
        except BaseException:
            for ref in timing:  # timings still queued on the slots are of no use any more
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            raise

    def _timing_jobs(self, archs: list[Arch]) -> list[dict[str, Any]]:
        """What the timing slots build and time for each arch (model config and input size come
        from an evaluator, which read them from the supernet and the data)."""
        if self._timing_job is None:
            self._timing_job = ray.get(self.actors[0].timing_job.remote())
        seconds = self.spec.latency_seconds
        return [{**self._timing_job, "arch": a.to_official(), "seconds": seconds} for a in archs]

    def close(self) -> None:
        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started_ray:
            ray.shutdown()
            self._started_ray = False
