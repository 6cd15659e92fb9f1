"""Inference from a serving copy of a trained MLX model in fp32, fp16 or bf16, with its memory measured.

Usage::

    from mpcourse.engines.mlx import serving

    out = serving.predict(eng, x, "bf16", batch_size=256)   # eng trained in fp32; its model is restored after
    out["logits"]                           # numpy fp32, one row per sample
    out["weight_bytes"], out["activation_peak_bytes"], out["train_state_bytes"]

The serving copy is the model's parameters cast to the precision (no optimizer state): what a
predict phase keeps in memory. The bytes are measured, not estimated from a recipe:

- ``weight_bytes``: the ``nbytes`` of the cast arrays;
- ``activation_peak_bytes``: MLX's allocator peak (``mx.get_peak_memory``, reset just before each
  forward pass) less the memory active at that moment (the weights and the input), so it holds
  everything the forward pass allocated, scratch space included (the largest batch's);
- ``train_state_bytes``: what the training engine holds now: its master weights, the model's
  compute copy where it is a separate array, and the optimizer's state.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map

from mpcourse._validate import int_at_least
from mpcourse.engines.mlx.arrays import mx_array
from mpcourse.engines.mlx.devices import resolve_device
from mpcourse.engines.mlx.engine import DTYPES, MLXEngine

__all__ = ["predict", "train_state_bytes"]


def _array_bytes(*trees: Any) -> int:
    seen: dict[int, int] = {}
    for tree in trees:
        for _, a in tree_flatten(tree):
            if isinstance(a, mx.array):
                seen[id(a)] = a.nbytes
    return sum(seen.values())


def train_state_bytes(engine: MLXEngine) -> int:
    """Bytes the training engine holds: master weights, the model's copy (when distinct), optimizer state."""
    return _array_bytes(engine.master_params, engine.model.parameters(), engine.optimizer.state)


def predict(engine: MLXEngine, x: np.ndarray, precision: str, batch_size: int = 256) -> dict[str, Any]:
    """Logits of ``x`` from one ``precision`` copy of ``engine.model``'s weights, ``batch_size``
    samples per forward pass, and the bytes it took (the activation peak is the largest batch's)."""
    if not isinstance(engine, MLXEngine):
        raise TypeError(f"engine must be an MLXEngine, got {type(engine).__name__}")
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    batch_size = int_at_least("batch_size", batch_size, 1)
    dtype = DTYPES[precision]
    model = engine.model
    saved, was = model.parameters(), model.training
    state_bytes = train_state_bytes(engine)
    logits, peak, input_bytes = [], 0, 0
    try:
        with mx.stream(resolve_device(engine.device)):
            cast = tree_map(lambda p: p.astype(dtype) if mx.issubdtype(p.dtype, mx.floating) else p, saved)
            mx.eval(cast)
            model.update(cast)
            model.eval()
            for i in range(0, len(x), batch_size):
                xt = mx_array(np.ascontiguousarray(x[i : i + batch_size]))
                xt = xt.astype(dtype) if mx.issubdtype(xt.dtype, mx.floating) else xt
                mx.eval(xt)
                mx.synchronize()
                mx.reset_peak_memory()
                before = mx.get_active_memory()
                out = model(xt)
                mx.eval(out)
                mx.synchronize()
                peak = max(peak, mx.get_peak_memory() - before)
                logits.append(np.array(out.astype(mx.float32)))
                input_bytes = max(input_bytes, xt.nbytes)
    finally:
        model.update(saved)
        model.train(was)
    return {
        "logits": np.concatenate(logits),
        "weight_bytes": _array_bytes(cast),
        "activation_peak_bytes": peak,
        "input_bytes": input_bytes,
        "train_state_bytes": state_bytes,
        "memory_method": "MLX allocator peak during the forward pass (mx.get_peak_memory)",
        "device": engine.device,
    }
