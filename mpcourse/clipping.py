"""Gradient clipping policies (norm, value, adaptive) and their framework-neutral rules.

Usage::

    import mpcourse as mpc
    from mpcourse.clipping import AGC, AutoClip, ClipByNorm, ClipByValue

    cfg = mpc.TrainConfig(precision="fp16", clip=ClipByNorm(max_norm=1.0))
    cfg = cfg.replace(clip=AutoClip(percentile=10))       # adaptive: 10th percentile of past norms
    grads, acted = ClipByValue(0.5).apply_numpy([np.array([2.0, -0.1])])   # the rule, in numpy

Every engine clips the *unscaled* gradients: after the loss scale has been divided out and
the step has been found finite, before the optimizer step. Clipping a gradient that still
carries the loss scale ``S`` compares ``S * g`` with ``max_norm``: the threshold is in effect
divided by ``S`` (65536 by default), so nearly every step is clipped, to a norm of
``max_norm / S`` whatever the true norm was.
Non-finite steps are skipped by the scaler and never clipped (and never enter AutoClip's
history). ``StepRecord.grad_norm`` is the L2 norm *before* clipping; ``StepRecord.clipped``
says whether the policy changed the gradients.

The policies:

- :class:`ClipByNorm` -- rescale all gradients together so their global p-norm is at most
  ``max_norm`` (``torch.nn.utils.clip_grad_norm_``).
- :class:`ClipByValue` -- clamp every element to ``[-clip_value, clip_value]``
  (``torch.nn.utils.clip_grad_value_``).
- :class:`AGC` -- adaptive gradient clipping, Brock et al. 2021 ("High-Performance Large-Scale
  Image Recognition Without Normalization", arXiv:2102.06171): per unit ``i``, if
  ``||G_i|| / max(||W_i||, eps) > clipping`` then ``G_i <- clipping * max(||W_i||, eps) / ||G_i|| * G_i``.
- :class:`AutoClip` -- Seetharaman et al. 2020 ("AutoClip: Adaptive Gradient Clipping for
  Source Separation Networks", arXiv:2007.14469): append this step's gradient norm to the
  history, then clip the global L2 norm to the ``percentile``-th percentile of that history.

The numpy methods here (``apply_numpy``) are the reference rules; the framework code lives in
``mpcourse/engines/torch/clip.py`` and ``mpcourse/engines/mlx/clip.py`` and is tested against
them (and against ``torch.nn.utils`` where torch has the operation).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcourse._validate import positive_finite

__all__ = [
    "ClipPolicy",
    "ClipByNorm",
    "ClipByValue",
    "AGC",
    "AutoClip",
    "NormHistory",
    "total_norm",
    "norm_clip_coef",
    "unitwise_norm",
    "autoclip_thresholds",
    "NORM_EPS",
]

#: Added to the norm in the rescaling factor, exactly as torch's clip_grad_norm_ and MLX's
#: optimizers.clip_grad_norm do, so a zero gradient never divides by zero.
NORM_EPS = 1e-6


def _as_arrays(grads: Sequence[Any]) -> list[np.ndarray]:
    return [np.asarray(g) for g in grads]


def total_norm(grads: Sequence[Any], norm_type: float = 2.0) -> float:
    """The global p-norm of a list of arrays, as if they were one flat vector.

    Usage::

        total_norm([np.ones(3), np.ones(1)])          # 2.0
        total_norm([np.array([3.0, -4.0])], math.inf)  # 4.0
    """
    arrays = [np.abs(np.asarray(g, dtype=np.float64)).ravel() for g in grads]
    if not arrays:
        return 0.0
    flat = np.concatenate(arrays)
    if flat.size == 0:
        return 0.0
    if math.isinf(norm_type):
        return float(flat.max())
    return float(np.sum(flat**norm_type) ** (1.0 / norm_type))


def norm_clip_coef(norm: float, max_norm: float) -> float:
    """The factor that norm clipping multiplies every gradient by: ``min(1, max_norm / (norm + 1e-6))``.

    Usage::

        norm_clip_coef(10.0, 1.0)   # ~0.1 -- clipped
        norm_clip_coef(0.5, 1.0)    # 1.0  -- untouched
    """
    return min(1.0, max_norm / (norm + NORM_EPS))


def unitwise_norm(x: Any) -> np.ndarray:
    """L2 norm per unit, as AGC defines a unit: one output row/filter, or a whole vector.

    A unit is a slice along axis 0 -- the output axis of a Linear weight ``(out, in)``, of a
    torch conv kernel ``(out, in, kh, kw)`` and of an MLX conv kernel ``(out, kh, kw, in)``.
    Scalars and vectors (biases, norm gains) are one unit, as in the paper's reference code.
    The result broadcasts against ``x``.

    Usage::

        unitwise_norm(np.array([[3.0, 4.0], [0.0, 1.0]]))   # [[5.], [1.]]
        unitwise_norm(np.array([3.0, 4.0]))                 # 5.0
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim <= 1:
        return np.asarray(np.sqrt(np.sum(x * x)))
    return np.sqrt(np.sum(x * x, axis=tuple(range(1, x.ndim)), keepdims=True))


