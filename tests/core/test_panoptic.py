"""Panoptic segmentation: head, targets, loss, post-processing, PQ, retraining and the CLI.

One file on purpose (over 600 lines): the panoptic pipeline's pieces are tested against each other
(targets against post-processing, the head against PQ) with shared fixtures.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import Dataset
from typer.testing import CliRunner

from hyctas_cli.main import app
from hyctas_core.config import CITYSCAPES_THING_IDS, ModelConfig, PanopticConfig
from hyctas_core.data.cityscapes import CityscapesDataset
from hyctas_core.data.coco_panoptic import COCOPanopticDataset, rgb_to_id
from hyctas_core.data.labels import THING_TRAIN_IDS
from hyctas_core.data.synth import generate
from hyctas_core.metrics import pq_compute
from hyctas_core.network import HyCTASNet
from hyctas_core.panoptic import (
    PanopticLoss,
    Segment,
    encode_panoptic_png,
    evaluate_panoptic,
    find_centers,
    group_pixels,
    make_targets,
    panoptic_from_labels,
    postprocess,
    semantic_argmax,
    to_coco_panoptic,
)
from hyctas_core.presets import get_preset
from hyctas_core.retrain import RetrainConfig, Retrainer, load_model, read_checkpoint
from hyctas_core.search_space import sample_arch
from hyctas_core.supernet import Supernet
from tests.core.helpers import randomize
from tests.fixtures import write_cityscapes

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one thread is fastest

ROAD, SIDEWALK, TERRAIN, PERSON, CAR = 0, 1, 9, 11, 13  # Cityscapes train ids
THINGS = CITYSCAPES_THING_IDS
runner = CliRunner()


def _heads(label: torch.Tensor, instances: torch.Tensor, num_classes: int = 19) -> dict[str, torch.Tensor]:
    """Perfect network outputs for a scene: one-hot logits and the target heatmap and offsets."""
    t = make_targets(label, instances, thing_ids=THINGS, sigma=2.0)
    logits = F.one_hot(label.clamp(max=num_classes - 1), num_classes).permute(2, 0, 1).float()
    return {"out": logits[None], "center": t.center[None], "offset": t.offset[None]}


# -- targets ------------------------------------------------------------------------------------
def _hand_scene() -> tuple[torch.Tensor, torch.Tensor]:
    """20x30: road, a car (5x7 = 35 px, centre (4, 6)), a person (7x7 = 49 px, centre (13, 22)),
    a crowd of cars without instance (rows 0-1, cols 25-29) and an ignored bottom row."""
    label = torch.full((20, 30), ROAD)
    inst = torch.zeros(20, 30, dtype=torch.long)
    label[2:7, 3:10], inst[2:7, 3:10] = CAR, 1
    label[10:17, 19:26], inst[10:17, 19:26] = PERSON, 2
    label[0:2, 25:30] = CAR
    label[19] = 255
    return label, inst


def test_targets_match_hand_computed_values() -> None:
    label, inst = _hand_scene()
    t = make_targets(label, inst, thing_ids=THINGS, sigma=2.0, small_instance_area=36, small_instance_weight=3.0)
    assert t.centers.tolist() == [[4, 6], [13, 22]]
    c = t.center[0]
    assert c.shape == (20, 30) and c[4, 6] == 1.0 and c[13, 22] == 1.0
    # exp(-d^2 / (2 sigma^2)), sigma 2: d^2 = 1, 2, 36 (3 sigma along x: still drawn), 49 (beyond: 0)
    assert c[4, 7].item() == pytest.approx(math.exp(-1 / 8))
    assert c[5, 7].item() == pytest.approx(math.exp(-2 / 8))
    assert c[4, 12].item() == pytest.approx(math.exp(-36 / 8))
    assert c[4, 13] == 0.0 and c[19, 0] == 0.0
    peaks = torch.nonzero(c == c.max()).tolist()
    assert peaks == [[4, 6], [13, 22]]
    # offsets point from each instance pixel to its centre; 0 elsewhere
    assert t.offset[:, 2, 3].tolist() == [2.0, 3.0]
    assert t.offset[:, 6, 9].tolist() == [-2.0, -3.0]
    assert t.offset[:, 16, 25].tolist() == [-3.0, -3.0]
    assert t.offset[:, 10, 0].tolist() == [0.0, 0.0]
    # weights: centres ignore void and crowd; offsets only on instances; the small car weighs 3
    cw, ow, sw = t.center_weights, t.offset_weights, t.semantic_weights
    assert cw[19].sum() == 0 and cw[0:2, 25:30].sum() == 0 and cw.sum() == 20 * 30 - 30 - 10
    assert torch.equal(ow, (inst > 0).float())
    assert (sw[2:7, 3:10] == 3.0).all() and (sw[10:17, 19:26] == 1.0).all() and sw.sum() == 600 + 2 * 35
    stuff_too = make_targets(label, inst, thing_ids=THINGS, sigma=2.0, ignore_stuff_in_offset=False)
    assert torch.equal(stuff_too.offset_weights, cw)


def test_overlapping_centres_keep_the_larger_value() -> None:
    label = torch.full((9, 9), CAR)
    inst = torch.zeros(9, 9, dtype=torch.long)
    inst[:, :4], inst[:, 5:] = 1, 2  # centres (4, 1.5 -> 2) and (4, 6)
    label[:, 4] = ROAD
    t = make_targets(label, inst, thing_ids=THINGS, sigma=3.0)
    assert t.centers.tolist() == [[4, 2], [4, 6]]
    # pixel (4, 4) lies 2 px from both centres; (4, 3) 1 px from the first, 3 from the second
    assert t.center[0, 4, 4].item() == pytest.approx(math.exp(-4 / 18))
    assert t.center[0, 4, 3].item() == pytest.approx(math.exp(-1 / 18))


# -- post-processing ----------------------------------------------------------------------------
def _street() -> tuple[torch.Tensor, torch.Tensor]:
    """40x60 scene: road and sidewalk, two touching cars, a person, a 6-px terrain speck."""
    label = torch.full((40, 60), ROAD)
    label[:10] = SIDEWALK
    label[30:32, 50:53] = TERRAIN  # 6 px: below a stuff area of 10
    inst = torch.zeros(40, 60, dtype=torch.long)
    label[15:25, 5:15], inst[15:25, 5:15] = CAR, 1
    label[15:25, 15:27], inst[15:25, 15:27] = CAR, 2  # touches car 1
    label[12:30, 40:46], inst[12:30, 40:46] = PERSON, 3
    return label, inst


def test_postprocess_recovers_instances_from_perfect_heads() -> None:
    label, inst = _street()
    out = _heads(label, inst)
    ids, segments = postprocess(
        out["out"][0], out["center"][0], out["offset"][0], thing_ids=THINGS, threshold=0.5, stuff_area=10
    )
    assert ids.shape == (40, 60) and ids.dtype == torch.int32
    things = [s for s in segments if s.isthing]
    assert len(things) == 3 and all(s.score == pytest.approx(1.0) for s in things)
    for k in (1, 2, 3):
        mask = inst == k
        seg_id = int(ids[mask][0])
        assert torch.equal(ids == seg_id, mask), k  # the same pixels exactly
        seg = segments[seg_id - 1]
        assert seg.id == seg_id and seg.category == int(label[mask][0]) and seg.area == int(mask.sum())
    stuff = {s.category: s for s in segments if not s.isthing}
    assert set(stuff) == {ROAD, SIDEWALK}
    assert torch.equal(ids == stuff[ROAD].id, label == ROAD)
    assert stuff[SIDEWALK].area == 600 and (ids[30:32, 50:53] == 0).all()  # the speck is void
    assert [s.id for s in segments] == list(range(1, len(segments) + 1))
    # the semantic map may be given instead of logits; chunking the distances changes nothing
    again, _ = postprocess(label, out["center"][0], out["offset"][0], thing_ids=THINGS, threshold=0.5, stuff_area=10)
    tiny_chunks, _ = postprocess(
        label, out["center"][0], out["offset"][0], thing_ids=THINGS, threshold=0.5, stuff_area=10, chunk_elements=5
    )
    assert torch.equal(again, ids) and torch.equal(tiny_chunks, ids)


def test_majority_vote_and_no_centre() -> None:
    sem = torch.full((10, 10), CAR)
    sem[:, :3] = PERSON  # 30 person pixels, 70 car pixels, all grouped to one centre
    heat = torch.zeros(1, 10, 10)
    heat[0, 5, 5] = 1.0
    offset = torch.zeros(2, 10, 10)
    ids, segments = postprocess(sem, heat, offset, thing_ids=THINGS, stuff_area=1)
    assert len(segments) == 1 and segments[0].category == CAR and segments[0].area == 100
    assert (ids == 1).all()
    ids, segments = postprocess(sem, torch.zeros(1, 10, 10), offset, thing_ids=THINGS)  # no centre: void
    assert segments == [] and (ids == 0).all()


def test_find_centers_nms_threshold_and_top_k() -> None:
    heat = torch.zeros(20, 20)
    heat[5, 5], heat[5, 7] = 0.9, 0.8  # within one 5x5 window: only the stronger survives
    heat[15, 15], heat[2, 17], heat[10, 10] = 0.6, 0.7, 0.05  # the last is below the threshold
    centers, scores = find_centers(heat, threshold=0.1, nms_kernel=5, top_k=10)
    assert centers.tolist() == [[5, 5], [2, 17], [15, 15]] and scores.tolist() == pytest.approx([0.9, 0.7, 0.6])
    centers, _ = find_centers(heat, threshold=0.1, nms_kernel=1, top_k=2)  # kernel 1: every positive pixel
    assert centers.tolist() == [[5, 5], [5, 7]]
    with pytest.raises(ValueError, match="odd"):
        find_centers(heat, nms_kernel=4)


def test_fast_argmax_and_both_nms_paths_agree() -> None:
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(19, 30, 40, generator=g)
    assert torch.equal(semantic_argmax(logits), logits.argmax(0))
    ties = logits.round()  # many equal maxima: the first class wins, as in argmax
    assert torch.equal(semantic_argmax(ties), ties.argmax(0))
    heat = torch.rand(50, 60, generator=g)
    # threshold 0.9: few candidates (windows tested one by one); 0.0: every pixel (pooled map)
    for threshold in (0.9, 0.0):
        centers, scores = find_centers(heat, threshold=threshold, nms_kernel=5, top_k=10_000)
        pooled = F.max_pool2d(heat[None, None], 5, 1, 2)[0, 0]
        ref = torch.nonzero((heat == pooled) & (heat > threshold))
        assert sorted(centers.tolist()) == sorted(ref.tolist()) and len(ref) > 10
        assert torch.all(scores[:-1] >= scores[1:])


def test_group_pixels_nearest_centre() -> None:
    mask = torch.zeros(4, 6, dtype=torch.bool)
    mask[1, :] = True
    offset = torch.zeros(2, 4, 6)
    offset[1, 1, 4] = -4.0  # pixel (1, 4) points at (1, 0)
    centers = torch.tensor([[1, 0], [1, 5]])
    out = group_pixels(offset, centers, mask)
    assert out[1].tolist() == [1, 1, 1, 2, 1, 2] and out[0].sum() == 0  # (1, 3) is nearer to (1, 5)


# -- COCO panoptic encoding ---------------------------------------------------------------------
def test_coco_encoding_png_and_segments_info() -> None:
    ids = torch.zeros(4, 5, dtype=torch.int32)
    ids[1:3, 1:4] = 1
    ids[3, :] = 2
    segments = [Segment(1, CAR, True, 6, score=0.75), Segment(2, ROAD, False, 5)]
    rgb, info = to_coco_panoptic(ids, segments, category_ids=[7 + t for t in range(19)])
    assert rgb.shape == (4, 5, 3) and rgb.dtype == np.uint8 and rgb[1, 1].tolist() == [1, 0, 0]
    assert info == [
        {"id": 1, "category_id": 20, "iscrowd": 0, "isthing": 1, "area": 6, "bbox": [1, 1, 3, 2], "score": 0.75},
        {"id": 2, "category_id": 7, "iscrowd": 0, "isthing": 0, "area": 5, "bbox": [0, 3, 5, 1]},
    ]
    big = torch.full((2, 2), 70000, dtype=torch.int32)
    png, info = encode_panoptic_png(big, [Segment(70000, CAR, True, 4)])
    with Image.open(io.BytesIO(png)) as im:
        assert im.mode == "RGB" and (rgb_to_id(np.asarray(im)) == 70000).all()
    assert info[0]["category_id"] == CAR and info[0]["bbox"] == [0, 0, 2, 2]


# -- PQ -----------------------------------------------------------------------------------------
class _Scenes(Dataset[dict[str, Any]]):
    """Items with label and instance maps; the image holds the item index (for the fake model)."""

    def __init__(self, scenes: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.scenes = scenes

    def __len__(self) -> int:
        return len(self.scenes)

    def __getitem__(self, i: int) -> dict[str, Any]:
        label, inst = self.scenes[i]
        image = torch.full((3, *label.shape), float(i))
        return {"image": image, "label": label, "instances": inst, "name": f"scene{i}"}


class _Oracle(nn.Module):
    """Returns fixed outputs per scene (chosen by the image value)."""

    def __init__(self, outputs: list[dict[str, torch.Tensor]]) -> None:
        super().__init__()
        self.outputs = outputs

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.outputs[int(x[0, 0, 0, 0])]


def _perturbed() -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """10x10 ground truth: road (46 px), person P (rows 0-1, cols 8-9), cars A (cols 0-4) and B
    (cols 5-9) on rows 5-9; prediction: P missed (road), column 4 of A taken by road, B split
    into B1 (cols 5-8) and B2 (col 9)."""
    label = torch.full((10, 10), ROAD)
    inst = torch.zeros(10, 10, dtype=torch.long)
    label[0:2, 8:10], inst[0:2, 8:10] = PERSON, 1
    label[5:10, 0:5], inst[5:10, 0:5] = CAR, 2
    label[5:10, 5:10], inst[5:10, 5:10] = CAR, 3
    p_label = torch.full((10, 10), ROAD)
    p_inst = torch.zeros(10, 10, dtype=torch.long)
    p_label[5:10, 0:4], p_inst[5:10, 0:4] = CAR, 1
    p_label[5:10, 5:9], p_inst[5:10, 5:9] = CAR, 2
    p_label[5:10, 9], p_inst[5:10, 9] = CAR, 3
    return (label, inst), (p_label, p_inst)


def test_pq_perfect_prediction_is_one() -> None:
    scenes = [_street(), _perturbed()[0]]
    model = _Oracle([_heads(*s) for s in scenes])
    cfg = PanopticConfig(center_threshold=0.5, stuff_area=4)
    ev = evaluate_panoptic(model, _Scenes(scenes), cfg=cfg, num_classes=19)
    res = ev.to_dict()
    assert res["num_images"] == 2 and res["miou"] == 1.0
    for part in (res, res["things"], res["stuff"]):
        assert (part["pq"], part["sq"], part["rq"]) == (1.0, 1.0, 1.0)
    assert res["things"]["n"] == 2 and res["stuff"]["n"] == 3  # person, car; road, sidewalk, terrain
    assert res["per_class"]["class_13"]["tp"] == 4 and res["per_class"]["class_0"]["tp"] == 2


def test_pq_of_a_known_perturbation(tmp_path: Path) -> None:
    gt, pred = _perturbed()
    model = _Oracle([_heads(*pred)])
    cfg = PanopticConfig(center_threshold=0.5, nms_kernel=3, stuff_area=4)
    ev = evaluate_panoptic(model, _Scenes([gt]), cfg=cfg, num_classes=19, out_dir=tmp_path / "files")
    stats = ev.result.per_class
    # road: IoU 46/55 -> TP; person: FN; cars: A IoU 20/25, B1 IoU 20/25, B2 a false positive
    road, car = 46 / 55, 1.6 / 2.5
    assert (stats[ROAD].tp, stats[ROAD].fp, stats[ROAD].fn) == (1, 0, 0)
    assert (stats[PERSON].tp, stats[PERSON].fn) == (0, 1)
    assert (stats[CAR].tp, stats[CAR].fp, stats[CAR].fn) == (2, 1, 0)
    assert stats[ROAD].pq == pytest.approx(road) and stats[CAR].pq == pytest.approx(car)
    assert stats[CAR].sq == pytest.approx(0.8) and stats[CAR].rq == pytest.approx(0.8)
    r = ev.result
    assert (r.stuff.pq, r.stuff.sq, r.stuff.rq) == pytest.approx((road, road, 1.0))
    assert (r.things.pq, r.things.sq, r.things.rq) == pytest.approx((car / 2, 0.4, 0.4))
    assert (r.all.pq, r.all.sq, r.all.rq) == pytest.approx(((road + car) / 3, (road + 0.8) / 3, 1.8 / 3))
    # the kept COCO panoptic files score the same through pq_compute directly
    files = tmp_path / "files"
    again = pq_compute(
        files / "panoptic_gt.json", files / "panoptic_gt", files / "panoptic_pred.json", files / "panoptic_pred"
    )
    assert again.all.pq == pytest.approx(r.all.pq)
    data = json.loads((files / "panoptic_pred.json").read_text())
    assert len(data["annotations"][0]["segments_info"]) == 4 and data["categories"][CAR]["isthing"] == 1


def test_ground_truth_crowd_and_void() -> None:
    label, inst = _hand_scene()
    ids, segments = panoptic_from_labels(label, inst, thing_ids=THINGS)
    kinds = [(s.category, s.isthing, s.iscrowd, s.area) for s in segments]
    assert kinds == [
        (CAR, True, False, 35),
        (PERSON, True, False, 49),
        (CAR, True, True, 10),
        (ROAD, False, False, 476),
    ]
    assert (ids[19] == 0).all() and (ids[0:2, 25:30] == 3).all()
    with pytest.raises(ValueError, match="instance maps"):
        evaluate_panoptic(_Oracle([]), _NoInstances(), cfg=PanopticConfig(), num_classes=19)


class _NoInstances(Dataset[dict[str, Any]]):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {"image": torch.zeros(3, 4, 4), "label": torch.zeros(4, 4, dtype=torch.long)}


# -- network and loss -----------------------------------------------------------------------------
MODEL = ModelConfig(base_channels=4, num_layers=11, num_classes=19)
ARCH = get_preset("hyctas-s")


@pytest.mark.parametrize("output_stride", [8, 4])
def test_panoptic_network_outputs(output_stride: int) -> None:
    cfg = ModelConfig(base_channels=4, num_layers=11, output_stride=output_stride)
    net = randomize(HyCTASNet(ARCH, cfg, aux=True, panoptic=True), seed=3).eval()
    assert isinstance(net, HyCTASNet) and net.panoptic
    x = torch.randn(2, 3, 64, 128)
    with torch.no_grad():
        out = net(x)
    assert set(out) == {"out", "center", "offset"}
    assert out["out"].shape == (2, 19, 64, 128) and out["center"].shape == (2, 1, 64, 128)
    assert out["offset"].shape == (2, 2, 64, 128)
    # the semantic path is untouched by the instance branch
    plain = HyCTASNet(ARCH, cfg, aux=True).eval()
    missing = plain.load_state_dict(net.state_dict(), strict=False)
    assert all(k.startswith("instance_head.") for k in missing.unexpected_keys) and not missing.missing_keys
    with torch.no_grad():
        assert torch.equal(plain(x)["out"], out["out"])
        # offsets come out in input pixels: a constant 1 in head pixels is the stride
        predictor = net.instance_head.offset[-1]  # type: ignore[union-attr]
        predictor.weight.zero_()
        predictor.bias.fill_(1.0)
        offset = net(x)["offset"]
    assert torch.allclose(offset, torch.full_like(offset, float(output_stride)))
    assert set(net.train()(x)) == {"out", "aux", "center", "offset"}


def test_add_panoptic_head_to_an_extracted_network() -> None:

    supernet = Supernet(ModelConfig(base_channels=4, num_layers=3))
    arch = sample_arch(np.random.default_rng(0), 3)
    net = supernet.extract(arch).eval()
    assert not net.panoptic
    head = net.add_panoptic_head().instance_head
    assert net.panoptic and net.add_panoptic_head().instance_head is head
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 3, 64, 64))
    assert out["center"].shape == (1, 1, 64, 64) and out["offset"].shape == (1, 2, 64, 64)


def test_panoptic_loss_by_hand() -> None:
    cfg = PanopticConfig(center_weight=200.0, offset_weight=0.01)
    loss = PanopticLoss(cfg, top_k=1.0)
    label = torch.tensor([[[0, 1], [255, 1]]])
    logits = torch.zeros(1, 2, 2, 2)  # uniform: CE = log 2 per valid pixel
    out = {"out": logits, "center": torch.tensor([[[[0.5, 0.0], [1.0, 0.0]]]]), "offset": torch.zeros(1, 2, 2, 2)}
    out["offset"][0, :, 0, 0] = torch.tensor([1.0, -2.0])
    batch = {
        "label": label,
        "semantic_weights": torch.tensor([[[1.0, 3.0], [1.0, 1.0]]]),
        "center": torch.zeros(1, 1, 2, 2),
        "center_weights": torch.tensor([[[1.0, 1.0], [0.0, 1.0]]]),  # the 1.0 error sits on a weight 0
        "offset": torch.zeros(1, 2, 2, 2),
        "offset_weights": torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]),
    }
    parts = loss.parts(out, batch)
    ln2 = math.log(2)
    assert parts["semantic"].item() == pytest.approx((ln2 + 3 * ln2 + ln2) / 4)  # ignored pixel: 0, in the mean
    assert parts["center"].item() == pytest.approx(0.25 / 3)
    assert parts["offset"].item() == pytest.approx(3.0)  # |1| + |-2| on the single weighted pixel
    total = loss(out, batch).item()
    assert total == pytest.approx(parts["semantic"].item() + 200 * 0.25 / 3 + 0.01 * 3.0)


# -- config, retraining, checkpoints ------------------------------------------------------------
def test_config_defaults_and_compatibility(tmp_path: Path) -> None:
    assert set(CITYSCAPES_THING_IDS) == THING_TRAIN_IDS  # person, rider, car, truck, bus, train, motorcycle, bicycle
    old = RetrainConfig().to_dict()
    del old["task"], old["panoptic"]  # a config written before panoptic support
    cfg = RetrainConfig.from_dict(old)
    assert cfg.task == "semantic" and cfg.panoptic == PanopticConfig() and cfg.effective_grad_clip is None
    path = tmp_path / "p.yaml"
    path.write_text("task: panoptic\npanoptic:\n  sigma: 4\n  thing_ids: [1, 2]\n  center_weight: 100\n")
    p = RetrainConfig.from_yaml(path)
    assert p.task == "panoptic" and p.panoptic.thing_ids == (1, 2) and p.panoptic.sigma == 4.0
    assert p.effective_grad_clip == 1.0 and RetrainConfig.from_dict(p.to_dict()) == p
    assert RetrainConfig(task="panoptic", grad_clip=0).effective_grad_clip is None
    for bad, needle in (
        ({"task": "instance"}, "task must be one of"),
        ({"task": "panoptic", "loss": "ohem"}, "topk or ce"),
        ({"task": "panoptic", "class_weighting": "log"}, "class_weighting must be none"),
        ({"task": "panoptic", "model": {"num_classes": 5}}, "not train ids"),
        ({"panoptic": {"sigma": 0}}, "sigma"),
        ({"panoptic": {"nms_kernel": 4}}, "odd"),
        ({"panoptic": {"radius": 3}}, "unknown panoptic config key"),
        ({"panoptic": {"thing_ids": 11}}, "'thing_ids' must be a list"),
    ):
        with pytest.raises(ValueError, match=needle):
            RetrainConfig.from_dict(bad)


class _StreetScenes(Dataset[dict[str, Any]]):
    """Shifted copies of the street scene (image = noisy colour per class)."""

    def __init__(self, n: int, instances: bool = True) -> None:
        self.n, self.instances = n, instances

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict[str, Any]:
        label, inst = _street()
        label, inst = label.roll(3 * i, dims=1), inst.roll(3 * i, dims=1)
        g = torch.Generator().manual_seed(i)
        image = label.float().expand(3, -1, -1) / 10 + 0.1 * torch.randn(3, *label.shape, generator=g)
        item = {"image": image, "label": label}
        if self.instances:
            item["instances"] = inst
        return item


def test_panoptic_retrainer_checkpoints_and_resume(tmp_path: Path) -> None:
    cfg = RetrainConfig(
        model=MODEL, task="panoptic", epochs=2, batch_size=2, lr=0.02, crop_size=(40, 60), checkpoint_every=1,
        log_every=1, panoptic=PanopticConfig(sigma=2.0, stuff_area=10, small_instance_area=100),
    )  # fmt: skip
    trainer = Retrainer(cfg, ARCH, _StreetScenes(4), _StreetScenes(2), tmp_path / "run")
    summary = trainer.fit()
    assert summary["step"] == 4 and 0.0 <= summary["best_pq"] <= 1.0 and 0.0 <= summary["best_miou"] <= 1.0
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if r["event"] == "step"]
    assert all(math.isfinite(r["loss"]) and {"loss_center", "loss_offset", "loss_semantic"} <= set(r) for r in steps)
    epochs = [r for r in log if r["event"] == "epoch"]
    assert all({"pq", "sq", "rq", "pq_things", "pq_stuff", "miou"} <= set(r) for r in epochs)
    _, _, info = read_checkpoint(tmp_path / "run" / "best.pt")
    assert info["pq"] == trainer.best_pq
    net, _, loaded = load_model(tmp_path / "run" / "last.pt")
    assert net.panoptic and loaded.task == "panoptic"
    x = torch.randn(1, 3, 40, 60)
    with torch.no_grad():
        want, got = trainer.model.eval()(x), net(x)
    assert torch.equal(want["center"], got["center"]) and torch.equal(want["offset"], got["offset"])
    # stop after 1 step and resume: same weights as the uninterrupted run
    half = Retrainer(cfg, ARCH, _StreetScenes(4), _StreetScenes(2), tmp_path / "half")
    half.fit(max_steps=1)
    resumed = Retrainer(cfg, ARCH, _StreetScenes(4), _StreetScenes(2), tmp_path / "half")
    assert resumed.resume() and resumed.step == 1
    resumed.fit()
    a, b = trainer.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a) and resumed.best_pq == trainer.best_pq
    with pytest.raises(ValueError, match="instance maps in the training items"):
        Retrainer(cfg, ARCH, _StreetScenes(4, instances=False), None, tmp_path / "x")


def test_semantic_checkpoint_without_task_key_resumes(tmp_path: Path) -> None:
    cfg = RetrainConfig(model=MODEL, epochs=2, batch_size=2, crop_size=(40, 60), checkpoint_every=1)
    first = Retrainer(cfg, ARCH, _StreetScenes(4, instances=False), None, tmp_path)
    first.fit(max_steps=1)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=False)
    del ckpt["config"]["task"], ckpt["config"]["panoptic"]  # as written before panoptic support
    del ckpt["best_pq"], ckpt["last_pq"]
    torch.save(ckpt, tmp_path / "last.pt")
    again = Retrainer(cfg, ARCH, _StreetScenes(4, instances=False), None, tmp_path)
    assert again.resume() and again.step == 1
    net, _, loaded = load_model(tmp_path / "last.pt")
    assert not net.panoptic and loaded.task == "semantic"


# -- datasets -----------------------------------------------------------------------------------
def test_cityscapes_coco_and_synth_ground_truth_load(tmp_path: Path) -> None:
    # Cityscapes instanceIds: the toy cars share one instance id (26000) per image
    root = write_cityscapes(tmp_path / "cs", train=1, val=0)
    item = CityscapesDataset(root, "train", return_instances=True)[0]
    _, segments = panoptic_from_labels(item["label"], item["instances"], thing_ids=THINGS)
    assert [s.category for s in segments if s.isthing] == [CAR] and any(not s.isthing for s in segments)
    # COCO panoptic: train id = position in the categories list; crowd -> void
    coco = tmp_path / "coco"
    (coco / "img").mkdir(parents=True)
    (coco / "png").mkdir()
    ids = np.zeros((8, 8), dtype=np.int64)
    ids[:4], ids[4:, :4], ids[4:, 4:6], ids[4:, 6:] = 5, 300, 70000, 7
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(coco / "img" / "a.jpg")
    Image.fromarray(np.stack([ids % 256, ids // 256 % 256, ids // 65536], -1).astype(np.uint8)).save(
        coco / "png" / "a.png"
    )
    info = [
        {"id": 5, "category_id": 184, "iscrowd": 0},
        {"id": 300, "category_id": 1, "iscrowd": 0},
        {"id": 70000, "category_id": 1, "iscrowd": 0},
        {"id": 7, "category_id": 1, "iscrowd": 1},
    ]
    cats = [{"id": 1, "name": "person", "isthing": 1}, {"id": 184, "name": "tree", "isthing": 0}]
    data = {"images": [{"id": 1, "file_name": "a.jpg"}], "categories": cats}
    data["annotations"] = [{"image_id": 1, "file_name": "a.png", "segments_info": info}]
    (coco / "p.json").write_text(json.dumps(data))
    ds = COCOPanopticDataset(coco / "p.json", coco / "img", coco / "png", return_instances=True)
    item = ds[0]
    pan = PanopticConfig(thing_ids=tuple(sorted(ds.thing_train_ids)))
    t = make_targets(item["label"], item["instances"], thing_ids=pan.thing_ids, sigma=1.0)
    assert t.centers.tolist() == [[6, 2], [6, 4]]  # means (5.5, 1.5) and (5.5, 4.5), rounded half to even
    _, segments = panoptic_from_labels(item["label"], item["instances"], thing_ids=pan.thing_ids)
    assert [(s.category, s.isthing, s.area) for s in segments] == [(0, True, 16), (0, True, 8), (1, False, 32)]
    # the synthetic benchmark has real instances, so the demo data is panoptic-capable
    synth = tmp_path / "synth"
    generate(synth, train=1, val=0, size=(64, 128), seed=0, write_color=False)
    item = CityscapesDataset(synth, "train", return_instances=True)[0]
    assert int(item["instances"].max()) >= 2
    t = make_targets(item["label"], item["instances"], thing_ids=THINGS)
    assert len(t.centers) == len(torch.unique(item["instances"])) - 1 and t.center.max() == 1.0


# -- CLI ----------------------------------------------------------------------------------------
PANOPTIC_YAML = """
epochs: 2
batch_size: 2
crop_size: [64, 128]
checkpoint_every: 1
log_every: 1
model:
  base_channels: 4
  num_layers: 11
