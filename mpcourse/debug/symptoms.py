"""Read a training History and name what went wrong: the classic mixed-precision symptoms.

Usage (through :mod:`mpcourse.debug`, which re-exports everything here)::

    import mpcourse as mpc

    hist = eng.fit(ds, epochs=1)                       # an fp16 run
    ref = fp32_eng.fit(ds, epochs=1)                   # optional: the same run in fp32
    found = mpc.debug.diagnose(hist, reference=ref)    # a list of Finding, worst first
    found                                              # a table in a notebook
    found.kinds                                        # e.g. ['nan_loss', 'worse_than_reference']
    mpc.debug.diagnose(hist, max_overflow_rate=0.1)    # any threshold can be changed

Every rule reads only the History (losses, scales, gradient norms, skipped steps, timings),
so it works for every engine. The rules and their thresholds (:class:`Thresholds`):

=====================  ==============================================================  ============
kind                   fires when                                                      needs
=====================  ==============================================================  ============
nan_loss               more than ``nan_steps`` losses are NaN/inf                       --
scale_too_high         after the scale's first calibration, more than                 --
                       ``max_overflow_rate`` of the steps overflow while their losses
                       are finite
underflow_stall        fp16/bf16 run; the loss improves by less than                   --
                       ``min_improvement`` between the first and last ``window`` steps,
                       and gradients look underflowed: ``zero_grad_fraction`` of the
                       steps have an all-zero gradient, or the scale fell to
                       ``low_scale``, or the grad norm is ``underflow_grad_ratio``
                       times smaller than the reference's
worse_than_reference   the final loss exceeds the reference's by more than                a reference
                       ``max_shortfall`` of the reference's own improvement, or the
                       final accuracy is lower by more than ``max_accuracy_drop``
no_speedup             median samples/s (after ``timing_warmup`` steps) is less than      a reference
                       ``min_speedup`` times the reference's                              or its
                                                                                          throughput
=====================  ==============================================================  ============

A healthy run (finite losses, a few overflows while the dynamic scale calibrates, steady
progress) raises nothing.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np

from mpcourse import hardware
from mpcourse.debug.findings import KINDS, Diagnosis, Finding, Thresholds, check_value
from mpcourse.history import History

__all__ = ["Finding", "Diagnosis", "Thresholds", "diagnose", "KINDS"]


# --- helpers ---------------------------------------------------------------------------------
def _finite_mean(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(a.mean()) if a.size else float("nan")


def _finite_median(a: np.ndarray) -> float:
    a = a[np.isfinite(a)]
    return float(np.median(a)) if a.size else float("nan")


def _steps(h: History) -> np.ndarray:
    return h.column("step").astype(int)


def _calibration(h: History, window: int) -> int:
    """Steps at the start spent backing a dynamic scale off its too-high initial value.

    A run that starts by overflowing and backing off is calibrating until the first back-off
    that is followed by ``window`` steps without another (the scale has found its level). A
    scale that keeps backing off never settles: then only the leading run of overflows counts.
    """
    found = h.column("found_inf").astype(bool)
    back = np.diff(h.scales) < 0  # back[j]: step j overflowed and step j + 1 used a lower scale
    if not found[0] or not back.any():
        return 0
    for i in range(1, len(found)):
        if back[i - 1] and not back[i : i + window].any():
            return i
    return int(np.argmin(found)) if not found.all() else len(found)


def _fmt_steps(steps: np.ndarray, most: int = 5) -> str:
    shown = ", ".join(str(int(s)) for s in steps[:most])
    return shown + (f", ... ({len(steps)} in all)" if len(steps) > most else "")


def _precision(h: History) -> str:
    return str(h.meta.get("precision", "?"))


# --- the rules -------------------------------------------------------------------------------
def _nan_loss(h: History, t: Thresholds) -> Finding | None:
    loss, steps = h.losses, _steps(h)
    bad = ~np.isfinite(loss)
    if bad.sum() <= t.nan_steps:
        return None
    i = int(np.argmax(bad))
    after = float(bad[i:].mean())
    g = h.grad_norms
    scaling, precision = h.meta.get("scaling", "?"), _precision(h)
    early = _finite_median(g[: min(t.window, i)]) if i > 0 else float("nan")
    peak = float(np.max(g[max(0, i - t.window) : i][np.isfinite(g[max(0, i - t.window) : i])], initial=0.0))
    growth = peak / early if early > 0 else float("nan")
    values = {
        "first_step": float(steps[i]),
        "nan_steps": float(bad.sum()),
        "share_after": after,
        "scale_at_first": float(h.scales[i]),
        "grad_norm_growth": growth,
    }
    persistent = after >= 0.9
    symptom = (
        f"the loss becomes NaN/inf at step {steps[i]} and stays so ({after:.0%} of the steps from there)"
        if persistent
        else f"the loss is NaN/inf at {int(bad.sum())} steps (first at step {steps[i]}) and finite in between"
    )
    evidence = f"non-finite loss at steps {_fmt_steps(steps[bad])}; scale there {h.scales[i]:g}"
    over = "fp16's max (65504)" if precision == "fp16" else "the format's range"
    if i == 0:
        cause = (
            f"non-finite from the very first step, before any update: the forward pass "
            f"itself overflows -- a layer's activations pass {over}"
        )
        fix = (
            "find the layer with mpc.debug.find_first_nonfinite(engine, x, y) on one batch; "
            "rescale or normalise its output, keep that layer in fp32, or train in bf16 "
            "(fp32's range)"
        )
    elif persistent and math.isfinite(growth) and growth >= 10:
        evidence += f"; the grad norm rose {growth:.3g}x (from {early:.3g} to {peak:.3g}) in the steps before"
        cause = "the updates exploded (the learning rate is too high) and the weights became non-finite"
        fix = (
            "lower the learning rate (e.g. 10x) or add warm-up, clip gradients "
            "(mpc.clipping), keep a loss scaler on so a non-finite step is skipped, and "
            f"restart from a checkpoint saved before step {steps[i]}"
        )
    elif persistent:
        cause = (
            "the weights became non-finite: a non-finite step was applied"
            if scaling == "none"
            else "every forward pass overflows since then: the weights grew until an activation overflowed"
        )
        fix = (
            "keep a loss scaler on (loss_scale='dynamic') so a non-finite step is skipped, not "
            "applied; lower the learning rate or clip; locate the overflowing layer with "
            f"mpc.debug.find_first_nonfinite on a batch; restart from before step {steps[i]}"
        )
    else:
        cause = f"some batches push an activation past {over} in the forward pass (inf logits give a NaN loss)"
        fix = (
            f"run mpc.debug.find_first_nonfinite(engine, x, y) on the batch of step {steps[i]} "
            "to name the layer; normalise or rescale it, keep it in fp32, or train in bf16"
        )
    return Finding(
        "nan_loss", symptom, f"{evidence}; cause: {cause}", fix, tuple(int(s) for s in steps[bad][:20]), values
    )


def _scale_too_high(h: History, t: Thresholds) -> Finding | None:
    if h.meta.get("scaling") == "none":
        return None
    k = _calibration(h, t.window)
    found = h.column("found_inf").astype(bool)[k:]
    if len(found) < t.min_steps:
        return None
    rate = float(found.mean())
    if rate <= t.max_overflow_rate:
        return None
    loss = h.losses[k:]
    if np.isfinite(loss[found]).mean() < 0.5:
        return None  # the forward pass overflows: nan_loss names that, the scale is not the cause
    steps, scales = _steps(h)[k:], h.scales[k:]
    backoffs = int(np.sum(np.diff(scales) < 0))
    values = {
        "overflow_rate": rate,
        "overflow_steps": float(found.sum()),
        "calibration_steps": float(k),
        "max_scale": float(scales.max()),
        "min_scale": float(scales.min()),
        "backoffs": float(backoffs),
    }
    static = h.meta.get("scaling") == "static" or np.all(scales == scales[0])
    symptom = (
        f"{rate:.0%} of the steps overflow and are skipped: the loss moves in fits and "
        f"starts (oscillates) because the loss scale is too high"
    )
    evidence = (
        f"{int(found.sum())} of {len(found)} steps overflowed (after {k} calibration "
        f"steps), at steps {_fmt_steps(steps[found])}; the losses there are finite, so "
        f"only the scaled backward overflowed; scale {scales.min():g}..{scales.max():g}"
        + ("" if static else f", backed off {backoffs} times")
    )
    fix = (
        "lower the static scale (halve it until the overflow rate is under "
        f"{t.max_overflow_rate:.0%}) or use loss_scale='dynamic'"
        if static
        else "grow the scale less often (a larger growth_interval), cap it with max_scale, or allow hysteresis=2"
    ) + "; bf16 needs no loss scale at all"
    return Finding("scale_too_high", symptom, evidence, fix, tuple(int(s) for s in steps[found][:20]), values)


def _underflow_stall(h: History, ref: History | None, t: Thresholds) -> Finding | None:
    if _precision(h) == "fp32":
        return None
    loss, g, steps = h.losses, h.grad_norms, _steps(h)
    ok = np.isfinite(loss) & ~h.column("found_inf").astype(bool)
    if ok.sum() < 2:
        return None
    w = max(1, min(t.window, len(loss) // 2))
    first, last = _finite_mean(loss[:w]), _finite_mean(loss[-w:])
    improvement = (first - last) / abs(first) if first != 0 and math.isfinite(first) else 0.0
    if not math.isfinite(last) or improvement >= t.min_improvement:
        return None
    signs: list[str] = []
    zero = ok & (g == 0)
    zero_frac = float(zero.sum() / ok.sum())
    if zero_frac >= t.zero_grad_fraction:
        signs.append(f"{zero_frac:.0%} of the finite steps had an all-zero gradient (steps {_fmt_steps(steps[zero])})")
    scaled = h.meta.get("scaling") not in ("none", None)
    if scaled and h.scales.min() <= t.low_scale:
        j = int(np.argmax(h.scales <= t.low_scale))
        signs.append(f"the loss scale fell to {h.scales.min():g} (<= {t.low_scale:g} from step {steps[j]})")
    ratio = float("nan")
    if ref is not None:
        mine, theirs = _finite_median(g[ok]), _finite_median(ref.grad_norms)
        ratio = theirs / mine if mine > 0 else float("inf")
        if ratio >= t.underflow_grad_ratio:
            signs.append(
                f"the median grad norm is 0 against the reference's {theirs:.3g}"
                if mine == 0
                else f"the median grad norm is {mine:.3g}, {ratio:.3g}x below the reference's {theirs:.3g}"
            )
    if not signs:
        return None
    values = {
        "improvement": improvement,
        "zero_grad_fraction": zero_frac,
        "min_scale": float(h.scales.min()),
        "grad_ratio_vs_reference": ratio,
    }
    symptom = (
        f"training stalls: the loss moved {improvement:.1%} between the first and the last "
        f"{w} steps ({first:.4g} -> {last:.4g}), and the gradients underflow"
    )
    fix = (
        "scale the loss up so small gradients stay representable: loss_scale='dynamic' (or a "
        "larger init_scale / a min_scale); if the scale collapsed, first fix what overflows; "
        "measure per-layer underflow with mpc.debug.underflow_fractions(engine, x, y); bf16 "
        "has fp32's range"
    )
    return Finding("underflow_stall", symptom, "; ".join(signs), fix, tuple(int(s) for s in steps[zero][:20]), values)


def _worse_than_reference(h: History, ref: History | None, t: Thresholds) -> Finding | None:
    if ref is None or not len(ref):
        return None
    n = min(len(h), len(ref))
    w = max(1, min(t.window, n // 2))
    mine, theirs = h.losses[:n], ref.losses[:n]
    last, ref_first, ref_last = _finite_mean(mine[n - w :]), _finite_mean(theirs[:w]), _finite_mean(theirs[n - w :])
    values: dict[str, float] = {"final_loss": last, "reference_final_loss": ref_last}
    reasons: list[str] = []
    drop = ref_first - ref_last
    if math.isfinite(last) and math.isfinite(drop) and drop > 0:
        shortfall = (last - ref_last) / drop
        values["shortfall"] = shortfall
        if shortfall > t.max_shortfall:
            reasons.append(
                f"mean loss over steps {n - w}..{n - 1} is {last:.4g} against the reference's "
                f"{ref_last:.4g}: {shortfall:.0%} of the reference's improvement "
                f"({ref_first:.4g} -> {ref_last:.4g}) is missing"
            )
    acc = [
        float(e["accuracy"])
        for e in (h.evals[-1:] + ref.evals[-1:])
        if isinstance(e, dict) and isinstance(e.get("accuracy"), (int, float))
    ]
    if len(acc) == 2:
        values["accuracy_drop"] = float(acc[1] - acc[0])
        if acc[1] - acc[0] > t.max_accuracy_drop:
            reasons.append(f"final accuracy {acc[0]:.3f} against the reference's {acc[1]:.3f}")
    if not reasons:
        return None
    symptom = (
        f"worse convergence than the {_precision(ref)} reference "
        f"({_precision(h)} run, compared over its first {n} steps)"
    )
    fix = (
        "check the other findings first (skipped steps, underflow, NaN); keep loss scaling on; "
        "measure per-layer underflow with mpc.debug.underflow_fractions; keep fp32 master "
        "weights; run sensitive layers (softmax, norms, the loss) in fp32; or try bf16"
    )
    return Finding("worse_than_reference", symptom, "; ".join(reasons), fix, tuple(range(n - w, n)), values)


def _throughput(h: History, warmup: int) -> float:
    sec, samples = h.column("seconds").astype(float), h.column("samples").astype(float)
    sec, samples = sec[warmup:], samples[warmup:]
    ok = sec > 0
    return float(np.median(samples[ok] / sec[ok])) if ok.any() else float("nan")


def _speedup_spread(h: History, ref: History, warmup: int) -> tuple[float, float]:
    """p10-p90 range of a speedup: this run's slowest steps against the reference's fastest, and back."""

    def rates(x: History) -> np.ndarray:
        sec, samples = x.column("seconds").astype(float)[warmup:], x.column("samples").astype(float)[warmup:]
        return samples[sec > 0] / sec[sec > 0]

    mine, theirs = rates(h), rates(ref)
    return (
        float(np.percentile(mine, 10) / np.percentile(theirs, 90)),
        float(np.percentile(mine, 90) / np.percentile(theirs, 10)),
    )


def _cpu_speed_fix(units: list[str] | None) -> str:
    """What a missing speedup on a CPU means, from the flags of the CPU this runs on."""
    if units is None:
        return (
            "this CPU's flags cannot be read, so whether it multiplies in fp16/bf16 is unknown; without "
            "bf16/fp16 instructions the casts cost time and nothing is gained. Measure fp32 against "
            "bf16 and fp16 here (mpcourse bench) before choosing"
        )
    if not units:
        return (
            "expected on this CPU: it has no bf16/fp16 instructions (x86: none of "
            + ", ".join(hardware.NATIVE_HALF_FLAGS)
            + "), so a half-precision matmul is a conversion plus fp32 work and the casts cost time; measure the "
            "speedup where you will train (a GPU with tensor cores), and use mixed precision on this "
            "CPU only to save memory"
        )
    return (
        "this CPU has " + ", ".join(units) + ", so it can multiply in half precision: check that the "
        "precision you chose is the one it supports (bf16 for avx512_bf16/amx_bf16), grow the batch and "
        "the widths, and compare with mpcourse bench; a model this small may be dominated by overhead"
    )


def _no_speedup(h: History, ref: History | None, ref_throughput: float | None, t: Thresholds) -> Finding | None:
    if _precision(h) == "fp32" or (ref is None and ref_throughput is None):
        return None
    if len(h) <= t.timing_warmup:
        return None
    mine = _throughput(h, t.timing_warmup)
    theirs = ref_throughput if ref_throughput is not None else _throughput(ref, t.timing_warmup)  # type: ignore[arg-type]
    if not (math.isfinite(mine) and math.isfinite(theirs) and theirs > 0):
        return None
    speedup = mine / theirs
    if speedup >= t.min_speedup:
        return None
    device = str(h.meta.get("device", "?"))
    step_ms = 1e3 * float(np.median(h.column("seconds")[t.timing_warmup :]))
    values = {"speedup": speedup, "samples_per_s": mine, "reference_samples_per_s": theirs, "median_step_ms": step_ms}
    symptom = f"no speedup: {_precision(h)} runs at {speedup:.2f}x the reference's speed (wanted >= {t.min_speedup:g}x)"
    spread = ""
    if ref is not None and ref_throughput is None:
        lo, hi = _speedup_spread(h, ref, t.timing_warmup)
        values.update(speedup_p10=lo, speedup_p90=hi)
        spread = f"; the speedup's p10-p90 range {lo:.2f}-{hi:.2f}x"
    evidence = (
        f"median {mine:.4g} samples/s against {theirs:.4g} (steps {t.timing_warmup} on, "
        f"median step {step_ms:.3g} ms, device {device}){spread}"
    )
    if device == "cpu":
        fix = _cpu_speed_fix(hardware.native_half_units())
    else:
        fix = (
            "the model is too small: fixed per-step costs (kernel launches, casts, the scaler's "
            "inf check, Python) dominate. Grow the batch and the widths (multiples of 8), fuse "
            "or compile the step, or stay in fp32 for a model this small"
        )
    return Finding("no_speedup", symptom, evidence, fix, (), values)


def diagnose(
    history: History,
    reference: History | None = None,
    *,
    reference_throughput: float | None = None,
    thresholds: Thresholds | None = None,
    **overrides: Any,
) -> Diagnosis:
    """Find the classic mixed-precision symptoms in a History.

    Args:
        history: the run to examine.
        reference: the same run in fp32, if you have one. It enables ``worse_than_reference``,
            ``no_speedup`` and a sharper ``underflow_stall``. Default None.
        reference_throughput: the reference's samples per second, when you have only a timing.
            Default None.
        thresholds: a :class:`Thresholds`; default ``Thresholds()``.
        **overrides: change single thresholds, e.g. ``max_overflow_rate=0.1``.

    Returns:
        A :class:`Diagnosis` (a list of :class:`Finding`), worst first; empty for a healthy run.

    Raises:
        TypeError: ``history``/``reference`` is not a History, or a threshold is not a number.
        ValueError: an empty history, an unknown threshold name or a value out of range.
    """
    for name, h in (("history", history), ("reference", reference)):
        if h is not None and not isinstance(h, History):
            raise TypeError(f"{name} must be an mpcourse History, got {type(h).__name__}")
    if not len(history):
        raise ValueError("history has no steps: train first, then diagnose")
    t = thresholds if thresholds is not None else Thresholds()
    if not isinstance(t, Thresholds):
        raise TypeError(f"thresholds must be an mpcourse.debug.Thresholds, got {type(t).__name__}")
    if overrides:
        unknown = set(overrides) - {f.name for f in dataclasses.fields(Thresholds)}
        if unknown:
            raise ValueError(
                f"unknown threshold(s) {sorted(unknown)}; known: "
                f"{', '.join(f.name for f in dataclasses.fields(Thresholds))}"
            )
        t = dataclasses.replace(t, **overrides)
    if reference_throughput is not None:
        check_value("reference_throughput", reference_throughput, low=0, low_open=True)
    found = [
        _nan_loss(history, t),
        _scale_too_high(history, t),
        _underflow_stall(history, reference, t),
        _worse_than_reference(history, reference, t),
        _no_speedup(history, reference, reference_throughput, t),
    ]
    return Diagnosis(f for f in found if f is not None)
