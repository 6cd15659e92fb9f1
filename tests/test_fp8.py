"""The FP8 recipes as pure rules: cast tables against ml_dtypes, a delayed-scaling trace walked
by hand, the tile and MX exponent rules, and exact state round trips."""

from __future__ import annotations

import json

import ml_dtypes
import numpy as np
import pytest

from mpcourse import fp8
from mpcourse.fp8.cast import cast_counts, dequantize, quantize
from mpcourse.fp8.mx import ceil_log2, floor_log2
from mpcourse.fp8.tiles import cast_operand, expand, tile_amax

ALL = [
    fp8.CurrentScaling(),
    fp8.DelayedScaling(history=4),
    fp8.RowwiseScaling(),
    fp8.BlockScaling(),
    fp8.MXScaling(),
]


# --- the cast ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt,dtype", [("e4m3", ml_dtypes.float8_e4m3fn), ("e5m2", ml_dtypes.float8_e5m2)])
def test_cast_table_is_ml_dtypes_rounding_of_every_code(fmt: str, dtype: object) -> None:
    # Every finite fp8 value, and the midpoints between neighbours, round as ml_dtypes rounds.
    codes = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
    finite = np.sort(codes[np.isfinite(codes)])
    mids = (finite[:-1] + finite[1:]) / 2
    x = np.concatenate([finite, mids, -mids])
    q = quantize(x, np.float32(1.0), fmt)
    np.testing.assert_array_equal(q.view(np.uint8), x.astype(dtype).view(np.uint8))
    assert cast_counts(x, np.float32(1.0), q, fmt) == {
        "saturated": 0,
        "underflowed": int(np.sum(q.astype(np.float32) == 0) - np.sum(x == 0)),
    }


def test_saturation_hides_overflow_unless_counted() -> None:
    x = np.array([448.0, 464.0, 465.0, 1e6, np.inf, -np.inf, np.nan], np.float32)
    q = quantize(x, np.float32(1.0), "e4m3")
    # ml_dtypes alone would make NaN of everything past 464; the saturating cast gives 448 ...
    assert np.isnan(x.astype(ml_dtypes.float8_e4m3fn).astype(np.float32)[3:5]).all()
    np.testing.assert_array_equal(q.astype(np.float32)[:6], [448, 448, 448, 448, 448, -448])
    assert np.isnan(q.astype(np.float32)[6])  # NaN stays NaN
    # ... and only the count tells that 4 values overflowed (464 is a tie that rounds to 448).
    assert cast_counts(x, np.float32(1.0), q, "e4m3")["saturated"] == 4
    e5 = np.array([57344.0, 61439.0, 61440.0, np.inf], np.float32)
    assert cast_counts(e5, np.float32(1.0), quantize(e5, np.float32(1.0), "e5m2"), "e5m2")["saturated"] == 2


def test_underflow_is_counted_and_zero_is_not() -> None:
    x = np.array([0.0, 1e-4, -1e-4, 0.002], np.float32)  # e4m3's smallest subnormal is 2**-9 ~ 0.00195
    q = quantize(x, np.float32(1.0), "e4m3")
    assert cast_counts(x, np.float32(1.0), q, "e4m3")["underflowed"] == 2
    # The scale is what rescues them: x 256 moves 1e-4 to 0.0256, a normal number.
    assert cast_counts(x, np.float32(256.0), quantize(x, np.float32(256.0), "e4m3"), "e4m3")["underflowed"] == 0


def test_dequantize_divides_by_the_scale() -> None:
    q = quantize(np.array([3.0], np.float32), np.float32(128.0), "e4m3")
    assert dequantize(q, np.float32(128.0))[0] == np.float32(384.0) / np.float32(128.0)


def test_bad_format_is_named() -> None:
    with pytest.raises(ValueError, match="'e3m4'"):
        quantize(np.ones(2, np.float32), np.float32(1), "e3m4")
    with pytest.raises(ValueError, match="fmt must be one of"):
        fp8.CurrentScaling(fmt="fp8")


# --- the recipes ---------------------------------------------------------------------------
def test_current_scaling_is_torchaos_rule() -> None:
    r = fp8.CurrentScaling()
    assert r.fmt("input") == r.fmt("weight") == "e4m3" and r.fmt("grad_output") == "e5m2"
    s = r.scale("k", "input", np.float32([[3.5]]))
    assert s.dtype == np.float32 and s[0, 0] == np.float32(448 / 3.5)
    assert r.scale("k", "grad_output", np.float32([[0.0]]))[0, 0] == np.float32(57344 / 1e-12)
    assert fp8.CurrentScaling(power_of_2=True).scale("k", "input", np.float32([[3.6]]))[0, 0] == 64.0


