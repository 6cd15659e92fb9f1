"""The README's code blocks that claim to run, run: the user model on a user DataLoader (issue 13)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest

from mpcourse.engines import missing_reason

README = Path(__file__).resolve().parents[1] / "README.md"


def block(marker: str) -> str:
    """The fenced python block right after ``<!-- marker -->`` in the README."""
    m = re.search(rf"<!-- {marker} -->\s*```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    assert m, f"README has no python block after <!-- {marker} -->"
    return m.group(1)


@pytest.mark.skipif(missing_reason("torch") is not None, reason=str(missing_reason("torch")))
def test_the_readme_user_model_on_a_user_dataloader_runs() -> None:
    scope: dict[str, object] = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(block("readme-own-model"), str(README), "exec"), scope)
    hist, eng = scope["hist"], scope["eng"]
    assert len(hist) == 16 and list(hist.column("samples")) == [64] * 16  # type: ignore[arg-type, attr-defined]
    assert eng.output_shape == (20,) and eng.epoch == 1  # type: ignore[attr-defined]
    assert "'accuracy'" in out.getvalue()
