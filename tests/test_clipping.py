"""Clipping: the policies' validation and numpy rules, and their torch and MLX implementations.

The oracles: ``torch.nn.utils.clip_grad_norm_`` / ``clip_grad_value_`` for norm and value
clipping, a direct per-unit numpy loop of the paper's formula for AGC, ``numpy.percentile``
of the recorded norms for AutoClip. Every backend test runs on the engine's own gradients.
"""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pytest

import mpcourse as mpc
from mpcourse.clipping import (
    AGC,
    AutoClip,
    ClipByNorm,
    ClipByValue,
    NormHistory,
    autoclip_thresholds,
    norm_clip_coef,
    total_norm,
    unitwise_norm,
)

torch = pytest.importorskip("torch")

MLX_ENGINE_MISSING = "the MLX engine (mpcourse/engines/mlx/engine.py) is not on this branch yet"


# --- backend adapters: the engine's own gradients, in and out of apply_clip ------------------
class TorchSide:
    name = "torch"

    def grads(self, eng, x, y):
        eng.optimizer.zero_grad(set_to_none=True)
        eng.forward_loss(*eng.tensors(x, y)).backward()
        named = [(n, p) for n, p in eng.model.named_parameters() if p.grad is not None]
        grads = [p.grad for _, p in named]
        from mpcourse.engines.torch.scaling import total_norm

        return [n for n, _ in named], [p.detach().numpy().copy() for _, p in named], grads, total_norm(grads)

    def numpy(self, grads):
        return [g.detach().numpy().copy() for g in grads]

    def clip(self, policy, eng, grads, norm):
        from mpcourse.engines.torch.clip import apply_clip

        return grads, apply_clip(policy, eng, grads, norm)

    def params(self, eng):
        return {n: p.detach().numpy().copy() for n, p in eng.model.named_parameters()}

    def order_effect(self, *args, **kw):
        from mpcourse.engines.torch.wrong_order import clip_order_effect

        return clip_order_effect(*args, **kw)


class MLXSide:
    name = "mlx"

    def grads(self, eng, x, y):
        from mlx.utils import tree_flatten

        _, grads, norm, _ = eng.batch_gradients(x, y, scale=1.0)
        weights = dict(tree_flatten(eng.master_params))
        names = [n for n, _ in tree_flatten(grads)]
        return names, [np.array(weights[n]) for n in names], grads, norm

    def numpy(self, grads):
        from mlx.utils import tree_flatten

        return [np.array(g) for _, g in tree_flatten(grads)]

    def clip(self, policy, eng, grads, norm):
        from mpcourse.engines.mlx.clip import apply_clip

        return apply_clip(policy, eng, grads, norm)

    def params(self, eng):
        from mlx.utils import tree_flatten

        return {n: np.array(v) for n, v in tree_flatten(eng.master_params)}

    def order_effect(self, *args, **kw):
        from mpcourse.engines.mlx.wrong_order import clip_order_effect

        return clip_order_effect(*args, **kw)


@pytest.fixture(params=["torch", "mlx"])
def side(request):
    if request.param == "mlx":
        pytest.importorskip("mlx.core")
        if importlib.util.find_spec("mpcourse.engines.mlx.engine") is None:
            pytest.skip(MLX_ENGINE_MISSING)
        return MLXSide()
    return TorchSide()


def _engine(side, digits, model="mlp", **cfg):
    cfg.setdefault("precision", "fp32")
    return mpc.make_engine(side.name, model, mpc.TrainConfig(**cfg), device="cpu", data=digits, verbose=False)


def _torch_params(arrays):
    params = [torch.nn.Parameter(torch.zeros(a.shape)) for a in arrays]
    for p, a in zip(params, arrays):
        p.grad = torch.tensor(a)
    return params


# --- bad input --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: ClipByNorm(0.0), "max_norm"),
        (lambda: ClipByNorm(-1.0), "max_norm"),
        (lambda: ClipByNorm(math.inf), "max_norm"),
        (lambda: ClipByNorm(math.nan), "max_norm"),
        (lambda: ClipByNorm(1.0, norm_type="fro"), "norm_type"),
        (lambda: ClipByNorm(1.0, norm_type=0.5), "norm_type"),
        (lambda: ClipByNorm(1.0, norm_type=0), "norm_type"),
        (lambda: ClipByNorm(1.0, norm_type=-math.inf), "norm_type"),
        (lambda: ClipByValue(0), "clip_value"),
        (lambda: ClipByValue(-0.5), "clip_value"),
        (lambda: AGC(clipping=0.0), "clipping"),
        (lambda: AGC(clipping=-0.01), "clipping"),
        (lambda: AGC(eps=0.0), "eps"),
        (lambda: AutoClip(percentile=0), r"\(0, 100\]"),
        (lambda: AutoClip(percentile=-5), r"\(0, 100\]"),
        (lambda: AutoClip(percentile=100.5), r"\(0, 100\]"),
        (lambda: AutoClip(percentile=math.nan), r"\(0, 100\]"),
        (lambda: AutoClip(percentile=10, history=0), "history"),
    ],
)
def test_bad_values_are_refused_with_a_clear_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_types_are_refused():
    with pytest.raises(TypeError, match="max_norm"):
        ClipByNorm("1.0")
    with pytest.raises(TypeError, match="clip_value"):
        ClipByValue(True)
    with pytest.raises(TypeError, match="percentile"):
        AutoClip(percentile="10")
    with pytest.raises(TypeError, match="exclude"):
        AGC(exclude="head")
    with pytest.raises(TypeError, match="clip must be None or a policy"):
        mpc.TrainConfig(clip=1.0)


