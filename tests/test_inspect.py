"""What autocast (torch) and the compute copy (MLX) really run in which dtype, measured.

The torch docs' autocast lists (quoted in ``engines/torch/inspect.py``) are checked against the
installed torch on the CPU, where every claim notebook 01 makes about them can be run."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import mpcourse as mpc

HAS_TORCH = importlib.util.find_spec("torch") is not None
HAS_MLX = mpc.engines.missing_reason("mlx") is None


@pytest.fixture(scope="module")
def digits() -> mpc.data.Dataset:
    return mpc.data.load("digits")


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_forward_and_backward_dtypes_with_reasons(digits: mpc.data.Dataset) -> None:
    import torch

    from mpcourse.engines.torch.inspect import op_dtypes

    eng = mpc.make_engine(
        "torch", "transformer", mpc.TrainConfig(precision="fp16"), device="cpu", data=digits, verbose=False
    )
    before = {n: p.detach().clone() for n, p in eng.model.named_parameters()}
    rows = op_dtypes(eng, digits.x_test[:8], digits.y_test[:8], backward=True)
    assert {r["phase"] for r in rows} == {"forward", "backward"}
    assert rows.index(next(r for r in rows if r["phase"] == "backward")) > max(
        i for i, r in enumerate(rows) if r["phase"] == "forward"
    )  # forward first, then backward
    fwd = {(r["op"], r["inputs"]): r for r in rows if r["phase"] == "forward"}
    assert fwd[("addmm", "float16, float16, float16")]["reason"] == "autocast's 16-bit list (cpu)"
    assert fwd[("add", "float16, float32")]["output"] == "float32"
    assert fwd[("add", "float16, float32")]["reason"].startswith("type promotion")
    assert fwd[("native_layer_norm", "float32, float32, float32")]["reason"] == "follows its inputs"
    assert fwd[("nll_loss_forward", "float32, int64")]["reason"] == "autocast's fp32 list (cpu)"
    bwd = [r for r in rows if r["phase"] == "backward"]
    assert any(r["op"] == "mm" and r["output"] == "float16" for r in bwd)  # weight grads of fp16 matmuls
    assert all(p.grad is None for p in eng.model.parameters())  # grads put back as they were
    assert all(torch.equal(before[n], p) for n, p in eng.model.named_parameters())
    unique = op_dtypes(eng, digits.x_test[:8], digits.y_test[:8], backward=True, unique=True)
    assert sum(r["count"] for r in unique) == len(rows)
    with pytest.raises(ValueError, match="needs the labels y"):
        op_dtypes(eng, digits.x_test[:8], backward=True)


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_the_docs_cpu_lists_match_what_cpu_autocast_does(dtype_name: str) -> None:
    import torch
    import torch.nn.functional as F

    from mpcourse.engines.torch.inspect import autocast_list

    dt = getattr(torch, dtype_name)
    x, w = torch.randn(4, 8, dtype=dt), torch.randn(3, 8)
    labels = torch.zeros(4, dtype=torch.long)
    with torch.autocast("cpu", dtype=dt):
        ran = {
            "layer_norm": F.layer_norm(x, (8,)).dtype,
            "softmax": torch.softmax(x, -1).dtype,
            "log_softmax": F.log_softmax(x, -1).dtype,
            "sum": x.sum().dtype,
            "mean": x.mean().dtype,
            "prod": x.prod().dtype,
            "nll_loss": F.nll_loss(x, labels).dtype,
            "mse_loss": F.mse_loss(x, x).dtype,
            "linear": F.linear(x.float(), w).dtype,
        }
    for op, got in ran.items():
        listed = autocast_list(op, "cpu")
        want = {"fp32": torch.float32, "16-bit": dt, None: dt}[listed]
        assert got == want, (op, listed, got)
    assert autocast_list("layer_norm", "cuda") == "fp32" and autocast_list("layer_norm", "cpu") is None
    assert autocast_list("mean", "cuda") is None and autocast_list("sum", "cuda") == "fp32"
    assert autocast_list("linalg_inv", "cpu") == "fp32"  # the CPU list's linalg_* family


@pytest.mark.skipif(not HAS_TORCH, reason="torch is not installed")
def test_torch_fp8_e4m3_cast_saturates_where_ml_dtypes_gives_nan() -> None:
    import torch

    t = torch.tensor([500.0, -1000.0])
    assert t.to(torch.float8_e4m3fn).float().tolist() == [448.0, -448.0]
    assert np.isnan(mpc.formats.round_to(500.0, "fp8_e4m3"))


@pytest.mark.skipif(not HAS_MLX, reason="the MLX engine is not available here")
def test_mlx_records_promotion_of_a_bf16_weight_and_an_fp32_input() -> None:
    import mlx.core as mx
    import mlx.nn as nn

    from mpcourse.engines.mlx.inspect import op_dtypes

    net = nn.Linear(4, 2)
    net.update({"weight": net.weight.astype(mx.bfloat16)})
    (row,) = op_dtypes(net, np.ones((3, 4)))
    assert (row["inputs"], row["params"], row["output"]) == ("float32", "bfloat16, float32", "float32")
    assert row["reason"].startswith("type promotion")
    assert net.weight.dtype == mx.bfloat16  # the model is left as it was


@pytest.mark.skipif(not HAS_MLX, reason="the MLX engine is not available here")
def test_mlx_engine_rows_forward_loss_and_fp32_master_gradients(digits: mpc.data.Dataset) -> None:
    from mpcourse.engines.mlx.inspect import op_dtypes

    eng = mpc.make_engine("mlx", "mlp", mpc.TrainConfig(precision="bf16"), device="cpu", data=digits, verbose=False)
    before = eng.evaluate(digits)
    rows = op_dtypes(eng, digits.x_test[:8], digits.y_test[:8], backward=True)
    fwd = [r for r in rows if r["phase"] == "forward"]
    assert fwd and all(r["output"] == "bfloat16" for r in fwd if r["op"] == "Linear")
    (loss,) = [r for r in rows if r["phase"] == "loss"]
    assert (loss["inputs"], loss["output"]) == ("bfloat16", "float32")
    grads = [r for r in rows if r["phase"] == "backward"]
    assert grads and all(r["params"] == r["output"] == "float32" for r in grads)
    assert eng.evaluate(digits) == before
    with pytest.raises(ValueError, match="needs the labels y"):
        op_dtypes(eng, digits.x_test[:8], backward=True)
    with pytest.raises(TypeError, match="MLX engine or an mlx.nn.Module"):
        op_dtypes("not a model", digits.x_test[:8])
