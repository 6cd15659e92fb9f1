"""The launchers people already use, asked for fp16 on this device: what they actually train in.

Usage (optional extras: ``pip install accelerate lightning``)::

    from mpcourse.engines.torch.launchers import accelerate_run, lightning_run

    accelerate_run("fp16", steps=5)   # {'compute_dtype': 'float32', 'scaler': False, 'warnings': [], ...}
    lightning_run("16-mixed", steps=5)  # {'compute_dtype': 'bfloat16', 'precision': 'bf16-mixed', ...}

Each trains mpcourse's zoo MLP on digits for a few steps through the library's own loop
(``accelerator.backward`` / ``fabric.backward``) and records, with a forward hook on the first
layer, the dtype the matmuls really produced, whether a loss scaler exists, and every warning
the library raised. On a CPU, Accelerate's ``mixed_precision="fp16"`` trains in fp32 without a
word, and Lightning's ``"16-mixed"`` says it switches to bf16 and does.
"""

from __future__ import annotations

import warnings
from typing import Any, cast

import torch

from mpcourse.engines.torch.engine import default_loss
from mpcourse.engines.torch.models import build_model

__all__ = ["accelerate_run", "lightning_run"]


def _batches(steps: int, batch: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from mpcourse import data as data_mod

    ds = data_mod.load("digits", seed=0)
    x, y = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
    return [(x[i * batch : (i + 1) * batch], y[i * batch : (i + 1) * batch]) for i in range(steps)]


def _watched_mlp() -> tuple[torch.nn.Module, torch.optim.Optimizer, list[str]]:
    """The zoo MLP (seed 0), its Adam, and the list its first linear layer's output dtypes go to."""
    model = build_model("mlp", "small", 64, 10, seed=0)
    seen: list[str] = []
    first = next(m for m in model.modules() if isinstance(m, torch.nn.Linear))
    first.register_forward_hook(lambda _m, _i, out: seen.append(str(out.dtype).removeprefix("torch.")))
    return model, torch.optim.Adam(model.parameters(), lr=1e-3), seen


def accelerate_run(mixed_precision: str = "fp16", steps: int = 5, batch: int = 64, cpu: bool = True) -> dict[str, Any]:
    """Train a few steps with Hugging Face Accelerate; what ``mixed_precision`` turned into.

    Accelerate keeps one process-wide state: call this once per process.
    """
    from accelerate import Accelerator

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        acc = Accelerator(mixed_precision=mixed_precision, cpu=cpu)
        model, opt, seen = _watched_mlp()
        model, opt = acc.prepare(model, opt)
        losses = []
        for x, y in _batches(steps, batch):
            opt.zero_grad()
            with acc.autocast():
                loss = default_loss(model(x.to(acc.device)), y.to(acc.device))
            acc.backward(loss)
            opt.step()
            losses.append(float(loss.detach()))
    return {
        "library": "accelerate",
        "asked": mixed_precision,
        "device": str(acc.device),
        "reported": acc.mixed_precision,  # what the Accelerator says it does
        "compute_dtype": seen[-1],  # what the first matmul produced
        "scaler": acc.scaler is not None,
        "losses": losses,
        "warnings": [str(w.message) for w in caught],
    }


def lightning_run(
    precision: str = "16-mixed", steps: int = 5, batch: int = 64, accelerator: str = "cpu"
) -> dict[str, Any]:
    """Train a few steps with Lightning Fabric; what ``precision`` turned into."""
    import lightning as L

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fabric = L.Fabric(accelerator=accelerator, devices=1, precision=cast(Any, precision))
        model, opt, seen = _watched_mlp()
        model, opt = fabric.setup(model, opt)
        losses = []
        for x, y in _batches(steps, batch):
            opt.zero_grad()
            loss = default_loss(model(fabric.to_device(x)), fabric.to_device(y))
            fabric.backward(loss)
            opt.step()
            losses.append(float(loss.detach()))
    plugin = fabric.strategy.precision
    return {
        "library": "lightning",
        "asked": precision,
        "device": str(fabric.device),
        "reported": getattr(plugin, "precision", type(plugin).__name__),
        "compute_dtype": seen[-1],
        "scaler": getattr(plugin, "scaler", None) is not None,
        "losses": losses,
        "warnings": [str(w.message) for w in caught],
    }
