"""Benchmark runner: measure every configuration of a grid, side by side in one run.

Usage::

    from mpcourse import bench

    grid = bench.BenchGrid(backends=("torch",), precisions=("fp32", "bf16"), models=("mlp",),
                           batches=(128,), steps=5)
    rows = bench.run_grid(grid)            # one dict per configuration (see run_case)

How a configuration is measured: the engine trains ``warmup`` steps (kernel selection,
allocator, autocast caches), then up to ``steps`` timed steps (stopping early after
``max_case_seconds``, never before 3). Each step's time is the engine's own, taken with the
device synchronised (cuda/mps synchronize, ``mx.eval``); the row reports the median and the
10th/90th percentiles. Peak memory comes from the device's own counter where it has one
(CUDA, MLX) and from sampling after each step otherwise (MPS, process RSS on a CPU).
FLOPs are counted from the model's shapes, and the achieved TFLOP/s are compared with a
matmul peak measured in the same run on the same device and precision.

"tf32" is fp32 storage with tf32 tensor-core matmuls (CUDA only); "fp32" is pinned to true
fp32, so every "speedup vs fp32" is against true fp32. Nothing here imports a framework:
engines/torch/bench.py and engines/mlx/bench.py hold the framework code.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import importlib
import importlib.util
import os
import sys
import time
from typing import Any

import numpy as np

from mpcourse import hardware
from mpcourse.bench.grid import SCHEMA, BenchGrid, Case, backend_tools, plan
from mpcourse.bench.results import slug
from mpcourse.engines import make_engine
from mpcourse.engines.zoo import SPECS

__all__ = ["add_speedups", "run_case", "run_grid"]


def _build(case: Case, grid: BenchGrid, config: Any) -> Any:
    model: Any = case.model
    if case.width is not None:
        models = importlib.import_module(f"mpcourse.engines.{case.backend}.models")

        depth = len(SPECS[case.model][case.size]["hidden"])
        model = models.build_model(
            case.model, case.size, grid.num_features, grid.num_classes, seed=config.seed, hidden=(case.width,) * depth
        )
    return make_engine(
        case.backend,
        model,
        config,
        device=case.device,
        num_features=grid.num_features,
        num_classes=grid.num_classes,
        size=case.size,
        verbose=False,
    )


def _flops(case: Case, grid: BenchGrid) -> int | None:
    if importlib.util.find_spec("torch") is None:
        return None
    from mpcourse.engines.torch.bench import count_flops  # counts shapes, the same in every backend

    over = {"hidden": (case.width,) * len(SPECS[case.model][case.size]["hidden"])} if case.width else {}
    return count_flops(case.model, case.size, grid.num_features, grid.num_classes, case.batch, **over)


def run_case(
    case: Case, grid: BenchGrid, peak_cache: dict[tuple[str, str, str], float] | None = None
) -> dict[str, Any]:
    """Measure one configuration; returns a row with ``status`` "ok" (metrics) or "error" (message)."""
    tools = backend_tools(case.backend)
    rng = np.random.default_rng(0)
    n = case.batch * 4
    data = (rng.standard_normal((n, grid.num_features)).astype(np.float32), rng.integers(0, grid.num_classes, n))
    row: dict[str, Any] = {**dataclasses.asdict(case), "label": case.label}
    from mpcourse.config import TrainConfig

    config = TrainConfig(
        precision="fp32" if case.precision == "tf32" else case.precision, batch_size=case.batch, seed=0
    )
    try:
        with tools.precision_context(case.device, case.precision):
            probe = tools.MemoryProbe(case.device)
            probe.start()  # before the model exists: the peak covers model, optimizer and activations
            eng = _build(case, grid, config)
            if grid.warmup:
                eng.fit(data, steps=grid.warmup, progress=False)
            t_end = time.perf_counter() + grid.max_case_seconds

            def after_step(engine: Any, rec: Any) -> bool:
                probe.sample()
                return time.perf_counter() > t_end and rec.step - grid.warmup >= 2

            hist = eng.fit(data, steps=grid.steps, progress=False, callback=after_step)
            peak = probe.peak()
            key = (case.backend, case.device, case.precision)
            fp8_matmul = tools.fp8_matmul(case.device) if case.precision == "fp8" else None
            emulated = fp8_matmul == "emulated"  # the emulation's time is no FP8 speed: no peak, no TFLOP/s
            if grid.matmul_peak and peak_cache is not None and key not in peak_cache and not emulated:
                peak_cache[key] = tools.matmul_peak_tflops(case.device, case.precision)
    except Exception as err:  # a configuration this hardware/framework cannot run: recorded, not hidden
        return {**row, "status": "error", "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    secs = hist.column("seconds").astype(float)
    med = float(np.median(secs))
    flops = _flops(case, grid)
    achieved = flops / med / 1e12 if flops and not emulated else None
    mm_peak = (peak_cache or {}).get((case.backend, case.device, case.precision))
    row.update(
        status="ok",
        timed_steps=len(secs),
        step_time_s=med,
        step_time_p10_s=float(np.percentile(secs, 10)),
        step_time_p90_s=float(np.percentile(secs, 90)),
        samples_per_s=case.batch / med,
        peak_memory_bytes=peak,
        baseline_memory_bytes=probe.baseline,
        memory_kind=probe.kind,
        flops_per_step=flops,
        achieved_tflops=achieved,
        matmul_peak_tflops=mm_peak,
        peak_fraction=achieved / mm_peak if achieved and mm_peak else None,
        skipped_steps=hist.skipped_steps,
        final_loss=float(hist.losses[-1]),
        fused=getattr(eng, "fused", None),
        scaling=config.scaling_mode,
        optimizer=config.optimizer,
        fp8_matmul=fp8_matmul,
        timing="emulated" if emulated else "measured",
    )
    return row


def add_speedups(rows: list[dict[str, Any]]) -> None:
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["backend"], r["device"], r["model"], r["size"], r["width"], r["batch"])

    for ref in ("fp32", "tf32"):
        base_of = {key(r): r["step_time_s"] for r in rows if r["status"] == "ok" and r["precision"] == ref}
        for r in rows:
            base = base_of.get(key(r)) if r["status"] == "ok" and r.get("timing") != "emulated" else None
            r[f"speedup_vs_{ref}"] = base / r["step_time_s"] if base else None


def _progress(enabled: bool | None) -> bool:
    if enabled is not None:
        return enabled
    return os.environ.get("MPCOURSE_PROGRESS", "1").lower() not in ("0", "false", "no", "off")


def run_grid(grid: BenchGrid, *, progress: bool | None = None, log: Any = None) -> list[dict[str, Any]]:
    """Plan, then measure every case; rows carry hardware, versions, settings and a run id.

    Args:
        grid: what to measure.
        progress: a progress bar over the cases. Default: on unless ``MPCOURSE_PROGRESS=0``.
        log: where skip reasons are printed (a file). Default ``sys.stderr``.
    """
    log = log or sys.stderr
    cases, skipped = plan(grid)
    for what, why in skipped:
        print(f"skipped {what}: {why}", file=log)
    started = dt.datetime.now(dt.timezone.utc)
    backends = list(dict.fromkeys(c.backend for c in cases))
    old_threads = {b: backend_tools(b).set_threads(grid.threads) for b in backends}
    try:
        context = _context(grid, cases, started)
        rows, peaks = _measure(grid, cases, progress)
    finally:
        for b, n in old_threads.items():
            if n is not None:
                backend_tools(b).set_threads(n)
    add_speedups(rows)
    for r in rows:
        r.update(context)
        r["hardware"] = context["hardware"].get(f"{r['backend']}:{r['device']}", {})
        r["matmul_peak_tflops"] = peaks.get((r["backend"], r["device"], r["precision"]), r.get("matmul_peak_tflops"))
        if r.get("achieved_tflops") and r["matmul_peak_tflops"]:
            r["peak_fraction"] = r["achieved_tflops"] / r["matmul_peak_tflops"]
    return rows


def _measure(
    grid: BenchGrid, cases: list[Case], progress: bool | None
) -> tuple[list[dict[str, Any]], dict[tuple[str, str, str], float]]:
    bar = None
    if _progress(progress):
        from tqdm.auto import tqdm

        bar = tqdm(total=len(cases), desc="mpcourse bench", file=sys.stderr, leave=False)
    rows, peaks = [], {}  # type: ignore[var-annotated]
    try:
        # One discarded run per backend/device first: library start-up (thread pools, kernel
        # JIT, allocator growth) would otherwise be charged to whichever case comes first.
        prime = dataclasses.replace(grid, steps=3, warmup=0, matmul_peak=False)
        for first in dict.fromkeys((c.backend, c.device) for c in cases):
            run_case(next(c for c in cases if (c.backend, c.device) == first), prime)
        for case in cases:
            if bar is not None:
                bar.set_postfix_str(case.label, refresh=True)
            rows.append(run_case(case, grid, peaks))
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return rows, peaks


def _context(grid: BenchGrid, cases: list[Case], started: dt.datetime) -> dict[str, Any]:
    import mpcourse

    hw, versions = {}, {"mpcourse": mpcourse.__version__}
    for backend, device in dict.fromkeys((c.backend, c.device) for c in cases):
        tools = backend_tools(backend)
        hw[f"{backend}:{device}"] = tools.device_info(device)
        versions.update(tools.versions())
    host = hardware.host()
    versions.update(python=host["python"], numpy=host["numpy"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {
        "schema": SCHEMA,
        "kind": "mpcourse-bench",
        "measured_at": started.isoformat(timespec="seconds"),
        "run_id": f"{started:%Y%m%dT%H%M%SZ}-{slug(host['cpu'])}",
        "host": host,
        "hardware": hw,
        "versions": versions,
        "load_avg_1min": load,
        "settings": {
            k: v
            for k, v in dataclasses.asdict(grid).items()
            if k not in ("backends", "devices", "precisions", "models", "batches", "widths")
        },
    }