class ClipPolicy:
    """Base class of every clipping policy that ``TrainConfig(clip=...)`` accepts.

    A policy is an immutable, validated configuration. Its framework-neutral rule is
    :meth:`apply_numpy`; policies with running state (AutoClip) make it with :meth:`new_state`,
    and the engine keeps that state (``engine.clip_state``) and saves it in ``state_dict``.
    """

    def new_state(self) -> NormHistory | None:
        """Fresh running state for one training run, or None for a stateless policy."""
        return None

    def apply_numpy(
        self,
        grads: Sequence[Any],
        params: Sequence[Any] | None = None,
        names: Sequence[str] | None = None,
        state: NormHistory | None = None,
    ) -> tuple[list[np.ndarray], bool]:
        """Clip numpy gradients (unscaled); return the clipped copies and whether it acted."""
        raise NotImplementedError


@dataclass(frozen=True)
class ClipByNorm(ClipPolicy):
    """Rescale all gradients together so that their global ``norm_type``-norm is <= ``max_norm``.

    Usage::

        TrainConfig(precision="fp16", clip=ClipByNorm(max_norm=1.0))
        ClipByNorm(1.0, norm_type="inf")        # the largest |g| as the "norm"

    Args:
        max_norm: the largest allowed global norm, > 0.
        norm_type: p of the p-norm: a number >= 1, or ``math.inf`` / ``"inf"``. Default 2.

    The factor is ``min(1, max_norm / (norm + 1e-6))``, as in ``torch.nn.utils.clip_grad_norm_``;
    the direction of the update is kept, only its length is capped. The step counts as clipped
    when ``norm > max_norm`` (the 1e-6 alone, which torch also applies, does not count).
    """

    max_norm: float
    norm_type: float = 2.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "max_norm", positive_finite("max_norm", self.max_norm))
        p = self.norm_type
        if isinstance(p, str) and p.lower() in ("inf", "infinity"):
            p = math.inf
        ok = (
            not isinstance(p, bool)
            and isinstance(p, (int, float, np.floating, np.integer))
            and (math.isinf(p) and p > 0 or (math.isfinite(p) and p >= 1))
        )
        if not ok:
            raise ValueError(
                f"unknown norm_type {self.norm_type!r}; allowed: a number >= 1 (1, 2, ...) or 'inf' / math.inf"
            )
        object.__setattr__(self, "norm_type", float(p))

    def apply_numpy(
        self,
        grads: Sequence[Any],
        params: Sequence[Any] | None = None,
        names: Sequence[str] | None = None,
        state: NormHistory | None = None,
    ) -> tuple[list[np.ndarray], bool]:
        gs = _as_arrays(grads)
        norm = total_norm(gs, self.norm_type)
        coef = norm_clip_coef(norm, self.max_norm)
        return [g * np.asarray(coef, dtype=g.dtype) for g in gs], norm > self.max_norm


