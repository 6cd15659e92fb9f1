"""The model zoo for PyTorch: mlp, deep_mlp, cnn, transformer, lstm, gpt, each small or large.

Usage::

    from mpcourse.engines.torch.models import build_model, SPECS

    model = build_model("cnn", size="small", num_features=64, num_classes=10)  # 8x8 images
    SPECS["mlp"]["large"]                                                      # {'hidden': (4096,)*3}

Every model takes flat ``(batch, num_features)`` float inputs, as :mod:`mpcourse.data` gives
them. Image and sequence models view them as a square ``side x side`` grid
(``num_features = side**2``): the CNN as a one-channel image, the transformer and the LSTM as
``side`` tokens of ``side`` values. ``gpt`` takes ``(batch, T)`` integer token ids instead
(``num_features`` is its context length, ``num_classes`` its vocabulary). The MLX zoo
(``engines/mlx/models.py``) has the same names, sizes and parameter shapes. Widths are
multiples of 8 so that fp16/bf16 matmuls can use tensor cores.
"""

from __future__ import annotations

import math
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from mpcourse.engines.zoo import grid_side, spec

__all__ = [
    "build_model",
    "MLP",
    "ResNetCNN",
    "TransformerClassifier",
    "LSTMClassifier",
    "GPT",
    "CausalSelfAttention",
]


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
        name: ``mlp``, ``deep_mlp``, ``cnn``, ``transformer``, ``lstm`` or ``gpt``.
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


class CausalSelfAttention(nn.Module):
    """nanoGPT's attention, written out so the scores are a tensor of their own.

    ``attn_fp32=False`` computes the scores as nanoGPT does, ``(q @ k^T) * (1 / sqrt(head_dim))``:
    under fp16 autocast the product is an fp16 matmul, and a score past 65504 becomes inf (the
    classic transformer failure in fp16; loss scaling cannot help, it is the forward pass).
    ``attn_fp32=True`` computes scores and softmax in fp32 (an fp32 region, as Megatron's
    ``attention_softmax_in_fp32``).
    """

    def __init__(self, dim: int, heads: int, attn_fp32: bool = False) -> None:
        super().__init__()
        self.heads, self.attn_fp32 = heads, attn_fp32
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def scores(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The pre-softmax attention scores ``(b, heads, t, t)`` (unmasked) and the values."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        if self.attn_fp32:
            with torch.autocast(x.device.type, enabled=False):
                return (q.float() @ k.float().transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1])), v
        return (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1])), v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        att, v = self.scores(x)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        att = torch.softmax(att.float().masked_fill(~causal, float("-inf")), dim=-1)  # softmax in fp32
        return self.proj((att.to(v.dtype) @ v).transpose(1, 2).reshape(b, t, d))


class _GPTBlock(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int, attn_fp32: bool) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = CausalSelfAttention(dim, heads, attn_fp32)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_ratio * dim)
        self.fc2 = nn.Linear(mlp_ratio * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


class GPT(nn.Module):
    """A character-level GPT in nanoGPT's shape: ``(n, T)`` token ids -> ``(n, T, vocab)`` logits.

    ``num_features`` is the context length (``T`` at most that), ``num_classes`` the vocabulary.
    Weights start as nanoGPT's: normal(0, 0.02), residual projections scaled by 1/sqrt(2 depth).
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: int,
        attn_fp32: bool = False,
    ) -> None:
        super().__init__()
        self.block = num_features
        self.tok = nn.Embedding(num_classes, dim)
        self.pos = nn.Embedding(num_features, dim)
        self.blocks = nn.ModuleList(_GPTBlock(dim, heads, mlp_ratio, attn_fp32) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.ndim == 2:
                std = 0.02 / math.sqrt(2 * depth) if name.endswith(("attn.proj.weight", "fc2.weight")) else 0.02
                nn.init.normal_(p, 0.0, std)

    def layers(self) -> list[_GPTBlock]:
        """The transformer blocks, in order."""
        return [cast(_GPTBlock, b) for b in self.blocks]

    def scale_qk_(self, gain: float) -> GPT:
        """Multiply every block's query and key projections by ``gain``, in place: the attention
        scores grow by ``gain**2`` (a stand-in for the attention-logit growth of long runs)."""
        with torch.no_grad():
            for blk in self.layers():
                d = blk.attn.proj.in_features
                blk.attn.qkv.weight[: 2 * d] *= gain
                blk.attn.qkv.bias[: 2 * d] *= gain
        return self

    @torch.no_grad()
    def attention_max(self, x: Any) -> float:
        """The largest ``q . k`` over every block's causal (unmasked) scores for token ids ``x``
        (a tensor or numpy), computed in fp32 before the ``1/sqrt(head_dim)`` factor: what an fp16
        matmul must hold. Past 65504 it is +inf and its softmax row nan (a score below -65504
        only becomes -inf, a zero weight, so the signed maximum is what breaks the forward)."""
        x = torch.as_tensor(x, device=self.head.weight.device)
        t = x.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        with torch.autocast(x.device.type, enabled=False):
            h = (self.tok(x) + self.pos(torch.arange(t, device=x.device))).float()
            top = float("-inf")
            for blk in self.layers():
                att, _ = blk.attn.scores(blk.norm1(h))
                raw = att.float() * math.sqrt(blk.attn.proj.in_features // blk.attn.heads)
                top = max(top, float(raw.masked_fill(~causal, float("-inf")).max()))
                h = blk(h)
        return top

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = x.shape[1]
        if t > self.block:
            raise ValueError(f"sequence of {t} tokens is longer than the model's context of {self.block}")
        h = self.tok(x) + self.pos(torch.arange(t, device=x.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.norm(h))


_CLASSES: dict[str, Any] = {
    "mlp": MLP,
    "deep_mlp": MLP,
    "cnn": ResNetCNN,
    "transformer": TransformerClassifier,
    "lstm": LSTMClassifier,
    "gpt": GPT,
}
