"""The loss scalers: growth and back-off walked step by step, hysteresis, bounds, state, and
PyTorch's GradScaler as the oracle."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpcourse import DynamicLossScaler, StaticLossScaler
from mpcourse.scaler import scaler_from_state_dict


def walk(s: DynamicLossScaler, verdicts: list[bool]) -> list[float]:
    out = []
    for v in verdicts:
        s.update(v)
        out.append(s.scale)
    return out


def test_growth_walk_with_tiny_interval() -> None:
    s = DynamicLossScaler(init_scale=8.0, growth_interval=3)
    assert walk(s, [False] * 7) == [8, 8, 16, 16, 16, 32, 32]
    assert s.growth_tracker == 1


def test_backoff_resets_the_growth_count() -> None:
    s = DynamicLossScaler(init_scale=8.0, growth_interval=3)
    # two good steps, an overflow (back off, reset), then three good steps to grow again
    assert walk(s, [False, False, True, False, False, False]) == [8, 8, 4, 4, 4, 8]
    assert (s.total_steps, s.total_skipped, s.consecutive_skipped) == (6, 1, 0)


def test_counters_and_overflow_rate() -> None:
    s = DynamicLossScaler(init_scale=2.0**10, growth_interval=100)
    walk(s, [True, True, False, True, True, True])
    assert s.total_skipped == 5 and s.consecutive_skipped == 3
    assert s.overflow_rate == pytest.approx(5 / 6)
    assert DynamicLossScaler().overflow_rate == 0.0


def test_hysteresis_keeps_the_scale_for_the_first_n_minus_1_overflows() -> None:
    s = DynamicLossScaler(init_scale=64.0, growth_interval=2, hysteresis=3)
    # overflows 1 and 2 keep the scale, the 3rd and every later one back off
    assert walk(s, [True, True, True, True]) == [64, 64, 32, 16]
    # a growth (two good steps) restores the allowance of 2 free overflows
    assert walk(s, [False, False]) == [16, 32]
    assert walk(s, [True, True, True]) == [32, 32, 16]


def test_hysteresis_allowance_is_not_restored_by_good_steps_without_growth() -> None:
    s = DynamicLossScaler(init_scale=64.0, growth_interval=10, hysteresis=2)
    assert walk(s, [True, False, False, True]) == [64, 64, 64, 32]


def test_min_and_max_clamp() -> None:
    s = DynamicLossScaler(init_scale=4.0, growth_interval=1, min_scale=1.0, max_scale=16.0)
    assert walk(s, [False] * 4) == [8, 16, 16, 16]
    assert walk(s, [True] * 6) == [8, 4, 2, 1, 1, 1]
    assert s.at_min_scale
    assert DynamicLossScaler(init_scale=2.0**20, max_scale=2.0**16).scale == 2.0**16


def test_growth_never_reaches_inf() -> None:
    s = DynamicLossScaler(init_scale=2.0**127, growth_interval=1)
    s.update(False)
    assert s.scale == 2.0**127  # GradScaler keeps the old scale when the grown one is not finite


def test_static_scaler_never_changes_but_counts() -> None:
    s = StaticLossScaler(128.0)
    for v in [True, False, True, True]:
        s.update(v)
    assert s.scale == 128.0 and s.total_skipped == 3 and s.consecutive_skipped == 2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"growth_factor": 1.0}, "growth_factor must be > 1"),
        ({"growth_factor": 0.5}, "growth_factor must be > 1"),
        ({"backoff_factor": 1.0}, r"backoff_factor must be in \(0, 1\)"),
        ({"backoff_factor": 0.0}, "backoff_factor must be a finite number > 0"),
        ({"growth_interval": 0}, "growth_interval must be an int >= 1"),
        ({"hysteresis": 0}, "hysteresis must be an int >= 1"),
        ({"init_scale": -1.0}, "init_scale must be a finite number > 0"),
        ({"init_scale": float("inf")}, "init_scale must be a finite number > 0"),
        ({"min_scale": 8.0, "max_scale": 4.0}, "min_scale"),
    ],
)
def test_bad_settings_are_refused_with_the_value(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        DynamicLossScaler(**kwargs)


def test_bad_types_and_verdicts() -> None:
    with pytest.raises(TypeError, match="growth_interval"):
        DynamicLossScaler(growth_interval=2.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scale must be a finite number > 0"):
        StaticLossScaler(0.0)
    s = DynamicLossScaler()
    with pytest.raises(TypeError, match="found_inf must be a bool"):
        s.update(1)  # type: ignore[arg-type]
    assert s.total_steps == 0  # a refused verdict changes nothing


def test_state_dict_round_trip_continues_exactly() -> None:
    rng = np.random.default_rng(1)
    verdicts = list(rng.random(300) < 0.1)
    kwargs = dict(
        init_scale=2.0**12,
        growth_factor=1.5,
        backoff_factor=0.7,
        growth_interval=4,
        hysteresis=2,
        min_scale=1.0,
        max_scale=2.0**20,
    )
    a = DynamicLossScaler(**kwargs)
    walk(a, [bool(v) for v in verdicts[:150]])
    state = a.state_dict()
    b = DynamicLossScaler()  # default settings: every setting must come from the state dict
    b.load_state_dict(state)
    assert b.state_dict() == state
    rest = [bool(v) for v in verdicts[150:]]
    assert walk(b, rest) == walk(a, rest)
    assert scaler_from_state_dict(a.state_dict()).state_dict() == a.state_dict()


def test_state_dict_refuses_other_kinds_and_missing_keys() -> None:
    with pytest.raises(ValueError, match="'static' scaler, not a 'dynamic'"):
        DynamicLossScaler().load_state_dict(StaticLossScaler(2.0).state_dict())
    state = DynamicLossScaler().state_dict()
    del state["hysteresis_left"]
    with pytest.raises(ValueError, match="missing keys"):
        DynamicLossScaler().load_state_dict(state)


# --- PyTorch's GradScaler as the oracle -----------------------------------------------------


@pytest.mark.parametrize("growth_factor, backoff_factor, interval", [(2.0, 0.5, 5), (1.5, 0.7, 3), (3.0, 0.25, 1)])
def test_trajectory_equals_torch_grad_scaler_on_real_gradients(
    growth_factor: float, backoff_factor: float, interval: int
) -> None:
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    w = torch.nn.Parameter(torch.ones(16))
    opt = torch.optim.SGD([w], lr=1e-6)
    gs = torch.amp.GradScaler(
        "cpu", init_scale=2.0**10, growth_factor=growth_factor, backoff_factor=backoff_factor, growth_interval=interval
    )
    mine = DynamicLossScaler(
        init_scale=2.0**10, growth_factor=growth_factor, backoff_factor=backoff_factor, growth_interval=interval
    )
    n_inf = 0
    for _ in range(400):
        x = torch.from_numpy(rng.standard_normal(16).astype(np.float32))
        if rng.random() < 0.15:  # a real non-finite gradient, found by GradScaler's own check
            x[rng.integers(16)] = float("inf") if rng.random() < 0.5 else float("nan")
        opt.zero_grad()
        gs.scale((w * x).sum()).backward()
        found = not bool(torch.isfinite(w.grad).all())
        n_inf += found
        gs.step(opt)
        gs.update()
        mine.update(found)
        assert mine.scale == gs.get_scale()  # exact: both keep a float32 scale
    assert 20 < n_inf < 120  # the walk really went through both branches


# --- property tests ------------------------------------------------------------------------

settings_fast = settings(max_examples=150, deadline=None)


@settings_fast
@given(
    verdicts=st.lists(st.booleans(), max_size=200),
    interval=st.integers(1, 8),
    hysteresis=st.integers(1, 4),
    growth=st.sampled_from([1.5, 2.0, 4.0]),
    backoff=st.sampled_from([0.25, 0.5, 0.9]),
    lo=st.sampled_from([None, 1.0, 2.0**-8]),
    hi=st.sampled_from([None, 2.0**16, 2.0**24]),
)
def test_invariants(
    verdicts: list[bool],
    interval: int,
    hysteresis: int,
    growth: float,
    backoff: float,
    lo: float | None,
    hi: float | None,
) -> None:
    s = DynamicLossScaler(
        init_scale=2.0**10,
        growth_factor=growth,
        backoff_factor=backoff,
        growth_interval=interval,
        hysteresis=hysteresis,
        min_scale=lo,
        max_scale=hi,
    )
    run = 0
    for i, v in enumerate(verdicts):
        before = s.scale
        s.update(v)
        run = run + 1 if v else 0
        assert math.isfinite(s.scale) and s.scale > 0
        assert lo is None or s.scale >= lo
        assert hi is None or s.scale <= hi
        if v:
            assert s.scale <= before and s.growth_tracker == 0  # an overflow never grows the scale
        else:
            assert s.scale >= before
        if v and hysteresis == 1 and lo is None:
            assert s.scale == float(np.float32(before * backoff))
        assert 0 <= s.growth_tracker < interval and 1 <= s.hysteresis_left <= hysteresis
        assert s.consecutive_skipped == run and s.total_steps == i + 1
    assert s.total_skipped == sum(verdicts)
    assert 0.0 <= s.overflow_rate <= 1.0


@settings_fast
@given(verdicts=st.lists(st.booleans(), min_size=1, max_size=120), cut=st.integers(0, 120))
def test_resume_anywhere_is_exact(verdicts: list[bool], cut: int) -> None:
    cut = min(cut, len(verdicts))
    a = DynamicLossScaler(init_scale=256.0, growth_interval=3, hysteresis=2)
    walk(a, verdicts[:cut])
    b = DynamicLossScaler()
    b.load_state_dict(a.state_dict())
    assert walk(b, verdicts[cut:]) == walk(a, verdicts[cut:])
    assert a.state_dict() == b.state_dict()
