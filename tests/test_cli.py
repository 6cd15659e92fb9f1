"""The `mpcourse` command: demo (the main job) and doctor."""

from __future__ import annotations

import re

import pytest

pytest.importorskip("torch")

from mpcourse.cli import main  # noqa: E402
from mpcourse.studies.demo import run_demo  # noqa: E402


def test_demo_prints_epochs_comparison_and_writes_a_report(tmp_path, capsys) -> None:
    assert main(["demo", "--epochs", "2", "--device", "cpu", "--report", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for label in ("fp32", "fp16", "bf16"):
        assert re.search(rf"\[{label}\]\s+2\s+\d+\.\d{{4}}\s+\d+\.\d{{3}}", out), out  # epoch 2 row
        assert re.search(rf"^\s+{label}\s+\d+\.\d{{3}}\s", out, re.M), out  # comparison row
    assert re.search(r"fp16 .*\d\.\d\dx (faster|slower)", out)
    report = next(tmp_path.glob("demo-*.html"))
    text = report.read_text()
    assert str(report.resolve()) in out
    assert "Plotly.newPlot" in text and text.count("plotly-graph-div") == 3


def test_demo_result_is_measured_and_consistent(tmp_path) -> None:
    res = run_demo(device="cpu", epochs=1, report=None, out=open(tmp_path / "log.txt", "w"))
    rows = {r["precision"]: r for r in res.rows}
    assert set(rows) == {"fp32", "fp16", "bf16"}
    assert rows["fp32"]["speedup_vs_fp32"] == 1.0 and rows["fp32"]["accuracy_diff_points"] == 0.0
    for label, r in rows.items():
        hist = res.histories[label]
        assert r["seconds"] == hist.total_seconds > 0
        assert r["skipped_steps"] == hist.skipped_steps and r["final_scale"] == hist.records[-1].scale
    assert rows["fp16"]["final_scale"] > 1.0 and rows["bf16"]["final_scale"] == 1.0


def test_demo_bad_arguments(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--model", "resnet"])
    assert "invalid choice: 'resnet'" in capsys.readouterr().err
    assert main(["demo", "--epochs", "0", "--no-report"]) == 2
    assert "epochs must be an int >= 1, got 0" in capsys.readouterr().err


def test_doctor_checks_each_precision_for_real(capsys) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    for precision in ("fp32", "fp16", "bf16"):
        assert re.search(rf"torch:cpu\s+{precision}: ok \(loss \d\.\d+ -> \d\.\d+\)", out), out
    assert re.search(r"torch:cpu\s+fp8: ok \(loss \d\.\d+ -> \d\.\d+\) \[matmul emulated\]", out), out


def test_doctor_says_what_this_cpu_has_and_what_each_device_cannot_do(capsys, monkeypatch) -> None:
    from mpcourse import hardware
    from mpcourse.engines.limits import Limit
    from mpcourse.engines.torch import support

    planted = [Limit("cpu", "bf16", True, "planted: bf16 cannot run"), Limit("cpu", "any", False, "planted note")]
    monkeypatch.setattr(support, "limits", lambda device, **versions: planted)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert f"CPU: {hardware.describe_cpu()}" in out
    assert "torch:cpu   bf16: WILL NOT WORK: planted: bf16 cannot run" in out
    assert "torch:cpu   any: note: planted note" in out
    assert "torch:cpu   bf16: FAILED: DeviceUnavailableError: bf16 on cpu: planted: bf16 cannot run" in out  # refused


def test_demo_explains_its_timings_from_the_cpu_present() -> None:
    from mpcourse.studies.demo import speed_explanation

    rows = [
        {"precision": "fp32", "speedup_vs_fp32": 1.0},
        {"precision": "fp16", "speedup_vs_fp32": 0.25},
        {"precision": "bf16", "speedup_vs_fp32": 1.01},
    ]
    avx2 = speed_explanation(rows, "torch:cpu", flags=["avx2", "fma", "f16c"], arch="x86")
    assert "has: avx2, fma, f16c" in avx2
    assert "fp16 ran slower than fp32 here; only F16C" in avx2 and "bf16 ran faster than fp32 here; no bf16" in avx2
    bf16_cpu = speed_explanation(rows, "torch:cpu", flags=["avx2", "avx512_bf16"], arch="x86")
    assert "bf16 ran faster than fp32 here; AVX512-BF16" in bf16_cpu  # another CPU, another story
    gpu = speed_explanation(rows, "torch:cuda")
    assert "per-step overhead" in gpu and "CPU" not in gpu
    assert speed_explanation(rows[:1] + [{"precision": "bf16", "speedup_vs_fp32": 2.0}], "torch:cuda") == ""
