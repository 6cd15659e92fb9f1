"""plots.model_table_bars: the per-model table as three panels of grouped bars."""

from __future__ import annotations

import pytest

from mpcourse import plots


def _rows(task: str | None = None) -> list[dict]:
    out = []
    for model in ("mlp", "cnn"):
        for setup, ratio, zero, skipped in (("fp32", 1.0, 0, 0), ("fp16, no scaling", 1.2, 44, 0), ("fp16", 1.0, 0, 3)):
            r = {"model": model, "setup": setup, "vs_fp32": ratio, "zero_grad": zero, "skipped": skipped}
            out.append(r if task is None else {"task": task, **r})
    return out


def test_one_trace_per_setup_and_panel_with_the_rows_values() -> None:
    fig = plots.model_table_bars(_rows(), title="t")
    assert fig.layout.title.text == "t" and len(fig.data) == 3 * 3
    assert [t.name for t in fig.data[:3]] == ["fp32", "fp16, no scaling", "fp16"]
    assert [t.showlegend for t in fig.data] == [True] * 3 + [False] * 6
    ratio, zero, skipped = fig.data[1], fig.data[4], fig.data[8]
    assert list(ratio.x) == ["mlp", "cnn"] and list(ratio.y) == [1.2, 1.2]
    assert list(zero.y) == [44.0, 44.0] and list(skipped.y) == [3.0, 3.0]
    assert [fig.layout[f"yaxis{i}"].title.text for i in ("", 2, 3)] == [axis for _, axis in plots.model_table.PANELS]
    assert fig.layout.xaxis3.title.text == "model" and fig.layout.barmode == "group"
    assert fig.layout.shapes[0].y0 == 1.0  # the fp32 reference line on the ratio panel


def test_rows_with_a_task_get_a_two_level_axis() -> None:
    fig = plots.model_table_bars(_rows("digits") + _rows("underflow"))
    x = fig.data[0].x
    assert list(x[0]) == ["digits", "digits", "underflow", "underflow"] and list(x[1]) == ["mlp", "cnn"] * 2
    assert fig.layout.xaxis3.title.text == "task, model"


def test_rows_without_the_table_keys_are_refused() -> None:
    with pytest.raises(ValueError, match=r"lack the key\(s\) \['zero_grad', 'skipped'\]"):
        plots.model_table_bars([{"model": "mlp", "setup": "fp32", "vs_fp32": 1.0}])
    assert len(plots.model_table_bars([]).data) == 0
