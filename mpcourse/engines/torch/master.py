"""The master-weights update protocol, written out step by step for plain torch SGD.

Usage::

    import torch
    from mpcourse.engines.torch import master
    from mpcourse.engines.torch.models import build_model

    net = build_model("mlp", num_features=64, num_classes=10, seed=0)        # fp32
    stages = master.protocol_step(net, x, y, lr=1e-3, scale=1024.0, param="layers.1.weight")
    [(s["stage"], s["dtype"], s["value"]) for s in stages]   # one weight through the six stages
    run = master.train(net, x, y, master=True, steps=300, lr=1e-3)   # {"loss": [...], "moved": [...]}

The protocol (Micikevicius et al. 2018; NVIDIA, *Train With Mixed Precision*): keep fp32
master weights; each step 1. cast them to an fp16 copy, 2. run forward and backward of the
scaled loss ``S * loss`` in fp16, 3. cast the fp16 gradients to fp32, 4. unscale them
(divide by ``S``) and skip the step if any is inf/NaN, 5. update the fp32 masters, 6. re-cast
the masters to the fp16 copy. "Pure fp16" (``master=False``) applies the same unscaled update
to the fp16 weights themselves, so every update below half an fp16 spacing rounds away.
Neither function changes the model passed in: both work on copies.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F

from mpcourse._validate import int_at_least, positive_finite

__all__ = ["protocol_step", "train"]


def _check(model: Any, x: Any, y: Any, lr: Any, scale: Any) -> tuple[float, float]:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)) or len(x) != len(y) or len(x) == 0:
        raise ValueError("x and y must be torch tensors with the same, non-zero number of rows")
    return positive_finite("lr", lr), positive_finite("scale", scale)


def _scaled_grads(model16: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, scale: float) -> torch.Tensor:
    """Forward and backward of ``scale * loss`` with fp16 weights; returns the (fp32) loss."""
    for p in model16.parameters():
        p.grad = None
    loss = F.cross_entropy(model16(x.to(torch.float16)).float(), y)
    (loss * scale).backward()
    return loss.detach()


def protocol_step(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, lr: float, scale: float, param: str
) -> list[dict[str, Any]]:
    """One step of the protocol for one weight of ``param``: its value and dtype at each stage.

    The weight shown is the one with the largest update that pure fp16 loses (its update is
    below half the fp16 spacing at the weight), or the largest update if none is lost. The
    last row is what pure fp16 stores for the same weight after the same step.
    """
    lr, scale = _check(model, x, y, lr, scale)
    names = dict(model.named_parameters())
    if param not in names:
        raise ValueError(f"param must be one of {sorted(names)}, got {param!r}")
    w32 = names[param].detach().clone().float()
    model16 = copy.deepcopy(model).half()
    p16 = dict(model16.named_parameters())[param]
    _scaled_grads(model16, x, y, scale)
    g16 = p16.grad.detach().clone()  # type: ignore[union-attr]
    g32 = g16.float() / scale
    new32 = w32 - lr * g32
    new16 = new32.to(torch.float16)
    pure = (p16.detach() - (lr * g32).to(torch.float16)).to(torch.float16)
    lost = (pure == p16.detach()) & (g32 != 0)
    size = (lr * g32).abs()
    i = int(torch.argmax(torch.where(lost, size, torch.zeros_like(size)) if lost.any() else size))
    flat = [t.reshape(-1)[i] for t in (w32, p16.detach(), g16, g16.float(), g32, new32, new16, pure)]
    labels = [
        "0. the fp32 master weight",
        "1. fp16 copy of the fp32 master weight",
        f"2. fp16 gradient of S * loss (S = {scale:g})",
        "3. the gradient cast to fp32",
        "4. unscaled: divided by S (finite: step taken)",
        f"5. fp32 update: master - lr * gradient (lr = {lr:g})",
        "6. re-cast to fp16 for the next forward",
        "pure fp16: weight - lr * gradient, stored in fp16",
    ]
    return [{"stage": s, "dtype": str(v.dtype).replace("torch.", ""), "value": float(v)} for s, v in zip(labels, flat)]


def train(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    master: bool,
    steps: int,
    lr: float,
    scale: float = 1024.0,
    batch_size: int = 64,
    param: str = "layers.1.weight",
) -> dict[str, list[float]]:
    """Train a copy of ``model`` with plain SGD by the protocol (``master=True``) or in pure fp16.

    Returns per step ``loss`` (the batch loss), ``moved`` (the L2 distance of ``param``'s fp16
    weights, the ones the forward uses, from their start) and ``skipped`` (1.0 where a non-finite
    gradient skipped the step).
    """
    lr, scale = _check(model, x, y, lr, scale)
    int_at_least("steps", steps, 1)
    int_at_least("batch_size", batch_size, 1)
    model16 = copy.deepcopy(model).half()
    named = dict(model16.named_parameters())
    if param not in named:
        raise ValueError(f"param must be one of {sorted(named)}, got {param!r}")
    masters = [p.detach().clone().float() for p in model.parameters()]
    start = named[param].detach().float().clone()
    batches = max(1, len(x) // batch_size)
    out: dict[str, list[float]] = {"loss": [], "moved": [], "skipped": []}
    for step in range(steps):
        i = slice(step % batches * batch_size, (step % batches + 1) * batch_size)
        loss = _scaled_grads(model16, x[i], y[i], scale)
        grads = [p.grad.float() / scale for p in model16.parameters()]  # type: ignore[union-attr]
        finite = all(bool(torch.isfinite(g).all()) for g in grads)
        with torch.no_grad():
            for p, w32, g in zip(model16.parameters(), masters, grads):
                if not finite:
                    break
                if master:
                    w32.add_(g, alpha=-lr)  # 5. the update in fp32
                    p.copy_(w32)  # 6. re-cast to the fp16 copy
                else:
                    p.sub_((lr * g).to(torch.float16))  # in fp16: small updates round away
        out["loss"].append(float(loss))
        out["moved"].append(float(torch.linalg.vector_norm(named[param].detach().float() - start)))
        out["skipped"].append(0.0 if finite else 1.0)
    return out
