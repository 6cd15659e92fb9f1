"""The classic transformer failure in fp16, measured: attention scores past 65504.

Usage::

    from mpcourse.studies import gpt_fp16

    gpt_fp16.score_sweep("torch", gains=(100, 300, 400))   # max |q.k| per gain, fp16/bf16 losses
    res = gpt_fp16.compare("torch", gain=400, steps=6)     # fp16, fp16 + fp32 attention, bf16
    res["fp16"]["skipped"], res["fp16"]["final_scale"]      # every step skipped, scale halving

The zoo's ``gpt`` computes attention as nanoGPT does, ``(q @ k^T) * (1/sqrt(head_dim))``. Under
fp16 the product is an fp16 matmul, so once one ``q . k`` passes fp16's largest value, 65504,
that score is inf, its softmax row is nan, and so is the loss. This is the forward pass: loss
scaling multiplies the loss *after* it, so a dynamic scaler only sees a non-finite step, skips
it and halves its scale, every step. Two fixes: bf16 (the range of fp32: max 3.4e38), or an
fp32 region around the scores and softmax (``attn_fp32=True``, as Megatron's
``attention_softmax_in_fp32``), keeping fp16 everywhere else.

Scores grow in real runs (attention-logit growth, Dehghani et al. 2023, "Scaling Vision
Transformers to 22 Billion Parameters", which added LayerNorm on q and k to stop it). Here
``gain`` reaches that regime in seconds: it multiplies the query and key weights of a freshly
initialised GPT, so every score grows by ``gain**2``.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from mpcourse.config import TrainConfig
from mpcourse.data import Dataset, load
from mpcourse.engines import make_engine

__all__ = ["FP16_MAX", "gpt_model", "score_sweep", "compare"]

FP16_MAX = 65504.0

VARIANTS: dict[str, dict[str, Any]] = {
    "fp32": {"precision": "fp32", "attn_fp32": False},
    "fp16": {"precision": "fp16", "attn_fp32": False},
    "fp16 + fp32 attention": {"precision": "fp16", "attn_fp32": True},
    "bf16": {"precision": "bf16", "attn_fp32": False},
}


def gpt_model(backend: str, data: Dataset, gain: float = 1.0, attn_fp32: bool = False, seed: int = 0) -> Any:
    """A fresh zoo GPT for ``data`` (seeded), its query/key weights times ``gain``."""
    models = importlib.import_module(f"mpcourse.engines.{backend}.models")
    model = models.build_model(
        "gpt", num_features=data.num_features, num_classes=data.num_classes, seed=seed, attn_fp32=attn_fp32
    )
    return model.scale_qk_(gain)


def _max_score(backend: str, model: Any, x: np.ndarray) -> float:
    return float(model.attention_max(x))  # each twin converts numpy ids itself


def score_sweep(
    backend: str = "torch", gains: tuple[float, ...] = (1, 100, 200, 300, 400, 600), batch: int = 8
) -> list[dict[str, float]]:
    """For each gain: the largest ``q . k`` (fp32) and the fp16 and bf16 losses of one batch.

    Returns a list of ``{"gain", "max_score", "fp16_loss", "bf16_loss"}``; the fp16 loss turns nan
    where ``max_score`` passes 65504.
    """
    data = load("text")
    x, y = data.x_train[:batch], data.y_train[:batch]
    rows = []
    for g in gains:
        model = gpt_model(backend, data, g)
        row = {"gain": float(g), "max_score": _max_score(backend, model, x)}
        for prec in ("fp16", "bf16"):
            eng = make_engine(backend, model, TrainConfig(precision=prec), device="cpu", verbose=False)
            row[f"{prec}_loss"] = eng.evaluate((x, y))["loss"]
        rows.append(row)
    return rows


def compare(
    backend: str = "torch",
    gain: float = 400.0,
    steps: int = 6,
    batch_size: int = 8,
    variants: tuple[str, ...] = ("fp16", "fp16 + fp32 attention", "bf16"),
) -> dict[str, dict[str, Any]]:
    """Train the same GPT (query/key weights times ``gain``) ``steps`` steps in each variant.

    fp16 runs with dynamic loss scaling (GradScaler's defaults). Returns, per variant: the
    losses, the number of skipped steps, the first and final loss scale, and the largest
    ``q . k`` at the start.
    """
    data = load("text")
    out: dict[str, dict[str, Any]] = {}
    for name in variants:
        v = VARIANTS[name]
        model = gpt_model(backend, data, gain, attn_fp32=v["attn_fp32"])
        cfg = TrainConfig(
            precision=v["precision"],
            loss_scale="dynamic" if v["precision"] == "fp16" else "none",
            batch_size=batch_size,
        )
        eng = make_engine(backend, model, cfg, device="cpu", verbose=False)
        max_score = _max_score(backend, model, data.x_train[:batch_size])
        hist = eng.fit(data, steps=steps, progress=False)
        out[name] = {
            "losses": [float(v) for v in hist.losses],
            "skipped": int(hist.skipped_steps),
            "first_scale": float(hist.scales[0]),
            "final_scale": float(eng.scale),
            "max_score": max_score,
        }
    return out
