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

The rule for what is compared (issue 12; ``tests/test_notebook_rule.py`` checks it mechanically):

- **Compared verbatim** only where the output is deterministic on every machine: format facts
  (``mpc.formats``), the scaler's state machine, pure-Python and numpy results, fixed texts and
  widget reprs, and byte counts fixed by a model's shape.
- **Tagged ``nbval-ignore-output``**: every cell whose output depends on the floating-point
  results of training or of device kernels (losses, accuracies, gradients, overflow steps,
  counts of inf/nan), on timing, or on the machine (devices, CPU flags, recorded-results files).
  The notebooks run on ``DEVICE = "auto"`` (CUDA, then MPS/Metal, then the CPU; one variable,
  ``MPCOURSE_DEVICE=cpu``, pins it for the whole run), so these outputs differ by machine: the
  same CPU model even prints a different accuracy with AVX512-BF16 than with AVX2 only.
- **Asserted**: the claim such an output supports (the prose's "X beats Y", "the scale backs
  off", "nothing is skipped after the switch") goes into an ``assert`` in that cell or a later
  one, with a tolerance that holds on any CPU, on MPS, on MLX-Metal and on CUDA, and a comment
  saying why: a margin that is a whole effect (fp16 gradients that are *exactly* zero, a loss
  0.8 nats lower), not a rounding difference (the third decimal of an accuracy). The asserts
  are the test; a tagged cell with nothing asserted about it fails ``test_notebook_rule.py``.
- The first code cell (imports, ``DEVICE``, ``mpc.available_backends()``) is tagged: it names
  the machine, and nothing about it needs asserting.
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
