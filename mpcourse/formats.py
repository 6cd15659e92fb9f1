"""Floating-point formats for training: fp32, fp16, bf16, fp8 (e4m3, e5m2), bit by bit.

Usage::

    import mpcourse as mpc
    F = mpc.formats

    F.info("fp16")                    # FloatFormat(fp16: 1+5+10 bits, max 65504, ...)
    F.info("fp16").eps                # 0.0009765625, computed from numpy.finfo
    F.table()                         # one dict per format: range, precision, digits, decades
    F.bits(1.0, "fp16")               # '0 01111 0000000000'
    F.decompose([1.0, -2.5e-7], "fp16")   # sign, exponent field/value, mantissa arrays
    F.round_to([0.1, 70000.0], "fp16")    # array([0.09997559, inf])
    F.overflow_mask(x, "fp16"); F.underflow_mask(x, "fp16"); F.subnormal_mask(x, "fp16")
    F.spacing(1000.0, "fp16")         # 0.5: an update below half of this is lost
    F.representable_values("fp8_e4m3", 0, 4)   # every e4m3 value in [0, 4]
    F.explain(0.1)                    # the number in every format: bits, stored value, error

Every fact is computed from ``numpy.finfo`` / ``ml_dtypes.finfo`` or from bit patterns,
never typed in. Only numpy and ml_dtypes are used (no torch, no mlx).

Rounding is round-to-nearest-even, done once from the float64 input (see ``round_to``).
Overflow: fp32, fp16, bf16 and e5m2 give ``inf``. ``fp8_e4m3`` is ml_dtypes'
``float8_e4m3fn`` ("fn": finite + NaN) which has no inf: its bit pattern ``S.1111.111`` is
NaN and ``S.1111.110`` = 448 is the largest value, so every ``|x| > 464`` (halfway to the
missing next value 480) and every inf becomes NaN, as ml_dtypes casts do. (PyTorch's
``tensor.to(torch.float8_e4m3fn)`` saturates instead: 500 and inf become 448.)
"""

from __future__ import annotations

import math
import types
from dataclasses import asdict, dataclass
from typing import Any

import ml_dtypes
import numpy as np

__all__ = [
    "FloatFormat",
    "Decomposed",
    "FORMATS",
    "names",
    "info",
    "table",
    "round_to",
    "cast",
    "decompose",
    "compose",
    "bits",
    "classify",
    "explain",
    "overflow_mask",
    "underflow_mask",
    "subnormal_mask",
    "lost_update_mask",
    "spacing",
    "representable_values",
]


@dataclass(frozen=True)
class FloatFormat:
    """Facts about one binary floating-point format; build it with ``info(name)``.

    ``info("bf16").max`` -> 3.3895313892515355e+38. All numbers are Python floats/ints.
    ``emin`` is the unbiased exponent of the smallest normal (subnormals share it).
    """

    name: str
    dtype: np.dtype
    bits: int
    exponent_bits: int
    mantissa_bits: int
    bias: int
    emin: int
    emax: int
    max: float
    min_normal: float
    min_subnormal: float
    eps: float
    has_inf: bool
    has_nan: bool

    @property
    def decimal_digits(self) -> float:
        """Significant decimal digits: (mantissa_bits + 1) * log10(2)."""
        return (self.mantissa_bits + 1) * math.log10(2.0)

    @property
    def decades(self) -> float:
        """Dynamic range of normal values in powers of ten: log10(max / min_normal)."""
        return math.log10(self.max / self.min_normal)

    @property
    def binades(self) -> float:
        """Dynamic range including subnormals in powers of two: log2(max / min_subnormal)."""
        return math.log2(self.max / self.min_subnormal)

    def as_dict(self) -> dict[str, Any]:
        """The fields and derived figures as a plain dict (dtype as its name)."""
        d = asdict(self)
        d["dtype"] = self.dtype.name
        d.update(decimal_digits=self.decimal_digits, decades=self.decades, binades=self.binades)
        return d

    def __repr__(self) -> str:
        return (
            f"FloatFormat({self.name}: 1+{self.exponent_bits}+{self.mantissa_bits} bits, "
            f"max {self.max:.6g}, min_normal {self.min_normal:.6g}, min_subnormal "
            f"{self.min_subnormal:.6g}, eps {self.eps:.6g}, inf={self.has_inf})"
        )


