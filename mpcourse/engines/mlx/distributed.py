"""The MLX engine under ``mlx.core.distributed``: data parallel, one skip verdict for every rank.

Usage (in each process that ``mlx.launch`` started; :func:`launch` does that)::

    from mpcourse.engines.mlx import distributed as D

    group = D.init_distributed()                      # the ring backend over TCP (size 1 alone)
    cfg = mpc.TrainConfig(precision="fp16", batch_size=64)   # 64 = the GLOBAL batch
    eng = D.DistributedMLXEngine("mlp", cfg, inject_inf=(5, 1))
    eng.fit(mpc.data.load("digits"), steps=20)
    D.model_sha256(eng)                               # equal on every rank

    rows = D.launch(nproc=2, steps=8, precision="fp16", inject_inf=(3, 1))   # from any process

Shaped like :mod:`mpcourse.engines.torch.distributed`: every rank walks the same data order and
takes its slice of each global batch, with the loss weighted so the average over ranks is the
global mean; the fp32 gradients are summed over the ranks with ``mx.distributed.all_sum`` (in
``reduce_dtype``) and divided by the world size; then each rank's inf/nan flag is summed over
the ranks, and a step is skipped everywhere when the sum is non-zero. The scaler is mpcourse's
own (:mod:`mpcourse.scaler`), fed the same verdict on every rank, so the scale stays identical.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import mlx.core as mx
import numpy as np
from mlx.utils import tree_flatten, tree_map, tree_unflatten

from mpcourse._validate import check_choice, int_at_least
from mpcourse.config import TrainConfig
from mpcourse.engines.mlx.engine import DTYPES, MLXEngine, array_to_numpy
from mpcourse.fingerprint import sha256_arrays

__all__ = ["DistributedMLXEngine", "init_distributed", "model_sha256", "free_ports", "launch", "main"]


def init_distributed(backend: str = "any") -> Any:
    """The process group ``mlx.launch`` described in the environment (a group of one without it)."""
    return mx.distributed.init(backend=backend)


class DistributedMLXEngine(MLXEngine):
    """An :class:`MLXEngine` on one rank; ``config.batch_size`` is the global batch.

    Args:
        model, config, device, loss_fn, num_features, num_classes, size: as for MLXEngine
            (the step is never ``mx.compile``-d here: the collectives run eagerly).
        group: an ``mx.distributed`` group. Default: :func:`init_distributed`'s.
        reduce_dtype: the dtype the gradients are summed in, ``"fp32"``, ``"bf16"`` or ``"fp16"``.
        inject_inf: ``(step, rank)``: rank ``rank`` writes an inf into one reduced gradient at
            that step (the drill for "one rank overflows"). Default None.
    """

    def __init__(
        self,
        model: Any,
        config: TrainConfig,
        device: str = "auto",
        loss_fn: Any = None,
        num_features: int = 64,
        num_classes: int = 10,
        size: str = "small",
        *,
        group: Any = None,
        reduce_dtype: str = "fp32",
        inject_inf: tuple[int, int] | None = None,
    ) -> None:
        check_choice("reduce_dtype", reduce_dtype, tuple(DTYPES))
        super().__init__(model, config, device, loss_fn, num_features, num_classes, size, compile=False)
        self.group = group if group is not None else init_distributed()
        self.rank, self.world_size = self.group.rank(), self.group.size()
        self.reduce_dtype, self.inject_inf = reduce_dtype, inject_inf
        self._weight = 1.0

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "world_size": self.world_size, "reduce_dtype": self.reduce_dtype}

    def _train_step(self, x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
        part = np.array_split(np.arange(len(x)), self.world_size)[self.rank]
        self._weight = len(part) * self.world_size / len(x)
        if len(part) == 0:  # fewer samples than ranks: join the reduction with a zero-weight sample
            part = np.arange(1)
        out = super()._train_step(x[part], y[part])
        total = mx.distributed.all_sum(mx.array([out["loss"] / self.world_size]), group=self.group)
        out["loss"] = float(np.asarray(total)[0])  # the global batch's mean loss, as one process reports it
        return out

    def _scaled_loss(self, params: Any, x: mx.array, y: mx.array, scale: mx.array) -> tuple[mx.array, mx.array]:
        scaled, loss = super()._scaled_loss(params, x, y, scale)
        return scaled * self._weight, loss * self._weight

    def _reduce_gradients(self, grads: Any) -> Any:
        dtype, n = DTYPES[self.reduce_dtype], self.world_size
        grads = tree_map(
            lambda g: mx.distributed.all_sum(g.astype(dtype), group=self.group).astype(mx.float32) / n, grads
        )
        if self.inject_inf is not None and self.inject_inf == (self.step, self.rank):
            flat: list[tuple[str, Any]] = list(cast(list, tree_flatten(grads)))
            name, g = flat[0]
            hit = (mx.arange(g.size) == 0).reshape(g.shape)
            flat[0] = (name, mx.where(hit, mx.array(float("inf")), g))
            grads = tree_unflatten(flat)
        return grads

    def _agree_found_inf(self, found_inf: mx.array) -> mx.array:
        # The summed flag: non-zero when any rank saw inf/nan, so every rank skips together.
        return mx.distributed.all_sum(found_inf.astype(mx.float32), group=self.group) > 0


def model_sha256(engine: MLXEngine) -> str:
    """SHA-256 of the master weights, as :func:`mpcourse.engines.portable.model_sha256` computes it."""
    leaves: list[tuple[str, Any]] = list(cast(list, tree_flatten(engine.master_params)))
    return sha256_arrays({k: array_to_numpy(v) for k, v in leaves})


def free_ports(n: int) -> int:
    """A base port ``p`` with ``p .. p+n-1`` free now (the ring backend listens on consecutive ports).

    Asks the operating system for a free port (bind to port 0) and checks its neighbours; a
    port could still be taken between this check and the launch, as with any free-port probe.
    """
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            base = s.getsockname()[1]
        if base + n > 65535:
            continue
        try:
            socks = []
            for p in range(base, base + n):
                t = socket.socket()
                socks.append(t)
                t.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for t in socks:
                t.close()
    raise RuntimeError(f"found no {n} consecutive free ports on 127.0.0.1")


def launch(nproc: int = 2, timeout: float = 300.0, **run: Any) -> list[dict[str, Any]]:
    """Run :func:`main` on ``nproc`` local processes with ``mlx.launch --backend ring``; rows by rank.

    ``run`` takes :func:`main`'s options as keywords (``steps``, ``precision``, ``batch_size``,
    ``reduce_dtype``, ``inject_inf=(step, rank)``, ``seed``).
    """
    int_at_least("nproc", nproc, 1)
    exe = shutil.which("mlx.launch", path=str(Path(sys.executable).parent)) or shutil.which("mlx.launch")
    if exe is None:
        raise FileNotFoundError("mlx.launch is not installed next to this Python (pip install 'mlx[cpu]')")
    args = []
    for key, value in run.items():
        if value is not None:
            args += [
                f"--{key.replace('_', '-')}",
                ":".join(map(str, value)) if isinstance(value, tuple) else str(value),
            ]
    port = free_ports(nproc)
    cmd = [exe, "-n", str(nproc), "--backend", "ring", "--starting-port", str(port), "--"]
    cmd += [sys.executable, "-m", "mpcourse.engines.mlx.distributed", *args]
    env = {**os.environ, "MPCOURSE_PROGRESS": "0"}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    rows = [json.loads(line) for line in done.stdout.splitlines() if line.startswith('{"rank"')]
    if done.returncode != 0 or len(rows) != nproc:
        raise RuntimeError(f"mlx.launch failed (exit {done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return sorted(rows, key=lambda r: r["rank"])


def main(argv: list[str] | None = None) -> int:
    """One rank of a data-parallel MLX run; prints one JSON line (``rank``, ``sha256``, ``scale`` ...)."""
    from mpcourse import data as data_mod

    ap = argparse.ArgumentParser(prog="python -m mpcourse.engines.mlx.distributed")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--precision", default="fp16", choices=list(DTYPES))
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--reduce-dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--inject-inf", default=None, help="STEP:RANK")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    inject = tuple(int(v) for v in a.inject_inf.split(":")) if a.inject_inf else None
    ds = data_mod.load("digits", seed=a.seed)
    cfg = TrainConfig(precision=a.precision, batch_size=a.batch_size, seed=a.seed)
    eng = DistributedMLXEngine(
        "mlp",
        cfg,
        device="cpu",
        reduce_dtype=a.reduce_dtype,
        inject_inf=inject,  # type: ignore[arg-type]
    )
    hist = eng.fit(ds, steps=a.steps, progress=False)
    row = {
        "rank": eng.rank,
        "world_size": eng.world_size,
        "steps": eng.step,
        "final_loss": hist.records[-1].loss,
        "scale": eng.scale,
        "skipped": [r.step for r in hist.records if r.skipped],
        "sha256": model_sha256(eng),
    }
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
