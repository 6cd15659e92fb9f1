"""Look inside a torch engine without training it: gradients of a batch, dtypes of each op.

Usage::

    import mpcourse as mpc
    from mpcourse.engines.torch.inspect import batch_gradients, op_dtypes

    ds = mpc.data.load("digits")
    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(precision="fp16"), data=ds)
    grads = batch_gradients(eng, ds.x_train[:64], ds.y_train[:64])   # {param name: fp32 numpy}
    rows = op_dtypes(eng, ds.x_train[:8])      # [{'op': 'addmm', 'inputs': 'float16, ...', ...}]
    rows = op_dtypes(eng, ds.x_train[:8], ds.y_train[:8], backward=True, unique=True)
    rows[0]["phase"], rows[0]["reason"]         # 'forward', 'cast inserted by autocast or the code'
    weights = parameters(eng)                   # {param name: numpy copy, in its stored dtype}
    AUTOCAST_FP32_OPS["cpu"]                    # the ops autocast runs in fp32, from the torch docs

Both leave the model, the optimizer and the scaler exactly as they were.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from mpcourse.engines.torch.engine import TorchEngine

__all__ = [
    "AUTOCAST_LOWER_OPS",
    "AUTOCAST_FP32_OPS",
    "AUTOCAST_SOURCE",
    "autocast_list",
    "batch_gradients",
    "op_dtypes",
    "parameters",
]

#: Where the two lists below are quoted from.
AUTOCAST_SOURCE = (
    "PyTorch documentation, torch.amp, 'Autocast Op Reference' (docs.pytorch.org/docs/stable/amp.html): "
    "'CUDA Ops that can autocast to float16/float32', 'CPU Ops that can autocast to bfloat16/float32'"
)

#: Ops autocast runs in the 16-bit dtype, per device type, as the torch docs list them.
AUTOCAST_LOWER_OPS: dict[str, tuple[str, ...]] = {
    "cuda": (
        "__matmul__", "addbmm", "addmm", "addmv", "addr", "baddbmm", "bmm", "chain_matmul", "multi_dot",
        "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "GRUCell",
        "linear", "LSTMCell", "matmul", "mm", "mv", "prelu", "RNNCell",
    ),
    "cpu": (
        "conv1d", "conv2d", "conv3d", "bmm", "mm", "linalg_vecdot", "baddbmm", "addmm", "addbmm", "linear",
        "_convolution", "matmul", "conv_tbc", "mkldnn_rnn_layer", "conv_transpose1d", "conv_transpose2d",
        "conv_transpose3d", "prelu", "scaled_dot_product_attention", "_native_multi_head_attention",
    ),
}  # fmt: skip

#: Ops autocast runs in fp32, per device type, as the torch docs list them (the CPU list also
#: has the fft_* and linalg_* families, shortened here to those two patterns).
AUTOCAST_FP32_OPS: dict[str, tuple[str, ...]] = {
    "cuda": (
        "__pow__", "__rdiv__", "__rpow__", "__rtruediv__", "acos", "asin", "binary_cross_entropy_with_logits",
        "cosh", "cosine_embedding_loss", "cdist", "cosine_similarity", "cross_entropy", "cumprod", "cumsum",
        "dist", "erfinv", "exp", "expm1", "group_norm", "hinge_embedding_loss", "kl_div", "l1_loss",
        "layer_norm", "log", "log_softmax", "log10", "log1p", "log2", "margin_ranking_loss", "mse_loss",
        "multilabel_margin_loss", "multi_margin_loss", "nll_loss", "norm", "normalize", "pdist",
        "poisson_nll_loss", "pow", "prod", "reciprocal", "rsqrt", "sinh", "smooth_l1_loss", "soft_margin_loss",
        "softmax", "softmin", "softplus", "sum", "renorm", "tan", "triplet_margin_loss",
    ),
    "cpu": (
        "avg_pool3d", "binary_cross_entropy", "grid_sampler", "polar", "prod", "quantile", "nanquantile",
        "stft", "cdist", "trace", "view_as_complex", "cholesky", "cholesky_inverse", "cholesky_solve",
        "inverse", "lu_solve", "orgqr", "ormqr", "pinverse", "max_pool3d", "max_unpool2d", "max_unpool3d",
        "adaptive_avg_pool3d", "reflection_pad1d", "reflection_pad2d", "replication_pad1d",
        "replication_pad2d", "replication_pad3d", "mse_loss", "cosine_embedding_loss", "nll_loss",
        "nll_loss2d", "hinge_embedding_loss", "poisson_nll_loss", "cross_entropy_loss", "smooth_l1_loss",
        "huber_loss", "margin_ranking_loss", "soft_margin_loss", "triplet_margin_loss", "multi_margin_loss",
        "ctc_loss", "kl_div", "multilabel_margin_loss", "binary_cross_entropy_with_logits", "fft_*", "linalg_*",
        "geqrf", "_lu_with_info", "qr", "svd", "triangular_solve", "fractional_max_pool2d",
        "fractional_max_pool3d", "adaptive_max_pool3d", "multilabel_margin_loss_forward",
    ),
}  # fmt: skip

_SIXTEEN = ("float16", "bfloat16")


def _doc_name(aten: str) -> str:
    """The docs' name for an ATen op: ``native_layer_norm`` -> ``layer_norm``, ``_log_softmax`` ->
    ``log_softmax``, ``nll_loss_forward`` -> ``nll_loss``, the SDPA kernels -> ``scaled_dot_product_attention``."""
    if aten.startswith("_scaled_dot_product"):
        return "scaled_dot_product_attention"
    name = aten.removeprefix("native_").lstrip("_")
    for suffix in ("_forward", "_backward"):
        name = name.removesuffix(suffix)
    return name


def autocast_list(op: str, device_type: str) -> str | None:
    """Which of autocast's lists (``"16-bit"``, ``"fp32"``) the docs put ``op`` on for
    ``device_type`` ("cpu" or "cuda"; "mps" and others read as "cuda"), or None."""
    dev = "cpu" if device_type == "cpu" else "cuda"
    name = _doc_name(op)
    if name in AUTOCAST_LOWER_OPS[dev]:
        return "16-bit"
    if any(name == o or (o.endswith("*") and name.startswith(o[:-1])) for o in AUTOCAST_FP32_OPS[dev]):
        return "fp32"
    return None


def _reason(row: dict[str, Any], device_type: str) -> str:
    ins = [d for d in row["inputs"].split(", ") if d]
    out = row["output"].split(", ")[0] if row["output"] else ""
    if row["op"] == "_to_copy":
        return "cast inserted by autocast or the code"
    floats = {d for d in ins if d.startswith(("float", "bfloat"))}
    if row["phase"] == "backward":
        return "backward: in its forward's dtypes" if len(floats) <= 1 else "backward: mixed input dtypes"
    listed = autocast_list(row["op"], device_type)
    if listed == "16-bit" and out in _SIXTEEN:
        return f"autocast's 16-bit list ({device_type})"
    if listed == "fp32" and out == "float32":
        return f"autocast's fp32 list ({device_type})"
    if len(floats) > 1 and out == "float32":
        return "type promotion: mixed inputs compute in the wider one"
    return "follows its inputs"


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


def op_dtypes(
    engine: Any, x: np.ndarray, y: np.ndarray | None = None, *, unique: bool = False, backward: bool = False
) -> list[dict[str, Any]]:
    """Every ATen op of one forward pass (and the loss, when ``y`` is given; and the backward
    pass, with ``backward=True``) under the engine's autocast, with the dtypes it read and wrote.

    Each row: ``op``, ``inputs`` and ``output`` (dtype names), ``phase`` ("forward" or
    "backward") and ``reason``: why the op ran in that dtype -- autocast's 16-bit or fp32 list
    for this device (:data:`AUTOCAST_LOWER_OPS`, :data:`AUTOCAST_FP32_OPS`), type promotion
    (mixed inputs compute in the wider one), a cast, or simply its inputs' dtype.

    Args:
        engine: a torch engine.
        x: a batch of inputs (numpy).
        y: labels; when given, the loss is computed too. Default None.
        unique: one row per distinct (phase, op, inputs, output), in first-seen order, with a
            ``count`` of how often it ran. Default False.
        backward: also run the backward pass of the (unscaled) loss and log its ops; needs
            ``y``. The model's gradients are put back as they were. Default False.
    """
    eng = _check(engine)
    if backward and y is None:
        raise ValueError("op_dtypes(backward=True) needs the labels y: the backward pass starts at the loss")
    xb = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    yb = np.zeros(len(xb), dtype=np.int64) if y is None else np.asarray(y)
    xt, yt = eng.tensors(*eng.arrays((xb, yb), "test"))
    was_training = eng.model.training
    saved = [p.grad for p in eng.model.parameters()]
    eng.model.eval()
    log = _DtypeLog()
    try:
        with torch.set_grad_enabled(backward), log:
            with eng.autocast():
                out = eng.model(xt)
            if y is not None:
                loss = eng.loss_fn(out.float(), yt)
            n_forward = len(log.rows)
            if backward:
                for p in eng.model.parameters():
                    p.grad = None
                loss.backward()
    finally:
        eng.model.train(was_training)
        for p, g in zip(eng.model.parameters(), saved):
            p.grad = g
    device_type = eng.torch_device.type
    for i, row in enumerate(log.rows):
        row["phase"] = "forward" if i < n_forward else "backward"
        row["reason"] = _reason(row, device_type)
    if not unique:
        return log.rows
    grouped: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for row in log.rows:
        key = (row["phase"], row["op"], row["inputs"], row["output"])
        grouped.setdefault(key, {**row, "count": 0})["count"] += 1
    return list(grouped.values())
