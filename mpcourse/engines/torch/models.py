"""The model zoo for PyTorch: mlp, deep_mlp, cnn, transformer, lstm, each small or large.

Usage::

    from mpcourse.engines.torch.models import build_model, SPECS

    model = build_model("cnn", size="small", num_features=64, num_classes=10)  # 8x8 images
    SPECS["mlp"]["large"]                                                      # {'hidden': (4096,)*3}

Every model takes flat ``(batch, num_features)`` float inputs, as :mod:`mpcourse.data` gives
them. Image and sequence models view them as a square ``side x side`` grid
(``num_features = side**2``): the CNN as a one-channel image, the transformer and the LSTM as
``side`` tokens of ``side`` values. The MLX zoo (``engines/mlx/models.py``) has the same names, sizes
and parameter shapes. Widths are multiples of 8 so that fp16/bf16 matmuls can use tensor cores.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mpcourse.engines.zoo import grid_side, spec

__all__ = ["build_model", "MLP", "ResNetCNN", "TransformerClassifier", "LSTMClassifier"]


class MLP(nn.Module):
    """Linear + ReLU layers; ``deep_mlp`` is the same class with many narrow layers."""

    def __init__(self, num_features: int, num_classes: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        dims = (num_features, *hidden)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:]))
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.relu(layer(x))
        return self.head(x)


class _ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(h)))


class ResNetCNN(nn.Module):
    """A small ResNet: a 3x3 stem, residual blocks, global average pooling, a linear head."""

    def __init__(self, num_features: int, num_classes: int, channels: int, blocks: int) -> None:
        super().__init__()
        self.side = grid_side(num_features, "cnn")
        self.stem = nn.Conv2d(1, channels, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(channels)
        self.blocks = nn.Sequential(*(_ResBlock(channels) for _ in range(blocks)))
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, 1, self.side, self.side)
        x = self.blocks(F.relu(self.bn(self.stem(x))))
        return self.head(x.mean(dim=(2, 3)))


class _EncoderBlock(nn.Module):
    """Pre-norm self-attention and MLP, written out so the MLX twin can mirror it exactly."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class TransformerClassifier(nn.Module):
    """A small encoder classifier: rows as tokens, learned positions, mean pooling."""

    def __init__(self, num_features: int, num_classes: int, dim: int, depth: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.side = grid_side(num_features, "transformer")
        self.embed = nn.Linear(self.side, dim)
        self.pos = nn.Parameter(torch.zeros(1, self.side, dim))
        self.blocks = nn.ModuleList(_EncoderBlock(dim, heads, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x.view(-1, self.side, self.side)) + self.pos
        for block in self.blocks:
            x = block(x)
        return self.head(self.norm(x).mean(dim=1))


class LSTMClassifier(nn.Module):
    """An LSTM over the rows of the grid; the last hidden state feeds a linear head."""

    def __init__(self, num_features: int, num_classes: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.side = grid_side(num_features, "lstm")
        self.lstm = nn.LSTM(self.side, hidden, num_layers=layers, batch_first=True)
        self.head = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(-1, self.side, self.side)
        if (
            x.device.type == "cpu"
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.float16
        ):
            # oneDNN has no fp16 LSTM kernel on CPUs without AVX512-FP16 ("could not create a
            # primitive descriptor"): on the CPU the recurrence runs in fp32 under fp16 autocast.
            with torch.autocast("cpu", enabled=False):
                out, _ = self.lstm(x.float())
        else:
            out, _ = self.lstm(x)
        return self.head(out[:, -1])


_CLASSES = {"mlp": MLP, "deep_mlp": MLP, "cnn": ResNetCNN, "transformer": TransformerClassifier, "lstm": LSTMClassifier}


def build_model(
    name: str,
    size: str = "small",
    num_features: int = 64,
    num_classes: int = 10,
    seed: int | None = 0,
    **overrides: Any,
) -> nn.Module:
    """Build a zoo model in fp32 on the CPU, initialised from ``seed``.

    Args:
        name: ``mlp``, ``deep_mlp``, ``cnn``, ``transformer`` or ``lstm``.
        size: ``"small"`` or ``"large"`` (see :data:`mpcourse.engines.zoo.SPECS`). Default ``"small"``.
        num_features: input width. Default 64 (digits).
        num_classes: output classes. Default 10.
        seed: seeds the initial weights (None: torch's global RNG). Default 0.
        **overrides: replace a spec entry, e.g. ``hidden=(1024, 1024)``.
    """
    arch = {**spec(name, size), **overrides}
    if seed is None:
        return _CLASSES[name](num_features, num_classes, **arch)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return _CLASSES[name](num_features, num_classes, **arch)
