"""The GitHub Actions workflow runs the project's test command on Linux and Apple silicon."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

yaml = pytest.importorskip("yaml")  # PyYAML comes with jupyter_server (jupyter-events)

REPO = Path(__file__).resolve().parent.parent
WORKFLOW = REPO / ".github" / "workflows" / "ci.yml"


def _load() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())


def _pytest_command(text: str) -> str:
    """The pytest invocation in a shell script or workflow, whitespace-normalised."""
    found = [" ".join(m.group(0).split()) for m in re.finditer(r"python -m pytest[^\n]*(?:\n\s+--[^\n]*)*", text)]
    assert found, "no `python -m pytest` command found"
    command = next((c for c in found if "notebooks" in c), found[0])  # the test command, not a partial run
    # nbval 0.11 still accepts the deprecated alias --sanitize-with.
    return command.replace(" --sanitize-with ", " --nbval-sanitize-with ")


def test_matrix_is_linux_and_macos_14_arm64():
    job = _load()["jobs"]["test"]
    assert job["strategy"]["matrix"]["os"] == ["ubuntu-latest", "macos-14"]
    assert job["strategy"]["fail-fast"] is False
    assert job["env"]["MPCOURSE_PROGRESS"] == "0"


def test_torch_comes_from_the_cpu_index_on_linux_and_pypi_on_macos():
    steps = _load()["jobs"]["test"]["steps"]
    linux = [s for s in steps if s.get("if") == "runner.os == 'Linux'" and "torch" in s.get("run", "")]
    mac = [s for s in steps if s.get("if") == "runner.os == 'macOS'" and "torch" in s.get("run", "")]
    assert len(linux) == 1 and "--index-url https://download.pytorch.org/whl/cpu" in linux[0]["run"]
    assert len(mac) == 1 and "index-url" not in mac[0]["run"]


def test_runs_the_nbval_command_the_site_build_and_keeps_artifacts():
    steps = _load()["jobs"]["test"]["steps"]
    runs = "\n".join(s.get("run", "") for s in steps)
    command = _pytest_command(runs)
    assert "tests notebooks --nbval" in command
    assert "--nbval-sanitize-with tests/nbval_sanitize.cfg" in command
    assert "mpcourse site _site" in runs
    assert "MPCOURSE_CHROMIUM" in runs
    upload = [s for s in steps if str(s.get("uses", "")).startswith("actions/upload-artifact")]
    assert upload and "artifacts/" in upload[0]["with"]["path"]


def test_same_pytest_command_as_ci_run():
    ci_run = REPO / ".ci" / "run"
    if not ci_run.is_file() or "pytest" not in ci_run.read_text():
        pytest.skip(".ci/run has no pytest command yet")
    ours = _pytest_command("\n".join(s.get("run", "") for s in _load()["jobs"]["test"]["steps"]))
    theirs = _pytest_command(ci_run.read_text())
    # .ci/run may add flags of its own (-q, -p ...); the selection and nbval options must agree.
    for part in ("tests notebooks", "--nbval", "--nbval-sanitize-with tests/nbval_sanitize.cfg"):
        assert (part in ours) == (part in theirs), part


def test_every_job_runs_the_device_conformance_suite_on_what_it_has():
    steps = _load()["jobs"]["test"]["steps"]
    runs = [s.get("run", "") for s in steps]
    assert any("pytest tests/test_devices.py" in r and "-rs" in r for r in runs)  # skips listed with reasons
    nbval = next(s for s in steps if "tests notebooks --nbval" in " ".join(s.get("run", "").split()))
    assert "runner.os == 'macOS'" in nbval["env"]["MPCOURSE_DEVICE"]  # macOS VMs lack MPS: notebooks on the CPU


def test_ci_run_also_runs_the_notebooks_on_torchs_generic_kernels_and_requires_the_browser():
    text = (REPO / ".ci" / "run").read_text()
    again = [line for line in text.splitlines() if line.startswith("ATEN_CPU_CAPABILITY=default ")]
    assert len(again) == 1 and "pytest notebooks --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg" in again[0]
    assert text.index('export CI="${CI:-true}"') < text.index("python -m pytest tests notebooks")