def _build(name: str, dtype: Any) -> FloatFormat:
    dt = np.dtype(dtype)
    fi = ml_dtypes.finfo(dt)  # numpy.finfo for float32/float16, ml_dtypes' for the others
    with np.errstate(over="ignore", invalid="ignore"):
        has_inf = bool(np.isinf(np.array(np.inf).astype(dt)))
        has_nan = bool(np.isnan(np.array(np.nan).astype(dt)))
    return FloatFormat(
        name=name,
        dtype=dt,
        bits=int(fi.bits),
        exponent_bits=int(fi.nexp),
        mantissa_bits=int(fi.nmant),
        bias=1 - int(fi.minexp),
        emin=int(fi.minexp),
        emax=int(fi.maxexp) - 1,
        max=float(fi.max),
        min_normal=float(fi.smallest_normal),
        min_subnormal=float(fi.smallest_subnormal),
        eps=float(fi.eps),
        has_inf=has_inf,
        has_nan=has_nan,
    )


FORMATS: types.MappingProxyType = types.MappingProxyType(
    {
        n: _build(n, d)
        for n, d in [
            ("fp32", np.float32),
            ("fp16", np.float16),
            ("bf16", ml_dtypes.bfloat16),
            ("fp8_e4m3", ml_dtypes.float8_e4m3fn),
            ("fp8_e5m2", ml_dtypes.float8_e5m2),
        ]
    }
)

_ALIASES = {
    "fp32": "fp32",
    "float32": "fp32",
    "f32": "fp32",
    "single": "fp32",
    "fp16": "fp16",
    "float16": "fp16",
    "f16": "fp16",
    "half": "fp16",
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp8_e4m3": "fp8_e4m3",
    "e4m3": "fp8_e4m3",
    "e4m3fn": "fp8_e4m3",
    "fp8e4m3": "fp8_e4m3",
    "float8_e4m3fn": "fp8_e4m3",
    "fp8_e4m3fn": "fp8_e4m3",
    "fp8_e5m2": "fp8_e5m2",
    "e5m2": "fp8_e5m2",
    "fp8e5m2": "fp8_e5m2",
    "float8_e5m2": "fp8_e5m2",
}
_UINT = {8: np.uint8, 16: np.uint16, 32: np.uint32}


def names() -> list[str]:
    """The canonical format names: ``['fp32', 'fp16', 'bf16', 'fp8_e4m3', 'fp8_e5m2']``."""
    return list(FORMATS)


def info(fmt: str | FloatFormat) -> FloatFormat:
    """The facts of a format: ``info("fp16").max`` -> 65504.0.

    Args:
        fmt: a name from ``names()`` or an alias ("float16", "half", "bfloat16", "e4m3", ...),
            case-insensitive; a FloatFormat is returned as is.

    Raises:
        ValueError: unknown name (the message lists the allowed ones).
        TypeError: ``fmt`` is neither a string nor a FloatFormat.
    """
    if isinstance(fmt, FloatFormat):
        return fmt
    if not isinstance(fmt, str):
        raise TypeError(f"format must be a name such as 'fp16', got {type(fmt).__name__} {fmt!r}")
    key = _ALIASES.get(fmt.strip().lower().replace("-", "_"))
    if key is None:
        raise ValueError(
            f"unknown float format {fmt!r}; allowed: {', '.join(names())} "
            f"(aliases: {', '.join(sorted(set(_ALIASES) - set(FORMATS)))})"
        )
    return FORMATS[key]


