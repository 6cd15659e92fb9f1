"""FP8 in the torch engine: torchao's Float8Linear as the oracle, the torch cast against
ml_dtypes, torch._scaled_mm against the emulated matmul, and training, lag and resume on digits."""

from __future__ import annotations

import copy
import dataclasses

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import mpcourse as mpc  # noqa: E402
from mpcourse import fp8  # noqa: E402
from mpcourse.engines.torch.fp8 import Fp8Linear, Fp8State, cast  # noqa: E402
from mpcourse.fp8.tiles import cast_operand  # noqa: E402

RECIPES = [
    fp8.CurrentScaling(),
    fp8.DelayedScaling(history=8),
    fp8.RowwiseScaling(),
    fp8.BlockScaling(block=16),
    fp8.MXScaling(),
    fp8.MXScaling(rounding="ceil", fmt="hybrid"),
]


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 16))


def run(model: nn.Module, x: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    x = x.clone().requires_grad_()
    y = model(x)
    y.backward(g)
    return y.detach(), x.grad, [p.grad for p in model.parameters()]


# --- torchao as the oracle ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["tensorwise", "rowwise"])
def test_matches_torchao_float8linear_emulated(name: str) -> None:
    ao = pytest.importorskip("torchao.float8", reason="torchao (pip install torchao==0.18.0 --no-deps) is the oracle")
    cfg = ao.Float8LinearConfig() if name == "tensorwise" else ao.Float8LinearConfig.from_recipe_name("rowwise")
    theirs = ao.convert_to_float8_training(mlp(), config=dataclasses.replace(cfg, emulate=True))
    recipe = fp8.CurrentScaling() if name == "tensorwise" else fp8.RowwiseScaling()
    ours = fp8.convert(mlp(), recipe, matmul="emulate")
    gen = torch.Generator().manual_seed(1)
    x, g = torch.randn(40, 64, generator=gen) * 3, torch.randn(40, 16, generator=gen) * 1e-3
    (ya, dxa, dwa), (yb, dxb, dwb) = run(theirs, x, g), run(ours, x, g)
    # Tolerance: the same fp8 values and the same fp32 matmuls, so at most fp32 rounding of a
    # different summation order (rtol 1e-5); on torch 2.13 CPU with torchao 0.18 they are identical.
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(dxb, dxa, rtol=1e-5, atol=1e-9)
    for a, b in zip(dwa, dwb):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-9)


# --- the torch cast is ml_dtypes' -------------------------------------------------------------
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: repr(r))
@pytest.mark.parametrize("role", ["input", "weight", "grad_output"])
def test_torch_cast_equals_the_numpy_reference(recipe: fp8.Fp8Recipe, role: str) -> None:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(20, 72)) * rng.choice([1e-6, 1.0, 1e3], size=(20, 72))).astype(np.float32)
    x[3, 5], x[4, 6], x[0, 0] = np.inf, 0.0, 1e30  # an inf and a huge value: the clip and the counts
    ref_recipe, torch_recipe = recipe.clone(), recipe.clone()
    if isinstance(recipe, fp8.DelayedScaling):  # a history that makes the scale saturate now
        for r in (ref_recipe, torch_recipe):
            r.scale("k", role, np.float32([[0.5]]))
            r.update()
    q_ref, s_ref, stats_ref = cast_operand(x, ref_recipe, "k", role)
    state = Fp8State(torch_recipe)
    q, s = cast(torch.from_numpy(x), state, "k", role)
    nan = np.isnan(q_ref.astype(np.float32))  # NaN payloads differ (0xFE vs 0xFF); both are NaN
    assert np.array_equal(nan, torch.isnan(q.float()).numpy())
    np.testing.assert_array_equal(q.view(torch.uint8).numpy()[~nan], q_ref.view(np.uint8)[~nan])
    np.testing.assert_array_equal(np.broadcast_to(s.numpy(), x.shape), s_ref)
    assert state.log["k"] == stats_ref
    if isinstance(recipe, fp8.DelayedScaling):  # the inf and the 1e30 at least, hidden by the clip
        assert stats_ref["saturated"] >= 2


def test_torch_saturates_where_ml_dtypes_gives_nan() -> None:
    t = torch.tensor([1e6, float("inf")]).to(torch.float8_e4m3fn).float()
    assert t.tolist() == [448.0, 448.0]  # torch >= 2.12: the overflow leaves no trace ...
    state = Fp8State(fp8.DelayedScaling())  # scale 1 on the first step
    q, _ = cast(torch.tensor([[100.0, 1000.0, 4000.0]]), state, "k", "input")
    assert q.float().tolist() == [[96.0, 448.0, 448.0]] and not torch.isinf(q.float()).any()
    assert state.log["k"]["saturated"] == 2  # ... except in the counts


