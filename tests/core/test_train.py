"""Supernet training: exact resume, sampling prior, losses, config handling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from hyctas_core.config import ModelConfig
from hyctas_core.data.base import label_frequencies
from hyctas_core.losses import OhemCrossEntropy, TopKCrossEntropy, build_loss, log_class_weights
from hyctas_core.train import SupernetTrainConfig, SupernetTrainer, load_supernet
from tests.core.helpers import ToyScenes


def _cfg(**kw: Any) -> SupernetTrainConfig:
    model = ModelConfig(base_channels=4, num_layers=5, num_classes=3)
    base: dict[str, Any] = {"model": model, "epochs": 3, "batch_size": 4, "checkpoint_every": 2, "log_every": 1}
    return SupernetTrainConfig(**{**base, **kw})


def _weights(trainer: SupernetTrainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.supernet.state_dict().items()}


OPTIONS: dict[str, dict[str, Any]] = {
    "paper": {},
    "sandwich+distill+warmup": {"sampling": "sandwich", "sandwich_random": 1, "distill": True, "warmup_steps": 3},
    "prior+distill": {"distill": True},
    "annealed": {"lr_final": 0.05},
    "class-weighted": {"class_weighting": "log", "loss": "topk"},
}


@pytest.mark.parametrize(
    ("stop_at", "option"),
    [
        (1, "paper"),
        (4, "paper"),
        (5, "paper"),
        (2, "sandwich+distill+warmup"),
        (5, "prior+distill"),
        (5, "annealed"),
        (4, "class-weighted"),
    ],
)
def test_resume_is_bit_identical(tmp_path: Path, stop_at: int, option: str) -> None:
    full = SupernetTrainer(_cfg(**OPTIONS[option]), ToyScenes(), tmp_path / "full")
    full.fit()
    assert full.step == 9 and full.finished

    first = SupernetTrainer(_cfg(**OPTIONS[option]), ToyScenes(), tmp_path / "resumed")
    summary = first.fit(max_steps=stop_at)
    assert summary["stopped"] and first.step == stop_at
    del first  # the process "dies": only the checkpoint survives
    second = SupernetTrainer(_cfg(**OPTIONS[option]), ToyScenes(), tmp_path / "resumed")
    assert second.resume() and second.step == stop_at
    second.fit()
    ref, got = _weights(full), _weights(second)
    assert ref.keys() == got.keys()
    for k in ref:
        assert torch.equal(ref[k], got[k]), k
    assert second.optimizer.state_dict()["state"].keys() == full.optimizer.state_dict()["state"].keys()
    # the log holds each step once, as in the uninterrupted run
    steps = [
        ln for ln in (tmp_path / "resumed" / "train_log.jsonl").read_text().splitlines() if '"event": "step"' in ln
    ]
    assert len(steps) == 9


def test_training_reduces_loss_and_updates_shared_weights(tmp_path: Path) -> None:
    cfg = _cfg(epochs=6, lr=0.05, loss="ce")
    trainer = SupernetTrainer(cfg, ToyScenes(16), tmp_path)
    before = _weights(trainer)
    losses: list[float] = []
    trainer.fit(progress=lambda p: losses.append(p.loss))
    assert len(losses) == 24
    assert np.mean(losses[-6:]) < np.mean(losses[:6])
    after = trainer.supernet.state_dict()
    assert not torch.equal(before["stem.to_s4.0.conv.weight"], after["stem.to_s4.0.conv.weight"])
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(0.05 * 0.992**6)
    supernet = load_supernet(tmp_path / "supernet.pt")
    for k, v in supernet.state_dict().items():
        assert torch.equal(v, after[k])


def test_lr_final_anneals_the_last_epoch_to_that_fraction(tmp_path: Path) -> None:
    cfg = _cfg(epochs=4, lr=0.08, lr_final=0.05)
    assert cfg.gamma == pytest.approx(0.05 ** (1 / 3)) and _cfg(epochs=4).gamma == 0.992
    trainer = SupernetTrainer(cfg, ToyScenes(), tmp_path)
    lrs: dict[int, float] = {}
    trainer.fit(progress=lambda p: lrs.setdefault(p.epoch, p.lr))
    assert sorted(lrs) == [0, 1, 2, 3]
    assert lrs[0] == pytest.approx(0.08) and lrs[3] == pytest.approx(0.08 * 0.05)
    assert all(lrs[e + 1] < lrs[e] for e in range(3))


def test_step_samples_follow_the_branch_prior(tmp_path: Path) -> None:
    trainer = SupernetTrainer(_cfg(), ToyScenes(), tmp_path)
    from hyctas_core.search_space import sample_arch

    counts = np.bincount([sample_arch(trainer.arch_rng, 5).num_branches for _ in range(3000)], minlength=4)[1:]
    np.testing.assert_allclose(counts / counts.sum(), [0.2, 0.3, 0.5], atol=0.03)


def test_sandwich_steps_train_largest_smallest_and_random_subnetworks(tmp_path: Path) -> None:
    from hyctas_core.search_space import OP_NAMES, WIDTHS, validate

    trainer = SupernetTrainer(_cfg(sampling="sandwich", sandwich_random=2), ToyScenes(), tmp_path)
    for _ in range(20):
        archs, teacher = trainer.step_archs()
        assert len(archs) == 4 and teacher is None
        largest, smallest = archs[0], archs[1]
        for arch in archs:
            validate(arch, num_layers=5)
        assert largest.num_branches == 3 and largest.last_scales == (8, 16, 32)
        assert all(c.width_mult == 1.0 and c.op != "skip" for b in largest.branches for c in b.cells)
        (branch,) = smallest.branches
        assert all(c.width_mult == WIDTHS[0] for c in branch.cells[:-1]) and branch.cells[-1].width_mult == 1.0
        assert all((c.op == "skip") == (c.stride == 1) for c in branch.cells)
        assert {c.op for c in largest.branches[0].cells} <= set(OP_NAMES[1:])
    # with distillation the step's largest sub-network is the teacher
    trainer = SupernetTrainer(_cfg(sampling="sandwich", distill=True), ToyScenes(), tmp_path / "d")
    archs, teacher = trainer.step_archs()
    assert teacher is archs[0]
    # prior sampling with distillation adds a largest teacher, trained first, to each step
    trainer = SupernetTrainer(_cfg(distill=True), ToyScenes(), tmp_path / "p")
    archs, teacher = trainer.step_archs()
    assert len(archs) == 2 and teacher is archs[0] and teacher.num_branches == 3


def test_warmup_trains_the_largest_with_a_linear_lr_ramp(tmp_path: Path) -> None:
    trainer = SupernetTrainer(_cfg(warmup_steps=4, lr=0.08, loss="ce"), ToyScenes(), tmp_path)
    seen: list[float] = []
    trainer.optimizer.register_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    branches: list[int] = []
    trainer.fit(max_steps=6, progress=lambda p: branches.append(p.branches))
    # 3 steps per epoch: the ramp (k/4 of the scheduled LR) crosses the first epoch's decay
    decayed = 0.08 * 0.992
    assert seen == pytest.approx([0.02, 0.04, 0.06, decayed, decayed, decayed])
    assert branches[:4] == [3, 3, 3, 3]
    # the scheduler's own LR is untouched by the ramp (max_steps stops before the second decay)
    assert trainer.scheduler.get_last_lr()[0] == pytest.approx(decayed)


def test_distillation_pulls_students_towards_the_teacher(tmp_path: Path) -> None:
    trainer = SupernetTrainer(_cfg(distill=True, distill_temperature=2.0), ToyScenes(), tmp_path)
    logits = torch.randn(2, 3, 4, 5)
    labels = torch.zeros(2, 4, 5, dtype=torch.long)
    labels[0, 0] = 255
    assert float(trainer._distill_loss(logits, logits, labels)) == pytest.approx(0.0, abs=1e-6)
    # by hand: KL over the labelled pixels at T=2, times T^2
    teacher = torch.randn(2, 3, 4, 5)
    q, log_p = torch.softmax(teacher / 2, 1), torch.log_softmax(logits / 2, 1)
    kl = (q * (q.log() - log_p)).sum(1)
    expected = kl[labels != 255].mean() * 4
    assert float(trainer._distill_loss(logits, teacher, labels)) == pytest.approx(float(expected), rel=1e-5)
    # the labels reach the supernet every step: the teacher trains on them, the student on it
    calls: list[str] = []
    seg, kd = trainer._seg_loss, trainer._distill_loss
    trainer._seg_loss = lambda *a: (calls.append("labels"), seg(*a))[1]  # type: ignore[method-assign]
    trainer._distill_loss = lambda *a: (calls.append("teacher"), kd(*a))[1]  # type: ignore[method-assign]
    trainer.fit(max_steps=2)
    assert calls == ["labels", "teacher"] * 2
    # a sandwich+distill run trains without error and changes the weights
    trainer = SupernetTrainer(_cfg(distill=True), ToyScenes(), tmp_path / "t")
    before = _weights(trainer)
    SupernetTrainer(_cfg(sampling="sandwich", distill=True), ToyScenes(), tmp_path / "s").fit(max_steps=2)
    trainer.fit(max_steps=2)
    assert any(not torch.equal(before[k], v) for k, v in trainer.supernet.state_dict().items())


@pytest.mark.parametrize(
    ("key", "value", "needle"),
    [
        ("sampling", "random", "sampling must be one of prior, sandwich"),
        ("sandwich_random", -1, "sandwich_random must be >= 0"),
        ("distill_temperature", 0.0, "distill_temperature must be > 0"),
        ("warmup_steps", -2, "warmup_steps must be >= 0"),
        ("lr_final", 0.0, "0 < lr_final <= 1"),
        ("lr_final", 1.5, "0 < lr_final <= 1"),
        ("class_weighting", "median", "class_weighting must be one of none, log"),
        ("class_weight_c", 1.0, "class_weight_c must be > 1"),
    ],
)
def test_bad_training_options_are_refused(key: str, value: Any, needle: str) -> None:
    with pytest.raises(ValueError, match=needle):
        _cfg(**{key: value})


def test_resume_refuses_a_different_config(tmp_path: Path) -> None:
    SupernetTrainer(_cfg(), ToyScenes(), tmp_path).fit(max_steps=2)
    other = SupernetTrainer(_cfg(lr=0.5), ToyScenes(), tmp_path)
    with pytest.raises(ValueError, match=r"different config \(differs in \['lr'\]\)"):
        other.resume()


def test_config_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("epochs: 2\ncrop_size: [64, 128]\nmodel:\n  base_channels: 8\n  num_layers: 6\n")
    cfg = SupernetTrainConfig.from_yaml(path)
    assert cfg.epochs == 2 and cfg.crop_size == (64, 128) and cfg.model.base_channels == 8
    assert SupernetTrainConfig.from_dict(cfg.to_dict()) == cfg
    path.write_text("epoch: 2\n")
    with pytest.raises(ValueError, match=r"unknown training config key\(s\) \['epoch'\]"):
        SupernetTrainConfig.from_yaml(path)
    with pytest.raises(ValueError, match="loss must be"):
        SupernetTrainConfig(loss="focal")


def test_losses_mine_hard_pixels() -> None:
    logits = torch.zeros(1, 2, 1, 10)
    logits[0, 0, 0, :8] = 5.0  # 8 easy pixels of class 0, 2 hard ones (uniform logits)
    target = torch.zeros(1, 1, 10, dtype=torch.long)
    target[0, 0, 9] = 255
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none").flatten()
    top = TopKCrossEntropy(top_k=0.1)(logits, target)
    assert top.item() == pytest.approx(ce.max().item())  # 1 of 10 pixels
    ohem = OhemCrossEntropy(thresh=0.7, min_kept=1)(logits, target)
    assert ohem.item() == pytest.approx(float(np.log(2)))  # only the uniform pixel (p = 0.5 < 0.7)


def test_log_class_weights_favour_rare_classes_and_keep_the_loss_scale() -> None:
    p = np.array([0.7, 0.2, 0.1, 0.0])
    w = log_class_weights(p, c=1.1).double().numpy()
    raw = 1.0 / np.log(1.1 + p)  # ENet's formula, before scaling
    assert np.allclose(w / w[0], raw / raw[0])
    assert float((p * w).sum()) == pytest.approx(1.0)  # a pixel weighs 1 on average
    assert w[3] > w[2] > w[1] > w[0]
    assert w[3] / w[0] == pytest.approx(np.log(1.8) / np.log(1.1), rel=1e-5)  # bounded by 1 / ln(c)
    with pytest.raises(ValueError, match="must be > 1"):
        log_class_weights(p, c=1.0)
    with pytest.raises(ValueError, match="distribution"):
        log_class_weights(np.array([0.5, 0.6]))


def test_class_weighted_losses_match_their_definitions() -> None:
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 3, 4, 5, generator=g)  # some pixels confident, some not
    target = torch.randint(0, 3, (2, 4, 5), generator=g)
    target[0, 0] = 255
    w = torch.tensor([0.5, 1.0, 3.0])
    ce = torch.nn.functional.cross_entropy(logits, target, ignore_index=255, reduction="none")
    pw = torch.where(target == 255, torch.zeros(()), w[target.clamp(max=2)])  # each pixel's class weight
    got = build_loss("ce", class_weights=w)(logits, target)
    assert got.item() == pytest.approx(float((ce * pw).sum() / pw.sum()))
    got = build_loss("topk", top_k=0.25, class_weights=w)(logits, target)
    assert got.item() == pytest.approx(float((ce * pw).flatten().topk(10).values.mean()))
    # OHEM picks the hard pixels by their unweighted probability, then weighs them
    got = OhemCrossEntropy(thresh=0.7, min_kept=1, class_weights=w)(logits, target)
    keep = (torch.exp(-ce) <= 0.7) & (target != 255)
    assert 0 < int(keep.sum()) < int((target != 255).sum())  # the threshold does choose
    assert got.item() == pytest.approx(float((ce * pw)[keep].sum() / pw[keep].sum()))
    # weights of 1 change nothing
    ones = torch.ones(3)
    for name in ("ce", "topk", "ohem"):
        assert build_loss(name, class_weights=ones)(logits, target).item() == pytest.approx(
            build_loss(name)(logits, target).item()
        )


def test_label_frequencies_count_labelled_pixels() -> None:
    toy = ToyScenes(n=4, size=(8, 64))  # three vertical bands of 22, 21 and 21 columns, top quarter ignored
    assert np.allclose(label_frequencies(toy, 3), [22 / 64, 21 / 64, 21 / 64])
    assert np.allclose(label_frequencies(toy, 4), [22 / 64, 21 / 64, 21 / 64, 0.0])
    more = ToyScenes(n=40, size=(8, 64))
    assert np.array_equal(label_frequencies(more, 3, max_images=5), label_frequencies(more, 3, max_images=5))
    with pytest.raises(ValueError, match="no labelled pixels"):
        label_frequencies(ToyScenes(n=2, size=(4, 8)), 0)


def test_class_weighted_training_weighs_by_the_training_labels(tmp_path: Path) -> None:
    trainer = SupernetTrainer(_cfg(class_weighting="log", class_weight_c=1.02), ToyScenes(), tmp_path)
    want = log_class_weights(label_frequencies(ToyScenes(), 3), c=1.02)
    assert isinstance(trainer.criterion, torch.nn.CrossEntropyLoss)
    assert torch.equal(trainer.criterion.weight, want)
    assert SupernetTrainer(_cfg(), ToyScenes(), tmp_path / "plain").criterion.weight is None


def test_load_supernet_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_supernet(tmp_path / "nope.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot be read"):
        load_supernet(bad)
    torch.save({"weights": 1}, bad)
    with pytest.raises(ValueError, match="not a HyCTAS supernet checkpoint"):
        load_supernet(bad)