def table() -> list[dict[str, Any]]:
    """One row per format for a range/precision table, e.g. ``pandas.DataFrame(table())``."""
    return [
        {
            "format": f.name,
            "bits": f.bits,
            "exponent bits": f.exponent_bits,
            "mantissa bits": f.mantissa_bits,
            "max": f.max,
            "min normal": f.min_normal,
            "min subnormal": f.min_subnormal,
            "eps": f.eps,
            "decimal digits": round(f.decimal_digits, 2),
            "range (decades, normal)": round(f.decades, 2),
            "range (binades, with subnormals)": round(f.binades, 2),
            "has inf": f.has_inf,
        }
        for f in FORMATS.values()
    ]


def _as_float64(x: Any) -> np.ndarray:
    """``x`` as a float64 array (exact for every format here); TypeError if not numeric."""
    arr = np.asarray(x)
    if arr.dtype.kind in "iuf" or arr.dtype in {f.dtype for f in FORMATS.values()}:
        return arr.astype(np.float64)
    raise TypeError(
        f"expected real numbers (a number, list or numpy array), got {type(x).__name__} of dtype {arr.dtype}: {x!r:.80}"
    )


def _to_f32_round_to_odd(x: np.ndarray) -> np.ndarray:
    # ml_dtypes (and torch) cast float64 through float32, rounding twice: 1 + 2**-8 + 2**-40
    # would land on 1.0 in bf16 instead of 1 + 2**-7. Rounding to float32 *to odd* first (keep
    # the neighbour with an odd last bit when inexact) makes the second rounding exact, since
    # float32 carries at least 2 more bits than every narrower format here.
    with np.errstate(over="ignore"):
        t = x.astype(np.float32)
    t64 = t.astype(np.float64)
    inexact = (t64 != x) & np.isfinite(x)
    t = np.where(inexact & (np.abs(t64) > np.abs(x)), np.nextafter(t, np.float32(0)), t)
    odd = np.array(t, np.float32).reshape(-1).view(np.uint32) | inexact.reshape(-1).astype(np.uint32)
    return odd.view(np.float32).reshape(x.shape)


def cast(x: Any, fmt: str | FloatFormat) -> np.ndarray:
    """``x`` stored in the format's own numpy dtype: ``cast(1/3, "bf16").dtype`` -> bfloat16."""
    f, x64 = info(fmt), _as_float64(x)
    with np.errstate(over="ignore", invalid="ignore"):
        if f.bits == 32:
            return x64.astype(np.float32)
        return _to_f32_round_to_odd(x64).astype(f.dtype)


def round_to(x: Any, fmt: str | FloatFormat) -> np.ndarray:
    """``x`` after a round trip through ``fmt``, as float64: ``round_to(0.1, "bf16")`` -> 0.10009765625.

    Round-to-nearest-even, once, from the exact float64 input. Overflow gives ``inf`` (or NaN
    for fp8_e4m3, which has no inf: any ``|x| > 464`` or inf becomes NaN). Values below half
    the smallest subnormal become (signed) zero. ml_dtypes and torch cast float64 through
    float32 (two roundings); for float32 input the results are identical to theirs.
    """
    return cast(x, fmt).astype(np.float64)


@dataclass(frozen=True)
class Decomposed:
    """Bit fields of values stored in a format (arrays shaped like the input).

    value = (-1)**sign * (implicit + mantissa / 2**mantissa_bits) * 2**exponent for finite
    values; ``implicit`` is 1 for normals, 0 for zeros and subnormals. ``exponent_field`` is the
    raw biased field; ``exponent`` the unbiased power of two (``emin`` for subnormals).
    """

    fmt: str
    value: np.ndarray
    sign: np.ndarray
    exponent_field: np.ndarray
    exponent: np.ndarray
    implicit: np.ndarray
    mantissa: np.ndarray


