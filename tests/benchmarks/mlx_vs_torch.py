"""MLX vs PyTorch step times for the same model, precision and batch, measured in one run.

Usage::

    PYTHONPATH=. python tests/benchmarks/mlx_vs_torch.py                      # mlp small, fp32/fp16/bf16
    PYTHONPATH=. python tests/benchmarks/mlx_vs_torch.py --model cnn --precision fp32 bf16 --steps 5

Both engines train on the same random batches through their public ``train_step``; a step's
time is its StepRecord ``seconds`` (the device synchronised before the clock is read). The
engines take turns -- torch, MLX, MLX compiled, then again -- so that a machine that gets
busier or quieter during the run affects all of them alike; each reported number is the median
over repeats of the median step time of a block. The first step of each engine (tracing, and
for compiled MLX on the CPU the C++ JIT build of its fused kernels) is reported apart. The run
is recorded in ``course/results/benchmarks/mlx_vs_torch-*.json`` (``--no-record`` to skip).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from typing import Any

import numpy as np

import mpcourse as mpc
from mpcourse.bench.script_record import write_script_record
from mpcourse.engines import make_engine


def _engine(kind: str, model: str, size: str, precision: str, batch: int, device: str) -> Any:
    cfg = mpc.TrainConfig(precision=precision, batch_size=batch, loss_scale="auto")
    if kind == "torch":
        return make_engine("torch", model, cfg, device=device, size=size, verbose=False)
    from mpcourse.engines.mlx.engine import MLXEngine

    return MLXEngine(model, cfg, device=device, size=size, compile=(kind == "mlx-compiled"))


def _block(eng: Any, x: np.ndarray, y: np.ndarray, steps: int, batch: int, rng: np.random.Generator) -> float:
    times = []
    for _ in range(steps):
        idx = rng.integers(0, len(x), batch)
        times.append(eng.train_step(x[idx], y[idx]).seconds)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mlp", choices=["mlp", "deep_mlp", "cnn", "transformer", "lstm"])
    p.add_argument("--size", default="small", choices=["small", "large"])
    p.add_argument("--precision", nargs="+", default=["fp32", "fp16", "bf16"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed steps per block")
    p.add_argument("--repeats", type=int, default=5, help="blocks per engine, alternating")
    p.add_argument("--device", default="cpu", help="'cpu' (default), or 'auto' for each engine's best")
    p.add_argument("--no-compiled", action="store_true", help="skip the mx.compile-d MLX engine")
    p.add_argument(
        "--torch-threads",
        type=int,
        default=None,
        help="torch.set_num_threads(N); default: torch's own choice (one per core)",
    )
    p.add_argument("--no-record", action="store_true", help="do not write course/results/benchmarks/")
    a = p.parse_args(argv)
    rows = []

    import mlx.core as mx
    import torch

    if a.torch_threads is not None:
        torch.set_num_threads(a.torch_threads)

    kinds = ["torch", "mlx"] + ([] if a.no_compiled else ["mlx-compiled"])
    print(
        f"# {datetime.datetime.now().isoformat(timespec='seconds')}  {platform.platform()}  "
        f"{platform.processor() or platform.machine()}  cpus={os.cpu_count()}  "
        f"torch {torch.__version__} (threads={torch.get_num_threads()})  mlx {mx.__version__}  "
        f"python {sys.version.split()[0]}"
    )
    print(
        f"# model={a.model}:{a.size} batch={a.batch} device={a.device}  "
        f"median over {a.repeats} alternating blocks of {a.steps} steps"
    )
    rng = np.random.default_rng(0)
    x = rng.random((4096, 64), dtype=np.float32)
    y = rng.integers(0, 10, 4096)
    header = (
        f"{'precision':9} "
        + " ".join(f"{k + ' ms':>16}" for k in kinds)
        + "   mlx/torch"
        + ("   compiled/torch" if "mlx-compiled" in kinds else "")
        + "   first step ms"
    )
    print(header)
    for precision in a.precision:
        engines = {k: _engine(k, a.model, a.size, precision, a.batch, a.device) for k in kinds}
        first = {}
        for k, eng in engines.items():  # the first step traces (and JIT-compiles) separately
            idx = rng.integers(0, len(x), a.batch)
            first[k] = eng.train_step(x[idx], y[idx]).seconds
        blocks: dict[str, list[float]] = {k: [] for k in kinds}
        for _ in range(a.repeats):
            for k, eng in engines.items():
                blocks[k].append(_block(eng, x, y, a.steps, a.batch, rng))
        med = {k: statistics.median(v) * 1e3 for k, v in blocks.items()}
        row = f"{precision:9} " + " ".join(f"{med[k]:16.2f}" for k in kinds)
        row += f"   {med['mlx'] / med['torch']:9.2f}"
        if "mlx-compiled" in kinds:
            row += f"   {med['mlx-compiled'] / med['torch']:14.2f}"
        row += "   " + " ".join(f"{k}={first[k] * 1e3:.0f}" for k in kinds)
        print(row, flush=True)
        rows.append({"precision": precision, "median_ms": med, "first_step_ms": {k: v * 1e3 for k, v in first.items()}})
    if not a.no_record:
        settings = {k: v for k, v in vars(a).items() if k != "no_record"} | {
            "torch_threads_used": torch.get_num_threads()
        }
        print(
            "recorded:",
            write_script_record("mlx_vs_torch", settings=settings, results=rows, frameworks=["torch", "mlx"]),
        )


if __name__ == "__main__":
    main()
