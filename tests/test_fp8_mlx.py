"""FP8 in the MLX engine: MLX's e4m3 conversion and the e5m2 rounding against ml_dtypes, the
MLX cast against the numpy reference, the layer against the torch twin, training and resume."""

from __future__ import annotations

import copy

import ml_dtypes
import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'mlx[cpu]')")
nn = pytest.importorskip("mlx.nn")

import mpcourse as mpc  # noqa: E402
from mpcourse import fp8  # noqa: E402
from mpcourse.engines.mlx.fp8 import Fp8Linear, Fp8State, cast, convert, round_fp8  # noqa: E402
from mpcourse.fp8.cast import dequantize  # noqa: E402
from mpcourse.fp8.tiles import cast_operand  # noqa: E402

RECIPES = [
    fp8.CurrentScaling(),
    fp8.DelayedScaling(history=8),
    fp8.RowwiseScaling(),
    fp8.BlockScaling(block=16),
    fp8.MXScaling(),
]


@pytest.mark.parametrize("fmt,dtype", [("e4m3", ml_dtypes.float8_e4m3fn), ("e5m2", ml_dtypes.float8_e5m2)])
def test_mlx_rounding_is_ml_dtypes_bit_for_bit(fmt: str, dtype: object) -> None:
    codes = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float32)
    finite = np.sort(codes[np.isfinite(codes)])
    mids = (finite[:-1] + finite[1:]) / 2  # the ties: round to nearest even decides them
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            finite,
            mids,
            np.nextafter(mids, np.float32(np.inf)),
            np.nextafter(mids, np.float32(-np.inf)),
            rng.uniform(-finite.max(), finite.max(), 20000),
            rng.normal(size=20000) * 1e-4,  # subnormals and underflow
            [np.nan],
        ]
    ).astype(np.float32)
    x = np.clip(x, -finite.max(), finite.max())
    ref = x.astype(dtype).astype(np.float32)
    got = np.array(round_fp8(mx.array(x), fmt))
    np.testing.assert_array_equal(got, ref)  # NaN == NaN here


def test_mlx_to_fp8_turns_nan_into_448_and_the_cast_puts_it_back() -> None:
    raw = np.array(mx.from_fp8(mx.to_fp8(mx.array([np.nan], dtype=mx.float32)), dtype=mx.float32))
    assert raw[0] == 448.0  # MLX 0.32's own conversion hides a NaN ...
    assert np.isnan(np.array(round_fp8(mx.array([np.nan], dtype=mx.float32), "e4m3"))[0])  # ... not ours


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: repr(r))
@pytest.mark.parametrize("role", ["input", "weight", "grad_output"])
def test_mlx_cast_equals_the_numpy_reference(recipe: fp8.Fp8Recipe, role: str) -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(20, 72)) * rng.choice([1e-6, 1.0, 1e3], size=(20, 72))).astype(np.float32)
    x[0, 0] = 1e30
    ref, mine = recipe.clone(), recipe.clone()
    if isinstance(recipe, fp8.DelayedScaling):
        for r in (ref, mine):
            r.scale("k", role, np.float32([[0.5]]))
            r.update()
    q_ref, s_ref, stats_ref = cast_operand(x, ref, "k", role)
    state = Fp8State(mine)
    got = np.array(cast(mx.array(x), state, "k", role))
    np.testing.assert_array_equal(got, dequantize(q_ref, s_ref))
    assert state.log["k"] == stats_ref


