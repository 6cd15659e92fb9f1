"""MLX detectors behind :mod:`mpcourse.debug`: probes swapped into the model tree for one batch.

Usage (through :mod:`mpcourse.debug`, which dispatches here for MLX engines and modules)::

    import mpcourse as mpc

    mpc.debug.find_first_nonfinite(eng, x, y)   # the first layer giving inf/nan, forward and backward
    mpc.debug.underflow_fractions(eng, x, y)    # gradients of loss * scale, counted in fp16
    mpc.debug.activation_ranges(model, x)       # leaf outputs against fp16's max

MLX has no hooks. Instead the model tree is walked and every submodule is replaced, for the
duration of the call, by a probe that calls it and watches what goes in and out. Forward: the
first probe to return inf/nan names the layer. Backward: each probe adds a zero "tangent" to
its inputs and to its output; the gradient of the loss with respect to those zeros is exactly
the gradient flowing into and out of the layer (``x + 0`` changes nothing, and its derivative
is the identity). Walking the recorded calls in backward order -- a layer's output gradient,
then its own parameters, then its children, then its input gradient -- finds the first
non-finite one, as torch's backward hooks do. The model's arrays are restored afterwards.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_map

from mpcourse.config import compute_precision
from mpcourse.engines.base import Engine
from mpcourse.engines.mlx.engine import DTYPES, default_loss
from mpcourse.engines.reports import LayerFault, LayerTable, NonFiniteReport
from mpcourse.numerics import range_stats, underflow_stats

__all__ = ["find_first_nonfinite", "underflow_fractions", "activation_ranges", "probed"]

_NAMES = {mx.float32: "float32", mx.float16: "float16", mx.bfloat16: "bfloat16"}


def _arrays(obj: Any) -> list[mx.array]:
    if isinstance(obj, mx.array):
        return [obj] if mx.issubdtype(obj.dtype, mx.floating) else []
    if isinstance(obj, (tuple, list)):
        return [a for o in obj for a in _arrays(o)]
    if isinstance(obj, dict):
        return [a for o in obj.values() for a in _arrays(o)]
    return []


def _bad(arrs: list[mx.array]) -> tuple[int, int, str]:
    bad = sum(int(mx.sum(mx.logical_not(mx.isfinite(a))).item()) for a in arrs)
    total = sum(a.size for a in arrs)
    dt = next((a.dtype for a in arrs if not bool(mx.all(mx.isfinite(a)).item())), arrs[0].dtype if arrs else None)
    return bad, total, _NAMES.get(dt, str(dt))


def _max_abs(arrs: list[mx.array]) -> float:
    best = float("nan")
    for a in arrs:
        v = np.abs(np.array(a.astype(mx.float32)))
        v = v[np.isfinite(v)]
        if v.size:
            best = float(v.max()) if np.isnan(best) else max(best, float(v.max()))
    return best


def _name(n: str) -> str:
    return n or "(model)"


@dataclass
class _Call:
    """One call of one submodule during the pass."""

    name: str
    module: nn.Module
    parent: int | None
    inputs: list[mx.array] = field(default_factory=list)
    outputs: list[mx.array] = field(default_factory=list)
    children: list[int] = field(default_factory=list)
    done: int = -1  # completion order


class _Log:
    """Shared by every probe of one pass: the calls, and the zero tangents to add (if any)."""

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        self.stack: list[int] = []
        self.finished = 0
        self.eps_in: list[list[mx.array]] | None = None
        self.eps_out: list[list[mx.array]] | None = None
        self.on_return: Callable[[_Call], None] | None = None

    def reset(self) -> None:
        self.calls, self.stack, self.finished = [], [], 0

    def call(self, name: str, inner: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        k = len(self.calls)
        parent = self.stack[-1] if self.stack else None
        rec = _Call(name, inner, parent)
        self.calls.append(rec)
        if parent is not None:
            self.calls[parent].children.append(k)
        if self.eps_in is not None:
            it = iter(self.eps_in[k])
            args = tuple(
                a + next(it) if isinstance(a, mx.array) and mx.issubdtype(a.dtype, mx.floating) else a for a in args
            )
        rec.inputs = [a for a in args if isinstance(a, mx.array) and mx.issubdtype(a.dtype, mx.floating)]
        self.stack.append(k)
        try:
            out = inner(*args, **kwargs)
        finally:
            self.stack.pop()
        if self.eps_out is not None:
            it = iter(self.eps_out[k])
            out = _add_tangent(out, it)
        rec.outputs = _arrays(out)
        rec.done = self.finished
        self.finished += 1
        if self.on_return is not None:
            self.on_return(rec)
        return out


def _add_tangent(out: Any, it: Any) -> Any:
    if isinstance(out, mx.array):
        return out + next(it) if mx.issubdtype(out.dtype, mx.floating) else out
    if isinstance(out, (tuple, list)):
        return type(out)(_add_tangent(o, it) for o in out)
    return out


class _Probe(nn.Module):
    """Stands in for one submodule during a pass: calls it through the shared log."""

    def __init__(self, inner: nn.Module, name: str, log: _Log) -> None:
        super().__init__()
        self.inner = inner
        self._probe = (name, log)  # a tuple, not a list: MLX would take a list for child modules

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        name, log = self._probe
        return log.call(name, self.inner, args, kwargs)


class probed:
    """Context manager: every submodule of ``model`` wrapped in a probe; restored on exit.

    ``with probed(model) as (root, log): root(x)`` -- ``root`` calls the model itself through
    the log, so the whole model is the first recorded call.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.log = _Log()
        self.swaps: list[tuple[Any, Any, nn.Module]] = []

    def _install(self, module: nn.Module, prefix: str) -> None:
        for key in list(module.keys()):
            value = module[key]
            if isinstance(value, nn.Module):
                self._wrap(module, key, value, f"{prefix}{key}")
            elif isinstance(value, list):
                for i, v in enumerate(value):
                    if isinstance(v, nn.Module):
                        self._wrap(value, i, v, f"{prefix}{key}.{i}")
            elif isinstance(value, dict):
                for k, v in list(value.items()):
                    if isinstance(v, nn.Module):
                        self._wrap(value, k, v, f"{prefix}{key}.{k}")

    def _wrap(self, container: Any, key: Any, child: nn.Module, name: str) -> None:
        self._install(child, f"{name}.")
        container[key] = _Probe(child, name, self.log)
        self.swaps.append((container, key, child))

    def __enter__(self) -> tuple[Callable[..., Any], _Log]:
        self._install(self.model, "")
        return (lambda *a, **k: self.log.call("", self.model, a, k)), self.log

    def __exit__(self, *exc: Any) -> None:
        for container, key, child in reversed(self.swaps):
            container[key] = child
        self.swaps.clear()


