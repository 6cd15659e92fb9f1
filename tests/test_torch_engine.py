"""The PyTorch engine on the CPU: accuracy per precision, skipped steps, exact resume, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mpcourse as mpc  # noqa: E402
from mpcourse import DynamicLossScaler  # noqa: E402
from mpcourse.engines.torch.engine import DeviceUnavailableError, torch_devices  # noqa: E402


def engine(precision: str = "fp32", ds=None, **cfg) -> mpc.engines.Engine:
    return mpc.make_engine("torch", "mlp", mpc.TrainConfig(precision=precision, **cfg), device="cpu", data=ds)


def params(eng) -> list:
    return [p.detach().clone() for p in eng.model.parameters()]


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))


def test_digits_mlp_reaches_90_percent_in_every_precision(digits) -> None:
    acc = {}
    for precision in ("fp32", "fp16", "bf16"):
        eng = engine(precision, digits)
        hist = eng.fit(digits, epochs=8)
        acc[precision] = eng.evaluate(digits)["accuracy"]
        assert len(hist) == 8 * 23 and all(np.isfinite(hist.losses))
    assert acc["fp32"] >= 0.90, acc
    for precision in ("fp16", "bf16"):
        assert acc[precision] >= 0.90 and abs(acc[precision] - acc["fp32"]) <= 0.01, acc


def inf_on_call(k: int):
    """A loss_fn whose k-th call (0-based) returns an inf loss: a real non-finite gradient follows."""
    calls = {"n": 0}

    def loss_fn(out, y):
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        if calls["n"] == k:
            loss = loss * float("inf")
        calls["n"] += 1
        return loss

    return loss_fn


@pytest.mark.parametrize(
    "cfg",
    [
        {"precision": "fp16", "loss_scale": "dynamic"},  # torch.amp.GradScaler
        {"precision": "fp16", "loss_scale": "dynamic", "hysteresis": 1, "min_scale": 1.0},  # mpcourse's scaler
        {"precision": "bf16", "loss_scale": 512.0},  # static
    ],
)
def test_planted_inf_skips_the_step_and_keeps_model_and_optimizer_bit_identical(digits, cfg) -> None:
    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(**cfg), device="cpu", data=digits, loss_fn=inf_on_call(3))
    eng.fit(digits, steps=3)
    before_p = params(eng)
    before_opt = copy.deepcopy(eng.optimizer.state_dict())
    scale_before = eng.scale
    hist = eng.fit(digits, steps=1)
    rec = hist[0]
    assert rec.found_inf and rec.skipped and rec.scale == scale_before
    assert not np.isfinite(rec.grad_norm)
    assert same(before_p, params(eng))
    after_opt = eng.optimizer.state_dict()
    for k, st in before_opt["state"].items():
        for name, v in st.items():
            assert torch.equal(v, after_opt["state"][k][name]), name
    expected = scale_before if cfg["loss_scale"] == 512.0 else scale_before * 0.5
    assert eng.scale == expected
    nxt = eng.fit(digits, steps=1)[0]  # training goes on normally
    assert not nxt.found_inf and not same(before_p, params(eng))


def test_no_scaling_applies_even_a_non_finite_step(digits) -> None:
    eng = mpc.make_engine(
        "torch",
        "mlp",
        mpc.TrainConfig(precision="fp32", loss_scale="none"),
        device="cpu",
        data=digits,
        loss_fn=inf_on_call(0),
    )
    rec = eng.fit(digits, steps=1)[0]
    assert rec.found_inf and not rec.skipped and rec.scale == 1.0
    assert any(not torch.isfinite(p).all() for p in eng.model.parameters())  # what no scaler means


@pytest.mark.parametrize(
    "precision, scale", [("fp32", "none"), ("fp16", "dynamic"), ("bf16", "none"), ("fp16", 1024.0)]
)
def test_save_load_continue_is_bit_identical(digits, precision, scale) -> None:
    cfg = dict(precision=precision, loss_scale=scale, growth_interval=7)
    ref = engine(ds=digits, **cfg)
    ref_hist = ref.fit(digits, steps=40)  # crosses an epoch boundary (23 steps per epoch)
    a = engine(ds=digits, **cfg)
    a.fit(digits, steps=17)
    state = a.state_dict()
    a.fit(digits, steps=5)  # training on must not change the saved snapshot
    b = engine(ds=digits, **cfg)
    b.load_state_dict(state)
    hist = b.fit(digits, steps=23)
    assert same(params(ref), params(b))
    assert hist.losses.tolist() == ref_hist.losses[17:].tolist()
    assert b.scale == ref.scale and (b.step, b.epoch, b.batch_in_epoch) == (ref.step, ref.epoch, ref.batch_in_epoch)


def test_grad_scaler_path_equals_mpcourse_scaler_path(digits) -> None:
    """Dynamic scaling through GradScaler and through mpcourse's scaler: same scales, same weights."""
    common = dict(precision="fp16", loss_scale="dynamic", init_scale=2.0**20, growth_interval=4)
    gs = mpc.make_engine("torch", "mlp", mpc.TrainConfig(**common), device="cpu", data=digits, loss_fn=inf_on_call(5))
    own = mpc.make_engine(
        "torch", "mlp", mpc.TrainConfig(**common, min_scale=2.0**-30), device="cpu", data=digits, loss_fn=inf_on_call(5)
    )
    assert gs.scaling.kind == "grad_scaler" and own.scaling.kind == "dynamic"
    h1, h2 = gs.fit(digits, steps=30), own.fit(digits, steps=30)
    assert h1.scales.tolist() == h2.scales.tolist()
    assert h1.column("found_inf").tolist() == h2.column("found_inf").tolist()
    assert same(params(gs), params(own))


