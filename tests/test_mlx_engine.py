"""The MLX engine on MLX's CPU backend, with the torch engine as the oracle where it is installed."""

from __future__ import annotations

import copy

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core", reason="mlx is not installed (pip install 'mlx[cpu]')")
nn = pytest.importorskip("mlx.nn")

from mlx.utils import tree_flatten  # noqa: E402

import mpcourse as mpc  # noqa: E402
from mpcourse.clipping import ClipPolicy  # noqa: E402
from mpcourse.engines import available_backends, make_engine  # noqa: E402
from mpcourse.engines.mlx import models as mlx_models  # noqa: E402
from mpcourse.engines.mlx.engine import DeviceUnavailableError, MLXEngine, mlx_devices  # noqa: E402
from mpcourse.engines.zoo import SPECS, TOKEN_MODELS  # noqa: E402
from mpcourse.scaler import DynamicLossScaler  # noqa: E402


def _params(eng: MLXEngine) -> dict[str, np.ndarray]:
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(eng.master_params)}


def _opt(eng: MLXEngine) -> dict[str, np.ndarray]:
    return {k: np.array(v.astype(mx.float32)) for k, v in tree_flatten(eng.optimizer.state)}


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def _planted_loss(bad_calls: set[int], ce):
    """A loss that is inf on the given calls (0-based): a planted overflow."""
    calls = {"n": 0}

    def loss_fn(out, y):
        factor = float("inf") if calls["n"] in bad_calls else 1.0
        calls["n"] += 1
        return ce(out, y) * factor

    return loss_fn


def _mlx_ce(out, y):
    return nn.losses.cross_entropy(out, y, reduction="mean")


# --- accuracy per precision ---------------------------------------------------------------------
def test_digits_mlp_reaches_90_percent_and_half_precisions_track_fp32(digits):
    acc = {}
    for precision in ("fp32", "fp16", "bf16"):
        cfg = mpc.TrainConfig(precision=precision, lr=4e-3, batch_size=128)
        eng = make_engine("mlx", "mlp", cfg, device="cpu", data=digits, verbose=False)
        hist = eng.fit(digits, epochs=8)
        acc[precision] = eng.evaluate(digits)["accuracy"]
        assert hist.meta["backend"] == "mlx" and hist.meta["precision"] == precision
        assert np.isfinite(hist.losses).all()
    assert all(a >= 0.90 for a in acc.values()), acc
    assert abs(acc["fp16"] - acc["fp32"]) <= 0.01 and abs(acc["bf16"] - acc["fp32"]) <= 0.01, acc


def test_mixed_precision_keeps_fp32_masters_and_a_half_compute_copy(digits):
    eng = MLXEngine("mlp", mpc.TrainConfig(precision="bf16"), device="cpu")
    eng.fit(digits, steps=3)
    assert {v.dtype for _, v in tree_flatten(eng.master_params)} == {mx.float32}
    copy_ = dict(tree_flatten(eng.model.trainable_parameters()))
    assert {v.dtype for v in copy_.values()} == {mx.bfloat16}
    for k, master in tree_flatten(eng.master_params):  # the model holds the *current* masters
        assert np.array_equal(
            np.array(master.astype(mx.bfloat16).astype(mx.float32)), np.array(copy_[k].astype(mx.float32))
        )


def test_pure_half_training_loses_small_updates_that_master_weights_keep(digits):
    cfg = mpc.TrainConfig(precision="bf16", optimizer="sgd", lr=1e-6, momentum=0.0)
    pure = MLXEngine("mlp", cfg.replace(master_weights=False), device="cpu")
    mixed = MLXEngine("mlp", cfg, device="cpu")
    assert {v.dtype for _, v in tree_flatten(pure.master_params)} == {mx.bfloat16}
    before_pure, before_mixed = _params(pure), _params(mixed)
    pure.fit(digits, steps=5)
    mixed.fit(digits, steps=5)
    # lr * grad is far below half a bf16 ulp of the weights: pure bf16 rounds every update away.
    assert _same(_params(pure), before_pure)
    assert not _same(_params(mixed), before_mixed)