def test_valid_edges_are_accepted():
    assert AutoClip(percentile=100).percentile == 100.0
    assert ClipByNorm(1, norm_type="inf").norm_type == math.inf
    assert ClipByNorm(2, norm_type=1).max_norm == 2.0
    cfg = mpc.TrainConfig(precision="fp16", clip=AGC(exclude=("head",)))
    assert cfg.to_dict()["clip"] == "AGC(clipping=0.01, eps=0.001, exclude=('head',))"


# --- the numpy rules --------------------------------------------------------------------------
def test_numpy_rules_match_torch_utils():
    rng = np.random.default_rng(0)
    grads = [rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(5,)).astype(np.float32)]
    for p in (1.0, 2.0, 3.0, math.inf):
        ref = _torch_params(grads)
        pre = torch.nn.utils.clip_grad_norm_(ref, max_norm=0.5, norm_type=p)
        assert total_norm(grads, p) == pytest.approx(float(pre), rel=1e-6)
        out, acted = ClipByNorm(0.5, norm_type=p).apply_numpy(grads)
        assert acted
        for o, r in zip(out, ref):
            np.testing.assert_allclose(o, r.grad.numpy(), rtol=1e-6)
    ref = _torch_params(grads)
    torch.nn.utils.clip_grad_value_(ref, clip_value=0.3)
    out, acted = ClipByValue(0.3).apply_numpy(grads)
    assert acted
    for o, r in zip(out, ref):
        np.testing.assert_array_equal(o, r.grad.numpy())
    assert ClipByNorm(100.0).apply_numpy(grads)[1] is False
    assert ClipByValue(100.0).apply_numpy(grads)[1] is False
    assert norm_clip_coef(0.5, 1.0) == 1.0 and norm_clip_coef(4.0, 1.0) == pytest.approx(0.25)


def test_unitwise_norm_is_per_output_unit():
    w = np.array([[3.0, 4.0], [0.0, 1.0]])
    np.testing.assert_allclose(unitwise_norm(w), [[5.0], [1.0]])
    assert float(unitwise_norm(np.array([3.0, 4.0]))) == 5.0  # a vector is one unit
    conv = np.arange(2 * 3 * 2 * 2, dtype=float).reshape(2, 3, 2, 2)
    np.testing.assert_allclose(unitwise_norm(conv).ravel(), [np.linalg.norm(conv[0]), np.linalg.norm(conv[1])])


def test_norm_history_window_and_state_round_trip():
    h = AutoClip(percentile=50, history=3).new_state()
    for n in (1.0, 2.0, 3.0, 10.0):
        h.observe(n)
    np.testing.assert_array_equal(h.norms, [2.0, 3.0, 10.0])  # the oldest one fell out
    assert h.threshold == 3.0
    h2 = NormHistory(50, 3)
    h2.load_state_dict(h.state_dict())
    assert h2.observe(4.0) == h.observe(4.0) == 4.0  # [3, 10, 4] -> median 4
    with pytest.raises(ValueError, match="finite"):
        h.observe(math.inf)
    norms = [5.0, math.inf, 1.0, 3.0, math.nan, 2.0]
    thr = autoclip_thresholds(norms, 25)
    finite = [5.0, 1.0, 3.0, 2.0]
    expect = [
        np.percentile(finite[:1], 25),
        np.percentile(finite[:1], 25),
        np.percentile(finite[:2], 25),
        np.percentile(finite[:3], 25),
        np.percentile(finite[:3], 25),
        np.percentile(finite[:4], 25),
    ]
    np.testing.assert_allclose(thr, expect)


