"""Recorded results: JSON lines that name the hardware, the date and the versions, and tables of them.

Usage::

    from mpcourse import bench

    path = bench.write_results(rows, "course/results")   # <date>-<cpu or gpu>.jsonl
    rows = bench.load_results("course/results")          # every recorded row, for the notebooks
    print(bench.format_table(rows))                      # configuration | samples/s | memory | speedup
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

__all__ = ["slug", "format_table", "write_results", "load_results", "run_label"]


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
                "emulated" if emulated else "-" if sp is None else f"{sp:.2f}x",
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
