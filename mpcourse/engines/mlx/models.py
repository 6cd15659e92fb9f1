"""The model zoo for MLX: mlp, deep_mlp, cnn, transformer, lstm -- the torch zoo's twins.

Usage::

    from mpcourse.engines.mlx.models import build_model, load_torch_state

    model = build_model("cnn", size="small", num_features=64, num_classes=10)   # 8x8 images
    load_torch_state(model, torch_model.state_dict())   # copy a torch zoo model's weights in

The names, sizes (:data:`mpcourse.engines.zoo.SPECS`, one table for both) and parameter names match the
PyTorch zoo, so a torch ``state_dict`` maps onto an MLX model key by key. Two places differ
because the frameworks do, and :func:`load_torch_state` converts them:

- convolutions: MLX is channels-last (NHWC). A conv weight is ``(out, kh, kw, in)`` in MLX
  and ``(out, in, kh, kw)`` in torch, and the CNN views a flat input as ``(n, side, side, 1)``
  instead of ``(n, 1, side, side)`` (with one channel, the pixel order is the same).
- LSTM: torch keeps two biases per layer (``bias_ih``, ``bias_hh``) that are always added
  together; MLX keeps their sum as one ``bias``. Gate order is i, f, g, o in both.

BatchNorm's running statistics are not trainable parameters in MLX (they live in
``model.parameters()`` but not in ``trainable_parameters()``), as torch keeps them as buffers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mpcourse.engines.zoo import grid_side, spec

__all__ = ["build_model", "load_torch_state", "MLP", "ResNetCNN", "TransformerClassifier", "LSTMClassifier"]


class MLP(nn.Module):
    """Linear + ReLU layers; ``deep_mlp`` is the same class with many narrow layers."""

    def __init__(self, num_features: int, num_classes: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        dims = (num_features, *hidden)
        self.layers = [nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:])]
        self.head = nn.Linear(dims[-1], num_classes)

    def __call__(self, x: mx.array) -> mx.array:
        for layer in self.layers:
            x = nn.relu(layer(x))
        return self.head(x)


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm(channels)

    def __call__(self, x: mx.array) -> mx.array:
        h = nn.relu(self.bn1(self.conv1(x)))
        return nn.relu(x + self.bn2(self.conv2(h)))


class ResNetCNN(nn.Module):
    """A small ResNet: a 3x3 stem, residual blocks, global average pooling, a linear head."""

    def __init__(self, num_features: int, num_classes: int, channels: int, blocks: int) -> None:
        super().__init__()
        self.side = grid_side(num_features, "cnn")
        self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm(channels)
        self.blocks = [_ResBlock(channels) for _ in range(blocks)]
        self.head = nn.Linear(channels, num_classes)

    def __call__(self, x: mx.array) -> mx.array:
        x = x.reshape(-1, self.side, self.side, 1)  # NHWC; torch's view is (n, 1, side, side)
        x = nn.relu(self.bn(self.stem(x)))
        for block in self.blocks:
            x = block(x)
        return self.head(x.mean(axis=(1, 2)))  # pool over H, W (torch: dims 2, 3)


class _EncoderBlock(nn.Module):
    """Pre-norm self-attention and MLP, line for line the torch ``_EncoderBlock``."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def __call__(self, x: mx.array) -> mx.array:
        b, t, d = x.shape
        hd = d // self.heads
        q, k, v = self.qkv(self.norm1(x)).reshape(b, t, 3, self.heads, hd).transpose(2, 0, 3, 1, 4)
        attn = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(hd))
        x = x + self.proj(attn.transpose(0, 2, 1, 3).reshape(b, t, d))
        return x + self.fc2(nn.gelu(self.fc1(self.norm2(x))))  # exact (erf) GELU, as torch's default


class TransformerClassifier(nn.Module):
    """A small encoder classifier: rows as tokens, learned positions, mean pooling."""

    def __init__(self, num_features: int, num_classes: int, dim: int, depth: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.side = grid_side(num_features, "transformer")
        self.embed = nn.Linear(self.side, dim)
        self.pos = mx.zeros((1, self.side, dim))
        self.blocks = [_EncoderBlock(dim, heads, mlp_ratio) for _ in range(depth)]
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.embed(x.reshape(-1, self.side, self.side)) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(axis=1))


