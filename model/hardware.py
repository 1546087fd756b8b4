"""What this CPU can do fast: its feature flags, and whether it multiplies bf16 natively.

Shared by training (``precision: auto``) and serving (``app.precision``): on CPUs without native
bf16 (AVX2 only) bf16 matrix multiplies are emulated and several times slower than fp32.
Deliberately not here: GPUs (torch.cuda answers for those) and non-Linux systems (no
/proc/cpuinfo: no flags, so no native bf16 is assumed).
"""

from __future__ import annotations

import functools
from pathlib import Path

NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


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
