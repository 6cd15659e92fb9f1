"""Inference from a serving copy of a trained torch model in fp32, fp16 or bf16, with its memory measured.

Usage::

    from mpcourse.engines.torch import serving

    out = serving.predict(eng, x, "bf16", batch_size=256)   # eng trained in fp32; eng.model is left as it was
    out["logits"]                           # numpy fp32, one row per sample
    out["weight_bytes"], out["activation_peak_bytes"], out["train_state_bytes"]

The serving copy is ``copy.deepcopy(eng.model)`` cast to the precision (weights and floating
buffers; no gradients, no optimizer): what a predict phase keeps in memory. The bytes are
measured, not estimated from a recipe:

- ``weight_bytes``: the storages of the copy's parameters and buffers;
- ``activation_peak_bytes``: the largest total of tensor storages alive at once while a
  forward pass runs (the largest batch's), over every aten op's outputs (a ``TorchDispatchMode`` follows each output
  until its last reference dies). Allocator overhead and kernels' internal scratch space are not
  tensors and are not in it; the input batch is counted apart, in ``input_bytes`` (the largest batch's);
- ``train_state_bytes``: what the training engine holds now: its parameters, their gradients and
  the optimizer's state tensors.
"""

from __future__ import annotations

import copy
import itertools
import weakref
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from mpcourse._validate import int_at_least
from mpcourse.engines.torch.engine import DTYPES, TorchEngine

__all__ = ["predict", "train_state_bytes", "LiveTensorBytes"]


class LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of tensor storages alive at once among the ops' outputs (see the module doc).

    Storages in ``exclude`` (by data pointer: the weights, the input) are not counted.
    """

    def __init__(self, exclude: set[int]) -> None:
        super().__init__()
        self.exclude = exclude
        self.peak = 0
        self._live: dict[int, tuple[int, list[weakref.ref[torch.Tensor]]]] = {}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr in self.exclude or storage.nbytes() == 0:
                    continue
                size, refs = self._live.get(ptr, (0, []))
                if not any(r() is not None for r in refs):  # a freed pointer used again: a new storage
                    size, refs = 0, []
                refs.append(weakref.ref(t))
                self._live[ptr] = (max(size, storage.nbytes()), refs)
        self._live = {p: e for p, e in self._live.items() if any(r() is not None for r in e[1])}
        self.peak = max(self.peak, sum(size for size, _ in self._live.values()))
        return out


def _storage_bytes(tensors: Any) -> int:
    seen: dict[int, int] = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def train_state_bytes(engine: TorchEngine) -> int:
    """Bytes the training engine holds: parameters, their gradients and the optimizer's state tensors."""
    params = list(engine.model.parameters())
    grads = [p.grad for p in params if p.grad is not None]
    state = [v for s in engine.optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    return _storage_bytes(itertools.chain(params, grads, state))


def _serving_copy(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    twin = copy.deepcopy(model)
    for p in twin.parameters():
        p.grad = None
        p.requires_grad_(False)
    return twin.to(dtype).eval()


@torch.inference_mode()
def predict(engine: TorchEngine, x: np.ndarray, precision: str, batch_size: int = 256) -> dict[str, Any]:
    """Logits of ``x`` from one ``precision`` serving copy of ``engine.model``, ``batch_size`` samples
    per forward pass, and the bytes it took (the activation peak is the largest batch's)."""
    if not isinstance(engine, TorchEngine):
        raise TypeError(f"engine must be a TorchEngine, got {type(engine).__name__}")
    if precision not in DTYPES:
        raise ValueError(f"precision must be one of {sorted(DTYPES)}, got {precision!r}")
    batch_size = int_at_least("batch_size", batch_size, 1)
    dtype = DTYPES[precision]
    model = _serving_copy(engine.model, dtype)
    weights = list(itertools.chain(model.parameters(), model.buffers()))
    logits, peak, input_bytes = [], 0, 0
    for i in range(0, len(x), batch_size):
        xt = torch.from_numpy(np.ascontiguousarray(x[i : i + batch_size])).to(engine.torch_device)
        if xt.is_floating_point():
            xt = xt.to(dtype)
        probe = LiveTensorBytes({t.untyped_storage().data_ptr() for t in [*weights, xt]})
        with probe:
            out = model(xt)
        logits.append(out.float().cpu().numpy())
        peak, input_bytes = max(peak, probe.peak), max(input_bytes, xt.untyped_storage().nbytes())
    return {
        "logits": np.concatenate(logits),
        "weight_bytes": _storage_bytes(weights),
        "activation_peak_bytes": peak,
        "input_bytes": input_bytes,
        "train_state_bytes": train_state_bytes(engine),
        "memory_method": "tensor storages alive at once, followed op by op (TorchDispatchMode)",
        "device": engine.device,
    }