# --- each engine against the oracles, on the engine's own gradients ---------------------------
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf])
def test_norm_clipping_matches_clip_grad_norm(side, digits, norm_type):
    eng = _engine(side, digits, "cnn")
    x, y = digits.x_train[:16], digits.y_train[:16]
    _, _, grads, norm = side.grads(eng, x, y)
    before = side.numpy(grads)
    pre = total_norm(before, norm_type)
    ref = _torch_params(before)
    ref_pre = torch.nn.utils.clip_grad_norm_(ref, max_norm=0.3 * pre, norm_type=norm_type)
    assert float(ref_pre) == pytest.approx(pre, rel=1e-5)
    out, acted = side.clip(ClipByNorm(0.3 * pre, norm_type=norm_type), eng, grads, norm)
    assert acted
    for o, r in zip(side.numpy(out), ref):
        np.testing.assert_allclose(o, r.grad.numpy(), rtol=1e-5, atol=1e-9)
    assert total_norm(side.numpy(out), norm_type) == pytest.approx(0.3 * pre, rel=1e-4)
    # A threshold above the norm leaves the gradients exactly as they were.
    _, _, grads, norm = side.grads(eng, x, y)
    out, acted = side.clip(ClipByNorm(2 * pre, norm_type=norm_type), eng, grads, norm)
    assert not acted
    for o, b in zip(side.numpy(out), before):
        np.testing.assert_allclose(o, b, rtol=1e-6)


def test_value_clipping_matches_clip_grad_value(side, digits):
    eng = _engine(side, digits, "cnn")
    _, _, grads, norm = side.grads(eng, digits.x_train[:16], digits.y_train[:16])
    before = side.numpy(grads)
    v = float(np.quantile(np.abs(np.concatenate([b.ravel() for b in before])), 0.9))
    ref = _torch_params(before)
    torch.nn.utils.clip_grad_value_(ref, clip_value=v)
    out, acted = side.clip(ClipByValue(v), eng, grads, norm)
    assert acted
    out = side.numpy(out)
    for o, r in zip(out, ref):
        np.testing.assert_allclose(o, r.grad.numpy(), rtol=1e-6)
    assert max(np.abs(o).max() for o in out) <= np.float32(v)


def _agc_by_the_paper(names, params, grads, lam, eps, exclude=()):
    """Brock et al. 2021, eq. 3, one unit at a time: a row of a weight / an output filter, or a
    whole bias or gain vector."""
    out = []
    for name, w, g in zip(names, params, grads):
        g = g.astype(np.float64).copy()
        if any(name.startswith(e + ".") for e in exclude):
            out.append(g)
            continue
        units = [slice(None)] if w.ndim <= 1 else range(w.shape[0])
        for i in units:
            w_norm = max(np.sqrt(np.sum(w[i].astype(np.float64) ** 2)), eps)
            g_norm = np.sqrt(np.sum(g[i] ** 2))
            if g_norm / w_norm > lam:
                g[i] = lam * w_norm / g_norm * g[i]
        out.append(g)
    return out


@pytest.mark.parametrize("exclude", [(), ("head",)])
def test_agc_matches_the_papers_formula(side, digits, exclude):
    eng = _engine(side, digits, "cnn")  # conv filters, BatchNorm gains and biases, a linear head
    names, params, grads, norm = side.grads(eng, digits.x_train[:16], digits.y_train[:16])
    before = side.numpy(grads)
    policy = AGC(clipping=0.01, eps=1e-3, exclude=exclude)
    expect = _agc_by_the_paper(names, params, before, 0.01, 1e-3, exclude)
    out, acted = side.clip(policy, eng, grads, norm)
    assert acted
    out = side.numpy(out)
    changed = 0
    for name, o, e, b in zip(names, out, expect, before):
        np.testing.assert_allclose(o, e, rtol=1e-5, atol=1e-10, err_msg=name)
        changed += not np.allclose(o, b)
        if exclude and name.startswith("head."):
            np.testing.assert_array_equal(o, b)
    assert changed >= 2
    ref_np, acted_np = policy.apply_numpy(before, params, names)  # the library's numpy rule too
    assert acted_np
    for o, r in zip(out, ref_np):
        np.testing.assert_allclose(o, r, rtol=1e-5, atol=1e-10)


def test_autoclip_threshold_is_the_percentile_of_recorded_norms(side, digits):
    eng = _engine(side, digits, "mlp", clip=AutoClip(percentile=25))
    seen = []
    hist = eng.fit(digits, steps=15, callback=lambda e, r: seen.append(e.clip_state.threshold))
    norms = hist.grad_norms
    np.testing.assert_allclose(eng.clip_state.norms, norms, rtol=1e-6)
    for k in range(len(norms)):
        thr = np.percentile(norms[: k + 1], 25)
        assert seen[k] == pytest.approx(thr, rel=1e-6)
        assert hist[k].clipped == (norms[k] > thr)
    assert hist.column("clipped").sum() >= 5
    np.testing.assert_allclose(autoclip_thresholds(norms, 25), seen, rtol=1e-6)