@dataclass(frozen=True)
class ClipByValue(ClipPolicy):
    """Clamp every gradient element to ``[-clip_value, clip_value]``.

    Usage::

        TrainConfig(precision="fp16", clip=ClipByValue(clip_value=0.1))

    Args:
        clip_value: the largest allowed ``|g|``, > 0.

    Unlike norm clipping this changes the update's direction (large components shrink more).
    """

    clip_value: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "clip_value", positive_finite("clip_value", self.clip_value))

    def apply_numpy(
        self,
        grads: Sequence[Any],
        params: Sequence[Any] | None = None,
        names: Sequence[str] | None = None,
        state: NormHistory | None = None,
    ) -> tuple[list[np.ndarray], bool]:
        gs = _as_arrays(grads)
        v = self.clip_value
        acted = any(bool(np.any(np.abs(g) > v)) for g in gs)
        return [np.clip(g, -v, v) for g in gs], acted


@dataclass(frozen=True)
class AGC(ClipPolicy):
    """Adaptive gradient clipping (Brock et al. 2021): cap each unit's gradient relative to its weight.

    Usage::

        TrainConfig(precision="fp16", clip=AGC(clipping=0.01))
        AGC(clipping=0.01, exclude=("head",))    # the paper leaves the classifier layer unclipped

    Args:
        clipping: lambda, the largest allowed ratio ``||G_i|| / max(||W_i||, eps)``, > 0.
            Default 0.01 (the paper tunes it with the batch size: smaller for larger batches).
        eps: floor on the weight norm, > 0, so zero-initialised units can still move.
            Default 1e-3.
        exclude: parameter-name prefixes left unclipped. Default ``()``: every parameter.

    The rule, per unit ``i`` (see :func:`unitwise_norm`: a row of a Linear weight, an output
    filter of a conv, or a whole bias / norm gain, as in the paper's reference code)::

        if ||G_i|| / max(||W_i||, eps) > clipping:
            G_i <- clipping * max(||W_i||, eps) / ||G_i|| * G_i

    The paper does not clip the final linear layer (Section 4.1); pass ``exclude=("head",)``
    to do the same with the mpcourse zoo, whose classifier layer is named ``head``.
    ``W`` is the fp32 master weight the optimizer updates.
    """

    clipping: float = 0.01
    eps: float = 1e-3
    exclude: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "clipping", positive_finite("clipping (lambda)", self.clipping))
        object.__setattr__(self, "eps", positive_finite("eps", self.eps))
        if isinstance(self.exclude, str) or not all(isinstance(e, str) for e in self.exclude):
            raise TypeError(f"exclude must be a tuple of parameter-name prefixes, got {self.exclude!r}")
        object.__setattr__(self, "exclude", tuple(self.exclude))

    def excluded(self, name: str) -> bool:
        """Whether the parameter ``name`` is left unclipped."""
        return any(name == e or name.startswith(e + ".") for e in self.exclude)

    def apply_numpy(
        self,
        grads: Sequence[Any],
        params: Sequence[Any] | None = None,
        names: Sequence[str] | None = None,
        state: NormHistory | None = None,
    ) -> tuple[list[np.ndarray], bool]:
        if params is None or len(params) != len(grads):
            raise ValueError("AGC needs the parameters (one per gradient) to measure ||W||")
        names = list(names) if names is not None else [str(i) for i in range(len(grads))]
        out, acted = [], False
        for name, w, g in zip(names, params, _as_arrays(grads)):
            if self.excluded(name):
                out.append(g)
                continue
            max_norm = self.clipping * np.maximum(unitwise_norm(w), self.eps)
            g_norm = unitwise_norm(g)
            trigger = g_norm > max_norm
            factor = np.where(trigger, max_norm / np.maximum(g_norm, NORM_EPS), 1.0)
            acted = acted or bool(np.any(trigger))
            out.append((g * factor).astype(g.dtype))
        return out, acted


