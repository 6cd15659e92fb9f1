"""Recorded results: JSON lines that name the hardware, the date and the versions, and tables of them.

Usage::

    from mpcourse import bench

    path = bench.write_results(rows, "course/results")   # <date>-<cpu or gpu>.jsonl
    rows = bench.load_results("course/results")          # every recorded row, for the notebooks
    print(bench.format_table(rows))                      # configuration | samples/s | memory | speedup
    bench.recorded_speedup(device="cuda")                # the recorded figure with its hardware,
                                                         # or "no recorded result"
    bench.format_speedup(0.16, (0.12, 0.21))             # '0.16x (p10-p90 0.12-0.21x)'
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = [
    "RESULTS_DIR",
    "slug",
    "format_table",
    "write_results",
    "load_results",
    "run_label",
    "speedup_spread",
    "format_speedup",
    "recorded_speedup",
]

#: The recorded results shipped with the course (``course/results`` of the repository).
RESULTS_DIR = Path(__file__).resolve().parents[2] / "course" / "results"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40] or "host"


def _fmt_bytes(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.1f} MiB"


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table: configuration | samples/s | peak memory | step time | speedup vs fp32 | TFLOP/s,
    and speedup vs tf32 when the rows have tf32 (CUDA)."""
    tf32 = any(r.get("speedup_vs_tf32") for r in rows)
    head = ("configuration", "samples/s", "peak memory", "step time", "vs fp32", "TFLOP/s (of peak)") + (
        ("vs tf32",) if tf32 else ()
    )
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
        emulated = r.get("timing") == "emulated"  # an fp8 emulation: its time says nothing of FP8 speed
        tf = r.get("achieved_tflops")
        tf_s = "-" if tf is None else f"{tf:.3g}" + (f" ({r['peak_fraction']:.0%})" if r.get("peak_fraction") else "")
        sp32 = r.get("speedup_vs_tf32")
        lines.append(
            (
                r["label"] + (" (emulated)" if emulated else ""),
                f"{r['samples_per_s']:,.0f}",
                mem_s,
                f"{r['step_time_s'] * 1e3:.2f} ms",
                "emulated"
                if emulated
                else "-"
                if sp is None
                else format_speedup(sp, None if r["precision"] == "fp32" else speedup_spread(r, rows)),
                tf_s,
            )
            + (("-" if not sp32 else f"{sp32:.2f}x",) if tf32 else ())
        )
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
    return (
        f"{row['backend']}:{row['device']} on {name}, {fw} {row.get('versions', {}).get(fw, '?')}, "
        f"{row['measured_at'][:10]}"
    )


def _case_key(r: dict[str, Any]) -> tuple[Any, ...]:
    return (r.get("run_id"), r["backend"], r["device"], r["model"], r.get("size"), r.get("width"), r["batch"])


def speedup_spread(row: dict[str, Any], rows: list[dict[str, Any]], ref: str = "fp32") -> tuple[float, float] | None:
    """The p10-p90 range of ``row``'s speedup over the ``ref`` row of the same case in ``rows``.

    Usage::

        lo, hi = bench.speedup_spread(fp16_row, rows)   # e.g. (0.12, 0.21)

    A speedup is a ratio of two median step times, each with its own spread; the range pairs
    the extremes: ``ref p10 / row p90`` (the reference at its fastest, this row at its slowest)
    up to ``ref p90 / row p10``. None where either row lacks the percentiles.
    """
    base = next(
        (r for r in rows if r.get("status") == "ok" and r["precision"] == ref and _case_key(r) == _case_key(row)),
        None,
    )
    if base is None:
        return None
    try:
        lo = base["step_time_p10_s"] / row["step_time_p90_s"]
        hi = base["step_time_p90_s"] / row["step_time_p10_s"]
    except (KeyError, TypeError, ZeroDivisionError):
        return None
    return (float(lo), float(hi))


def format_speedup(speedup: float, spread: tuple[float, float] | None = None) -> str:
    """A speedup with its p10-p90 range: ``format_speedup(0.16, (0.12, 0.21))`` ->
    ``'0.16x (p10-p90 0.12-0.21x)'``; without a spread, ``'0.16x'``."""
    if not isinstance(speedup, (int, float)) or speedup != speedup or speedup < 0:
        raise ValueError(f"speedup must be a number >= 0, got {speedup!r}")
    text = f"{speedup:.2f}x"
    if spread is None:
        return text
    lo, hi = spread
    if not lo <= hi:
        raise ValueError(f"spread must be (low, high) with low <= high, got {spread!r}")
    return f"{text} (p10-p90 {lo:.2f}-{hi:.2f}x)"


def recorded_speedup(
    *,
    backend: str | None = None,
    device: str | None = None,
    precision: str | None = None,
    model: str | None = None,
    batch: int | None = None,
    path: str | os.PathLike[str] | None = None,
    show: bool = True,
) -> list[dict[str, Any]]:
    """The recorded speedups over fp32 that match, each with where and when it was measured.

    Usage::

        bench.recorded_speedup(device="cuda")        # prints "no recorded result ..." until a
                                                     # GPU results file is committed
        rows = bench.recorded_speedup(backend="mlx", precision="bf16", show=False)
        rows[0]["speedup"], rows[0]["spread"], rows[0]["measured"]

    Args:
        backend, device, precision, model, batch: keep only rows with these values (``device``
            matches by prefix, so ``"cuda"`` matches ``"cuda:0"``). Default None: any.
        path: a results file or directory. Default :data:`RESULTS_DIR`.
        show: print one line per result, or "no recorded result". Default True.

    Returns:
        One dict per matching non-fp32 row: ``label``, ``speedup``, ``spread`` (p10-p90 range
        or None), ``measured`` (:func:`run_label`: hardware, framework version, date), ``source``
        (the file). Empty when nothing matches.
    """
    where = Path(path) if path is not None else RESULTS_DIR
    rows = load_results(where) if where.exists() else []
    found = []
    for r in rows:
        if r["precision"] in ("fp32",) or r.get("speedup_vs_fp32") is None:
            continue
        if backend is not None and r["backend"] != backend:
            continue
        if device is not None and not str(r["device"]).startswith(device):
            continue
        if (precision, model, batch) != (None, None, None) and any(
            want is not None and r[k] != want
            for k, want in (("precision", precision), ("model", model), ("batch", batch))
        ):
            continue
        found.append(
            {
                "label": r["label"],
                "speedup": float(r["speedup_vs_fp32"]),
                "spread": speedup_spread(r, rows),
                "measured": run_label(r),
                "source": r["source"],
            }
        )
    if show:
        if not found:
            asked = ", ".join(
                f"{k}={v!r}"
                for k, v in (
                    ("backend", backend),
                    ("device", device),
                    ("precision", precision),
                    ("model", model),
                    ("batch", batch),
                )
                if v is not None
            )
            print(f"no recorded result{' for ' + asked if asked else ''} in {where}")
        for f in found:
            sp = format_speedup(f["speedup"], f["spread"])
            print(f"{f['label']}: {sp} over fp32 -- {f['measured']} ({f['source']})")
    return found
