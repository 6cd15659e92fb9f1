"""The predict phase: a bf16/fp16 serving copy of an fp32-trained model, its accuracy and its measured bytes."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import mpcourse as mpc
from mpcourse import production as prod
from mpcourse.engines.portable import export_state, model_sha256

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MLX = importlib.util.find_spec("mlx") is not None
BACKENDS = [
    pytest.param("torch", marks=pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")),
    pytest.param("mlx", marks=pytest.mark.skipif(not HAS_MLX, reason="mlx is not installed")),
]


def _trained(backend: str, ds: mpc.data.Dataset, model: str = "mlp") -> mpc.Engine:
    eng = mpc.make_engine(backend, model, mpc.TrainConfig(), device="cpu", data=ds, verbose=False)
    eng.fit(ds, epochs=2)
    return eng


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_copy_halves_the_weights_agrees_with_fp32_and_leaves_the_engine_alone(
    backend: str, digits: mpc.data.Dataset
) -> None:
    eng = _trained(backend, digits)
    before, sha = export_state(eng), model_sha256(eng)
    rep = prod.predict_phase(eng, digits, "bf16", batch_size=128)
    assert model_sha256(eng) == sha  # the trained weights are the same bits
    after = export_state(eng)
    assert after["step"] == before["step"] and after["precision"] == "fp32"
    assert rep.samples == len(digits.x_test) and rep.batch_size == 128 and rep.train_precision == "fp32"
    # Every floating weight is 2 bytes instead of 4 (the MLP has no integer buffers).
    assert rep.serving.weight_bytes * 2 == rep.reference.weight_bytes
    params = sum(int(np.prod(a.shape)) for a in mpc.engines.portable.model_arrays(eng).values())
    assert rep.reference.weight_bytes == 4 * params
    # Training holds weights, gradients and Adam's two moments: at least 4x the fp32 weights' bytes
    # (torch also keeps Adam's step counters; MLX keeps no gradients between steps: 3x then).
    assert rep.train_state_bytes >= 3 * rep.reference.weight_bytes
    assert 0 < rep.serving.activation_peak_bytes < rep.reference.activation_peak_bytes
    assert 0 < rep.saved_fraction < 1
    # bf16 rounds each logit to 8 significant bits: a rare near-tie may flip, the accuracy barely moves.
    assert rep.agreement >= 0.95 and 0 < rep.max_logit_diff < 0.5
    assert rep.serving.accuracy is not None and rep.reference.accuracy is not None
    assert abs(rep.serving.accuracy - rep.reference.accuracy) <= 0.03
    text = rep.format()
    assert "bf16  copy" in text and "fp32  copy" in text and "measured as" in text


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_live_bytes_are_the_two_activations_alive_at_once() -> None:
    import torch

    from mpcourse.engines.torch.serving import LiveTensorBytes

    for dtype, width in ((torch.float32, 4), (torch.bfloat16, 2)):
        net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3)).to(dtype).eval()
        x = torch.randn(16, 8).to(dtype)
        probe = LiveTensorBytes({t.untyped_storage().data_ptr() for t in [*net.parameters(), x]})
        with torch.inference_mode(), probe:
            net(x)
        # The first layer's output is alive while ReLU writes its own: 2 x (16 x 32) values at once.
        assert probe.peak == 2 * 16 * 32 * width


@pytest.mark.parametrize("backend", BACKENDS)
def test_fp32_copy_reproduces_the_engine_and_fp16_serves_too(backend: str, digits: mpc.data.Dataset) -> None:
    eng = _trained(backend, digits)
    same = prod.predict_phase(eng, digits, "fp32")
    assert same.max_logit_diff == 0 and same.agreement == 1
    assert same.reference.accuracy == pytest.approx(eng.evaluate(digits)["accuracy"], abs=1 / len(digits.x_test))
    half = prod.predict_phase(eng, digits, "fp16")
    assert half.serving.weight_bytes * 2 == half.reference.weight_bytes and half.agreement >= 0.95


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_bad_arguments_are_refused_by_name(digits: mpc.data.Dataset) -> None:
    eng = _trained("torch", digits)
    sha = model_sha256(eng)
    with pytest.raises(ValueError, match="precision must be one of .*'int8'"):
        prod.predict_phase(eng, digits, "int8")
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        prod.predict_phase(eng, digits, batch_size=0)
    with pytest.raises(TypeError, match="engine must be an mpcourse Engine, got str"):
        prod.predict_phase("torch", digits)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="no samples"):
        prod.predict_phase(eng, (digits.x_test[:0], digits.y_test[:0]))
    assert model_sha256(eng) == sha


def test_schedule_carries_the_predict_precision() -> None:
    s = prod.PrecisionSchedule([prod.Phase("train", "fp32")], predict="bf16")
    assert s.predict == "bf16" and repr(s) == "PrecisionSchedule(train:fp32xrest; predict:bf16)"
    assert prod.PrecisionSchedule.fp32_warmup(10, then="fp16", predict="fp16").predict == "fp16"
    assert prod.PrecisionSchedule.from_map({"a": "fp32"}, {}, predict="bf16").predict == "bf16"
    assert prod.PrecisionSchedule.fp32_warmup(10).predict is None
    with pytest.raises(ValueError, match="predict must be one of"):
        prod.PrecisionSchedule([prod.Phase("train", "fp32")], predict="int4")


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_predict_memory_figure_has_three_bars_a_title_and_units(digits: mpc.data.Dataset) -> None:
    from mpcourse import plots

    rep = prod.predict_phase(_trained("torch", digits), digits)
    fig = plots.predict_memory(rep)
    assert [t.name for t in fig.data] == [
        "weights + gradients + optimizer state",
        "weights",
        "activation peak (batch 256)",
    ]
    assert list(fig.data[1].y) == [rep.reference.weight_bytes / 1024, rep.serving.weight_bytes / 1024]
    assert "predict phase" in fig.layout.title.text and fig.layout.yaxis.title.text == "measured memory (KiB)"


@pytest.mark.parametrize("backend", BACKENDS)
def test_serving_predicts_every_batch_from_one_copy(backend: str, digits: mpc.data.Dataset) -> None:
    import importlib

    serving = importlib.import_module(f"mpcourse.engines.{backend}.serving")
    eng = _trained(backend, digits)
    x = digits.x_test[:300]
    whole = serving.predict(eng, x, "bf16", batch_size=300)
    parts = serving.predict(eng, x, "bf16", batch_size=128)  # 128 + 128 + 44
    assert parts["logits"].shape == whole["logits"].shape == (300, 10)
    assert np.allclose(parts["logits"], whole["logits"], atol=0.05)  # bf16 rounding may differ by batch
    assert parts["weight_bytes"] == whole["weight_bytes"]
    assert 0 < parts["activation_peak_bytes"] < whole["activation_peak_bytes"]  # the largest batch's, 128
    with pytest.raises(ValueError, match="batch_size must be an int >= 1, got 0"):
        serving.predict(eng, x, "bf16", batch_size=0)
