"""A best-practices checklist for your own mixed-precision run: what code can check, it checks.

Usage::

    import mpcourse as mpc
    from mpcourse import production as prod
    from mpcourse.production.checklist import checklist, format_checklist

    hist = eng.fit(ds, epochs=3)
    report = prod.validate(ds, precision="fp16", epochs=1)          # optional: fp32 against mixed
    items = checklist(hist, validation=report)
    print(format_checklist(items))
    # [x] fp16 runs with a loss scaler            scaling 'dynamic'
    # [x] overflow rate below 5 %                 0.0% of 69 steps
    # [?] the checkpoint holds the scaler state   yours to check: ...

Each item's ``status`` is ``"pass"``, ``"fail"`` or ``"yours"`` (code cannot see it from a
History: the item says what to look at). Nothing is marked as passed without evidence.
The practices come from the PyTorch AMP recipe (scaler, ``unscale_`` before clipping, scaler in
the checkpoint), NVIDIA's mixed-precision guide (loss scaling, fp32 master weights) and
Micikevicius et al. 2018.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from mpcourse.history import History

__all__ = ["ChecklistItem", "checklist", "format_checklist"]


@dataclass(frozen=True)
class ChecklistItem:
    """One practice: ``status`` "pass", "fail" or "yours", and the evidence or what to check."""

    item: str
    status: str
    evidence: str


def _meta(history: History) -> tuple[str, dict[str, Any]]:
    return str(history.meta.get("precision", "?")), dict(history.meta.get("config", {}))


def checklist(history: History, *, validation: Any = None, max_overflow_rate: float = 0.05) -> list[ChecklistItem]:
    """Check a finished run against the mixed-precision practices.

    Args:
        history: the run's History (its ``meta`` carries the precision and the config).
        validation: a :class:`~mpcourse.production.validation.ValidationReport` of the same
            setup against fp32, or None (then accuracy and speed are yours to check).
        max_overflow_rate: the overflow-rate rule, in [0, 1). Default 0.05.
    """
    if not isinstance(history, History):
        raise TypeError(f"history must be an mpcourse History, got {type(history).__name__}")
    if len(history) == 0:
        raise ValueError("checklist needs a History with at least one step")
    if isinstance(max_overflow_rate, bool) or not 0 <= max_overflow_rate < 1:
        raise ValueError(f"max_overflow_rate must be a number in [0, 1), got {max_overflow_rate!r}")
    precision, cfg = _meta(history)
    scaling = str(history.meta.get("scaling", cfg.get("loss_scale", "?")))
    items: list[ChecklistItem] = []

    def add(item: str, ok: bool | None, evidence: str) -> None:
        items.append(ChecklistItem(item, "yours" if ok is None else ("pass" if ok else "fail"), evidence))

    if precision == "fp16":
        add("fp16 runs with a loss scaler", scaling not in ("none", "?"), f"scaling {scaling!r}")
    else:
        add(f"{precision} needs no loss scaler", True, f"scaling {scaling!r}: fine either way for {precision}")
    rate = history.overflow_rate
    add(f"overflow rate below {max_overflow_rate:.0%}", rate < max_overflow_rate, f"{rate:.1%} of {len(history)} steps")
    nonfinite = sum(not math.isfinite(r.loss) for r in history.records)
    add("no non-finite loss", nonfinite == 0, f"{nonfinite} step(s) with a NaN/inf loss")
    zero = sum(r.grad_norm == 0 for r in history.records)
    add("no all-zero gradient steps (underflow)", zero == 0, f"{zero} step(s) with gradient norm 0")
    master = cfg.get("master_weights")
    if precision == "fp32":
        add("fp32 master weights", True, "fp32 run: the weights are fp32")
    elif master is None:
        add("fp32 master weights", None, "yours to check: the History does not record master_weights")
    else:
        add("fp32 master weights", bool(master), f"master_weights={master}")
    clip = cfg.get("clip")
    if clip:
        add("clipping sees the unscaled gradients", True, f"{clip}: mpcourse engines clip after unscaling")
    else:
        add("clipping sees the unscaled gradients", None, "no clipping configured; if you clip yourself, call "
            "scaler.unscale_(optimizer) before clip_grad_norm_")  # fmt: skip
    if validation is None:
        add("validated against fp32", None, "yours to check: run production.validate on the same setup")
        add("speed measured where you train, with its spread", None, "yours to check: validate or mpcourse bench")
    else:
        add("validated against fp32", bool(validation.passed),
            f"{validation.accuracy_diff:+.1f} accuracy points, overflow {validation.overflow_rate:.1%}")  # fmt: skip
        add("speed measured where you train, with its spread", math.isfinite(validation.speedup),
            f"{validation.speedup_text} vs fp32")  # fmt: skip
    add("the checkpoint holds the scaler state", None,
        "yours to check: save scaler.state_dict() with the model and optimizer (CheckpointManager does)")  # fmt: skip
    add("sensitive ops run in fp32", None,
        "yours to check: inspect the dtypes of your model's ops (engines/torch/inspect.op_dtypes)")  # fmt: skip
    return items


def format_checklist(items: list[ChecklistItem]) -> str:
    """One line per item: ``[x]`` pass, ``[ ]`` fail, ``[?]`` yours to check."""
    mark = {"pass": "[x]", "fail": "[ ]", "yours": "[?]"}
    width = max((len(i.item) for i in items), default=0)
    return "\n".join(f"{mark[i.status]} {i.item:<{width}}  {i.evidence}" for i in items)
