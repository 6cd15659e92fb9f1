"""What each framework version cannot do, judged from versions fed in (no Mac or GPU needed)."""

from __future__ import annotations

import pytest

from mpcourse.engines.limits import dotted, parse_version
from mpcourse.engines.mlx import support as mlx_support
from mpcourse.engines.torch import support as torch_support


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("2.8.0+cpu", (2, 8, 0)), ("14.5", (14, 5)), ("2.13.0.dev20261101", (2, 13, 0)), ("", ()), (None, ())],
)
def test_parse_version(text, parsed):
    assert parse_version(text) == parsed
    assert dotted(parsed) == ("" if not parsed else ".".join(map(str, parsed)))


def test_old_torch_on_mps_blocks_fp16_and_bf16_and_says_why():
    assert "torch 2.5" in torch_support.precision_problem("mps", "fp16", torch_version="2.4.1", macos="14.4")
    assert "torch 2.6" in torch_support.precision_problem("mps", "bf16", torch_version="2.5.1", macos="14.4")
    assert torch_support.precision_problem("mps", "fp16", torch_version="2.5.1", macos="14.4") is None
    assert torch_support.precision_problem("mps", "fp32", torch_version="2.4.1", macos="13.6") is None


def test_bf16_on_mps_needs_macos_14_whatever_the_torch():
    problem = torch_support.precision_problem("mps", "bf16", torch_version="2.13.0", macos="13.6")
    assert problem and "macOS 14" in problem and "13.6" in problem
    assert torch_support.precision_problem("mps", "bf16", torch_version="2.13.0", macos="14.0") is None


def test_grad_scaler_on_mps_from_torch_2_8_and_everywhere_else():
    assert not torch_support.grad_scaler_works("mps", torch_version="2.7.1")
    assert torch_support.grad_scaler_works("mps", torch_version="2.8.0")
    assert torch_support.grad_scaler_works("cuda", torch_version="2.0.0")
    notes = [
        lim.message for lim in torch_support.limits("mps", torch_version="2.7.1", macos="15.1") if not lim.blocking
    ]
    assert any("GradScaler" in m and "mpcourse's own loss scaler" in m for m in notes)
    assert any("#153957" in m for m in notes)  # the open gradient-correctness reports, in every version


def test_cpu_and_cuda_have_no_version_limits_and_new_versions_on_mps_only_notes():
    assert torch_support.limits("cpu", torch_version="2.0.0", macos="13.0") == []
    assert torch_support.limits("cuda:0", torch_version="2.0.0", macos=None) == []
    assert all(not lim.blocking for lim in torch_support.limits("mps", torch_version="2.13.0", macos="15.2"))


def test_the_engine_uses_its_own_scaler_where_grad_scaler_fails(monkeypatch):
    torch = pytest.importorskip("torch")
    import mpcourse as mpc
    from mpcourse.engines.torch import scaling

    cfg = mpc.TrainConfig(precision="fp16")
    assert scaling.make_scaling(cfg, torch.device("cpu"), False).kind == "grad_scaler"
    monkeypatch.setattr(scaling, "grad_scaler_works", lambda device_type: False)
    assert scaling.make_scaling(cfg, torch.device("cpu"), False).kind == "dynamic"


def test_the_torch_engine_refuses_what_its_version_cannot_do(monkeypatch):
    pytest.importorskip("torch")
    import mpcourse as mpc
    from mpcourse.engines import DeviceUnavailableError
    from mpcourse.engines.torch import engine

    monkeypatch.setattr(engine, "precision_problem", lambda device, precision: "planted: no bf16 here")
    with pytest.raises(DeviceUnavailableError, match="bf16 on cpu: planted: no bf16 here"):
        mpc.make_engine("torch", "mlp", mpc.TrainConfig(precision="bf16"), device="cpu", verbose=False)


def test_mlx_metal_needs_macos_14_and_notes_bf16_speed():
    problem = mlx_support.precision_problem("gpu", "fp16", mlx_version="0.32.4", macos="13.6", gpu_backend="metal")
    assert problem and "macOS 14" in problem
    assert mlx_support.precision_problem("gpu", "bf16", mlx_version="0.32.4", macos="14.6", gpu_backend="metal") is None
    notes = mlx_support.limits("gpu", mlx_version="0.32.4", macos="14.6", gpu_backend="metal")
    assert any(lim.precision == "bf16" and "mlx-examples#186" in lim.message for lim in notes)


def test_mlx_without_a_gpu_backend_says_how_to_get_one_and_the_cpu_always_runs():
    problem = mlx_support.precision_problem("gpu", "fp16", mlx_version="0.32.4", macos=None, gpu_backend="none")
    assert problem and "mlx[cuda12]" in problem
    assert mlx_support.limits("cpu", mlx_version="0.32.4", macos=None, gpu_backend="none") == []
    assert not mlx_support.precision_problem("gpu", "bf16", mlx_version="0.32.4", macos=None, gpu_backend="cuda")


def test_installed_versions_are_read_here():
    tv, mac = torch_support.installed_versions()
    assert tv is None or parse_version(tv) >= (2,)
    mv, mac2, backend = mlx_support.installed_versions()
    assert backend in ("metal", "cuda", "none") and mac == mac2


def test_the_mlx_engine_refuses_what_its_version_cannot_do(monkeypatch):
    import mpcourse as mpc

    if mpc.engines.missing_reason("mlx") is not None:
        pytest.skip(mpc.engines.missing_reason("mlx"))
    from mpcourse.engines import DeviceUnavailableError
    from mpcourse.engines.mlx import engine

    monkeypatch.setattr(engine, "precision_problem", lambda device, precision: f"planted: no {precision}")
    with pytest.raises(DeviceUnavailableError, match="fp16 on mlx cpu: planted: no fp16"):
        mpc.make_engine("mlx", "mlp", mpc.TrainConfig(precision="fp16"), device="cpu", verbose=False)
