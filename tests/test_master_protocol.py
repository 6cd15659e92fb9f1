"""The master-weights protocol written out (engines/torch/master): each stage's dtype and value,
and a run where fp32 masters move the weights that pure fp16 leaves where they were."""

from __future__ import annotations

import numpy as np
import pytest

import mpcourse as mpc

torch = pytest.importorskip("torch")

from mpcourse.engines.torch import master  # noqa: E402
from mpcourse.engines.torch.models import build_model  # noqa: E402


@pytest.fixture(scope="module")
def batch() -> tuple:
    d = mpc.data.load("digits")
    return (
        build_model("mlp", num_features=64, num_classes=10, seed=0),
        torch.from_numpy(d.x_train),
        torch.from_numpy(d.y_train),
    )


def test_protocol_step_stage_by_stage(batch: tuple) -> None:
    net, x, y = batch
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rows = master.protocol_step(net, x[:64], y[:64], lr=1e-3, scale=1024.0, param="layers.1.weight")
    assert [r["dtype"] for r in rows] == [
        "float32",
        "float16",
        "float16",
        "float32",
        "float32",
        "float32",
        "float16",
        "float16",
    ]
    w32, w16, g16, g32s, g32, new32, new16, pure = (r["value"] for r in rows)
    assert g32s == g16 and g32 == np.float32(g16 / 1024.0)  # the cast is exact; S is a power of two
    assert new32 == np.float32(w32 - np.float32(1e-3 * g32)) and new32 != w32  # the fp32 master moved
    assert (
        w16 == float(np.float16(w32)) and pure == w16 and new16 == float(np.float16(new32))
    )  # pure fp16 lost this update
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # the model is untouched
    with pytest.raises(ValueError, match="param must be one of"):
        master.protocol_step(net, x[:64], y[:64], lr=1e-3, scale=1024.0, param="nope")
    with pytest.raises(ValueError, match="lr"):
        master.protocol_step(net, x[:64], y[:64], lr=0.0, scale=1024.0, param="layers.1.weight")


def test_masters_move_weights_pure_fp16_loses(batch: tuple) -> None:
    net, x, y = batch
    runs = {m: master.train(net, x, y, master=m, steps=40, lr=1e-3) for m in (True, False)}
    assert runs[True]["moved"][-1] > 2 * runs[False]["moved"][-1]  # 2.8x here: pure fp16 loses most updates
    assert runs[True]["loss"][0] == runs[False]["loss"][0] and sum(runs[True]["skipped"]) == 0


def test_overflow_skips_and_refuses_bad_input(batch: tuple) -> None:
    net, x, y = batch
    run = master.train(net, x, y, master=True, steps=3, lr=1e-3, scale=2.0**40)  # S * grad > 65504
    assert run["skipped"] == [1.0, 1.0, 1.0] and run["moved"] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="steps"):
        master.train(net, x, y, master=True, steps=0, lr=1e-3)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        master.train("mlp", x, y, master=True, steps=1, lr=1e-3)  # type: ignore[arg-type]


def test_moved_curves_draws_each_run() -> None:
    from mpcourse import plots

    fig = plots.moved_curves({"a": {"moved": [0.0, 1.0, 2.0]}, "b": {"moved": [0.0, 0.5]}}, title="t (L2)")
    assert [t.name for t in fig.data] == ["a", "b"] and list(fig.data[0].y) == [0.0, 1.0, 2.0]
    assert list(fig.data[1].x) == [0, 1] and fig.layout.title.text == "t (L2)"