def test_delayed_scaling_trace_by_hand() -> None:
    # history=3, margin=1, e4m3 for the input: top = 448 / 2 = 224.
    r = fp8.DelayedScaling(history=3, margin=1)
    amaxes = [3.5, 7.0, 112.0, 2.0, 2.0, 2.0]
    used, hist = [], []
    for a in amaxes:
        used.append(float(r.scale("fc.input", "input", np.float32([[a]]))[0, 0]))
        r.update()
        hist.append(r.amax_history["fc.input"].tolist())
    # Step 0 casts with scale 1 (TE's initial scale); each step uses the scale of the history
    # up to the step before; the jump to 112 is cast with 224/7 = 32 (3584 > 448: saturates),
    # and the scale stays at 224/112 = 2 until 112 leaves the 3-step window.
    assert used == [1.0, 64.0, 32.0, 2.0, 2.0, 2.0]
    assert r.scales["fc.input"] == np.float32(112.0)  # 224 / 2 once the window is [2, 2, 2]
    assert hist[0] == [0, 0, 3.5] and hist[2] == [3.5, 7, 112] and hist[5] == [2, 2, 2]


def test_delayed_most_recent_and_gradients_use_e5m2() -> None:
    r = fp8.DelayedScaling(history=8, amax_compute="most_recent")
    r.scale("g", "grad_output", np.float32([[4.0]]))
    r.update()
    r.scale("g", "grad_output", np.float32([[1.0]]))
    r.update()
    assert r.scales["g"] == np.float32(57344.0)  # most recent amax 1, e5m2's max


def test_delayed_keeps_the_scale_on_zero_and_inf_amax() -> None:
    r = fp8.DelayedScaling(history=2)
    r.scale("x", "input", np.float32([[4.0]]))
    r.update()
    r.scale("x", "input", np.float32([[np.inf]]))
    r.update()
    assert r.scales["x"] == 112.0  # inf in the window: the old scale stays
    r.update()
    r.update()  # the inf has left; an all-zero window keeps the scale too
    assert r.scales["x"] == 112.0
    r.scale("x", "input", np.float32([[np.nan]]))
    r.update()
    assert r.scales["x"] == 112.0


def test_delayed_refuses_tiles() -> None:
    with pytest.raises(ValueError, match="per tensor"):
        fp8.DelayedScaling().scale("x", "input", np.ones((2, 1), np.float32))


def test_rowwise_block_mx_tiles() -> None:
    assert fp8.RowwiseScaling().tile("weight") == (1, None)
    assert fp8.BlockScaling().tile("input") == (1, 128) and fp8.BlockScaling().tile("weight") == (128, 128)
    assert fp8.MXScaling().tile("grad_output") == (1, 32)
    x = np.arange(3 * 300, dtype=np.float32).reshape(3, 300)
    a = tile_amax(x, (1, 128))
    assert a.shape == (3, 3) and a[0, 2] == 299 and a[2, 0] == 600 + 127
    assert tile_amax(x, (128, 128)).shape == (1, 3) and tile_amax(x, (None, None)).shape == (1, 1)
    assert expand(np.float32([[1, 2, 3]]), (3, 300), (128, 128))[2, 299] == 3


def test_mx_exponents_follow_the_spec() -> None:
    assert floor_log2(np.float32([1.0, 1.5, 2.0, 0.75])).tolist() == [0, 0, 1, -1]
    assert ceil_log2(np.float32([1.0, 1.5, 2.0, 0.75])).tolist() == [0, 1, 1, 0]
    r = fp8.MXScaling()
    # floor(log2 amax) - 8 for e4m3; an all-zero block gets e = -127.
    assert r.exponent("input", np.float32([[3.5, 448.0, 0.0, 1e-3]])).tolist() == [[-7, 0, -127, -18]]
    # The spec's floor rule saturates the top of a block whose amax mantissa is >= 1.75 ...
    x = np.concatenate([np.float32([1.9]), np.full(31, 0.5, np.float32)]).reshape(1, 32)
    assert cast_operand(x, r, "k", "input")[2]["saturated"] == 1
    # ... RCEIL does not.
    assert cast_operand(x, fp8.MXScaling(rounding="ceil"), "k", "input")[2]["saturated"] == 0
    s = r.scale("k", "input", np.float32([[3.5]]))
    assert s[0, 0] == 128.0 and np.log2(s[0, 0]).is_integer()


def test_block_scaling_isolates_an_outlier() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 256)).astype(np.float32) * 1e-2
    x[0, 0] = 1e3
    err = {}
    for r in (fp8.CurrentScaling(fmt="e4m3"), fp8.RowwiseScaling(power_of_2=False), fp8.BlockScaling()):
        q, s, _ = cast_operand(x, r, "k", "input")
        err[r.kind] = float(np.abs(dequantize(q, s) - x)[1:].mean())
    assert err["block"] <= err["rowwise"] < err["current"]


# --- state ---------------------------------------------------------------------------------
@pytest.mark.parametrize("recipe", ALL, ids=lambda r: r.kind)
def test_state_round_trip_is_exact_and_json(recipe: fp8.Fp8Recipe) -> None:
    r = recipe.clone()
    for a in (3.0, 5.0, 1.0):
        r.scale("fc.input", "input", np.float32([[a]]))
        r.update()
    r.scale("fc.input", "input", np.float32([[9.0]]))  # mid-step: a pending amax
    sd = json.loads(json.dumps(r.state_dict()))
    r2 = fp8.recipe_from_state_dict(sd)
    assert r2.state_dict() == r.state_dict() and r2 == r
    r.update()
    r2.update()
    assert r2.state_dict() == r.state_dict()


