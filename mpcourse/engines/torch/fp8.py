"""FP8 linear layers for torch: every matmul input cast to fp8 by an :mod:`mpcourse.fp8` recipe.

Usage::

    import mpcourse as mpc
    from mpcourse import fp8

    model = fp8.convert(torch_model, fp8.DelayedScaling())   # every nn.Linear -> Fp8Linear
    loss = loss_fn(model(x), y); loss.backward()
    stats = model.fp8_state.end_step()    # {"fc1.input": {"amax", "scale", "saturated", ...}, ...}
                                          # (and the recipe's update: delayed scaling rolls here)

One ``Fp8Linear`` (the three GEMMs of torchao's ``Float8Linear``)::

    forward:   y  = deq(cast(x))  @ deq(cast(w)).T         # e4m3 under "hybrid"
    backward:  dx = deq(cast(dy)) @ deq(cast(w.T)).T       # dy in e5m2 under "hybrid"
               dw = deq(cast(dy.T)) @ deq(cast(x.T)).T
    bias added outside, in the output dtype (its gradient is the high-precision sum of dy)

``cast`` takes one amax per scale tile (the recipe's ``tile``; every operand in the K-major
view), asks the recipe for the scales (numpy: one host sync per cast), multiplies, saturates,
rounds to ``float8_e4m3fn``/``float8_e5m2`` and counts the saturated and underflowed values.
``deq(q) = q.float() / scale``. A per-tensor or 128x128 cast of ``w`` serves ``w.T`` too.

The matmul (``matmul=``): ``"emulate"`` multiplies the dequantized values in fp32 (the cast is
real, the FP8 tensor-core GEMM is emulated; bit-exact on any CPU); ``"scaled_mm"`` calls
``torch._scaled_mm`` on the fp8 tensors (per-tensor and per-row scales only; torch 2.13 runs it
on the CPU too, as a reference kernel, not FP8 speed); ``"auto"`` (default) uses it on CUDA
GPUs of compute capability >= 8.9 for per-tensor scales where the shapes allow (multiples of
16, not e5m2 x e5m2) and emulates everywhere else. The CUDA path is written but was not run
here (no GPU): the CPU tests check ``_scaled_mm`` against the emulation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mpcourse.fp8.base import Fp8Recipe
from mpcourse.fp8.cast import FP8_MAX, OVERFLOW
from mpcourse.fp8.session import Fp8Session
from mpcourse.fp8.tiles import tensor_stats, tile_size

__all__ = [
    "Fp8Linear",
    "Fp8State",
    "convert",
    "cast",
    "fp8_for_engine",
    "fp8_state_of",
    "scaled_mm_native",
    "MATMULS",
    "TORCH_FP8",
]

TORCH_FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
MATMULS = ("auto", "emulate", "scaled_mm")


def scaled_mm_native(device: torch.device) -> bool:
    """Whether ``torch._scaled_mm`` runs as an FP8 tensor-core GEMM here (CUDA, sm_89 or newer)."""
    return device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 9)


class Fp8State(Fp8Session):
    """What the converted layers of one model share: the recipe, the matmul choice, the step's log."""

    def __init__(self, recipe: Fp8Recipe, matmul: str = "auto", *, always_record: bool = True) -> None:
        if matmul not in MATMULS:
            raise ValueError(f"matmul must be one of {', '.join(map(repr, MATMULS))}; got {matmul!r}")
        super().__init__(recipe, always_record=always_record)
        self.matmul = matmul
        self.paths: set[str] = set()  # which matmuls ran: "emulate", "scaled_mm"


