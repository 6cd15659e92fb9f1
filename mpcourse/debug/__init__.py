"""Find where mixed precision breaks: detectors for one batch, and diagnosis of a whole run.

Usage::

    import mpcourse as mpc

    mpc.debug.find_first_nonfinite(eng, x, y)   # the first layer giving inf/nan
    mpc.debug.underflow_fractions(eng, x, y)    # per layer: share of gradients lost in fp16
    mpc.debug.activation_ranges(eng, x)         # per layer: largest |activation| against fp16's max
    mpc.debug.diagnose(hist, reference=ref)     # the classic symptoms in a History

``detectors`` runs the probes of ``engines/<framework>/probes.py``; ``symptoms`` reads a History.
"""

from mpcourse.debug.detectors import PHASES, activation_ranges, backend_of, find_first_nonfinite, underflow_fractions
from mpcourse.debug.symptoms import KINDS, Diagnosis, Finding, Thresholds, diagnose
from mpcourse.engines.reports import LayerFault, LayerTable, NonFiniteReport
from mpcourse.numerics import range_stats, underflow_stats

__all__ = [
    "diagnose",
    "Finding",
    "Diagnosis",
    "Thresholds",
    "KINDS",
    "find_first_nonfinite",
    "underflow_fractions",
    "activation_ranges",
    "underflow_stats",
    "range_stats",
    "LayerFault",
    "NonFiniteReport",
    "LayerTable",
    "backend_of",
    "PHASES",
]
