"""Tests for mpcourse.formats: facts against torch.finfo / ml_dtypes, bit fields, rounding
against exact arithmetic and torch casts, masks on boundary values, spacing, bad input."""

from __future__ import annotations

import math
import subprocess
import sys
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpcourse import formats as F

ALL = F.names()
SMALL = [n for n in ALL if F.info(n).bits <= 16]
TORCH_DTYPE_NAMES = {
    "fp32": "float32",
    "fp16": "float16",
    "bf16": "bfloat16",
    "fp8_e4m3": "float8_e4m3fn",
    "fp8_e5m2": "float8_e5m2",
}


def exact_round(x: float, fmt: str) -> float:
    """Reference: round-to-nearest-even of the exact float64 value with Fractions."""
    f = F.info(fmt)
    if x == 0 or not math.isfinite(x):
        return x if (math.isfinite(x) or f.has_inf) else math.nan
    a = Fraction(abs(x))
    e = math.frexp(abs(x))[1] - 1  # floor(log2 |x|), exact
    q = Fraction(2) ** (max(e, f.emin) - f.mantissa_bits)  # the ulp at |x|
    r = round(a / q) * q  # Python rounds Fractions half to even
    if r > Fraction(f.max):
        return math.copysign(math.inf, x) if f.has_inf else math.nan
    return math.copysign(float(r), x)


def same(a, b) -> bool:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return bool(np.all((a == b) | (np.isnan(a) & np.isnan(b))))


# --- facts --------------------------------------------------------------------------------


def test_names_and_aliases():
    assert ALL == ["fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2"]
    assert F.info("float16") is F.info("half") is F.info("FP16") is F.FORMATS["fp16"]
    assert F.info("bfloat16") is F.FORMATS["bf16"]
    assert F.info("e4m3").dtype == np.dtype(ml_dtypes.float8_e4m3fn)
    assert F.info("e5m2").dtype == np.dtype(ml_dtypes.float8_e5m2)
    assert F.info(F.FORMATS["fp32"]) is F.FORMATS["fp32"]


@pytest.mark.parametrize("name", ["fp32", "fp16", "bf16", "fp8_e4m3", "fp8_e5m2"])
def test_facts_equal_torch_finfo(name):
    torch = pytest.importorskip("torch")
    f, tf = F.info(name), torch.finfo(getattr(torch, TORCH_DTYPE_NAMES[name]))
    assert (f.bits, f.max, f.min_normal, f.eps) == (tf.bits, tf.max, tf.smallest_normal, tf.eps)
    if f.bits >= 16:  # torch.nextafter has no fp8 kernel
        dt = getattr(torch, TORCH_DTYPE_NAMES[name])
        sub = torch.nextafter(torch.zeros((), dtype=dt), torch.ones((), dtype=dt)).item()
        assert f.min_subnormal == sub


@pytest.mark.parametrize("name", ALL)
def test_facts_equal_ml_dtypes_finfo(name):
    f = F.info(name)
    fi = ml_dtypes.finfo(f.dtype)
    assert (f.bits, f.exponent_bits, f.mantissa_bits) == (fi.bits, fi.nexp, fi.nmant)
    assert (f.max, f.min_normal, f.min_subnormal, f.eps) == (
        float(fi.max),
        float(fi.smallest_normal),
        float(fi.smallest_subnormal),
        float(fi.eps),
    )
    assert f.bits == 1 + f.exponent_bits + f.mantissa_bits
    assert f.bias == 2 ** (f.exponent_bits - 1) - 1


@pytest.mark.parametrize("name", SMALL)
def test_facts_agree_with_bit_patterns(name):
    f, vals = F.info(name), F.representable_values(name)
    assert vals.max() == f.max and vals.min() == -f.max
    assert vals[vals > 0].min() == f.min_subnormal
    assert F.compose(0, 1, 0, name) == f.min_normal
    assert vals[vals > 1].min() - 1.0 == f.eps
    assert f.has_inf == bool(np.isinf(F.compose(0, 2**f.exponent_bits - 1, 0, name)))
    assert f.has_nan


