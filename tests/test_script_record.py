"""The benchmark scripts' records: host, versions, date, settings and results, in one JSON file per run."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json
from pathlib import Path

import pytest

from mpcourse import hardware
from mpcourse.bench.script_record import SCRIPT_KIND, load_script_records, write_script_record

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_a_record_names_host_versions_date_and_reads_back(tmp_path: Path) -> None:
    import torch

    when = dt.datetime(2026, 12, 1, 10, 45, tzinfo=dt.timezone.utc)
    path = write_script_record("long_run", settings={"steps": 10}, results={"clamp": 4}, started=when, out_dir=tmp_path)
    assert path.name.startswith("long_run-20261201T104500Z-") and path.suffix == ".json"
    rec = json.loads(path.read_text())
    assert rec["kind"] == SCRIPT_KIND and rec["measured_at"] == "2026-12-01T10:45:00+00:00"
    assert rec["versions"]["torch"] == torch.__version__ and "mpcourse" in rec["versions"]
    assert rec["host"]["cpu"] == hardware.host()["cpu"] and rec["settings"] == {"steps": 10}
    assert rec["results"] == {"clamp": 4}
    [loaded] = load_script_records("long_run", tmp_path)
    assert loaded["file"] == str(path) and loaded["results"] == {"clamp": 4}
    assert load_script_records("gpt_text", tmp_path) == []


def test_bad_names_and_unserialisable_results_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="script must be letters, digits and '_', got 'a/b'"):
        write_script_record("a/b", settings={}, results={}, out_dir=tmp_path)
    with pytest.raises(ValueError, match="frameworks must name 'torch' and/or 'mlx', got 'jax'"):
        write_script_record("x", settings={}, results={}, frameworks=["jax"], out_dir=tmp_path)
    with pytest.raises(TypeError):
        write_script_record("x", settings={}, results={"f": object()}, frameworks=[], out_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []
