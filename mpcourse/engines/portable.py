"""Engine state as plain numpy, and back: what lets checkpoints stay framework-neutral.

Usage::

    from mpcourse.engines.portable import export_state, import_state

    tree = export_state(eng)        # eng.state_dict() with every torch tensor / mlx array
                                    #   replaced by a FrameworkArray (numpy + where it came from),
                                    #   plus the framework's RNG state
    import_state(other_eng, tree)   # the inverse: other_eng continues exactly as eng would

This is the only place a checkpoint touches torch or mlx, and it imports them lazily, so the
module itself needs only numpy. bfloat16 (which numpy lacks) travels as ``ml_dtypes.bfloat16``.
Also here, because they need the framework: :func:`parameter_count`, :func:`activation_count`
(a real forward pass with every leaf layer's output counted) and :func:`device_memory_bytes`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "FrameworkArray",
    "to_numpy_tree",
    "from_numpy_tree",
    "export_state",
    "import_state",
    "rng_state",
    "set_rng_state",
    "seed_rngs",
    "parameter_count",
    "activation_count",
    "device_memory_bytes",
    "array_leaves",
]

FRAMEWORKS: tuple[str, ...] = ("torch", "mlx")


@dataclass(frozen=True)
class FrameworkArray:
    """A framework tensor held as numpy: ``framework`` says what to turn it back into."""

    framework: str
    array: np.ndarray

    def __post_init__(self) -> None:
        if self.framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {FRAMEWORKS}, got {self.framework!r}")
        if not isinstance(self.array, np.ndarray):
            raise TypeError(f"array must be a numpy array, got {type(self.array).__name__}")


def _bf16() -> Any:
    import ml_dtypes

    return ml_dtypes.bfloat16


def _leaf_to_numpy(obj: Any) -> Any:
    mod = type(obj).__module__
    if mod.startswith("torch") and type(obj).__name__ in ("Tensor", "Parameter"):
        import torch

        t = obj.detach().to("cpu")
        if t.dtype == torch.bfloat16:  # numpy has no bf16: carry the bits, view as ml_dtypes
            return FrameworkArray("torch", t.view(torch.int16).numpy().copy().view(_bf16()))
        return FrameworkArray("torch", t.numpy().copy())
    if mod.startswith("mlx") and type(obj).__name__ == "array":
        from mpcourse.engines.mlx.engine import array_to_numpy

        return FrameworkArray("mlx", array_to_numpy(obj))
    return obj


def to_numpy_tree(tree: Any) -> Any:
    """Copy a nested dict/list/tuple tree, turning torch tensors and mlx arrays into FrameworkArrays."""
    if isinstance(tree, dict):
        return {k: to_numpy_tree(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [to_numpy_tree(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(to_numpy_tree(v) for v in tree)
    return _leaf_to_numpy(tree)


def _leaf_from_numpy(leaf: FrameworkArray) -> Any:
    arr = leaf.array
    is_bf16 = arr.dtype == np.dtype(_bf16())
    if leaf.framework == "torch":
        import torch

        if is_bf16:
            return torch.from_numpy(arr.view(np.int16).copy()).view(torch.bfloat16)
        return torch.from_numpy(arr.copy())
    import mlx.core as mx

    if is_bf16:
        return mx.array(arr.view(np.uint16)).view(mx.bfloat16)
    return mx.array(arr)


def from_numpy_tree(tree: Any) -> Any:
    """Inverse of :func:`to_numpy_tree`: FrameworkArrays become tensors / arrays again (on the CPU)."""
    if isinstance(tree, FrameworkArray):
        return _leaf_from_numpy(tree)
    if isinstance(tree, dict):
        return {k: from_numpy_tree(v) for k, v in tree.items()}
    if isinstance(tree, list):
        return [from_numpy_tree(v) for v in tree]
    if isinstance(tree, tuple):
        return tuple(from_numpy_tree(v) for v in tree)
    return tree


def array_leaves(tree: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """Every array (and numpy scalar) in a numpy tree by its path, e.g. ``{"framework/model/head.weight": ...}``."""
    out: dict[str, np.ndarray] = {}
    if isinstance(tree, FrameworkArray):
        out[prefix] = tree.array
    elif isinstance(tree, (np.ndarray, np.generic)):
        out[prefix] = np.asarray(tree)
    elif isinstance(tree, dict):
        for k, v in tree.items():
            out.update(array_leaves(v, f"{prefix}/{k}" if prefix else str(k)))
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            out.update(array_leaves(v, f"{prefix}/{i}" if prefix else str(i)))
    return out


# --- RNG ---------------------------------------------------------------------------------------
def rng_state(backend: str) -> dict[str, Any]:
    """The framework's global RNG state plus numpy's legacy global one, as a numpy tree.

    mpcourse's own data order needs no RNG (it is a function of seed and epoch); this is for
    models with dropout or user code that draws from the global generators.
    """
    legacy: tuple[Any, ...] = tuple(np.random.get_state())
    out: dict[str, Any] = {
        "numpy": {
            "name": legacy[0],
            "keys": legacy[1].copy(),
            "pos": int(legacy[2]),
            "has_gauss": int(legacy[3]),
            "cached_gaussian": float(legacy[4]),
        }
    }
    if backend == "torch":
        import torch

        out["torch"] = torch.get_rng_state().numpy().copy()
    elif backend == "mlx":
        import mlx.core as mx

        out["mlx"] = [np.array(a) for a in mx.random.state]
    return out


def seed_rngs(backend: str, seed: int) -> None:
    """Seed numpy's legacy global RNG and the framework's global RNG (a fresh run's first act)."""
    np.random.seed(seed)
    if backend == "torch":
        import torch

        torch.manual_seed(seed)
    elif backend == "mlx":
        import mlx.core as mx

        mx.random.seed(seed)


def set_rng_state(backend: str, state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    n = state["numpy"]
    np.random.set_state(
        (
            n["name"],
            np.asarray(n["keys"], dtype=np.uint32),
            int(n["pos"]),
            int(n["has_gauss"]),
            float(n["cached_gaussian"]),
        )
    )
    if backend == "torch" and "torch" in state:
        import torch

        torch.set_rng_state(torch.from_numpy(np.asarray(state["torch"], dtype=np.uint8).copy()))
    elif backend == "mlx" and "mlx" in state:
        import mlx.core as mx

        # MLX's global state is one uint32 key pair that cannot be assigned; seed(s) sets the
        # key to [s >> 32, s & 0xffffffff], so seeding with the pair rebuilds that exact key.
        (key,) = state["mlx"]
        hi, lo = (int(v) for v in np.asarray(key, dtype=np.uint32))
        mx.random.seed((hi << 32) | lo)


# --- whole engines -----------------------------------------------------------------------------
def export_state(engine: Any) -> dict[str, Any]:
    """``engine.state_dict()`` plus RNG state, as a numpy tree (a snapshot: later steps leave it alone)."""
    state = to_numpy_tree(engine.state_dict())
    state["rng"] = rng_state(engine.backend)
    return state


def import_state(engine: Any, state: dict[str, Any]) -> None:
    """Load a tree from :func:`export_state` into ``engine`` (same backend, model and scaler kind)."""
    state = dict(state)
    rng = state.pop("rng", None)
    engine.load_state_dict(from_numpy_tree(state))
    if rng is not None:
        set_rng_state(engine.backend, rng)


# --- introspection -------------------------------------------------------------------------------
def parameter_count(engine: Any) -> int:
    """Trainable parameters of the engine's model (the real count, from the framework)."""
    if engine.backend == "torch":
        return int(sum(p.numel() for p in engine.model.parameters() if p.requires_grad))
    from mlx.utils import tree_flatten

    return int(sum(v.size for _, v in tree_flatten(engine.model.trainable_parameters())))


def activation_count(engine: Any, x: np.ndarray) -> int:
    """Values produced by the model's leaf layers in one forward pass over batch ``x``.

    This is what backward keeps alive (roughly: a few ops save their inputs instead, and
    elementwise functions called outside a layer are not counted), measured by running the
    model once with every leaf layer's output size recorded.
    """
    x = np.asarray(x, dtype=np.float32)
    if engine.backend == "torch":
        return _torch_activations(engine, x)
    return _mlx_activations(engine, x)


def _torch_activations(engine: Any, x: np.ndarray) -> int:
    import torch

    total = [0]

    def count(_mod: Any, _inp: Any, out: Any) -> None:
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel()

    leaves = [m for m in engine.model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            engine.model(torch.from_numpy(x).to(next(engine.model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return int(total[0])


def _mlx_activations(engine: Any, x: np.ndarray) -> int:
    import mlx.core as mx

    # MLX modules have no hooks: give each leaf a recording subclass for one call.
    total = [0]
    swapped: list[tuple[Any, type]] = []
    for _, mod in _mlx_leaves(engine.model):
        cls = type(mod)

        def call(self: Any, *args: Any, _cls: type = cls, **kw: Any) -> Any:
            out = _cls.__call__(self, *args, **kw)
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, mx.array):
                    total[0] += t.size
            return out

        mod.__class__ = type(cls.__name__, (cls,), {"__call__": call})
        swapped.append((mod, cls))
    try:
        mx.eval(engine.model(mx.array(x)))
    finally:
        for mod, cls in swapped:
            mod.__class__ = cls
    return int(total[0])


def _mlx_leaves(model: Any) -> list[tuple[str, Any]]:
    import mlx.nn as nn

    return [
        (name, m)
        for name, m in model.named_modules()
        if isinstance(m, nn.Module) and not any(isinstance(c, nn.Module) for c in _children(m))
    ]


def _children(m: Any) -> list[Any]:
    out: list[Any] = []
    for v in m.children().values():
        if isinstance(v, (list, tuple)):
            out.extend(v)
        elif isinstance(v, dict):
            out.extend(v.values())
        else:
            out.append(v)
    return out


def device_memory_bytes(engine: Any) -> float | None:
    """Bytes the framework holds on the engine's accelerator now, or None on a CPU device."""
    if engine.backend == "torch":
        import torch

        if engine.device.startswith("cuda"):
            return float(torch.cuda.memory_allocated())
        if engine.device == "mps":
            return float(torch.mps.current_allocated_memory())
        return None
    if engine.device == "cpu":
        return None
    import mlx.core as mx

    return float(mx.get_active_memory())
