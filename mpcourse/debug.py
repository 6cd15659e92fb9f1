"""Find where mixed precision breaks: the first non-finite layer, underflowing gradients,
activation ranges against the format's limits, and :func:`diagnose` for a whole History.

Usage::

    import mpcourse as mpc

    ds = mpc.data.load("digits")
    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(precision="fp16"), data=ds)  # or "mlx"
    x, y = ds.x_train[:64], ds.y_train[:64]

    mpc.debug.find_first_nonfinite(eng, x, y)   # the first layer giving inf/nan, forward and backward
    mpc.debug.underflow_fractions(eng, x, y)    # per layer: share of fp16 gradients that are 0/subnormal
    mpc.debug.activation_ranges(eng, x)         # per layer: largest |activation| against fp16's max
    mpc.debug.diagnose(hist, reference=ref)     # the classic symptoms in a History (see symptoms.py)

The detectors take an mpcourse engine (they use its model, precision, loss and current loss
scale) or a bare ``torch.nn.Module`` / ``mlx.nn.Module`` (fp32, scale 1, cross-entropy unless
you say otherwise). They run one forward (and backward) pass on the batch and leave the model
as they found it: no optimizer step, no change to weights, gradients or normalisation
statistics. The framework code lives in ``engines/torch_debug.py`` and ``engines/mlx_debug.py``
and is imported only when a detector is called.
"""

from __future__ import annotations


import html
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcourse import formats
from mpcourse._validate import positive_finite
from mpcourse.symptoms import KINDS, Diagnosis, Finding, Thresholds, diagnose

__all__ = ["diagnose", "Finding", "Diagnosis", "Thresholds", "KINDS", "find_first_nonfinite",
           "underflow_fractions", "activation_ranges", "underflow_stats", "range_stats",
           "LayerFault", "NonFiniteReport", "LayerTable", "backend_of"]

PHASES: tuple[str, ...] = ("forward", "backward", "both")


# --- framework-neutral numbers ---------------------------------------------------------------
def underflow_stats(values: Any, *, scale: float = 1.0, fmt: str = "fp16") -> dict[str, float]:
    """How gradient values fare in ``fmt`` once multiplied by the loss scale.

    ``underflow_stats([1e-9, 1e-6, 1e-3, 0.0], scale=1.0)`` -> ``{"n": 4, "zero": 0.25,
    "flushed": 0.25, "subnormal": 0.25, "underflow": 0.75, ...}``.

    Args:
        values: gradient values (any shape; numpy or a list).
        scale: the loss scale they are multiplied by before they are stored (> 0). Default 1.0.
        fmt: the storage format, a :func:`mpcourse.formats.names` entry. Default ``"fp16"``.

    Returns:
        Fractions of all values: ``zero`` (exactly zero already), ``flushed`` (nonzero, but
        rounds to zero in ``fmt``), ``subnormal`` (nonzero and below ``min_normal``: precision
        lost), ``underflow`` (the three together: zero or subnormal in ``fmt``), ``overflow``
        (finite, but beyond ``fmt``'s max) and ``nonfinite``; plus ``n``, the count.
    """
    positive_finite("scale", scale)
    v = np.asarray(values, dtype=np.float64).ravel() * float(scale)
    n = v.size
    if n == 0:
        raise ValueError("underflow_stats needs at least one value")
    zero = int(np.sum(v == 0))
    flushed = int(formats.underflow_mask(v, fmt).sum())
    sub = int(formats.subnormal_mask(v, fmt).sum())
    return {"n": float(n), "zero": zero / n, "flushed": flushed / n, "subnormal": sub / n,
            "underflow": (zero + flushed + sub) / n,
            "overflow": float(formats.overflow_mask(v, fmt).sum()) / n,
            "nonfinite": float(np.sum(~np.isfinite(v))) / n}


