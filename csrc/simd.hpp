// Runtime CPU dispatch: the hot kernels are compiled once per SIMD variant in one module, and the
// variant is chosen once, at the first kernel call, from CPUID (or forced with FASTMARCO_SIMD).
//
// A kernel file defines its kernels in an `.inl` included once per variant, inside a namespace of
// its own and between FASTMARCO_TARGET_PUSH / FASTMARCO_TARGET_POP, so only those functions are
// compiled for the variant's instructions; headers (the standard library's included) are included
// before, at the build's baseline, and every variant lives in one translation unit, so no template
// instantiation compiled for a wider ISA can be shared with the baseline path by the linker.
#pragma once

#include <string>
#include <vector>

// FASTMARCO_BASELINE_ONLY builds what a non-x86 CPU gets (the baseline variant alone): for compilers
// without target attributes, and for tests/test_native_build.py to compile the ARM path on x86.
#if (defined(__x86_64__) || defined(__i386__)) && !defined(FASTMARCO_BASELINE_ONLY)
#define FASTMARCO_X86 1
#endif

#define FASTMARCO_PRAGMA(x) _Pragma(#x)
#if defined(__clang__)
#define FASTMARCO_TARGET_PUSH(isa) \
  FASTMARCO_PRAGMA(clang attribute push(__attribute__((target(isa))), apply_to = function))
#define FASTMARCO_TARGET_POP FASTMARCO_PRAGMA(clang attribute pop)
#else
#define FASTMARCO_TARGET_PUSH(isa) FASTMARCO_PRAGMA(GCC push_options) FASTMARCO_PRAGMA(GCC target(isa))
#define FASTMARCO_TARGET_POP FASTMARCO_PRAGMA(GCC pop_options)
#endif

// The x86 variants' instruction sets (exactly what simd.cpp checks the CPU for; baseline is the build's
// own, x86-64 unless -march), scheduled for the first CPUs that have them.
#define FASTMARCO_ISA_AVX2 "avx2,fma,f16c,popcnt,tune=haswell"
#define FASTMARCO_ISA_AVX512 "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c,popcnt,tune=skylake-avx512"

namespace fastmarco {

// Baseline is what the build targets (x86-64, or armv8-a whose Advanced SIMD makes it "neon").
enum class Simd : int { Baseline = 0, Avx2 = 1, Avx512 = 2 };

std::vector<Simd> simd_compiled();   // the variants this build holds, widest first
std::vector<Simd> simd_supported();  // those this CPU runs, widest first (Baseline always last)
Simd simd_active();                  // FASTMARCO_SIMD where set, else the widest supported
void set_simd_active(Simd simd);     // throws std::invalid_argument where the CPU cannot run it
std::string simd_name(Simd simd);
Simd simd_from_name(const std::string& name);  // throws std::invalid_argument

}  // namespace fastmarco
