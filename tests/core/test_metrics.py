"""Segmentation metrics: confusion matrix / mIoU, Cityscapes and ADE20K files, panoptic quality.

Every expected number below is computed by hand in the comments next to the fixture.

One file on purpose (over 600 lines): the hand-computed fixtures are shared by the confusion-matrix,
file and PQ tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from hyctas_cli.metrics import app
from hyctas_core.metrics import (
    ADE20K_CLASS_NAMES,
    ConfusionMatrix,
    MetricsError,
    evaluate_semseg_files,
    pq_compute,
)

runner = CliRunner()

# ---------------------------------------------------------------------------------------------
# Confusion matrix
# ---------------------------------------------------------------------------------------------

# 4 classes, 255 = ignore. Class 2 appears only in the prediction, class 3 nowhere.
GT_4x4 = np.array(
    [
        [0, 0, 0, 1],
        [0, 0, 1, 1],
        [255, 255, 1, 1],
        [0, 0, 0, 0],
    ]
)
PRED_4x4 = np.array(
    [
        [0, 0, 1, 1],
        [0, 2, 1, 1],
        [1, 1, 1, 1],  # the first two pixels are ignored in the ground truth
        [0, 0, 0, 2],
    ]
)
# 14 evaluated pixels. gt 0 (9 px) -> pred 0: 6, pred 1: 1, pred 2: 2; gt 1 (5 px) -> pred 1: 5.
EXPECTED_MATRIX = np.array([[6, 1, 2, 0], [0, 5, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
# IoU 0 = 6 / (9 + 6 - 6) = 2/3; IoU 1 = 5 / (5 + 6 - 5) = 5/6; IoU 2 = 0 / 2 = 0; IoU 3 = NaN.
EXPECTED_IOU = [2 / 3, 5 / 6, 0.0]


def test_confusion_matrix_hand_computed() -> None:
    cm = ConfusionMatrix(4)
    cm.update(PRED_4x4, GT_4x4)
    np.testing.assert_array_equal(cm.matrix, EXPECTED_MATRIX)
    assert cm.matrix.dtype == np.int64
    iou = cm.iou()
    np.testing.assert_allclose(iou[:3], EXPECTED_IOU)
    assert math.isnan(iou[3])
    # class 3 (absent from both) is left out, class 2 (prediction only) counts with IoU 0
    assert cm.miou == pytest.approx((2 / 3 + 5 / 6 + 0.0) / 3) == pytest.approx(0.5)
    assert cm.pixel_accuracy == pytest.approx(11 / 14)
    d = cm.to_dict(["a", "b", "c", "d"])
    assert d["per_class"] == {"a": pytest.approx(2 / 3), "b": pytest.approx(5 / 6), "c": 0.0, "d": None}
    assert d["miou"] == pytest.approx(0.5) and d["pixel_accuracy"] == pytest.approx(11 / 14)
    assert json.loads(json.dumps(d))["per_class"]["d"] is None
    assert list(cm.to_dict()["per_class"]) == ["class_0", "class_1", "class_2", "class_3"]


def test_confusion_matrix_torch_accumulate_merge_reset() -> None:
    cm = ConfusionMatrix(4)
    cm.update(torch.from_numpy(PRED_4x4), torch.from_numpy(GT_4x4).to(torch.uint8))
    np.testing.assert_array_equal(cm.matrix, EXPECTED_MATRIX)
    cm.update(PRED_4x4[None].astype(np.uint8), GT_4x4[None])  # any shape, any integer dtype
    np.testing.assert_array_equal(cm.matrix, 2 * EXPECTED_MATRIX)
    other = ConfusionMatrix(4)
    other.update(PRED_4x4, GT_4x4)
    cm.merge(other)
    np.testing.assert_array_equal(cm.matrix, 3 * EXPECTED_MATRIX)
    assert cm.miou == pytest.approx(0.5)  # IoU is scale-invariant
    cm.reset()
    assert cm.matrix.sum() == 0 and math.isnan(cm.miou) and math.isnan(cm.pixel_accuracy)
    assert cm.to_dict()["miou"] is None


def test_confusion_matrix_matches_a_pixel_loop() -> None:
    rng = np.random.default_rng(0)
    pred = rng.integers(0, 7, size=(3, 20, 30))
    target = rng.integers(0, 8, size=(3, 20, 30))
    target[target == 7] = 255
    expected = np.zeros((7, 7), dtype=np.int64)
    for t, p in zip(target.ravel(), pred.ravel(), strict=True):
        if t != 255:
            expected[t, p] += 1
    cm = ConfusionMatrix(7)
    cm.update(pred, target)
    np.testing.assert_array_equal(cm.matrix, expected)


@pytest.mark.parametrize(
    ("pred", "target", "needle"),
    [
        (np.zeros((2, 2), dtype=np.int64), np.zeros((2, 3), dtype=np.int64), "shape (2, 2) differs"),
        (np.array([0, 1]), np.array([0, 7]), "target holds value(s) [7]"),
        (np.array([0.0, 1.0]), np.array([0, 1]), "dtype float64"),
        ([0, 1], np.array([0, 1]), "got list"),
    ],
)
def test_confusion_matrix_rejects_bad_input(pred: Any, target: Any, needle: str) -> None:
    cm = ConfusionMatrix(4)
    with pytest.raises(MetricsError) as info:
        cm.update(pred, target)
    assert needle in str(info.value) and "\n" not in str(info.value)
    assert cm.matrix.sum() == 0  # nothing half-added


def test_confusion_matrix_bad_construction_and_merge() -> None:
    with pytest.raises(MetricsError, match="num_classes must be a positive integer, got 0"):
        ConfusionMatrix(0)
    with pytest.raises(MetricsError, match="ignore_index 3 collides"):
        ConfusionMatrix(4, ignore_index=3)
    with pytest.raises(MetricsError, match="cannot merge"):
        ConfusionMatrix(4).merge(ConfusionMatrix(5))
    with pytest.raises(MetricsError, match="got 2 class names for 4 classes"):
        ConfusionMatrix(4).to_dict(["a", "b"])


# ---------------------------------------------------------------------------------------------
# Semantic segmentation files
# ---------------------------------------------------------------------------------------------


def _png(path: Path, arr: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(path)
    return path


# Cityscapes label ids: 7 road(0), 8 sidewalk(1), 11 building(2), 24 person(11), 26 car(13);
# 0 (unlabeled) and 4 (static) are ignored.
CS_LABEL_IDS = np.array(
    [
        [7, 7, 8, 0],
        [7, 26, 26, 4],
        [11, 11, 24, 24],
    ]
)
CS_PRED = np.array(
    [
        [0, 1, 1, 5],  # 5 (pole) lies on an ignored pixel
        [0, 13, 0, 18],  # 18 (bicycle) lies on an ignored pixel
        [2, 2, 11, 2],
    ]
)
# 10 evaluated pixels, 7 correct.
# road: tp 2, gt 3, pred 3 -> 2/4; sidewalk: tp 1, gt 1, pred 2 -> 1/2; car: tp 1, gt 2, pred 1 -> 1/2;
# building: tp 2, gt 2, pred 3 -> 2/3; person: tp 1, gt 2, pred 1 -> 1/2; pole, bicycle: NaN.
CS_EXPECTED = {"road": 0.5, "sidewalk": 0.5, "building": 2 / 3, "person": 0.5, "car": 0.5}
CS_MIOU = (0.5 * 4 + 2 / 3) / 5


def _cityscapes_fixture(root: Path) -> tuple[Path, Path]:
    gt_dir = root / "gtFine" / "val" / "city"
    _png(gt_dir / "city_000000_000001_gtFine_labelIds.png", CS_LABEL_IDS)
    # other gtFine files in the same folder must not be taken as ground truth
    _png(gt_dir / "city_000000_000001_gtFine_labelTrainIds.png", np.full((3, 4), 200))
    Image.new("RGB", (4, 3)).save(gt_dir / "city_000000_000001_gtFine_color.png")
    pred_dir = root / "pred"
    _png(pred_dir / "city_000000_000001_leftImg8bit_pred.png", CS_PRED)
    return root / "gtFine", pred_dir


def test_cityscapes_files_hand_computed(tmp_path: Path) -> None:
    gt_dir, pred_dir = _cityscapes_fixture(tmp_path)
    result = evaluate_semseg_files("cityscapes", [gt_dir], [pred_dir])
    assert result.num_images == 1 and len(result.class_names) == 19
    d = result.to_dict()
    present = {k: v for k, v in d["per_class"].items() if v is not None}
    assert present == {k: pytest.approx(v) for k, v in CS_EXPECTED.items()}
    assert d["per_class"]["pole"] is None and d["per_class"]["bicycle"] is None
    assert d["miou"] == pytest.approx(CS_MIOU)
    assert d["pixel_accuracy"] == pytest.approx(7 / 10)
    assert result.confusion.matrix.sum() == 10

    # the same through the CLI, with explicit files
    gt_file = gt_dir / "val" / "city" / "city_000000_000001_gtFine_labelIds.png"
    pred_file = pred_dir / "city_000000_000001_leftImg8bit_pred.png"
    args = ["semseg", "--dataset", "cityscapes", "--gt", str(gt_file), "--pred", str(pred_file)]
    out = runner.invoke(app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["miou"] == pytest.approx(CS_MIOU) and data["num_images"] == 1 and data["dataset"] == "cityscapes"
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "sidewalk" in table.stdout and "66.67" in table.stdout and f"{100 * CS_MIOU:.2f}" in table.stdout


# ADE20K: 0 = ignored, k -> k-1.
ADE_GT = np.array([[0, 1, 1], [2, 150, 150]])
ADE_PRED = np.array([[5, 0, 1], [1, 149, 0]])
# 5 evaluated: class 0 (wall): tp 1, gt 2, pred 2 -> 1/3; class 1 (building): tp 1, gt 1, pred 2 -> 1/2;
# class 149 (flag): tp 1, gt 2, pred 1 -> 1/2; class 5 only on the ignored pixel -> NaN.


def _ade_fixture(root: Path) -> tuple[Path, Path]:
    ann = root / "ADEChallengeData2016" / "annotations" / "validation"
    _png(ann / "ADE_val_00000001.png", ADE_GT)
    _png(root / "pred" / "ADE_val_00000001_pred.png", ADE_PRED)
    return root / "ADEChallengeData2016", root / "pred"


def test_ade20k_files_hand_computed(tmp_path: Path) -> None:
    gt_dir, pred_dir = _ade_fixture(tmp_path)
    result = evaluate_semseg_files("ade20k", [gt_dir], [pred_dir])
    iou = result.confusion.iou()
    assert result.num_images == 1 and len(result.class_names) == 150 == len(set(ADE20K_CLASS_NAMES))
    np.testing.assert_allclose(iou[[0, 1, 149]], [1 / 3, 1 / 2, 1 / 2])
    assert np.isnan(np.delete(iou, [0, 1, 149])).all()
    assert result.miou == pytest.approx(4 / 9)
    assert result.confusion.pixel_accuracy == pytest.approx(3 / 5)
    per_class = result.to_dict()["per_class"]
    assert per_class["wall"] == pytest.approx(1 / 3) and per_class["flag"] == pytest.approx(0.5)


# Void in predictions (cityscapesscripts: a predicted id outside the evaluated classes is a false
# negative of the pixel's ground-truth class and a false positive of no class).
# GT_4x4 with (0,0) -> 255 and (3,3) -> 255 on gt 0, (1,2) -> 9 on gt 1, (2,0) -> 255 on ignore.
PRED_VOID = PRED_4x4.copy()
PRED_VOID[0, 0], PRED_VOID[3, 3], PRED_VOID[1, 2], PRED_VOID[2, 0] = 255, 255, 9, 255
# gt 0 (9 px): pred 0: 5, pred 1: 1, pred 2: 1, missed: 2; gt 1 (5 px): pred 1: 4, missed: 1.
VOID_MATRIX = np.array([[5, 1, 1, 0], [0, 4, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])
# IoU 0 = 5 / (9 + 5 - 5) = 5/9; IoU 1 = 4 / (5 + 5 - 4) = 2/3; IoU 2 = 0 / (0 + 1) = 0; IoU 3 NaN.
VOID_IOU = [5 / 9, 2 / 3, 0.0]


def test_void_predictions_are_misses_of_the_ground_truth_class() -> None:
    cm = ConfusionMatrix(4)
    cm.update(PRED_VOID, GT_4x4)
    np.testing.assert_array_equal(cm.matrix, VOID_MATRIX)
    np.testing.assert_array_equal(cm.misses, [2, 1, 0, 0])
    np.testing.assert_allclose(cm.iou()[:3], VOID_IOU)
    assert math.isnan(cm.iou()[3])
    assert cm.miou == pytest.approx(sum(VOID_IOU) / 3)
    assert cm.pixel_accuracy == pytest.approx(9 / 14)  # misses are evaluated pixels, never correct
    assert cm.to_dict()["void_predictions"] == 3
    # negative ids and any other out-of-range value are misses too; a merged matrix keeps them
    other = ConfusionMatrix(4)
    other.update(np.where(PRED_VOID == 255, -1, PRED_VOID), GT_4x4)
    cm.merge(other)
    np.testing.assert_array_equal(cm.misses, [4, 2, 0, 0])
    np.testing.assert_allclose(cm.iou()[:3], VOID_IOU)


# CS_PRED with person's correct pixel (2,2) predicted as void: person tp 0, gt 2 -> IoU 0.
CS_VOID_IOU = {**CS_EXPECTED, "person": 0.0}
CS_VOID_MIOU = (0.5 * 3 + 2 / 3 + 0.0) / 5
# Train id -> Cityscapes label id, for the classes of CS_PRED.
TRAIN_TO_LABEL = {0: 7, 1: 8, 2: 11, 5: 17, 11: 24, 13: 26, 18: 33}


@pytest.mark.parametrize(
    ("encoding", "void"),
    [("train", 255), ("train", 19), ("label", 255), ("label", 0), ("label", 4), ("label", 34)],
)
def test_cityscapes_void_predictions_cli(tmp_path: Path, encoding: str, void: int) -> None:
    gt_dir, _ = _cityscapes_fixture(tmp_path)
    pred = CS_PRED.copy()
    if encoding == "label":
        pred = np.vectorize(TRAIN_TO_LABEL.__getitem__)(pred)
    pred[2, 2] = void  # label ids 0 (unlabeled) and 4 (static) are not evaluated: misses as well
    pred[1, 3] = void  # on an ignored ground-truth pixel: not counted at all
    pred_file = _png(tmp_path / "void" / "city_000000_000001_pred.png", pred)
    args = ["semseg", "--dataset", "cityscapes", "--gt", str(gt_dir), "--pred", str(pred_file)]
    out = runner.invoke(app, [*args, "--pred-ids", encoding, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    present = {k: v for k, v in data["per_class"].items() if v is not None}
    assert present == {k: pytest.approx(v) for k, v in CS_VOID_IOU.items()}
    assert data["miou"] == pytest.approx(CS_VOID_MIOU)
    assert data["pixel_accuracy"] == pytest.approx(6 / 10) and data["void_predictions"] == 1
    table = runner.invoke(app, [*args, "--pred-ids", encoding])
    assert table.exit_code == 0 and "1 pixel(s) predicted outside the classes" in table.stdout, table.output


def test_cityscapes_label_id_predictions_match_train_ids(tmp_path: Path) -> None:
    gt_dir, _ = _cityscapes_fixture(tmp_path)
    labels = _png(
        tmp_path / "labels" / "city_000000_000001_pred.png", np.vectorize(TRAIN_TO_LABEL.__getitem__)(CS_PRED)
    )
    result = evaluate_semseg_files("cityscapes", [gt_dir], [labels], pred_ids="label")
    assert result.miou == pytest.approx(CS_MIOU) and int(result.confusion.misses.sum()) == 0
    # read as train ids, the same file is almost all misses (label ids 24..33 are no train ids)
    assert evaluate_semseg_files("cityscapes", [gt_dir], [labels]).miou < CS_MIOU


def test_ade20k_void_predictions(tmp_path: Path) -> None:
    gt_dir, _ = _ade_fixture(tmp_path)
    # (1,1) predicted 150 (no such train id) instead of the correct 149: flag tp 0, gt 2 -> 0.
    pred = _png(tmp_path / "p" / "ADE_val_00000001.png", np.where(ADE_PRED == 149, 150, ADE_PRED))
    iou = evaluate_semseg_files("ade20k", [gt_dir], [pred]).confusion.iou()
    np.testing.assert_allclose(iou[[0, 1, 149]], [1 / 3, 1 / 2, 0.0])
    # the official encoding (1..150, 0 = other): ADE_PRED + 1 scores as ADE_PRED; 0 is a miss
    official = _png(tmp_path / "o" / "ADE_val_00000001.png", ADE_PRED + 1)
    assert evaluate_semseg_files("ade20k", [gt_dir], [official], pred_ids="label").miou == pytest.approx(4 / 9)
    other = _png(tmp_path / "z" / "ADE_val_00000001.png", np.where(ADE_PRED == 149, -1, ADE_PRED) + 1)
    result = evaluate_semseg_files("ade20k", [gt_dir], [other], pred_ids="label")
    np.testing.assert_allclose(result.confusion.iou()[[0, 1, 149]], [1 / 3, 1 / 2, 0.0])
    assert int(result.confusion.misses.sum()) == 1


def _one_line_error(args: list[str], needle: str) -> str:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    return lines[0]


def test_semseg_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    gt_dir, pred_dir = _cityscapes_fixture(tmp_path)
    gt_file = gt_dir / "val" / "city" / "city_000000_000001_gtFine_labelIds.png"
    pred_file = pred_dir / "city_000000_000001_leftImg8bit_pred.png"

    def cs(gt: Path | str, pred: Path | str, needle: str) -> str:
        return _one_line_error(["semseg", "--dataset", "cityscapes", "--gt", str(gt), "--pred", str(pred)], needle)

    _one_line_error(["semseg", "--dataset", "kitti", "--gt", str(gt_dir), "--pred", str(pred_dir)], "'kitti'")
    _one_line_error(["semseg", "--dataset", "cityscapes", "--pred", str(pred_dir)], "--gt")
    _one_line_error(["semseg", "--dataset", "cityscapes", "--gt", str(gt_dir)], "--pred")
    cs(tmp_path / "nowhere", pred_dir, "does not exist")
    cs(gt_dir, tmp_path / "nowhere.png", "does not exist")
    cs(gt_dir / "val" / "city" / "city_000000_000001_gtFine_color.png", pred_dir, "_gtFine_labelIds.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    cs(gt_dir, empty, "no prediction files")
    other = _png(tmp_path / "other" / "town_000000_000009_pred.png", CS_PRED)
    cs(gt_dir, other, "no pairs found")
    _png(tmp_path / "gt2" / "town_000000_000009_gtFine_labelIds.png", CS_LABEL_IDS)
    line = _one_line_error(
        [
            "semseg",
            "--dataset",
            "cityscapes",
            "--gt",
            str(gt_dir),
            "--gt",
            str(tmp_path / "gt2"),
            "--pred",
            str(pred_dir),
        ],
        "has no prediction",
    )
    assert "town_000000_000009_gtFine_labelIds.png" in line

    bad_gt = _png(
        tmp_path / "bad" / "city_000000_000001_gtFine_labelIds.png", np.where(CS_LABEL_IDS == 4, 40, CS_LABEL_IDS)
    )
    line = cs(bad_gt, pred_file, "label id(s) [40]")
    assert str(bad_gt) in line
    _one_line_error(
        ["semseg", "--dataset", "cityscapes", "--gt", str(gt_file), "--pred", str(pred_file), "--pred-ids", "rgb"],
        "--pred-ids must be train or label, got 'rgb'",
    )
    rgb = tmp_path / "rgb" / "city_000000_000001_pred.png"
    rgb.parent.mkdir()
    Image.fromarray(np.stack([CS_PRED.astype(np.uint8)] * 3, axis=-1)).save(rgb)
    assert str(rgb) in cs(gt_file, rgb, "3 channels (mode RGB)")
    small = _png(tmp_path / "small" / "city_000000_000001_pred.png", CS_PRED[:2])
    line = cs(gt_file, small, "size mismatch")
    assert str(gt_file) in line and str(small) in line and "3x4" in line and "2x4" in line
    _png(tmp_path / "dup" / "a" / "city_000000_000001_pred.png", CS_PRED)
    _png(tmp_path / "dup" / "b" / "city_000000_000001_pred.png", CS_PRED)
    cs(gt_file, tmp_path / "dup", "are both for image 'city_000000_000001'")
    cs(gt_file, _png(tmp_path / "odd" / "prediction.png", CS_PRED), "cannot pair")
    garbage = tmp_path / "garbage" / "city_000000_000001_pred.png"
    garbage.parent.mkdir()
    garbage.write_bytes(b"not a png")
    assert str(garbage) in cs(gt_file, garbage, "cannot read prediction")


def test_ade20k_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    gt_dir, pred_dir = _ade_fixture(tmp_path)
    bad_gt = _png(tmp_path / "bad" / "ADE_val_00000001.png", np.where(ADE_GT == 2, 151, ADE_GT))
    args = ["semseg", "--dataset", "ade20k", "--gt", str(bad_gt), "--pred", str(pred_dir)]
    assert str(bad_gt) in _one_line_error(args, "holds value(s) [151]")
    other = _png(tmp_path / "o" / "ADE_val_00000002.png", ADE_PRED)
    _one_line_error(["semseg", "--dataset", "ade20k", "--gt", str(gt_dir), "--pred", str(other)], "no pairs found")


# ---------------------------------------------------------------------------------------------
# Panoptic quality
# ---------------------------------------------------------------------------------------------

PERSON, CAR, SKY, ROAD, TREE = 1, 2, 3, 4, 5
CATEGORIES = [
    {"id": PERSON, "name": "person", "isthing": 1},
    {"id": CAR, "name": "car", "isthing": 1},
    {"id": SKY, "name": "sky", "isthing": 0},
    {"id": ROAD, "name": "road", "isthing": 0},
    {"id": TREE, "name": "tree", "isthing": 0},  # in no image: left out of the Stuff average
]


def _sid(k: int) -> int:
    """A segment id that uses all three RGB channels (checks the R + 256 G + 256^2 B decoding)."""
    return k + 256 * (k + 1) + 256 * 256 * (2 * k + 1)


def _strip(width: int, runs: list[tuple[int, int, int]]) -> np.ndarray:
    """A 2 x width id map; ``runs`` are (first column, last column, segment id); the rest is void."""
    ids = np.zeros((2, width), dtype=np.int64)
    for first, last, sid in runs:
        ids[:, first : last + 1] = sid
    return ids


# Every image is 2 rows high, so all pixel counts below are 2 x the number of columns; the IoUs
# are ratios of column counts.
#
# image 1 (20 columns): void pixels leave the union.
#   gt:   person G1 cols 0-9, void cols 10-14, sky G2 cols 15-19
#   pred: void cols 0-2, person P1 cols 3-14, sky P2 cols 15-19
#   person: inter 7, union 12 + 10 - 7 - 5 (P1 on void) = 10 -> IoU 0.7 TP (14/30 < 0.5 without the void rule)
#   sky: IoU 1 TP
# image 2 (41 columns): IoU just above and exactly at 0.5.
#   gt:   person G3 cols 0-20, car G4 cols 21-30, void cols 31-40
#   pred: person P3 cols 0-10, person P4 cols 11-20, car P5 cols 21-25, car P6 cols 26-35, void 36-40
#   person: P3 IoU 11/21 > 0.5 TP; P4 IoU 10/21 unmatched -> FP
#   car: P5 IoU 5/10 = 0.5 (not > 0.5); P6 IoU 5 / (10 + 10 - 5 - 5) = 0.5 -> G4 FN;
#        P5 FP; P6 has 5/10 = exactly half on void (not more) -> FP
# image 3 (40 columns): crowd and mostly-void predictions.
#   gt:   person crowd C1 cols 0-9, void cols 10-19, road G5 cols 20-29, person G6 cols 30-39
#   pred: person P7 cols 0-5 (on the person crowd: neither TP nor FP), car P8 cols 6-9 (on a crowd of
#         another category -> FP), car P9 cols 10-22 (10/13 on void -> not FP), road P10 cols 23-29
#         (IoU 7/10 TP), person P11 cols 30-39 (IoU 1 TP); the crowd is no FN
# totals: person TP 3 (0.7 + 11/21 + 1), FP 1, FN 0; car TP 0, FP 3, FN 1; sky TP 1 (1.0); road TP 1 (0.7)
PERSON_IOU = 0.7 + 11 / 21 + 1.0
PERSON_PQ = PERSON_IOU / (3 + 0.5 * 1)
PERSON_SQ = PERSON_IOU / 3
PERSON_RQ = 3 / 3.5


def _panoptic_images() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(gt, pred) entries: image_id, file_name, id map, segments_info."""
    g, p = _sid, lambda k: _sid(100 + k)
    gt = [
        (1, _strip(20, [(0, 9, g(1)), (15, 19, g(2))]), [(g(1), PERSON, 0), (g(2), SKY, 0)]),
        (2, _strip(41, [(0, 20, g(3)), (21, 30, g(4))]), [(g(3), PERSON, 0), (g(4), CAR, 0)]),
        (
            3,
            _strip(40, [(0, 9, g(0)), (20, 29, g(5)), (30, 39, g(6))]),
            [(g(0), PERSON, 1), (g(5), ROAD, 0), (g(6), PERSON, 0)],
        ),
    ]
    pred = [
        (1, _strip(20, [(3, 14, p(1)), (15, 19, p(2))]), [(p(1), PERSON), (p(2), SKY)]),
        (
            2,
            _strip(41, [(0, 10, p(3)), (11, 20, p(4)), (21, 25, p(5)), (26, 35, p(6))]),
            [(p(3), PERSON), (p(4), PERSON), (p(5), CAR), (p(6), CAR)],
        ),
        (
            3,
            _strip(40, [(0, 5, p(7)), (6, 9, p(8)), (10, 22, p(9)), (23, 29, p(10)), (30, 39, p(11))]),
            [(p(7), PERSON), (p(8), CAR), (p(9), CAR), (p(10), ROAD), (p(11), PERSON)],
        ),
    ]
    gt_entries = [
        {
            "image_id": i,
            "file_name": f"{i:012d}.png",
            "ids": ids,
            "segments_info": [
                {"id": s, "category_id": c, "iscrowd": crowd, "area": int((ids == s).sum())} for s, c, crowd in segs
            ],
        }
        for i, ids, segs in gt
    ]
    pred_entries = [
        {
            "image_id": i,
            "file_name": f"{i:012d}.png",
            "ids": ids,
            "segments_info": [{"id": s, "category_id": c} for s, c in segs],
        }
        for i, ids, segs in pred
    ]
    return gt_entries, pred_entries


