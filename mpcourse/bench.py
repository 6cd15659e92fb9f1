"""Benchmark runner: a grid of backend x device x precision x model x batch, measured, recorded.

Usage::

    from mpcourse import bench

    grid = bench.BenchGrid(backends=("torch",), precisions=("fp32", "bf16"), models=("mlp",),
                           batches=(128,), steps=5)
    rows = bench.run_grid(grid)            # one dict per configuration (see run_case)
    print(bench.format_table(rows))        # configuration | samples/s | peak memory | step | speedup
    bench.write_results(rows, "course/results")          # JSON lines naming hardware and versions
    bench.load_results("course/results")                 # every recorded row, for the notebook

    bench.bench_main(["--preset", "default"])            # what ``mpcourse bench`` runs

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
engines/torch_bench.py and engines/mlx_bench.py hold the framework code.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import importlib.util
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any, Iterable, Sequence

import numpy as np

from mpcourse import hardware
from mpcourse._validate import check_choice
from mpcourse.engines.base import BACKENDS, SIZES, ZOO, make_engine

__all__ = ["BenchGrid", "Case", "PRECISIONS", "PRESETS", "plan", "run_case", "run_grid",
           "format_table", "write_results", "load_results", "run_label", "bench_main"]

PRECISIONS: tuple[str, ...] = ("fp32", "tf32", "fp16", "bf16")
SCHEMA = 1

#: Named grids. "default" finishes in under 2 minutes on a 2-core CPU; "gpu" is the grid the
#: course's recorded GPU results come from (the large MLP at batch >= 512 and the transformers),
#: on CUDA: an error before anything runs where there is none (``--devices mps`` on a Mac).
PRESETS: dict[str, dict[str, Any]] = {
    "default": {"models": ("mlp", "transformer"), "batches": (128,), "steps": 10, "warmup": 2,
                "max_case_seconds": 4.0},
    "gpu": {"backends": ("torch",), "devices": ("cuda",), "models": ("mlp:large", "transformer", "transformer:large", "mlp"),
            "batches": (512, 1024), "steps": 50, "warmup": 10, "max_case_seconds": 20.0},
    "tiny": {"models": ("mlp",), "batches": (32,), "steps": 3, "warmup": 1, "max_case_seconds": 2.0,
             "num_features": 64, "matmul_peak": False},
}


@dataclass(frozen=True)
class Case:
    """One configuration of the grid."""

    backend: str
    device: str
    precision: str
    model: str
    size: str
    batch: int
    width: int | None = None

    @property
    def label(self) -> str:
        model = self.model if self.size == "small" else f"{self.model}:{self.size}"
        if self.width is not None:
            model += f"@{self.width}"
        return f"{self.backend}:{self.device} {model} b{self.batch} {self.precision}"


def _tuple(name: str, value: Any, kind: type) -> tuple[Any, ...]:
    if isinstance(value, (str, int)):
        value = (value,)
    value = tuple(value)
    for v in value:
        if isinstance(v, bool) or not isinstance(v, kind):
            raise TypeError(f"{name} must hold {kind.__name__}s, got {v!r}")
    return value


@dataclass(frozen=True, kw_only=True)
class BenchGrid:
    """What to measure. Every value is checked here, before anything runs.

    Args:
        backends: ``"torch"``/``"mlx"``, or None for every installed backend (the others are
            skipped with a printed reason). A backend named here must be installed. Default None.
        devices: ``"auto"`` (each backend's best device) or explicit devices (torch: cpu,
            cuda, cuda:N, mps; mlx: cpu, gpu); an explicit device must exist. Default ("auto",).
        precisions: from fp32, tf32, fp16, bf16. tf32 runs only where CUDA has it. Default all.
        models: zoo names, ``name:size`` for size "large". Default ("mlp", "transformer").
        batches: batch sizes. Default (128,).
        widths: hidden widths for mlp/deep_mlp (same depth as the zoo's); empty: the zoo's own.
            Default ().
        steps: timed steps per configuration, >= 3. Default 10.
        warmup: untimed steps first. Default 2.
        max_case_seconds: stop timing a configuration after this long (>= 3 steps). Default 4.0.
        num_features, num_classes: input width (a square for cnn/transformer/lstm) and classes.
            Default 784 (28 x 28) and 10.
        matmul_peak: also measure each device's matmul peak (for achieved/peak). Default True.
        threads: CPU threads for torch during the run (None: torch's default, one per core).
            Recorded with the results. Default None.
    """

    backends: tuple[str, ...] | None = None
    devices: tuple[str, ...] = ("auto",)
    precisions: tuple[str, ...] = PRECISIONS
    models: tuple[str, ...] = ("mlp", "transformer")
    batches: tuple[int, ...] = (128,)
    widths: tuple[int, ...] = ()
    steps: int = 10
    warmup: int = 2
    max_case_seconds: float = 4.0
    num_features: int = 784
    num_classes: int = 10
    matmul_peak: bool = True
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.backends is not None:
            object.__setattr__(self, "backends", _tuple("backends", self.backends, str))
            _allowed("backend", self.backends, BACKENDS)
        for name, kind in (("devices", str), ("precisions", str), ("models", str), ("batches", int),
                           ("widths", int)):
            object.__setattr__(self, name, _tuple(name, getattr(self, name), kind))
            if not getattr(self, name) and name != "widths":
                raise ValueError(f"{name} must not be empty")
        _allowed("precision", self.precisions, PRECISIONS)
        for m in self.models:
            name, _, size = m.partition(":")
            _allowed("model", (name,), ZOO)
            if size:
                _allowed(f"size (in {m!r})", (size,), SIZES)
        for name in ("batches", "widths"):
            bad = [v for v in getattr(self, name) if v < 1]
            if bad:
                raise ValueError(f"{name} must be >= 1, got {bad[0]!r}")
        for name, low in (("steps", 3), ("warmup", 0), ("num_features", 1), ("num_classes", 2)):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise ValueError(f"{name} must be an int >= {low}, got {v!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ValueError(f"threads must be None or an int >= 1, got {self.threads!r}")
        if not isinstance(self.max_case_seconds, (int, float)) or not self.max_case_seconds > 0:
            raise ValueError(f"max_case_seconds must be > 0, got {self.max_case_seconds!r}")
        for m in self.models:
            if m.split(":")[0] in ("cnn", "transformer", "lstm") and int(self.num_features**0.5) ** 2 != self.num_features:
                raise ValueError(f"model {m!r} needs num_features to be a square (e.g. 784), "
                                 f"got {self.num_features}")


def _allowed(what: str, values: Iterable[str], allowed: Sequence[str]) -> None:
    for v in values:
        check_choice(what, v, allowed)


def _tools(backend: str) -> ModuleType:
    return importlib.import_module(f"mpcourse.engines.{backend}_bench")


def _backend_missing(backend: str) -> str | None:
    if importlib.util.find_spec(backend) is None:
        return f"{backend} is not installed"
    if importlib.util.find_spec(f"mpcourse.engines.{backend}_engine") is None:
        return f"this mpcourse has no {backend} engine (mpcourse/engines/{backend}_engine.py)"
    return None


def plan(grid: BenchGrid) -> tuple[list[Case], list[tuple[str, str]]]:
    """The cases to run and the ``(what, why)`` of those skipped; bad input raises here.

    Raises:
        ValueError: a named backend that is not installed, or a device that is absent (the
            engines' DeviceUnavailableError is a ValueError).
    """
    skipped: list[tuple[str, str]] = []
    backends = grid.backends
    if backends is None:
        backends = tuple(b for b in BACKENDS if not _backend_missing(b))
        skipped += [(b, _backend_missing(b) or "") for b in BACKENDS if _backend_missing(b)]
        if not backends:
            raise ValueError("no backend can run here: " + "; ".join(r for _, r in skipped))
    cases: list[Case] = []
    for backend in backends:
        why = _backend_missing(backend)
        if why:
            raise ValueError(f"backend {backend!r} was asked for but {why}")
        tools = _tools(backend)
        for device in dict.fromkeys(tools.check_device(d) for d in grid.devices):
            for precision in grid.precisions:
                reason = tools.precision_unsupported(device, precision)
                if reason:
                    skipped.append((f"{backend}:{device} {precision}", reason))
                    continue
                for m in grid.models:
                    name, _, size = m.partition(":")
                    widths: tuple[int | None, ...] = grid.widths if grid.widths and name in ("mlp", "deep_mlp") else (None,)
                    for width in widths:
                        for batch in grid.batches:
                            cases.append(Case(backend, device, precision, name, size or "small", batch, width))
    return cases, skipped


def _build(case: Case, grid: BenchGrid, config: Any) -> Any:
    model: Any = case.model
    if case.width is not None:
        models = importlib.import_module(f"mpcourse.engines.{case.backend}_models")
        from mpcourse.engines.torch_models import SPECS  # the zoo's depths (same in every backend)

        depth = len(SPECS[case.model][case.size]["hidden"])
        model = models.build_model(case.model, case.size, grid.num_features, grid.num_classes,
                                   seed=config.seed, hidden=(case.width,) * depth)
    return make_engine(case.backend, model, config, device=case.device, num_features=grid.num_features,
                       num_classes=grid.num_classes, size=case.size, verbose=False)


def _flops(case: Case, grid: BenchGrid) -> int | None:
    if importlib.util.find_spec("torch") is None:
        return None
    from mpcourse.engines.torch_bench import count_flops  # counts shapes, the same in every backend
    from mpcourse.engines.torch_models import SPECS

    over = {"hidden": (case.width,) * len(SPECS[case.model][case.size]["hidden"])} if case.width else {}
    return count_flops(case.model, case.size, grid.num_features, grid.num_classes, case.batch, **over)


def run_case(case: Case, grid: BenchGrid, peak_cache: dict[tuple[str, str, str], float] | None = None) -> dict[str, Any]:
    """Measure one configuration; returns a row with ``status`` "ok" (metrics) or "error" (message)."""
    tools = _tools(case.backend)
    rng = np.random.default_rng(0)
    n = case.batch * 4
    data = (rng.standard_normal((n, grid.num_features)).astype(np.float32),
            rng.integers(0, grid.num_classes, n))
    row: dict[str, Any] = {**dataclasses.asdict(case), "label": case.label}
    from mpcourse.config import TrainConfig

    config = TrainConfig(precision="fp32" if case.precision == "tf32" else case.precision,
                         batch_size=case.batch, seed=0)
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
            if grid.matmul_peak and peak_cache is not None and key not in peak_cache:
                peak_cache[key] = tools.matmul_peak_tflops(case.device, case.precision)
    except Exception as err:  # a configuration this hardware/framework cannot run: recorded, not hidden
        return {**row, "status": "error", "error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
    secs = hist.column("seconds").astype(float)
    med = float(np.median(secs))
    flops = _flops(case, grid)
    achieved = flops / med / 1e12 if flops else None
    mm_peak = (peak_cache or {}).get((case.backend, case.device, case.precision))
    row.update(status="ok", timed_steps=len(secs), step_time_s=med,
               step_time_p10_s=float(np.percentile(secs, 10)), step_time_p90_s=float(np.percentile(secs, 90)),
               samples_per_s=case.batch / med, peak_memory_bytes=peak, baseline_memory_bytes=probe.baseline,
               memory_kind=probe.kind, flops_per_step=flops, achieved_tflops=achieved,
               matmul_peak_tflops=mm_peak, peak_fraction=achieved / mm_peak if achieved and mm_peak else None,
               skipped_steps=hist.skipped_steps, final_loss=float(hist.losses[-1]),
               fused=getattr(eng, "fused", None), scaling=config.scaling_mode, optimizer=config.optimizer)
    return row


def _add_speedups(rows: list[dict[str, Any]]) -> None:
    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["backend"], r["device"], r["model"], r["size"], r["width"], r["batch"])

    for ref in ("fp32", "tf32"):
        base_of = {key(r): r["step_time_s"] for r in rows if r["status"] == "ok" and r["precision"] == ref}
        for r in rows:
            base = base_of.get(key(r)) if r["status"] == "ok" else None
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
    old_threads = {b: _tools(b).set_threads(grid.threads) for b in backends}
    try:
        context = _context(grid, cases, started)
        rows, peaks = _measure(grid, cases, progress)
    finally:
        for b, n in old_threads.items():
            if n is not None:
                _tools(b).set_threads(n)
    _add_speedups(rows)
    for r in rows:
        r.update(context)
        r["hardware"] = context["hardware"].get(f"{r['backend']}:{r['device']}", {})
        r["matmul_peak_tflops"] = peaks.get((r["backend"], r["device"], r["precision"]), r.get("matmul_peak_tflops"))
        if r.get("achieved_tflops") and r["matmul_peak_tflops"]:
            r["peak_fraction"] = r["achieved_tflops"] / r["matmul_peak_tflops"]
    return rows


def _measure(grid: BenchGrid, cases: list[Case], progress: bool | None
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
        tools = _tools(backend)
        hw[f"{backend}:{device}"] = tools.device_info(device)
        versions.update(tools.versions())
    host = hardware.host()
    versions.update(python=host["python"], numpy=host["numpy"])
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"schema": SCHEMA, "kind": "mpcourse-bench", "measured_at": started.isoformat(timespec="seconds"),
            "run_id": f"{started:%Y%m%dT%H%M%SZ}-{_slug(host['cpu'])}", "host": host, "hardware": hw,
            "versions": versions, "load_avg_1min": load,
            "settings": {k: v for k, v in dataclasses.asdict(grid).items() if k not in ("backends", "devices",
                                                                                          "precisions", "models",
                                                                                          "batches", "widths")}}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "host"


def _fmt_bytes(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f} MiB"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: configuration | samples/s | peak memory | step time | speedup vs fp32 | TFLOP/s,
    and speedup vs tf32 when the rows have tf32 (CUDA)."""
    tf32 = any(r.get("speedup_vs_tf32") for r in rows)
    head = ("configuration", "samples/s", "peak memory", "step time", "vs fp32", "TFLOP/s (of peak)") + (
        ("vs tf32",) if tf32 else ())
    lines = [head]
    for r in rows:
        if r["status"] != "ok":
            lines.append((r["label"], "error", r["error"][:60], "", "", "") + (("",) if tf32 else ()))
            continue
        mem = r["peak_memory_bytes"]
        if r["memory_kind"].startswith("process_rss"):
            mem_s = f"{_fmt_bytes(mem)} (+{_fmt_bytes(mem - r['baseline_memory_bytes'])})"
        else:
            mem_s = _fmt_bytes(mem)
        sp = r.get("speedup_vs_fp32")
        tf = r.get("achieved_tflops")
        tf_s = "-" if tf is None else f"{tf:.3g}" + (f" ({r['peak_fraction']:.0%})" if r.get("peak_fraction") else "")
        sp32 = r.get("speedup_vs_tf32")
        lines.append((r["label"], f"{r['samples_per_s']:,.0f}", mem_s, f"{r['step_time_s'] * 1e3:.2f} ms",
                      "-" if sp is None else f"{sp:.2f}x", tf_s) + (("-" if not sp32 else f"{sp32:.2f}x",) if tf32 else ()))
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = [" | ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(out)


def write_results(rows: list[dict[str, Any]], out: str | os.PathLike[str]) -> Path:
    """Write rows as JSON lines; ``out`` is a file, or a directory that gets ``<run_id>.jsonl``."""
    if not rows:
        raise ValueError("no rows to write")
    path = Path(out)
    if path.suffix != ".jsonl":
        path.mkdir(parents=True, exist_ok=True)
        path = path / f"{rows[0]['run_id']}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    return path


def load_results(path: str | os.PathLike[str], *, ok_only: bool = True) -> list[dict[str, Any]]:
    """Rows from a results file, or from every ``*.jsonl`` in a directory (sorted by name).

    Each row gains ``source`` (the file name). Rows that are not mpcourse-bench rows are refused.
    """
    p = Path(path)
    files = sorted(p.glob("*.jsonl")) if p.is_dir() else [p]
    rows = []
    for f in files:
        for i, line in enumerate(f.read_text().splitlines()):
            if not line.strip():
                continue
            row = json.loads(line)
            if row.get("kind") != "mpcourse-bench":
                raise ValueError(f"{f}:{i + 1} is not an mpcourse-bench result row")
            if ok_only and row["status"] != "ok":
                continue
            rows.append({**row, "source": f.name})
    return rows


def run_label(row: dict[str, Any]) -> str:
    """Where and when a row was measured, e.g. ``'torch:cpu on AMD EPYC (2 cores), torch 2.13, 2025-01-01'``."""
    hw = row.get("hardware", {})
    name = hw.get("name") or row.get("host", {}).get("cpu", "?")
    cores = row.get("host", {}).get("cpu_count")
    if hw.get("device_type", "cpu") == "cpu" and cores:
        name += f" ({cores} cores)"
    fw = row["backend"]
    return f"{row['backend']}:{row['device']} on {name}, {fw} {row.get('versions', {}).get(fw, '?')}, " \
           f"{row['measured_at'][:10]}"


# --- the command -----------------------------------------------------------------------------
def _csv(kind: type) -> Any:
    def parse(text: str) -> tuple[Any, ...]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        try:
            return tuple(kind(t) for t in items)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__}s, got {text!r}")
    return parse


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mpcourse bench", description=(
        "Measure training throughput, step time, peak memory and TFLOP/s over a grid of "
        "backend x device x precision x model x batch, print a table and write a JSON-lines results file."))
    p.add_argument("--preset", choices=sorted(PRESETS), default="default",
                   help="a named grid (default: %(default)s, < 2 min on a 2-core CPU; gpu: the recorded GPU grid)")
    p.add_argument("--backends", type=_csv(str), help="torch,mlx (default: every installed one)")
    p.add_argument("--devices", type=_csv(str), help="auto, or cpu,cuda,cuda:1,mps (torch) / cpu,gpu (mlx)")
    p.add_argument("--precisions", type=_csv(str), help=f"from {','.join(PRECISIONS)} (default: all)")
    p.add_argument("--models", type=_csv(str), help="zoo names, name:large for the large size")
    p.add_argument("--batches", type=_csv(int), help="batch sizes, e.g. 128,512")
    p.add_argument("--widths", type=_csv(int), help="hidden widths for mlp/deep_mlp, e.g. 256,1024")
    p.add_argument("--steps", type=int, help="timed steps per configuration (>= 3)")
    p.add_argument("--warmup", type=int, help="untimed steps first")
    p.add_argument("--max-case-seconds", type=float, help="stop timing a configuration after this long")
    p.add_argument("--features", type=int, dest="num_features", help="input features (a square for cnn/transformer/lstm)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's, one per core)")
    p.add_argument("--no-peak", action="store_true", help="do not measure the matmul peak")
    p.add_argument("--out", default=None, help="results file (.jsonl) or directory (default: course/results "
                                               "if it exists here, else the current directory)")
    p.add_argument("--no-save", action="store_true", help="print the table only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def grid_from_args(ns: argparse.Namespace) -> BenchGrid:
    """A BenchGrid from the preset, with every option given on the command line replacing it."""
    values = dict(PRESETS[ns.preset])
    for name in ("backends", "devices", "precisions", "models", "batches", "widths", "steps", "warmup",
                 "max_case_seconds", "num_features", "threads"):
        if getattr(ns, name) is not None:
            values[name] = getattr(ns, name)
    if ns.no_peak:
        values["matmul_peak"] = False
    return BenchGrid(**values)


def bench_main(argv: list[str] | None = None) -> int:
    """``mpcourse bench``: parse, check everything, run the grid, print the table, save the rows.

    Returns 0 when every configuration ran, 1 when some failed (they are in the table and the
    file), 2 on bad input (nothing was run).
    """
    parser = _parser()
    ns = parser.parse_args(argv)
    try:
        grid = grid_from_args(ns)
        plan(grid)  # bad devices/backends fail here, before anything runs
    except (ValueError, TypeError) as err:
        print(f"mpcourse bench: error: {err}", file=sys.stderr)
        return 2
    load, cores = (os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0), os.cpu_count() or 1
    if load > 0.75 * cores:
        print(f"warning: this machine is busy (1-min load average {load:.1f} on {cores} cores): CPU timings "
              f"will be noisy{'' if grid.threads == 1 else '; --threads 1 steadies them'}. The load is "
              f"recorded with the results.", file=sys.stderr)
    t0 = time.perf_counter()
    rows = run_grid(grid, progress=False if ns.no_progress else None)
    print(format_table(rows))
    load = rows[0]["load_avg_1min"] if rows else None
    print(f"\n{len(rows)} configurations in {time.perf_counter() - t0:.1f} s"
          + (f" (1-min load average at start: {load:.2f} on {os.cpu_count()} cores)" if load is not None else ""))
    slower = [r for r in rows if r["status"] == "ok" and r["speedup_vs_fp32"] and r["speedup_vs_fp32"] < 1]
    if slower:
        print(f"{len(slower)} configuration(s) ran SLOWER than fp32 here, e.g. {slower[0]['label']} "
              f"({slower[0]['speedup_vs_fp32']:.2f}x). On CPUs without avx512_fp16/AMX, fp16/bf16 matmuls "
              f"are converted or emulated; see notebook 03.")
    if rows and not ns.no_save:
        out = ns.out or ("course/results" if Path("course/results").is_dir() else ".")
        print(f"results: {write_results(rows, out)}")
    failed = [r for r in rows if r["status"] != "ok"]
    for r in failed:
        print(f"FAILED {r['label']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(bench_main())
