"""PyTorch detectors behind :mod:`mpcourse.debug`: hooks that watch every layer for one batch.

Usage (through :mod:`mpcourse.debug`, which dispatches here for torch engines and modules)::

    import mpcourse as mpc

    mpc.debug.find_first_nonfinite(eng, x, y)   # forward hooks + full backward (pre-)hooks
    mpc.debug.underflow_fractions(eng, x, y)    # gradients of loss * scale, counted in fp16
    mpc.debug.activation_ranges(model, x)       # leaf outputs against fp16's max

Hooks fire in execution order: a forward hook when a module returns (children before their
parent), a backward pre-hook when the gradient of a module's output arrives, a backward hook
when the gradient of its input is ready, a tensor hook when a parameter's gradient is. The
first event that holds inf/nan names the layer; whether what flowed *into* that layer was
finite tells "this layer made it" from "it arrived from elsewhere".
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from mpcourse.config import compute_precision
from mpcourse.engines.reports import LayerFault, LayerTable, NonFiniteReport
from mpcourse.engines.torch.engine import DTYPES, TorchEngine, default_loss
from mpcourse.numerics import range_stats, underflow_stats

__all__ = ["find_first_nonfinite", "underflow_fractions", "activation_ranges"]


@dataclass
class _Setup:
    model: nn.Module
    device: torch.device
    precision: str
    autocast: bool
    input_dtype: torch.dtype
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    scale: float


def _setup(target: Any, precision: str | None, scale: float | None, loss_fn: Any) -> _Setup:
    if isinstance(target, TorchEngine):
        model, device = target.model, target.torch_device
        precision = precision or target.config.precision
        loss_fn = loss_fn or target.loss_fn
        scale = target.scale if scale is None else scale
    else:
        model = target
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        precision, scale, loss_fn = precision or "fp32", 1.0 if scale is None else scale, loss_fn or default_loss
    param = next((p for p in model.parameters() if p.is_floating_point()), None)
    pdtype = param.dtype if param is not None else torch.float32
    # Parameters already in half (pure half precision) compute in their own dtype, no autocast.
    use_autocast = precision != "fp32" and pdtype == torch.float32
    input_dtype = pdtype if pdtype != torch.float32 else torch.float32
    return _Setup(model, device, precision, use_autocast, input_dtype, loss_fn, float(scale))


def _ctx(s: _Setup) -> Any:
    dtype = DTYPES[compute_precision(s.precision)]  # fp8: its linears cast themselves
    return torch.autocast(s.device.type, dtype=dtype, enabled=s.autocast)


@contextlib.contextmanager
def _untouched(model: nn.Module) -> Iterator[None]:
    """Restore buffers (BatchNorm statistics) and .grad after the pass: the model is left as found."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    grads = [(p, p.grad) for p in model.parameters()]
    try:
        yield
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        for p, g in grads:
            p.grad = g


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj] if obj.is_floating_point() else []
    if isinstance(obj, (tuple, list)):
        return [t for o in obj for t in _tensors(o)]
    if isinstance(obj, dict):
        return [t for o in obj.values() for t in _tensors(o)]
    return []


def _bad(ts: list[torch.Tensor]) -> tuple[int, int, str]:
    """(non-finite count, total, dtype of the first tensor holding non-finite values)."""
    bad, total, dtype = 0, 0, ""
    for t in ts:
        n = int((~torch.isfinite(t.detach())).sum())
        total += t.numel()
        if n and not dtype:
            dtype = str(t.dtype).replace("torch.", "")
        bad += n
    return bad, total, dtype or (str(ts[0].dtype).replace("torch.", "") if ts else "")


def _max_abs(ts: list[torch.Tensor]) -> float:
    vals = [t.detach().float().abs()[torch.isfinite(t.detach())] for t in ts]
    vals = [v.max() for v in vals if v.numel()]
    return float(torch.stack(vals).max()) if vals else float("nan")


def _name(n: str) -> str:
    return n or "(model)"


def _forward_probe(s: _Setup, xt: torch.Tensor, events: list[LayerFault]) -> list[Any]:
    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: Any, output: Any) -> None:
            order = len(hook_calls)
            hook_calls.append(name)
            out = _tensors(output)
            n_bad, total, dtype = _bad(out)
            if n_bad and not events:
                ins = _tensors(args)
                events.append(
                    LayerFault(
                        "forward",
                        _name(name),
                        type(module).__name__,
                        "output",
                        _bad(ins)[0] == 0,
                        n_bad,
                        total,
                        dtype,
                        _max_abs(ins),
                        order,
                    )
                )

        return fn

    hook_calls: list[str] = []
    return [m.register_forward_hook(hook(n)) for n, m in s.model.named_modules()]


