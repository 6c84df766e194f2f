"""The HyCTAS search space: architectures, their constraints, encodings and sampling.

An architecture (:class:`Arch`) is 1 to 3 *branches*. Every branch starts at stride 8 (the
stem output), and each of its ``num_layers`` cells either keeps its scale (stride 1) or moves
one scale down (stride 2); a branch ends at stride 8, 16 or 32. Each cell has an op
(:data:`OP_NAMES`) and an output width multiplier (:data:`WIDTHS`) of the full width of the
scale it outputs at, ``round(scale * F * w)`` (F = base channels).

Structural rules (they define the space, as in the official code and FasterSeg):

- all branches have the same number of cells; a cell moves down at most one scale;
- a branch down-samples at most twice and never in its last cell;
- branches end at distinct scales (one branch per output resolution), so an architecture's
  output combination is a subset of {8, 16, 32};
- the last cell's width is 1 (the full width of its scale), as in the official JSON format.

The paper's four constraints (checked by :func:`validate`, messages name the rule and cell):

1. at least one path;
2. with several paths, no two of them down-sample at the same cell position;
3. no ``skip`` at a down-sampling position;
4. the training memory of the sub-network stays under a limit (an estimate, see
   :mod:`hyctas_core.memory`; never found out by running out of memory).

Interop: :meth:`Arch.from_official` / :meth:`Arch.to_official` read and write the official
JSON (``ops``, ``paths``, ``downs``, ``widths``, ``lasts``) of MarvinYu1995/HyCTAS.

One module on purpose (about 600 lines): the types, the four constraints, the encoding and the
samplers are one concept, read together; splitting them would scatter the rules they share.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

__all__ = [
    "BRANCH_PRIOR",
    "OP_NAMES",
    "SCALES",
    "WIDTHS",
    "Arch",
    "ArchError",
    "Branch",
    "Cell",
    "ArchConstraint",
    "VectorCodec",
    "num_filters",
    "sample_arch",
    "sample_largest",
    "sample_smallest",
    "validate",
]

SCALES: tuple[int, ...] = (8, 16, 32)
# Op index = the code used in the official JSON files (train/genotypes.py PRIMITIVES).
OP_NAMES: tuple[str, ...] = ("skip", "conv", "conv_downup", "conv_2x_downup", "sa")
WIDTHS: tuple[float, ...] = (4 / 12, 6 / 12, 8 / 12, 10 / 12, 1.0)
FULL_WIDTH = len(WIDTHS) - 1  # index of width 1.0
MAX_DOWNS = 2
# Paper: sub-networks with 1, 2, 3 branches are sampled with these probabilities.
BRANCH_PRIOR: tuple[float, float, float] = (0.2, 0.3, 0.5)


class ArchError(ValueError):
    """An architecture breaks a structural rule or one of the paper's constraints."""


def num_filters(scale: int, base_channels: int, width: float = 1.0) -> int:
    """Channels of a feature at ``scale`` with multiplier ``width``: ``round(scale * F * w)``.

    Python's ``round`` is round-half-even, like the NumPy rounding the official code uses.
    """
    return int(round(scale * base_channels * width))


@dataclass(frozen=True, order=True)
class Cell:
    """One cell: an op, an output width index into :data:`WIDTHS`, and a stride (1 or 2)."""

    op: str
    width: int = FULL_WIDTH
    stride: int = 1

    @property
    def width_mult(self) -> float:
        return WIDTHS[self.width]


@dataclass(frozen=True)
class Branch:
    """A path through the supernet: one cell per layer, starting at stride 8."""

    cells: tuple[Cell, ...]

    @property
    def down_positions(self) -> tuple[int, ...]:
        return tuple(i for i, c in enumerate(self.cells) if c.stride == 2)

    @property
    def in_scales(self) -> tuple[int, ...]:
        """Stride of each cell's input (8, 16 or 32)."""
        scales, s = [], 8
        for c in self.cells:
            scales.append(s)
            s *= c.stride
        return tuple(scales)

    @property
    def out_scales(self) -> tuple[int, ...]:
        return tuple(s * c.stride for s, c in zip(self.in_scales, self.cells, strict=True))

    @property
    def last_scale(self) -> int:
        return int(8 * 2 ** len(self.down_positions))