def test_engine_scale_trajectory_equals_the_pure_python_scaler(digits) -> None:
    eng = engine("fp16", digits, init_scale=2.0**24, growth_interval=3)
    hist = eng.fit(digits, epochs=2)
    s = DynamicLossScaler(init_scale=2.0**24, growth_interval=3)
    for rec in hist:
        assert rec.scale == s.scale
        s.update(rec.found_inf)
    assert s.scale == eng.scale
    assert len(set(hist.scales.tolist())) > 1  # growth happened


def test_own_model_and_loss_fn(digits) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10))
    calls = []

    def loss_fn(out, y):
        calls.append(out.dtype)
        return torch.nn.functional.cross_entropy(out, y, label_smoothing=0.1)

    eng = mpc.make_engine("torch", model, mpc.TrainConfig(precision="bf16"), device="cpu", loss_fn=loss_fn)
    assert eng.model is model and eng.model_name == "Sequential"
    eng.fit(digits, steps=3)
    assert calls and all(d == torch.float32 for d in calls)  # the loss is computed in fp32


@pytest.mark.parametrize("name", ["mlp", "deep_mlp", "cnn", "transformer", "lstm"])
def test_zoo_models_train_a_step_in_fp16(digits, name) -> None:
    eng = mpc.make_engine("torch", name, mpc.TrainConfig(precision="fp16"), device="cpu", data=digits)
    rec = eng.fit(digits, steps=2)[-1]
    assert np.isfinite(rec.loss) and rec.samples == 64
    assert eng.evaluate(digits)["accuracy"] >= 0.0


def test_large_sizes_are_larger() -> None:
    from mpcourse.engines.torch.models import build_model

    for name in ("mlp", "deep_mlp", "cnn", "transformer", "lstm"):
        small = sum(p.numel() for p in build_model(name, "small", 784).parameters())
        large = sum(p.numel() for p in build_model(name, "large", 784).parameters())
        assert large > 4 * small, name


def test_pure_half_trains_the_parameters_in_fp16(digits) -> None:
    eng = engine("fp16", digits, master_weights=False, loss_scale=1024.0, optimizer="sgd", lr=0.05)
    assert all(p.dtype == torch.float16 for p in eng.model.parameters())
    hist = eng.fit(digits, steps=10)
    assert np.isfinite(hist.losses).all() and hist.losses[-1] < hist.losses[0]


