"""The main job: the same model trained in FP32, FP16 (dynamic loss scaling) and BF16, compared.

Usage::

    from mpcourse.studies.demo import run_demo

    result = run_demo(backend="torch", device="auto", model="mlp", epochs=10)
    result.rows            # one dict per precision: seconds, speedup, accuracy, skipped, scale
    result.report_path     # an HTML report with plotly figures

From the shell: ``mpcourse demo [--backend torch|mlx] [--device auto] [--model mlp] [--epochs 10]``.

Every number is measured in this run. Each precision first runs a few untimed warm-up steps on
a throwaway engine, so one-time costs (kernel selection, allocator growth) do not land on
whichever precision happens to go first.
"""

from __future__ import annotations

import datetime as _dt
import html
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from mpcourse import data as _data
from mpcourse._validate import int_at_least
from mpcourse.config import TrainConfig
from mpcourse.engines import make_engine
from mpcourse.history import History

__all__ = ["DemoResult", "run_demo", "PRECISION_RUNS", "speed_explanation"]

# (label, config changes): FP16 uses dynamic loss scaling, BF16 needs none (fp32's exponent range).
PRECISION_RUNS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("fp32", {"precision": "fp32", "loss_scale": "none"}),
    ("fp16", {"precision": "fp16", "loss_scale": "dynamic"}),
    ("bf16", {"precision": "bf16", "loss_scale": "none"}),
)


@dataclass
class DemoResult:
    """What :func:`run_demo` measured: per-run Histories, evaluations and the comparison rows."""

    histories: dict[str, History] = field(default_factory=dict)
    evals: dict[str, dict[str, float]] = field(default_factory=dict)
    rows: list[dict[str, Any]] = field(default_factory=list)
    device: str = ""
    report_path: Path | None = None


def run_demo(
    backend: str = "torch",
    device: str = "auto",
    model: str = "mlp",
    epochs: int = 10,
    dataset: str = "digits",
    lr: float = 1e-3,
    batch_size: int = 64,
    seed: int = 0,
    warmup_steps: int = 5,
    report: str | Path | None = "reports",
    out: TextIO | None = None,
) -> DemoResult:
    """Train ``model`` on ``dataset`` in fp32, fp16 and bf16 and print the comparison.

    Args:
        backend: ``"torch"`` or ``"mlx"``. Default ``"torch"``.
        device: ``"auto"`` or an explicit device. Default ``"auto"``.
        model: a zoo model name. Default ``"mlp"``.
        epochs: epochs per precision, >= 1. Default 10.
        dataset: a :func:`mpcourse.data.load` name. Default ``"digits"``.
        lr, batch_size, seed: training settings shared by all three runs.
        warmup_steps: untimed steps on a throwaway engine before each timed run. Default 5.
        report: folder for the HTML report, or None for no report. Default ``"reports"``.
        out: where to print (default stdout).
    """
    out = out or sys.stdout
    int_at_least("epochs", epochs, 1)
    ds = _data.load(dataset, seed=seed)
    base = TrainConfig(lr=lr, batch_size=batch_size, seed=seed)
    result = DemoResult()
    for label, changes in PRECISION_RUNS:
        cfg = base.replace(**changes)
        warm = make_engine(backend, model, cfg, device, data=ds, verbose=False)
        warm.fit(ds, steps=max(1, warmup_steps), progress=False)
        eng = make_engine(backend, model, cfg, device, data=ds, verbose=False)
        result.device = f"{backend}:{eng.device}"
        if label == "fp32":
            print(
                f"mpcourse demo: {model} on {dataset} ({len(ds.x_train)} train / {len(ds.x_test)} test), "
                f"{epochs} epochs, batch {batch_size}, on {result.device}",
                file=out,
            )
        hist = eng.fit(ds, epochs=epochs)
        result.histories[label] = hist
        result.evals[label] = eng.evaluate(ds)
        _print_epochs(label, hist, out)
    result.rows = _comparison(result)
    _print_comparison(result.rows, out)
    _print_why(result.rows, result.device, out)
    if report is not None:
        result.report_path = _write_report(result, Path(report), model, dataset)
        print(f"\nreport: {result.report_path.resolve()}", file=out)
    return result


def _print_epochs(label: str, hist: History, out: TextIO) -> None:
    print(f"\n[{label}]  epoch    mean loss    time (s)   skipped", file=out)
    for e in hist.epoch_summary():
        print(f"[{label}]  {e['epoch'] + 1:5d}  {e['loss']:11.4f}  {e['seconds']:10.3f}  {e['skipped']:8d}", file=out)