@dataclass
class _Setup:
    model: nn.Module
    precision: str
    loss_fn: Callable[[mx.array, mx.array], mx.array]
    scale: float


def _setup(target: Any, precision: str | None, scale: float | None, loss_fn: Any) -> _Setup:
    if isinstance(target, Engine):
        precision = precision or target.config.precision
        return _Setup(
            target.model, precision, loss_fn or target.loss_fn, float(target.scale if scale is None else scale)
        )
    return _Setup(target, precision or "fp32", loss_fn or default_loss, 1.0 if scale is None else float(scale))


def _cast(tree: Any, dtype: Any) -> Any:
    return tree_map(
        lambda p: p.astype(dtype) if isinstance(p, mx.array) and mx.issubdtype(p.dtype, mx.floating) else p, tree
    )


class _restored:
    """Put every array of the model back afterwards (weights, BatchNorm statistics)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> None:
        self.saved = self.model.parameters()

    def __exit__(self, *exc: Any) -> None:
        self.model.update(self.saved)


def _strip(key: str) -> str:
    return key.replace(".inner", "")


def _module_types(model: nn.Module) -> dict[str, str]:
    return {n: type(m).__name__ for n, m in model.named_modules()}


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
    dtype = DTYPES[compute_precision(s.precision)]  # fp8: its linears cast themselves
    model = s.model
    xt = mx.array(x).astype(dtype)
    yt = mx.array(y.astype(np.int32)) if y is not None else None
    fwd: list[LayerFault] = []
    bwd: list[LayerFault] = []
    loss_v, searched = float("nan"), False
    with _restored(model):
        model.update(_cast(model.trainable_parameters(), dtype))
        with probed(model) as (root, log):

            def check(rec: _Call) -> None:
                if fwd:
                    return
                n_bad, total, dt = _bad(rec.outputs)
                if n_bad:
                    fwd.append(
                        LayerFault(
                            "forward",
                            _name(rec.name),
                            type(rec.module).__name__,
                            "output",
                            _bad(rec.inputs)[0] == 0,
                            n_bad,
                            total,
                            dt,
                            _max_abs(rec.inputs),
                            rec.done,
                        )
                    )

            log.on_return = check
            out = root(xt)
            log.on_return = None
            calls = log.calls
            if yt is not None:
                loss_v = float(s.loss_fn(out.astype(mx.float32), yt).item())
            if phase != "forward" and not fwd and yt is not None:
                searched = True
                bwd = _backward(model, root, log, calls, xt, yt, s)
    return NonFiniteReport(
        fwd[0] if fwd else None, bwd[0] if bwd else None, searched, loss_v, s.scale, s.precision, "mlx"
    )


def _backward(
    model: nn.Module, root: Callable[..., Any], log: _Log, calls: list[_Call], xt: mx.array, yt: mx.array, s: _Setup
) -> list[LayerFault]:
    eps_in = [[mx.zeros_like(a) for a in c.inputs] for c in calls]
    eps_out = [[mx.zeros_like(a) for a in c.outputs] for c in calls]
    params = model.trainable_parameters()

    def scaled_loss(p: Any, ein: Any, eout: Any) -> mx.array:
        model.update(p)
        log.reset()
        log.eps_in, log.eps_out = ein, eout
        try:
            out = root(xt)
        finally:
            log.eps_in = log.eps_out = None
        return s.loss_fn(out.astype(mx.float32), yt) * s.scale

    _, (g_params, g_in, g_out) = mx.value_and_grad(scaled_loss, argnums=(0, 1, 2))(params, eps_in, eps_out)
    mx.eval(g_params, g_in, g_out)
    own: dict[str, list[tuple[str, mx.array]]] = {}
    for key, g in tree_flatten(g_params):
        mod, _, pname = _strip(key).rpartition(".")
        own.setdefault(mod, []).append((pname, g))
    order = [0]
    seen_params: set[str] = set()

    def visit(k: int) -> LayerFault | None:
        c = calls[k]
        kind = type(c.module).__name__
        n_bad, total, dt = _bad(g_out[k])
        order[0] += 1
        if n_bad:
            return LayerFault(
                "backward", _name(c.name), kind, "grad_output", False, n_bad, total, dt, float("nan"), order[0]
            )
        gmax = _max_abs(g_out[k])
        if c.name not in seen_params:  # a shared layer's gradients are summed over its calls
            seen_params.add(c.name)
            for pname, g in own.get(c.name, []):
                order[0] += 1
                n_bad, total, dt = _bad([g])
                if n_bad:
                    return LayerFault(
                        "backward", _name(c.name), kind, f"grad of {pname}", True, n_bad, total, dt, gmax, order[0]
                    )
        for child in reversed(c.children):
            found = visit(child)
            if found is not None:
                return found
        order[0] += 1
        n_bad, total, dt = _bad(g_in[k])
        if n_bad:
            return LayerFault("backward", _name(c.name), kind, "grad_input", True, n_bad, total, dt, gmax, order[0])
        return None

    found = visit(0)
    return [found] if found is not None else []


def underflow_fractions(
    target: Any, x: np.ndarray, y: np.ndarray, *, scale: float | None, precision: str | None, loss_fn: Any, fmt: str
) -> LayerTable:
    s = _setup(target, precision, scale, loss_fn)
    dtype = DTYPES[compute_precision(s.precision)]  # fp8: its linears cast themselves
    model = s.model
    xt, yt = mx.array(x).astype(dtype), mx.array(y.astype(np.int32))
    types = _module_types(model)
    with _restored(model):
        params = _cast(model.trainable_parameters(), dtype)

        def scaled_loss(p: Any) -> mx.array:
            model.update(p)
            return s.loss_fn(model(xt).astype(mx.float32), yt) * s.scale

        grads = mx.grad(scaled_loss)(params)
        mx.eval(grads)
    groups: dict[str, list[np.ndarray]] = {}
    for key, g in tree_flatten(grads):
        mod = key.rpartition(".")[0]
        groups.setdefault(mod, []).append(np.array(g.astype(mx.float32)).ravel())
    rows = []
    for mod, vals in groups.items():
        st = underflow_stats(np.concatenate(vals), scale=1.0, fmt=fmt)  # already scaled
        rows.append({"layer": _name(mod), "type": types.get(mod, "?"), "n": int(st.pop("n")), **st})
    return LayerTable(rows, f"gradients of loss x {s.scale:g} ({s.precision} compute), counted in {fmt}")


def activation_ranges(target: Any, x: np.ndarray, *, precision: str, fmt: str) -> LayerTable:
    s = _setup(target, precision, None, None)
    dtype = DTYPES[compute_precision(s.precision)]  # fp8: its linears cast themselves
    model = s.model
    rows: dict[str, dict[str, Any]] = {}
    with _restored(model):
        model.update(_cast(model.trainable_parameters(), dtype))
        with probed(model) as (root, log):
            root(mx.array(x).astype(dtype))
            calls = log.calls
        for c in sorted(calls, key=lambda c: c.done):
            if c.children or not c.outputs or not c.name:
                continue  # leaves only: a parent's output is its last child's, or close to it
            vals = np.concatenate([np.array(a.astype(mx.float32)).ravel() for a in c.outputs])
            st = range_stats(vals, fmt=fmt)
            row = {"layer": c.name, "type": type(c.module).__name__, "n": int(st.pop("n")), **st}
            old = rows.get(c.name)
            if old is None or st["max_abs"] > old["max_abs"]:
                rows[c.name] = row
    return LayerTable(list(rows.values()), f"activations ({s.precision} forward) against {fmt}'s max")
