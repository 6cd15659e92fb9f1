"""nbval harness for the course notebooks (used by every notebook in this folder).

Run::

    python -m pytest tests notebooks --nbval --nbval-sanitize-with tests/nbval_sanitize.cfg

What it does, on purpose:

- Plotly figures are not compared as text. Their JSON (``application/vnd.plotly.v1+json``) is
  added to nbval's ``skip_compare`` list here, and their HTML (a random div id plus every data
  point) is collapsed to a placeholder by a regex in ``tests/nbval_sanitize.cfg``. A figure's
  *data* is checked instead by an assert cell in the notebook or a unit test of its builder.
- Widget views are already skipped by nbval (their model ids are random); widgets here print a
  short text repr, which is compared.
- The kernel runs with ``MPCOURSE_PROGRESS=0`` (no progress bars in stored outputs) and with
  this checkout first on ``PYTHONPATH``, so the notebooks test this tree's ``mpcourse``.
- The kernel runs torch/numpy CPU ops on one thread (``OMP_NUM_THREADS=1`` unless already
  set): outputs are compared, and one thread fixes the order of CPU float sums whatever the
  machine's core count; the course's models are small enough that a second thread does not
  help, and on a shared, loaded CPU spinning OpenMP threads made runs 3x slower. A notebook that
  measures speed (03) sets its own thread count explicitly.
- Cells whose output depends on timing or on the device carry the tag ``nbval-ignore-output``;
  no other cell does.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Output keys nbval must not compare as text (nbval itself skips widget views and images).
SKIP_COMPARE = ("application/vnd.plotly.v1+json",)

# The kernel nbval starts inherits this process's environment.
os.environ["MPCOURSE_PROGRESS"] = "0"
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


def pytest_collectstart(collector: pytest.Collector) -> None:
    """Extend each notebook collector's skip list before its cells are compared."""
    skip = getattr(collector, "skip_compare", None)
    if isinstance(skip, tuple) and collector.path.suffix == ".ipynb":
        collector.skip_compare = skip + tuple(k for k in SKIP_COMPARE if k not in skip)