# --- torch._scaled_mm against the emulation ------------------------------------------------
def _scaled_mm_runs() -> bool:
    try:
        a = torch.ones(16, 16).to(torch.float8_e4m3fn)
        torch._scaled_mm(a, a.t(), scale_a=torch.tensor(1.0), scale_b=torch.tensor(1.0), out_dtype=torch.float32)
        return True
    except (RuntimeError, NotImplementedError):
        return False


@pytest.mark.skipif(not _scaled_mm_runs(), reason="torch._scaled_mm has no float8 kernel on this device")
@pytest.mark.parametrize(
    "recipe", [fp8.CurrentScaling(), fp8.CurrentScaling(power_of_2=True), fp8.RowwiseScaling(), fp8.DelayedScaling()]
)
def test_scaled_mm_agrees_with_the_emulated_matmul(recipe: fp8.Fp8Recipe) -> None:
    gen = torch.Generator().manual_seed(2)
    x, g = torch.randn(32, 64, generator=gen), torch.randn(32, 16, generator=gen)
    a = fp8.convert(mlp(), recipe, matmul="emulate")
    b = fp8.convert(mlp(), recipe, matmul="scaled_mm")
    (ya, dxa, dwa), (yb, dxb, dwb) = run(a, x, g), run(b, x, g)
    assert b.fp8_state.paths == {"scaled_mm"} and a.fp8_state.paths == {"emulate"}
    # _scaled_mm multiplies by 1/scale where the emulation divides by the scale: one rounding
    # apart per element (exact for power-of-two scales), so rtol 1e-5 of fp32.
    torch.testing.assert_close(yb, ya, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dxb, dxa, rtol=1e-5, atol=1e-6)
    for p, q in zip(dwa, dwb):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_scaled_mm_refuses_tiles() -> None:
    m = fp8.convert(mlp(), fp8.BlockScaling(), matmul="scaled_mm")
    with pytest.raises(ValueError, match="per-tensor or per-row"):
        m(torch.randn(4, 64))


# --- convert ---------------------------------------------------------------------------------
def test_convert_keeps_the_parameters_and_refuses_bad_input() -> None:
    model = mlp()
    before = {k: id(v) for k, v in model.named_parameters()}
    out = mpc.fp8.convert(model, fp8.DelayedScaling(history=4))
    assert out is model and all(isinstance(m, Fp8Linear) for m in (model[0], model[2]))
    assert {k: id(v) for k, v in model.named_parameters()} == before
    assert model.fp8_state.recipe == fp8.DelayedScaling(history=4)
    single = mpc.fp8.convert(nn.Linear(8, 4), fp8.CurrentScaling())
    assert isinstance(single, Fp8Linear) and single(torch.randn(2, 3, 8)).shape == (2, 3, 4)
    with pytest.raises(ValueError, match="converted to fp8 already"):
        mpc.fp8.convert(model, fp8.CurrentScaling())
    with pytest.raises(TypeError, match="torch.nn.Module"):
        mpc.fp8.convert("mlp", fp8.CurrentScaling())
    with pytest.raises(TypeError, match="recipe"):
        mpc.fp8.convert(mlp(), "delayed")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="matmul"):
        mpc.fp8.convert(mlp(), fp8.CurrentScaling(), matmul="fast")


def test_eval_forward_leaves_the_recipe_untouched() -> None:
    model = fp8.convert(mlp(), fp8.DelayedScaling(history=4)).eval()
    with torch.no_grad():
        model(torch.randn(8, 64))
    assert model.fp8_state.recipe.state_dict()["tensors"] == {} and model.fp8_state.log == {}


# --- the engine --------------------------------------------------------------------------------
def engine(precision: str, **cfg) -> mpc.engines.Engine:
    return mpc.make_engine("torch", "mlp", mpc.TrainConfig(precision=precision, **cfg), device="cpu")


def test_digits_mlp_in_fp8_reaches_90_percent_within_2_points_of_bf16(digits) -> None:
    acc = {}
    for precision in ("bf16", "fp8"):
        eng = engine(precision)
        hist = eng.fit(digits, epochs=5)
        acc[precision] = eng.evaluate(digits)["accuracy"]
        assert all(np.isfinite(hist.losses))
    print("torch digits accuracy", acc)
    assert acc["fp8"] >= 0.90 and abs(acc["fp8"] - acc["bf16"]) <= 0.02, acc


