"""What notebook 02 says about pure fp16 with Adam, measured: without fp32 master weights and
optimizer state, Adam's eps and its squared gradients fall below fp16's range and the update
turns the weights into NaN; with them, the same run trains."""

from __future__ import annotations

import numpy as np
import pytest

import mpcourse as mpc

pytest.importorskip("torch")


def test_pure_fp16_adam_breaks_where_fp32_masters_train() -> None:
    assert mpc.formats.round_to(1e-8, "fp16") == 0.0  # Adam's default eps, stored in fp16
    digits = mpc.data.load("digits")
    runs = {}
    for master in (True, False):
        cfg = mpc.TrainConfig(precision="fp16", master_weights=master)
        if master:
            eng = mpc.make_engine("torch", "mlp", cfg, device="cpu", data=digits, verbose=False)
        else:
            with pytest.warns(UserWarning, match="pure fp16 with adam"):  # the engine says so when built
                eng = mpc.make_engine("torch", "mlp", cfg, device="cpu", data=digits, verbose=False)
        runs[master] = (eng.fit(digits, epochs=2, progress=False), eng.evaluate(digits))
    hist, ev = runs[True]
    assert np.isfinite(hist.losses).all() and hist.skipped_steps == 0 and ev["accuracy"] > 0.5
    hist16, ev16 = runs[False]
    finite = np.isfinite(hist16.losses)
    assert finite[0] and not finite[1]  # the first update made the weights non-finite
    assert hist16.skipped_steps > len(hist16) // 2 and not np.isfinite(ev16["loss"])