def test_load_state_dict_names_a_bad_key_and_changes_nothing() -> None:
    r = fp8.DelayedScaling(history=2)
    r.scale("x", "input", np.float32([[4.0]]))
    r.update()
    before = r.state_dict()
    sd = r.state_dict()
    with pytest.raises(ValueError, match="'bogus'"):
        r.load_state_dict({**sd, "bogus": 1})
    with pytest.raises(ValueError, match="'history'"):
        r.load_state_dict({**sd, "settings": {**sd["settings"], "history": 3}})
    bad = json.loads(json.dumps(sd))
    bad["tensors"]["x"]["amax_history"] = [1.0]
    with pytest.raises(ValueError, match="'x'"):
        r.load_state_dict(bad)
    with pytest.raises(ValueError, match="'current'"):
        r.load_state_dict(fp8.CurrentScaling().state_dict())
    assert r.state_dict() == before


def test_clone_has_fresh_state_and_bad_settings_are_named() -> None:
    r = fp8.DelayedScaling(history=2)
    r.scale("x", "input", np.float32([[4.0]]))
    assert r.clone().scales == {} and r.clone() == r
    for bad in (dict(history=0), dict(margin=float("nan")), dict(amax_compute="mean")):
        with pytest.raises(ValueError):
            fp8.DelayedScaling(**bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rounding"):
        fp8.MXScaling(rounding="nearest")
    with pytest.raises(ValueError, match="block"):
        fp8.BlockScaling(block=0)


# --- the config ----------------------------------------------------------------------------
def test_config_fp8_defaults_to_delayed_scaling_without_loss_scaling() -> None:
    import mpcourse as mpc

    cfg = mpc.TrainConfig(precision="fp8")
    assert cfg.fp8 == fp8.DelayedScaling() and cfg.scaling_mode == "none"
    assert cfg.to_dict()["fp8"] == "DelayedScaling(history=1024, margin=0, fmt='hybrid', amax_compute='max')"
    mine = fp8.CurrentScaling()
    assert mpc.TrainConfig(precision="fp8", fp8=mine).fp8 is mine
    assert cfg.replace(precision="bf16").fp8 is None  # leaving fp8 drops the recipe
    with pytest.raises(ValueError, match="needs precision='fp8'"):
        mpc.TrainConfig(precision="bf16", fp8=fp8.CurrentScaling())
    with pytest.raises(TypeError, match="fp8 must be None or a recipe"):
        mpc.TrainConfig(precision="fp8", fp8="delayed")


def test_fp8_rules_import_without_frameworks_and_convert_says_what_it_needs() -> None:
    import subprocess
    import sys
    import textwrap

    code = textwrap.dedent("""
        import sys, importlib.abc
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path, target=None):
                if name.split('.')[0] in ('torch', 'mlx'):
                    raise ModuleNotFoundError(f"No module named {name!r} (blocked by the test)")
        sys.meta_path.insert(0, Block())
        import mpcourse as mpc
        assert mpc.TrainConfig(precision="fp8").fp8 == mpc.fp8.DelayedScaling()
        assert 'torch' not in sys.modules and 'mlx' not in sys.modules
        try:
            mpc.fp8.convert(object(), mpc.fp8.CurrentScaling())
        except ModuleNotFoundError as err:
            print(err)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "No module named 'torch'" in r.stdout


# --- properties ------------------------------------------------------------------------------
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402

FINITE = arrays(
    np.float32,
    st.tuples(st.integers(1, 9), st.integers(1, 70)),
    elements=st.floats(-(2.0**100), 2.0**100, width=32, allow_nan=False, allow_infinity=False),
)


@settings(max_examples=60, deadline=None)
@given(FINITE, st.sampled_from(["current", "rowwise", "block", "mx_ceil"]), st.sampled_from(["input", "grad_output"]))
def test_amax_based_recipes_never_saturate_a_finite_tensor(x: np.ndarray, kind: str, role: str) -> None:
    recipe = {
        "current": fp8.CurrentScaling(),
        "rowwise": fp8.RowwiseScaling(fmt="hybrid"),
        "block": fp8.BlockScaling(block=16, fmt="hybrid"),
        "mx_ceil": fp8.MXScaling(block=8, fmt="hybrid", rounding="ceil"),
    }[kind]
    q, s, stats = cast_operand(x, recipe, "k", role)
    assert stats["saturated"] == 0 and np.isfinite(q.astype(np.float32)).all()
    # The amax lands within the format (and on its max for the non-power-of-two recipes).
    assert stats["amax"] * stats["scale"] <= fp8.FP8_MAX[recipe.fmt(role)] * (1 + 2**-20) or stats["amax"] == 0
