"""The AMP recipe's practices (engines/torch/recipes.py), each checked against plain torch."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from mpcourse.engines.torch import recipes  # noqa: E402


def _setup(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(12, 8), torch.randint(0, 3, (12,))
    return model, opt, x, y


def _loss(model, x, y):
    with torch.autocast("cpu", dtype=torch.float16):
        out = model(x)
    return torch.nn.functional.cross_entropy(out.float(), y)


def test_clipped_step_clips_the_unscaled_gradients() -> None:
    model, opt, x, y = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    norm = recipes.clipped_step(model, opt, scaler, _loss(model, x, y), max_norm=1e-3)
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert norm > 1e-3 and grads.norm().item() == pytest.approx(1e-3, rel=1e-3)  # unscaled, then clipped
    assert scaler.get_scale() == 2.0**10  # a finite step: no back-off


def test_accumulated_step_equals_one_full_batch_step() -> None:
    model_a, opt_a, x, y = _setup()
    model_b, opt_b, _, _ = _setup()
    scaler_a, scaler_b = torch.amp.GradScaler("cpu"), torch.amp.GradScaler("cpu")
    ce = torch.nn.functional.cross_entropy
    recipes.accumulated_step(model_a, opt_a, scaler_a, [(x[:6], y[:6]), (x[6:], y[6:])], ce, device_type="cpu")
    recipes.accumulated_step(model_b, opt_b, scaler_b, [(x, y)], ce, device_type="cpu")
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.allclose(a, b, atol=1e-3)  # fp16 compute: equal up to its rounding
    with pytest.raises(ValueError, match="at least one micro-batch"):
        recipes.accumulated_step(model_a, opt_a, scaler_a, [], ce, device_type="cpu")


def test_autocast_predict_in_bf16_without_gradients() -> None:
    model, _, x, _ = _setup()
    out = recipes.autocast_predict(model, x, device_type="cpu")
    assert out.dtype == torch.bfloat16 and not out.requires_grad and model.training
    assert torch.allclose(out.float(), model(x), atol=0.05)


def test_in_fp32_and_the_custom_fwd_op_run_in_fp32_under_autocast() -> None:
    h = torch.randn(4, 5, dtype=torch.float16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.float16):
        assert recipes.in_fp32(torch.exp, h).dtype == torch.float32
        out = recipes.Fp32Softmax.apply(h)
    assert out.dtype == torch.float32
    out[:, 0].sum().backward()
    ref = h.detach().float().requires_grad_()
    torch.softmax(ref, dim=-1)[:, 0].sum().backward()
    assert torch.allclose(h.grad.float(), ref.grad, atol=1e-3)


def test_checkpoint_round_trips_the_scaler_and_refuses_a_partial_state() -> None:
    model, opt, x, y = _setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=4096.0, growth_interval=1)
    recipes.clipped_step(model, opt, scaler, _loss(model, x, y), max_norm=10.0)
    state = recipes.checkpoint(model, opt, scaler)
    m2, o2, _, _ = _setup(seed=1)
    s2 = torch.amp.GradScaler("cpu")
    recipes.restore(state, m2, o2, s2)
    assert s2.get_scale() == scaler.get_scale() == 8192.0  # grew once after one good step
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), m2.parameters()))
    with pytest.raises(ValueError, match="lacks \\['scaler'\\]"):
        recipes.restore({"model": state["model"], "optimizer": state["optimizer"]}, m2, o2, s2)
