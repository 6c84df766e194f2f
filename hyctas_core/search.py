"""Multi-objective architecture search: NSGA-II (pymoo) driven by ask / tell.

``NASProblem`` minimises ``F = [-miou, cost]`` where cost is latency (ms), GMACs or params
(M); there are no pymoo constraints (``G``) because every offspring is *repaired* into a
valid architecture before it is evaluated (:meth:`VectorCodec.repair`: one active output
at least, distinct down-sampling positions, no skip at a down-sampling cell, a fixed branch
count when the search is per branch count). Duplicates inside a generation are eliminated
by pymoo; an arch seen earlier in the search is answered from the cache, never evaluated
twice.

``SearchLoop`` keeps the books: the pymoo algorithm (with its RNG), the archive of every
evaluated arch, and the sub-search phase when the search runs one NSGA-II per branch count
as the paper does. :meth:`SearchLoop.state` / :meth:`SearchLoop.from_state` serialise all of
it, so a search persisted after every generation resumes exactly.
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import numpy as np
from pymoo.algorithms.moo.nsga2 import NSGA2
from pymoo.core.evaluator import Evaluator
from pymoo.core.mutation import Mutation
from pymoo.core.problem import Problem
from pymoo.core.repair import Repair
from pymoo.core.sampling import Sampling
from pymoo.indicators.hv import HV
from pymoo.operators.crossover.ux import UniformCrossover
from pymoo.problems.static import StaticProblem
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from hyctas_core.configbase import ConfigBase
from hyctas_core.search_space import BRANCH_PRIOR, Arch, VectorCodec, sample_arch

__all__ = [
    "MAX_GENERATIONS",
    "MAX_POPULATION",
    "MIN_POPULATION",
    "OBJECTIVES",
    "Objective",
    "NASProblem",
    "SearchConfig",
    "SearchLoop",
    "hypervolume",
    "knee_index",
    "non_dominated",
]

# objective name -> key of the evaluation result holding the cost to minimise
# The bounds of a search's size, here once: the REST schema and the service's settings use them.
MIN_POPULATION, MAX_POPULATION = 2, 10_000
MAX_GENERATIONS = 10_000

Objective = Literal["latency", "flops", "params"]
# The cost each objective minimises beside mIoU (a key of every evaluation's objectives).
OBJECTIVES: dict[Objective, str] = {"latency": "latency_ms", "flops": "gmacs", "params": "params_m"}


@dataclass(frozen=True)
class SearchConfig(ConfigBase):
    """An NSGA-II search (paper: population 40, 20 generations, crossover 0.9, mutation 0.02)."""

    config_name: ClassVar[str] = "search config"

    objective: Objective = "latency"
    pop_size: int = 40
    generations: int = 20
    crossover_prob: float = 0.9
    mutation_prob: float = 0.02  # per gene
    # None: one search over all branch counts (sampled with the prior); e.g. (1, 2, 3):
    # one NSGA-II per branch count, run one after the other in the same job.
    branches: tuple[int, ...] | None = None
    seed: int = 0
    num_layers: int = 20

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise ValueError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if not MIN_POPULATION <= self.pop_size <= MAX_POPULATION:
            raise ValueError(f"pop_size must be in {MIN_POPULATION}..{MAX_POPULATION}, got {self.pop_size}")
        if not 1 <= self.generations <= MAX_GENERATIONS:
            raise ValueError(f"generations must be in 1..{MAX_GENERATIONS}, got {self.generations}")
        if not 0 <= self.crossover_prob <= 1 or not 0 <= self.mutation_prob <= 1:
            raise ValueError("crossover_prob and mutation_prob must be in [0, 1]")
        if self.branches is not None and (not self.branches or any(b not in (1, 2, 3) for b in self.branches)):
            raise ValueError(f"branches must be a non-empty subset of 1, 2, 3; got {self.branches}")
        if self.branches is not None and len(set(self.branches)) != len(self.branches):
            raise ValueError(f"branches must not repeat, got {self.branches}")

    @property
    def cost_key(self) -> str:
        return OBJECTIVES[self.objective]

    @property
    def phases(self) -> list[int | None]:
        """Branch count of each sub-search (None: all counts in one search)."""
        return list(self.branches) if self.branches is not None else [None]

    @property
    def total_generations(self) -> int:
        return self.generations * len(self.phases)


class NASProblem(Problem):
    """Integer-encoded architectures; minimise ``F = [-miou, cost]``; no constraints (repair)."""

    def __init__(self, codec: VectorCodec) -> None:
        super().__init__(n_var=codec.size, n_obj=2, xl=codec.lower, xu=codec.upper, vtype=int)


class _ArchSampling(Sampling):
    """Initial population from the search-space sampler (branch prior, or a fixed count)."""

    def __init__(self, codec: VectorCodec, num_branches: int | None) -> None:
        super().__init__()
        self.codec, self.num_branches = codec, num_branches

    def _do(
        self, problem: Problem, n_samples: int, random_state: np.random.Generator | None = None, **kwargs: Any
    ) -> np.ndarray:
        assert random_state is not None
        archs = [
            sample_arch(random_state, self.codec.num_layers, num_branches=self.num_branches, branch_prior=BRANCH_PRIOR)
            for _ in range(n_samples)
        ]
        return np.stack([self.codec.encode(a) for a in archs])


class _ArchRepair(Repair):
    def __init__(self, codec: VectorCodec, num_branches: int | None) -> None:
        super().__init__()
        self.codec, self.num_branches = codec, num_branches

    def _do(
        self, problem: Problem, X: np.ndarray, random_state: np.random.Generator | None = None, **kwargs: Any
    ) -> np.ndarray:
        rng = random_state if random_state is not None else np.random.default_rng(0)
        return np.stack([self.codec.repair(x, rng, num_branches=self.num_branches) for x in X]).astype(np.int64)


class _ResetMutation(Mutation):
    """Each gene is redrawn uniformly within its bounds with probability ``gene_prob``."""

    def __init__(self, gene_prob: float) -> None:
        super().__init__(prob=1.0)
        self.gene_prob = gene_prob

    def _do(
        self, problem: Problem, X: np.ndarray, random_state: np.random.Generator | None = None, **kwargs: Any
    ) -> np.ndarray:
        assert random_state is not None
        X = np.asarray(X).astype(np.int64).copy()
        mask = random_state.random(X.shape) < self.gene_prob
        draws = random_state.integers(problem.xl, problem.xu + 1, size=X.shape)
        X[mask] = draws[mask]
        return X


def non_dominated(F: np.ndarray) -> np.ndarray:
    """Indices of the non-dominated rows of ``F`` (minimisation)."""
    if len(F) == 0:
        return np.zeros(0, dtype=int)
    return np.asarray(NonDominatedSorting().do(np.asarray(F, dtype=float), only_non_dominated_front=True))


def hypervolume(F: np.ndarray, reference: Sequence[float]) -> float:
    """Hypervolume of ``F`` (minimisation) w.r.t. ``reference``; points beyond it count 0."""
    F = np.asarray(F, dtype=float)
    ref = np.asarray(reference, dtype=float)
    inside = F[(F < ref).all(axis=1)] if len(F) else F
    return float(HV(ref_point=ref)(inside)) if len(inside) else 0.0


@dataclass
class _Phase:
    num_branches: int | None
    algorithm: NSGA2
    generation: int = 0  # generations told in this phase


@dataclass
class SearchLoop:
    """Ask / tell over :class:`Arch` objects, across the sub-search phases.

    Example::

        loop = SearchLoop.create(config)
        while loop.has_next():
            archs = loop.ask()
            loop.tell(archs, [evaluate(a) for a in archs])  # dicts with "miou" and the cost key
        front = loop.front()
    """

    config: SearchConfig
    phase_index: int = 0
    phases: list[_Phase] = field(default_factory=list)
    archive: dict[str, dict[str, Any]] = field(default_factory=dict)  # hash -> arch JSON + objectives
    _asked: list[Arch] | None = None
    _pop: Any = None

    @classmethod
    def create(cls, config: SearchConfig) -> SearchLoop:
        loop = cls(config)
        loop._start_phase(0)
        return loop

    @property
    def codec(self) -> VectorCodec:
        return VectorCodec(self.config.num_layers)

    def _start_phase(self, index: int) -> None:
        k = self.config.phases[index]
        codec = self.codec
        algorithm = NSGA2(
            pop_size=self.config.pop_size,
            sampling=_ArchSampling(codec, k),
            crossover=UniformCrossover(prob=self.config.crossover_prob),
            mutation=_ResetMutation(self.config.mutation_prob),
            repair=_ArchRepair(codec, k),
            eliminate_duplicates=True,
        )
        # One seed per phase, derived from the search seed: phases are independent.
        seed = int(np.random.default_rng([self.config.seed, 5, index]).integers(2**31 - 1))
        algorithm.setup(NASProblem(codec), termination=("n_gen", self.config.generations), seed=seed, verbose=False)
        self.phases.append(_Phase(k, algorithm))
        self.phase_index = index

    @property
    def phase(self) -> _Phase:
        return self.phases[self.phase_index]

    @property
    def generation(self) -> int:
        """Global index of the next generation to be told (0-based, across phases)."""
        return self.phase_index * self.config.generations + self.phase.generation

    def has_next(self) -> bool:
        if self.phase.generation < self.config.generations:
            return True
        return self.phase_index + 1 < len(self.config.phases)

    def ask(self) -> list[Arch]:
        """The architectures of the next generation (valid, distinct)."""
        if self._asked is not None:
            raise RuntimeError("tell() the previous generation before asking again")
        if self.phase.generation >= self.config.generations:
            if self.phase_index + 1 >= len(self.config.phases):
                raise RuntimeError("the search is finished")
            self._start_phase(self.phase_index + 1)
        pop = self.phase.algorithm.ask()
        codec = self.codec
        self._pop = pop
        self._asked = [codec.decode(x) for x in pop.get("X")]
        return list(self._asked)

    def tell(self, archs: Sequence[Arch], results: Sequence[dict[str, Any]]) -> None:
        """Report each asked arch's result (``"miou"`` in 0-1 and the objective's cost key)."""
        if self._asked is None:
            raise RuntimeError("ask() before tell()")
        if [a.hash for a in archs] != [a.hash for a in self._asked] or len(results) != len(archs):
            raise ValueError("tell() needs exactly the asked archs, in order, with one result each")
        key = self.config.cost_key
        F = np.array([[-float(r["miou"]), float(r[key])] for r in results], dtype=float)
        problem = NASProblem(self.codec)
        Evaluator().eval(StaticProblem(problem, F=F), self._pop)
        self.phase.algorithm.tell(infills=self._pop)
        for arch, result in zip(archs, results, strict=True):
            self.archive.setdefault(
                arch.hash,
                {"arch": arch.to_official(), "num_branches": arch.num_branches, "objectives": dict(result)},
            )
        self.phase.generation += 1
        self._asked, self._pop = None, None

    # -- results --------------------------------------------------------------------------
    def objectives(self) -> tuple[list[str], np.ndarray]:
        """(hashes, F) of every evaluated arch, ``F = [-miou, cost]``."""
        hashes = list(self.archive)
        key = self.config.cost_key
        F = np.array([[-self.archive[h]["objectives"]["miou"], self.archive[h]["objectives"][key]] for h in hashes])
        return hashes, F.reshape(-1, 2)

    def front(self) -> list[str]:
        """Hashes of the non-dominated archs among everything evaluated so far."""
        hashes, F = self.objectives()
        return [hashes[i] for i in sorted(non_dominated(F).tolist(), key=lambda i: F[i, 1])]

    # -- persistence ----------------------------------------------------------------------
    def state(self) -> bytes:
        """Everything needed to continue (between generations only)."""
        if self._asked is not None:
            raise RuntimeError("cannot snapshot between ask() and tell()")
        return pickle.dumps(self, protocol=pickle.HIGHEST_PROTOCOL)

    @staticmethod
    def from_state(data: bytes) -> SearchLoop:
        loop = pickle.loads(data)  # noqa: S301 - our own state, from our own database
        if not isinstance(loop, SearchLoop):
            raise ValueError("not a SearchLoop state")
        return loop


def knee_index(points: Sequence[tuple[float, float]]) -> int:
    """Index of the knee of a front given as (miou, cost) pairs.

    Both objectives are normalised to [0, 1] over the front; the knee is the point farthest
    *above* the straight line joining the two extremes (cheapest and most accurate), i.e. the
    one that buys the most accuracy for its cost compared with trading linearly. A point below
    the line (a dent: dearer and less accurate than the trade-off) is never a knee. A front of
    one or two points, or one with no point above the line, returns its most accurate point.
    """
    if not points:
        raise ValueError("empty front")
    P = np.asarray(points, dtype=float)
    if len(P) <= 2:
        return int(np.argmax(P[:, 0]))
    span = P.max(axis=0) - P.min(axis=0)
    N = (P - P.min(axis=0)) / np.where(span > 0, span, 1.0)
    a, b = N[np.argmin(P[:, 1])], N[np.argmax(P[:, 0])]
    d = b - a
    norm = float(np.hypot(*d))
    if norm == 0:
        return int(np.argmax(P[:, 0]))
    # Signed: positive for points with more mIoU than the line gives at their cost.
    gain = (d[1] * (N[:, 0] - a[0]) - d[0] * (N[:, 1] - a[1])) / norm
    if gain.max() <= 0:
        return int(np.argmax(P[:, 0]))
    return int(np.argmax(gain))
