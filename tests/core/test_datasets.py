"""Cityscapes, ADE20K and COCO panoptic loaders on tiny fixtures written in the real on-disk formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hyctas_core.data.ade20k import ADE20KDataset
from hyctas_core.data.base import DatasetError, label_frequencies
from hyctas_core.data.cityscapes import CityscapesDataset
from hyctas_core.data.coco_panoptic import COCOPanopticDataset
from hyctas_core.data.transforms import MEAN, STD, SegTransform

H, W = 8, 12

# ---------------------------------------------------------------- Cityscapes fixture

# label id -> train id, written out by hand (not via the LUT under test)
_CS_TRAIN = {0: 255, 4: 255, 9: 255, 7: 0, 23: 10, 24: 11, 26: 13, 29: 255, 33: 18}
_CS_FRAMES = ("aachen_000000_000019", "aachen_000001_000019", "bochum_000000_000019")


def _cs_label_ids() -> np.ndarray:
    ids = np.full((H, W), 7, dtype=np.uint8)  # road
    ids[0, :] = 0  # unlabeled
    ids[1, :4] = 4  # static
    ids[1, 4:8] = 9  # parking
    ids[1, 8:] = 23  # sky
    ids[2:5, 0:3] = 26  # car A
    ids[2:5, 3:6] = 26  # car B
    ids[2:5, 6:8] = 24  # person
    ids[2:5, 8:10] = 29  # caravan: has instances but no train id
    ids[5:7, 0:4] = 26  # car group (crowd, no instance id)
    ids[5:7, 4:6] = 33  # bicycle
    return ids


def _cs_instance_ids(ids: np.ndarray) -> np.ndarray:
    inst = ids.astype(np.uint16)
    inst[2:5, 0:3] = 26000
    inst[2:5, 3:6] = 26001
    inst[2:5, 6:8] = 24000
    inst[2:5, 8:10] = 29000
    inst[5:7, 4:6] = 33000
    return inst


def _image(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


@pytest.fixture()
def cityscapes(tmp_path: Path) -> Path:
    root = tmp_path / "cityscapes"
    ids = _cs_label_ids()
    for k, prefix in enumerate(_CS_FRAMES):
        city = prefix.split("_")[0]
        img_dir = root / "leftImg8bit" / "train" / city
        gt_dir = root / "gtFine" / "train" / city
        img_dir.mkdir(parents=True, exist_ok=True)
        gt_dir.mkdir(parents=True, exist_ok=True)
        Image.fromarray(_image(H, W, k)).save(img_dir / f"{prefix}_leftImg8bit.png")
        Image.fromarray(ids).save(gt_dir / f"{prefix}_gtFine_labelIds.png")
        Image.fromarray(_cs_instance_ids(ids)).save(gt_dir / f"{prefix}_gtFine_instanceIds.png")  # 16-bit
        # a deliberately wrong trainIds file: the loader must ignore it
        Image.fromarray(np.zeros((H, W), np.uint8)).save(gt_dir / f"{prefix}_gtFine_labelTrainIds.png")
    return root


def test_cityscapes_scan_and_train_id_mapping(cityscapes: Path) -> None:
    ds = CityscapesDataset(cityscapes, "train", return_instances=True)
    assert len(ds) == 3 and ds.names == _CS_FRAMES
    assert ds.num_classes == 19 and ds.class_names[13] == "car" and ds.ignore_index == 255
    sample = ds[1]
    assert set(sample) == {"image", "label", "name", "instances"}
    assert sample["name"] == "aachen_000001_000019"
    assert sample["image"].shape == (3, H, W) and sample["image"].dtype == torch.float32
    assert sample["label"].dtype == torch.int64 and sample["instances"].dtype == torch.int64
    ids = _cs_label_ids()
    expected = np.vectorize(_CS_TRAIN.__getitem__)(ids)
    np.testing.assert_array_equal(sample["label"].numpy(), expected)
    # the image is the file's pixels, normalised
    raw = _image(H, W, 1).astype(np.float64)
    got = sample["image"].numpy().transpose(1, 2, 0) * np.array(STD) + np.array(MEAN)
    np.testing.assert_allclose(got, raw, atol=1e-3)


def test_cityscapes_instance_indices(cityscapes: Path) -> None:
    ds = CityscapesDataset(cityscapes, "train", return_instances=True)
    inst = ds[0]["instances"].numpy()
    expected = np.zeros((H, W), dtype=np.int64)
    expected[2:5, 6:8] = 1  # 24000 (sorted raw ids: 24000 < 26000 < 26001 < 33000)
    expected[2:5, 0:3] = 2  # 26000
    expected[2:5, 3:6] = 3  # 26001
    expected[5:7, 4:6] = 4  # 33000; caravan 29000 and the car group stay 0
    np.testing.assert_array_equal(inst, expected)
    assert ds.semantic_for_instance(0) == {1: 11, 2: 13, 3: 13, 4: 18}
    no_inst = CityscapesDataset(cityscapes, "train")
    assert "instances" not in no_inst[0]


def test_label_frequencies_read_the_unaugmented_labels(cityscapes: Path) -> None:
    crops = CityscapesDataset(cityscapes, "train", transform=SegTransform(crop_size=(4, 4)))
    train_ids = np.vectorize(_CS_TRAIN.__getitem__)(_cs_label_ids())
    counts = np.bincount(train_ids[train_ids < 19], minlength=19)
    want = counts / counts.sum()  # every frame holds the same label map
    np.testing.assert_allclose(label_frequencies(crops, 19), want)

    class Wrapper:  # e.g. the panoptic targets: the dataset kept as .dataset
        def __init__(self, dataset: Any) -> None:
            self.dataset = dataset

        def __len__(self) -> int:
            return 1  # not read: the wrapped dataset's own length and files are

    np.testing.assert_allclose(label_frequencies(Wrapper(Wrapper(crops)), 19), want)
    np.testing.assert_allclose(label_frequencies(crops, 19, max_images=2), want)


def test_cityscapes_limit(cityscapes: Path) -> None:
    ds = CityscapesDataset(cityscapes, "train", limit=2)
    assert ds.names == _CS_FRAMES[:2]
    with pytest.raises(ValueError, match="limit"):
        CityscapesDataset(cityscapes, "train", limit=0)


def test_augmentation_is_deterministic_per_seed_epoch_and_index(cityscapes: Path) -> None:
    t = SegTransform(crop_size=(6, 6), scale_range=(0.75, 1.5))
    ds = CityscapesDataset(cityscapes, "train", transform=t, return_instances=True, seed=3)
    a = [ds[i] for i in range(3)]
    again = [ds[i] for i in reversed(range(3))][::-1]
    same = CityscapesDataset(cityscapes, "train", transform=t, return_instances=True, seed=3)
    for x, y, z in zip(a, again, [same[i] for i in range(3)], strict=True):
        for key in ("image", "label", "instances"):
            assert torch.equal(x[key], y[key]) and torch.equal(x[key], z[key])
    other_seed = CityscapesDataset(cityscapes, "train", transform=t, seed=4)
    assert any(not torch.equal(a[i]["image"], other_seed[i]["image"]) for i in range(3))
    ds.set_epoch(1)
    epoch1 = [ds[i] for i in range(3)]
    assert any(not torch.equal(a[i]["image"], epoch1[i]["image"]) for i in range(3))
    ds.set_epoch(0)
    assert torch.equal(ds[2]["image"], a[2]["image"])
    assert torch.equal(ds[-1]["label"], a[2]["label"])
    with pytest.raises(IndexError):
        ds[3]
    with pytest.raises(ValueError, match="epoch"):
        ds.set_epoch(-1)


def test_dataloader_batches_dict_samples(cityscapes: Path) -> None:
    t = SegTransform(crop_size=(6, 6))
    ds = CityscapesDataset(cityscapes, "train", transform=t, return_instances=True, seed=1)
    batches = list(DataLoader(ds, batch_size=2, num_workers=0))
    assert [b["image"].shape for b in batches] == [(2, 3, 6, 6), (1, 3, 6, 6)]
    assert batches[0]["label"].dtype == torch.int64 and batches[0]["instances"].shape == (2, 6, 6)
    assert batches[0]["name"] == list(_CS_FRAMES[:2])
    assert torch.equal(batches[1]["image"][0], ds[2]["image"])


def test_dataloader_workers_give_identical_samples(cityscapes: Path) -> None:
    t = SegTransform(crop_size=(6, 6))
    ds = CityscapesDataset(cityscapes, "train", transform=t, seed=5)
    ds.set_epoch(2)
    direct = torch.stack([ds[i]["image"] for i in range(3)])
    loaded = torch.cat([b["image"] for b in DataLoader(ds, batch_size=1, num_workers=2)])
    assert torch.equal(direct, loaded)


def test_cityscapes_missing_directory(tmp_path: Path, cityscapes: Path) -> None:
    with pytest.raises(DatasetError, match="leftImg8bit.*val.*splits found.*train"):
        CityscapesDataset(cityscapes, "val")
    with pytest.raises(DatasetError, match="not found"):
        CityscapesDataset(tmp_path / "nowhere", "train")
    (cityscapes / "leftImg8bit" / "test").mkdir()
    (cityscapes / "gtFine" / "test").mkdir()
    with pytest.raises(DatasetError, match="no <city>"):
        CityscapesDataset(cityscapes, "test")


def test_cityscapes_image_without_label(cityscapes: Path) -> None:
    missing = cityscapes / "gtFine" / "train" / "bochum" / "bochum_000000_000019_gtFine_labelIds.png"
    missing.unlink()
    with pytest.raises(DatasetError) as err:
        CityscapesDataset(cityscapes, "train")
    assert str(missing) in str(err.value) and "bochum_000000_000019_leftImg8bit.png" in str(err.value)


def test_cityscapes_image_without_instances(cityscapes: Path) -> None:
    missing = cityscapes / "gtFine" / "train" / "aachen" / "aachen_000000_000019_gtFine_instanceIds.png"
    missing.unlink()
    CityscapesDataset(cityscapes, "train")  # fine without instances
    with pytest.raises(DatasetError, match="instanceIds file missing"):
        CityscapesDataset(cityscapes, "train", return_instances=True)


def test_cityscapes_unknown_label_id(cityscapes: Path) -> None:
    path = cityscapes / "gtFine" / "train" / "aachen" / "aachen_000001_000019_gtFine_labelIds.png"
    ids = _cs_label_ids()
    ids[7, 11] = 40
    Image.fromarray(ids).save(path)
    ds = CityscapesDataset(cityscapes, "train")
    ds[0]  # other files are fine
    with pytest.raises(DatasetError) as err:
        ds[1]
    msg = str(err.value)
    assert str(path) in msg and "label id 40" in msg and "\n" not in msg


def test_cityscapes_rgb_label_and_size_mismatch(cityscapes: Path) -> None:
    gt = cityscapes / "gtFine" / "train" / "aachen"
    rgb = gt / "aachen_000000_000019_gtFine_labelIds.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(rgb)
    small = gt / "aachen_000001_000019_gtFine_labelIds.png"
    Image.fromarray(np.full((H, W - 1), 7, np.uint8)).save(small)
    ds = CityscapesDataset(cityscapes, "train")
    with pytest.raises(DatasetError, match="single-channel") as err:
        ds[0]
    assert str(rgb) in str(err.value)
    with pytest.raises(DatasetError, match="does not match") as err:
        ds[1]
    assert str(small) in str(err.value)


def test_transform_ignore_index_must_match(cityscapes: Path) -> None:
    with pytest.raises(ValueError, match="ignore_index"):
        CityscapesDataset(cityscapes, "train", transform=SegTransform(crop_size=(4, 4), ignore_index=0))


# ---------------------------------------------------------------- ADE20K fixture


def _ade_annotation(k: int) -> np.ndarray:
    ann = np.zeros((H, W), dtype=np.uint8)  # 0 = other
    ann[2:, :4] = 1
    ann[2:, 4:8] = 5 + k
    ann[2:, 8:] = 150
    return ann


@pytest.fixture()
def ade(tmp_path: Path) -> Path:
    root = tmp_path / "ADEChallengeData2016"
    for split, prefix in (("training", "ADE_train"), ("validation", "ADE_val")):
        (root / "images" / split).mkdir(parents=True)
        (root / "annotations" / split).mkdir(parents=True)
        for k in range(2):
            name = f"{prefix}_{k + 1:08d}"
            Image.fromarray(_image(H, W, k)).save(root / "images" / split / f"{name}.jpg", quality=95)
            Image.fromarray(_ade_annotation(k)).save(root / "annotations" / split / f"{name}.png")
    return root


def _write_object_info(root: Path) -> None:
    lines = ["Idx,Ratio,Train,Val,Stuff,Name"]
    for k in range(1, 151):
        name = {1: "wall", 2: "building;edifice", 150: "flag"}.get(k, f"thing{k};synonym{k}")
        lines.append(f'{k},0.01,{k},{k},1,"{name}"')
    (root / "objectInfo150.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_ade20k_reduce_zero_label(ade: Path) -> None:
    ds = ADE20KDataset(ade, "validation")
    assert len(ds) == 2 and ds.names == ("ADE_val_00000001", "ADE_val_00000002")
    assert ds.num_classes == 150 and ds.class_names[0] == "class_0" and ds.class_names[149] == "class_149"
    for k in range(2):
        sample = ds[k]
        assert set(sample) == {"image", "label", "name"}
        assert sample["image"].shape == (3, H, W) and sample["label"].dtype == torch.int64
        ann = _ade_annotation(k).astype(np.int64)
        expected = np.where(ann == 0, 255, ann - 1)
        np.testing.assert_array_equal(sample["label"].numpy(), expected)
    assert set(np.unique(ds[1]["label"].numpy())) == {0, 5, 149, 255}


def test_ade20k_object_info_names(ade: Path) -> None:
    _write_object_info(ade)
    ds = ADE20KDataset(ade, "training")
    assert ds.class_names[:2] == ("wall", "building") and ds.class_names[149] == "flag"
    assert ds.class_names[9] == "thing10" and len(ds.class_names) == 150


def test_ade20k_errors(ade: Path) -> None:
    with pytest.raises(ValueError, match="training, validation"):
        ADE20KDataset(ade, "test")
    ann = ade / "annotations" / "training" / "ADE_train_00000002.png"
    bad = _ade_annotation(1)
    bad[0, 0] = 151
    Image.fromarray(bad).save(ann)
    ds = ADE20KDataset(ade, "training")
    with pytest.raises(DatasetError) as err:
        ds[1]
    assert str(ann) in str(err.value) and "151" in str(err.value)
    ann.unlink()
    with pytest.raises(DatasetError, match="annotation file missing"):
        ADE20KDataset(ade, "training")
    (ade / "objectInfo150.csv").write_text("Idx,Name\n1,wall\n", encoding="utf-8")
    with pytest.raises(DatasetError, match="objectInfo150.csv.*149 class indices missing"):
        ADE20KDataset(ade, "validation")
    with pytest.raises(DatasetError, match="ADEChallengeData2016"):
        ADE20KDataset(ade.parent, "validation")


# ---------------------------------------------------------------- COCO panoptic fixture

_CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1, "supercategory": "person"},
    {"id": 3, "name": "car", "isthing": 1, "supercategory": "vehicle"},
    {"id": 184, "name": "tree-merged", "isthing": 0, "supercategory": "plant"},
]
# segment id (spanning all three RGB channels), category id, iscrowd, region
_SEGMENTS = [
    (3937500, 1, 0, (slice(0, 4), slice(0, 3))),  # person -> train id 0, instance 1
    (260, 3, 0, (slice(0, 4), slice(3, 6))),  # car -> 1, instance 2
    (70000, 1, 1, (slice(0, 4), slice(6, 9))),  # crowd person -> ignored, no instance
    (5, 184, 0, (slice(4, 8), slice(0, 9))),  # tree (stuff) -> 2, no instance
    (65536, 3, 0, (slice(0, 2), slice(9, 12))),  # car -> 1, instance 3
]  # columns 9..11, rows 2..7: void (0)


def _panoptic_png(segments: list[tuple[int, int, int, tuple[slice, slice]]]) -> np.ndarray:
    ids = np.zeros((H, W), dtype=np.int64)
    for sid, _, _, region in segments:
        ids[region] = sid
    return np.stack([ids % 256, ids // 256 % 256, ids // 65536], axis=-1).astype(np.uint8)


def _write_coco(root: Path, segments: list[Any], categories: list[Any] | None = None) -> tuple[Path, Path, Path]:
    img_dir, png_dir = root / "val2017", root / "panoptic_val2017"
    img_dir.mkdir(parents=True, exist_ok=True)
    png_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for k, image_id in enumerate((139, 285)):
        stem = f"{image_id:012d}"
        Image.fromarray(_image(H, W, k)).save(img_dir / f"{stem}.jpg", quality=95)
        Image.fromarray(_panoptic_png(_SEGMENTS)).save(png_dir / f"{stem}.png")
        images.append({"id": image_id, "file_name": f"{stem}.jpg", "height": H, "width": W})
        infos = [
            {"id": sid, "category_id": cid, "iscrowd": crowd, "area": 12, "bbox": [0, 0, 1, 1]}
            for sid, cid, crowd, _ in segments
        ]
        annotations.append({"image_id": image_id, "file_name": f"{stem}.png", "segments_info": infos})
    data = {"images": images, "annotations": annotations, "categories": categories or _CATEGORIES}
    js = root / "panoptic_val2017.json"
    js.write_text(json.dumps(data), encoding="utf-8")
    return js, img_dir, png_dir


def test_coco_panoptic_semantic_and_instances(tmp_path: Path) -> None:
    js, img_dir, png_dir = _write_coco(tmp_path, _SEGMENTS)
    ds = COCOPanopticDataset(js, img_dir, png_dir, return_instances=True)
    assert len(ds) == 2 and ds.names == ("000000000139", "000000000285")
    assert ds.num_classes == 3 and ds.class_names == ("person", "car", "tree-merged")
    assert ds.thing_train_ids == frozenset({0, 1})
    sample = ds[0]
    assert set(sample) == {"image", "label", "name", "instances"}
    label, inst = sample["label"].numpy(), sample["instances"].numpy()
    expected = np.full((H, W), 255)
    expected[0:4, 0:3] = 0
    expected[0:4, 3:6] = 1
    expected[4:8, 0:9] = 2
    expected[0:2, 9:12] = 1
    np.testing.assert_array_equal(label, expected)
    expected_inst = np.zeros((H, W))
    expected_inst[0:4, 0:3] = 1
    expected_inst[0:4, 3:6] = 2
    expected_inst[0:2, 9:12] = 3
    np.testing.assert_array_equal(inst, expected_inst)
    assert ds.semantic_for_instance(1) == {1: 0, 2: 1, 3: 1}
    batch = next(iter(DataLoader(ds, batch_size=2, num_workers=0)))
    assert batch["image"].shape == (2, 3, H, W) and batch["instances"].shape == (2, H, W)


def test_coco_panoptic_unlisted_segment_id(tmp_path: Path) -> None:
    js, img_dir, png_dir = _write_coco(tmp_path, _SEGMENTS[:-1])  # 65536 in the PNG only
    ds = COCOPanopticDataset(js, img_dir, png_dir)
    with pytest.raises(DatasetError) as err:
        ds[0]
    assert str(png_dir / "000000000139.png") in str(err.value) and "65536" in str(err.value)


def test_coco_panoptic_unknown_category_and_missing_files(tmp_path: Path) -> None:
    segments = [*_SEGMENTS[:-1], (65536, 99, 0, _SEGMENTS[-1][3])]
    js, img_dir, png_dir = _write_coco(tmp_path, segments)
    with pytest.raises(DatasetError, match="unknown category id 99") as err:
        COCOPanopticDataset(js, img_dir, png_dir)
    assert str(js) in str(err.value)
    js, img_dir, png_dir = _write_coco(tmp_path, _SEGMENTS)
    (img_dir / "000000000285.jpg").unlink()
    with pytest.raises(DatasetError, match="000000000285.jpg: image file missing"):
        COCOPanopticDataset(js, img_dir, png_dir)
    Image.fromarray(_image(H, W, 0)).save(img_dir / "000000000285.jpg")
    (png_dir / "000000000139.png").unlink()
    with pytest.raises(DatasetError, match="000000000139.png: panoptic PNG file missing"):
        COCOPanopticDataset(js, img_dir, png_dir)
    with pytest.raises(DatasetError, match="JSON not found"):
        COCOPanopticDataset(tmp_path / "nope.json", img_dir, png_dir)