def test_inf_and_table():
    assert [F.info(n).has_inf for n in ALL] == [True, True, True, False, True]
    rows = F.table()
    assert [r["format"] for r in rows] == ALL
    fp16 = rows[1]
    assert fp16["max"] == 65504.0 and fp16["mantissa bits"] == 10
    assert fp16["decimal digits"] == round(11 * math.log10(2), 2)
    assert fp16["range (binades, with subnormals)"] == round(math.log2(65504 / 2.0**-24), 2)
    assert F.info("bf16").decades > 70 > F.info("fp16").decades
    assert "max 65504" in repr(F.info("fp16"))
    assert F.info("fp16").as_dict()["dtype"] == "float16"


# --- bit fields ---------------------------------------------------------------------------


def test_bits_strings():
    assert F.bits(1.0, "fp16") == "0 01111 0000000000"
    assert F.bits(-2.0, "fp16") == "1 10000 0000000000"
    assert F.bits(65504, "fp16") == "0 11110 1111111111"
    assert F.bits(2.0**-24, "fp16") == "0 00000 0000000001"
    assert F.bits(1.0, "bf16") == "0 01111111 0000000"
    assert F.bits(448, "fp8_e4m3") == "0 1111 110"
    assert F.bits(1e9, "fp8_e4m3") == "0 1111 111"  # overflow -> NaN pattern
    assert F.bits(np.inf, "fp8_e5m2") == "0 11111 00"
    assert F.bits(1.0, "fp32") == "0 01111111 " + "0" * 23


@pytest.mark.parametrize("name", SMALL)
def test_decompose_compose_every_bit_pattern(name):
    f = F.info(name)
    patterns = np.arange(2**f.bits, dtype=np.int64)
    with np.errstate(invalid="ignore"):  # NaN patterns
        values = patterns.astype({8: np.uint8, 16: np.uint16}[f.bits]).view(f.dtype).astype(np.float64)
    d = F.decompose(values, name)
    assert same(d.value, values)
    assert same(F.compose(d.sign, d.exponent_field, d.mantissa, name), values)
    finite = np.isfinite(values)
    arith = (-1.0) ** d.sign * (d.implicit + d.mantissa / 2.0**f.mantissa_bits) * np.exp2(d.exponent.astype(np.float64))
    assert np.array_equal(arith[finite], values[finite])
    sub = finite & (values != 0) & (np.abs(values) < f.min_normal)
    assert np.all(d.exponent_field[sub] == 0) and np.all(d.implicit[sub] == 0)
    assert np.all(d.exponent[sub] == f.emin)


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=False, allow_infinity=False, width=32), st.sampled_from(ALL))
def test_decompose_reassembles(x, name):
    d = F.decompose(x, name)
    f = F.info(name)
    assert same(F.compose(d.sign, d.exponent_field, d.mantissa, name), d.value)
    if np.isfinite(d.value):
        back = (-1.0) ** int(d.sign) * (int(d.implicit) + int(d.mantissa) / 2**f.mantissa_bits) * 2.0 ** int(d.exponent)
        assert back == d.value


# --- rounding -----------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.floats(allow_nan=False, allow_infinity=False),
        st.floats(min_value=-1e5, max_value=1e5),
        st.floats(min_value=-1e-3, max_value=1e-3),
    ),
    st.sampled_from(ALL),
)
def test_round_to_is_single_round_to_nearest_even(x, name):
    assert same(F.round_to(x, name), exact_round(x, name))


@pytest.mark.parametrize("name", SMALL)
def test_ties_go_to_even(name):
    vals = F.representable_values(name, 0, F.info(name).max)
    mid = (vals[:-1] + vals[1:]) / 2
    r = F.round_to(mid, name)
    assert np.all(F.decompose(r, name).mantissa % 2 == 0)
    assert same(r, [exact_round(m, name) for m in mid])
    up = F.round_to(np.nextafter(mid, np.inf), name)
    assert np.array_equal(up, vals[1:])


def test_single_rounding_beats_cast_through_float32():
    x = 1 + 2.0**-8 + 2.0**-40  # above the bf16 midpoint 1 + 2**-8
    assert F.round_to(x, "bf16") == 1 + 2.0**-7
    assert float(np.float64(x).astype(np.float32).astype(ml_dtypes.bfloat16)) == 1.0


