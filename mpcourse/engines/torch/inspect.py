"""Look inside a torch engine without training it: gradients of a batch, dtypes of each op.

Usage::

    import mpcourse as mpc
    from mpcourse.engines.torch.inspect import batch_gradients, op_dtypes

    ds = mpc.data.load("digits")
    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(precision="fp16"), data=ds)
    grads = batch_gradients(eng, ds.x_train[:64], ds.y_train[:64])   # {param name: fp32 numpy}
    rows = op_dtypes(eng, ds.x_train[:8])      # [{'op': 'addmm', 'inputs': 'float16, ...', ...}]
    weights = parameters(eng)                   # {param name: numpy copy, in its stored dtype}

Both leave the model, the optimizer and the scaler exactly as they were.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mpcourse.engines.torch.engine import TorchEngine

__all__ = ["batch_gradients", "op_dtypes", "parameters"]


def _check(engine: Any) -> TorchEngine:
    if not isinstance(engine, TorchEngine):
        raise TypeError(f"engine must be a torch engine from make_engine('torch', ...), got {type(engine).__name__}")
    return engine


def batch_gradients(engine: Any, x: np.ndarray, y: np.ndarray, *, autocast: bool = False) -> dict[str, np.ndarray]:
    """Unscaled gradients of one batch's loss, per parameter, as float64 numpy arrays.

    Args:
        engine: a torch engine.
        x, y: one batch (numpy), checked as ``fit`` checks it.
        autocast: compute in the engine's precision (True) or in fp32 (False, the true
            gradients, to ask which of them a format could hold). Default False.
    """
    eng = _check(engine)
    xb, yb = eng.arrays((x, y), "train")
    xt, yt = eng.tensors(xb, yb)
    saved = [p.grad for p in eng.model.parameters()]
    try:
        for p in eng.model.parameters():
            p.grad = None
        if autocast:
            loss = eng.forward_loss(xt, yt)
        else:
            loss = eng.loss_fn(eng.model(xt.float()).float(), yt)
        loss.backward()
        return {
            name: p.grad.detach().double().cpu().numpy()
            for name, p in eng.model.named_parameters()
            if p.grad is not None
        }
    finally:
        for p, g in zip(eng.model.parameters(), saved):
            p.grad = g


def parameters(engine: Any) -> dict[str, np.ndarray]:
    """A numpy copy of every parameter, in the dtype it is stored in (fp16 when
    ``master_weights=False``), keyed by name."""
    eng = _check(engine)
    return {name: p.detach().cpu().numpy().copy() for name, p in eng.model.named_parameters()}


class _DtypeLog(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict[str, str]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        ins = [a for a in args if isinstance(a, torch.Tensor)]
        outs = out if isinstance(out, (tuple, list)) else (out,)
        self.rows.append(
            {
                "op": func.overloadpacket.__name__,
                "inputs": ", ".join(str(t.dtype).replace("torch.", "") for t in ins),
                "output": ", ".join(str(t.dtype).replace("torch.", "") for t in outs if isinstance(t, torch.Tensor)),
            }
        )
        return out


def op_dtypes(engine: Any, x: np.ndarray, y: np.ndarray | None = None, *, unique: bool = False) -> list[dict[str, Any]]:
    """Every ATen op of one forward pass (and the loss, when ``y`` is given) under the
    engine's autocast, with the dtypes it read and wrote, in the order they ran.

    Args:
        engine: a torch engine.
        x: a batch of inputs (numpy).
        y: labels; when given, the loss is computed too. Default None.
        unique: one row per distinct (op, inputs, output), in first-seen order, with a
            ``count`` of how often it ran. Default False.
    """
    eng = _check(engine)
    xb = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    yb = np.zeros(len(xb), dtype=np.int64) if y is None else np.asarray(y)
    xt, yt = eng.tensors(*eng.arrays((xb, yb), "test"))
    was_training = eng.model.training
    eng.model.eval()
    log = _DtypeLog()
    try:
        with torch.no_grad(), log:
            with eng.autocast():
                out = eng.model(xt)
            if y is not None:
                eng.loss_fn(out.float(), yt)
    finally:
        eng.model.train(was_training)
    if not unique:
        return log.rows
    grouped: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in log.rows:
        key = (row["op"], row["inputs"], row["output"])
        grouped.setdefault(key, {**row, "count": 0})["count"] += 1
    return list(grouped.values())
