"""Pareto plot of a search (after the paper's Figure 3): every evaluated sub-network,
coloured by branch count, and the final non-dominated front as a step line."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_pareto"]

_COLORS = {1: "#1f77b4", 2: "#ff7f0e", 3: "#2ca02c"}
_LABELS = {"latency_ms": "latency (ms)", "gmacs": "GMACs", "params_m": "params (M)"}


def plot_pareto(
    individuals: Sequence[dict[str, Any]],
    front_hashes: Sequence[str],
    cost_key: str,
    path: Path,
    *,
    title: str = "",
) -> Path:
    """Write the scatter + front PNG to ``path``.

    Args:
        individuals: dicts with ``arch_hash``, ``num_branches`` and ``objectives`` (``miou`` and ``cost_key``).
        front_hashes: the front, in increasing cost.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    seen: dict[str, dict[str, Any]] = {}
    for ind in individuals:
        seen.setdefault(ind["arch_hash"], ind)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for k in (1, 2, 3):
        pts = [i for i in seen.values() if i["num_branches"] == k]
        if pts:
            ax.scatter(
                [p["objectives"][cost_key] for p in pts],
                [100 * p["objectives"]["miou"] for p in pts],
                s=14,
                alpha=0.55,
                color=_COLORS[k],
                label=f"{k} branch{'es' if k > 1 else ''} ({len(pts)})",
            )
    front = [seen[h] for h in front_hashes if h in seen]
    if front:
        xs = [p["objectives"][cost_key] for p in front]
        ys = [100 * p["objectives"]["miou"] for p in front]
        ax.step(xs, ys, where="post", color="black", linewidth=1.5, label=f"Pareto front ({len(front)})")
        ax.scatter(xs, ys, s=28, facecolors="none", edgecolors="black")
    ax.set_xlabel(_LABELS.get(cost_key, cost_key))
    ax.set_ylabel("mIoU (%)")
    ax.set_title(title or "evaluated sub-networks")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