def test_e4m3_overflow_matches_ml_dtypes():
    x = np.array([448, 464, 464.0001, 480, 1e9, np.inf, -1e9, -np.inf])
    r = F.round_to(x, "fp8_e4m3")
    assert same(r, [448, 448, np.nan, np.nan, np.nan, np.nan, np.nan, np.nan])
    assert same(r, x.astype(np.float32).astype(ml_dtypes.float8_e4m3fn).astype(np.float64))
    assert same(F.round_to([65519.99, 65520, np.inf], "fp16"), [65504, np.inf, np.inf])


def _random_f32(rng, n, lo, hi):
    mag = np.exp2(rng.uniform(lo, hi, n)) * rng.uniform(1, 2, n)
    with np.errstate(over="ignore"):
        return (rng.choice([-1.0, 1.0], n) * mag).astype(np.float32)


@pytest.mark.parametrize(
    "name,lo,hi", [("fp16", -30, 18), ("bf16", -140, 130), ("fp8_e4m3", -12, 8), ("fp8_e5m2", -20, 17)]
)
def test_round_to_matches_torch_cast(name, lo, hi):
    torch = pytest.importorskip("torch")
    x = _random_f32(np.random.default_rng(0), 100_000, lo, hi)
    big = min(F.info(name).max * 1.1, float(np.finfo(np.float32).max))
    x = np.concatenate([x, np.array([big, -big], np.float32)])
    if name == "fp8_e4m3":  # torch saturates e4m3fn overflow to +-448 (see next test)
        x = x[np.abs(x) <= 464]
    ours = F.round_to(x, name)
    theirs = torch.from_numpy(x).to(getattr(torch, TORCH_DTYPE_NAMES[name])).double().numpy()
    assert same(ours, theirs)
    assert F.overflow_mask(x, name).any() or name == "fp8_e4m3"
    assert F.subnormal_mask(x, name).any() and F.underflow_mask(x, name).any()


def test_torch_saturates_e4m3_where_ml_dtypes_gives_nan():
    torch = pytest.importorskip("torch")
    x = torch.tensor([500.0, float("inf")])
    assert x.to(torch.float8_e4m3fn).float().tolist() == [448.0, 448.0]
    assert np.isnan(F.round_to(x.numpy(), "fp8_e4m3")).all()