@dataclass(frozen=True)
class Arch:
    """A sub-network of the supernet: 1-3 branches of equal depth.

    Build one with :meth:`from_official`, :meth:`from_dict`, :func:`sample_arch` or
    :meth:`VectorCodec.decode`. ``Arch`` values compare by content; use :meth:`canonical`
    before comparing archs whose branch order may differ, or compare :attr:`hash`.
    """

    branches: tuple[Branch, ...]

    # -- shape ---------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return len(self.branches[0].cells) if self.branches else 0

    @property
    def num_branches(self) -> int:
        return len(self.branches)

    @property
    def last_scales(self) -> tuple[int, ...]:
        return tuple(b.last_scale for b in self.branches)

    @property
    def combination(self) -> tuple[int, ...]:
        """Sorted output scales, e.g. ``(8, 32)``: selects the aggregation head."""
        return tuple(sorted(self.last_scales))

    # -- identity ------------------------------------------------------------------------
    def canonical(self) -> Arch:
        """The same architecture with branches ordered by their end scale."""
        return Arch(tuple(sorted(self.branches, key=lambda b: (b.last_scale, b.cells))))

    @property
    def hash(self) -> str:
        """Stable content hash (16 hex chars): equal archs hash equal, whatever their order."""
        payload = json.dumps(self.canonical().to_official(), sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    # -- official JSON -------------------------------------------------------------------
    def to_official(self) -> dict[str, list[Any]]:
        """The official JSON structure (``ops``, ``paths``, ``downs``, ``widths``, ``lasts``)."""
        out: dict[str, list[Any]] = {"ops": [], "paths": [], "downs": [], "widths": [], "lasts": []}
        for b in self.branches:
            out["ops"].append([OP_NAMES.index(c.op) for c in b.cells])
            out["paths"].append([SCALES.index(s) for s in b.in_scales])
            out["downs"].append([1 if c.stride == 2 else 0 for c in b.cells])
            out["widths"].append([c.width_mult for c in b.cells[:-1]])
            out["lasts"].append(SCALES.index(b.last_scale))
        return out

    @classmethod
    def from_official(cls, data: Mapping[str, Any]) -> Arch:
        """Parse the official JSON format; raises :class:`ArchError` naming the bad field."""
        missing = [k for k in ("ops", "downs", "widths", "lasts") if k not in data]
        if missing:
            raise ArchError(f"official arch JSON lacks key(s) {missing}")
        ops, downs, widths, lasts = data["ops"], data["downs"], data["widths"], data["lasts"]
        paths = data.get("paths")
        if not isinstance(lasts, list) or not all(isinstance(x, list) for x in (ops, downs, widths)):
            raise ArchError("'ops', 'downs', 'widths' must be lists of per-branch lists and 'lasts' a list")
        n = len(lasts)
        for key, val in (("ops", ops), ("downs", downs), ("widths", widths)):
            if len(val) != n:
                raise ArchError(f"'{key}' has {len(val)} branches but 'lasts' has {n}")
        branches = []
        for b in range(n):
            b_ops, b_downs, b_widths = ops[b], downs[b], widths[b]
            if len(b_downs) != len(b_ops):
                raise ArchError(f"branch {b}: 'downs' has {len(b_downs)} cells, 'ops' {len(b_ops)}")
            if len(b_widths) != len(b_ops) - 1:
                raise ArchError(
                    f"branch {b}: 'widths' must have {len(b_ops) - 1} entries "
                    f"(cells - 1; the last cell has width 1), got {len(b_widths)}"
                )
            cells = []
            for i, (op, down) in enumerate(zip(b_ops, b_downs, strict=True)):
                if not isinstance(op, int) or not 0 <= op < len(OP_NAMES):
                    raise ArchError(f"branch {b} cell {i}: op code {op!r} not in 0..{len(OP_NAMES) - 1}")
                if down not in (0, 1):
                    raise ArchError(f"branch {b} cell {i}: down flag {down!r} must be 0 or 1")
                w = _width_index(b_widths[i], b, i) if i < len(b_ops) - 1 else FULL_WIDTH
                cells.append(Cell(OP_NAMES[op], w, 2 if down else 1))
            branch = Branch(tuple(cells))
            if paths is not None:
                want = [SCALES.index(s) for s in branch.in_scales]
                if list(paths[b]) != want:
                    raise ArchError(f"branch {b}: 'paths' {paths[b]} disagrees with 'downs' (expected {want})")
            if lasts[b] not in (0, 1, 2) or SCALES[lasts[b]] != branch.last_scale:
                raise ArchError(
                    f"branch {b}: 'lasts' is {lasts[b]!r} but its downs end at scale index "
                    f"{SCALES.index(branch.last_scale) if branch.last_scale in SCALES else '?'}"
                )
            branches.append(branch)
        return cls(tuple(branches))

    @classmethod
    def from_json(cls, text: str) -> Arch:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ArchError(f"not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ArchError("arch JSON must be an object with keys ops, paths, downs, widths, lasts")
        return cls.from_official(data)

    def to_json(self) -> str:
        return json.dumps(self.to_official())

    # -- display -------------------------------------------------------------------------
    def describe(self) -> str:
        """One line per branch: ``end 32: Z2 Z↓ | Z C↓ | Z A C ...`` (op letters by scale)."""
        letters = {"skip": "-", "conv": "C", "conv_downup": "Z", "conv_2x_downup": "Z2", "sa": "A"}
        lines = []
        for b in self.branches:
            parts = [letters[c.op] + ("↓" if c.stride == 2 else "") for c in b.cells]
            lines.append(f"end 1/{b.last_scale}: " + " ".join(parts))
        return "\n".join(lines)


def _width_index(value: Any, b: int, i: int) -> int:
    for k, w in enumerate(WIDTHS):
        if isinstance(value, int | float) and abs(float(value) - w) < 1e-4:
            return k
    allowed = ", ".join(f"{w:.4f}" for w in WIDTHS)
    raise ArchError(f"branch {b} cell {i}: width {value!r} not in {{{allowed}}}")


# ---------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------
class ArchConstraint(Protocol):
    """An extra rule on whole architectures, checked by :func:`validate` after the structural ones.

    Constraint 4 is one: :class:`hyctas_core.memory.MemoryBudget` (the estimate needs the
    network plan, which builds on this module, so the rule is passed in rather than imported).
    """

    def check(self, arch: Arch) -> None:
        """Raise :class:`ArchError` with the reason when ``arch`` breaks the rule."""


def validate(arch: Arch, *, num_layers: int | None = None, memory: ArchConstraint | None = None) -> None:
    """Check the structural rules and the paper's constraints.

    Args:
        arch: the architecture.
        num_layers: if given, the depth every branch must have (the supernet's).
        memory: if given, check constraint 4 against this budget
            (:class:`hyctas_core.memory.MemoryBudget`).

    Raises:
        ArchError: the first broken rule, naming the constraint, branch and cell.
    """
    # Constraint 1.
    if not arch.branches:
        raise ArchError("constraint 1 (at least one path): the architecture has no branch")
    if len(arch.branches) > len(SCALES):
        raise ArchError(f"at most {len(SCALES)} branches, got {len(arch.branches)}")
    depth = len(arch.branches[0].cells)
    if depth < 1:
        raise ArchError("a branch needs at least one cell")
    if num_layers is not None and depth != num_layers:
        raise ArchError(f"branches have {depth} cells but the space has num_layers={num_layers}")
    for b, br in enumerate(arch.branches):
        if len(br.cells) != depth:
            raise ArchError(f"branch {b} has {len(br.cells)} cells, branch 0 has {depth}: depths must match")
        for i, c in enumerate(br.cells):
            if c.op not in OP_NAMES:
                raise ArchError(f"branch {b} cell {i}: unknown op {c.op!r}; allowed: {', '.join(OP_NAMES)}")
            if not 0 <= c.width < len(WIDTHS):
                raise ArchError(f"branch {b} cell {i}: width index {c.width} not in 0..{len(WIDTHS) - 1}")
            if c.stride not in (1, 2):
                raise ArchError(f"branch {b} cell {i}: stride {c.stride} must be 1 or 2")
            # Constraint 3.
            if c.stride == 2 and c.op == "skip":
                raise ArchError(
                    f"constraint 3 (no skip at a down-sampling position): branch {b} cell {i} is skip with stride 2"
                )
        if len(br.down_positions) > MAX_DOWNS:
            raise ArchError(
                f"branch {b} down-samples {len(br.down_positions)} times (cells {list(br.down_positions)});"
                f" at most {MAX_DOWNS} (stride 8 -> 32)"
            )
        if br.cells[-1].stride == 2:
            raise ArchError(f"branch {b} cell {depth - 1}: the last cell cannot down-sample")
        if br.cells[-1].width != FULL_WIDTH:
            raise ArchError(
                f"branch {b} cell {depth - 1}: the last cell's width must be 1 (got {br.cells[-1].width_mult:.4f})"
            )
    ends = [br.last_scale for br in arch.branches]
    if len(set(ends)) != len(ends):
        raise ArchError(f"branches must end at distinct scales, got {ends}")
    # Constraint 2.
    seen: dict[int, int] = {}
    for b, br in enumerate(arch.branches):
        for pos in br.down_positions:
            if pos in seen:
                raise ArchError(
                    f"constraint 2 (distinct down-sampling positions): branches {seen[pos]} and {b} "
                    f"both down-sample at cell {pos}"
                )
            seen[pos] = b
    # Constraint 4 (or any other rule passed in).
    if memory is not None:
        memory.check(arch)


def is_valid(arch: Arch, **kwargs: Any) -> bool:
    try:
        validate(arch, **kwargs)
    except ArchError:
        return False
    return True


# ---------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------
def _sample_downs(rng: np.random.Generator, num_layers: int, ends: Sequence[int]) -> dict[int, tuple[int, ...]] | None:
    """Down positions per end scale, uniform and distinct across branches (None: retry)."""
    taken: set[int] = set()
    out: dict[int, tuple[int, ...]] = {}
    for end in ends:
        k = SCALES.index(end)
        if k > num_layers - 1:
            return None
        pos = tuple(sorted(int(p) for p in rng.choice(num_layers - 1, size=k, replace=False)))
        if taken.intersection(pos):
            return None
        taken.update(pos)
        out[end] = pos
    return out


_TRIES_PER_COUNT = 50


def sample_arch(
    rng: np.random.Generator,
    num_layers: int,
    *,
    num_branches: int | None = None,
    branch_prior: Sequence[float] = BRANCH_PRIOR,
    memory: ArchConstraint | None = None,
    max_tries: int = 1000,
) -> Arch:
    """Sample a valid architecture.

    The branch count follows ``branch_prior`` (P(1, 2, 3) = 0.2, 0.3, 0.5 as in the paper)
    unless ``num_branches`` fixes it; end scales, down-sampling positions, ops and widths are
    uniform among valid choices (rejection sampling on constraints 2 and 4, at a fixed
    branch count).

    Raises:
        ArchError: no valid architecture found in ``max_tries`` draws (e.g. a memory limit
            that nothing fits).
    """
    if num_branches is not None and num_branches not in (1, 2, 3):
        raise ArchError(f"num_branches must be 1, 2 or 3, got {num_branches}")
    prior = np.asarray(branch_prior, dtype=float)
    if prior.shape != (3,) or (prior < 0).any() or prior.sum() <= 0:
        raise ArchError(f"branch_prior must be 3 non-negative numbers, got {list(branch_prior)}")
    prior = prior / prior.sum()
    k = 0
    for attempt in range(max_tries):
        # Keep the branch count across rejections so that they do not bias the prior (3
        # branches collide on down positions more often); redraw it only now and then, in
        # case a memory budget rules a count out.
        if attempt % _TRIES_PER_COUNT == 0:
            k = num_branches if num_branches is not None else int(rng.choice(3, p=prior)) + 1
        combos = list(itertools.combinations(SCALES, k))
        ends = combos[int(rng.integers(len(combos)))]
        downs = _sample_downs(rng, num_layers, ends)
        if downs is None:
            continue
        branches = []
        for end in ends:
            cells = []
            for i in range(num_layers):
                stride = 2 if i in downs[end] else 1
                n_ops = len(OP_NAMES) if stride == 1 else len(OP_NAMES) - 1  # constraint 3
                op = OP_NAMES[int(rng.integers(n_ops)) + (0 if stride == 1 else 1)]
                width = FULL_WIDTH if i == num_layers - 1 else int(rng.integers(len(WIDTHS)))
                cells.append(Cell(op, width, stride))
            branches.append(Branch(tuple(cells)))
        arch = Arch(tuple(branches))
        if memory is None or is_valid(arch, memory=memory):
            return arch
    raise ArchError(f"no valid architecture found in {max_tries} draws (memory budget too small?)")


def sample_largest(rng: np.random.Generator, num_layers: int, *, max_tries: int = 1000) -> Arch:
    """A largest sub-network, for the sandwich rule: 3 branches, every cell at full width, no skip.

    The space has no single largest network (ops are categorical, down-sampling positions
    are free), so the structure and the ops are drawn uniformly: every elastic dimension
    (branches, width) at its maximum, every cell computing something.

    Raises:
        ArchError: ``num_layers`` is too small for three branches with distinct down positions.
    """
    for _ in range(max_tries):
        downs = _sample_downs(rng, num_layers, SCALES)
        if downs is None:
            continue
        branches = []
        for end in SCALES:
            cells = [
                Cell(OP_NAMES[1 + int(rng.integers(len(OP_NAMES) - 1))], FULL_WIDTH, 2 if i in downs[end] else 1)
                for i in range(num_layers)
            ]
            branches.append(Branch(tuple(cells)))
        return Arch(tuple(branches))
    raise ArchError(f"no 3-branch architecture with {num_layers} layers found in {max_tries} draws")


def sample_smallest(rng: np.random.Generator, num_layers: int) -> Arch:
    """A smallest sub-network, for the sandwich rule: 1 branch, narrowest widths, skip wherever allowed.

    The end scale and the down-sampling positions are drawn uniformly; a down-sampling cell
    (where skip is not allowed) gets a uniform non-skip op. The last cell keeps full width,
    as every architecture does.
    """
    end = SCALES[int(rng.integers(len(SCALES)))]
    downs = _sample_downs(rng, num_layers, (end,))
    if downs is None:  # too few layers to move down: stay at stride 8
        end, downs = 8, {8: ()}
    cells = []
    for i in range(num_layers):
        width = FULL_WIDTH if i == num_layers - 1 else 0
        if i in downs[end]:
            cells.append(Cell(OP_NAMES[1 + int(rng.integers(len(OP_NAMES) - 1))], width, 2))
        else:
            cells.append(Cell("skip", width, 1))
    return Arch((Branch(tuple(cells)),))


# ---------------------------------------------------------------------------------------
# Integer encoding for NSGA-II
# ---------------------------------------------------------------------------------------
class VectorCodec:
    """Fixed-length integer encoding of archs with ``num_layers`` cells.

    Layout, one block per end scale 8, 16, 32 (the *node gates*: which outputs exist)::

        [active, <down positions>, op_0 .. op_{L-1}, width_0 .. width_{L-2}]

    with 0 down genes for scale 8, 1 for 16 and 2 (in increasing order) for 32. Ops are
    indices into :data:`OP_NAMES`, widths into :data:`WIDTHS`; the last width is fixed to 1.
    Genes of an inactive block are 0. :meth:`encode` and :meth:`decode` are inverse
    bijections between valid archs and canonical vectors; :meth:`repair` maps any vector
    inside the bounds to a canonical vector of a valid arch.
    """

    def __init__(self, num_layers: int) -> None:
        if num_layers < 3:
            raise ArchError(f"num_layers must be >= 3 to reach stride 32, got {num_layers}")
        self.num_layers = num_layers
        self._blocks: list[tuple[int, int]] = []  # (start, n_downs)
        lo: list[int] = []
        hi: list[int] = []
        for k, _ in enumerate(SCALES):
            self._blocks.append((len(lo), k))
            lo += [0] + [0] * k + [0] * num_layers + [0] * (num_layers - 1)
            hi += [1] + [num_layers - 2] * k + [len(OP_NAMES) - 1] * num_layers + [len(WIDTHS) - 1] * (num_layers - 1)
        self.lower = np.asarray(lo, dtype=np.int64)
        self.upper = np.asarray(hi, dtype=np.int64)

    @property
    def size(self) -> int:
        return int(self.lower.size)

    def encode(self, arch: Arch) -> np.ndarray:
        validate(arch, num_layers=self.num_layers)
        x = np.zeros(self.size, dtype=np.int64)
        by_end = {b.last_scale: b for b in arch.branches}
        L = self.num_layers
        for (start, k), scale in zip(self._blocks, SCALES, strict=True):
            br = by_end.get(scale)
            if br is None:
                continue
            x[start] = 1
            x[start + 1 : start + 1 + k] = br.down_positions
            o = start + 1 + k
            x[o : o + L] = [OP_NAMES.index(c.op) for c in br.cells]
            x[o + L : o + 2 * L - 1] = [c.width for c in br.cells[:-1]]
        return x

    def decode(self, x: Sequence[int] | np.ndarray) -> Arch:
        """Inverse of :meth:`encode`; raises :class:`ArchError` on a non-canonical vector."""
        v = np.asarray(x).astype(np.int64)
        if v.shape != (self.size,):
            raise ArchError(f"vector must have {self.size} genes, got shape {v.shape}")
        if (v < self.lower).any() or (v > self.upper).any():
            bad = int(np.flatnonzero((v < self.lower) | (v > self.upper))[0])
            raise ArchError(f"gene {bad} = {v[bad]} outside [{self.lower[bad]}, {self.upper[bad]}]")
        L = self.num_layers
        branches = []
        for (start, k), scale in zip(self._blocks, SCALES, strict=True):
            end = start + 1 + k + 2 * L - 1
            if v[start] == 0:
                if v[start:end].any():
                    raise ArchError(f"block for end scale {scale} is inactive but has non-zero genes")
                continue
            downs = [int(d) for d in v[start + 1 : start + 1 + k]]
            if downs != sorted(set(downs)):
                raise ArchError(f"branch ending at {scale}: down positions {downs} must increase strictly")
            o = start + 1 + k
            cells = tuple(
                Cell(
                    OP_NAMES[int(v[o + i])],
                    int(v[o + L + i]) if i < L - 1 else FULL_WIDTH,
                    2 if i in downs else 1,
                )
                for i in range(L)
            )
            branches.append(Branch(cells))
        arch = Arch(tuple(branches))
        validate(arch, num_layers=L)
        return arch

    def repair(
        self, x: Sequence[int] | np.ndarray, rng: np.random.Generator, *, num_branches: int | None = None
    ) -> np.ndarray:
        """Closest-effort canonical vector of a valid arch (used on NSGA-II offspring).

        Clips to bounds; makes the number of active blocks (outputs) ``num_branches`` if given,
        else at least one (deactivating random extras, activating random blocks with random
        genes); zeroes inactive blocks; sorts and de-duplicates down positions (re-drawing
        collisions across branches) and replaces ``skip`` at down-sampling cells by a random
        non-skip op. A valid canonical vector with the right branch count is left unchanged.
        """
        if num_branches is not None and num_branches not in (1, 2, 3):
            raise ArchError(f"num_branches must be 1, 2 or 3, got {num_branches}")
        v = np.clip(np.asarray(x).astype(np.int64), self.lower, self.upper)
        L = self.num_layers
        active = [int(start) for start, _ in self._blocks if v[start] == 1]
        inactive = [int(start) for start, _ in self._blocks if v[start] != 1]
        want = num_branches if num_branches is not None else max(1, len(active))
        while len(active) > want:
            v[active.pop(int(rng.integers(len(active))))] = 0
        while len(active) < want:
            start = inactive.pop(int(rng.integers(len(inactive))))
            end = start + 1 + next(k for s, k in self._blocks if s == start) + 2 * L - 1
            v[start:end] = rng.integers(self.lower[start:end], self.upper[start:end] + 1)
            v[start] = 1
            active.append(start)
        taken: set[int] = set()
        for start, k in self._blocks:
            end = start + 1 + k + 2 * L - 1
            if v[start] == 0:
                v[start:end] = 0
                continue
            downs = sorted(set(int(d) for d in v[start + 1 : start + 1 + k]))
            free = [p for p in range(L - 1) if p not in taken and p not in downs]
            downs = [d for d in downs if d not in taken]
            while len(downs) < k:
                if not free:
                    raise ArchError(f"num_layers={L} too small for distinct down positions")
                p = free.pop(int(rng.integers(len(free))))
                downs.append(p)
            downs.sort()
            taken.update(downs)
            v[start + 1 : start + 1 + k] = downs
            o = start + 1 + k
            for d in downs:
                if v[o + d] == 0:
                    v[o + d] = 1 + int(rng.integers(len(OP_NAMES) - 1))
        return v


def archs_equal(a: Arch, b: Arch) -> bool:
    return a.canonical() == b.canonical()


def unique(archs: Iterable[Arch]) -> list[Arch]:
    """Archs with duplicates (by canonical hash) removed, first occurrence kept."""
    seen: set[str] = set()
    out = []
    for a in archs:
        if a.hash not in seen:
            seen.add(a.hash)
            out.append(a)
    return out