def range_stats(values: Any, *, fmt: str = "fp16") -> dict[str, float]:
    """How activation values sit in ``fmt``'s range.

    Returns ``max_abs`` (largest finite magnitude), ``headroom_bits`` (log2 of the format's max
    over ``max_abs``: below 0 means overflow; -inf when there is nothing finite), ``overflow``
    (share of finite values beyond the format's max), ``underflow`` (share of nonzero values
    that round to zero or a subnormal), ``nonfinite`` (share already inf/nan) and ``n``.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    n = v.size
    if n == 0:
        raise ValueError("range_stats needs at least one value")
    f = formats.info(fmt)
    finite = v[np.isfinite(v)]
    max_abs = float(np.max(np.abs(finite))) if finite.size else float("nan")
    headroom = math.log2(f.max / max_abs) if max_abs > 0 else (float("inf") if max_abs == 0 else -math.inf)
    small = formats.underflow_mask(v, fmt) | formats.subnormal_mask(np.where(np.isfinite(v), v, 0.0), fmt)
    return {"n": float(n), "max_abs": max_abs, "headroom_bits": headroom,
            "overflow": float(formats.overflow_mask(v, fmt).sum()) / n,
            "underflow": float(small.sum()) / n, "nonfinite": float(np.sum(~np.isfinite(v))) / n}


# --- results ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class LayerFault:
    """Where non-finite values first appeared in one pass.

    Attributes:
        phase: ``"forward"`` or ``"backward"``.
        layer: the submodule's dotted name (``"layers.1"``), ``"(model)"`` for the root.
        layer_type: its class name (``"Linear"``).
        what: what held the inf/nan: ``"output"`` (forward), ``"grad_input"`` (the gradient it
            passes back), ``"grad of <param>"``, or ``"grad_output"`` (the gradient it received).
        produced_here: True when what flowed in was finite (the layer made the inf/nan itself);
            False when it arrived already non-finite from code between layers or the loss.
        nonfinite: how many values were inf/nan. total: how many values there were.
        dtype: the dtype of the tensor that held them.
        max_abs_in: the largest finite magnitude of what flowed in (inputs forward,
            grad_output backward); nan when unknown.
        order: the position of this event among the pass's layer events.
    """

    phase: str
    layer: str
    layer_type: str
    what: str
    produced_here: bool
    nonfinite: int
    total: int
    dtype: str
    max_abs_in: float
    order: int

    def describe(self) -> str:
        """One sentence for people."""
        where = f"{self.layer} ({self.layer_type})"
        if self.produced_here:
            return (f"{self.phase}: {where} produced {self.nonfinite}/{self.total} inf/nan values in "
                    f"its {self.what} ({self.dtype}) from finite inputs (largest |in| {self.max_abs_in:.4g})")
        if self.phase == "backward" and self.what == "grad_output" and self.layer == "(model)":
            return (f"backward: the gradient arriving at the model's output from the loss is already "
                    f"non-finite ({self.nonfinite}/{self.total}, {self.dtype}): loss x scale overflows "
                    f"{self.dtype} there -- the loss scale is too high")
        src = "the loss or code between layers" if self.phase == "backward" else "code between layers (or the input)"
        return (f"{self.phase}: the {self.what} of {where} is already non-finite ({self.nonfinite}/"
                f"{self.total}, {self.dtype}): it came from {src}, not from a layer")

    def __repr__(self) -> str:
        return f"LayerFault({self.describe()})"


@dataclass(frozen=True)
class NonFiniteReport:
    """What :func:`find_first_nonfinite` found.

    Attributes:
        forward: the first forward fault, or None when every activation was finite.
        backward: the first backward fault, or None (also when not searched).
        backward_searched: False when phase was "forward", or the forward was already
            non-finite (then every gradient is too, and the forward fault is the cause).
        loss: the (unscaled) loss of the batch. scale: the loss scale used backward.
        precision: the compute precision of the pass. backend: ``"torch"`` or ``"mlx"``.
    """

    forward: LayerFault | None
    backward: LayerFault | None
    backward_searched: bool
    loss: float
    scale: float
    precision: str
    backend: str

    @property
    def found(self) -> bool:
        """True when any non-finite value was found."""
        return self.forward is not None or self.backward is not None

    @property
    def first(self) -> LayerFault | None:
        """The fault to fix first: the forward one if any, else the backward one."""
        return self.forward or self.backward

    def __repr__(self) -> str:
        lines = [f"NonFiniteReport({self.backend}, {self.precision}, loss {self.loss:.4g}, scale {self.scale:g})"]
        lines.append("  " + (self.forward.describe() if self.forward else "forward: every activation finite"))
        if self.backward is not None:
            lines.append("  " + self.backward.describe())
        elif self.backward_searched:
            lines.append("  backward: every gradient finite")
        else:
            lines.append("  backward: not searched" + (" (the forward is already non-finite)"
                                                       if self.forward is not None else ""))
        return "\n".join(lines)


class LayerTable(list):
    """Rows (dicts) of per-layer numbers, in call order, with a table view for notebooks."""

    def __init__(self, rows: Any = (), title: str = "") -> None:
        super().__init__(rows)
        self.title = title

    def column(self, name: str) -> list[Any]:
        """One column over all rows."""
        return [r[name] for r in self]

    def row(self, layer: str) -> dict[str, Any]:
        """The row of one layer, by name (KeyError if absent)."""
        for r in self:
            if r["layer"] == layer:
                return r
        raise KeyError(f"no layer {layer!r}; layers: {', '.join(self.column('layer'))}")

    @staticmethod
    def _cell(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) >= 1e-3 or v == 0 or not math.isfinite(v) else f"{v:.2e}"
        return str(v)

    def __repr__(self) -> str:
        if not self:
            return f"LayerTable({self.title!r}, empty)"
        cols = list(self[0])
        width = {c: max(len(c), *(len(self._cell(r[c])) for r in self)) for c in cols}
        out = [self.title] if self.title else []
        out.append("  ".join(c.ljust(width[c]) for c in cols))
        out += ["  ".join(self._cell(r[c]).ljust(width[c]) for c in cols) for r in self]
        return "\n".join(out)

    def _repr_html_(self) -> str:
        if not self:
            return f"<p>{html.escape(self.title)}: empty</p>"
        cols = list(self[0])
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        body = "".join("<tr>" + "".join(f"<td>{html.escape(self._cell(r[c]))}</td>" for c in cols)
                       + "</tr>" for r in self)
        cap = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


# --- dispatch ----------------------------------------------------------------------------------
def backend_of(target: Any) -> str:
    """``"torch"`` or ``"mlx"`` for an engine or a framework model, without importing either."""
    from mpcourse.engines.base import Engine

    if isinstance(target, Engine):
        return target.backend
    for cls in type(target).__mro__:
        mod = getattr(cls, "__module__", "") or ""
        if mod.startswith("torch.nn"):
            return "torch"
        if mod.startswith("mlx.nn"):
            return "mlx"
    raise TypeError(f"expected an mpcourse engine, a torch.nn.Module or an mlx.nn.Module, "
                    f"got {type(target).__name__}")


def _impl(target: Any) -> Any:
    if backend_of(target) == "torch":
        from mpcourse.engines import torch_debug as impl
    else:
        from mpcourse.engines import mlx_debug as impl  # type: ignore[no-redef]
    return impl


def _x(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"x must be a numeric array of shape (n, features), got shape {x.shape} "
                         f"dtype {x.dtype}")
    return x.reshape(len(x), -1).astype(np.float32)


def _y(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be {n} integer labels (shape ({n},)), got shape {y.shape} dtype {y.dtype}")
    return y.astype(np.int64)


def _options(precision: str | None, scale: float | None, fmt: str) -> None:
    if precision is not None and precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be None, 'fp32', 'fp16' or 'bf16'; got {precision!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not (math.isfinite(scale) and scale > 0)):
        raise ValueError(f"scale must be None or a finite number > 0, got {scale!r}")
    formats.info(fmt)  # raises for an unknown format name


def find_first_nonfinite(target: Any, x: Any, y: Any = None, *, phase: str = "both",
                         scale: float | None = None, precision: str | None = None,
                         loss_fn: Any = None) -> NonFiniteReport:
    """Run one batch and name the first layer whose output (forward) or gradient (backward) is inf/nan.

    Usage: ``mpc.debug.find_first_nonfinite(eng, x, y)`` -> a :class:`NonFiniteReport`.

    Torch uses forward hooks and full backward (pre-)hooks on every submodule plus hooks on
    the parameters' gradients; MLX has no hooks, so the model tree is walked and every
    submodule is wrapped by a probe for the pass (inputs and outputs get a zero tangent whose
    gradient is the gradient flowing through that point).

    Args:
        target: an mpcourse engine, a ``torch.nn.Module`` or an ``mlx.nn.Module``.
        x: one batch of inputs, ``(n, features)``.
        y: its integer labels; needed for the backward search. Default None.
        phase: ``"forward"``, ``"backward"`` or ``"both"``. Default ``"both"``.
        scale: loss scale for the backward. Default: the engine's current scale (1.0 for a model).
        precision: compute precision. Default: the engine's (``"fp32"`` for a model).
        loss_fn: ``loss_fn(outputs, labels)``. Default: the engine's (cross-entropy for a model).
    """
    if phase not in PHASES:
        raise ValueError(f"phase must be one of {', '.join(map(repr, PHASES))}; got {phase!r}")
    _options(precision, scale, "fp16")
    xa = _x(x)
    ya = None
    if phase != "forward":
        if y is None:
            raise ValueError("y (labels) is needed to search the backward pass; pass phase='forward' without it")
        ya = _y(y, len(xa))
    return _impl(target).find_first_nonfinite(target, xa, ya, phase=phase, scale=scale,
                                              precision=precision, loss_fn=loss_fn)


def underflow_fractions(target: Any, x: Any, y: Any, *, scale: float | None = None,
                        precision: str | None = None, loss_fn: Any = None,
                        fmt: str = "fp16") -> LayerTable:
    """Per layer, the share of gradient values that are zero or subnormal in ``fmt`` at the loss scale.

    Usage: ``mpc.debug.underflow_fractions(eng, x, y)`` -> a :class:`LayerTable` with one row
    per layer that has parameters: ``layer``, ``type``, ``n`` (gradient values), and the
    fractions of :func:`underflow_stats` (``underflow`` = zero or subnormal).

    The gradients are those of one real backward pass of ``loss * scale`` in the compute
    precision (for an engine: exactly what its training step sees before unscaling), read
    per parameter and counted in ``fmt``.

    Args:
        target: an mpcourse engine, a ``torch.nn.Module`` or an ``mlx.nn.Module``.
        x, y: one batch.
        scale: the loss scale. Default: the engine's current scale (1.0 for a model).
        precision: compute precision. Default: the engine's (``"fp32"`` for a model).
        loss_fn: Default: the engine's (cross-entropy for a model).
        fmt: the format to count in. Default ``"fp16"``.
    """
    _options(precision, scale, fmt)
    xa = _x(x)
    return _impl(target).underflow_fractions(target, xa, _y(y, len(xa)), scale=scale,
                                             precision=precision, loss_fn=loss_fn, fmt=fmt)


def activation_ranges(target: Any, x: Any, *, precision: str = "fp32", fmt: str = "fp16") -> LayerTable:
    """Per layer, the largest |activation| against ``fmt``'s max (and the share that would overflow).

    Usage: ``mpc.debug.activation_ranges(eng, x)`` -> a :class:`LayerTable`, one row per leaf
    layer in call order: ``layer``, ``type``, and :func:`range_stats` of its output
    (``max_abs``, ``headroom_bits``, ``overflow``, ``underflow``, ``nonfinite``).

    Args:
        target: an mpcourse engine, a ``torch.nn.Module`` or an ``mlx.nn.Module``.
        x: one batch of inputs.
        precision: the precision the forward runs in. Default ``"fp32"``, so that values fp16
            cannot hold show their true size instead of inf.
        fmt: the format to compare against. Default ``"fp16"``.
    """
    _options(precision, None, fmt)
    return _impl(target).activation_ranges(target, _x(x), precision=precision, fmt=fmt)
