"""The model zoo's names and sizes, one copy for every framework.

Usage::

    from mpcourse.engines.zoo import ZOO, SIZES, SPECS, grid_side

    SPECS["mlp"]["large"]          # {'hidden': (4096, 4096, 4096)}
    SPECS["gpt"]["small"]          # a character-level GPT: 4 blocks of width 64 (about 210k parameters)
    grid_side(64, "cnn")           # 8: a flat input of 64 features is viewed as 8x8

``engines/torch/models.py`` and ``engines/mlx/models.py`` build the same architectures from this
table, with the same parameter names, so a torch ``state_dict`` maps onto an MLX model key by
key. Widths are multiples of 8 so that fp16/bf16 matmuls can use tensor cores.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["ZOO", "SIZES", "SPECS", "TOKEN_MODELS", "grid_side", "spec", "flat_features"]

ZOO: tuple[str, ...] = ("mlp", "deep_mlp", "cnn", "transformer", "lstm", "gpt")
SIZES: tuple[str, ...] = ("small", "large")
TOKEN_MODELS: tuple[str, ...] = ("gpt",)  # zoo models that take (n, T) integer token ids, not flat features

SPECS: dict[str, dict[str, dict[str, Any]]] = {
    "mlp": {"small": {"hidden": (256, 256)}, "large": {"hidden": (4096, 4096, 4096)}},
    "deep_mlp": {"small": {"hidden": (128,) * 8}, "large": {"hidden": (1024,) * 16}},
    "cnn": {"small": {"channels": 16, "blocks": 2}, "large": {"channels": 64, "blocks": 4}},
    "transformer": {
        "small": {"dim": 64, "depth": 2, "heads": 4, "mlp_ratio": 2},
        "large": {"dim": 256, "depth": 4, "heads": 8, "mlp_ratio": 4},
    },
    "lstm": {"small": {"hidden": 64, "layers": 1}, "large": {"hidden": 512, "layers": 2}},
    # nanoGPT-shaped: num_features is the context length, num_classes the vocabulary.
    "gpt": {
        "small": {"dim": 64, "depth": 4, "heads": 4, "mlp_ratio": 4},
        "large": {"dim": 256, "depth": 6, "heads": 8, "mlp_ratio": 4},
    },
}


def grid_side(num_features: int, model: str) -> int:
    """The side of the square grid a flat input is viewed as, or a ValueError."""
    side = math.isqrt(num_features)
    if side * side != num_features:
        raise ValueError(
            f"model {model!r} views inputs as a square grid, but {num_features} "
            f"features is not a perfect square (e.g. 64 for 8x8, 784 for 28x28)"
        )
    return side


def spec(name: str, size: str) -> dict[str, Any]:
    """The architecture entry of zoo model ``name`` at ``size``, or a ValueError naming both."""
    if name not in SPECS:
        raise ValueError(f"unknown model {name!r}; the zoo has {', '.join(map(repr, SPECS))}")
    if size not in SPECS[name]:
        raise ValueError(f"unknown size {size!r}; allowed: {', '.join(map(repr, SIZES))}")
    return dict(SPECS[name][size])


def flat_features(name: str, num_features: int) -> int | None:
    """The flat input width zoo model ``name`` takes (every sample viewed as that many floats),
    or None for a token model, which takes ``(n, T)`` integer ids with ``T <= num_features``."""
    return None if name in TOKEN_MODELS else num_features