def test_fp8_stats_show_delayed_scalings_lag(digits) -> None:
    eng = engine("fp8", fp8=fp8.DelayedScaling(history=4))
    hist = eng.fit(digits, steps=12)
    hist = mpc.History.from_json(hist.to_json())  # the stats survive the JSON round trip
    for key in ("layers.0.input", "layers.1.weight", "head.grad_output"):
        top = 448.0 if not key.endswith("grad_output") else 57344.0
        amax, scale = hist.fp8_trace(key, "amax"), hist.fp8_trace(key, "scale")
        assert scale[0] == 1.0  # the first step casts with TE's initial scale
        for k in range(1, len(hist)):  # every later scale comes from the 4 amaxes before it
            assert scale[k] == np.float32(np.float32(top) / np.float32(amax[max(0, k - 4) : k].max())), (key, k)
    # The cast of step 0 at scale 1 leaves e5m2's range mostly unused; step 1's scale is far larger.
    assert hist.fp8_trace("head.grad_output", "scale")[1] > 100
    with pytest.raises(ValueError, match="unknown fp8 tensor"):
        hist.fp8_trace("nope")


def test_fp8_resume_is_bit_exact(digits) -> None:
    cfg = {"fp8": fp8.DelayedScaling(history=16)}
    whole = engine("fp8", **cfg)
    h_whole = whole.fit(digits, steps=30)
    first = engine("fp8", **cfg)
    h_first = first.fit(digits, steps=17)
    state = copy.deepcopy(first.state_dict())
    second = engine("fp8", **cfg)
    second.load_state_dict(state)
    h_second = second.fit(digits, steps=13)
    for p, q in zip(whole.model.parameters(), second.model.parameters()):
        assert torch.equal(p, q)
    rest = h_first.records + h_second.records
    assert [r.fp8 for r in rest] == [r.fp8 for r in h_whole.records]
    assert [r.loss for r in rest] == [r.loss for r in h_whole.records]


def test_fp8_state_from_another_recipe_is_refused(digits) -> None:
    a = engine("fp8", fp8=fp8.DelayedScaling(history=16))
    a.fit(digits, steps=2)
    b = engine("fp8", fp8=fp8.DelayedScaling(history=8))
    before = [p.detach().clone() for p in b.model.parameters()]
    with pytest.raises(ValueError, match="'history'"):
        b.load_state_dict(a.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(before, b.model.parameters()))


def test_a_probe_between_steps_leaves_the_fp8_run_unchanged(digits) -> None:
    a, b = engine("fp8", fp8=fp8.DelayedScaling(history=8)), engine("fp8", fp8=fp8.DelayedScaling(history=8))
    ha = a.fit(digits, steps=3)
    hb = b.fit(digits, steps=2)
    mpc.debug.find_first_nonfinite(b, digits.x_train[:32] * 100, digits.y_train[:32])  # a forward and backward
    b.evaluate(digits)
    hb.extend(b.fit(digits, steps=1))
    assert [r.fp8 for r in ha] == [r.fp8 for r in hb] and [r.loss for r in ha] == [r.loss for r in hb]


def test_switching_precision_into_and_out_of_fp8(digits) -> None:
    from mpcourse import production as prod

    eng = engine("bf16")
    eng.fit(digits, steps=3)
    into = prod.switch_precision(eng, "fp8")
    assert into.config.fp8 == fp8.DelayedScaling() and into.fp8.recipe.state_dict()["tensors"] == {}
    assert into.fit(digits, steps=2)[0].fp8["layers.0.input"]["scale"] == 1.0  # a fresh recipe
    back = prod.switch_precision(into, "bf16")
    assert back.fp8 is None and back.config.fp8 is None
    assert np.isfinite(back.fit(digits, steps=2).losses).all()


@pytest.mark.skipif(not _scaled_mm_runs(), reason="torch._scaled_mm has no float8 kernel on this device")
def test_auto_takes_scaled_mm_where_native_for_eligible_shapes_only(monkeypatch: pytest.MonkeyPatch) -> None:
    import mpcourse.engines.torch.fp8 as tfp8

    monkeypatch.setattr(tfp8, "scaled_mm_native", lambda device: True)  # pretend: an H100
    x, g = torch.randn(32, 64), torch.randn(32, 16)
    tensorwise = fp8.convert(mlp(), fp8.CurrentScaling())  # every dim a multiple of 16
    run(tensorwise, x, g)
    assert tensorwise.fp8_state.paths == {"scaled_mm"}
    odd = fp8.convert(nn.Sequential(nn.Linear(64, 10)), fp8.CurrentScaling())  # 10 outputs
    run(odd, x, torch.randn(32, 10))
    assert odd.fp8_state.paths == {"emulate"}
    rowwise = fp8.convert(mlp(), fp8.RowwiseScaling())  # per-row: emulated unless asked for
    run(rowwise, x, g)
    assert rowwise.fp8_state.paths == {"emulate"}
