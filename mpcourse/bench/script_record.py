"""Records of the benchmark scripts (``tests/benchmarks/*.py``): what one run measured, with where and when.

Usage::

    from mpcourse.bench.script_record import write_script_record, load_script_records

    path = write_script_record("long_run", settings={"steps": 4500}, results={"clamp_reached_at": 4000},
                               frameworks=("torch",))
    # .../course/results/benchmarks/long_run-20261201T104500Z-amd-epyc.json
    rec = load_script_records("long_run")[-1]   # the newest: rec["host"], rec["versions"], rec["results"]

A figure the README or a notebook quotes from a script comes from one of these files, named in
the same sentence: each names the host (CPU model and flags, cores, platform), the versions of
mpcourse, the frameworks, Python and numpy, the UTC time and the 1-minute load average at the
start, the script's settings and what it measured. Written by the scripts only; never edited.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from mpcourse import hardware
from mpcourse.bench.grid import backend_tools
from mpcourse.bench.results import RESULTS_DIR, slug

__all__ = ["RECORDS_DIR", "SCRIPT_KIND", "write_script_record", "load_script_records"]

#: Where the scripts write: ``course/results/benchmarks`` of this checkout.
RECORDS_DIR = RESULTS_DIR / "benchmarks"
SCRIPT_KIND = "mpcourse-benchmark-script"


def _versions(frameworks: Iterable[str]) -> dict[str, str]:
    import mpcourse

    out = {"mpcourse": mpcourse.__version__}
    for name in frameworks:
        if name not in ("torch", "mlx"):
            raise ValueError(f"frameworks must name 'torch' and/or 'mlx', got {name!r}")
        out.update(backend_tools(name).versions())
    return out


def write_script_record(
    script: str,
    *,
    settings: Mapping[str, Any],
    results: Any,
    frameworks: Iterable[str] = ("torch",),
    started: dt.datetime | None = None,
    out_dir: str | os.PathLike[str] = RECORDS_DIR,
) -> Path:
    """Write one run of ``script`` as ``<out_dir>/<script>-<UTC time>-<cpu>.json``; returns the path.

    Args:
        script: the script's name, letters, digits and ``_`` (e.g. ``"gpt_text"``).
        settings: the run's arguments (JSON-serialisable).
        results: what it measured (JSON-serialisable).
        frameworks: the frameworks the run used, whose versions are recorded.
        started: when the run started (UTC; default: now).
        out_dir: the directory (default :data:`RECORDS_DIR`).
    """
    if not script or not all(c.isalnum() or c == "_" for c in script):
        raise ValueError(f"script must be letters, digits and '_', got {script!r}")
    started = started or dt.datetime.now(dt.timezone.utc)
    host = hardware.host()
    record = {
        "kind": SCRIPT_KIND,
        "script": script,
        "measured_at": started.isoformat(timespec="seconds"),
        "host": host,
        "versions": {**_versions(frameworks), "python": host["python"], "numpy": host["numpy"]},
        "load_avg_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "settings": dict(settings),
        "results": results,
    }
    text = json.dumps(record, indent=1, sort_keys=True) + "\n"  # fails here, before a file exists
    path = Path(out_dir) / f"{script}-{started:%Y%m%dT%H%M%SZ}-{slug(host['cpu'])}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load_script_records(script: str, records_dir: str | os.PathLike[str] = RECORDS_DIR) -> list[dict[str, Any]]:
    """Every record of ``script`` in ``records_dir``, oldest first (an empty list when there is none)."""
    files = sorted(Path(records_dir).glob(f"{script}-*.json"))
    recs = [json.loads(p.read_text()) for p in files]
    return [{**r, "file": str(p)} for p, r in zip(files, recs) if r.get("kind") == SCRIPT_KIND]