def _write_ids(path: Path, ids: np.ndarray) -> None:
    rgb = np.stack([ids % 256, ids // 256 % 256, ids // (256 * 256)], axis=-1).astype(np.uint8)
    Image.fromarray(rgb, mode="RGB").save(path)


def _write_panoptic(root: Path, name: str, entries: list[dict[str, Any]], with_categories: bool) -> tuple[Path, Path]:
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for e in entries:
        _write_ids(folder / e["file_name"], e["ids"])
    data: dict[str, Any] = {
        "images": [{"id": e["image_id"], "file_name": e["file_name"].replace(".png", ".jpg")} for e in entries],
        "annotations": [{k: v for k, v in e.items() if k != "ids"} for e in entries],
    }
    if with_categories:
        data["categories"] = CATEGORIES
    path = root / f"{name}.json"
    path.write_text(json.dumps(data))
    return path, folder


def _panoptic_fixture(root: Path) -> tuple[Path, Path, Path, Path]:
    gt, pred = _panoptic_images()
    gt_json, gt_folder = _write_panoptic(root, "gt", gt, with_categories=True)
    pred_json, pred_folder = _write_panoptic(root, "pred", pred, with_categories=False)
    return gt_json, gt_folder, pred_json, pred_folder


def test_panoptic_quality_hand_computed(tmp_path: Path) -> None:
    result = pq_compute(*_panoptic_fixture(tmp_path))
    stats = {result.categories[c].name: s for c, s in result.per_class.items()}
    assert (stats["person"].tp, stats["person"].fp, stats["person"].fn) == (3, 1, 0)
    assert stats["person"].iou_sum == pytest.approx(PERSON_IOU)
    assert (stats["car"].tp, stats["car"].fp, stats["car"].fn) == (0, 3, 1)
    assert (stats["sky"].tp, stats["sky"].fp, stats["sky"].fn, stats["sky"].iou_sum) == (1, 0, 0, 1.0)
    assert (stats["road"].tp, stats["road"].fp, stats["road"].fn) == (1, 0, 0)
    assert stats["road"].iou_sum == pytest.approx(0.7)
    assert not stats["tree"].counted

    things, stuff, all_ = result.things, result.stuff, result.all
    assert things.n == 2 and stuff.n == 2 and all_.n == 4
    assert things.pq == pytest.approx(PERSON_PQ / 2)
    assert things.sq == pytest.approx(PERSON_SQ / 2)
    assert things.rq == pytest.approx(PERSON_RQ / 2)
    assert (stuff.pq, stuff.sq, stuff.rq) == (pytest.approx(0.85), pytest.approx(0.85), 1.0)
    assert all_.pq == pytest.approx((PERSON_PQ + 0 + 1.0 + 0.7) / 4)
    assert all_.rq == pytest.approx((PERSON_RQ + 0 + 1.0 + 1.0) / 4)

    d = json.loads(json.dumps(result.to_dict()))
    assert d["num_images"] == 3
    assert d["per_class"]["tree"] == {"pq": None, "sq": None, "rq": None, "tp": 0, "fp": 0, "fn": 0, "isthing": False}
    assert d["per_class"]["car"]["pq"] == 0.0 and d["per_class"]["car"]["isthing"] is True
    assert d["things"]["pq"] == pytest.approx(PERSON_PQ / 2) and d["stuff"]["n"] == 2


def test_panoptic_ground_truth_against_itself_is_perfect(tmp_path: Path) -> None:
    gt, _ = _panoptic_images()
    gt_json, gt_folder = _write_panoptic(tmp_path, "gt", gt, with_categories=True)
    result = pq_compute(gt_json, gt_folder, gt_json, gt_folder)
    assert (result.all.pq, result.all.sq, result.all.rq, result.all.n) == (1.0, 1.0, 1.0, 4)
    # the crowd person region, predicted as a person segment, is neither a TP nor a FP
    assert (result.per_class[PERSON].tp, result.per_class[PERSON].fp) == (3, 0)


def test_panoptic_cli_table_and_json(tmp_path: Path) -> None:
    gt_json, gt_folder, pred_json, pred_folder = _panoptic_fixture(tmp_path)
    args = ["panoptic", "--gt-json", str(gt_json), "--gt-folder", str(gt_folder)]
    args += ["--pred-json", str(pred_json), "--pred-folder", str(pred_folder)]
    out = runner.invoke(app, [*args, "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["stuff"]["pq"] == pytest.approx(0.85) and data["per_class"]["person"]["tp"] == 3
    table = runner.invoke(app, args)
    assert table.exit_code == 0, table.output
    assert "Things" in table.stdout and "85.00" in table.stdout and f"{100 * PERSON_PQ:.2f}" in table.stdout


def _mutate_json(path: Path, change: Any) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_panoptic_errors_exit_2_with_one_line(tmp_path: Path) -> None:
    def case(needle: str, mutate: Any = None, **override: Path) -> str:
        root = tmp_path / f"case{len(list(tmp_path.iterdir()))}"
        paths = dict(zip(("gt_json", "gt_folder", "pred_json", "pred_folder"), _panoptic_fixture(root), strict=True))
        if mutate is not None:
            mutate(paths)
        paths.update(override)
        args = ["panoptic", "--gt-json", str(paths["gt_json"]), "--gt-folder", str(paths["gt_folder"])]
        args += ["--pred-json", str(paths["pred_json"]), "--pred-folder", str(paths["pred_folder"])]
        return _one_line_error(args, needle)

    p4 = _sid(104)

    def drop_segment(paths: dict[str, Path]) -> None:
        _mutate_json(paths["pred_json"], lambda d: d["annotations"][1]["segments_info"].pop(1))

    line = case(f"segment id {p4} is in the PNG but not in segments_info", drop_segment)
    assert "prediction image 2" in line

    def extra_segment(paths: dict[str, Path]) -> None:
        _mutate_json(
            paths["pred_json"], lambda d: d["annotations"][0]["segments_info"].append({"id": 77, "category_id": 1})
        )

    case("segment id 77 is in segments_info but not in the PNG", extra_segment)

    def unknown_category(paths: dict[str, Path]) -> None:
        _mutate_json(paths["pred_json"], lambda d: d["annotations"][2]["segments_info"][0].update(category_id=99))

    case("unknown category_id 99", unknown_category)

    def duplicate_image(paths: dict[str, Path]) -> None:
        _mutate_json(paths["pred_json"], lambda d: d["annotations"].append(d["annotations"][0]))

    case("image 1 is annotated twice", duplicate_image)

    def no_prediction(paths: dict[str, Path]) -> None:
        _mutate_json(paths["pred_json"], lambda d: d["annotations"].pop(2))

    case("image 3 of the ground truth has no prediction", no_prediction)

    def missing_png(paths: dict[str, Path]) -> None:
        (paths["pred_folder"] / "000000000002.png").unlink()

    assert "000000000002.png" in case("does not exist", missing_png)

    def size_mismatch(paths: dict[str, Path]) -> None:
        _write_ids(paths["pred_folder"] / "000000000001.png", _strip(21, [(3, 14, _sid(101)), (15, 19, _sid(102))]))

    line = case("size mismatch for image 1", size_mismatch)
    assert "2x20" in line and "2x21" in line

    def not_rgb(paths: dict[str, Path]) -> None:
        Image.fromarray(np.zeros((2, 20), dtype=np.uint8)).save(paths["pred_folder"] / "000000000001.png")

    case("has mode L; expected an RGB-encoded panoptic PNG", not_rgb)

    def gt_png_mismatch(paths: dict[str, Path]) -> None:
        _mutate_json(paths["gt_json"], lambda d: d["annotations"][0]["segments_info"].pop(0))

    line = case(f"segment id {_sid(1)} is in the PNG but not in segments_info", gt_png_mismatch)
    assert line.startswith("error: ground-truth image 1 (")

    def bad_json(paths: dict[str, Path]) -> None:
        paths["gt_json"].write_text("{oops")

    case("is not valid JSON", bad_json)
    case("prediction folder", pred_folder=tmp_path / "nowhere")
    case("prediction JSON", pred_json=tmp_path / "nowhere.json")
    _one_line_error(["panoptic", "--gt-json", "x.json"], "missing option(s) --gt-folder, --pred-json, --pred-folder")