def _tile_amax(x: torch.Tensor, r: int, c: int) -> torch.Tensor:
    rows, cols = x.shape
    a = x.abs()
    if r >= rows and c >= cols:
        return a.amax().reshape(1, 1)
    if r == 1 and c >= cols:
        return a.amax(dim=1, keepdim=True)
    gr, gc = -(-rows // r), -(-cols // c)
    a = F.pad(a, (0, gc * c - cols, 0, gr * r - rows))  # zeros never raise an amax
    return a.view(gr, r, gc, c).amax(dim=(1, 3))


def cast(
    x: torch.Tensor, state: Fp8State, key: str, role: str, *, record: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cast one K-major 2-D operand: ``(q in float8, scale)``, the scale broadcastable to ``x``."""
    recipe, fmt = state.recipe, state.recipe.fmt(role)
    record = record and state.recording
    xf = x.float()
    r, c = tile_size(tuple(xf.shape), recipe.tile(role))
    amax = _tile_amax(xf, r, c)
    amax_np = amax.detach().cpu().numpy()  # the host sync: the rule is numpy, for every engine
    grid = recipe.scale(key, role, amax_np, record=record)
    scale = torch.from_numpy(np.ascontiguousarray(grid)).to(xf.device)
    rows, cols = xf.shape
    if scale.shape[0] not in (1, rows):  # tiles: one scale per element (rows and columns alike)
        scale = scale.repeat_interleave(r, 0)[:rows]
    if scale.shape[1] not in (1, cols):
        scale = scale.repeat_interleave(c, 1)[:, :cols]
    y = xf * scale
    q = y.clamp(-FP8_MAX[fmt], FP8_MAX[fmt]).to(TORCH_FP8[fmt])  # NaN stays NaN
    if record:
        limit, tie = OVERFLOW[fmt]
        over = (y.abs() >= limit) if tie else (y.abs() > limit)  # what the clip hid (inf included)
        under = (xf != 0) & (q.float() == 0)
        counts = torch.stack([over.sum(), under.sum()]).tolist()
        state.log.setdefault(
            key, tensor_stats(amax_np, grid, {"saturated": counts[0], "underflowed": counts[1]}, xf.numel(), fmt)
        )
    return q, scale


def _gemm(state: Fp8State, a: tuple[torch.Tensor, torch.Tensor], bt: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``A @ B`` in fp32 from K-major fp8 operands ``A`` (M, K) and ``B.T`` (N, K) with their scales."""
    (qa, sa), (qb, sb) = a, bt
    if _use_scaled_mm(state, qa, sa, qb, sb):
        state.paths.add("scaled_mm")
        # _scaled_mm takes the dequantization multipliers, and B column-major (the .t() of row-major).
        return torch._scaled_mm(
            qa, qb.t(), scale_a=(1.0 / sa).float(), scale_b=(1.0 / sb).float().t(), out_dtype=torch.float32
        )
    state.paths.add("emulate")
    return (qa.float() / sa) @ (qb.float() / sb).t()  # torchao's emulation: divide, then fp32 mm


def _use_scaled_mm(state: Fp8State, qa: torch.Tensor, sa: torch.Tensor, qb: torch.Tensor, sb: torch.Tensor) -> bool:
    if state.matmul == "emulate":
        return False
    per_row = (
        sa.shape[1] == 1 and sb.shape[1] == 1 and sa.shape[0] in (1, qa.shape[0]) and sb.shape[0] in (1, qb.shape[0])
    )
    both = (sa.numel() == 1) == (sb.numel() == 1)  # both per tensor, or both per row
    if state.matmul == "scaled_mm":
        if not (per_row and both):
            raise ValueError("matmul='scaled_mm' takes per-tensor or per-row scales only; use 'auto' for tiles")
        return True
    # "auto" takes the native kernel for per-tensor scales only: cuBLAS's row-wise FP8 GEMM wants a
    # bf16 output, and no GPU was at hand to test that path (matmul="scaled_mm" asks for it).
    per_tensor = sa.numel() == 1 and sb.numel() == 1
    shapes = all(d % 16 == 0 for d in (*qa.shape, qb.shape[0]))
    e5m2_both = qa.dtype == qb.dtype == torch.float8_e5m2  # no e5m2 x e5m2 FP8 GEMM on Hopper
    return scaled_mm_native(qa.device) and per_tensor and shapes and not e5m2_both


class _Fp8Matmul(torch.autograd.Function):
    """``x @ w.T`` with fp8 operands in all three GEMMs; x is 2-D, w is (out, in)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, layer: Fp8Linear) -> torch.Tensor:
        st, name, rec = layer.fp8_state, layer.fp8_name, layer.training
        with torch.autocast(x.device.type, enabled=False):
            xq = cast(x, st, f"{name}.input", "input", record=rec)
            wq = cast(w, st, f"{name}.weight", "weight", record=rec)
            out = _gemm(st, xq, wq)
        ctx.layer, ctx.x_dtype, ctx.w_dtype = layer, x.dtype, w.dtype
        ctx.save_for_backward(x, w, xq[0], xq[1], wq[0], wq[1])
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        x, w, xq, xs, wq, ws = ctx.saved_tensors
        layer = ctx.layer
        st, name, recipe = layer.fp8_state, layer.fp8_name, layer.fp8_state.recipe
        with torch.autocast(g.device.type, enabled=False):
            gq = cast(g, st, f"{name}.grad_output", "grad_output")
            # dx = dy @ w: w.T is K-major. A per-tensor or square-block cast of w serves w.T too.
            wt = (
                (wq.t(), ws.t())
                if _transposable(recipe.tile("weight"))
                else cast(w.t(), st, f"{name}.weight.T", "weight")
            )
            dx = _gemm(st, gq, wt)
            # dw = dy.T @ x: both K-major along the batch dim.
            same = _transposable(recipe.tile("grad_output"))
            gt = (gq[0].t(), gq[1].t()) if same else cast(g.t(), st, f"{name}.grad_output.T", "grad_output")
            xt = (
                (xq.t(), xs.t()) if _transposable(recipe.tile("input")) else cast(x.t(), st, f"{name}.input.T", "input")
            )
            dw = _gemm(st, gt, xt)
        return dx.to(ctx.x_dtype), dw.to(ctx.w_dtype), None


def _transposable(tile: tuple[int | None, int | None]) -> bool:
    return tile == (None, None) or (tile[0] is not None and tile[0] == tile[1])


class Fp8Linear(nn.Linear):
    """An ``nn.Linear`` whose matmul runs in fp8 under ``fp8_state``'s recipe (same parameters)."""

    fp8_state: Fp8State
    fp8_name: str

    @classmethod
    def from_linear(cls, lin: nn.Linear, state: Fp8State, name: str) -> Fp8Linear:
        new = cls(lin.in_features, lin.out_features, bias=lin.bias is not None, device="meta")
        new.weight = lin.weight  # the same Parameter objects: optimizer and state_dict keys unchanged
        new.bias = lin.bias
        new.fp8_state, new.fp8_name = state, name
        new.train(lin.training)
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype
        lead = x.shape[:-1]
        out = _Fp8Matmul.apply(x.reshape(-1, x.shape[-1]), self.weight, self)
        out = out.to(dtype).reshape(*lead, self.out_features)
        return out if self.bias is None else out + self.bias.to(dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, recipe={self.fp8_state.recipe!r}"


def _linears(module: nn.Module, prefix: str = "") -> Iterator[tuple[nn.Module, str, str, nn.Linear]]:
    for child_name, child in module.named_children():
        path = f"{prefix}{child_name}"
        if isinstance(child, nn.Linear) and not isinstance(child, Fp8Linear):
            yield module, child_name, path, child
        else:
            yield from _linears(child, f"{path}.")


def convert(module: nn.Module, recipe: Fp8Recipe, *, matmul: str = "auto") -> nn.Module:
    """Replace every ``nn.Linear`` in ``module`` (in place) by an :class:`Fp8Linear`; return ``module``.

    A bare ``nn.Linear`` cannot be replaced in place: the new ``Fp8Linear`` is returned instead.

    The layers share one :class:`Fp8State` (``module.fp8_state``) holding a clone of ``recipe``;
    call ``module.fp8_state.end_step()`` once per optimizer step. The parameters are the same
    objects, so an optimizer built before the conversion still updates them.

    Raises:
        TypeError: ``module`` is not a torch module, or ``recipe`` is not an mpcourse.fp8 recipe.
        ValueError: an unknown ``matmul``, or the module was converted already.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert() takes a torch.nn.Module, got {type(module).__name__}")
    if isinstance(getattr(module, "fp8_state", None), Fp8State):
        raise ValueError("this module was converted to fp8 already (it has an fp8_state)")
    state = Fp8State(recipe.clone() if isinstance(recipe, Fp8Recipe) else recipe, matmul)
    if isinstance(module, nn.Linear):
        single = Fp8Linear.from_linear(module, state, "linear")
        single.fp8_state = state
        return single
    found = list(_linears(module))
    for parent, child_name, path, lin in found:
        setattr(parent, child_name, Fp8Linear.from_linear(lin, state, path))
    module.fp8_state = state  # type: ignore[assignment]
    return module


def fp8_for_engine(model: nn.Module, config: Any) -> Fp8State | None:
    """The engine's hook: for ``precision="fp8"``, convert ``model`` in place and return its state."""
    if config.precision != "fp8":
        return None
    return fp8_state_of(convert(model, config.fp8)).for_engine()  # only training steps record


def fp8_state_of(module: nn.Module) -> Fp8State:
    """The :class:`Fp8State` of a converted module (a TypeError for one that was not converted)."""
    return Fp8State.of(module)
