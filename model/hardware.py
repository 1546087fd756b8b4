"""What this CPU can do fast: its feature flags, whether it multiplies bf16 natively, and
whether it has int8 dot-product instructions (VNNI).

Shared by training (``precision: auto``), serving (``app.precision``, ``app.quantization``) and
the benchmarks (which record ``REPORTED_FLAGS`` and the CPU's model name beside their figures):
on CPUs without native bf16 (AVX2 only) bf16 matrix multiplies are emulated and several times
slower than fp32; on CPUs without VNNI, int8 kernels multiply u8 x s8 pairs with ``vpmaddubsw``,
whose int16 sums saturate unless activations are kept to 7 bits (torch's ``reduce_range``).
Deliberately not here: GPUs (torch.cuda answers for those) and non-Linux systems (no
/proc/cpuinfo: no flags, so no native bf16 is assumed, and no model name).
"""

from __future__ import annotations

import functools
from pathlib import Path

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# The flags worth recording beside a speed figure, in this order: vector width (AVX2, AVX-512),
# then the dot-product instructions behind fast bf16 and int8 matmuls (VNNI, AMX). One list, so
# that every benchmark names the same ones.
REPORTED_FLAGS = (
    "avx2",
    "avx512f",
    "avx512_bf16",
    "avx512_vnni",
    "amx_bf16",
    "amx_int8",
    "avx_vnni",
)
# Instructions that accumulate u8 x s8 products straight into int32 (no int16 intermediate).
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.cache
def _cpuinfo_field(name: str) -> str | None:
    """The value of the first ``name : value`` line of /proc/cpuinfo (None where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == name:
            return value.strip()
    return None


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags from /proc/cpuinfo (None where there is none, e.g. macOS)."""
    line = _cpuinfo_field("flags")
    return None if line is None else frozenset(line.split())


def cpu_model_name() -> str | None:
    """This CPU's model name from /proc/cpuinfo (``"AMD EPYC 7B13"``; None where there is none)."""
    return _cpuinfo_field("model name")


def native_bf16_cpu() -> bool:
    """True if this CPU multiplies bf16 natively (``avx512_bf16`` or AMX)."""
    return bool((cpu_flags() or frozenset()) & NATIVE_BF16_FLAGS)


def int8_dot_cpu() -> bool:
    """True if this CPU multiplies int8 into int32 without saturating (VNNI or AMX).

    Example: flags ``avx2 avx512f avx512_vnni`` -> True; ``avx2 fma`` -> False.
    """
    return bool((cpu_flags() or frozenset()) & INT8_DOT_FLAGS)
