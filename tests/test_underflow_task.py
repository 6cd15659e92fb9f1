"""The "underflow" task, the weighted loss, the runs helper and the torch inspection tools."""

from __future__ import annotations

import numpy as np
import pytest

import mpcourse as mpc
from mpcourse import numerics
from mpcourse.data import underflow_batch_threshold
from mpcourse.studies import runs

torch = pytest.importorskip("torch")


def test_underflow_dataset_shape_meta_and_determinism():
    a, b = mpc.data.load("underflow"), mpc.data.load("underflow")
    assert "underflow" in mpc.data.available()
    assert a.x_train.shape == (1408, 64) and a.x_test.shape == (1797 - 1408, 64)
    assert len(a.x_train) % 64 == 0  # every batch of 64 is full
    assert a.meta["loss_weight"] == 2.0**-20 and a.meta["flush_batch_size"] == 32
    np.testing.assert_array_equal(a.x_train, b.x_train)
    assert not np.array_equal(a.y_train, mpc.data.load("underflow", seed=1).y_train)


def test_underflow_design_every_logit_gradient_flushes_in_fp16():
    w = mpc.data.load("underflow").meta["loss_weight"]
    b = underflow_batch_threshold(w)
    largest = w / b  # |p - onehot| <= 1, divided by the batch
    assert mpc.formats.round_to(largest, "fp16") == 0.0
    assert mpc.formats.round_to(w / (b - 1), "fp16") > 0.0  # the threshold is tight
    assert mpc.formats.round_to(largest * 2.0**16, "fp16") > 0.0  # a scale of 2^16 rescues it


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"loss_weight": 0.0}, "loss_weight"),
        ({"loss_weight": float("inf")}, "loss_weight"),
        ({"n_train": 5}, "n_train"),
    ],
)
def test_underflow_dataset_rejects_bad_options(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mpc.data.load("underflow", **kwargs)


def test_unscaled_fp16_stalls_and_scaling_rescues_on_torch():
    task = mpc.data.load("underflow")
    cfg = mpc.TrainConfig(lr=3e-3)
    res = runs.compare(
        task,
        {
            "fp32": cfg,
            "none": cfg.replace(precision="fp16", loss_scale="none"),
            "static": cfg.replace(precision="fp16", loss_scale=2.0**16),
        },
        device="cpu",
        steps=22,
    )
    assert np.all(res["none"].history.grad_norms == 0)
    assert np.all(res["fp32"].history.grad_norms > 0)
    assert res["none"].test_loss > res["fp32"].test_loss + 0.1
    assert abs(res["static"].test_loss - res["fp32"].test_loss) < 0.03 * res["fp32"].test_loss
    # Run.losses divides the weight back out: nats, near ln(10) at the start
    assert abs(res["fp32"].losses[0] - np.log(10)) < 0.2


def test_cross_entropy_weight_and_errors():
    from mpcourse.engines.losses import cross_entropy

    out, y = torch.randn(8, 10), torch.randint(0, 10, (8,))
    ref = torch.nn.functional.cross_entropy(out, y)
    assert torch.allclose(cross_entropy("torch", 0.5)(out, y), 0.5 * ref)
    with pytest.raises(ValueError, match="weight must be a finite number > 0"):
        cross_entropy("torch", -1.0)
    with pytest.raises(ValueError, match="unknown backend 'jax'"):
        cross_entropy("jax")


def test_cross_entropy_mlx_matches_torch():
    mx = pytest.importorskip("mlx.core")
    from mpcourse.engines.losses import cross_entropy

    out = np.random.default_rng(0).standard_normal((8, 10)).astype(np.float32)
    y = np.arange(8) % 10
    a = float(cross_entropy("mlx", 0.25)(mx.array(out), mx.array(y)))
    b = float(cross_entropy("torch", 0.25)(torch.from_numpy(out), torch.from_numpy(y)))
    assert a == pytest.approx(b, rel=1e-5)


def test_missing_reason_is_the_one_availability_check():
    from mpcourse.engines import missing_reason

    assert missing_reason("torch") is None
    with pytest.raises(ValueError, match="unknown backend"):
        missing_reason("tf")


def test_batch_gradients_leave_the_engine_untouched_and_match_a_step():
    from mpcourse.engines.torch.inspect import batch_gradients, op_dtypes, parameters

    ds = mpc.data.load("digits")
    eng = mpc.make_engine(
        "torch",
        "mlp",
        mpc.TrainConfig(precision="fp16", optimizer="sgd", momentum=0.0, lr=0.1, loss_scale="none"),
        device="cpu",
        data=ds,
        verbose=False,
    )
    before = parameters(eng)
    g = batch_gradients(eng, ds.x_train[:64], ds.y_train[:64])
    assert all(np.array_equal(before[k], v) for k, v in parameters(eng).items())
    assert set(g) == set(before) and all(v.dtype == np.float64 for v in g.values())
    assert all(p.grad is None for p in eng.model.parameters())
    ops = op_dtypes(eng, ds.x_train[:4], ds.y_train[:4], unique=True)
    out = {r["op"]: r["output"] for r in ops}
    assert out["addmm"] == "float16" and out["_log_softmax"] == "float32"
    assert sum(r["count"] for r in ops) == len(op_dtypes(eng, ds.x_train[:4], ds.y_train[:4]))
    with pytest.raises(TypeError, match="torch engine"):
        batch_gradients(object(), ds.x_train[:4], ds.y_train[:4])


def test_running_sum_and_subtract():
    s = numerics.running_sum([1e-4] * 10_000, "fp16")
    assert s[-1] == 0.25 and len(s) == 10_000
    assert abs(numerics.running_sum([1e-4] * 10_000, "fp32")[-1] - 1.0) < 1e-3
    # 1 + 2048 = 2049 is a tie between 2048 and 2050: it rounds to even (2048), and so does 2048 + 1
    assert numerics.running_sum([1.0, 2048.0, 1.0], "fp16").tolist() == [1.0, 2048.0, 2048.0]
    assert numerics.running_sum([1.0, 2048.0, 1.0], "fp32").tolist() == [1.0, 2049.0, 2050.0]
    r = numerics.subtract(1.001, 1.0, "bf16")
    assert r["stored"] == 0.0 and r["rel error"] == 1.0
    assert numerics.subtract(1.001, 1.0, "fp32")["rel error"] < 1e-4
