"""Short, measured clipping experiments: each strategy trained on the same task, then compared.

Usage::

    import mpcourse as mpc
    from mpcourse.studies import clip_study

    ds = mpc.data.load("digits")
    cfg = mpc.TrainConfig(precision="fp16", optimizer="adam", lr=1e-2)
    runs = clip_study.compare(ds, cfg, clip_study.strategies(), model="deep_mlp", steps=92)
    rows = clip_study.summarize(runs)                  # one dict per strategy, all measured
    table = clip_study.recommend(ds, {"mlp": cfg, "cnn": cfg}, steps=40)
    print(clip_study.format_table(table))
    table = clip_study.recommend(ds, {"mlp": cfg}, steps=24, seeds=(0, 1, 2))   # with the spread
    print(clip_study.explain(table), clip_study.format_table(clip_study.spread_table(table, ["none", "norm"])))

Nothing here is asserted in advance: a recommendation is the strategy with the lowest final
training loss in these runs (ties within ``tol`` go to the simpler strategy), and the table
says how large the differences were. With ``seeds=`` every strategy is trained once per seed
and recommended only when its seed range clears the simplest strategy's
(:func:`mpcourse.studies.seeds.decide`); otherwise there is no clear winner.
Framework-neutral: it trains through :func:`mpcourse.studies.runs.train`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcourse.clipping import AGC, AutoClip, ClipByNorm, ClipByValue, ClipPolicy, autoclip_thresholds
from mpcourse.config import TrainConfig
from mpcourse.data import Dataset
from mpcourse.history import History
from mpcourse.studies import runs
from mpcourse.studies.seeds import Spread, check_seeds, decide

__all__ = [
    "ClipRun",
    "strategies",
    "train",
    "compare",
    "thresholds",
    "loss_spikes",
    "summarize",
    "Spread",
    "check_seeds",
    "decide",
    "recommend",
    "explain",
    "spread_table",
    "seed_marks",
    "format_table",
    "STRATEGY_ORDER",
]

#: Simplest first: on a tie the earlier strategy is recommended.
STRATEGY_ORDER: tuple[str, ...] = ("none", "norm", "value", "agc", "autoclip")


def strategies(
    max_norm: float = 1.0, clip_value: float = 0.05, clipping: float = 0.01, percentile: float = 10.0
) -> dict[str, ClipPolicy | None]:
    """No clipping plus one policy of each kind, named as in :data:`STRATEGY_ORDER`.

    Usage::

        strategies(max_norm=0.5)["norm"]     # ClipByNorm(max_norm=0.5, norm_type=2.0)
    """
    return {
        "none": None,
        "norm": ClipByNorm(max_norm),
        "value": ClipByValue(clip_value),
        "agc": AGC(clipping=clipping),
        "autoclip": AutoClip(percentile=percentile),
    }


@dataclass
class ClipRun:
    """One training run with one clipping strategy."""

    name: str
    policy: ClipPolicy | None
    history: History
    evaluation: dict[str, float]

    @property
    def thresholds(self) -> np.ndarray:
        """The global-norm threshold per step (see :func:`thresholds`)."""
        return thresholds(self.policy, self.history)


def thresholds(policy: ClipPolicy | None, history: History) -> np.ndarray:
    """The global L2-norm threshold a policy applied at each step of a run, or nan per step.

    ClipByNorm (L2): ``max_norm`` on every step. AutoClip: the percentile of the finite norms
    recorded up to that step. No clipping, value clipping and AGC have no global-norm
    threshold (they act per element / per unit), so their steps are nan.
    """
    n = len(history)
    if isinstance(policy, ClipByNorm) and policy.norm_type == 2.0:
        return np.full(n, policy.max_norm)
    if isinstance(policy, AutoClip):
        return autoclip_thresholds(history.grad_norms, policy.percentile, policy.history)
    return np.full(n, math.nan)


def train(
    data: Dataset,
    config: TrainConfig,
    policy: ClipPolicy | None,
    *,
    name: str = "run",
    model: str = "deep_mlp",
    steps: int = 92,
    backend: str = "torch",
    device: str = "cpu",
) -> ClipRun:
    """Train a fresh zoo model for ``steps`` steps with ``config.replace(clip=policy)``."""
    run = runs.train(data, config.replace(clip=policy), backend=backend, model=model, device=device, steps=steps)
    return ClipRun(name, policy, run.history, run.evaluation)


def compare(
    data: Dataset, config: TrainConfig, policies: Mapping[str, ClipPolicy | None], **kwargs: Any
) -> dict[str, ClipRun]:
    """:func:`train` once per named policy, same seed, same data order, same everything else."""
    return {name: train(data, config, p, name=name, **kwargs) for name, p in policies.items()}


def loss_spikes(losses: Sequence[float] | np.ndarray, factor: float = 1.5, window: int = 10) -> int:
    """Steps whose loss is non-finite or above ``factor`` x the median of the ``window`` before it."""
    v = np.asarray(losses, dtype=float)
    count = 0
    for i in range(len(v)):
        if not math.isfinite(v[i]):
            count += 1
            continue
        prev = v[max(0, i - window) : i]
        prev = prev[np.isfinite(prev)]
        if len(prev) >= 3 and v[i] > factor * float(np.median(prev)):
            count += 1
    return count


def _final_loss(hist: History, last: int) -> float:
    tail = hist.losses[-last:]
    tail = tail[np.isfinite(tail)]
    return float(tail.mean()) if len(tail) else math.nan


def summarize(runs: Mapping[str, ClipRun], last: int = 10) -> list[dict[str, Any]]:
    """One row per run: final loss (mean of the last ``last`` steps), worst loss, spikes,
    share of steps clipped, skipped steps and test accuracy -- all read from the runs."""
    rows = []
    for name, run in runs.items():
        h = run.history
        finite = h.losses[np.isfinite(h.losses)]
        rows.append(
            {
                "strategy": name,
                "final_loss": _final_loss(h, last),
                "worst_loss": float(finite.max()) if len(finite) else math.nan,
                "spikes": loss_spikes(h.losses),
                "clipped": float(h.column("clipped").mean()),
                "skipped": h.skipped_steps,
                "accuracy": run.evaluation["accuracy"],
            }
        )
    return rows


def recommend(
    data: Dataset,
    configs: Mapping[str, TrainConfig],
    policies: Mapping[str, ClipPolicy | None] | None = None,
    *,
    steps: int = 40,
    last: int = 10,
    tol: float = 0.02,
    backend: str = "torch",
    seeds: Sequence[int] | None = None,
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Train every model in ``configs`` with every policy, once per seed; one row per model.

    Usage::

        table = recommend(ds, {"mlp": cfg, "cnn": cfg}, steps=24, seeds=(0, 1, 2))
        print(explain(table))

    Args:
        data: the task.
        configs: model name -> the TrainConfig to train it with (its ``clip`` is replaced).
        policies: named policies; default :func:`strategies`.
        steps: steps per run. Default 40.
        last: final loss = mean over this many last steps. Default 10.
        tol: relative margin within which a simpler strategy (earlier in :data:`STRATEGY_ORDER`)
            counts as a tie and leads. Default 0.02 (2 %).
        backend: ``"torch"`` or ``"mlx"``.
        seeds: ``TrainConfig.seed`` values, each a different weight init and data order, the
            same for every strategy within a seed. Default None: one run with each config's own
            seed. See :func:`decide` for the rule that turns the spread into a recommendation.
        device: the device to train on. Default ``"cpu"``.

    Returns:
        Rows with ``model``, ``precision``, ``seeds``, ``best`` (the recommendation; the
        simplest strategy, ``baseline``, when there is no clear winner), ``leader``, ``clear``,
        ``no_clip_loss``, ``best_loss``, ``gain`` (relative loss reduction of ``best`` over no
        clipping) and, for every strategy, ``loss_<s>`` (mean over seeds), ``std_<s>``,
        ``tol``, ``lo_<s>`` / ``hi_<s>`` (min / max over seeds), ``per_seed_<s>`` and ``acc_<s>`` (mean
        test accuracy).
    """
    policies = strategies() if policies is None else policies
    wanted = None if seeds is None else check_seeds(seeds)
    table = []
    for model, cfg in configs.items():
        seed_list = (cfg.seed,) if wanted is None else wanted
        per_seed = [
            summarize(
                compare(data, cfg.replace(seed=s), policies, model=model, steps=steps, backend=backend, device=device),
                last,
            )
            for s in seed_list
        ]
        spreads = {k: Spread(tuple(rows[i]["final_loss"] for rows in per_seed)) for i, k in enumerate(policies)}
        best, leader, clear, baseline = decide(spreads, tol, STRATEGY_ORDER)
        base = spreads["none"].mean if "none" in spreads else math.nan
        best_loss = spreads[best].mean
        row: dict[str, Any] = {
            "model": model,
            "precision": cfg.precision,
            "seeds": seed_list,
            "best": best,
            "leader": leader,
            "baseline": baseline,
            "clear": clear,
            "tol": tol,
            "no_clip_loss": base,
            "best_loss": best_loss,
            "gain": (base - best_loss) / base if math.isfinite(base) and base > 0 else math.nan,
        }
        for i, (k, sp) in enumerate(spreads.items()):
            row.update({f"loss_{k}": sp.mean, f"std_{k}": sp.std, f"lo_{k}": sp.lo, f"hi_{k}": sp.hi})
            row[f"per_seed_{k}"] = sp.values
            row[f"acc_{k}"] = float(np.mean([rows[i]["accuracy"] for rows in per_seed]))
        table.append(row)
    return table


