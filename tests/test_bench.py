"""mpcourse.bench, the bench helpers, memory accounting and the benchmark plots (tiny, fast grids)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mpcourse import bench, hardware, memory, plots
from mpcourse.bench import run as bench_run
from mpcourse.bench.run import add_speedups
from mpcourse.engines import missing_reason

torch = pytest.importorskip("torch")

from mpcourse.engines.torch import bench as torch_bench  # noqa: E402

TINY = dict(
    backends=("torch",),
    devices=("cpu",),
    precisions=("fp32", "bf16"),
    models=("mlp",),
    batches=(16,),
    steps=3,
    warmup=1,
    num_features=64,
    matmul_peak=False,
    max_case_seconds=2.0,
    threads=1,
)  # one thread: robust timings on a CPU shared with other jobs


@pytest.fixture(scope="module")
def tiny_rows() -> list[dict]:
    return bench.run_grid(bench.BenchGrid(**TINY), progress=False)


# --- bad input: refused before anything runs --------------------------------------------------
@pytest.mark.parametrize(
    "change, match",
    [
        ({"precisions": ("fp4",)}, "unknown precision 'fp4'"),
        ({"models": ("resnet",)}, "unknown model 'resnet'"),
        ({"models": ("mlp:huge",)}, "unknown size .* 'huge'"),
        ({"backends": ("jax",)}, "unknown backend 'jax'"),
        ({"batches": (0,)}, "batches must be >= 1"),
        ({"steps": 2}, "steps must be an int >= 3"),
        ({"models": ("cnn",), "num_features": 60}, "square"),
        ({"precisions": ()}, "precisions must not be empty"),
    ],
)
def test_bad_grid_values_raise(change: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        bench.plan(bench.BenchGrid(**{**TINY, **change}))


def test_absent_device_is_an_error_before_running() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="'cuda' was asked for but is not available"):
        bench.plan(bench.BenchGrid(**{**TINY, "devices": ("cuda",)}))


def test_bench_main_bad_input_returns_2_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (
        ["--precisions", "fp4"],
        ["--devices", "cuda" if not torch.cuda.is_available() else "cuda:99"],
        ["--models", "mlp:huge"],
        ["--backends", "torch", "--devices", "gpu"],
    ):
        assert bench.bench_main([*argv, "--out", str(tmp_path), "--no-progress"]) == 2
        assert "mpcourse bench: error:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_plan_skips_tf32_off_cuda_with_a_reason() -> None:
    cases, skipped = bench.plan(bench.BenchGrid(**{**TINY, "precisions": ("fp32", "tf32")}))
    if torch.cuda.is_available():
        pytest.skip("tf32 may run here")
    assert [c.precision for c in cases] == ["fp32"]
    assert skipped == [("torch:cpu tf32", torch_bench.precision_unsupported("cpu", "tf32"))]
    assert "CUDA" in skipped[0][1]


def test_plan_expands_widths_for_mlps_only() -> None:
    grid = bench.BenchGrid(**{**TINY, "models": ("mlp", "transformer"), "widths": (32, 64), "batches": (8, 16)})
    cases, _ = bench.plan(grid)
    mlp = [(c.width, c.batch) for c in cases if c.model == "mlp" and c.precision == "fp32"]
    assert mlp == [(32, 8), (32, 16), (64, 8), (64, 16)]
    assert {c.width for c in cases if c.model == "transformer"} == {None}


# --- a real tiny run --------------------------------------------------------------------------
def test_tiny_grid_rows(tiny_rows: list[dict]) -> None:
    assert [r["precision"] for r in tiny_rows] == ["fp32", "bf16"]
    for r in tiny_rows:
        assert r["status"] == "ok", r
        assert 3 <= r["timed_steps"] <= 3
        assert r["step_time_p10_s"] <= r["step_time_s"] <= r["step_time_p90_s"]
        assert r["samples_per_s"] == pytest.approx(16 / r["step_time_s"])
        assert r["memory_kind"] == "process_rss_sampled" and r["peak_memory_bytes"] >= r["baseline_memory_bytes"] > 0
        assert r["achieved_tflops"] == pytest.approx(r["flops_per_step"] / r["step_time_s"] / 1e12)
        assert r["hardware"]["device_type"] == "cpu" and r["hardware"]["name"]
        assert r["versions"]["torch"] == torch.__version__ and "mpcourse" in r["versions"]
        assert r["measured_at"][:2] == "20" and r["settings"]["steps"] == 3
        assert np.isfinite(r["final_loss"])
    assert tiny_rows[0]["speedup_vs_fp32"] == 1.0
    assert tiny_rows[1]["speedup_vs_fp32"] == pytest.approx(tiny_rows[0]["step_time_s"] / tiny_rows[1]["step_time_s"])


def test_mlp_flop_count_matches_the_matmul_arithmetic() -> None:
    # 64-256-256-10 MLP: each layer costs 2*B*in*out forward, the same again for the weight
    # gradient, and the same for the input gradient -- except the first layer (inputs need none).
    b, dims = 32, [(64, 256), (256, 256), (256, 10)]
    macs = sum(i * o for i, o in dims)
    assert torch_bench.count_flops("mlp", "small", 64, 10, b) == 2 * b * (3 * macs - 64 * 256)
    wide = torch_bench.count_flops("mlp", "small", 64, 10, b, hidden=(512, 512))
    assert wide == 2 * b * (3 * (64 * 512 + 512 * 512 + 512 * 10) - 64 * 512)


def test_results_round_trip(tiny_rows: list[dict], tmp_path: Path) -> None:
    path = bench.write_results(tiny_rows, tmp_path)
    assert path.parent == tmp_path and path.suffix == ".jsonl"
    assert len(path.read_text().splitlines()) == 2
    back = bench.load_results(tmp_path)
    assert [r["step_time_s"] for r in back] == [r["step_time_s"] for r in tiny_rows]
    assert back[0]["source"] == path.name
    label = bench.run_label(back[0])
    assert label.startswith("torch:cpu on ") and tiny_rows[0]["measured_at"][:10] in label
    (tmp_path / "other.jsonl").write_text(json.dumps({"kind": "something else"}) + "\n")
    with pytest.raises(ValueError, match="not an mpcourse-bench result row"):
        bench.load_results(tmp_path)


def test_format_table(tiny_rows: list[dict]) -> None:
    table = bench.format_table(tiny_rows)
    head, rule, *lines = table.splitlines()
    assert [c.strip() for c in head.split("|")] == [
        "configuration",
        "samples/s",
        "peak memory",
        "step time",
        "vs fp32",
        "TFLOP/s (of peak)",
    ]
    assert set(rule) <= {"-", "+"}
    assert len(lines) == 2 and lines[0].startswith("torch:cpu mlp b16 fp32") and "1.00x" in lines[0]


def test_failed_case_is_recorded_and_exit_code_1(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def boom(case: bench.Case, grid: bench.BenchGrid, config: object) -> None:
        raise RuntimeError("could not create a primitive")

    monkeypatch.setattr(bench_run, "_build", boom)
    rc = bench.bench_main(
        [
            "--preset",
            "tiny",
            "--backends",
            "torch",
            "--precisions",
            "fp32",
            "--out",
            str(tmp_path / "r.jsonl"),
            "--no-progress",
        ]
    )
    assert rc == 1
    rows = bench.load_results(tmp_path / "r.jsonl", ok_only=False)
    assert rows[0]["status"] == "error" and "could not create a primitive" in rows[0]["error"]
    assert "FAILED torch:cpu mlp b32 fp32" in capsys.readouterr().err


def test_bench_main_tiny_writes_results(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = bench.bench_main(
        [
            "--preset",
            "tiny",
            "--backends",
            "torch",
            "--precisions",
            "fp32,fp16",
            "--out",
            str(tmp_path),
            "--no-progress",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0 and "samples/s" in out and "torch:cpu mlp b32 fp16" in out
    [path] = tmp_path.glob("*.jsonl")
    assert f"results: {path}" in out
    assert {r["precision"] for r in bench.load_results(path)} == {"fp32", "fp16"}


# --- helpers ----------------------------------------------------------------------------------
def test_matmul_peak_and_precision_context() -> None:
    assert torch_bench.matmul_peak_tflops("cpu", "fp32", n=64, repeats=2) > 0
    before = torch.get_float32_matmul_precision()
    with torch_bench.precision_context("cpu", "fp32"):
        assert torch.get_float32_matmul_precision() == "highest"
    assert torch.get_float32_matmul_precision() == before


def test_saved_activations_halve_weight_copies_appear_state_stays() -> None:
    import mpcourse as mpc

    x = np.random.default_rng(0).standard_normal((512, 64)).astype(np.float32)
    y = np.zeros(512, dtype=np.int64)
    saved = {}
    for prec in ("fp32", "bf16"):
        eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(precision=prec), device="cpu", verbose=False)
        saved[prec] = torch_bench.saved_tensor_bytes(eng, x, y)
        n = torch_bench.param_count(eng.model)
    assert saved["fp32"]["weight copies"] == 0
    assert 0.45 * saved["fp32"]["activations"] < saved["bf16"]["activations"] < 0.55 * saved["fp32"]["activations"]
    # bf16 copies of the 256x256 and 10x256 weights (the first layer's is not needed: inputs need no grad)
    assert saved["bf16"]["weight copies"] == 2 * (256 * 256 + 10 * 256)
    assert memory.model_state_bytes(n, "bf16") == memory.model_state_bytes(n, "fp32") == 16 * n


def test_memory_accounting() -> None:
    assert sum(memory.state_bytes_per_param("fp16", "adam", "half copy").values()) == 16
    assert sum(memory.state_bytes_per_param("fp16", "adam", "pure half").values()) == 8
    assert sum(memory.state_bytes_per_param("fp32", "sgd").values()) == 12
    with pytest.raises(ValueError, match="recipe"):
        memory.state_bytes_per_param("fp16", recipe="apex")
    with pytest.raises(ValueError, match="precision"):
        memory.model_state_bytes(10, "fp8")


def test_cpu_flags_are_a_subset_of_known_flags() -> None:
    flags = hardware.cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo here")
    assert set(flags) <= set(hardware.precision_flags())
    assert hardware.cpu_model()


# --- plots ------------------------------------------------------------------------------------
def _row(prec: str, sps: float, width: int | None = None, batch: int = 16, mem: int = 2**20) -> dict:
    return {
        "backend": "torch",
        "device": "cpu",
        "model": "mlp",
        "size": "small",
        "width": width,
        "batch": batch,
        "precision": prec,
        "status": "ok",
        "samples_per_s": sps,
        "speedup_vs_fp32": sps / 100.0,
        "peak_memory_bytes": mem,
        "baseline_memory_bytes": 0,
        "memory_kind": "cuda_max_allocated",
    }


def test_throughput_and_memory_bars() -> None:
    rows = [_row("fp16", 50.0, mem=2**21), _row("fp32", 100.0, mem=2**22)]
    fig = plots.throughput_bars(rows)
    assert [t.name for t in fig.data] == ["fp32", "fp16"]  # fp32 first, whatever the row order
    assert list(fig.data[1].y) == [50.0] and list(fig.data[1].text) == ["0.50x"]
    assert fig.layout.title.text and "samples/s" in fig.layout.yaxis.title.text and fig.layout.xaxis.title.text
    mem = plots.peak_memory_bars(rows)
    assert [list(t.y) for t in mem.data] == [[4.0], [2.0]] and "MiB" in mem.layout.yaxis.title.text


def test_speedup_lines() -> None:
    rows = [_row("fp32", 100.0, width=w) for w in (64, 256)] + [
        _row("bf16", 50.0, width=256),
        _row("bf16", 25.0, width=64),
    ]
    fig = plots.speedup_lines(rows, x="width")
    [line] = fig.data
    assert line.name == "bf16" and list(line.x) == [64.0, 256.0] and list(line.y) == [0.25, 0.5]
    assert "width" in fig.layout.xaxis.title.text and "speedup" in fig.layout.yaxis.title.text
    with pytest.raises(ValueError, match="x must be"):
        plots.speedup_lines(rows, x="depth")


def test_memory_breakdown_bars() -> None:
    fig = plots.memory_breakdown_bars(
        {"fp32": {"model state": 2**21, "activations": 2**20}, "bf16": {"model state": 2**21, "activations": 2**19}}
    )
    assert [t.name for t in fig.data] == ["model state", "activations"]
    assert list(fig.data[1].y) == [1.0, 0.5] and fig.layout.barmode == "stack" and fig.layout.title.text


def test_intensity_and_measured_rates() -> None:
    assert memory.matmul_intensity(2, 2, 2, "fp32") == pytest.approx(16 / 48)
    assert memory.matmul_intensity(4096, 4096, 4096, "fp16") == pytest.approx(4096 / 3)
    assert memory.elementwise_intensity("bf16") == pytest.approx(2 * memory.elementwise_intensity("fp32"))
    assert torch_bench.elementwise_gbps("cpu", "fp32", numel=2**12, repeats=2) > 0
    assert torch_bench.matmul_tflops("cpu", "bf16", 16, 24, 32, repeats=2) > 0


def test_threads_are_applied_recorded_and_restored() -> None:
    before = torch.get_num_threads()
    rows = bench.run_grid(bench.BenchGrid(**{**TINY, "precisions": ("fp32",), "threads": 1}), progress=False)
    assert rows[0]["hardware"]["torch_threads"] == 1 and rows[0]["settings"]["threads"] == 1
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads must be None or an int >= 1"):
        bench.BenchGrid(**{**TINY, "threads": 0})


def test_speedup_vs_tf32_column_when_tf32_rows_exist(tiny_rows: list[dict]) -> None:
    # tf32 rows can only be measured on CUDA; relabel a measured fp32 row to test the bookkeeping.
    rows = [dict(r) for r in tiny_rows] + [
        {**tiny_rows[0], "precision": "tf32", "label": "x tf32", "step_time_s": tiny_rows[0]["step_time_s"] / 2}
    ]
    add_speedups(rows)
    assert rows[2]["speedup_vs_fp32"] == pytest.approx(2.0) and rows[1]["speedup_vs_tf32"] == pytest.approx(
        rows[2]["step_time_s"] / rows[1]["step_time_s"]
    )
    assert bench.format_table(rows).splitlines()[0].rstrip().endswith("vs tf32")
    assert "vs tf32" not in bench.format_table(tiny_rows)


def test_gpu_preset_needs_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert bench.bench_main(["--preset", "gpu", "--no-save"]) == 2


def _overhead_module():  # tests/benchmarks/ is not a package: load the script by path
    import importlib.util

    path = Path(__file__).resolve().parent / "benchmarks" / "engine_overhead.py"
    spec = importlib.util.spec_from_file_location("engine_overhead", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


def test_engine_overhead_script_does_the_same_work_as_the_plain_loop(capsys: pytest.CaptureFixture[str]) -> None:
    mod, threads = _overhead_module(), torch.get_num_threads()
    try:
        rc = mod.main(
            [
                "--device",
                "cpu",
                "--features",
                "64",
                "--hidden",
                "32",
                "--batch",
                "16",
                "--rounds",
                "2",
                "--steps",
                "2",
                "--warmup",
                "1",
                "--precisions",
                "fp32,fp16",
                "--threads",
                "1",
                "--target",
                "100",
            ]
        )
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert rc == 0 and out.count("max |loss diff| 0.00e+00") == 2 and "ratio" in out


def test_mlx_rows_when_mlx_is_here() -> None:
    pytest.importorskip("mlx.core")
    if missing_reason("mlx"):
        pytest.skip(missing_reason("mlx"))
    rows = bench.run_grid(bench.BenchGrid(**{**TINY, "backends": ("mlx",), "threads": None}), progress=False)
    assert [(r["backend"], r["device"], r["precision"], r["status"]) for r in rows] == [
        ("mlx", "cpu", "fp32", "ok"),
        ("mlx", "cpu", "bf16", "ok"),
    ]
    assert all(r["memory_kind"] == "mlx_peak_memory" and r["peak_memory_bytes"] > 0 for r in rows)
    assert rows[0]["versions"]["mlx"] and rows[1]["speedup_vs_fp32"] > 0
    with pytest.raises(ValueError, match="unknown MLX device 'cuda:0'"):
        bench.plan(bench.BenchGrid(**{**TINY, "backends": ("mlx",), "devices": ("cuda:0",)}))


def _timed(precision: str, median: float, p10: float, p90: float, **extra: object) -> dict:
    row = {
        "kind": "mpcourse-bench",
        "status": "ok",
        "run_id": "r1",
        "backend": "torch",
        "device": "cuda:0",
        "model": "mlp",
        "size": "small",
        "width": None,
        "batch": 64,
        "precision": precision,
        "label": f"torch:cuda mlp b64 {precision}",
        "step_time_s": median,
        "step_time_p10_s": p10,
        "step_time_p90_s": p90,
        "hardware": {"device_type": "cuda", "name": "Test GPU"},
        "host": {"cpu_count": 8},
        "versions": {"torch": "9.9"},
        "measured_at": "2026-01-02T03:04:05+00:00",
    }
    return {**row, **extra}


def test_speedup_spread_pairs_the_extremes_of_both_rows() -> None:
    rows = [_timed("fp32", 0.02, 0.018, 0.024), _timed("fp16", 0.01, 0.009, 0.012)]
    lo, hi = bench.speedup_spread(rows[1], rows)
    assert lo == pytest.approx(0.018 / 0.012) and hi == pytest.approx(0.024 / 0.009)
    assert bench.speedup_spread(_timed("fp16", 0.01, 0.009, 0.012, batch=128), rows) is None  # no fp32 of that case
    no_pct = {k: v for k, v in rows[1].items() if k != "step_time_p10_s"}
    assert bench.speedup_spread(no_pct, rows) is None


def test_format_speedup() -> None:
    assert bench.format_speedup(0.16, (0.12, 0.21)) == "0.16x (p10-p90 0.12-0.21x)"
    assert bench.format_speedup(2.0) == "2.00x"
    with pytest.raises(ValueError, match="speedup must be a number >= 0"):
        bench.format_speedup(float("nan"))
    with pytest.raises(ValueError, match="low <= high"):
        bench.format_speedup(1.0, (2.0, 1.0))


def test_format_table_shows_the_spread_next_to_each_speedup() -> None:
    rows = [
        _timed(
            p,
            t,
            t * 0.9,
            t * 1.2,
            samples_per_s=1.0,
            peak_memory_bytes=None,
            memory_kind="device",
            speedup_vs_fp32=0.02 / t,
        )
        for p, t in (("fp32", 0.02), ("fp16", 0.01))
    ]
    fp32_line, fp16_line = bench.format_table(rows).splitlines()[2:]
    assert "1.00x" in fp32_line and "p10-p90" not in fp32_line  # no spread against itself
    assert bench.format_speedup(2.0, bench.speedup_spread(rows[1], rows)) in fp16_line


def test_recorded_speedup_names_the_hardware_or_says_none(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = [
        _timed("fp32", 0.02, 0.018, 0.024, speedup_vs_fp32=1.0),
        _timed("fp16", 0.01, 0.009, 0.012, speedup_vs_fp32=2.0),
    ]
    bench.write_results(rows, tmp_path / "r1.jsonl")
    found = bench.recorded_speedup(device="cuda", path=tmp_path)
    out = capsys.readouterr().out
    assert [f["label"] for f in found] == ["torch:cuda mlp b64 fp16"] and found[0]["speedup"] == 2.0
    assert found[0]["spread"] == pytest.approx((0.018 / 0.012, 0.024 / 0.009))
    assert "2.00x (p10-p90 1.50-2.67x)" in out and "Test GPU" in out and "2026-01-02" in out and "r1.jsonl" in out
    assert bench.recorded_speedup(device="mps", path=tmp_path) == []
    assert "no recorded result for device='mps'" in capsys.readouterr().out
    assert bench.recorded_speedup(device="cuda", path=tmp_path / "absent", show=False) == []
    assert capsys.readouterr().out == ""
    shipped = bench.recorded_speedup(show=False)  # the course's own files: every row names its hardware
    assert all(f["measured"] and f["source"].endswith(".jsonl") for f in shipped)


def test_the_slower_note_reads_the_cpu_flags() -> None:
    from mpcourse.bench.cli import _cpu_note

    assert "no bf16/fp16 instructions" in _cpu_note([])
    assert "has avx512_bf16" in _cpu_note(["avx512_bf16"])
    assert "cannot be read" in _cpu_note(None)


def test_a_width_sweep_builds_its_models_and_measures() -> None:
    # Rows with a width build the model themselves (the engines' model module): every one must
    # run, or notebook 03's width sweep plots nothing.
    rows = bench.run_grid(bench.BenchGrid(**{**TINY, "models": ("mlp",), "widths": (32, 64)}), progress=False)
    assert [(r["width"], r["status"]) for r in rows if r["precision"] == "fp32"] == [(32, "ok"), (64, "ok")]
    assert all(r["status"] == "ok" and r["speedup_vs_fp32"] > 0 for r in rows)
