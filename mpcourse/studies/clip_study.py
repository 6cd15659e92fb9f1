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

Nothing here is asserted in advance: a recommendation is the strategy with the lowest final
training loss in these runs (ties within ``tol`` go to the simpler strategy), and the table
says how large the differences were. Framework-neutral: it trains through :func:`mpcourse.studies.runs.train`.
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

__all__ = [
    "ClipRun",
    "strategies",
    "train",
    "compare",
    "thresholds",
    "loss_spikes",
    "summarize",
    "recommend",
    "explain",
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
) -> list[dict[str, Any]]:
    """Train every model in ``configs`` with every policy; one row per model with the winner.

    Args:
        data: the task.
        configs: model name -> the TrainConfig to train it with (its ``clip`` is replaced).
        policies: named policies; default :func:`strategies`.
        steps: steps per run. Default 40.
        last: final loss = mean over this many last steps. Default 10.
        tol: relative margin within which a simpler strategy (earlier in :data:`STRATEGY_ORDER`)
            counts as a tie and wins. Default 0.02 (2 %).
        backend: ``"torch"`` or ``"mlx"``.

    Returns:
        Rows with ``model``, ``precision``, ``best``, ``no_clip_loss``, ``best_loss``,
        ``gain`` (relative loss reduction of ``best`` over no clipping) and
        ``loss_<strategy>`` / ``acc_<strategy>`` for every strategy.
    """
    policies = strategies() if policies is None else policies
    order = {name: i for i, name in enumerate(STRATEGY_ORDER)}
    table = []
    for model, cfg in configs.items():
        runs = compare(data, cfg, policies, model=model, steps=steps, backend=backend)
        rows = {r["strategy"]: r for r in summarize(runs, last)}
        finite = {k: r["final_loss"] for k, r in rows.items() if math.isfinite(r["final_loss"])}
        lowest = min(finite.values()) if finite else math.nan
        ties = [k for k, v in finite.items() if v <= lowest * (1 + tol)]
        best = min(ties, key=lambda k: order.get(k, len(order))) if ties else "none"
        base = rows.get("none", {}).get("final_loss", math.nan)
        row: dict[str, Any] = {
            "model": model,
            "precision": cfg.precision,
            "best": best,
            "no_clip_loss": base,
            "best_loss": rows[best]["final_loss"],
            "gain": (base - rows[best]["final_loss"]) / base if math.isfinite(base) and base > 0 else math.nan,
        }
        for k, r in rows.items():
            row[f"loss_{k}"] = r["final_loss"]
            row[f"acc_{k}"] = r["accuracy"]
        table.append(row)
    return table


def explain(rows: Sequence[Mapping[str, Any]]) -> str:
    """One sentence per :func:`recommend` row, with the numbers it rests on.

    Usage::

        print(explain(recommend(ds, configs)))
        # mlp (fp16): norm -- final loss 0.206 vs 0.257 without clipping (20% lower)
    """
    lines = []
    for r in rows:
        head = f"{r['model']} ({r['precision']}): {r['best']}"
        if r["best"] == "none":
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
