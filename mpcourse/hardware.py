"""The machine a measurement ran on: CPU model and the CPU features that decide fp16/bf16 speed.

Usage::

    from mpcourse import hardware

    hardware.cpu_model()        # 'AMD EPYC ...'
    hardware.cpu_flags()        # ['avx2', 'fma', 'f16c', 'avx512f', 'avx512_bf16']: this CPU's half-precision flags
    print(hardware.describe_cpu())   # what it has, in words, and what follows for fp16/bf16 speed
    hardware.host()             # platform, python, numpy, cpu, cores: for results files

Framework-neutral: reads ``/proc/cpuinfo`` on Linux (x86 ``flags``, arm64 ``Features``) and
``sysctl hw.optional.arm.FEAT_*`` on macOS; devices are described by the engines' bench helpers
(``mpcourse.engines.torch.bench.device_info``). What a flag buys is explained by
:func:`half_precision_outlook`, which is pure (flags in, sentences out) so any CPU can be described.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from typing import Any

__all__ = [
    "cpu_model",
    "cpu_flags",
    "cpu_arch",
    "precision_flags",
    "half_precision_outlook",
    "describe_cpu",
    "LOW_PRECISION_FLAGS",
    "ARM_PRECISION_FLAGS",
    "NATIVE_HALF_FLAGS",
    "ARM_NATIVE_HALF_FLAGS",
    "native_half_units",
    "host",
]

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

#: arm64 features that matter for fp16/bf16: fphp/asimdhp (fp16 arithmetic, ARMv8.2), bf16
#: (BFDOT/BFMMLA, ARMv8.6), i8mm, sve, and sme (the Scalable Matrix Extension, e.g. Apple M4).
ARM_PRECISION_FLAGS: tuple[str, ...] = ("asimd", "fphp", "asimdhp", "bf16", "i8mm", "sve", "sme")

# macOS names the same features in sysctl (hw.optional.arm.FEAT_*).
_MAC_FEATURES = {
    "asimd": ("hw.optional.AdvSIMD", "hw.optional.neon"),
    "fphp": ("hw.optional.arm.FEAT_FP16", "hw.optional.neon_fp16"),
    "asimdhp": ("hw.optional.arm.FEAT_FP16", "hw.optional.neon_fp16"),
    "bf16": ("hw.optional.arm.FEAT_BF16",),
    "i8mm": ("hw.optional.arm.FEAT_I8MM",),
    "sve": ("hw.optional.arm.FEAT_SVE",),
    "sme": ("hw.optional.arm.FEAT_SME",),
}


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


def cpu_arch(machine: str | None = None) -> str:
    """``"x86"``, ``"arm64"`` or ``"other"``, from :func:`platform.machine` (or ``machine``)."""
    m = (machine or platform.machine()).lower()
    if m in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "x86"
    if m in ("arm64", "aarch64", "armv8", "arm64e"):
        return "arm64"
    return "other"


def precision_flags(arch: str | None = None) -> tuple[str, ...]:
    """The flags that decide half-precision speed on ``arch`` (default: this machine's)."""
    return ARM_PRECISION_FLAGS if (arch or cpu_arch()) == "arm64" else LOW_PRECISION_FLAGS


def _sysctl(name: str) -> str | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _mac_flags() -> set[str] | None:
    if _sysctl("hw.optional.arm64") is None and _sysctl("hw.optional.AdvSIMD") is None:
        return None
    return {flag for flag, keys in _MAC_FEATURES.items() if any(_sysctl(k) == "1" for k in keys)}


def cpu_flags(wanted: tuple[str, ...] | None = None) -> list[str] | None:
    """Which of ``wanted`` the CPU has, in that order; None where the flags cannot be read.

    ``wanted`` defaults to this architecture's :func:`precision_flags`. ``avx512_fp16``
    (Sapphire Rapids and later) and ``amx_fp16``/``amx_bf16`` give the CPU native
    half-precision matmuls; ``f16c`` only converts fp16<->fp32, so without the others an fp16
    matmul is a conversion plus an fp32 matmul, and slower than fp32.
    """
    wanted = precision_flags() if wanted is None else wanted
    flags = _cpuinfo_field("flags") or _cpuinfo_field("Features")
    if flags is not None:
        have = set(flags.split())
    elif sys.platform == "darwin":
        mac = _mac_flags()
        if mac is None:
            return None
        have = mac
    else:
        return None
    return [w for w in wanted if w in have]


#: The flags that let a CPU multiply in bf16 or fp16 itself, instead of converting to fp32:
#: ``avx512_bf16`` (bf16 dot products: Intel Cooper Lake and later, AMD Zen 4 and later),
#: ``avx512_fp16`` (Intel Sapphire Rapids and later), ``amx_bf16`` (Sapphire Rapids and later),
#: ``amx_fp16`` (Granite Rapids). ``f16c`` only converts.
NATIVE_HALF_FLAGS: tuple[str, ...] = ("avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16")
#: The same on arm64: fp16 arithmetic (FEAT_FP16), bf16 dot products (FEAT_BF16), SME tiles.
ARM_NATIVE_HALF_FLAGS: tuple[str, ...] = ("fphp", "asimdhp", "bf16", "sme")


def native_half_units(flags: list[str] | None = None, arch: str | None = None) -> list[str] | None:
    """Which of the native half-precision flags this CPU has (or ``flags`` has), in order:
    :data:`NATIVE_HALF_FLAGS` on x86, :data:`ARM_NATIVE_HALF_FLAGS` on arm64.

    Usage::

        hardware.native_half_units()            # e.g. [] on an AVX2-only CPU, None if unreadable
        hardware.native_half_units(["avx2", "avx512_bf16"], "x86")   # ['avx512_bf16']

    Returns None where the CPU's flags cannot be read (Windows): then nothing is known.
    """
    natives = ARM_NATIVE_HALF_FLAGS if (arch or cpu_arch()) == "arm64" else NATIVE_HALF_FLAGS
    have = cpu_flags(natives) if flags is None else flags
    if have is None:
        return None
    return [f for f in natives if f in have]


def half_precision_outlook(flags: list[str] | tuple[str, ...], arch: str) -> dict[str, str]:
    """What the flags mean for fp16 and bf16 matmul speed on this CPU, one sentence each.

    Args:
        flags: the CPU's flags (as :func:`cpu_flags` returns them).
        arch: ``"x86"`` or ``"arm64"`` (:func:`cpu_arch`).

    Returns:
        ``{"fp16": sentence, "bf16": sentence}``. Expectations from the instruction sets, not
        measurements: whether a kernel uses the instructions is the framework's choice, so
        notebook 03 and ``mpcourse bench`` measure it.
    """
    have = set(flags)
    if arch == "x86":
        if "amx_fp16" in have:
            fp16 = "AMX-FP16 tiles multiply fp16 natively: fp16 matmuls can run several times faster than fp32"
        elif "avx512_fp16" in have:
            fp16 = "AVX512-FP16 computes in fp16 natively: fp16 matmuls can match or beat fp32"
        elif "f16c" in have:
            fp16 = "only F16C (fp16<->fp32 conversion): an fp16 matmul is converted and run in fp32, slower than fp32"
        else:
            fp16 = "no fp16 instructions at all: fp16 is emulated, much slower than fp32"
        if "amx_bf16" in have:
            bf16 = "AMX-BF16 tiles multiply bf16 natively: bf16 matmuls can run several times faster than fp32"
        elif "avx512_bf16" in have:
            ahead = "" if have & {"avx512_fp16", "amx_fp16"} else ", far ahead of fp16 here,"
            # Recorded on an AMD EPYC with avx512_bf16 (course/results/20261201T080724Z-amd-epyc.jsonl):
            # torch's bf16 MLP step ran 4.41x fp32, and notebook 03's bf16 matmul 2x fp32.
            bf16 = f"AVX512-BF16 dot products (VDPBF16PS): bf16 matmuls can match or beat fp32{ahead} "
            bf16 += "and AMX tiles would go further"
        else:
            bf16 = "no bf16 instructions: a bf16 matmul is converted and run in fp32, slower than fp32"
        return {"fp16": fp16, "bf16": bf16}
    if arch == "arm64":
        sme = " SME matrix tiles are there too, where a library uses them." if "sme" in have else ""
        if have & {"fphp", "asimdhp"}:
            fp16 = "fp16 arithmetic in NEON (FEAT_FP16): fp16 kernels can run up to twice fp32's rate where used."
        else:
            fp16 = "no fp16 arithmetic: fp16 is converted to fp32, slower than fp32."
        if "bf16" in have:
            bf16 = "BFDOT/BFMMLA (FEAT_BF16): bf16 matmuls can beat fp32 where the library uses them."
        else:
            bf16 = "no bf16 instructions: bf16 is converted to fp32, slower than fp32."
        return {"fp16": fp16 + sme, "bf16": bf16 + sme}
    return {"fp16": "unknown CPU architecture: measure", "bf16": "unknown CPU architecture: measure"}


def describe_cpu(flags: list[str] | None = None, arch: str | None = None, model: str | None = None) -> str:
    """This CPU in words: its model, its half-precision flags, and what follows for fp16/bf16 speed.

    Usage::

        print(hardware.describe_cpu())                                   # this machine
        print(hardware.describe_cpu(["avx2", "fma", "f16c"], "x86", "an AVX2-only CPU"))
    """
    arch = arch or cpu_arch()
    flags = cpu_flags(precision_flags(arch)) if flags is None else flags
    model = model or cpu_model()
    if flags is None:
        return f"{model} ({arch}): its feature flags cannot be read here; measure fp16/bf16 (notebook 03)"
    wanted = precision_flags(arch)
    has = [f for f in wanted if f in flags]
    lacks = [f for f in wanted if f not in flags]
    outlook = half_precision_outlook(flags, arch)
    return "\n".join(
        [
            f"{model} ({arch}): has {', '.join(has) or 'none of them'}; lacks {', '.join(lacks) or 'none'}",
            f"  fp16: {outlook['fp16']}",
            f"  bf16: {outlook['bf16']}",
            "  (what the instructions allow; whether torch/MLX kernels use them is measured in notebook 03)",
        ]
    )


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
