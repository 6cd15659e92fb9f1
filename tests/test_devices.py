"""Device conformance: every backend:device this machine has, in fp32, fp16 and bf16.

Run::

    python -m pytest tests/test_devices.py -q                 # every device found here
    python -m pytest tests/test_devices.py -q -k "mlx and gpu"  # one device (ids: backend:device-precision)

The test ids are the strings of ``mpc.available_backends()`` (``torch:cpu``, ``torch:cuda``,
``torch:mps``, ``mlx:cpu``, ``mlx:gpu``); a device that is not here is skipped with the reason, and
a precision a device cannot run (by the installed versions' known limits, see
``engines/torch/support.py`` and ``engines/mlx/support.py``) is skipped with that reason. This is
the suite the macOS CI job and a lent GPU run. Each device checks, per precision:

- a zoo model (the MLP on the digits) reaches its accuracy, and tracks fp32 on that device;
- a planted inf is skipped: parameters bit-identical, the dynamic scale backed off;
- resume is bit-exact on that device (state_dict, then the same steps);
- clipping happens after unscaling (the update has the clipped norm, not the norm / scale);
- the fallback switches (fp16 -> bf16 on a real overflow storm; bf16 -> fp32 exactly);
- time per step and memory are measured, where the device has counters;
- the predict phase serves a 16-bit copy of an fp32-trained model there (half the weight bytes).
"""

from __future__ import annotations

import importlib
import math

import numpy as np
import pytest

import mpcourse as mpc
from mpcourse import production as prod
from mpcourse.clipping import ClipByNorm
from mpcourse.engines.losses import cross_entropy
from mpcourse.engines.portable import array_leaves, device_memory_bytes, to_numpy_tree

KNOWN = ("torch:cpu", "torch:cuda", "torch:mps", "mlx:cpu", "mlx:gpu")
PRECISIONS = ("fp32", "fp16", "bf16")


def _absent_reason(target: str) -> str:
    backend, device = target.split(":")
    return mpc.engines.missing_reason(backend) or f"{backend} has no {device} device on this machine"


def _targets() -> list[object]:
    here = mpc.available_backends()
    params: list[object] = [pytest.param(t, id=t) for t in here]
    params += [pytest.param(t, id=t, marks=pytest.mark.skip(reason=_absent_reason(t))) for t in KNOWN if t not in here]
    return params


def _cases() -> list[object]:
    return [
        pytest.param(p.values[0], precision, id=f"{p.id}-{precision}", marks=p.marks)
        for p in _targets()
        for precision in PRECISIONS  # type: ignore[attr-defined]
    ]


def _unsupported(target: str, precision: str) -> str | None:
    backend, device = target.split(":")
    support = importlib.import_module(f"mpcourse.engines.{backend}.support")
    return support.precision_problem(device, precision)


def _engine(target: str, precision: str, *, data=None, loss_fn=None, **cfg):  # type: ignore[no-untyped-def]
    reason = _unsupported(target, precision)
    if reason:
        pytest.skip(reason)
    backend, device = target.split(":")
    config = mpc.TrainConfig(precision=precision, **cfg)
    return mpc.make_engine(backend, "mlp", config, device=device, data=data, loss_fn=loss_fn, verbose=False)


def _leaves(eng, part: str = "") -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """The engine's state as numpy, by path; ``part="params"`` keeps the (master) parameters only."""
    leaves = array_leaves(to_numpy_tree(eng.state_dict()))
    if part == "params":
        return {k: v for k, v in leaves.items() if k.startswith(("framework/model/", "framework/master/"))}
    return leaves


def _equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k], equal_nan=True) for k in a)


def _inf_on_call(backend: str, bad: int):  # type: ignore[no-untyped-def]
    """The engines' cross-entropy, times inf on call number ``bad`` (0-based): a real planted overflow."""
    base = cross_entropy(backend)
    calls = {"n": 0}

    def loss_fn(out, y):  # type: ignore[no-untyped-def]
        loss = base(out, y)
        calls["n"] += 1
        return loss * math.inf if calls["n"] - 1 == bad else loss

    return loss_fn


@pytest.mark.parametrize(("target", "precision"), _cases())
def test_zoo_model_reaches_its_accuracy(target, precision, digits):
    eng = _engine(target, precision, data=digits, lr=3e-3)
    hist = eng.fit(digits, epochs=2)
    acc = eng.evaluate(digits)["accuracy"]
    assert len(hist) == 46 and np.isfinite(hist.losses).all()
    # 0.93 on the CPUs here (torch and mlx, every precision); 0.88 leaves 18 of 360 test images
    # for another device's rounding, while a broken cast or scaler lands near chance (0.10).
    assert acc >= 0.88, (target, precision, acc)


@pytest.mark.parametrize(("target", "precision"), _cases())
def test_planted_inf_is_skipped_with_parameters_unchanged_and_the_scale_backed_off(target, precision, digits):
    backend = target.split(":")[0]
    eng = _engine(target, precision, data=digits, loss_scale="dynamic", loss_fn=_inf_on_call(backend, 2))
    eng.fit(digits, steps=2)
    before, scale = _leaves(eng, "params"), eng.scale
    rec = eng.fit(digits, steps=1)[0]
    assert rec.found_inf and rec.skipped and not math.isfinite(rec.grad_norm)
    assert _equal(before, _leaves(eng, "params")), "a skipped step changed the parameters"
    assert eng.scale == scale * 0.5  # the default backoff_factor
    nxt = eng.fit(digits, steps=1)[0]
    assert not nxt.found_inf and not _equal(before, _leaves(eng, "params"))  # and training goes on


