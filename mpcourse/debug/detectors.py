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
    mpc.debug.diagnose(hist, reference=ref)     # the classic symptoms in a History (see debug/symptoms.py)

The detectors take an mpcourse engine (they use its model, precision, loss and current loss
scale) or a bare ``torch.nn.Module`` / ``mlx.nn.Module`` (fp32, scale 1, cross-entropy unless
you say otherwise). They run one forward (and backward) pass on the batch and leave the model
as they found it: no optimizer step, no change to weights, gradients or normalisation
statistics. The framework code lives in ``engines/torch/probes.py`` and ``engines/mlx/probes.py``
and is imported only when a detector is called.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mpcourse import formats
from mpcourse.engines.base import Engine
from mpcourse.engines.reports import LayerTable, NonFiniteReport

__all__ = ["find_first_nonfinite", "underflow_fractions", "activation_ranges", "backend_of", "PHASES"]

PHASES: tuple[str, ...] = ("forward", "backward", "both")


# --- dispatch ----------------------------------------------------------------------------------
def backend_of(target: Any) -> str:
    """``"torch"`` or ``"mlx"`` for an engine or a framework model, without importing either."""
    if isinstance(target, Engine):
        return target.backend
    for cls in type(target).__mro__:
        mod = getattr(cls, "__module__", "") or ""
        if mod.startswith("torch.nn"):
            return "torch"
        if mod.startswith("mlx.nn"):
            return "mlx"
    raise TypeError(f"expected an mpcourse engine, a torch.nn.Module or an mlx.nn.Module, got {type(target).__name__}")


def _impl(target: Any) -> Any:
    if backend_of(target) == "torch":
        from mpcourse.engines.torch import probes as impl
    else:
        from mpcourse.engines.mlx import probes as impl  # type: ignore[no-redef]
    return impl


def _x(x: Any) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2 or not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"x must be a numeric array of shape (n, features), got shape {x.shape} dtype {x.dtype}")
    return x.reshape(len(x), -1).astype(np.float32)


def _y(y: Any, n: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"y must be {n} integer labels (shape ({n},)), got shape {y.shape} dtype {y.dtype}")
    return y.astype(np.int64)


def _options(precision: str | None, scale: float | None, fmt: str) -> None:
    if precision is not None and precision not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"precision must be None, 'fp32', 'fp16' or 'bf16'; got {precision!r}")
    if scale is not None and (
        isinstance(scale, bool) or not isinstance(scale, (int, float)) or not (math.isfinite(scale) and scale > 0)
    ):
        raise ValueError(f"scale must be None or a finite number > 0, got {scale!r}")
    formats.info(fmt)  # raises for an unknown format name


def find_first_nonfinite(
    target: Any,
    x: Any,
    y: Any = None,
    *,
    phase: str = "both",
    scale: float | None = None,
    precision: str | None = None,
    loss_fn: Any = None,
) -> NonFiniteReport:
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
    return _impl(target).find_first_nonfinite(
        target, xa, ya, phase=phase, scale=scale, precision=precision, loss_fn=loss_fn
    )


def underflow_fractions(
    target: Any,
    x: Any,
    y: Any,
    *,
    scale: float | None = None,
    precision: str | None = None,
    loss_fn: Any = None,
    fmt: str = "fp16",
) -> LayerTable:
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
    return _impl(target).underflow_fractions(
        target, xa, _y(y, len(xa)), scale=scale, precision=precision, loss_fn=loss_fn, fmt=fmt
    )


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
