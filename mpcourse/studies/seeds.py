"""Several seeds, one verdict: a measured value's spread over seeds and the rule that reads it.

Usage::

    from mpcourse.studies.seeds import Spread, check_seeds, decide

    seeds = check_seeds(range(3))                        # (0, 1, 2); a bad value -> ValueError
    spreads = {"none": Spread((1.0, 1.1, 1.2)), "norm": Spread((0.7, 0.8, 0.75))}
    spreads["norm"].mean, spreads["norm"].lo, spreads["norm"].hi
    decide(spreads, tol=0.02, order=("none", "norm"))    # best='norm', clear=True: the ranges are apart

One seed is one draw of the weight init and the data order; a difference between two strategies
means something only when it is larger than what changing the seed alone does. ``decide`` asks
for the simplest form of that: the seed ranges (min to max) must not overlap. Framework-neutral,
pure numpy: :func:`mpcourse.studies.clip_study.recommend` trains the runs and calls it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

__all__ = ["Spread", "Verdict", "check_seeds", "decide"]


@dataclass(frozen=True)
class Spread:
    """One strategy's final loss over several seeds: the per-seed values and their summary.

    Usage::

        s = Spread((0.40, 0.36, 0.38))
        s.mean, s.std, s.lo, s.hi          # 0.38, 0.02, 0.36, 0.40

    ``std`` is the sample standard deviation (ddof=1; 0.0 for a single seed). A diverged seed
    (non-finite final loss) makes ``mean``, ``lo`` and ``hi`` nan: such a strategy is never the
    leader.
    """

    values: tuple[float, ...]

    @property
    def finite(self) -> bool:
        return bool(self.values) and all(math.isfinite(v) for v in self.values)

    @property
    def mean(self) -> float:
        return float(np.mean(self.values)) if self.finite else math.nan

    @property
    def std(self) -> float:
        return float(np.std(self.values, ddof=1)) if self.finite and len(self.values) > 1 else 0.0

    @property
    def lo(self) -> float:
        return min(self.values) if self.finite else math.nan

    @property
    def hi(self) -> float:
        return max(self.values) if self.finite else math.nan


def check_seeds(seeds: Any) -> tuple[int, ...]:
    """``seeds`` as a tuple, or a ValueError naming it: a non-empty sequence of distinct ints >= 0."""
    ok = isinstance(seeds, Sequence) and not isinstance(seeds, str) and len(seeds) > 0
    ok = ok and all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in seeds)
    if not ok or len(set(seeds)) != len(seeds):
        raise ValueError(
            f"seeds must be a non-empty sequence of distinct ints >= 0, e.g. (0, 1, 2) or range(3); got {seeds!r}"
        )
    return tuple(int(s) for s in seeds)


class Verdict(NamedTuple):
    """What :func:`decide` concluded: the recommendation and what it was weighed against."""

    best: str  #: the recommended strategy: ``leader`` when ``clear``, else ``baseline``
    leader: str  #: lowest mean (ties within ``tol`` to the simpler)
    clear: bool  #: the leader's seed range lies wholly below the baseline's
    baseline: str  #: the simplest strategy present


def decide(spreads: Mapping[str, Spread], tol: float = 0.02, order: Sequence[str] = ()) -> Verdict:
    """The rule behind :func:`mpcourse.studies.clip_study.recommend`, as a :class:`Verdict`.

    Usage::

        decide({"none": Spread((1.0, 1.2)), "norm": Spread((0.7, 0.8))})   # best='norm', clear=True
        decide({"none": Spread((1.0, 1.2)), "norm": Spread((0.9, 1.1))})   # best='none', clear=False

    The *baseline* is the simplest strategy present: earliest in ``order`` (names not in it come
    after, in their own order; ``clip_study`` passes its ``STRATEGY_ORDER``). The
    *leader* has the lowest mean final loss; within ``tol`` (relative) of it the simpler strategy
    leads. The leader is recommended (``clear``) only when even its worst seed beats the
    baseline's best seed -- the seed ranges do not overlap -- or the baseline diverged. Otherwise
    ``best`` is the baseline and there is no clear winner. With one seed the ranges are points, so
    this is the single-run rule: the lowest loss wins unless the baseline is within ``tol``.
    """
    rank = {name: i for i, name in enumerate(order)}
    names = sorted(spreads, key=lambda k: rank.get(k, len(rank)))
    if not names:
        raise ValueError("decide needs at least one strategy; got none")
    baseline = names[0]
    finite = {k: spreads[k].mean for k in names if spreads[k].finite}
    if not finite:
        return Verdict(baseline, baseline, False, baseline)
    lowest = min(finite.values())
    leader = next(k for k in names if k in finite and finite[k] <= lowest * (1 + tol))
    base = spreads[baseline]
    clear = leader != baseline and (not base.finite or spreads[leader].hi < base.lo)
    return Verdict(leader if clear else baseline, leader, clear, baseline)