@dataclass(frozen=True)
class AutoClip(ClipPolicy):
    """AutoClip (Seetharaman et al. 2020): clip to a percentile of the gradient norms seen so far.

    Usage::

        TrainConfig(precision="fp16", clip=AutoClip(percentile=10))
        AutoClip(percentile=25, history=500)     # only the last 500 steps count

    Args:
        percentile: p in (0, 100]. Default 10 (the paper's choice).
        history: how many recent norms to keep, or None for all of them (the paper). Default None.

    Each finite step: append the step's unscaled global L2 norm to the history, then clip the
    global L2 norm to ``numpy.percentile(history, percentile)`` (norm clipping with that
    ``max_norm``). The history is the engine's state (``engine.clip_state``), saved in its
    ``state_dict``.
    """

    percentile: float = 10.0
    history: int | None = None

    def __post_init__(self) -> None:
        p = self.percentile
        if isinstance(p, bool) or not isinstance(p, (int, float, np.floating, np.integer)):
            raise TypeError(f"percentile must be a number in (0, 100], got {type(p).__name__} {p!r}")
        if not (math.isfinite(float(p)) and 0 < float(p) <= 100):
            raise ValueError(f"percentile must be in (0, 100], got {p!r}")
        object.__setattr__(self, "percentile", float(p))
        h = self.history
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 1):
            raise ValueError(f"history must be an int >= 1 (steps kept) or None (all), got {h!r}")

    def new_state(self) -> NormHistory:
        return NormHistory(self.percentile, self.history)

    def apply_numpy(
        self,
        grads: Sequence[Any],
        params: Sequence[Any] | None = None,
        names: Sequence[str] | None = None,
        state: NormHistory | None = None,
    ) -> tuple[list[np.ndarray], bool]:
        if state is None:
            raise ValueError("AutoClip needs its NormHistory state (policy.new_state())")
        gs = _as_arrays(grads)
        norm = total_norm(gs, 2.0)
        threshold = state.observe(norm)
        coef = norm_clip_coef(norm, threshold)
        return [g * np.asarray(coef, dtype=g.dtype) for g in gs], norm > threshold


class NormHistory:
    """AutoClip's running state: the gradient norms of past finite steps and the last threshold.

    Usage::

        h = AutoClip(percentile=50).new_state()
        h.observe(1.0); h.observe(3.0)      # -> 2.0, the median of [1, 3]
        h.norms, h.threshold                # array([1., 3.]), 2.0
        h.load_state_dict(h.state_dict())
    """

    def __init__(self, percentile: float, history: int | None = None) -> None:
        self.percentile = float(percentile)
        self.history = history
        self._norms: deque[float] = deque(maxlen=history)
        self.threshold = math.nan  # the last threshold observe() returned

    def observe(self, norm: float) -> float:
        """Record one finite step's norm; return the threshold to clip this step to."""
        if not math.isfinite(norm):
            raise ValueError(f"AutoClip only records finite gradient norms, got {norm!r}")
        self._norms.append(float(norm))
        self.threshold = float(np.percentile(np.fromiter(self._norms, float), self.percentile))
        return self.threshold

    @property
    def norms(self) -> np.ndarray:
        """The recorded norms, oldest first."""
        return np.fromiter(self._norms, float)

    def __len__(self) -> int:
        return len(self._norms)

    def state_dict(self) -> dict[str, Any]:
        return {
            "percentile": self.percentile,
            "history": self.history,
            "norms": list(self._norms),
            "threshold": self.threshold,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.percentile = float(state["percentile"])
        self.history = state["history"]
        self._norms = deque((float(n) for n in state["norms"]), maxlen=self.history)
        self.threshold = float(state["threshold"])

    def __repr__(self) -> str:
        return f"NormHistory(p={self.percentile:g}, {len(self)} norms, threshold={self.threshold:.4g})"


def autoclip_thresholds(
    norms: Sequence[float] | np.ndarray, percentile: float, history: int | None = None
) -> np.ndarray:
    """AutoClip's threshold at every step of a recorded norm sequence (non-finite norms skipped).

    Usage::

        thr = autoclip_thresholds(hist.grad_norms, percentile=10)   # one value per step

    Steps whose norm is not finite get the previous threshold (nan before the first finite one),
    because the engine neither clips them nor records them.
    """
    state = AutoClip(percentile, history).new_state()
    out = np.full(len(norms), math.nan)
    last = math.nan
    for i, n in enumerate(np.asarray(norms, dtype=float)):
        if math.isfinite(n):
            last = state.observe(float(n))
        out[i] = last
    return out
