// Exhaustive Hamming top-k over packed binary codes (one bit per dimension, dim / 8 bytes a row):
// the first pass of the binary index kind, re-scored exactly afterwards.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "simd.hpp"

namespace fastmarco {

// The popcount kernels this build has. `Auto` picks the fastest the CPU supports at run time, so a
// portable build (no -march) still uses AVX-512 VPOPCNTDQ or the POPCNT instruction where present.
enum class HammingKernel { Auto, Generic, Popcnt, Avx2, Avx512 };

// Kernels this CPU can run, fastest first (Generic always last).
std::vector<HammingKernel> hamming_kernels();
// What `Auto` runs under a SIMD variant (simd_active() by default): the fastest kernel within it.
HammingKernel auto_kernel(Simd simd);
std::string hamming_kernel_name(HammingKernel kernel);
HammingKernel hamming_kernel_from_name(const std::string& name);  // throws std::invalid_argument

// queries: (nq, nbytes) and codes: (n, nbytes), both row-major uint8. Writes the k nearest rows per
// query, nearest first (smaller distance, then lower row), as (nq, k) distances and row indices,
// padded with (-1, -1) when n < k. Rows are split across `threads` (0: every hardware thread).
// Throws std::invalid_argument for bad sizes or a kernel this CPU cannot run.
void hamming_topk(const std::uint8_t* queries, std::int64_t nq, const std::uint8_t* codes, std::int64_t n,
                  std::int64_t nbytes, std::int64_t k, int threads, HammingKernel kernel, std::int32_t* out_distances,
                  std::int64_t* out_ids);

}  // namespace fastmarco
