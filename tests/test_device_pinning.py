"""MPCOURSE_DEVICE pins what device="auto" picks, for both engines; explicit devices ignore it."""

from __future__ import annotations

import pytest

import mpcourse as mpc
from mpcourse.engines import DeviceUnavailableError
from mpcourse.engines.pinning import DEVICE_ENV, pinned_device


@pytest.mark.parametrize(
    ("value", "torch_dev", "mlx_dev"),
    [
        ("", None, None),
        ("auto", None, None),
        ("cpu", "cpu", "cpu"),
        (" CPU ", "cpu", "cpu"),
        ("gpu", "gpu", "gpu"),
        ("cuda", "cuda", "cuda"),
        ("cuda:1", "cuda:1", "cuda"),
        ("mps", "mps", "metal"),
        ("metal", "mps", "metal"),
    ],
)
def test_pinned_device_names_the_device_in_each_frameworks_words(value, torch_dev, mlx_dev):
    env = {DEVICE_ENV: value}
    assert pinned_device("torch", env) == torch_dev
    assert pinned_device("mlx", env) == mlx_dev


def test_unset_is_not_pinned_and_bad_values_are_refused_by_name():
    assert pinned_device("torch", {}) is None
    with pytest.raises(ValueError, match=r"MPCOURSE_DEVICE='tpu'.*cpu, gpu"):
        pinned_device("torch", {DEVICE_ENV: "tpu"})
    with pytest.raises(ValueError, match="backend"):
        pinned_device("jax", {})


def test_torch_auto_follows_the_pin_and_explicit_devices_ignore_it(monkeypatch):
    pytest.importorskip("torch")
    from mpcourse.engines.torch.engine import resolve_device, torch_devices

    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device("auto").type == "cpu"
    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(), num_features=64, num_classes=10, verbose=False)
    assert next(eng.model.parameters()).device.type == "cpu"
    monkeypatch.setenv(DEVICE_ENV, "nonsense")
    assert resolve_device("cpu").type == "cpu"  # explicit: the variable is not read
    with pytest.raises(ValueError, match=DEVICE_ENV):
        resolve_device("auto")
    for absent in [d for d in ("mps", "cuda") if d not in torch_devices()]:
        monkeypatch.setenv(DEVICE_ENV, absent)
        with pytest.raises(DeviceUnavailableError, match=f"{DEVICE_ENV} pins device='auto' to '{absent}'"):
            resolve_device("auto")
    if torch_devices() == ["cpu"]:
        monkeypatch.setenv(DEVICE_ENV, "gpu")
        with pytest.raises(DeviceUnavailableError, match="GPU"):
            resolve_device("auto")
    monkeypatch.delenv(DEVICE_ENV)
    assert resolve_device("auto").type == torch_devices()[0]


def test_mlx_auto_follows_the_pin(monkeypatch):
    if mpc.engines.missing_reason("mlx") is not None:
        pytest.skip(mpc.engines.missing_reason("mlx"))
    import mlx.core as mx

    from mpcourse.engines.mlx.engine import mlx_devices, resolve_device

    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device("auto") == mx.Device(mx.cpu)
    if "gpu" not in mlx_devices():
        monkeypatch.setenv(DEVICE_ENV, "mps")
        with pytest.raises(DeviceUnavailableError, match=f"{DEVICE_ENV} pins device='auto' to 'metal'"):
            resolve_device("auto")
    monkeypatch.setenv(DEVICE_ENV, "bogus")
    with pytest.raises(ValueError, match=DEVICE_ENV):
        resolve_device("auto")
    assert resolve_device("cpu") == mx.Device(mx.cpu)


def test_bench_device_check_follows_the_pin(monkeypatch):
    pytest.importorskip("torch")
    from mpcourse.engines.torch import bench as tb

    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert tb.check_device("auto") == "cpu"