def _range(r: Mapping[str, Any], k: str) -> str:
    return f"{r[f'loss_{k}']:.3f} (seeds {r[f'lo_{k}']:.3f}-{r[f'hi_{k}']:.3f})"


def _without(r: Mapping[str, Any]) -> str:
    return "without clipping" if r["baseline"] == "none" else f"with {r['baseline']}"


def explain(rows: Sequence[Mapping[str, Any]]) -> str:
    """One sentence per :func:`recommend` row, with the numbers it rests on.

    Usage::

        print(explain(recommend(ds, configs)))
        # mlp (fp16): norm -- final loss 0.206 vs 0.257 without clipping (20% lower)
        print(explain(recommend(ds, configs, seeds=range(3))))
        # mlp (fp16): no clear winner (within seed spread) -- norm has the lowest mean ...
    """
    lines = []
    for r in rows:
        head = f"{r['model']} ({r['precision']}): {r['best']}"
        n = len(r.get("seeds", ()))
        if n > 1 and r["clear"]:
            drop = 1 - r[f"loss_{r['best']}"] / r[f"loss_{r['baseline']}"]
            lines.append(
                f"{head} -- mean final loss {_range(r, r['best'])} vs {_range(r, r['baseline'])} {_without(r)} "
                f"({drop:.0%} lower; the ranges over {n} seeds do not overlap)"
            )
        elif n > 1:
            base, lead = r["baseline"], r["leader"]
            why = (
                f"{lead} has the lowest mean final loss, {_range(r, lead)}, "
                f"but its range overlaps {base}'s, {_range(r, base)}"
                if lead != base
                else f"no strategy's mean final loss beat {base}'s, {_range(r, base)}, by more than the tie margin"
            )
            lines.append(f"{r['model']} ({r['precision']}): no clear winner (within seed spread) -- {why}; {n} seeds")
        elif r["best"] == "none":
            lines.append(
                f"{head} -- no strategy beat training without clipping by more than the "
                f"tie margin (final loss {r['no_clip_loss']:.3f})"
            )
        else:
            lines.append(
                f"{head} -- final loss {r['best_loss']:.3f} vs {r['no_clip_loss']:.3f} without "
                f"clipping ({r['gain']:.0%} lower)"
            )
    return "\n".join(lines)


