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
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)


def pytest_collectstart(collector: pytest.Collector) -> None:
    """Extend each notebook collector's skip list before its cells are compared."""
    skip = getattr(collector, "skip_compare", None)
    if isinstance(skip, tuple) and collector.path.suffix == ".ipynb":
        collector.skip_compare = skip + tuple(k for k in SKIP_COMPARE if k not in skip)
