"""Shared pytest setup: no progress bars, and deterministic, quiet runs."""

import os

os.environ.setdefault("MPCOURSE_PROGRESS", "0")
