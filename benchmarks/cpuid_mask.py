"""Emulate an older CPU family for a benchmark: the process and its children see, through CPUID, only
the instruction sets a oneDNN ISA name admits (cpuid_mask.c, preloaded).

oneDNN's own cap (ONEDNN_MAX_CPU_ISA) reaches oneDNN and OpenVINO's matrix products only: ONNX
Runtime's MLAS, torch's dispatch and OpenVINO's own emitters read CPUID themselves. Masking CPUID
reaches them all, so every system of a benchmark runs on the family, not the OpenVINO ones alone. What
it cannot change is the cores themselves: caches, clocks and port counts stay this CPU's."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from fastmarco.model.runtimes import ONEDNN_ISA_BITS, ONEDNN_ISA_CAP, cpu_flags

SOURCE = Path(__file__).with_suffix(".c")
MASK = "CPUID_MASK"  # what cpuid_mask.c reads: "leaf.subleaf.reg=bits,..." (hex)

# Each instruction set CPUID reports (leaf, subleaf, register, bit) beside the oneDNN ISA that first
# has it; a family keeps what its ISA's bits hold. The AVX-512 extensions Ice Lake and Zen 4 share
# (IFMA, VBMI, BITALG, VPOPCNTDQ) go with AVX512_CORE_BF16, the family that stands for Zen 4.
FEATURES: dict[str, tuple[int, int, str, int, str]] = {
    "avx512f": (7, 0, "ebx", 16, "AVX512_CORE"),
    "avx512dq": (7, 0, "ebx", 17, "AVX512_CORE"),
    "avx512ifma": (7, 0, "ebx", 21, "AVX512_CORE_BF16"),
    "avx512cd": (7, 0, "ebx", 28, "AVX512_CORE"),
    "avx512bw": (7, 0, "ebx", 30, "AVX512_CORE"),
    "avx512vl": (7, 0, "ebx", 31, "AVX512_CORE"),
    "avx512vbmi": (7, 0, "ecx", 1, "AVX512_CORE_BF16"),
    "avx512_vbmi2": (7, 0, "ecx", 6, "AVX512_CORE_BF16"),
    "avx512_vnni": (7, 0, "ecx", 11, "AVX512_CORE_VNNI"),
    "avx512_bitalg": (7, 0, "ecx", 12, "AVX512_CORE_BF16"),
    "avx512_vpopcntdq": (7, 0, "ecx", 14, "AVX512_CORE_BF16"),
    "amx_bf16": (7, 0, "edx", 22, "AVX512_CORE_AMX"),
    "avx512_fp16": (7, 0, "edx", 23, "AVX512_CORE_FP16"),
    "amx_tile": (7, 0, "edx", 24, "AVX512_CORE_AMX"),
    "amx_int8": (7, 0, "edx", 25, "AVX512_CORE_AMX"),
    "avx_vnni": (7, 1, "eax", 4, "AVX2_VNNI"),
    "avx512_bf16": (7, 1, "eax", 5, "AVX512_CORE_BF16"),
    "amx_fp16": (7, 1, "eax", 21, "AVX512_CORE_AMX_FP16"),
    "avx_ifma": (7, 1, "eax", 23, "AVX2_VNNI_2"),
    "avx_vnni_int8": (7, 1, "edx", 4, "AVX2_VNNI_2"),
    "avx_ne_convert": (7, 1, "edx", 5, "AVX2_VNNI_2"),
    "avx10": (7, 1, "edx", 19, "AVX10_1_512"),
}


def admits(isa: str, feature: str) -> bool:
    """Whether the family oneDNN's ISA names has FEATURE."""
    needed = ONEDNN_ISA_BITS[FEATURES[feature][4]]
    return needed & ONEDNN_ISA_BITS[isa] == needed


def mask(isa: str) -> str:
    """CPUID_MASK for the family ISA names: every listed instruction set it lacks, cleared."""
    cleared: dict[tuple[int, int, str], int] = {}
    for feature, (leaf, subleaf, register, bit, _) in FEATURES.items():
        if not admits(isa, feature):
            key = (leaf, subleaf, register)
            cleared[key] = cleared.get(key, 0) | 1 << bit
    return ",".join(f"{leaf:x}.{sub:x}.{reg}={bits:x}" for (leaf, sub, reg), bits in cleared.items())


# glibc picks its string functions' kernels before any preloaded library runs: its tunables say
# which of them to leave out (names glibc does not know are ignored)
GLIBC_AVX512 = ("AVX512F", "AVX512CD", "AVX512BW", "AVX512DQ", "AVX512VL")


def unavailable() -> str | None:
    """Why CPUID cannot be masked here, or None where it can."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return "CPUID masking needs Linux on x86-64"
    if "cpuid_fault" not in cpu_flags():
        return "this CPU (or its hypervisor) has no CPUID faulting (flag cpuid_fault)"
    return None


def build(work: Path) -> Path:
    """cpuid_mask.c compiled into WORK (by the system's C compiler), rebuilt when the source is newer."""
    library = work / "cpuid_mask.so"
    if not library.exists() or library.stat().st_mtime < SOURCE.stat().st_mtime:
        compiler = os.environ.get("CC", "cc")
        staged = library.with_suffix(".so.partial")
        command = [compiler, "-O2", "-shared", "-fPIC", "-o", str(staged), str(SOURCE), "-ldl"]
        subprocess.run(command, check=True)
        staged.replace(library)
    return library


def environment(isa: str, work: Path) -> dict[str, str]:
    """The environment variables under which a process runs as the family ISA names: CPUID masked,
    oneDNN capped (what fastmarco decides by the CPU follows the cap), glibc's AVX-512 kernels off."""
    preload = " ".join(filter(None, [str(build(work)), os.environ.get("LD_PRELOAD", "")]))
    variables = {"LD_PRELOAD": preload, MASK: mask(isa), ONEDNN_ISA_CAP: isa}
    if not admits(isa, "avx512f"):
        hwcaps = "glibc.cpu.hwcaps=" + ",".join(f"-{name}" for name in GLIBC_AVX512)
        variables["GLIBC_TUNABLES"] = ":".join(filter(None, [os.environ.get("GLIBC_TUNABLES", ""), hwcaps]))
    return variables


def reexec_as(isa: str, work: Path) -> None:
    """Run this very command again as the family ISA names (never returns), unless it already does."""
    if os.environ.get(MASK) == mask(isa):
        return
    why = unavailable()
    if why:
        sys.exit(f"--emulate-isa {isa}: {why}")
    os.execve(sys.executable, [sys.executable, *sys.argv], os.environ | environment(isa, work))


def seen_features() -> list[str]:
    """The instruction sets this process sees through CPUID (numpy's reading of it): under a mask, the
    proof that it took."""
    from numpy._core._multiarray_umath import __cpu_features__

    return sorted(name for name, present in __cpu_features__.items() if present)
