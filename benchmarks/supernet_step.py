"""One training step through the supernet vs the same arch as a plain extracted network.

Weight slicing and per-step arch selection should cost little: reports the time ratio
(supernet / extracted, median over steps and archs). Target: <= 1.2. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F

from hyctas_core.config import ModelConfig
from hyctas_core.search_space import sample_arch
from hyctas_core.supernet import Supernet


def _step_ms(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, arch: object | None) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        out = model(x, arch) if arch is not None else model(x)
        loss = F.cross_entropy(out["out"], y, ignore_index=255) + 0.2 * F.cross_entropy(out["aux"], y, ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i:  # first step warms up
            times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archs", type=int, default=6)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--crop", default="128x256")
    parser.add_argument("--base-channels", type=int, default=8)
    parser.add_argument("--num-layers", type=int, default=12)
    args = parser.parse_args(argv)
    h, w = (int(v) for v in args.crop.split("x"))
    torch.manual_seed(0)
    supernet = Supernet(ModelConfig(base_channels=args.base_channels, num_layers=args.num_layers)).train()
    rng = np.random.default_rng(0)
    x = torch.randn(args.batch, 3, h, w)
    y = torch.randint(0, 19, (args.batch, h, w))
    rows = []
    for _ in range(args.archs):
        arch = sample_arch(rng, args.num_layers)
        sup = _step_ms(supernet, x, y, args.steps, arch)
        plain = _step_ms(supernet.extract(arch, aux=True).train(), x, y, args.steps, None)
        rows.append(
            {
                "branches": arch.num_branches,
                "supernet_ms": round(sup, 1),
                "extracted_ms": round(plain, 1),
                "ratio": round(sup / plain, 3),
            }
        )
    report = {
        "benchmark": "supernet_step",
        "threads": torch.get_num_threads(),
        "batch": args.batch,
        "crop": [h, w],
        "base_channels": args.base_channels,
        "num_layers": args.num_layers,
        "median_ratio": statistics.median(r["ratio"] for r in rows),
        "target_ratio": 1.2,
        "archs": rows,
    }
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