def _comparison(result: DemoResult) -> list[dict[str, Any]]:
    ref_t = result.histories["fp32"].total_seconds
    ref = result.evals["fp32"]
    rows = []
    for label, hist in result.histories.items():
        ev, t = result.evals[label], hist.total_seconds
        last = hist.epoch_summary()[-1]["loss"]
        rows.append(
            {
                "precision": label,
                "seconds": t,
                "speedup_vs_fp32": ref_t / t if t > 0 else float("nan"),
                "final_train_loss": last,
                "test_loss": ev["loss"],
                "test_accuracy": ev["accuracy"],
                "accuracy_diff_points": 100.0 * (ev["accuracy"] - ref["accuracy"]),
                "skipped_steps": hist.skipped_steps,
                "final_scale": hist.records[-1].scale,
                "steps": len(hist),
            }
        )
    return rows


def _speed_words(speedup: float) -> str:
    if speedup >= 1.0:
        return f"{speedup:.2f}x faster"
    return f"{1.0 / speedup:.2f}x slower"


def _print_comparison(rows: list[dict[str, Any]], out: TextIO) -> None:
    print("\ncomparison (measured in this run; time = device-synchronised training steps)", file=out)
    print(
        f"{'precision':>9} {'time (s)':>9} {'vs fp32':>14} {'final loss':>11} {'test acc':>9} "
        f"{'acc diff':>9} {'skipped':>8} {'final scale':>12}",
        file=out,
    )
    for r in rows:
        vs = "baseline" if r["precision"] == "fp32" else _speed_words(r["speedup_vs_fp32"])
        print(
            f"{r['precision']:>9} {r['seconds']:9.3f} {vs:>14} {r['final_train_loss']:11.4f} "
            f"{100 * r['test_accuracy']:8.2f}% {r['accuracy_diff_points']:+8.2f}p {r['skipped_steps']:8d} "
            f"{r['final_scale']:12g}",
            file=out,
        )


def speed_explanation(
    rows: list[dict[str, Any]], device: str, flags: list[str] | None = None, arch: str | None = None
) -> str:
    """Why each half precision ran at the speed it did here, from the flags of the CPU present.

    On a CPU the sentence per precision comes from :func:`mpcourse.hardware.half_precision_outlook`
    (what the instruction sets allow; the timing above is what actually happened); on another
    device a model this small is mostly per-step overhead. ``flags``/``arch`` describe another CPU.
    """
    from mpcourse import hardware

    lines = []
    if device.endswith(":cpu"):
        arch = arch or hardware.cpu_arch()
        have = hardware.cpu_flags(hardware.precision_flags(arch)) if flags is None else flags
        if have is None:
            return "This CPU's feature flags cannot be read here: the table above is the measurement."
        outlook = hardware.half_precision_outlook(have, arch)
        lines.append(f"This CPU ({arch}) has: {', '.join(have) or 'none of the half-precision flags'}.")
        for r in rows:
            if r["precision"] in outlook:
                verdict = "faster" if r["speedup_vs_fp32"] > 1 else "slower"
                lines.append(f"  {r['precision']} ran {verdict} than fp32 here; {outlook[r['precision']].rstrip('.')}.")
    elif any(r["speedup_vs_fp32"] < 1 for r in rows if r["precision"] != "fp32"):
        lines.append(
            f"Half precision was slower on {device}: a model this small is mostly per-step overhead "
            "(launches, casts, the scaler's checks), not matmul time."
        )
    if lines:
        lines.append("Notebook 03 measures and explains this.")
    return "\n".join(lines)


def _print_why(rows: list[dict[str, Any]], device: str, out: TextIO) -> None:
    text = speed_explanation(rows, device)
    if text:
        print("\n" + text, file=out)


def _write_report(result: DemoResult, folder: Path, model: str, dataset: str) -> Path:
    from mpcourse import plots  # plotly only when a report is written

    folder.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = folder / f"demo-{stamp}.html"
    figs = [
        plots.loss_curves(result.histories, window=5, title=f"Training loss, {model} on {dataset} (5-step mean)"),
        plots.scale_trajectory({"fp16": result.histories["fp16"]}, title="FP16 dynamic loss scale"),
        plots.time_bars({r["precision"]: r["seconds"] for r in result.rows}),
    ]
    head = [
        "precision",
        "seconds",
        "speedup_vs_fp32",
        "test_accuracy",
        "accuracy_diff_points",
        "skipped_steps",
        "final_scale",
    ]
    table = "".join(f"<tr>{''.join(f'<td>{html.escape(_fmt(r[k]))}</td>' for k in head)}</tr>" for r in result.rows)
    parts = [
        f"<h1>mpcourse demo: {html.escape(model)} on {html.escape(dataset)}</h1>",
        f"<p>Measured {stamp} on {html.escape(result.device)}, {html.escape(platform.platform())}, "
        f"{html.escape(platform.processor() or platform.machine())}, Python {platform.python_version()}.</p>",
        f"<table border=1 cellpadding=4><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr>{table}</table>",
    ]
    for i, fig in enumerate(figs):
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))  # plotly.js inline once: works offline
    path.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>mpcourse demo</title></head><body>"
        + "\n".join(parts)
        + "</body></html>",
        encoding="utf-8",
    )
    return path


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