def decompose(x: Any, fmt: str | FloatFormat) -> Decomposed:
    """Round ``x`` to ``fmt`` and split it: ``decompose(-1.5, "fp16").mantissa`` -> 512."""
    f = info(fmt)
    raw = np.atleast_1d(cast(x, f)).view(_UINT[f.bits]).astype(np.int64).reshape(np.shape(x))
    field = (raw >> f.mantissa_bits) & ((1 << f.exponent_bits) - 1)
    normal = field > 0
    a = np.asarray
    return Decomposed(
        fmt=f.name,
        value=round_to(x, f),
        sign=a(raw >> (f.bits - 1)),
        exponent_field=a(field),
        exponent=a(np.where(normal, field - f.bias, f.emin)),
        implicit=a(normal.astype(np.int64)),
        mantissa=a(raw & ((1 << f.mantissa_bits) - 1)),
    )


def compose(sign: Any, exponent_field: Any, mantissa: Any, fmt: str | FloatFormat) -> np.ndarray:
    """Assemble bit fields into float64 values: ``compose(0, 15, 0, "fp16")`` -> 1.0."""
    f = info(fmt)
    s, e, m = (np.asarray(v, dtype=np.int64) for v in (sign, exponent_field, mantissa))
    if (
        np.any((s < 0) | (s > 1))
        or np.any((e < 0) | (e >> f.exponent_bits > 0))
        or np.any((m < 0) | (m >> f.mantissa_bits > 0))
    ):
        raise ValueError(
            f"bit fields out of range for {f.name}: sign in {{0, 1}}, exponent "
            f"field < {2**f.exponent_bits}, mantissa < {2**f.mantissa_bits}"
        )
    raw = (s << (f.bits - 1)) | (e << f.mantissa_bits) | m
    return np.atleast_1d(raw.astype(_UINT[f.bits])).view(f.dtype).astype(np.float64).reshape(raw.shape)


def bits(x: float, fmt: str | FloatFormat) -> str:
    """One number's bit pattern as 'sign exponent mantissa': ``bits(1.0, "fp16")`` -> '0 01111 0000000000'."""
    if np.ndim(x) != 0:
        raise ValueError(f"bits() takes one number, got an array of shape {np.shape(x)}")
    f, d = info(fmt), decompose(x, fmt)
    return f"{int(d.sign)} {int(d.exponent_field):0{f.exponent_bits}b} {int(d.mantissa):0{f.mantissa_bits}b}"


def overflow_mask(x: Any, fmt: str | FloatFormat) -> np.ndarray:
    """Finite values that become inf (or NaN in fp8_e4m3) in ``fmt``."""
    x64 = _as_float64(x)
    return np.isfinite(x64) & ~np.isfinite(round_to(x64, fmt))


def underflow_mask(x: Any, fmt: str | FloatFormat) -> np.ndarray:
    """Nonzero finite values that round to zero in ``fmt`` (flush to zero)."""
    x64 = _as_float64(x)
    return np.isfinite(x64) & (x64 != 0) & (round_to(x64, fmt) == 0)


def subnormal_mask(x: Any, fmt: str | FloatFormat) -> np.ndarray:
    """Values whose rounded value in ``fmt`` is subnormal (nonzero, below ``min_normal``)."""
    r = np.abs(round_to(x, fmt))
    return (r > 0) & (r < info(fmt).min_normal)


def classify(x: Any, fmt: str | FloatFormat) -> np.ndarray:
    """What ``fmt`` makes of each value: 'normal', 'subnormal', 'zero', 'underflow',
    'overflow', 'inf' or 'nan' (the last two for non-finite inputs)."""
    x64 = _as_float64(x)
    r = np.abs(round_to(x64, fmt))
    out = np.full(x64.shape, "normal", dtype="<U9")
    for label, mask in [
        ("subnormal", (r > 0) & (r < info(fmt).min_normal)),
        ("zero", x64 == 0),
        ("underflow", underflow_mask(x64, fmt)),
        ("overflow", overflow_mask(x64, fmt)),
        ("inf", np.isinf(x64)),
        ("nan", np.isnan(x64)),
    ]:
        out[mask] = label
    return out


