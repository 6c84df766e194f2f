"""Data-parallel training (``hyctas_core.parallel``): two gloo ranks on CPU train like one process
with the whole batch.

Tolerance: the ranks add their gradients and batch statistics in another order than one process
does, so the results differ by rounding only. In float32, after 6 SGD steps, the losses agree to
1e-5 (relative) and every weight to 1e-4 (absolute; the weights are O(0.1-1)). Some recipes
amplify rounding: with the sandwich rule and distillation together, a float32 difference of 1e-7
grows about tenfold per step (a narrow sub-network's BatchNorm divides by a near-zero variance).
So every case is also run in float64, where the agreement must be 1e-10 / 1e-9: that is what
shows the parallel step is the single-process step, not merely close to it.
"""

from __future__ import annotations

import contextlib
import copy
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from hyctas_core.config import ModelConfig
from hyctas_core.layers import SlimBatchNorm2d
from hyctas_core.parallel import DataParallel, SyncBatchNorm2d, convert_sync_batchnorm
from hyctas_core.retrain import RetrainConfig, Retrainer
from hyctas_core.search_space import Arch, sample_arch
from hyctas_core.train import SupernetTrainConfig, SupernetTrainer
from tests.core.helpers import ToyScenes

TOLERANCES = {torch.float32: (1e-5, 1e-4), torch.float64: (1e-10, 1e-9)}  # loss (relative), weights


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _scenes() -> ToyScenes:
    """16 scenes whose unlabelled area differs per image: the ranks' shares of the labelled pixels
    differ, so the loss weighting matters."""
    return ToyScenes(16, (32, 48), noise=0.5, ragged_ignore=True)


MODEL = ModelConfig(base_channels=4, num_layers=5, num_classes=3)
SUPERNET = {"model": MODEL, "epochs": 2, "batch_size": 4, "checkpoint_every": 3, "log_every": 1}


def _supernet_cfg(**kw: Any) -> SupernetTrainConfig:
    return SupernetTrainConfig(**{**SUPERNET, **kw})


def _retrain_cfg() -> RetrainConfig:
    # Cross-entropy: top-k and OHEM choose their hard pixels per rank, so they are not exact.
    return RetrainConfig(
        model=MODEL, epochs=2, batch_size=4, checkpoint_every=3, log_every=1, drop_path_max=0.0, loss="ce"
    )


def _arch() -> Arch:
    return sample_arch(np.random.default_rng(3), MODEL.num_layers, num_branches=2)


def _trainer(kind: str, cfg_kw: dict[str, Any], run_dir: Path) -> SupernetTrainer | Retrainer:
    if kind == "supernet":
        return SupernetTrainer(_supernet_cfg(**cfg_kw), _scenes(), run_dir)
    return Retrainer(_retrain_cfg(), _arch(), _scenes(), None, run_dir)


def _rank_main(
    rank: int, world: int, init: str, kind: str, cfg_kw: dict[str, Any], run_dir: str, plan: list, dtype: torch.dtype
) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(dtype)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    try:
        for stop_at in plan:  # fit to each stop in turn, resuming from last.pt in between
            trainer = _trainer(kind, cfg_kw, Path(run_dir))
            trainer.resume()
            trainer.fit(max_steps=stop_at)
    finally:
        dist.destroy_process_group()


def _parallel_run(
    tmp_path: Path, kind: str, cfg_kw: dict[str, Any], plan: list[int], name: str, dtype: torch.dtype = torch.float32
) -> Path:
    run_dir = tmp_path / name
    init = tempfile.mktemp(dir=tmp_path)
    mp.spawn(_rank_main, args=(2, init, kind, cfg_kw, str(run_dir), plan, dtype), nprocs=2, join=True)
    return run_dir


def _single_run(tmp_path: Path, kind: str, cfg_kw: dict[str, Any], steps: int, dtype: torch.dtype) -> Path:
    run_dir = tmp_path / "single"
    with default_dtype(dtype):
        trainer = _trainer(kind, cfg_kw, run_dir)
        trainer.fit(max_steps=steps)
    return run_dir


def _losses(run_dir: Path) -> list[float]:
    lines = (run_dir / "train_log.jsonl").read_text().splitlines()
    return [json.loads(ln)["loss"] for ln in lines if json.loads(ln)["event"] == "step"]


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=False)["model"]


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


SANDWICH_DISTILL = {"sampling": "sandwich", "sandwich_random": 1, "distill": True}


