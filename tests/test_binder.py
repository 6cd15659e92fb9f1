"""binder/ installs this package with a CPU torch and opens JupyterLab at notebook 01."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

REPO = Path(__file__).resolve().parent.parent
BINDER = REPO / "binder"


def _requirement_lines() -> list[str]:
    lines = (BINDER / "requirements.txt").read_text().splitlines()
    return [ln.split(" #")[0].strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_requirements_install_this_package_from_the_repository_root():
    lines = _requirement_lines()
    editable = [ln.split(None, 1)[1] for ln in lines if ln.startswith("-e ")]
    assert len(editable) == 1
    # repo2docker runs `pip install -r binder/requirements.txt` in the repository root, and
    # pip resolves -e paths from the working directory: the path must name the root from there.
    target = (REPO / editable[0]).resolve()
    assert target == REPO
    meta = tomllib.loads((target / "pyproject.toml").read_text())
    assert meta["project"]["name"] == "mpcourse"


def test_requirements_take_torch_from_the_cpu_wheel_index():
    lines = _requirement_lines()
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in lines
    torch = [ln for ln in lines if re.match(r"^torch\b", ln)]
    assert len(torch) == 1 and re.fullmatch(r"torch==\d+\.\d+\.\d+", torch[0]), torch


def test_runtime_is_a_python_the_package_supports():
    runtime = (BINDER / "runtime.txt").read_text().strip()
    m = re.fullmatch(r"python-3\.(\d+)", runtime)
    assert m, runtime
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires.startswith(">=3.") and int(m.group(1)) >= int(requires[4:].split(".")[0])


@pytest.mark.skipif(sys.platform == "win32", reason="postBuild is a bash script")
def test_postbuild_opens_notebook_01_and_finds_the_widget_extensions(tmp_path: Path):
    post = BINDER / "postBuild"
    assert os.access(post, os.X_OK), "binder/postBuild must be executable"
    bindir = str(Path(sys.executable).parent)
    env = dict(
        os.environ, HOME=str(tmp_path), PYTHONPATH=str(REPO), PATH=os.pathsep.join([bindir, os.environ.get("PATH", "")])
    )
    if not shutil.which("jupyter", path=env["PATH"]):
        pytest.skip("jupyter is not on PATH")
    result = subprocess.run(["bash", str(post)], cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    config = (tmp_path / ".jupyter" / "jupyter_server_config.py").read_text()
    url = re.search(r'default_url = "/lab/tree/(.+)"', config)
    assert url and url.group(1) == "notebooks/01_fundamentals.ipynb"
    assert "mpcourse" in result.stdout