@pytest.mark.parametrize("recipe", [fp8.CurrentScaling(), fp8.RowwiseScaling(), fp8.MXScaling()], ids=repr)
def test_mlx_layer_matches_the_torch_twin(recipe: fp8.Fp8Recipe) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    w = rng.normal(size=(16, 64)).astype(np.float32) * 0.1
    b = rng.normal(size=16).astype(np.float32)
    x = rng.normal(size=(24, 64)).astype(np.float32)
    g = rng.normal(size=(24, 16)).astype(np.float32) * 1e-3

    tl = torch.nn.Linear(64, 16)
    with torch.no_grad():
        tl.weight.copy_(torch.from_numpy(w))
        tl.bias.copy_(torch.from_numpy(b))
    tl = fp8.convert(tl, recipe, matmul="emulate")
    xt = torch.from_numpy(x).requires_grad_()
    yt = tl(xt)
    yt.backward(torch.from_numpy(g))

    ml = nn.Linear(64, 16)
    ml.update({"weight": mx.array(w), "bias": mx.array(b)})
    ml = convert(ml, recipe)
    assert isinstance(ml, Fp8Linear)

    def f(params: dict, xm: mx.array) -> mx.array:
        ml.update(params)
        return mx.sum(ml(xm) * mx.array(g))

    (dw_b, dx) = mx.grad(f, argnums=(0, 1))(ml.trainable_parameters(), mx.array(x))
    # The same fp8 values; fp32 matmuls of two libraries may sum in another order: rtol 1e-5.
    np.testing.assert_allclose(np.array(ml(mx.array(x))), yt.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.array(dx), xt.grad.numpy(), rtol=1e-5, atol=1e-8)
    np.testing.assert_allclose(np.array(dw_b["weight"]), tl.weight.grad.numpy(), rtol=1e-5, atol=1e-8)


def engine(precision: str, **cfg) -> mpc.engines.Engine:
    return mpc.make_engine("mlx", "mlp", mpc.TrainConfig(precision=precision, **cfg), device="cpu")


def test_mlx_digits_mlp_in_fp8_reaches_90_percent_within_2_points_of_bf16(digits) -> None:
    acc = {}
    for precision in ("bf16", "fp8"):
        eng = engine(precision)
        hist = eng.fit(digits, epochs=5)
        acc[precision] = eng.evaluate(digits)["accuracy"]
        assert all(np.isfinite(hist.losses))
    print("mlx digits accuracy", acc)
    assert acc["fp8"] >= 0.90 and abs(acc["fp8"] - acc["bf16"]) <= 0.02, acc
    assert set(hist[0].fp8) >= {"layers.0.input", "layers.0.weight", "head.grad_output"}


def test_mlx_fp8_resume_is_bit_exact(digits) -> None:
    cfg = {"fp8": fp8.DelayedScaling(history=16)}
    whole = engine("fp8", **cfg)
    h_whole = whole.fit(digits, steps=20)
    first = engine("fp8", **cfg)
    h_first = first.fit(digits, steps=11)
    second = engine("fp8", **cfg)
    second.load_state_dict(copy.deepcopy(first.state_dict()))
    h_second = second.fit(digits, steps=9)
    a, b = whole.state_dict()["framework"]["master"], second.state_dict()["framework"]["master"]
    assert all(np.array_equal(a[k], b[k]) for k in a)
    rest = h_first.records + h_second.records
    assert [r.fp8 for r in rest] == [r.fp8 for r in h_whole.records]
    assert [r.loss for r in rest] == [r.loss for r in h_whole.records]


def test_mlx_fp8_is_never_compiled_and_eval_records_nothing(digits) -> None:
    eng = engine("fp8")
    assert not eng.compiled
    with pytest.raises(ValueError, match="cannot be mx.compile-d"):
        eng.compiled = True
    eng.evaluate(digits)
    assert eng.fp8.recipe.state_dict()["tensors"] == {}


def test_mlx_probe_between_steps_leaves_the_fp8_run_unchanged(digits) -> None:
    a, b = engine("fp8", fp8=fp8.DelayedScaling(history=8)), engine("fp8", fp8=fp8.DelayedScaling(history=8))
    ha = a.fit(digits, steps=3)
    hb = b.fit(digits, steps=2)
    mpc.debug.find_first_nonfinite(b, digits.x_train[:32] * 100, digits.y_train[:32])
    hb.extend(b.fit(digits, steps=1))
    assert [r.fp8 for r in ha] == [r.fp8 for r in hb] and [r.loss for r in ha] == [r.loss for r in hb]