# --- loss scaling: planted overflow ---------------------------------------------------------------
def test_planted_inf_skips_the_step_keeps_params_bit_identical_and_backs_off(digits):
    cfg = mpc.TrainConfig(precision="fp16", loss_scale="dynamic", init_scale=2.0**10)
    eng = MLXEngine("mlp", cfg, device="cpu", loss_fn=_planted_loss({3}, _mlx_ce))
    assert not eng.compiled  # a Python counter in loss_fn needs the uncompiled path
    eng.fit(digits, steps=3)
    params, opt = _params(eng), _opt(eng)
    hist = eng.fit(digits, steps=2)
    bad, after = hist[0], hist[1]
    assert bad.found_inf and bad.skipped and not np.isfinite(bad.loss)
    assert bad.scale == 2.0**10 and after.scale == 2.0**9 and eng.scale == 2.0**9
    assert not after.found_inf and not after.skipped
    eng2 = MLXEngine("mlp", cfg, device="cpu", loss_fn=_planted_loss({3}, _mlx_ce))
    eng2.fit(digits, steps=4)  # stop right after the planted step
    assert _same(_params(eng2), params) and _same(_opt(eng2), opt)  # Adam's step count included


def test_a_static_scale_fp16_cannot_hold_skips_every_step_without_touching_params(digits):
    # 2**40 * loss overflows fp16 in the backward: genuine overflow, not a planted one.
    eng = MLXEngine("mlp", mpc.TrainConfig(precision="fp16", loss_scale=2.0**40), device="cpu")
    before = _params(eng), _opt(eng)
    hist = eng.fit(digits, steps=3)
    assert hist.column("skipped").all() and hist.column("found_inf").all()
    assert (hist.scales == 2.0**40).all() and np.isfinite(hist.losses).all()
    assert _same(_params(eng), before[0]) and _same(_opt(eng), before[1])


def test_loss_scale_none_applies_even_a_non_finite_step_like_a_plain_loop(digits):
    eng = MLXEngine(
        "mlp", mpc.TrainConfig(precision="fp16", loss_scale="none"), device="cpu", loss_fn=_planted_loss({0}, _mlx_ce)
    )
    rec = eng.fit(digits, steps=1)[0]
    assert rec.found_inf and not rec.skipped and rec.scale == 1.0
    assert not all(np.isfinite(v).all() for v in _params(eng).values())


def test_compiled_and_uncompiled_steps_give_the_same_results(digits):
    # init_scale 2**30 overflows at first: the dynamic scaler backs off, so the compiled
    # device-side skip is exercised too. (The first compiled run on a machine JIT-builds kernels.)
    cfg = mpc.TrainConfig(
        precision="fp16", loss_scale="dynamic", init_scale=2.0**30, growth_interval=5, optimizer="sgd", lr=0.05
    )
    runs = []
    for compiled in (True, False):
        eng = MLXEngine("mlp", cfg, device="cpu", compile=compiled)
        runs.append((eng.fit(digits, steps=30), _params(eng)))
        assert eng.compiled == compiled
    (h1, p1), (h2, p2) = runs
    # A compiled engine reads its state through captured containers: a load must reach them.
    a = MLXEngine("mlp", cfg, device="cpu", compile=True)
    a.fit(digits, steps=4)
    saved = a.state_dict()
    b = MLXEngine("mlp", cfg, device="cpu", compile=True)
    b.fit(digits, steps=1)
    b.load_state_dict(saved)
    assert np.array_equal(a.fit(digits, steps=3).losses, b.fit(digits, steps=3).losses)
    assert _same(_params(a), _params(b))
    assert h1.skipped_steps > 0
    for col in ("scale", "found_inf", "skipped"):
        assert np.array_equal(h1.column(col), h2.column(col)), col
    np.testing.assert_allclose(h1.losses, h2.losses, rtol=1e-5, atol=1e-6)
    for k in p1:
        np.testing.assert_allclose(p1[k], p2[k], rtol=1e-4, atol=1e-6, err_msg=k)


