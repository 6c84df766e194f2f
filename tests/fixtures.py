"""Small datasets written in real on-disk formats, and tiny trained networks, for tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

# Cityscapes label ids used by the toy scenes: road, sidewalk, building, vegetation, sky, car, and void 0.
_IDS = (7, 8, 11, 21, 23, 26)
_COLORS = {
    7: (128, 64, 128),
    8: (200, 180, 200),
    11: (90, 90, 90),
    21: (60, 140, 40),
    23: (100, 150, 220),
    26: (20, 20, 160),
}


def toy_scene(rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A crude street: sky / building / vegetation bands, road and sidewalk, a few cars; noisy colours."""
    h, w = size
    label = np.full((h, w), 23, dtype=np.uint8)
    horizon = int(h * rng.uniform(0.35, 0.5))
    label[int(h * 0.15) : horizon, : w // 2] = 11
    label[int(h * 0.2) : horizon, w // 2 :] = 21
    label[horizon:] = 7
    side = int(w * rng.uniform(0.1, 0.25))
    label[horizon:, :side] = 8
    label[horizon:, w - side :] = 8
    for _ in range(int(rng.integers(1, 4))):
        ch, cw = int(rng.integers(h // 10, h // 5)), int(rng.integers(w // 10, w // 5))
        y, x = int(rng.integers(horizon, h - ch)), int(rng.integers(0, w - cw))
        label[y : y + ch, x : x + cw] = 26
    label[0, :] = 0  # a void row, as Cityscapes has ego-vehicle / border pixels
    image = np.zeros((h, w, 3), dtype=np.float64)
    for i, color in _COLORS.items():
        image[label == i] = color
    image += rng.normal(0, 12, size=image.shape)
    return np.clip(image, 0, 255).astype(np.uint8), label


def write_cityscapes(root: Path, *, train: int, val: int, size: tuple[int, int] = (64, 128), seed: int = 0) -> Path:
    """Write ``train`` + ``val`` toy frames in the Cityscapes layout under ``root``."""
    for split, n in (("train", train), ("val", val)):
        for i in range(n):
            rng = np.random.default_rng([seed, 0 if split == "train" else 1, i])
            image, label = toy_scene(rng, size)
            city = "toyville" if i % 2 == 0 else "mocktown"
            prefix = f"{city}_{i:06d}_000019"
            img_dir = root / "leftImg8bit" / split / city
            gt_dir = root / "gtFine" / split / city
            img_dir.mkdir(parents=True, exist_ok=True)
            gt_dir.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(img_dir / f"{prefix}_leftImg8bit.png")
            Image.fromarray(label).save(gt_dir / f"{prefix}_gtFine_labelIds.png")
            instances = label.astype(np.int32)
            instances[label == 26] = 26000
            Image.fromarray(instances.astype(np.uint16)).save(
                gt_dir / f"{prefix}_gtFine_instanceIds.png"
            )  # 16-bit, as Cityscapes
    return root


def randomize_checkpoint(path: Path, seed: int = 0) -> Path:
    """Give a retraining checkpoint's network non-trivial random weights, in place.

    A network trained for a step or two predicts one class everywhere, which would make
    "same labels" comparisons vacuous; after this its label maps hold many classes.
    """
    import torch

    from hyctas_core.retrain import load_model
    from tests.core.helpers import randomize

    net, _, _ = load_model(path)
    randomize(net, seed)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["model"] = net.state_dict()
    torch.save(ckpt, path)
    return path


def panoptic_checkpoint(semantic: Path, out: Path, seed: int = 1) -> Path:
    """A panoptic retraining checkpoint (random weights) of the same arch as ``semantic``."""
    import dataclasses

    import torch

    from hyctas_core.network import HyCTASNet
    from hyctas_core.retrain import read_checkpoint
    from tests.core.helpers import randomize

    cfg, arch, _ = read_checkpoint(semantic)
    cfg = dataclasses.replace(cfg, task="panoptic")
    net = randomize(HyCTASNet(arch, cfg.model, panoptic=True), seed)
    ckpt = torch.load(semantic, map_location="cpu", weights_only=False)
    torch.save({**ckpt, "config": cfg.to_dict(), "model": net.state_dict()}, out)
    return out


def tiny_supernet(tmp: Path, *, calib_images: int = 4, val_images: int = 2) -> Any:
    """An :class:`~hyctas_core.evaluate.EvaluatorSpec` over a freshly trained tiny supernet (F=4, 6 layers)."""
    from hyctas_core.config import ModelConfig
    from hyctas_core.data.cityscapes import CityscapesDataset
    from hyctas_core.data.transforms import SegTransform
    from hyctas_core.evaluate import EvaluatorSpec
    from hyctas_core.train import SupernetTrainConfig, SupernetTrainer

    root = write_cityscapes(tmp / "data", train=4, val=2, size=(64, 128))
    cfg = SupernetTrainConfig(
        model=ModelConfig(base_channels=4, num_layers=6, num_classes=19), epochs=1, batch_size=4, crop_size=(64, 128)
    )
    run = tmp / "supernet"
    SupernetTrainer(cfg, CityscapesDataset(root, "train", transform=SegTransform(crop_size=(64, 128))), run).fit()
    return EvaluatorSpec(
        str(run / "supernet.pt"), str(root), calib_images=calib_images, val_images=val_images, latency_seconds=0.05,
        threads=1,
    )  # fmt: skip


def tiny_retrained(tmp: Path) -> tuple[Path, Path]:
    """(checkpoint, data root): HyCTAS-S at F=4 retrained one epoch, then given random weights (non-trivial maps)."""
    from hyctas_core.config import ModelConfig
    from hyctas_core.data.cityscapes import CityscapesDataset
    from hyctas_core.data.transforms import SegTransform
    from hyctas_core.presets import get_preset
    from hyctas_core.retrain import RetrainConfig, Retrainer

    root = write_cityscapes(tmp / "data", train=4, val=2, size=(64, 128))
    cfg = RetrainConfig(
        model=ModelConfig(base_channels=4, num_layers=11), epochs=1, batch_size=2, crop_size=(64, 128), aux_weight=0
    )
    train = CityscapesDataset(root, "train", transform=SegTransform(crop_size=(64, 128)))
    Retrainer(cfg, get_preset("hyctas-s"), train, None, tmp / "run").fit()
    return randomize_checkpoint(tmp / "run" / "last.pt"), root
