"""hardware: the CPU flags that decide half-precision speed, and what they mean, for any CPU."""

from __future__ import annotations

import pytest

from mpcourse import hardware


@pytest.mark.parametrize(
    ("machine", "arch"),
    [("x86_64", "x86"), ("AMD64", "x86"), ("arm64", "arm64"), ("aarch64", "arm64"), ("riscv64", "other")],
)
def test_cpu_arch(machine, arch):
    assert hardware.cpu_arch(machine) == arch


def test_this_cpus_flags_are_read_and_belong_to_its_architecture():
    flags = hardware.cpu_flags()
    if flags is None:
        pytest.skip("no /proc/cpuinfo or sysctl here")
    assert set(flags) <= set(hardware.precision_flags())
    text = hardware.describe_cpu()
    assert hardware.cpu_model() in text and "fp16:" in text and "bf16:" in text
    for f in flags:
        assert f in text.splitlines()[0].split("lacks")[0]  # listed as present, not as lacking


def test_avx2_only_says_both_halves_are_slower_than_fp32():
    out = hardware.half_precision_outlook(["avx2", "fma", "f16c"], "x86")
    assert "slower than fp32" in out["fp16"] and "slower than fp32" in out["bf16"]


def test_avx512_bf16_without_amx_says_bf16_can_beat_fp32_and_fp16_slower():
    out = hardware.half_precision_outlook(["avx2", "fma", "f16c", "avx512f", "avx512_bf16"], "x86")
    assert "match or beat fp32" in out["bf16"] and "far ahead of fp16" in out["bf16"]
    assert "slower than fp32" in out["fp16"]


def test_amx_and_avx512_fp16_say_native_matmuls():
    out = hardware.half_precision_outlook(["avx512_fp16", "amx_tile", "amx_bf16"], "x86")
    assert "AMX-BF16" in out["bf16"] and "faster than fp32" in out["bf16"]
    assert "AVX512-FP16" in out["fp16"] and "slower" not in out["fp16"]
    assert "AMX-FP16" in hardware.half_precision_outlook(["amx_fp16"], "x86")["fp16"]


def test_arm64_features_fp16_bf16_and_sme():
    full = hardware.half_precision_outlook(["asimd", "fphp", "asimdhp", "bf16", "sme"], "arm64")
    assert "FEAT_FP16" in full["fp16"] and "FEAT_BF16" in full["bf16"] and "SME" in full["bf16"]
    bare = hardware.half_precision_outlook(["asimd"], "arm64")
    assert "slower than fp32" in bare["fp16"] and "slower than fp32" in bare["bf16"] and "SME" not in bare["fp16"]


def test_describe_any_cpu_names_what_it_has_and_lacks():
    text = hardware.describe_cpu(["avx2", "fma", "f16c"], "x86", "an AVX2-only CPU")
    first = text.splitlines()[0]
    assert first.startswith("an AVX2-only CPU (x86): has avx2, fma, f16c; lacks avx512f")
    assert "amx_bf16" in first.split("lacks")[1]
    arm = hardware.describe_cpu(["asimd", "bf16"], "arm64", "some arm64 CPU")
    assert "has asimd, bf16; lacks fphp" in arm


def test_unreadable_flags_say_so_and_point_at_a_measurement(monkeypatch):
    monkeypatch.setattr(hardware, "cpu_flags", lambda wanted=None: None)
    assert "cannot be read here; measure" in hardware.describe_cpu(arch="x86", model="x")


def test_mac_sysctl_flags_are_mapped(monkeypatch):
    values = {"hw.optional.arm64": "1", "hw.optional.arm.FEAT_FP16": "1", "hw.optional.arm.FEAT_BF16": "1",
              "hw.optional.arm.FEAT_SME": "0", "hw.optional.AdvSIMD": "1"}  # fmt: skip
    monkeypatch.setattr(hardware, "_sysctl", values.get)
    monkeypatch.setattr(hardware, "_cpuinfo_field", lambda name: None)
    monkeypatch.setattr(hardware.sys, "platform", "darwin")
    assert hardware.cpu_flags(hardware.ARM_PRECISION_FLAGS) == ["asimd", "fphp", "asimdhp", "bf16"]
