"""Training memory by the byte: what halves in fp16/bf16 and what does not.

Usage::

    from mpcourse import memory

    memory.state_bytes_per_param("fp16", "adam")
    # {'fp32 master weights': 4, 'fp32 gradients': 4, 'Adam m (fp32)': 4, 'Adam v (fp32)': 4}
    memory.model_state_bytes(1_000_000, "fp16", "adam")     # 16_000_000: no saving at all
    memory.state_bytes_per_param("fp16", "adam", recipe="half copy")  # the 2+2+4+4+4 = 16 recipe
    memory.matmul_intensity(4096, 4096, 4096, "fp16")       # FLOPs per byte moved: compute-bound
    memory.elementwise_intensity("fp16")                    # 1/6 FLOP per byte: memory-bound

Model state is what lives for the whole run: weights, gradients and optimizer moments. In
mixed precision the weights the optimizer updates stay fp32 ("master weights") and Adam's
moments stay fp32, so model state does not shrink. What shrinks is what a step creates and
throws away: the activations saved for the backward pass (measured by
``mpcourse.engines.torch.bench.saved_tensor_bytes``).
"""

from __future__ import annotations

from mpcourse._validate import int_at_least

__all__ = ["state_bytes_per_param", "model_state_bytes", "RECIPES", "matmul_intensity", "elementwise_intensity"]

RECIPES: tuple[str, ...] = ("autocast", "half copy", "pure half")
_MOMENTS = {"adam": ("Adam m", "Adam v"), "adamw": ("AdamW m", "AdamW v"), "sgd": ("SGD momentum",)}
_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2}


def state_bytes_per_param(precision: str, optimizer: str = "adam", recipe: str = "autocast") -> dict[str, int]:
    """Bytes per parameter of model state, itemised.

    Args:
        precision: ``"fp32"``, ``"fp16"`` or ``"bf16"``.
        optimizer: ``"adam"``, ``"adamw"`` or ``"sgd"`` (with momentum). Default ``"adam"``.
        recipe: how mixed precision keeps its weights. Default ``"autocast"``.
            ``"autocast"`` (torch.autocast, the mpcourse torch engine): fp32 weights and
            gradients, half copies made per step (activations, not state).
            ``"half copy"`` (Micikevicius et al. 2018, apex O2, DeepSpeed): a persistent half
            copy of the weights and half gradients next to the fp32 master weights.
            ``"pure half"`` (``master_weights=False``): everything in half, moments included --
            the memory saving that costs accuracy.
    """
    if precision not in _BYTES:
        raise ValueError(f"precision must be one of 'fp32', 'fp16', 'bf16'; got {precision!r}")
    if optimizer not in _MOMENTS:
        raise ValueError(f"optimizer must be one of 'adam', 'adamw', 'sgd'; got {optimizer!r}")
    if recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(map(repr, RECIPES))}; got {recipe!r}")
    half = _BYTES[precision]
    if precision == "fp32" or recipe == "autocast":
        out = {"fp32 master weights" if precision != "fp32" else "fp32 weights": 4, "fp32 gradients": 4}
        moment = 4
    elif recipe == "half copy":
        out = {f"{precision} weights": half, f"{precision} gradients": half, "fp32 master weights": 4}
        moment = 4
    else:
        out = {f"{precision} weights": half, f"{precision} gradients": half}
        moment = half
    mom_dtype = "fp32" if moment == 4 else precision
    for name in _MOMENTS[optimizer]:
        out[f"{name} ({mom_dtype})"] = moment
    return out


def model_state_bytes(num_params: int, precision: str, optimizer: str = "adam", recipe: str = "autocast") -> int:
    """Total bytes of model state for ``num_params`` parameters (see :func:`state_bytes_per_param`)."""
    int_at_least("num_params", num_params, 0)
    return num_params * sum(state_bytes_per_param(precision, optimizer, recipe).values())


def matmul_intensity(m: int, n: int, k: int, precision: str) -> float:
    """FLOPs per byte of an ``(m x k) @ (k x n)`` matmul that reads A and B and writes C once.

    ``2*m*n*k`` FLOPs over ``(m*k + k*n + m*n) * bytes`` bytes: grows with the sizes, so large
    matmuls are compute-bound (their speed is the tensor cores') and small ones memory-bound.
    """
    if precision not in _BYTES:
        raise ValueError(f"precision must be one of 'fp32', 'fp16', 'bf16'; got {precision!r}")
    return 2.0 * m * n * k / ((m * k + k * n + m * n) * _BYTES[precision])


def elementwise_intensity(precision: str) -> float:
    """FLOPs per byte of ``c = a + b``: one FLOP per 3 elements moved, whatever the size."""
    if precision not in _BYTES:
        raise ValueError(f"precision must be one of 'fp32', 'fp16', 'bf16'; got {precision!r}")
    return 1.0 / (3 * _BYTES[precision])
