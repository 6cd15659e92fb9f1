"""Training engines: the factory, the backends found here, one room per framework.

Usage::

    import mpcourse as mpc                     # or: from mpcourse.engines import make_engine

    eng = mpc.make_engine("torch", model="mlp", config=mpc.TrainConfig(precision="fp16"))
    mpc.available_backends()                   # e.g. ['torch:cpu', 'mlx:cpu']
    installed("mlx")                           # can it be imported? (without importing it)

``engines/torch/`` and ``engines/mlx/`` hold the framework code, with the same file names
(``engine``, ``models``, ``clip``, ``probes``, ``bench``, ...), so a missing twin shows. They never
import each other. A framework is imported only when an engine for it is built.
"""

from __future__ import annotations

import sys
from typing import Any

from mpcourse._validate import check_choice, int_at_least
from mpcourse.config import TrainConfig
from mpcourse.data import Dataset
from mpcourse.engines.availability import BACKENDS, INSTALL_HINT, installed, missing_reason, require_backend
from mpcourse.engines.base import BackendUnavailableError, DeviceUnavailableError, Engine
from mpcourse.engines.zoo import SIZES, ZOO
from mpcourse.history import History, StepRecord

__all__ = [
    "BACKENDS",
    "INSTALL_HINT",
    "SIZES",
    "ZOO",
    "BackendUnavailableError",
    "DeviceUnavailableError",
    "Engine",
    "History",
    "StepRecord",
    "available_backends",
    "installed",
    "make_engine",
    "missing_reason",
    "require_backend",
]


def make_engine(
    backend: str = "torch",
    model: Any = "mlp",
    config: TrainConfig | None = None,
    device: str = "auto",
    loss_fn: Any = None,
    *,
    data: Dataset | None = None,
    num_features: int | None = None,
    num_classes: int | None = None,
    size: str = "small",
    verbose: bool = True,
) -> Engine:
    """Build a training engine.

    Args:
        backend: ``"torch"`` or ``"mlx"``. Default ``"torch"``.
        model: a zoo name (``mlp``, ``deep_mlp``, ``cnn``, ``transformer``, ``lstm``, ``gpt``) or
            your own framework model (``torch.nn.Module`` / ``mlx.nn.Module``), which needs no
            sizes: it takes any input shape it accepts (images ``(n, C, H, W)`` in torch,
            ``(n, H, W, C)`` in MLX, token ids ``(n, T)``), and its output width is read from the
            first forward pass, before any update. Default ``"mlp"``.
        config: a :class:`TrainConfig`. Default ``TrainConfig()`` (fp32).
        device: ``"auto"`` (torch: cuda, then mps, then cpu; mlx: its default device), or an
            explicit device; an explicit device that is absent is an error.
        loss_fn: ``loss_fn(outputs, targets) -> 0-d tensor``, given fp32 outputs; then the
            targets may be any real array (float regression targets, ``(n, T)`` next tokens).
            Checked on the first step. Default: cross-entropy of class labels (the last axis of
            the outputs), computed in fp32.
        data: a Dataset whose feature and class counts size the zoo model.
        num_features, num_classes: size the zoo model without a dataset (default 64 and 10:
            the digits task). Zoo models only: a model of your own ignores data, num_features
            and num_classes.
        size: ``"small"`` or ``"large"`` for zoo models. Default ``"small"``.
        verbose: print which device ``"auto"`` chose. Default True.
    """
    check_choice("backend", backend, BACKENDS)
    if config is None:
        config = TrainConfig()
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be an mpcourse.TrainConfig, got {type(config).__name__}")
    if isinstance(model, str):
        check_choice("model", model, ZOO)
    check_choice("size", size, SIZES)
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'auto', 'cpu', 'cuda', got {device!r}")
    feats = num_features if num_features is not None else (data.num_features if data is not None else 64)
    classes = num_classes if num_classes is not None else (data.num_classes if data is not None else 10)
    for name, v in (("num_features", feats), ("num_classes", classes)):
        int_at_least(name, v, 1)
    require_backend(backend)
    cls: type[Any]
    if backend == "torch":
        from mpcourse.engines.torch.engine import TorchEngine

        cls = TorchEngine
    else:
        from mpcourse.engines.mlx.engine import MLXEngine

        cls = MLXEngine
    eng: Engine = cls(
        model=model, config=config, device=device, loss_fn=loss_fn, num_features=feats, num_classes=classes, size=size
    )
    if verbose and device == "auto":
        print(f"mpcourse: {backend} engine on {eng.device} (device='auto')", file=sys.stderr)
    return eng


def available_backends() -> list[str]:
    """The backend:device pairs that can run here, best first, e.g. ``['torch:cuda', 'mlx:cpu']``."""
    found: list[str] = []
    if installed("torch"):
        from mpcourse.engines.torch.devices import torch_devices

        found += [f"torch:{d}" for d in torch_devices()]
    if installed("mlx"):
        try:
            from mpcourse.engines.mlx.devices import mlx_devices
        except ImportError:  # the MLX engine is optional; the package can still be imported
            pass
        else:
            found += [f"mlx:{d}" for d in mlx_devices()]
    return found