def test_autoclip_history_survives_state_dict(side, digits):
    cfg = dict(precision="fp16", clip=AutoClip(percentile=10))
    a = _engine(side, digits, "mlp", **cfg)
    full = a.fit(digits, steps=12)
    b = _engine(side, digits, "mlp", **cfg)
    first = b.fit(digits, steps=6)
    c = _engine(side, digits, "mlp", **cfg)
    c.load_state_dict(b.state_dict())
    assert len(c.clip_state) == 6
    rest = c.fit(digits, steps=6)
    np.testing.assert_array_equal(np.concatenate([first.grad_norms, rest.grad_norms]), full.grad_norms)
    np.testing.assert_array_equal(c.clip_state.norms, a.clip_state.norms)
    assert c.clip_state.threshold == a.clip_state.threshold


def test_non_finite_steps_are_never_clipped(side, digits):
    # A scale of 2**28 overflows fp16's backward; the scaler backs off until steps are finite.
    eng = _engine(
        side, digits, "mlp", precision="fp16", init_scale=2.0**28, backoff_factor=0.25, clip=AutoClip(percentile=50)
    )
    hist = eng.fit(digits, steps=12)
    found = hist.column("found_inf")
    assert found.any() and (~found).any()
    assert not hist.column("clipped")[found].any()
    assert len(eng.clip_state) == int((~found).sum())  # the inf norms never entered the history
    np.testing.assert_allclose(eng.clip_state.norms, hist.grad_norms[~found], rtol=1e-6)


def test_engine_clips_after_unscaling(side, digits):
    """One fp16 step with SGD: the update is lr * (the unscaled gradient clipped to max_norm).
    Clipping the scaled gradient would make it 65536 times shorter."""
    lr, max_norm = 0.1, 0.02
    eng = _engine(
        side, digits, "mlp", precision="fp16", optimizer="sgd", momentum=0.0, lr=lr, clip=ClipByNorm(max_norm)
    )
    before = side.params(eng)
    rec = eng.train_step(digits.x_train[:64], digits.y_train[:64])
    after = side.params(eng)
    step = math.sqrt(sum(float(np.sum((after[k].astype(np.float64) - before[k]) ** 2)) for k in before))
    assert rec.scale == 2.0**16 and not rec.found_inf
    assert rec.grad_norm > 5 * max_norm  # the record keeps the norm before clipping
    assert rec.clipped
    assert step / lr == pytest.approx(max_norm, rel=2e-3)


@pytest.mark.parametrize("policy", [ClipByNorm(1.0), ClipByValue(1e-3)])
def test_clip_before_unscale_bug_is_measured(side, digits, policy):
    eng = _engine(side, digits, "mlp", precision="fp16")
    r = side.order_effect(eng, digits.x_train[:64], digits.y_train[:64], policy)
    assert r["scale"] == 2.0**16
    if isinstance(policy, ClipByNorm):
        # Right: min(norm, 1). Wrong: the scaled norm is cut to 1, then divided by 65536.
        assert r["norm_correct"] == pytest.approx(min(r["grad_norm"], 1.0), rel=1e-4)
        assert r["norm_wrong"] == pytest.approx(1.0 / 2.0**16, rel=1e-4)
        assert r["shrink"] > 1e4
        assert r["cosine"] == pytest.approx(1.0, abs=1e-6)  # same direction, wrong length
    else:
        # Wrong: every element of the scaled gradient is above 1e-3, so all become +-1e-3/65536.
        assert r["shrink"] > 100
        assert r["cosine"] < 0.95  # and the direction is bent to sign(g)


def test_clip_before_unscale_engine_barely_moves(digits):
    from mpcourse.engines.torch.wrong_order import ClipBeforeUnscaleEngine

    cfg = mpc.TrainConfig(precision="fp16", optimizer="sgd", momentum=0.0, lr=0.1, clip=ClipByNorm(1.0))
    right = mpc.make_engine("torch", "mlp", cfg, device="cpu", data=digits, verbose=False)
    wrong = ClipBeforeUnscaleEngine("mlp", cfg, device="cpu")
    start = [p.detach().clone() for p in right.model.parameters()]
    h_right, h_wrong = right.fit(digits, steps=10), wrong.fit(digits, steps=10)

    def moved(eng):
        return math.sqrt(sum(float((p.detach() - s).pow(2).sum()) for p, s in zip(eng.model.parameters(), start)))

    assert h_wrong.column("clipped").all()  # every scaled norm is above 1
    assert moved(wrong) < moved(right) / 1000  # ... so the weights barely move
    assert h_wrong.losses[-1] > h_right.losses[-1]
    np.testing.assert_allclose(h_wrong.grad_norms[0], h_right.grad_norms[0], rtol=1e-5)
    with pytest.raises(ValueError, match="fp16"):
        ClipBeforeUnscaleEngine("mlp", cfg.replace(precision="bf16"), device="cpu")