@pytest.mark.parametrize(("target", "precision"), _cases())
def test_resume_is_bit_exact_on_the_device(target, precision, digits):
    cfg = {"growth_interval": 5, "loss_scale": "dynamic" if precision == "fp16" else "none"}
    ref = _engine(target, precision, data=digits, **cfg)
    ref_hist = ref.fit(digits, steps=30)  # crosses an epoch boundary (23 steps) and a scale growth
    a = _engine(target, precision, data=digits, **cfg)
    a.fit(digits, steps=12)
    saved = a.state_dict()
    b = _engine(target, precision, data=digits, **cfg)
    b.load_state_dict(saved)
    hist = b.fit(digits, steps=18)
    assert hist.losses.tolist() == ref_hist.losses[12:].tolist()
    assert _equal(_leaves(ref), _leaves(b)) and b.scale == ref.scale


@pytest.mark.parametrize(("target", "precision"), _cases())
def test_clipping_happens_after_unscaling(target, precision, digits):
    max_norm, lr = 1e-3, 0.1  # far below the gradient norm at initialisation (~0.3): every step clips
    eng = _engine(target, precision, data=digits, optimizer="sgd", momentum=0.0, lr=lr, clip=ClipByNorm(max_norm))
    before = _leaves(eng, "params")
    rec = eng.fit(digits, steps=1)[0]
    step = math.sqrt(sum(float(np.sum((v - before[k]) ** 2)) for k, v in _leaves(eng, "params").items()))
    assert rec.clipped and rec.grad_norm > 100 * max_norm  # the recorded norm is unscaled, before clipping
    # Clipped after unscaling, the SGD step is lr * max_norm long; clipped before, it would be
    # that / scale (65536 in fp16). 5% covers half-precision gradients' rounding on any device.
    assert step == pytest.approx(lr * max_norm, rel=0.05), (eng.scale, step)


@pytest.mark.parametrize(("target", "precision"), _cases())
def test_the_fallback_switches(target, precision, digits):
    backend, device = target.split(":")
    _engine(target, precision)  # skips a precision this device cannot run
    policy = prod.FallbackPolicy(window=5, max_overflow_rate=0.5)
    nxt = policy.next_precision(precision)
    if precision == "fp32":
        assert nxt is None  # the end of the chain: nothing to fall back to
        return
    if precision == "fp16":  # a real storm: raw features overflow every fp16 forward pass
        raw = mpc.data.Dataset("digits x 1e5", digits.x_train * 1e5, digits.y_train, digits.x_test, digits.y_test, 10)
        tr = prod.Trainer(backend, "mlp", mpc.TrainConfig(precision="fp16"), raw, device=device, fallback=policy)
        hist = tr.fit(steps=8)
        assert [(e["step"], e["from"], e["to"]) for e in hist.events] == [(5, "fp16", "bf16")]
        assert tr.engine.config.precision == "bf16" and not any(r.skipped for r in hist.records[5:])
        return
    eng = _engine(target, precision, data=digits, loss_scale="dynamic", loss_fn=_inf_on_call(backend, 0))
    verdict = policy.check(eng.fit(digits, steps=5).records)  # step 0 overflows: 1 of 5 is not enough
    assert verdict is None
    eng2 = _engine(target, precision, data=digits, loss_scale=2.0**200 if precision == "bf16" else 1.0)
    hist = eng2.fit(digits, steps=5)  # 2^200 overflows every gradient, even in bf16's range
    reason, evidence = policy.check(hist.records)
    assert reason == "overflow_rate" and evidence["overflow_rate"] == 1.0
    new = prod.switch_precision(eng2, nxt)
    assert new.config.precision == "fp32" and _equal(_leaves(eng2, "params"), _leaves(new, "params"))
    assert not new.fit(digits, steps=1)[0].found_inf


@pytest.mark.parametrize("target", _targets())
def test_time_and_memory_are_measured_where_the_device_has_counters(target, digits):
    backend, device = target.split(":")
    bench = importlib.import_module(f"mpcourse.engines.{backend}.bench")
    eng = mpc.make_engine(backend, "mlp", mpc.TrainConfig(precision="fp16"), device=device, data=digits, verbose=False)
    probe = bench.MemoryProbe(bench.check_device(device))
    probe.start()
    hist = eng.fit(digits, steps=5)
    probe.sample()
    assert all(s > 0 for s in hist.column("seconds")), "every step is timed"
    assert probe.peak() > 0 and isinstance(probe.kind, str)
    held = device_memory_bytes(eng)
    if device == "cpu":
        assert held is None  # no device allocator to ask; the probe reads the process's RSS
    else:
        assert held is not None and held > 0


@pytest.mark.parametrize(("target", "precision"), _cases())
def test_the_predict_phase_serves_a_half_copy_on_the_device(target, precision, digits):
    # Trained in fp32 on the device, then served in ``precision`` there: the copy's weights are
    # half the bytes (fp32: the same), it agrees with the fp32 copy, and the engine is untouched.
    if _unsupported(target, precision):
        pytest.skip(_unsupported(target, precision))
    eng = _engine(target, "fp32", data=digits, lr=3e-3)
    eng.fit(digits, epochs=1)
    before = _leaves(eng)
    rep = prod.predict_phase(eng, digits, precision)
    assert _equal(before, _leaves(eng)), "the predict phase changed the engine"
    assert rep.serving.weight_bytes * (1 if precision == "fp32" else 2) == rep.reference.weight_bytes
    assert rep.serving.activation_peak_bytes > 0 and rep.agreement >= 0.95, (target, precision, rep.agreement)
