"""The machine a measurement ran on: CPU model and the CPU features that decide fp16/bf16 speed.

Usage::

    from mpcourse import hardware

    hardware.cpu_model()        # 'AMD EPYC ...'
    hardware.cpu_flags()        # ['avx2', 'f16c', 'fma']  -- no avx512_fp16 / amx: fp16 is emulated
    hardware.host()             # platform, python, numpy, cpu, cores: for results files

Framework-neutral (reads ``/proc/cpuinfo`` on Linux); devices are described by the engines'
bench helpers (``mpcourse.engines.torch.bench.device_info``).
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

__all__ = ["cpu_model", "cpu_flags", "LOW_PRECISION_FLAGS", "NATIVE_HALF_FLAGS", "native_half_units", "host"]

#: CPU flags that matter for fp16/bf16 matmuls, in the order they are printed.
LOW_PRECISION_FLAGS: tuple[str, ...] = (
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_bf16",
    "amx_fp16",
)


def _cpuinfo_field(name: str) -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.split(":", 1)[0].strip() == name:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` knows."""
    return _cpuinfo_field("model name") or platform.processor() or platform.machine()


def cpu_flags(wanted: tuple[str, ...] = LOW_PRECISION_FLAGS) -> list[str] | None:
    """Which of ``wanted`` the CPU has, in that order; None where the flags cannot be read.

    ``avx512_fp16`` (Sapphire Rapids and later) and ``amx_fp16``/``amx_bf16`` give the CPU native
    half-precision matmuls; ``f16c`` only converts fp16<->fp32, so without the others an fp16
    matmul is a conversion plus an fp32 matmul, and slower than fp32.
    """
    flags = _cpuinfo_field("flags")
    if flags is None:
        return None
    have = set(flags.split())
    return [w for w in wanted if w in have]


#: The flags that let a CPU multiply in bf16 or fp16 itself, instead of converting to fp32:
#: ``avx512_bf16`` (bf16 dot products: Intel Cooper Lake and later, AMD Zen 4 and later),
#: ``avx512_fp16`` (Intel Sapphire Rapids and later), ``amx_bf16`` (Sapphire Rapids and later),
#: ``amx_fp16`` (Granite Rapids). ``f16c`` only converts.
NATIVE_HALF_FLAGS: tuple[str, ...] = ("avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")


def native_half_units(flags: list[str] | None = None) -> list[str] | None:
    """Which of :data:`NATIVE_HALF_FLAGS` this CPU has (or ``flags`` has), in that order.

    Usage::

        hardware.native_half_units()            # e.g. [] on an AVX2-only CPU, None if unreadable
        hardware.native_half_units(["avx2", "avx512_bf16"])   # ['avx512_bf16']

    Returns None where the CPU's flags cannot be read (macOS, Windows): then nothing is known.
    """
    have = cpu_flags(NATIVE_HALF_FLAGS) if flags is None else flags
    if have is None:
        return None
    return [f for f in NATIVE_HALF_FLAGS if f in have]


def host() -> dict[str, Any]:
    """Platform, Python, numpy and CPU of this process, for a results file."""
    import numpy as np

    return {
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
    }