def test_pure_half_adam_breaks_because_eps_rounds_to_zero(digits) -> None:
    # Adam's eps=1e-8 is 0 in fp16 and grad**2 underflows: 0/0 turns the weights into NaN.
    assert float(torch.tensor(1e-8, dtype=torch.float16)) == 0.0
    eng = engine("fp16", digits, master_weights=False, loss_scale=1024.0, optimizer="adam")
    eng.fit(digits, steps=2)
    assert any(not torch.isfinite(p).all() for p in eng.model.parameters())


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"backend": "jax"}, "unknown backend 'jax'; allowed: 'torch', 'mlx'"),
        ({"model": "resnet50"}, "unknown model 'resnet50'; allowed: 'mlp'"),
        ({"size": "huge"}, "unknown size 'huge'"),
        ({"device": "tpu"}, "unknown device 'tpu'; use 'auto', 'cpu'"),
        ({"device": "xla"}, "unsupported device 'xla'"),
        ({"num_features": 0}, "num_features must be an int >= 1"),
    ],
)
def test_bad_engine_arguments(kwargs, match) -> None:
    args = {"backend": "torch", "model": "mlp", "device": "cpu", **kwargs}
    with pytest.raises(ValueError, match=match):
        mpc.make_engine(args.pop("backend"), args.pop("model"), **args)


def test_cnn_needs_a_square_input() -> None:
    with pytest.raises(ValueError, match="70 features is not a perfect square"):
        mpc.make_engine("torch", "cnn", device="cpu", num_features=70)


@pytest.mark.skipif("cuda" in torch_devices(), reason="this machine has CUDA")
def test_absent_device_is_an_error_not_a_fallback() -> None:
    with pytest.raises(DeviceUnavailableError, match="device 'cuda' was asked for but is not available here"):
        mpc.make_engine("torch", "mlp", device="cuda")
    if "mps" not in torch_devices():
        with pytest.raises(DeviceUnavailableError, match="'mps'"):
            mpc.make_engine("torch", "mlp", device="mps")


def test_auto_device_says_what_it_chose(capsys) -> None:
    eng = mpc.make_engine("torch", "mlp", device="auto")
    assert eng.device == torch_devices()[0]
    assert f"torch engine on {eng.device} (device='auto')" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad, match",
    [
        ("nan", "NaN/inf values"),
        ("inf", "NaN/inf values"),
        ("length", "x has 100 samples but y has 99"),
        ("features", "data has 63 features but the model was built for 64"),
        ("label", "label 12 but the model has 10"),
    ],
)
def test_bad_data_is_refused_before_any_step(digits, bad, match) -> None:
    eng = engine("fp16", digits)
    before = params(eng)
    x, y = digits.x_train[:100].copy(), digits.y_train[:100].copy()
    if bad == "nan":
        x[7, 3] = np.nan
    elif bad == "inf":
        x[50, 0] = np.inf
    elif bad == "length":
        y = y[:99]
    elif bad == "features":
        x = x[:, :63]
    else:
        y[4] = 12
    with pytest.raises(ValueError, match=match):
        eng.fit((x, y), epochs=1)
    assert same(before, params(eng)) and eng.step == 0


def test_bad_fit_counts(digits) -> None:
    eng = engine()
    for kwargs in ({"epochs": 0}, {"steps": 0}, {"epochs": 1.5}):
        with pytest.raises(ValueError, match="must be an int >= 1"):
            eng.fit(digits, **kwargs)


def test_state_dict_from_another_config_is_refused(digits) -> None:
    a = engine("fp16", digits)
    b = engine("bf16", digits)
    with pytest.raises(ValueError, match="loss scaler"):
        b.load_state_dict(a.state_dict())
    c = mpc.make_engine("torch", "cnn", device="cpu")
    with pytest.raises(ValueError, match="model='mlp', this engine has model='cnn'"):
        c.load_state_dict(a.state_dict())


def test_progress_bar_can_be_on(digits, capsys) -> None:
    engine().fit(digits, steps=3, progress=True)
    assert "torch:cpu fp32" in capsys.readouterr().err


def test_history_round_trips_through_json(digits) -> None:
    hist = engine("fp16", digits).fit(digits, steps=5)
    back = mpc.History.from_json(hist.to_json())
    assert back.records == hist.records and back.meta == hist.meta
    assert hist.epoch_summary()[0]["steps"] == 5
