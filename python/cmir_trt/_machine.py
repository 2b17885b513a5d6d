"""Facts about this machine that every reported figure carries (RESULTS.md wants the CPU name with each number).

No heavy imports: benchmarks, the CLI (`cmir-trt info`) and the engine's bf16 refusal use it.
"""

from __future__ import annotations

import platform

CPUINFO = "/proc/cpuinfo"
# The /proc/cpuinfo flags that decide which precisions the CPU engines can run fast: bf16 needs avx512_bf16
# (Zen 4/5, Cooper Lake and later Xeons) or AMX (amx_bf16 + amx_tile, Sapphire Rapids and later); avx512f/avx2 say
# which fp32 kernels oneDNN can pick.
BF16_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_name() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows."""
    try:
        with open(CPUINFO, encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # not Linux, or /proc hidden: what the platform module knows
        return platform.processor() or platform.machine() or "unknown CPU"
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpuinfo_flags(path: str) -> set[str] | None:
    # The first "flags" line: every core of the machines we run on reports the same set.
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        return None
    return None


def cpu_flags(cpuinfo: str = CPUINFO) -> dict[str, bool]:
    """{flag: present} for BF16_FLAGS, read from /proc/cpuinfo; every flag False where that file cannot be read
    (not Linux), so callers must not treat a missing file as proof of support."""
    flags = _cpuinfo_flags(cpuinfo) or set()
    return {name: name in flags for name in BF16_FLAGS}


def bf16_support(flags: dict[str, bool] | None = None, cpuinfo: str = CPUINFO) -> tuple[bool, str]:
    """(supported, reason): whether this CPU has native bf16 arithmetic (avx512_bf16, or AMX with amx_bf16 and
    amx_tile), with a one-line reason that names the flags (used by `cmir-trt info`, the engine's refusal message and
    the benchmark). `flags` overrides the /proc/cpuinfo reading (tests, or flags recorded on another machine)."""
    if flags is None:
        if _cpuinfo_flags(cpuinfo) is None:
            return False, f"cannot read the CPU flags ({cpuinfo}); bf16 support unknown"
        flags = cpu_flags(cpuinfo)
    have = [name for name in ("avx512_bf16", "amx_bf16") if flags.get(name)]
    if flags.get("amx_bf16") and flags.get("amx_tile"):
        return True, "CPU has AMX (amx_bf16, amx_tile)" + (" and avx512_bf16" if flags.get("avx512_bf16") else "")
    if flags.get("avx512_bf16"):
        return True, "CPU has avx512_bf16"
    missing = "avx512_bf16 and AMX (amx_bf16 + amx_tile)"
    extra = f" (has {', '.join(have)} only)" if have else ""
    return False, f"CPU ({cpu_name()}) lacks {missing}{extra}"
