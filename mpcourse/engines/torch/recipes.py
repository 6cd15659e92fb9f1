"""The PyTorch AMP recipe's practices, one short function each, for plain torch code.

Usage::

    import torch
    from mpcourse.engines.torch import recipes

    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    norm = recipes.clipped_step(model, opt, scaler, loss, max_norm=1.0)   # unscale_, clip, step, update
    recipes.accumulated_step(model, opt, scaler, batches, loss_fn, device_type="cpu")  # 4 micro-batches
    logits = recipes.autocast_predict(model, x, device_type="cpu")        # inference: autocast only
    state = recipes.checkpoint(model, opt, scaler); recipes.restore(state, model, opt, scaler)
    y = recipes.in_fp32(torch.softmax, h, dim=-1)                         # autocast off for one op

``Fp32Softmax`` shows ``torch.amp.custom_fwd(cast_inputs=torch.float32)`` / ``custom_bwd``: a
custom autograd function that runs in fp32 inside an autocast region. Each function mirrors a
section of the *Automatic Mixed Precision* recipe and the "Automatic Mixed Precision examples"
page of the PyTorch docs; ``tests/test_recipes.py`` checks each against a plain fp32 or
hand-written computation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

__all__ = [
    "clipped_step",
    "accumulated_step",
    "autocast_predict",
    "in_fp32",
    "checkpoint",
    "restore",
    "Fp32Softmax",
]


def clipped_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    loss: torch.Tensor,
    *,
    max_norm: float,
) -> float:
    """Backward of the scaled loss, ``unscale_``, ``clip_grad_norm_``, step, update.

    Clipping must see the unscaled gradients, so ``scaler.unscale_(optimizer)`` comes first;
    ``scaler.step`` then knows they are unscaled and skips the step on inf/NaN. Returns the
    pre-clip norm (inf/NaN on a step the scaler skips).
    """
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.unscale_(optimizer)
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    scaler.step(optimizer)
    scaler.update()
    return float(norm)


def accumulated_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    *,
    device_type: str,
    dtype: torch.dtype = torch.float16,
) -> float:
    """One optimizer step from several micro-batches (gradient accumulation).

    Each micro-batch's loss is divided by their count and its scaled backward accumulates into
    ``.grad``; the scale must stay the same across them, so ``step`` and ``update`` run once,
    after the last one. Returns the mean micro-batch loss.
    """
    items = list(batches)
    if not items:
        raise ValueError("accumulated_step needs at least one micro-batch")
    optimizer.zero_grad(set_to_none=True)
    total = 0.0
    for x, y in items:
        with torch.autocast(device_type, dtype=dtype):
            out = model(x)
        loss = loss_fn(out.float(), y) / len(items)
        scaler.scale(loss).backward()
        total += float(loss.detach()) * len(items)
    scaler.step(optimizer)
    scaler.update()
    return total / len(items)


def autocast_predict(
    model: torch.nn.Module, x: torch.Tensor, *, device_type: str, dtype: torch.dtype = torch.bfloat16
) -> torch.Tensor:
    """Inference needs autocast only: no scaler (there is no backward), no gradients."""
    was = model.training
    model.eval()
    try:
        with torch.inference_mode(), torch.autocast(device_type, dtype=dtype):
            return model(x)
    finally:
        model.train(was)


def in_fp32(fn: Callable[..., torch.Tensor], *tensors: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """Run one sensitive op in fp32 inside an autocast region: autocast off, inputs cast up."""
    device = tensors[0].device.type if tensors else "cpu"
    with torch.autocast(device, enabled=False):
        return fn(*(t.float() if t.is_floating_point() else t for t in tensors), **kwargs)


def checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> dict:
    """Everything a resumed run needs, the scaler's scale and growth tracker included."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict()}


def restore(
    state: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> None:
    """Load a :func:`checkpoint` back; refuses a state without a scaler entry."""
    missing = [k for k in ("model", "optimizer", "scaler") if k not in state]
    if missing:
        raise ValueError(f"checkpoint state lacks {missing}; it needs model, optimizer and scaler")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])


class Fp32Softmax(torch.autograd.Function):
    """A custom op that computes in fp32 even under autocast (``custom_fwd(cast_inputs=...)``).

    ``Fp32Softmax.apply(h)`` inside ``torch.autocast``: the input arrives cast to fp32 and
    autocast is off in ``forward``; ``custom_bwd`` runs the backward with the same autocast state.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.float32)
    def forward(ctx: Any, h: torch.Tensor) -> torch.Tensor:
        out = torch.softmax(h, dim=-1)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return out * (grad - (grad * out).sum(dim=-1, keepdim=True))
