"""Benchmarks: a grid of backend x device x precision x model x batch, measured side by side, recorded.

Usage::

    from mpcourse import bench

    grid = bench.BenchGrid(backends=("torch",), precisions=("fp32", "bf16"), models=("mlp",),
                           batches=(128,), steps=5)
    rows = bench.run_grid(grid)            # one dict per configuration (see run_case)
    print(bench.format_table(rows))        # configuration | samples/s | peak memory | step | speedup
    bench.write_results(rows, "course/results")          # JSON lines naming hardware and versions
    bench.load_results("course/results")                 # every recorded row, for the notebook
    bench.recorded_speedup(device="cuda")                # recorded figure + hardware, or "no recorded result"
    bench.bench_main(["--preset", "default"])            # what ``mpcourse bench`` runs

One module per step: ``grid`` (what to measure), ``run`` (measuring it), ``results`` (the
recorded files), ``cli`` (the command). Nothing here imports a framework:
``engines/torch/bench.py`` and ``engines/mlx/bench.py`` hold the framework code.
"""

from mpcourse.bench.cli import bench_main, grid_from_args
from mpcourse.bench.grid import PRECISIONS, PRESETS, SCHEMA, BenchGrid, Case, plan
from mpcourse.bench.results import (
    RESULTS_DIR,
    format_speedup,
    format_table,
    load_results,
    recorded_speedup,
    run_label,
    speedup_spread,
    write_results,
)
from mpcourse.bench.run import run_case, run_grid

__all__ = [
    "BenchGrid",
    "Case",
    "PRECISIONS",
    "PRESETS",
    "SCHEMA",
    "plan",
    "run_case",
    "run_grid",
    "format_table",
    "write_results",
    "load_results",
    "run_label",
    "RESULTS_DIR",
    "speedup_spread",
    "format_speedup",
    "recorded_speedup",
    "bench_main",
    "grid_from_args",
]