def _backward_probe(s: _Setup, events: list[LayerFault]) -> list[Any]:
    counter: list[int] = [0]
    grad_out_ok: dict[str, tuple[bool, float]] = {}
    owner = {}
    for mname, m in s.model.named_modules():
        for pname, p in m.named_parameters(recurse=False):
            owner[p] = (mname, type(m).__name__, pname)

    def record(fault: LayerFault) -> None:
        if not events:
            events.append(fault)

    def pre(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, grad_output: Any) -> None:
            counter[0] += 1
            gos = _tensors(grad_output)
            n_bad, total, dtype = _bad(gos)
            grad_out_ok[name] = (n_bad == 0, _max_abs(gos))
            if n_bad:
                record(
                    LayerFault(
                        "backward",
                        _name(name),
                        type(module).__name__,
                        "grad_output",
                        False,
                        n_bad,
                        total,
                        dtype,
                        float("nan"),
                        counter[0],
                    )
                )

        return fn

    def post(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, grad_input: Any, grad_output: Any) -> None:
            counter[0] += 1
            gis = _tensors(grad_input)
            n_bad, total, dtype = _bad(gis)
            if n_bad:
                ok, mx = grad_out_ok.get(name, (True, float("nan")))
                record(
                    LayerFault(
                        "backward",
                        _name(name),
                        type(module).__name__,
                        "grad_input",
                        ok,
                        n_bad,
                        total,
                        dtype,
                        mx,
                        counter[0],
                    )
                )

        return fn

    def param_hook(p: nn.Parameter) -> Callable[[torch.Tensor], None]:
        mname, mtype, pname = owner[p]

        def fn(grad: torch.Tensor) -> None:
            counter[0] += 1
            n_bad, total, dtype = _bad([grad])
            if n_bad:
                ok, mx = grad_out_ok.get(mname, (True, float("nan")))
                record(
                    LayerFault(
                        "backward", _name(mname), mtype, f"grad of {pname}", ok, n_bad, total, dtype, mx, counter[0]
                    )
                )

        return fn

    handles = []
    for n, m in s.model.named_modules():
        handles.append(m.register_full_backward_pre_hook(pre(n)))
        handles.append(m.register_full_backward_hook(post(n)))
    handles += [p.register_hook(param_hook(p)) for p in owner if p.requires_grad]
    return handles


def _batch(s: _Setup, x: np.ndarray, y: np.ndarray | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    xt = torch.from_numpy(x).to(s.device, dtype=s.input_dtype)
    yt = torch.from_numpy(y).to(s.device) if y is not None else None
    return xt, yt


def find_first_nonfinite(
    target: Any,
    x: np.ndarray,
    y: np.ndarray | None,
    *,
    phase: str,
    scale: float | None,
    precision: str | None,
    loss_fn: Any,
) -> NonFiniteReport:
    s = _setup(target, precision, scale, loss_fn)
    xt, yt = _batch(s, x, y)
    fwd: list[LayerFault] = []
    bwd: list[LayerFault] = []
    handles = _forward_probe(s, xt, fwd)
    searched = False
    loss_v = float("nan")
    with _untouched(s.model):
        try:
            if phase != "forward":
                handles += _backward_probe(s, bwd)
                xt.requires_grad_(True)  # so the first layer's grad_input exists and is checked
            with torch.set_grad_enabled(phase != "forward"):
                with _ctx(s):
                    out = s.model(xt)
                loss = s.loss_fn(out.float(), yt) if yt is not None else None
            if loss is not None:
                loss_v = float(loss.detach())
            if phase != "forward" and not fwd and loss is not None:
                searched = True
                params = [p for p in s.model.parameters() if p.requires_grad]
                torch.autograd.grad(loss * s.scale, params + [xt], allow_unused=True)
        finally:
            for h in handles:
                h.remove()
    return NonFiniteReport(
        fwd[0] if fwd else None, bwd[0] if bwd else None, searched, loss_v, s.scale, s.precision, "torch"
    )


def underflow_fractions(
    target: Any, x: np.ndarray, y: np.ndarray, *, scale: float | None, precision: str | None, loss_fn: Any, fmt: str
) -> LayerTable:
    s = _setup(target, precision, scale, loss_fn)
    xt, yt = _batch(s, x, y)
    named = [
        (mn, m, pn, p)
        for mn, m in s.model.named_modules()
        for pn, p in m.named_parameters(recurse=False)
        if p.requires_grad
    ]
    assert yt is not None  # underflow_fractions always has labels (checked by mpcourse.debug)
    with _untouched(s.model):
        with _ctx(s):
            out = s.model(xt)
        loss = s.loss_fn(out.float(), yt)
        grads = torch.autograd.grad(loss * s.scale, [p for *_, p in named], allow_unused=True)
    rows: dict[str, dict[str, Any]] = {}
    values: dict[str, list[np.ndarray]] = {}
    for (mn, m, _, p), g in zip(named, grads):
        g = torch.zeros_like(p) if g is None else g
        values.setdefault(mn, []).append(g.detach().float().cpu().numpy().ravel())
        rows.setdefault(mn, {"layer": _name(mn), "type": type(m).__name__})
    table = []
    for mn, row in rows.items():
        stats = underflow_stats(np.concatenate(values[mn]), scale=1.0, fmt=fmt)  # already scaled
        table.append({**row, "n": int(stats.pop("n")), **stats})
    return LayerTable(table, f"gradients of loss x {s.scale:g} ({s.precision} compute), counted in {fmt}")


def activation_ranges(target: Any, x: np.ndarray, *, precision: str, fmt: str) -> LayerTable:
    s = _setup(target, precision, None, None)
    xt, _ = _batch(s, x, None)
    rows: list[dict[str, Any]] = []
    seen: dict[str, dict[str, Any]] = {}

    def hook(name: str) -> Callable[..., None]:
        def fn(module: nn.Module, args: Any, output: Any) -> None:
            out = _tensors(output)
            if not out:
                return
            vals = np.concatenate([t.detach().float().cpu().numpy().ravel() for t in out])
            st = range_stats(vals, fmt=fmt)
            row = {"layer": _name(name), "type": type(module).__name__, "n": int(st.pop("n")), **st}
            if name in seen:  # called again (a shared layer): keep the worst
                old = seen[name]
                if st["max_abs"] > old["max_abs"] or np.isnan(old["max_abs"]):
                    old.update(row)
                return
            seen[name] = row
            rows.append(row)

        return fn

    leaves = [(n, m) for n, m in s.model.named_modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(hook(n)) for n, m in leaves]
    with _untouched(s.model):
        try:
            with torch.no_grad(), _ctx(s):
                s.model(xt)
        finally:
            for h in handles:
                h.remove()
    return LayerTable(rows, f"activations ({s.precision} forward) against {fmt}'s max")
