"""What each precision and scaler did to each zoo model, measured: a table instead of adjectives.

Usage::

    import mpcourse as mpc
    from mpcourse.studies import model_table

    rows = model_table.measure(mpc.data.load("digits"), steps=46)   # every zoo model x DEFAULT_SETUPS
    print(model_table.format_rows(rows))
    # model  setup           final_loss  vs_fp32  accuracy  skipped  overflow  zero_grad  ms_per_step ...

Each row is one real run of ``steps`` steps with the same seed, weights and data order: the
final loss (mean of the last 10 steps), its ratio to the same model's fp32 run, the test
accuracy, the skipped and all-zero-gradient steps, the overflow rate, and the median step time
with its p10-p90 range (timings depend on the machine: read them where they were measured).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from mpcourse._validate import int_at_least
from mpcourse.config import TrainConfig
from mpcourse.data import Dataset
from mpcourse.engines import make_engine
from mpcourse.engines.zoo import ZOO
from mpcourse.studies import runs
from mpcourse.studies.clip_study import format_table

__all__ = ["DEFAULT_SETUPS", "MODELS", "measure", "format_rows"]

MODELS: tuple[str, ...] = ("mlp", "deep_mlp", "cnn", "lstm", "transformer")

#: The precision and scaler settings compared for each model (fp32 first: the reference).
DEFAULT_SETUPS: dict[str, TrainConfig] = {
    "fp32": TrainConfig(),
    "fp16, dynamic": TrainConfig(precision="fp16", loss_scale="dynamic"),
    "fp16, no scaling": TrainConfig(precision="fp16", loss_scale="none"),
    "bf16, no scaling": TrainConfig(precision="bf16", loss_scale="none"),
}


def measure(
    data: Dataset,
    *,
    models: Sequence[str] = MODELS,
    setups: Mapping[str, TrainConfig] | None = None,
    steps: int = 46,
    backend: str = "torch",
    device: str = "cpu",
) -> list[dict[str, Any]]:
    """Train every model under every setup for ``steps`` steps; one row per (model, setup).

    Args:
        data: the task.
        models: zoo model names. Default :data:`MODELS`.
        setups: name -> TrainConfig; the first is the reference for ``vs_fp32``. Default
            :data:`DEFAULT_SETUPS`.
        steps: steps per run, >= 10 (the final loss averages the last 10). Default 46.
        backend, device: as for ``make_engine``. Defaults "torch", "cpu".
    """
    setups = dict(DEFAULT_SETUPS if setups is None else setups)
    if not setups:
        raise ValueError("setups must name at least one TrainConfig")
    unknown = [m for m in models if m not in ZOO]
    if unknown:
        raise ValueError(f"unknown model(s) {unknown}; the zoo has {', '.join(ZOO)}")
    int_at_least("steps", steps, 10)
    from mpcourse.engines.losses import cross_entropy

    weight = runs.loss_weight_of(data)  # the "underflow" task trains on a weighted loss
    loss_fn = None if weight == 1.0 else cross_entropy(backend, weight)
    rows: list[dict[str, Any]] = []
    for model in models:
        ref_loss = None
        for name, cfg in setups.items():
            eng = make_engine(backend, model, cfg, device=device, data=data, loss_fn=loss_fn, verbose=False)
            h = eng.fit(data, steps=steps, progress=False)
            final = float(np.mean(h.losses[-10:])) / weight  # in nats, whatever the loss weight
            ref_loss = final if ref_loss is None else ref_loss
            ms = 1e3 * h.column("seconds").astype(float)[min(5, steps - 1) :]
            rows.append(
                {
                    "model": model,
                    "setup": name,
                    "final_loss": final,
                    "vs_fp32": final / ref_loss if ref_loss else float("nan"),
                    "accuracy": float(eng.evaluate(data)["accuracy"]),
                    "skipped": int(h.skipped_steps),
                    "overflow": float(h.overflow_rate),
                    "zero_grad": int(np.sum(h.grad_norms == 0)),
                    "ms_per_step": float(np.median(ms)),
                    "ms_p10_p90": f"{np.percentile(ms, 10):.1f}-{np.percentile(ms, 90):.1f}",
                }
            )
    return rows


def format_rows(rows: Sequence[Mapping[str, Any]]) -> str:
    """The rows as a plain-text table (numbers to 3 decimals)."""
    return format_table(rows)