# --- clipping hook ---------------------------------------------------------------------------------
class _RecordingClip(MLXEngine):
    """Zeroes the gradients it is given and records the norm it saw, to test the hook's contract."""

    seen: list[float]

    def _clip(self, grads, grad_norm):
        self.seen.append(float(grad_norm.item()))
        from mlx.utils import tree_map

        return tree_map(mx.zeros_like, grads), True


def test_clip_hook_sees_unscaled_norms_on_finite_steps_only(digits):
    cfg = mpc.TrainConfig(
        precision="fp16", loss_scale="dynamic", init_scale=2.0**8, clip=ClipPolicy(), optimizer="sgd", momentum=0.0
    )
    eng = _RecordingClip("mlp", cfg, device="cpu", loss_fn=_planted_loss({1}, _mlx_ce))
    eng.seen = []
    before = _params(eng)
    hist = eng.fit(digits, steps=3)
    assert list(hist.column("found_inf")) == [False, True, False]
    assert list(hist.column("clipped")) == [True, False, True]
    finite = [r.grad_norm for r in hist if not r.found_inf]
    np.testing.assert_allclose(eng.seen, finite, rtol=1e-6)  # the unscaled, pre-clip norm
    assert 0.01 < finite[0] < 100  # unscaled: a scaled norm would be ~256x larger
    assert _same(_params(eng), before)  # zeroed grads through plain SGD: nothing moved


def test_no_clip_policy_means_the_hook_is_a_no_op():
    eng = MLXEngine("mlp", mpc.TrainConfig(), device="cpu")
    grads = {"w": mx.ones((2,))}
    assert eng._clip(grads, mx.array(1.0)) == (grads, False)


# --- checkpoints ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "model,cfg",
    [
        ("mlp", mpc.TrainConfig(precision="fp16", loss_scale="dynamic", growth_interval=2, batch_size=96)),
        ("cnn", mpc.TrainConfig(precision="bf16", optimizer="sgd", lr=0.05, batch_size=96)),
        ("mlp", mpc.TrainConfig(precision="bf16", master_weights=False, optimizer="adamw", batch_size=96)),
    ],
)
def test_checkpoint_resume_is_bit_exact(digits, model, cfg):
    data = (digits.x_train[:384], digits.y_train[:384])  # 4 batches per epoch: MLX's CPU conv is slow
    a = MLXEngine(model, cfg, device="cpu")
    a.fit(data, steps=3)
    saved = a.state_dict()
    frozen = copy.deepcopy(saved)
    h_a = a.fit(data, steps=3)  # crosses into the next epoch: a new data order
    b = MLXEngine(model, cfg, device="cpu")
    b.fit(data, steps=1)  # other weights, moments, scale and position until loaded
    b.load_state_dict(saved)
    h_b = b.fit(data, steps=3)
    assert np.array_equal(h_a.losses, h_b.losses) and np.array_equal(h_a.scales, h_b.scales)
    assert _same(_params(a), _params(b)) and _same(_opt(a), _opt(b))
    assert a.state_dict()["framework"]["scaler"] == b.state_dict()["framework"]["scaler"]
    assert (a.step, a.epoch, a.batch_in_epoch) == (b.step, b.epoch, b.batch_in_epoch) == (6, 1, 2)
    for part in ("master", "optimizer", "buffers"):  # the saved dict is a snapshot
        assert _same(saved["framework"][part], frozen["framework"][part]), part
    if model == "cnn":  # BatchNorm running statistics travel too
        assert any("running_mean" in k for k in saved["framework"]["buffers"])