def spread_table(rows: Sequence[Mapping[str, Any]], strategies: Sequence[str]) -> list[dict[str, str]]:
    """:func:`recommend` rows as text, one column per strategy: ``mean [min, max]`` over seeds,
    plus ``each seed``: what each seed alone would have marked (:func:`seed_marks`).

    Usage::

        print(format_table(spread_table(table, list(policies))))
    """
    out = []
    for r in rows:
        verdict = r["best"] if r.get("clear", True) else "no clear winner"
        cells = {s: f"{r[f'loss_{s}']:.3f} [{r[f'lo_{s}']:.3f}, {r[f'hi_{s}']:.3f}]" for s in strategies}
        each = {"each seed": ", ".join(seed_marks(r, strategies))} if f"per_seed_{strategies[0]}" in r else {}
        out.append({"model": str(r["model"]), "recommended": verdict, **each, **cells})
    return out


def seed_marks(row: Mapping[str, Any], strategies: Sequence[str]) -> tuple[str, ...]:
    """What each seed of a :func:`recommend` row would have marked on its own (one-seed rule).

    Usage::

        seed_marks(table[0], list(policies))    # e.g. ('agc', 'agc', 'norm'): it depends on the seed
    """
    n = len(row["seeds"])
    tol = float(row.get("tol", 0.02))
    one = [{k: Spread((row[f"per_seed_{k}"][i],)) for k in strategies} for i in range(n)]
    return tuple(decide(spreads, tol, STRATEGY_ORDER).best for spreads in one)


def format_table(rows: Sequence[Mapping[str, Any]], digits: int = 3) -> str:
    """A plain-text table of dict rows (same keys in each), numbers rounded to ``digits``."""
    if not rows:
        return "(no rows)"
    keys = list(rows[0])

    def cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.{digits}f}"
        return str(v)

    cells = [[cell(r[k]) for k in keys] for r in rows]
    widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths))  # noqa: E731
    return "\n".join([line(keys), line(["-" * w for w in widths]), *(line(c) for c in cells)])
