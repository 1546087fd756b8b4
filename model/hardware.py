"""What this CPU can do fast: its feature flags, whether it multiplies bf16 natively, and
whether it has int8 dot-product instructions (VNNI).

Shared by training (``precision: auto``) and serving (``app.precision``, ``app.quantization``):
on CPUs without native bf16 (AVX2 only) bf16 matrix multiplies are emulated and several times
slower than fp32; on CPUs without VNNI, int8 kernels multiply u8 x s8 pairs with ``vpmaddubsw``,
whose int16 sums saturate unless activations are kept to 7 bits (torch's ``reduce_range``).
Deliberately not here: GPUs (torch.cuda answers for those) and non-Linux systems (no
/proc/cpuinfo: no flags, so no native bf16 is assumed).
"""

from __future__ import annotations

import functools
from pathlib import Path

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})
# Instructions that accumulate u8 x s8 products straight into int32 (no int16 intermediate).
INT8_DOT_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


@functools.cache
def cpu_flags() -> frozenset[str] | None:
    """This CPU's feature flags from /proc/cpuinfo (None where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return None


def native_bf16_cpu() -> bool:
    """True if this CPU multiplies bf16 natively (``avx512_bf16`` or AMX)."""
    return bool((cpu_flags() or frozenset()) & NATIVE_BF16_FLAGS)


def int8_dot_cpu() -> bool:
    """True if this CPU multiplies int8 into int32 without saturating (VNNI or AMX).

    Example: flags ``avx2 avx512f avx512_vnni`` -> True; ``avx2 fma`` -> False.
    """
    return bool((cpu_flags() or frozenset()) & INT8_DOT_FLAGS)
