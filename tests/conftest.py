"""Shared pytest setup: no progress bars, and the digits dataset every engine test trains on."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("MPCOURSE_PROGRESS", "0")


@pytest.fixture(scope="session")
def digits():  # type: ignore[no-untyped-def]
    """scikit-learn's digits with mpcourse's fixed split (seed 0); read-only in tests."""
    import mpcourse as mpc

    return mpc.data.load("digits", seed=0)
