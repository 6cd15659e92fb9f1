"""The predict phase: serve a model trained in fp32 from a bf16 (or fp16) copy, with its memory measured.

Usage::

    import mpcourse as mpc
    from mpcourse import production as prod

    ds = mpc.data.load("digits")
    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(), data=ds)   # trained in fp32
    eng.fit(ds, epochs=3)
    rep = prod.predict_phase(eng, ds, "bf16")   # the test split, predicted by an fp32 and a bf16 copy
    print(rep.format())                         # accuracy, agreement with fp32, bytes of each copy
    rep.saved_fraction                          # weights + activations, against the fp32 copy

The training phases stay as they are (fp32 here): the serving copy is made from the trained
model and thrown away, the engine, its optimizer and its scaler are left untouched. A predict
phase keeps no gradients and no optimizer state, so its memory is the weights plus the
activations of one batch, and both halve in 16 bits. The bytes are measured by the framework's
``serving`` module (``mpcourse.engines.<framework>.serving``): torch follows every op's output
tensors, MLX reads its allocator's peak.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from mpcourse._validate import int_at_least
from mpcourse.engines import Engine
from mpcourse.production.fallback import check_precision

__all__ = ["PredictCopy", "PredictReport", "predict_phase"]


@dataclass(frozen=True, kw_only=True)
class PredictCopy:
    """What one serving copy did over the test split: its accuracy and its measured bytes."""

    precision: str
    accuracy: float | None
    weight_bytes: int
    activation_peak_bytes: int

    @property
    def total_bytes(self) -> int:
        """Weights plus the largest batch's activations."""
        return self.weight_bytes + self.activation_peak_bytes


@dataclass(frozen=True, kw_only=True)
class PredictReport:
    """A predict phase in ``precision`` beside the fp32 copy of the same trained weights."""

    backend: str
    device: str
    samples: int
    batch_size: int
    train_precision: str
    train_state_bytes: int
    serving: PredictCopy
    reference: PredictCopy
    agreement: float
    max_logit_diff: float
    memory_method: str

    @property
    def saved_fraction(self) -> float:
        """Share of the fp32 copy's weights + activations that the serving copy does not need."""
        return 1 - self.serving.total_bytes / self.reference.total_bytes

    def format(self) -> str:
        """A few lines: each copy's accuracy and bytes, the agreement, and the training state."""
        lines = [f"predict phase on {self.backend} {self.device}: {self.samples} samples, batch {self.batch_size}"]
        for c in (self.reference, self.serving):
            acc = "n/a" if c.accuracy is None else f"{c.accuracy:.4f}"
            lines.append(
                f"  {c.precision:<5} copy: accuracy {acc}, weights {c.weight_bytes / 1024:.1f} KiB, "
                f"activation peak {c.activation_peak_bytes / 1024:.1f} KiB"
            )
        lines.append(
            f"  {self.serving.precision} vs fp32: same class for {self.agreement:.2%} of samples, "
            f"largest logit difference {self.max_logit_diff:.3g}, {self.saved_fraction:.1%} less memory"
        )
        lines.append(
            f"  training ({self.train_precision}) holds {self.train_state_bytes / 1024:.1f} KiB of weights, "
            "gradients and optimizer state"
        )
        lines.append(f"  bytes measured as: {self.memory_method}")
        return "\n".join(lines)


def predict_phase(engine: Engine, data: Any, precision: str = "bf16", *, batch_size: int = 256) -> PredictReport:
    """Predict ``data``'s test split from a ``precision`` copy and an fp32 copy of ``engine``'s model.

    Args:
        engine: a trained engine (any precision; ``eng.config.precision`` is reported as the
            training precision). It is not changed.
        data: a Dataset (its test split) or an ``(x, y)`` pair, as for ``engine.evaluate``.
        precision: the serving precision, ``"bf16"`` (default), ``"fp16"`` or ``"fp32"``.
        batch_size: samples per forward pass, an int >= 1 (the activation peak is the largest
            batch's). Default 256.
    """
    if not isinstance(engine, Engine):
        raise TypeError(f"engine must be an mpcourse Engine, got {type(engine).__name__}")
    precision = check_precision("precision", precision)
    batch_size = int_at_least("batch_size", batch_size, 1)
    x, y = engine.arrays(data, "test")
    if len(x) == 0:
        raise ValueError("data's test split has no samples: the predict phase needs at least one")
    serving = importlib.import_module(f"mpcourse.engines.{engine.backend}.serving")
    ref = serving.predict(engine, x, "fp32", batch_size)
    out = serving.predict(engine, x, precision, batch_size)
    ref_logits, logits = ref["logits"], out["logits"]
    labels = engine.is_labels(y)

    def accuracy(z: np.ndarray) -> float | None:
        return float(np.mean(z.argmax(axis=-1) == y)) if labels else None

    def copy_of(p: str, z: np.ndarray, o: dict[str, Any]) -> PredictCopy:
        return PredictCopy(
            precision=p,
            accuracy=accuracy(z),
            weight_bytes=o["weight_bytes"],
            activation_peak_bytes=o["activation_peak_bytes"],
        )

    return PredictReport(
        backend=engine.backend,
        device=out["device"],
        samples=len(x),
        batch_size=batch_size,
        train_precision=engine.config.precision,
        train_state_bytes=out["train_state_bytes"],
        serving=copy_of(precision, logits, out),
        reference=copy_of("fp32", ref_logits, ref),
        agreement=float(np.mean(logits.argmax(axis=-1) == ref_logits.argmax(axis=-1))),
        max_logit_diff=float(np.max(np.abs(logits - ref_logits))),
        memory_method=out["memory_method"],
    )
