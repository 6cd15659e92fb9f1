"""What a training run did, step by step: StepRecord and History (framework-neutral).

Usage::

    import mpcourse as mpc

    hist = mpc.make_engine("torch", "mlp").fit(mpc.data.load("digits"), epochs=1)
    hist.losses[-1], hist.scales, hist.skipped_steps, hist.overflow_rate
    mpc.History.from_json(hist.to_json())          # a lossless round trip, inf/nan included

Every engine writes one :class:`StepRecord` per optimizer step into a :class:`History`; plots,
widgets, the debugger and production read it. It lives in the core, beside the scaler, so
nothing that reads a run needs a framework.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["StepRecord", "History"]


@dataclass(frozen=True)
class StepRecord:
    """What one optimizer step did.

    Attributes:
        step: 0-based global step index.
        loss: the unscaled loss of the batch (float; nan/inf when the forward overflowed).
        scale: the loss scale this step used (1.0 without scaling).
        grad_norm: L2 norm of the unscaled gradients before clipping (inf/nan when non-finite).
        found_inf: the gradients held inf or nan.
        skipped: the optimizer step was not applied.
        seconds: wall time of the step, with the device synchronised before reading the clock.
        samples: samples in the batch.
        clipped: a clipping policy changed the gradients this step.
        epoch: the epoch this step belongs to (0-based).
        fp8: under ``precision="fp8"``, per cast tensor (``"layers.0.input"``, ``"...weight"``,
            ``"...grad_output"``): ``{"amax", "scale", "saturated", "underflowed", "numel",
            "tiles", "fmt"}`` of this step; None otherwise. See :meth:`History.fp8_trace`.
    """

    step: int
    loss: float
    scale: float
    grad_norm: float
    found_inf: bool
    skipped: bool
    seconds: float
    samples: int
    clipped: bool = False
    epoch: int = 0
    fp8: dict[str, dict[str, Any]] | None = None


@dataclass
class History:
    """The per-step record of a training run, plus what it was run with.

    ``meta`` names backend, device, model, precision and config; ``events`` holds things that
    happened at a step (e.g. a precision fallback), each a dict with at least ``step`` and
    ``kind``; ``evals`` holds evaluation results by epoch.
    """

    records: list[StepRecord] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    evals: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.records)

    def __iter__(self) -> Iterator[StepRecord]:
        return iter(self.records)

    def __getitem__(self, i: int) -> StepRecord:
        return self.records[i]

    def column(self, name: str) -> np.ndarray:
        """One StepRecord field over all steps, as a numpy array."""
        if name not in {f.name for f in dataclasses.fields(StepRecord)}:
            raise ValueError(f"unknown StepRecord field {name!r}")
        return np.array([getattr(r, name) for r in self.records])

    @property
    def losses(self) -> np.ndarray:
        return self.column("loss").astype(float)

    @property
    def scales(self) -> np.ndarray:
        return self.column("scale").astype(float)

    @property
    def grad_norms(self) -> np.ndarray:
        return self.column("grad_norm").astype(float)

    @property
    def skipped_steps(self) -> int:
        return int(sum(r.skipped for r in self.records))

    @property
    def overflow_rate(self) -> float:
        """Share of steps whose gradients were non-finite."""
        return float(np.mean([r.found_inf for r in self.records])) if self.records else 0.0

    @property
    def total_seconds(self) -> float:
        return float(sum(r.seconds for r in self.records))

    @property
    def samples_per_second(self) -> float:
        t = self.total_seconds
        return float(sum(r.samples for r in self.records) / t) if t > 0 else float("nan")

    def fp8_trace(self, key: str, field: str = "scale") -> np.ndarray:
        """One fp8 stat of one tensor over the steps (NaN where a step did not cast it).

        ``hist.fp8_trace("layers.0.grad_output", "amax")`` against ``..., "scale")`` shows
        delayed scaling's lag; ``"saturated"`` counts the values the clip hid.
        """
        keys = {k for r in self.records if r.fp8 for k in r.fp8}
        if not keys:
            raise ValueError("this History has no fp8 stats (train with precision='fp8')")
        if key not in keys:
            raise ValueError(f"unknown fp8 tensor {key!r}; this run cast {', '.join(sorted(keys))}")
        return np.array([float(r.fp8[key][field]) if r.fp8 and key in r.fp8 else np.nan for r in self.records])

    @property
    def fp8_keys(self) -> list[str]:
        """The tensors an fp8 run cast, in the order first seen."""
        return list(dict.fromkeys(k for r in self.records if r.fp8 for k in r.fp8))

    def epoch_summary(self) -> list[dict[str, Any]]:
        """Per epoch: mean finite loss, seconds, steps and skipped steps."""
        out: list[dict[str, Any]] = []
        for ep in sorted({r.epoch for r in self.records}):
            rs = [r for r in self.records if r.epoch == ep]
            finite = [r.loss for r in rs if math.isfinite(r.loss)]
            out.append(
                {
                    "epoch": ep,
                    "loss": float(np.mean(finite)) if finite else float("nan"),
                    "seconds": float(sum(r.seconds for r in rs)),
                    "steps": len(rs),
                    "skipped": int(sum(r.skipped for r in rs)),
                }
            )
        return out

    def extend(self, other: History) -> None:
        """Append another History's records, events and evals (meta of the first is kept)."""
        self.records.extend(other.records)
        self.events.extend(other.events)
        self.evals.extend(other.evals)

    def to_dict(self) -> dict[str, Any]:
        return {
            "records": [dataclasses.asdict(r) for r in self.records],
            "meta": self.meta,
            "events": self.events,
            "evals": self.evals,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        return cls(
            [StepRecord(**r) for r in d["records"]],
            dict(d.get("meta", {})),
            list(d.get("events", [])),
            list(d.get("evals", [])),
        )

    def to_json(self) -> str:
        # inf/nan are written as JSON's non-standard Infinity/NaN, which json.loads reads back.
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> History:
        return cls.from_dict(json.loads(text))

    def __repr__(self) -> str:
        if not self.records:
            return f"History(0 steps, {self.meta.get('precision', '?')})"
        return (
            f"History({len(self.records)} steps, {self.meta.get('backend', '?')}:"
            f"{self.meta.get('device', '?')} {self.meta.get('precision', '?')}, final loss "
            f"{self.records[-1].loss:.4g}, skipped {self.skipped_steps}, final scale "
            f"{self.records[-1].scale:g})"
        )
