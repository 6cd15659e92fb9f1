"""The torch engine's fast path (fused optimizer) against the standard path."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import mpcourse as mpc  # noqa: E402
from mpcourse.engines.torch.engine import use_fused  # noqa: E402


def _data(n: int = 192, features: int = 64) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.standard_normal((n, features)).astype(np.float32), rng.integers(0, 10, n)


class _InfAt:
    """Cross-entropy whose loss is multiplied by inf on the chosen calls (non-finite grads)."""

    def __init__(self, bad_calls: set[int]) -> None:
        self.calls, self.bad = 0, bad_calls

    def __call__(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = torch.nn.functional.cross_entropy(out.float(), y)
        self.calls += 1
        return loss * float("inf") if self.calls - 1 in self.bad else loss


def _run(fused: bool, **cfg: object) -> tuple[mpc.History, dict[str, torch.Tensor]]:
    config = mpc.TrainConfig(batch_size=32, fused=fused, **cfg)  # type: ignore[arg-type]
    eng = mpc.make_engine("torch", "mlp", config, device="cpu", loss_fn=_InfAt({2, 5, 6}), verbose=False)
    assert eng.fused is fused
    hist = eng.fit(_data(), steps=12, progress=False)
    return hist, {k: v.clone() for k, v in eng.model.state_dict().items()}


@pytest.mark.parametrize(
    "cfg",
    [
        {"precision": "fp16", "loss_scale": "dynamic", "growth_interval": 3, "optimizer": "adam"},
        {"precision": "fp16", "loss_scale": "dynamic", "growth_interval": 2, "optimizer": "adamw"},
        {"precision": "bf16", "loss_scale": "dynamic", "growth_interval": 4, "optimizer": "sgd"},
        {"precision": "fp16", "loss_scale": 1024.0, "optimizer": "adam"},  # mpcourse's own scaler
    ],
)
def test_fused_matches_standard_path(cfg: dict[str, object]) -> None:
    (h_std, w_std), (h_fused, w_fused) = _run(False, **cfg), _run(True, **cfg)
    # The same skip decisions and the same scale trajectory, step for step.
    assert h_std.column("found_inf").tolist() == h_fused.column("found_inf").tolist()
    assert h_std.column("skipped").tolist() == h_fused.column("skipped").tolist()
    assert h_fused.column("skipped")[[2, 5, 6]].all() and h_fused.skipped_steps == 3
    np.testing.assert_array_equal(h_std.scales, h_fused.scales)
    finite = np.isfinite(h_std.losses)
    np.testing.assert_allclose(h_fused.losses[finite], h_std.losses[finite], rtol=1e-4, atol=1e-5)
    for name in w_std:
        torch.testing.assert_close(w_fused[name], w_std[name], rtol=1e-4, atol=1e-5)


def test_fused_skip_leaves_parameters_and_adam_step_alone() -> None:
    cfg = mpc.TrainConfig(precision="fp16", loss_scale="dynamic", batch_size=32, fused=True)
    eng = mpc.make_engine("torch", "mlp", cfg, device="cpu", loss_fn=_InfAt({1}), verbose=False)
    x, y = _data()
    eng.train_step(x[:32], y[:32])
    before = {k: v.clone() for k, v in eng.model.state_dict().items()}
    steps_before = [s["step"].item() for s in eng.optimizer.state.values()]
    rec = eng.train_step(x[32:64], y[32:64])
    assert rec.skipped and rec.found_inf and rec.scale == 2.0**16
    for k, v in eng.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [s["step"].item() for s in eng.optimizer.state.values()] == steps_before
    assert eng.scale == 2.0**15


def test_use_fused_choices() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert use_fused(None, cuda) is True and use_fused(None, cpu) is False
    assert use_fused(False, cuda) is False and use_fused(True, cpu) is True
    with pytest.raises(TypeError, match="fused"):
        mpc.TrainConfig(fused="yes")  # type: ignore[arg-type]


def test_default_cpu_engine_keeps_standard_optimizer() -> None:
    eng = mpc.make_engine("torch", "mlp", mpc.TrainConfig(), device="cpu", verbose=False)
    assert eng.fused is False and not eng.optimizer.defaults.get("fused")
    assert eng.describe()["config"]["fused"] is None
