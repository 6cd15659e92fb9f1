"""The MLX engine: fp32 master weights, an fp16/bf16 compute copy, and mpcourse's loss scaler.

Usage::

    import mpcourse as mpc

    cfg = mpc.TrainConfig(precision="fp16", loss_scale="dynamic")
    eng = mpc.make_engine("mlx", model="mlp", config=cfg, device="auto")  # Metal, CUDA or CPU
    hist = eng.fit(mpc.data.load("digits"), epochs=3)
    eng.compiled = False        # the same step, uncompiled: slower, easier to step through

MLX has no autocast and no loss scaler, so the recipe is written out. One step::

    def scaled_loss(master, x, y, scale):
        model.update(cast(master, fp16))             # the fp16 copy; its backward casts to fp32
        out = model(x.astype(fp16))
        loss = loss_fn(out.astype(mx.float32), y)    # the loss in fp32
        return loss * scale, loss

    (_, loss), grads = mx.value_and_grad(scaled_loss)(master, x, y, scale)
    grads = [g * (1 / scale) for g in grads]         # unscale in fp32
    norm = sqrt(sum((g * g).sum() for g in grads))   # one reduction; inf/nan anywhere -> non-finite
    found_inf = ~isfinite(norm)
    new = optimizer.apply_gradients(grads, master)   # the fp32 masters take the update...
    master = where(found_inf, master, new)           # ...unless the step is skipped (bit-identical)
    mx.eval(loss, norm, found_inf, master, optimizer.state)   # the one evaluation of the step
    scaler.update(found_inf.item())                  # the same Python state machine as torch's

Choices, all set by :class:`~mpcourse.TrainConfig`:

- ``precision="fp32"``: the copy *is* the master; no casts.
- ``precision="fp16"|"bf16"``: fp32 masters updated by the optimizer, compute on a half copy.
- ``master_weights=False``: pure half precision -- the parameters and the optimizer state are
  themselves fp16/bf16 (gradients are still unscaled and checked in fp32, then cast to the
  parameter dtype for the update). Small updates round away; the course shows what that loses.
- ``loss_scale``: "none" applies every step, even a non-finite one (a plain loop); a static
  or dynamic scale skips non-finite steps. The scaler is :mod:`mpcourse.scaler`, as for torch.
- ``clip``: a policy from :mod:`mpcourse.clipping`. It decides on the host, so a clipped step
  reads ``found_inf`` before the update (one extra sync) and clips finite steps only.

The skip is a device-side ``where`` rather than a host ``if``: the whole step stays one lazy
graph, evaluated once and compiled (``mx.compile``) as one function. ``compiled`` (default:
on for zoo models with the default loss) switches between that and the plain Python path; both
compute the same numbers (a test checks it). Default: compiled on a GPU for zoo models with the
default loss; uncompiled on the CPU, where ``mx.compile`` first builds its fused kernels with a
C++ compiler (seconds to a minute, cached under ``$TMPDIR/mlx``). A compiled step traces
``loss_fn`` and the model once per input shape, so Python side effects in them run only while
tracing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mpcourse.config import TrainConfig
from mpcourse.engines.base import DeviceUnavailableError, Engine
from mpcourse.engines.mlx.arrays import all_finite, array_to_numpy, from_numpy, mx_array, to_numpy
from mpcourse.engines.mlx.devices import device_name, mlx_devices, resolve_device
from mpcourse.engines.mlx.fp8 import fp8_for_engine
from mpcourse.engines.mlx.models import build_model
from mpcourse.engines.mlx.support import precision_problem
from mpcourse.engines.zoo import flat_features

__all__ = [
    "MLXEngine",
    "mlx_devices",
    "resolve_device",
    "DeviceUnavailableError",
    "DTYPES",
    "array_to_numpy",
    "mx_array",
    "default_loss",
]

DTYPES = {"fp32": mx.float32, "fp16": mx.float16, "bf16": mx.bfloat16}

LossFn = Callable[[mx.array, mx.array], mx.array]


def default_loss(outputs: mx.array, labels: mx.array) -> mx.array:
    """Mean cross-entropy of class labels (the engines' default ``loss_fn``; outputs arrive in fp32)."""
    return nn.losses.cross_entropy(outputs, labels, reduction="mean")


class MLXEngine(Engine):
    """Training on MLX (Metal, CUDA or CPU); build it with :func:`mpcourse.make_engine`.

    Args mirror :class:`~mpcourse.engines.torch.engine.TorchEngine`; ``compile`` (keyword only)
    chooses the ``mx.compile``-d step (default: on a GPU for zoo models with the default loss).
    """

    backend = "mlx"
    framework_keys = ("master", "optimizer", "buffers", "scaler")

    def __init__(
        self,
        model: Any,
        config: TrainConfig,
        device: str = "auto",
        loss_fn: LossFn | None = None,
        num_features: int = 64,
        num_classes: int = 10,
        size: str = "small",
        *,
        compile: bool | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self._device = resolve_device(device)
        self.device = device_name(self._device)
        problem = precision_problem(self.device, config.precision)  # what this MLX cannot do there
        if problem:
            raise DeviceUnavailableError(f"{config.precision} on mlx {self.device}: {problem}")
        zoo = isinstance(model, str)
        if zoo:
            self.model_name = model if size == "small" else f"{model}:{size}"
            self.num_features, self.num_classes = num_features, num_classes
            self.flat_features = flat_features(model, num_features)
            model = build_model(model, size, num_features, num_classes, seed=config.seed)
        elif not isinstance(model, nn.Module):
            raise TypeError(f"model must be a zoo name or an mlx.nn.Module, got {type(model).__name__}")
        else:
            # A model of your own needs no sizes: its output width is read from a forward pass.
            self.model_name = type(model).__name__
            self.num_features = self.num_classes = self.flat_features = None
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable(outputs, labels), got {loss_fn!r}")
        self.user_loss_fn = loss_fn  # None: the default below
        self.loss_fn: LossFn = loss_fn or default_loss
        self.dtype = DTYPES[self._set_precision(config)]  # also sets pure_half and check_weights
        self.fp8 = fp8_for_engine(model, config)  # None unless precision="fp8"; before the masters are taken
        master_dtype = self.dtype if self.pure_half else mx.float32
        self._model = model
        self._model.train()
        # The master weights live here, apart from the model, which holds the compute copy.
        # A one-entry dict, so that mx.compile can capture the container and see new values.
        self._master: dict[str, Any] = {
            "params": tree_map(
                lambda p: p.astype(master_dtype) if mx.issubdtype(p.dtype, mx.floating) else p,
                model.trainable_parameters(),
            )
        }
        self.optimizer = self._make_optimizer()
        self.optimizer.init(self._master["params"])
        self.scaler = config.make_scaler()
        self._stale = True  # the model's copy lags the masters until .model is read
        mx.eval(self._master, self.optimizer.state, self._model.parameters())
        # Compiled by default where it pays: on a GPU, for zoo models and the default loss. On
        # the CPU, mx.compile builds its fused kernels with a C++ compiler on first use (tens of
        # seconds per new graph; cached under $TMPDIR/mlx) for a modest per-step gain.
        if compile is None:
            compile = zoo and loss_fn is None and self.device == "gpu" and self.fp8 is None
        self.compiled = compile

    # --- construction -----------------------------------------------------------------------
    def _make_optimizer(self) -> optim.Optimizer:
        c = self.config
        if c.optimizer == "adam":  # torch's Adam: bias correction on; L2 weight decay in _update
            return optim.Adam(learning_rate=c.lr, bias_correction=True)
        if c.optimizer == "adamw":
            return optim.AdamW(
                learning_rate=c.lr,
                bias_correction=True,
                weight_decay=0.01 if c.weight_decay is None else c.weight_decay,
            )
        return optim.SGD(learning_rate=c.lr, momentum=c.momentum, weight_decay=c.weight_decay or 0.0)

    @property
    def compiled(self) -> bool:
        """Whether the step runs as an ``mx.compile``-d function; assign to switch."""
        return self._compiled

    @compiled.setter
    def compiled(self, on: bool) -> None:
        if on and self.fp8 is not None:
            raise ValueError("an fp8 step cannot be mx.compile-d (each cast reads its amax on the host); compile=False")
        self._compiled = bool(on)
        self._grads, self._apply, self._fused = self._grad_graph, self._apply_graph, self._fused_graph
        if self._compiled:
            # The state a step reads and writes, captured so the compiled function sees new values.
            model, master, opt = self._model.state, self._master, self.optimizer.state
            self._grads = mx.compile(self._grad_graph, inputs=[model, master], outputs=[model])
            self._apply = mx.compile(self._apply_graph, inputs=[master, opt], outputs=[master, opt])
            self._fused = mx.compile(self._fused_graph, inputs=[model, master, opt], outputs=[model, master, opt])

    @property
    def model(self) -> nn.Module:
        """The MLX model, holding the compute-dtype copy of the current master weights."""
        if self._stale:
            self._model.update(self._compute_copy(self._master["params"]))
            self._stale = False
        return self._model

    @property
    def master_params(self) -> dict[str, Any]:
        """The master weights (fp32, or fp16/bf16 when ``master_weights=False``), as a tree."""
        return self._master["params"]

    @property
    def scale(self) -> float:
        return self.scaler.scale

    def _compute_copy(self, params: Any) -> Any:
        return tree_map(
            lambda p: p.astype(self.dtype) if p.dtype != self.dtype and mx.issubdtype(p.dtype, mx.floating) else p,
            params,
        )

    # --- the step, as lazy graphs -----------------------------------------------------------
    def _scaled_loss(self, params: Any, x: mx.array, y: mx.array, scale: mx.array) -> tuple[mx.array, mx.array]:
        self._model.update(self._compute_copy(params))  # the cast's backward returns fp32 grads
        out = self._model(self._cast_input(x))
        loss = self.call_loss(out.astype(mx.float32), y, check=not self.loss_checked)  # the loss in fp32
        return loss * scale, loss

    def _cast_input(self, x: mx.array) -> mx.array:
        # Float inputs in the compute dtype; integer inputs (token ids) stay integers.
        return x.astype(self.dtype) if mx.issubdtype(x.dtype, mx.floating) else x

    def _grad_graph(
        self, x: mx.array, y: mx.array, scale: mx.array, inv_scale: mx.array
    ) -> tuple[mx.array, Any, mx.array, mx.array]:
        """Loss, unscaled fp32 gradients, their norm and found_inf (nothing is updated)."""
        (_, loss), grads = mx.value_and_grad(self._scaled_loss)(self._master["params"], x, y, scale)
        grads = self._reduce_gradients(tree_map(lambda g: g.astype(mx.float32), grads))
        if self.scaler.skips_nonfinite:  # a real scaler (the no-op one's scale is always 1)
            grads = tree_map(lambda g: g * inv_scale, grads)  # unscale in fp32
        # One reduction: inf or nan in any gradient makes the sum of squares non-finite. (It
        # also overflows when the true norm passes ~1.8e19, where training is lost anyway.)
        leaves = [g for _, g in tree_flatten(grads)]
        sq = mx.sum(mx.stack([mx.sum(mx.square(g)) for g in leaves])) if leaves else mx.array(0.0)
        norm = mx.sqrt(sq)
        return loss, grads, norm, self._agree_found_inf(mx.logical_not(mx.isfinite(norm)))

    def _reduce_gradients(self, grads: Any) -> Any:
        """Hook: the distributed engine averages the gradients over the ranks here."""
        return grads

    def _agree_found_inf(self, found_inf: mx.array) -> mx.array:
        """Hook: the distributed engine sums the inf/nan flag over the ranks here."""
        return found_inf

    def _update(self, grads: Any, skip: mx.array | None) -> None:
        params = self._master["params"]
        grads = tree_map(lambda g, p: g.astype(p.dtype), grads, params)  # pure half: update in half
        wd = self.config.weight_decay
        if self.config.optimizer == "adam" and wd:  # torch's Adam adds L2 decay to the gradient
            grads = tree_map(lambda g, p: g + wd * p, grads, params)
        if skip is None:
            self._master["params"] = self.optimizer.apply_gradients(grads, params)
            return
        old_state = tree_map(lambda a: a, self.optimizer.state)  # same arrays, new containers
        new = self.optimizer.apply_gradients(grads, params)
        # A skipped step keeps the old arrays exactly: params, moments and Adam's step count.
        keep = lambda n, o: mx.where(skip, o, n)  # noqa: E731
        self._master["params"] = tree_map(keep, new, params)
        self.optimizer.state.update(tree_map(keep, self.optimizer.state, old_state))

    def _apply_graph(self, grads: Any) -> None:
        self._update(grads, None)

    def _fused_graph(
        self, x: mx.array, y: mx.array, scale: mx.array, inv_scale: mx.array
    ) -> tuple[mx.array, mx.array, mx.array]:
        loss, grads, norm, found_inf = self._grad_graph(x, y, scale, inv_scale)
        self._update(grads, found_inf if self.scaler.skips_nonfinite else None)
        return loss, norm, found_inf

    def batch_gradients(
        self, x: np.ndarray, y: np.ndarray, *, scale: float | None = None, unscale: bool = True
    ) -> tuple[mx.array, Any, mx.array, mx.array]:
        """Loss, fp32 gradients, their norm and found_inf for one batch, with nothing updated.

        ``scale`` defaults to the engine's current loss scale; ``unscale=False`` leaves the
        gradients carrying it. The model's compute copy is refreshed on the next ``.model`` read.
        """
        x, y = self.check_batch(x, y, "train")  # labels past the output width would index out of bounds
        s = float(self.scale if scale is None else scale)
        inv = np.float32(1.0 / s) if unscale else np.float32(1.0)
        with mx.stream(self._device):
            out = self._grads(mx_array(x), mx_array(np.asarray(y)), mx.array(s, dtype=mx.float32), mx.array(inv))
        self._stale = True
        return out

    def _clip(self, grads: Any, grad_norm: mx.array) -> tuple[Any, bool]:
        """Clip the unscaled gradients with ``config.clip``; returns (grads, whether it acted)."""
        if self.config.clip is None:
            return grads, False
        from mpcourse.engines.mlx.clip import apply_clip

        return apply_clip(self.config.clip, self, grads, grad_norm)

    def _train_step(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        xt, yt = mx_array(x), mx_array(y)
        scale = self.scale
        scale_t = mx.array(scale, dtype=mx.float32)
        inv_t = mx.array(np.float32(1.0 / scale))  # as GradScaler: float32 of the exact reciprocal
        t0 = time.perf_counter()
        self._stale = True
        clipped = False
        if self.fp8 is not None:
            self.fp8.begin_step()  # this step's casts feed the fp8 recipe (a probe's do not)
        # Until loss_fn has passed its check (while the step is traced), keep the buffers
        # (BatchNorm's running statistics) to put back if the check refuses the step.
        kept = None if self.loss_checked else self._buffers()
        with mx.stream(self._device):
            try:
                if self.config.clip is None:
                    loss, norm, found_t = self._fused(xt, yt, scale_t, inv_t)
                else:
                    loss, grads, norm, found_t = self._grads(xt, yt, scale_t, inv_t)
            except ValueError:
                if kept:
                    self._model.update(tree_unflatten(kept))
                raise
            if self.config.clip is not None:
                found = bool(found_t.item())  # a sync: the policy clips finite steps only
                if not found:
                    grads, clipped = self._clip(grads, norm)
                if not found or not self.scaler.skips_nonfinite:  # "none": even a non-finite step applies
                    self._apply(grads)
            mx.eval(loss, norm, found_t, self._master, self.optimizer.state, self._model.state)
        seconds = time.perf_counter() - t0
        found = bool(found_t.item())
        self.scaler.update(found)
        # Pure fp16 Adam: finite gradients, NaN weights (see nonfinite_update_risk); one sum says so.
        weights_bad = self.check_weights and not all_finite(self._master["params"])
        return {
            **({} if self.fp8 is None else {"fp8": self.fp8.end_step()}),  # per-tensor amax, scale, counts
            "loss": loss.item(),
            "scale": scale,
            "grad_norm": norm.item(),
            "found_inf": found or weights_bad,
            "skipped": found and self.scaler.skips_nonfinite,
            "seconds": seconds,
            "clipped": bool(clipped),
        }

    def _predict(self, x: np.ndarray, y: np.ndarray, labels: bool) -> tuple[float, int]:
        model = self.model
        was = model.training
        model.eval()
        try:
            with mx.stream(self._device):
                yt = mx_array(y)
                out = model(self._cast_input(mx_array(x)))
                loss = self.call_loss(out.astype(mx.float32), yt, check=True)
                correct = mx.sum(mx.argmax(out, axis=-1) == yt) if labels else mx.array(0)
                mx.eval(loss, correct)
            return loss.item() * len(x), int(correct.item())
        finally:
            model.train(was)

    def probe_outputs(self, x: np.ndarray) -> mx.array:
        model = self.model
        was = model.training
        model.eval()  # eval mode: BatchNorm's running statistics stay as they are
        try:
            with mx.stream(self._device):
                out = model(self._cast_input(mx_array(x)))
                mx.eval(out)  # a failing forward fails here, inside the check
            return out
        finally:
            model.train(was)

    def embedding_rows(self) -> list[int]:
        return [int(m.weight.shape[0]) for _, m in self._model.named_modules() if isinstance(m, nn.Embedding)]

    # --- state ------------------------------------------------------------------------------
    def _buffers(self) -> list[tuple[str, mx.array]]:
        trainable = {k for k, _ in tree_flatten(self._model.trainable_parameters())}
        return [(k, v) for k, v in tree_flatten(self._model.parameters()) if k not in trainable]

    def _framework_state(self) -> dict[str, Any]:
        # numpy copies: the returned dict is a snapshot that later steps do not change.
        return {
            "master": to_numpy(self._master["params"]),
            "optimizer": to_numpy(self.optimizer.state),
            "buffers": {k: array_to_numpy(v) for k, v in self._buffers()},  # BatchNorm running stats
            "scaler": self.scaler.state_dict(),
            **({} if self.fp8 is None else {"fp8": self.fp8.recipe.state_dict()}),
        }

    def _load_framework_state(self, state: dict[str, Any]) -> None:
        scaler = dict(state["scaler"])
        mine = self.scaler.kind
        if scaler.get("kind") != mine:
            raise ValueError(
                f"state_dict has a {scaler.get('kind')!r} loss scaler but this engine "
                f"uses {mine!r}; build the engine with the same TrainConfig"
            )
        # Check everything before changing anything: a refused state leaves the engine intact.
        master = from_numpy(state["master"], self._master["params"], "master weights")
        opt = from_numpy(state["optimizer"], self.optimizer.state, "optimizer state")
        buffers = from_numpy(state["buffers"], tree_unflatten(self._buffers()), "buffers") if self._buffers() else None
        # A state without fp8 recipe state (saved in another precision: a precision switch)
        # starts the recipe afresh; an fp8 one is checked before anything changes.
        fp8_state = state.get("fp8") if self.fp8 is not None else None
        if self.fp8 is not None and fp8_state is not None:
            self.fp8.recipe.clone().load_state_dict(fp8_state)
        self.scaler.load_state_dict(scaler)
        if self.fp8 is not None:
            self.fp8.recipe = self.fp8.recipe.clone()  # fresh, then the saved state where there is one
            if fp8_state is not None:
                self.fp8.recipe.load_state_dict(fp8_state)
        # In place, so the containers a compiled step captured stay the ones it reads.
        self._master["params"] = master
        self.optimizer.state.update(opt)
        if buffers is not None:
            self._model.update(buffers)
        self._stale = True
        mx.eval(self._master, self.optimizer.state, self._model.parameters())