@pytest.mark.parametrize(
    ("kind", "cfg_kw", "dtype"),
    [
        ("supernet", {}, torch.float32),
        ("supernet", {}, torch.float64),
        ("supernet", SANDWICH_DISTILL, torch.float64),
        ("retrain", {}, torch.float32),
        ("retrain", {}, torch.float64),
    ],
    ids=["supernet-prior-f32", "supernet-prior-f64", "supernet-sandwich-distill-f64", "retrain-f32", "retrain-f64"],
)
def test_two_ranks_match_one_process_with_the_whole_batch(
    tmp_path: Path, kind: str, cfg_kw: dict[str, Any], dtype: torch.dtype
) -> None:
    steps = 6
    loss_rtol, weight_atol = TOLERANCES[dtype]
    single = _single_run(tmp_path, kind, cfg_kw, steps, dtype)
    parallel = _parallel_run(tmp_path, kind, cfg_kw, [steps], "parallel", dtype)
    one, two = _losses(single), _losses(parallel)
    assert len(one) == len(two) == steps
    assert one == pytest.approx(two, rel=loss_rtol)
    w1, w2 = _weights(single), _weights(parallel)
    assert {w.dtype for w in w1.values() if w.is_floating_point()} == {dtype}
    assert _max_diff(w1, w2) < weight_atol
    # The run really moved the weights (else agreement would prove nothing).
    with default_dtype(dtype):
        fresh = _trainer(kind, cfg_kw, tmp_path / "fresh")
    model = fresh.supernet if isinstance(fresh, SupernetTrainer) else fresh.model
    assert _max_diff(w1, model.state_dict()) > 1e-3
    # BatchNorm running statistics are global too (the buffers match, not only the parameters).
    bn = [k for k in w1 if k.endswith("running_var")]
    assert bn and max(float((w1[k] - w2[k]).abs().max()) for k in bn) < weight_atol


def test_a_parallel_run_resumes_exactly(tmp_path: Path) -> None:
    straight = _parallel_run(tmp_path, "supernet", {}, [6], "straight")
    resumed = _parallel_run(tmp_path, "supernet", {}, [2, 5, 6], "resumed")
    assert _losses(straight) == _losses(resumed)
    w1, w2 = _weights(straight), _weights(resumed)
    assert all(torch.equal(w1[k], w2[k]) for k in w1)
    ckpt = torch.load(resumed / "last.pt", weights_only=False)
    assert len(ckpt["rank_states"]) == 2  # each rank's RNG state is kept


def _local_bn_main(rank: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        parallel = DataParallel.from_process_group(sync_batchnorm=False)
        trainer = SupernetTrainer(_supernet_cfg(), _scenes(), Path(out), parallel=parallel)
        kinds = {type(m).__name__ for m in trainer.supernet.modules() if isinstance(m, nn.BatchNorm2d)}
        trainer.fit(max_steps=3)
        Path(out, f"bn{rank}").write_text(",".join(sorted(kinds)))
    finally:
        dist.destroy_process_group()


def test_without_sync_batchnorm_each_rank_normalises_its_own_slice(tmp_path: Path) -> None:
    """The faster option: no collective per BN layer, so the run is close to one process, not equal."""
    mp.spawn(_local_bn_main, args=(tempfile.mktemp(dir=tmp_path), str(tmp_path / "run")), nprocs=2, join=True)
    assert "SyncBatchNorm2d" not in (tmp_path / "run" / "bn0").read_text()
    local, single = _losses(tmp_path / "run"), _losses(_single_run(tmp_path, "supernet", {}, 3, torch.float32))
    assert local != pytest.approx(single, rel=1e-5)  # per-slice statistics: not one process's
    assert local == pytest.approx(single, rel=0.2)  # but the same training


def _mismatch_main(rank: int, init: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=2)
    try:
        params = [nn.Parameter(torch.ones(3)), nn.Parameter(torch.ones(2))]
        params[rank].grad = torch.ones_like(params[rank])  # rank 0 trained one tensor, rank 1 another
        try:
            DataParallel(rank, 2).all_reduce_grads(params, 1.0, step=7)
        except RuntimeError as e:
            Path(out, f"rank{rank}").write_text(str(e))
    finally:
        dist.destroy_process_group()


def test_ranks_that_trained_different_parameters_are_an_error(tmp_path: Path) -> None:
    mp.spawn(_mismatch_main, args=(tempfile.mktemp(dir=tmp_path), str(tmp_path)), nprocs=2, join=True)
    for rank in (0, 1):
        message = (tmp_path / f"rank{rank}").read_text()
        assert "step 7" in message and "different parameters" in message


def test_sync_batchnorm_is_plain_batchnorm_in_one_process() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), SlimBatchNorm2d(6))
    twin = convert_sync_batchnorm(copy.deepcopy(net))
    assert isinstance(twin[1], SyncBatchNorm2d) and isinstance(twin[3], SyncBatchNorm2d)
    assert twin.state_dict().keys() == net.state_dict().keys()
    x = torch.randn(4, 3, 10, 10)
    assert torch.equal(net(x), twin(x))
    assert torch.equal(net[1].running_var, twin[1].running_var)


def test_the_batch_must_split_over_the_ranks() -> None:
    with pytest.raises(ValueError, match="does not split evenly over 3 workers"):
        DataParallel(0, 3).local_batch(4)
    assert DataParallel(1, 2).shard(range(12), 1, 3, 4) == [6, 7, 10, 11]
    assert DataParallel().shard(range(12), 0, 2, 4) == list(range(8))