class LSTMClassifier(nn.Module):
    """An LSTM over the rows of the grid; the last hidden state feeds a linear head."""

    def __init__(self, num_features: int, num_classes: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.side = grid_side(num_features, "lstm")
        # mlx.nn.LSTM is one layer; a list of them stacks like torch's num_layers.
        self.lstm = [nn.LSTM(self.side if i == 0 else hidden, hidden) for i in range(layers)]
        self.head = nn.Linear(hidden, num_classes)

    def __call__(self, x: mx.array) -> mx.array:
        x = x.reshape(-1, self.side, self.side)
        for layer in self.lstm:
            x, _ = layer(x)
        return self.head(x[:, -1])


_CLASSES = {"mlp": MLP, "deep_mlp": MLP, "cnn": ResNetCNN, "transformer": TransformerClassifier, "lstm": LSTMClassifier}


def build_model(
    name: str,
    size: str = "small",
    num_features: int = 64,
    num_classes: int = 10,
    seed: int | None = 0,
    **overrides: Any,
) -> nn.Module:
    """Build a zoo model in fp32, initialised from ``seed``, its parameters evaluated.

    Args:
        name: ``mlp``, ``deep_mlp``, ``cnn``, ``transformer`` or ``lstm``.
        size: ``"small"`` or ``"large"`` (see :data:`mpcourse.engines.zoo.SPECS`). Default ``"small"``.
        num_features: input width. Default 64 (digits).
        num_classes: output classes. Default 10.
        seed: seeds the initial weights (None: MLX's global RNG as it stands). MLX has no
            ``fork_rng``, so a seed also re-seeds MLX's global RNG. Default 0.
        **overrides: replace a spec entry, e.g. ``hidden=(1024, 1024)``.

    The initial weights follow the same distributions as torch's defaults but not the same
    numbers (different RNGs); use :func:`load_torch_state` for identical weights.
    """
    arch = {**spec(name, size), **overrides}
    if seed is not None:
        mx.random.seed(seed)
    model = _CLASSES[name](num_features, num_classes, **arch)
    mx.eval(model.parameters())
    return model


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor, without importing torch here
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def load_torch_state(model: nn.Module, state: Mapping[str, Any]) -> None:
    """Copy a torch zoo model's ``state_dict`` into the matching MLX zoo model, in place.

    Usage::

        tm = torch_models.build_model("lstm")
        mm = mlx_models.build_model("lstm")
        load_torch_state(mm, tm.state_dict())   # now mm(x) matches tm(x) to float precision

    Args:
        model: an MLX zoo model of the same kind, size and input/output widths.
        state: the torch ``state_dict`` (tensors or numpy arrays by torch's names).

    Raises:
        ValueError: a parameter is missing from ``state`` or has another shape.
    """
    out: list[tuple[str, mx.array]] = []
    for name, mine in tree_flatten(model.parameters()):
        value = _torch_value(name, state)
        if value.ndim == 4:  # conv weight: torch (out, in, kh, kw) -> MLX (out, kh, kw, in)
            value = value.transpose(0, 2, 3, 1)
        if value.shape != tuple(mine.shape):
            raise ValueError(
                f"parameter {name!r}: torch gives shape {value.shape}, the MLX model "
                f"has {tuple(mine.shape)}; build both with the same spec and sizes"
            )
        out.append((name, mx.array(value).astype(mine.dtype)))
    model.update(tree_unflatten(out))
    mx.eval(model.parameters())


def _torch_value(name: str, state: Mapping[str, Any]) -> np.ndarray:
    # MLX "lstm.<layer>.Wx|Wh|bias" <- torch "lstm.weight_ih_l<layer>" etc.
    parts = name.split(".")
    if len(parts) == 3 and parts[0] == "lstm" and parts[2] in ("Wx", "Wh", "bias"):
        layer = parts[1]
        keys = {"Wx": ["weight_ih"], "Wh": ["weight_hh"], "bias": ["bias_ih", "bias_hh"]}[parts[2]]
        names = [f"lstm.{k}_l{layer}" for k in keys]
    else:
        names = [name]
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(f"torch state has no {missing[0]!r} (needed for MLX parameter {name!r})")
    arrays = [_to_numpy(state[n]) for n in names]
    return arrays[0] if len(arrays) == 1 else arrays[0] + arrays[1]  # the two LSTM biases add up to MLX's one