panoptic:
  sigma: 4
  stuff_area: 32
  small_instance_area: 256
"""


@pytest.fixture(scope="module")
def panoptic_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    data = tmp_path_factory.mktemp("synth") / "data"
    generate(data, train=4, val=2, size=(64, 128), seed=1, write_color=False)
    cfg = tmp_path_factory.mktemp("cfg") / "panoptic.yaml"
    cfg.write_text(PANOPTIC_YAML)
    out = tmp_path_factory.mktemp("runs") / "panoptic"
    args = ["retrain", "--data", str(data), "--out", str(out), "--config", str(cfg), "--preset", "hyctas-s"]
    result = runner.invoke(app, [*args, "--task", "panoptic"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["step"] == 4 and 0.0 <= summary["best_pq"] <= 1.0
    return data, out


def test_cli_panoptic_retrain_then_evaluate(panoptic_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, out = panoptic_run
    args = ["evaluate", "--task", "panoptic", "--checkpoint", str(out / "best.pt"), "--data", str(data)]
    result = runner.invoke(app, [*args, "--json", "--predictions", str(tmp_path / "pred")])
    assert result.exit_code == 0, result.output
    res = json.loads(result.stdout)
    for part in (res, res["things"], res["stuff"]):
        assert all(0.0 <= part[k] <= 1.0 for k in ("pq", "sq", "rq")), part
    assert res["task"] == "panoptic" and res["val_images"] == 2 and 0.0 <= res["miou"] <= 1.0
    assert "person" in res["per_class"] and res["per_class"]["car"]["isthing"]
    pred = json.loads((tmp_path / "pred" / "panoptic_pred.json").read_text())
    assert {c["id"] for c in pred["categories"]} >= {7, 24, 26, 33}  # Cityscapes label ids
    assert len(list((tmp_path / "pred" / "panoptic_pred").glob("*.png"))) == 2
    text = runner.invoke(app, args)
    assert text.exit_code == 0 and "PQ" in text.stdout and "things" in text.stdout
    semantic = runner.invoke(app, ["evaluate", "--checkpoint", str(out / "best.pt"), "--data", str(data), "--json"])
    assert semantic.exit_code == 0, semantic.output
    assert json.loads(semantic.stdout)["task"] == "semantic" and "pq" not in json.loads(semantic.stdout)


def _one_line_error(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr


def test_cli_panoptic_errors(panoptic_run: tuple[Path, Path], tmp_path: Path) -> None:
    data, out = panoptic_run
    ckpt = ["--checkpoint", str(out / "best.pt"), "--data", str(data)]
    _one_line_error(["evaluate", "--task", "instance", *ckpt], "--task must be one of")
    _one_line_error(
        ["evaluate", "--task", "panoptic", "--supernet", str(out / "best.pt"), "--data", str(data)], "--checkpoint"
    )
    _one_line_error(["evaluate", "--supernet", str(out / "best.pt"), *ckpt], "only one of")
    _one_line_error(["evaluate", "--data", str(data)], "give --supernet")
    _one_line_error(["evaluate", *ckpt, "--preset", "hyctas-s"], "drop --arch")
    _one_line_error(
        ["evaluate", "--task", "panoptic", "--checkpoint", str(tmp_path / "no.pt"), "--data", str(data)],
        "does not exist",
    )
    afile = tmp_path / "afile"
    afile.write_text("x")
    _one_line_error(["evaluate", "--task", "panoptic", *ckpt, "--predictions", str(afile)], "not a directory")
    # a semantic checkpoint cannot be scored for PQ
    sem_out = tmp_path / "sem"
    cfg = tmp_path / "s.yaml"
    cfg.write_text(PANOPTIC_YAML.replace("epochs: 2", "epochs: 1"))
    res = runner.invoke(
        app, ["retrain", "--data", str(data), "--out", str(sem_out), "--config", str(cfg), "--preset", "hyctas-s"]
    )
    assert res.exit_code == 0, res.output
    _one_line_error(
        ["evaluate", "--task", "panoptic", "--checkpoint", str(sem_out / "last.pt"), "--data", str(data)],
        "semantic network",
    )
    # retrain: bad task, missing instance files, a resumed run of another task
    base = ["retrain", "--data", str(data), "--config", str(cfg), "--preset", "hyctas-s"]
    _one_line_error([*base, "--out", str(tmp_path / "r1"), "--task", "instance"], "--task must be one of")
    no_inst = write_cityscapes(tmp_path / "cs", train=2, val=1)
    for f in no_inst.rglob("*_instanceIds.png"):
        f.unlink()
    _one_line_error(
        [
            "retrain",
            "--data",
            str(no_inst),
            "--config",
            str(cfg),
            "--preset",
            "hyctas-s",
            "--out",
            str(tmp_path / "r2"),
            "--task",
            "panoptic",
        ],
        "instanceIds file missing",
    )
    _one_line_error(
        ["retrain", "--data", str(data), "--out", str(sem_out), "--resume", "--task", "panoptic"], "differs in"
    )
