"""Precision per phase of a run, and what each precision costs in memory.

Usage::

    from mpcourse import production as prod

    sched = prod.PrecisionSchedule([prod.Phase(0, "fp32"), prod.Phase(50, "fp16")])
    sched.precision_at(60)                         # 'fp16'
    prod.estimate_memory(eng, x, precision="bf16")  # a MemoryEstimate, counted from the model

The per-phase idea is the hybrid-training guide's: each phase of a run (or of its life: train,
then predict) may take the precision that suits it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcourse.engines import Engine
from mpcourse.production.fallback import check_precision

__all__ = ["Phase", "MemoryEstimate", "estimate_memory", "PrecisionSchedule"]


# --- precision phases and memory ------------------------------------------------------------------
@dataclass(frozen=True)
class Phase:
    """A stretch of training in one precision; ``steps=None`` runs to the end."""

    name: str
    precision: str
    steps: int | None = None

    def __post_init__(self) -> None:
        check_precision(f"phase {self.name!r} precision", self.precision)
        if self.steps is not None and (
            isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1
        ):
            raise ValueError(f"phase {self.name!r}: steps must be an int >= 1 or None, got {self.steps!r}")


@dataclass(frozen=True, kw_only=True)
class MemoryEstimate:
    """Estimated training memory in one precision (bytes), from real parameter and activation counts.

    An estimate, not a measurement: fp32 master weights, fp32 gradients and optimizer state,
    a half-precision copy of the weights for the forward (autocast keeps one), and every leaf
    layer's output kept for backward at the compute width. Allocator overhead, workspaces and
    the ops autocast keeps in fp32 (softmax, norms, the loss) are left out.
    """

    precision: str
    parameters: int
    activations: int
    batch_size: int
    weights: int
    grads: int
    optimizer: int
    compute_copy: int
    activation_bytes: int

    @property
    def total(self) -> int:
        return self.weights + self.grads + self.optimizer + self.compute_copy + self.activation_bytes

    def saved_vs(self, reference: MemoryEstimate) -> int:
        """Bytes saved compared with ``reference`` (negative: this one needs more)."""
        return reference.total - self.total


def estimate_memory(engine: Engine, x: np.ndarray, precision: str | None = None) -> MemoryEstimate:
    """Estimate training memory of ``engine``'s model at ``precision`` for the batch ``x``.

    The counts are real (the framework's parameters; one forward pass over ``x`` with every
    leaf layer's output size recorded); the bytes per value follow the recipe (see
    :class:`MemoryEstimate`).
    """
    from mpcourse.engines.portable import activation_count, parameter_count

    precision = check_precision("precision", precision or engine.config.precision)
    x = np.asarray(x, dtype=np.float32)
    p, a = parameter_count(engine), activation_count(engine, x)
    width = 4 if precision == "fp32" else 2
    states = {"adam": 2, "adamw": 2, "sgd": 1 if engine.config.momentum > 0 else 0}[engine.config.optimizer]
    return MemoryEstimate(
        precision=precision,
        parameters=p,
        activations=a,
        batch_size=len(x),
        weights=4 * p,
        grads=4 * p,
        optimizer=4 * p * states,
        compute_copy=0 if precision == "fp32" else 2 * p,
        activation_bytes=width * a,
    )


class PrecisionSchedule:
    """Precision by training phase: e.g. an fp32 warm-up, then fp16.

    Usage::

        s = PrecisionSchedule.fp32_warmup(100, then="fp16")
        s = PrecisionSchedule.from_map({"warmup": "fp32", "main": "bf16", "finetune": "fp32"},
                                       steps={"warmup": 100, "main": 800})  # the last runs on
        s.phase_at(150).precision                 # 'bf16'
        s.memory_estimates(eng, ds.x_train[:64])  # one MemoryEstimate per phase
        s = PrecisionSchedule.fp32_warmup(100, then="fp32", predict="bf16")
        prod.predict_phase(trained_engine, ds, s.predict)   # trained in fp32, served in bf16

    Args:
        phases: Phase objects or ``(name, precision, steps)`` tuples; every phase but the
            last needs a step count.
        predict: the precision of the predict phase after training (see
            :func:`mpcourse.production.predict_phase`), or None (default) for none.
    """

    def __init__(self, phases: Sequence[Phase | tuple[Any, ...]], *, predict: str | None = None) -> None:
        self.predict = None if predict is None else check_precision("predict", predict)
        self.phases = tuple(p if isinstance(p, Phase) else Phase(*p) for p in phases)
        if not self.phases:
            raise ValueError("a PrecisionSchedule needs at least one phase")
        if any(p.steps is None for p in self.phases[:-1]):
            raise ValueError("every phase but the last needs steps=<int> (only the last may run to the end)")

    @classmethod
    def fp32_warmup(cls, warmup_steps: int, then: str = "fp16", *, predict: str | None = None) -> PrecisionSchedule:
        """``warmup_steps`` in fp32, then ``then`` to the end (and ``predict`` after training)."""
        return cls([Phase("warmup", "fp32", warmup_steps), Phase("main", then)], predict=predict)

    @classmethod
    def from_map(
        cls, precisions: Mapping[str, str], steps: Mapping[str, int], *, predict: str | None = None
    ) -> PrecisionSchedule:
        """Phases in the mapping's order; ``steps`` names every phase's length but the last's."""
        unknown = set(steps) - set(precisions)
        if unknown:
            raise ValueError(f"steps names phases {sorted(unknown)} that precisions lacks")
        names = list(precisions)
        return cls([Phase(n, precisions[n], steps.get(n)) for n in names], predict=predict)

    def starts(self) -> list[int]:
        """The first step of each phase."""
        out, at = [], 0
        for p in self.phases:
            out.append(at)
            at += p.steps or 0
        return out

    def phase_at(self, step: int) -> Phase:
        """The phase that global ``step`` belongs to (the last one after every length ran out)."""
        for start, p in zip(self.starts(), self.phases):
            if p.steps is None or step < start + p.steps:
                return p
        return self.phases[-1]

    def next_boundary(self, step: int) -> int | None:
        """The first phase start after ``step``, or None."""
        return next((s for s in self.starts() if s > step), None)

    def memory_estimates(self, engine: Engine, x: np.ndarray) -> list[dict[str, Any]]:
        """Per phase: its estimate and the bytes it saves against fp32 (see :func:`estimate_memory`)."""
        ref = estimate_memory(engine, x, "fp32")
        out = []
        for p in self.phases:
            est = estimate_memory(engine, x, p.precision)
            out.append(
                {
                    "phase": p.name,
                    "precision": p.precision,
                    "steps": p.steps,
                    "estimate_bytes": est.total,
                    "saved_bytes": est.saved_vs(ref),
                    "saved_fraction": est.saved_vs(ref) / ref.total,
                    "estimate": est,
                }
            )
        return out

    def __repr__(self) -> str:
        phases = ", ".join(f"{p.name}:{p.precision}x{p.steps or 'rest'}" for p in self.phases)
        return f"PrecisionSchedule({phases}" + ("" if self.predict is None else f"; predict:{self.predict}") + ")"
