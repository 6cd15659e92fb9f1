"""`mpcourse bench` with precision fp8: timed as FP8 only where torch._scaled_mm is native,
otherwise marked emulated, with no speedup and no TFLOP/s."""

from __future__ import annotations

import pytest

from mpcourse import bench
from mpcourse.engines import missing_reason

torch = pytest.importorskip("torch")

from mpcourse.engines.torch import bench as torch_bench  # noqa: E402
from mpcourse.engines.torch.fp8 import scaled_mm_native  # noqa: E402

BACKENDS = ("torch",) + (() if missing_reason("mlx") else ("mlx",))
TINY = dict(
    backends=BACKENDS,
    devices=("cpu",),
    precisions=("fp32", "fp8"),
    models=("mlp",),
    batches=(16,),
    steps=3,
    warmup=1,
    num_features=64,
    matmul_peak=True,
    max_case_seconds=2.0,
    threads=1,
)


def test_fp8_is_not_in_the_default_grid_but_can_be_asked_for() -> None:
    assert "fp8" in bench.PRECISIONS and "fp8" not in bench.BenchGrid().precisions
    cases, _ = bench.plan(bench.BenchGrid(**TINY))
    assert {c.precision for c in cases} == {"fp32", "fp8"}


def test_fp8_on_the_cpu_is_marked_emulated_and_never_compared() -> None:
    assert torch_bench.fp8_matmul("cpu") == "emulated" and not scaled_mm_native(torch.device("cpu"))
    rows = bench.run_grid(bench.BenchGrid(**TINY), progress=False)
    fp8_rows = [r for r in rows if r["precision"] == "fp8"]
    assert len(fp8_rows) == len(BACKENDS)
    for r in fp8_rows:
        assert r["status"] == "ok", r.get("error")
        assert r["fp8_matmul"] == "emulated" and r["timing"] == "emulated"
        assert r["speedup_vs_fp32"] is None and r["achieved_tflops"] is None and r["matmul_peak_tflops"] is None
    assert all(r["timing"] == "measured" and r["fp8_matmul"] is None for r in rows if r["precision"] == "fp32")
    table = bench.format_table(rows)
    assert table.count("(emulated)") == len(BACKENDS)
