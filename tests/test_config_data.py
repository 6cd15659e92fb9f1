"""TrainConfig validation and the datasets."""

from __future__ import annotations

import numpy as np
import pytest

import mpcourse as mpc
from mpcourse.data import validate_xy


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"precision": "fp9"}, "precision must be one of 'fp32', 'fp16', 'bf16', 'fp8'; got 'fp9'"),
        ({"optimizer": "lion"}, "optimizer must be one of 'adam', 'adamw', 'sgd'; got 'lion'"),
        ({"lr": 0.0}, "lr must be > 0, got 0.0"),
        ({"lr": -1e-3}, "lr must be > 0"),
        ({"batch_size": 0}, "batch_size must be an int >= 1, got 0"),
        ({"loss_scale": -4.0}, "loss_scale must be"),
        ({"loss_scale": 0}, "loss_scale must be"),
        ({"loss_scale": "static"}, "loss_scale must be one of"),
        ({"growth_factor": 1.0}, "growth_factor must be > 1"),
        ({"backoff_factor": 1.5}, r"backoff_factor must be in \(0, 1\)"),
        ({"backoff_factor": 0.0}, r"backoff_factor must be in \(0, 1\)"),
        ({"growth_interval": 0}, "growth_interval must be an int >= 1"),
        ({"hysteresis": 0}, "hysteresis must be an int >= 1"),
        ({"min_scale": 4.0, "max_scale": 2.0}, "min_scale"),
        ({"init_scale": 0.0}, "init_scale must be > 0"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"lr": float("nan")}, "lr must be finite"),
    ],
)
def test_bad_config_values_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        mpc.TrainConfig(**kwargs)


def test_bad_config_types() -> None:
    with pytest.raises(TypeError, match="batch_size must be an int"):
        mpc.TrainConfig(batch_size=32.0)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="clip must be None or a policy"):
        mpc.TrainConfig(clip=1.0)
    with pytest.raises(TypeError):
        mpc.TrainConfig("fp16")  # type: ignore[misc]  # keyword-only


def test_scaling_modes_and_scalers() -> None:
    assert mpc.TrainConfig(precision="fp16").scaling_mode == "dynamic"
    assert mpc.TrainConfig(precision="bf16").scaling_mode == "none"
    assert mpc.TrainConfig(precision="fp16", loss_scale=128).scaling_mode == "static"
    assert mpc.TrainConfig(precision="fp16", loss_scale=128).make_scaler().scale == 128.0
    s = mpc.TrainConfig(precision="fp16", init_scale=1024.0, hysteresis=3, growth_interval=7).make_scaler()
    assert (s.scale, s.hysteresis, s.growth_interval) == (1024.0, 3, 7)
    none = mpc.TrainConfig(loss_scale="none").make_scaler()
    assert isinstance(none, mpc.NoOpLossScaler) and none.scale == 1.0 and not none.skips_nonfinite
    cfg = mpc.TrainConfig(precision="fp16")
    assert cfg.replace(precision="bf16").precision == "bf16" and cfg.precision == "fp16"
    with pytest.raises(ValueError):
        cfg.replace(lr=-1.0)


def test_digits_split_is_fixed_and_deterministic() -> None:
    a, b = mpc.data.load("digits", seed=0), mpc.data.load("digits", seed=0)
    assert a.x_train.shape == (1437, 64) and a.x_test.shape == (360, 64) and a.num_classes == 10
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_test, b.y_test)
    assert a.x_train.dtype == np.float32 and 0.0 <= a.x_train.min() and a.x_train.max() <= 1.0
    assert not np.array_equal(a.y_train, mpc.data.load("digits", seed=1).y_train)


def test_synthetic_is_deterministic_and_learnable_by_a_rule() -> None:
    a, b = mpc.data.load("synthetic", seed=3), mpc.data.load("synthetic", seed=3)
    assert a.x_train.shape == (4096, 784) and a.num_classes == 10
    assert np.array_equal(a.x_train, b.x_train) and np.array_equal(a.y_train, b.y_train)
    # a learnable rule, not noise: even a linear read-out beats chance (0.1) by far
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=300).fit(a.x_train, a.y_train)
    assert clf.score(a.x_test, a.y_test) > 0.8
    assert len(np.unique(a.y_train)) >= 8


def test_unknown_dataset_and_bad_seed() -> None:
    with pytest.raises(ValueError, match="unknown dataset 'mnist'; available: .*digits"):
        mpc.data.load("mnist")
    with pytest.raises(ValueError, match="seed must be an int >= 0"):
        mpc.data.load("digits", seed=-1)


@pytest.mark.parametrize(
    "x, y, match",
    [
        (np.ones((4, 3)), np.zeros(5, int), "x has 4 samples but y has 5"),
        (np.array([[1.0, np.nan], [0.0, 1.0]]), np.zeros(2, int), "1 NaN/inf values \\(first in sample 0\\)"),
        (np.array([[1.0, 0.0], [np.inf, 1.0]]), np.zeros(2, int), "NaN/inf"),
        (np.ones((2, 2)), np.array([0.5, 1.0]), "integer class labels"),
        (np.ones((2, 2)), np.array([0, -1]), "y must be >= 0"),
        (np.ones(3), np.zeros(3, int), r"shape \(n, features\)"),
        (np.ones((0, 3)), np.zeros(0, int), "no samples"),
    ],
)
def test_validate_xy_refuses_bad_data(x: np.ndarray, y: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        validate_xy(x, y)


def test_register_makes_load_find_a_dataset_of_your_own() -> None:
    rng = np.random.default_rng(0)
    x, y = rng.random((20, 4), dtype=np.float32), np.arange(20) % 3

    def mine(seed: int, **options: object) -> mpc.data.Dataset:
        return mpc.data.Dataset("mine", x + seed, y, x[:5], y[:5], num_classes=3, meta=dict(options))

    mpc.data.register("mine_for_test", mine)
    try:
        ds = mpc.data.load("mine_for_test", seed=1, flavour="test")
        assert "mine_for_test" in mpc.data.available()
        assert ds.num_classes == 3 and ds.meta == {"flavour": "test"} and np.array_equal(ds.x_train, x + 1)
        with pytest.raises(ValueError, match="already registered; pass replace=True"):
            mpc.data.register("digits", mine)  # a built-in is registered the same way, and protected
        with pytest.raises(TypeError, match="loader must be callable"):
            mpc.data.register("other", 3)  # type: ignore[arg-type]
    finally:
        mpc.data._LOADERS.pop("mine_for_test", None)


def test_compute_precision_is_bf16_under_fp8_and_the_precision_otherwise() -> None:
    from mpcourse.config import compute_precision

    assert compute_precision("fp8") == "bf16"
    assert [compute_precision(p) for p in ("fp32", "fp16", "bf16")] == ["fp32", "fp16", "bf16"]
