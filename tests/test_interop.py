"""DeepSpeed's fp16 block mapped onto mpcourse's scaler (no DeepSpeed needed)."""

from __future__ import annotations

import pytest

import mpcourse as mpc
from mpcourse import interop


def test_the_default_block_is_dynamic_65536_window_1000_hysteresis_2() -> None:
    kw = interop.from_deepspeed({"enabled": True})
    assert kw == {"precision": "fp16", "loss_scale": "dynamic", "init_scale": 65536.0, "growth_interval": 1000,
                  "hysteresis": 2, "min_scale": 1.0}  # fmt: skip
    cfg = mpc.TrainConfig(**kw)
    assert (cfg.init_scale, cfg.growth_interval, cfg.hysteresis, cfg.min_scale) == (65536.0, 1000, 2, 1.0)


def test_the_scaler_walks_deepspeeds_rule() -> None:
    s = interop.deepspeed_scaler({"initial_scale_power": 4, "loss_scale_window": 2, "hysteresis": 2,
                                  "min_loss_scale": 4})  # fmt: skip
    seen = []
    for found_inf in [True, True, False, False, True, True, True, True]:
        seen.append(s.scale)
        s.update(found_inf)
    # 16: the first overflow uses the allowance, the second halves; two good steps grow (and
    # restore the allowance); then skip, halve, halve to the floor 4, stay at 4.
    assert seen == [16, 16, 8, 8, 16, 16, 8, 4] and s.scale == 4


def test_a_static_block_and_bad_blocks() -> None:
    assert interop.from_deepspeed({"loss_scale": 128}) == {"precision": "fp16", "loss_scale": 128.0}
    assert isinstance(interop.deepspeed_scaler({"loss_scale": 128}), mpc.StaticLossScaler)
    with pytest.raises(ValueError, match="unknown DeepSpeed fp16 key"):
        interop.from_deepspeed({"loss_scale_windw": 10})
    with pytest.raises(ValueError, match="consecutive_hysteresis"):
        interop.from_deepspeed({"consecutive_hysteresis": True})
    with pytest.raises(ValueError, match="loss_scale_window must be an int >= 1"):
        interop.from_deepspeed({"loss_scale_window": 0})
    with pytest.raises(TypeError, match="must be a mapping"):
        interop.from_deepspeed([("loss_scale", 0)])