def test_a_state_from_another_model_or_scaler_is_refused_and_leaves_the_engine_intact():
    eng = MLXEngine("mlp", mpc.TrainConfig(precision="fp16"), device="cpu")
    before = _params(eng)
    other = MLXEngine("deep_mlp", mpc.TrainConfig(precision="fp16"), device="cpu").state_dict()
    with pytest.raises(ValueError, match="model"):
        eng.load_state_dict(other)
    no_scaler = MLXEngine("mlp", mpc.TrainConfig(precision="fp16", loss_scale="none"), device="cpu")
    with pytest.raises(ValueError, match="scaler"):
        eng.load_state_dict(no_scaler.state_dict())
    wrong = eng.state_dict()
    wrong["framework"]["master"]["head.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ValueError, match="head.weight"):
        eng.load_state_dict(wrong)
    assert _same(_params(eng), before)


# --- torch as the oracle ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", SPECS)
def test_every_zoo_model_matches_its_torch_twin_after_copying_weights(name):
    torch = pytest.importorskip("torch")
    from mpcourse.engines.torch import models as torch_models

    tm, mm = torch_models.build_model(name), mlx_models.build_model(name)
    mlx_shapes = {k: tuple(v.shape) for k, v in tree_flatten(mm.parameters())}
    torch_shapes = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    same_names = set(mlx_shapes) & set(torch_shapes)
    assert same_names, name
    for k in same_names:  # same names, same shapes (conv weights: NHWC order)
        want = torch_shapes[k] if len(torch_shapes[k]) != 4 else tuple(np.array(torch_shapes[k])[[0, 2, 3, 1]])
        assert mlx_shapes[k] == want, k
    mlx_models.load_torch_state(mm, tm.state_dict())
    tm.eval()
    mm.eval()
    x = np.random.default_rng(0).random((6, 64), dtype=np.float32)
    y = np.arange(36) % 10
    if name in TOKEN_MODELS:  # (n, T) token ids in, (n, T) next tokens as labels
        x = np.random.default_rng(0).integers(0, 10, (6, 64))
        y = np.roll(x.repeat(6, 0), -1, axis=1)
    with torch.no_grad():
        want = tm(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(np.array(mm(mx.array(x))), want, rtol=1e-4, atol=1e-5)
    eng = MLXEngine(name, mpc.TrainConfig(precision="fp16", batch_size=32), device="cpu", compile=False)
    assert np.isfinite(eng.fit((x.repeat(6, 0), y), steps=1).losses).all()


@pytest.mark.parametrize(
    "opt", [dict(optimizer="sgd", lr=0.05, momentum=0.9), dict(optimizer="adam", lr=1e-3, weight_decay=1e-4)]
)
def test_fp32_losses_match_torch_for_the_first_20_steps(digits, opt):
    pytest.importorskip("torch")
    from mpcourse.engines.torch import models as torch_models

    cfg = mpc.TrainConfig(precision="fp32", **opt)
    teng = make_engine("torch", "mlp", cfg, device="cpu", verbose=False)
    mm = mlx_models.build_model("mlp")
    mlx_models.load_torch_state(mm, torch_models.build_model("mlp", seed=cfg.seed).state_dict())
    meng = MLXEngine(mm, cfg, device="cpu")
    ht, hm = teng.fit(digits, steps=20), meng.fit(digits, steps=20)
    assert np.abs(ht.losses - hm.losses).max() < 1e-4, np.abs(ht.losses - hm.losses).max()
    np.testing.assert_allclose(ht.grad_norms, hm.grad_norms, rtol=1e-3)
    assert ht.losses[-1] < ht.losses[0] - 0.2  # it actually trained


@pytest.mark.parametrize("hysteresis", [1, 2])
def test_scaler_trajectory_is_identical_across_engines_for_the_same_verdicts(digits, hysteresis):
    pytest.importorskip("torch")
    import torch.nn.functional as F

    bad = {1, 4, 5, 6, 11}
    cfg = mpc.TrainConfig(
        precision="fp16", loss_scale="dynamic", init_scale=2.0**12, growth_interval=3, hysteresis=hysteresis
    )
    teng = make_engine(
        "torch", "mlp", cfg, device="cpu", verbose=False, loss_fn=_planted_loss(bad, lambda o, y: F.cross_entropy(o, y))
    )
    meng = make_engine("mlx", "mlp", cfg, device="cpu", verbose=False, loss_fn=_planted_loss(bad, _mlx_ce))
    assert (teng.scaling.kind == "grad_scaler") == (hysteresis == 1)  # GradScaler vs mpcourse's scaler
    ht, hm = teng.fit(digits, steps=16), meng.fit(digits, steps=16)
    verdicts = [i in bad for i in range(16)]
    ref, expected = DynamicLossScaler(2.0**12, growth_interval=3, hysteresis=hysteresis), []
    for v in verdicts:
        expected.append(ref.scale)
        ref.update(v)
    for h in (ht, hm):
        assert list(h.column("found_inf")) == verdicts and list(h.column("skipped")) == verdicts
        assert list(h.scales) == expected
    assert meng.scale == ref.scale == teng.scale
    assert len(set(expected)) > 2  # the trajectory both grew and backed off


# --- bad input, devices, availability --------------------------------------------------------------
def test_bad_input_is_refused_before_any_step(digits):
    eng = MLXEngine("mlp", mpc.TrainConfig(), device="cpu")
    before = _params(eng)
    x = digits.x_train.copy()
    x[5, 3] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        eng.fit((x, digits.y_train))
    with pytest.raises(ValueError, match="samples"):
        eng.fit((digits.x_train, digits.y_train[:-1]))
    with pytest.raises(ValueError, match="label"):
        eng.fit((digits.x_train, digits.y_train + 10))
    with pytest.raises(ValueError, match="features"):
        eng.fit((digits.x_train[:, :10], digits.y_train))
    assert eng.step == 0 and _same(_params(eng), before)
    with pytest.raises(ValueError, match="unknown model"):
        make_engine("mlx", "resnet152")
    with pytest.raises(ValueError, match="unknown model"):
        MLXEngine("resnet152", mpc.TrainConfig())
    with pytest.raises(TypeError, match="mlx.nn.Module"):
        MLXEngine(object(), mpc.TrainConfig())
    with pytest.raises(TypeError, match="loss_fn"):
        MLXEngine("mlp", mpc.TrainConfig(), loss_fn=3)
    with pytest.raises(ValueError, match="square"):
        MLXEngine("cnn", mpc.TrainConfig(), num_features=60)


def test_devices_and_availability():
    assert mlx_devices()[-1] == "cpu" and "mlx:cpu" in available_backends()
    assert MLXEngine("mlp", mpc.TrainConfig(), device="cpu").device == "cpu"
    assert MLXEngine("mlp", mpc.TrainConfig(), device="auto").device == mlx_devices()[0]
    with pytest.raises(ValueError, match="unknown MLX device"):
        MLXEngine("mlp", mpc.TrainConfig(), device="tpu")
    if "gpu" not in mlx_devices():
        with pytest.raises(DeviceUnavailableError, match="gpu"):
            MLXEngine("mlp", mpc.TrainConfig(), device="gpu")


def test_a_users_own_model_and_loss_are_accepted(digits):
    class Tiny(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 10)

        def __call__(self, x):
            return self.fc(x)

    calls = []

    def loss_fn(out, y):
        calls.append(out.dtype)
        return _mlx_ce(out, y)

    eng = make_engine(
        "mlx", Tiny(), mpc.TrainConfig(precision="bf16", lr=1e-2), device="cpu", loss_fn=loss_fn, verbose=False
    )
    hist = eng.fit(digits, epochs=2)
    assert eng.model_name == "Tiny" and calls[0] == mx.float32  # the loss sees fp32 outputs
    assert hist.losses[-5:].mean() < hist.losses[:5].mean()
    assert eng.evaluate(digits)["accuracy"] > 0.8


def test_both_engines_raise_one_device_error_class() -> None:
    from mpcourse.engines import base
    from mpcourse.engines.torch import engine as torch_engine

    assert DeviceUnavailableError is base.DeviceUnavailableError is torch_engine.DeviceUnavailableError
