"""What MLX computes in which dtype: every layer of one forward pass, the loss, and the gradients.

Usage::

    import mpcourse as mpc
    from mpcourse.engines.mlx.inspect import op_dtypes

    ds = mpc.data.load("digits")
    eng = mpc.make_engine("mlx", "mlp", mpc.TrainConfig(precision="bf16"), data=ds)
    rows = op_dtypes(eng, ds.x_train[:8], ds.y_train[:8], backward=True)
    rows[0]   # {'phase': 'forward', 'op': 'Linear', 'name': 'layers.0', 'inputs': 'bfloat16',
              #  'params': 'bfloat16', 'output': 'bfloat16', 'reason': 'follows its inputs'}

    import mlx.nn as nn
    net = nn.Linear(4, 2); net.update(...bf16 weights...)   # any MLX model, as it is
    op_dtypes(net, x)          # bf16 weights @ fp32 input -> 'float32', 'type promotion: ...'

MLX has no autocast: the engine casts the parameters and the input to the compute dtype itself,
and every op then computes in the dtype its operands promote to (``bf16 @ fp32 -> fp32``). So
the dtypes are read off the computation graph where it is built: each submodule's inputs, own
parameters and outputs (through the same probes as :mod:`mpcourse.engines.mlx.probes`), then the
loss, then, with ``backward=True``, the dtype of each parameter's gradient. The model is left
exactly as it was.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

from mpcourse.engines.base import Engine
from mpcourse.engines.mlx.engine import DTYPES, default_loss
from mpcourse.engines.mlx.probes import probed

__all__ = ["op_dtypes"]


def _dt(a: mx.array) -> str:
    return str(a.dtype).replace("mlx.core.", "")


def _floats(arrs: list[mx.array]) -> list[mx.array]:
    return [a for a in arrs if mx.issubdtype(a.dtype, mx.floating)]


def _reason(inputs: list[str], outputs: list[str]) -> str:
    kinds = set(inputs)
    if len(kinds) > 1 and outputs and outputs[0] == "float32":
        return "type promotion: mixed inputs compute in the wider one"
    return "follows its inputs"


def op_dtypes(
    target: Any, x: np.ndarray, y: np.ndarray | None = None, *, backward: bool = False, loss_fn: Any = None
) -> list[dict[str, Any]]:
    """The dtypes of one forward pass of an MLX engine's model (in its compute precision) or of
    any MLX model (as it is): one row per leaf submodule call, then the loss, then the gradients.

    Args:
        target: an MLX engine from ``make_engine("mlx", ...)``, or an ``mlx.nn.Module``.
        x: a batch of inputs (numpy). An engine casts it to its compute dtype; a plain model
            gets it in fp32.
        y: labels; when given, the loss is computed too (in fp32, as the engine does). Default None.
        backward: also differentiate the loss and record each parameter's gradient dtype;
            needs ``y``. Default False.
        loss_fn: the loss for a plain model. Default: the engines' cross-entropy.

    Returns:
        Rows with ``phase`` ("forward", "loss", "backward"), ``op`` (the module type, or the
        step), ``name`` (the layer path or parameter), ``inputs``, ``params``, ``output`` (dtype
        names) and ``reason``.
    """
    if backward and y is None:
        raise ValueError("op_dtypes(backward=True) needs the labels y: the backward pass starts at the loss")
    if isinstance(target, Engine):
        if target.backend != "mlx":
            raise TypeError(f"target must be an MLX engine or an mlx.nn.Module, got a {target.backend} engine")
        model, dtype = target.model, DTYPES[target.config.precision]
        loss = loss_fn or target.loss_fn
        master = target.master_params  # type: ignore[attr-defined]
    elif isinstance(target, nn.Module):
        model, dtype, loss, master = target, None, loss_fn or default_loss, None
    else:
        raise TypeError(f"target must be an MLX engine or an mlx.nn.Module, got {type(target).__name__}")
    xa = mx.array(np.asarray(x, dtype=np.float32).reshape(len(x), -1))
    if dtype is not None:
        xa = xa.astype(dtype)
    saved = model.parameters()
    rows: list[dict[str, Any]] = []
    try:
        with probed(model) as (root, log):
            out = root(xa)
        for call in log.calls:
            if call.children:
                continue  # containers: their leaves are listed
            own = [a for _, a in tree_flatten(call.module.parameters()) if isinstance(a, mx.array)]
            ins = [_dt(a) for a in _floats(call.inputs)]
            outs = [_dt(a) for a in call.outputs]
            prm = sorted({_dt(a) for a in _floats(own)})
            rows.append(
                {
                    "phase": "forward",
                    "op": type(call.module).__name__,
                    "name": call.name or "(model)",
                    "inputs": ", ".join(ins),
                    "params": ", ".join(prm),
                    "output": ", ".join(outs),
                    "reason": _reason(ins + prm, outs),
                }
            )
        if y is not None:
            ya = mx.array(np.asarray(y).astype(np.int32))
            logits = out.astype(mx.float32)
            value = loss(logits, ya)
            rows.append(
                {
                    "phase": "loss",
                    "op": "astype + loss",
                    "name": "loss",
                    "inputs": _dt(out),
                    "params": "",
                    "output": _dt(value),
                    "reason": "the code casts the logits to fp32 before the loss",
                }
            )
        if backward:
            params = master if master is not None else saved

            def of(p: Any) -> mx.array:
                model.update(p if dtype is None else tree_map(lambda a: a.astype(dtype), p))
                return loss(model(xa).astype(mx.float32), ya)

            grads = mx.grad(of)(params)
            pdt = dict(tree_flatten(tree_map(_dt, params)))
            for name, g in tree_flatten(grads):
                rows.append(
                    {
                        "phase": "backward",
                        "op": "grad",
                        "name": name,
                        "inputs": "",
                        "params": pdt[name],
                        "output": _dt(g),
                        "reason": "the gradient of a parameter has the parameter's dtype"
                        + (" (the fp32 master: the cast's backward returns fp32)" if master is not None else ""),
                    }
                )
    finally:
        model.update(saved)
    return rows