# --- masks --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_masks_on_boundaries(name):
    f = F.info(name)
    mx, mn, sub = f.max, f.min_normal, f.min_subnormal
    x = np.array([mx, mx * 1.1, -mx * 1.1, mn, mn / 2, sub, sub / 2, sub * 0.51, 0.0, 1.0, np.inf, np.nan])
    assert F.overflow_mask(x, name).tolist() == [0, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]
    # sub/2 is a tie between 0 and sub: even wins -> 0
    assert F.underflow_mask(x, name).tolist() == [0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    assert F.subnormal_mask(x, name).tolist() == [0, 0, 0, 0, 1, 1, 0, 1, 0, 0, 0, 0]
    assert F.classify(x, name).tolist() == [
        "normal",
        "overflow",
        "overflow",
        "normal",
        "subnormal",
        "subnormal",
        "underflow",
        "subnormal",
        "zero",
        "normal",
        "inf",
        "nan",
    ]
    assert F.overflow_mask(mx * 1.01, name).shape == ()


@pytest.mark.parametrize("name", ALL)
def test_overflow_threshold_is_max_plus_half_ulp(name):
    f = F.info(name)
    edge = f.max + F.spacing(f.max * (1 - 2**-30), name) / 2  # the tie above max
    assert not F.overflow_mask(np.nextafter(edge, 0), name)
    assert F.overflow_mask(np.nextafter(edge, np.inf), name)
    # the tie itself goes to the even mantissa: inf for IEEE formats (max ends in ...1),
    # 448 for e4m3fn, whose max 1.110b * 2**8 is even
    assert F.overflow_mask(edge, name) == f.has_inf


def test_explain_every_format():
    rows = F.explain(1e5)
    assert [r["format"] for r in rows] == ALL
    by = {r["format"]: r for r in rows}
    assert by["fp16"]["class"] == "overflow" and by["fp16"]["stored"] == math.inf
    assert by["fp32"]["stored"] == 1e5 and by["fp32"]["abs error"] == 0
    assert by["bf16"]["stored"] == 99840.0 and by["bf16"]["bits"] == F.bits(1e5, "bf16")
    assert F.explain(1e-9)[1]["class"] == "underflow" and F.explain(1e-9)[1]["rel error"] == 1.0


# --- spacing, lost updates, enumeration ---------------------------------------------------


@pytest.mark.parametrize("name,dtype", [("fp16", np.float16), ("fp32", np.float32)])
def test_spacing_matches_np_spacing(name, dtype):
    rng = np.random.default_rng(1)
    x = _random_f32(rng, 20_000, -160 if name == "fp32" else -30, 15).astype(dtype)
    x = np.concatenate([x, np.array([0, 1, -1, F.info(name).min_normal, F.info(name).min_subnormal], dtype)])
    x = x[np.isfinite(x) & (np.abs(x) < F.info(name).max)]
    # on |x|: numpy's float16 spacing of a negative x measures toward zero (np.spacing(
    # float16(-1)) is 2**-11, not -2**-10 as for float32/float64); ours is the ulp of |x|
    assert np.array_equal(F.spacing(x, name), np.spacing(np.abs(x)).astype(np.float64))
    assert np.array_equal(F.spacing(x, name), F.spacing(-x, name))


@pytest.mark.parametrize("name", ["bf16", "fp8_e4m3", "fp8_e5m2"])
def test_spacing_matches_neighbours(name):
    vals = F.representable_values(name, 0, np.inf)
    assert np.array_equal(F.spacing(vals[:-1], name), np.diff(vals))
    assert np.isinf(F.spacing(F.info(name).max * 1.5, name))
    assert np.isnan(F.spacing(np.nan, name))


def test_lost_update():
    assert F.spacing(1000.0, "fp16") == 0.5
    lost = F.lost_update_mask([1000.0, 1000.0, 1.0, 1.0], [0.2, 0.3, 1e-4, 1e-3], "fp16")
    assert lost.tolist() == [True, False, True, False]
    assert not F.lost_update_mask(1.0, 1e-4, "fp32") and not F.lost_update_mask(1.0, 0.0, "fp16")


def test_representable_values():
    assert F.representable_values("fp8_e5m2", 1, 2).tolist() == [1.0, 1.25, 1.5, 1.75, 2.0]
    assert F.representable_values("e4m3", 1, 2).tolist() == [1 + k / 8 for k in range(9)]
    v = F.representable_values("fp8_e4m3")
    assert len(v) == 2 * 126 + 1  # 256 patterns - 2 NaN - one of +-0
    assert len(F.representable_values("fp16")) == 2 * (31 * 1024) - 1
    assert np.all(np.diff(F.representable_values("bf16", -1, 1)) > 0)


# --- bad input ----------------------------------------------------------------------------


def test_bad_input():
    with pytest.raises(ValueError, match="fp8_e5m2"):
        F.info("fp64")
    with pytest.raises(ValueError, match="'int8'"):
        F.round_to(1.0, "int8")
    with pytest.raises(TypeError):
        F.info(16)
    for bad in ["abc", None, [1, "a"], {"a": 1}, 1 + 2j, True]:
        with pytest.raises(TypeError):
            F.round_to(bad, "fp16")
    with pytest.raises(TypeError):
        F.overflow_mask("1e5", "fp16")
    with pytest.raises(ValueError, match="fp32"):
        F.representable_values("fp32")
    with pytest.raises(ValueError, match="lo"):
        F.representable_values("fp16", 2, 1)
    with pytest.raises(ValueError):
        F.bits([1.0, 2.0], "fp16")
    with pytest.raises(ValueError, match="out of range"):
        F.compose(0, 32, 0, "fp16")


def test_accepts_format_dtypes_and_shapes():
    x16 = np.array([[1.5, 3.0]], dtype=np.float16)
    assert F.round_to(x16, "fp16").shape == (1, 2)
    assert F.round_to(np.array([1.5], ml_dtypes.bfloat16), "bf16").tolist() == [1.5]
    assert F.round_to(3, "fp8_e4m3").shape == () and F.round_to(3, "fp8_e4m3") == 3
    assert F.cast([1, 2], "bf16").dtype == np.dtype(ml_dtypes.bfloat16)


def test_import_needs_no_framework():
    code = (
        "import sys; import mpcourse.formats as F; F.round_to(1.0, 'bf16'); "
        "assert 'torch' not in sys.modules and 'mlx' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