def explain(x: float) -> list[dict[str, Any]]:
    """One number in every format: bits, stored value, errors, class. For tables and widgets."""
    if np.ndim(x) != 0:
        raise ValueError(f"explain() takes one number, got an array of shape {np.shape(x)}")
    x64 = float(_as_float64(x))
    rows = []
    for f in FORMATS.values():
        stored = float(round_to(x64, f))
        # overflow of a finite number is an infinite error; inf/nan inputs have none to speak of
        err = abs(stored - x64) if math.isfinite(x64) else math.nan
        rel = err / abs(x64) if x64 != 0 else (0.0 if err == 0 else math.nan)
        rows.append(
            {
                "format": f.name,
                "bits": bits(x64, f),
                "stored": stored,
                "abs error": err,
                "rel error": rel,
                "class": str(classify(x64, f)),
            }
        )
    return rows


def spacing(x: Any, fmt: str | FloatFormat) -> np.ndarray:
    """Gap between the representable neighbours of ``x`` in ``fmt`` (the ulp), positive.

    ``spacing(1000.0, "fp16")`` -> 0.5: adding ``u`` with ``|u| < 0.25`` to a weight of 1000
    in fp16 changes nothing. For ``2**e <= |x| < 2**(e+1)`` it is ``2**(max(e, emin) -
    mantissa_bits)``; at 0 it is ``min_subnormal``. Equals ``abs(np.spacing(x))`` for values
    of the format below ``max``; ``inf`` beyond ``max`` (no finite neighbour above), NaN for NaN.
    """
    f, x64 = info(fmt), np.abs(_as_float64(x))
    _, e = np.frexp(x64)  # x = m * 2**e with 0.5 <= m < 1, so floor(log2 x) = e - 1
    e = np.where(x64 == 0, f.emin + 1, e)  # frexp(0) gives e = 0; zero sits in the lowest binade
    gap = np.ldexp(1.0, np.maximum(e - 1, f.emin) - f.mantissa_bits)
    gap = np.where(x64 > f.max, np.inf, gap)
    return np.where(np.isnan(x64), np.nan, gap)


def lost_update_mask(weights: Any, updates: Any, fmt: str | FloatFormat) -> np.ndarray:
    """Nonzero updates that vanish when added to weights held in ``fmt``.

    ``lost_update_mask(1.0, 1e-4, "fp16")`` -> True: fp16's spacing at 1.0 is 2**-10, so
    ``round_to(1 + 1e-4)`` is 1.0 again. This is why master weights stay in fp32.
    """
    w = round_to(weights, fmt)
    u = _as_float64(updates)
    return (u != 0) & (round_to(w + u, fmt) == w)


def representable_values(
    fmt: str | FloatFormat,
    lo: float = -math.inf,
    hi: float = math.inf,
) -> np.ndarray:
    """Every finite value of an 8- or 16-bit format in ``[lo, hi]``, sorted, from all bit patterns.

    ``representable_values("fp8_e5m2", 1, 2)`` -> array([1., 1.25, 1.5, 1.75, 2.]).
    Zero appears once (+0 and -0 are equal).

    Raises:
        ValueError: for fp32 (2**32 patterns), or ``lo > hi``.
    """
    f = info(fmt)
    if f.bits > 16:
        raise ValueError(
            f"representable_values enumerates 8- and 16-bit formats only, got "
            f"{f.name}; allowed: {', '.join(n for n in names() if FORMATS[n].bits <= 16)}"
        )
    lo, hi = float(_as_float64(lo)), float(_as_float64(hi))
    if lo > hi:
        raise ValueError(f"lo must be <= hi, got lo={lo!r}, hi={hi!r}")
    with np.errstate(invalid="ignore"):  # the NaN patterns
        vals = np.arange(2**f.bits).astype(_UINT[f.bits]).view(f.dtype).astype(np.float64)
    vals = np.unique(vals[np.isfinite(vals)])
    return vals[(vals >= lo) & (vals <= hi)]
