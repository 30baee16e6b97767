#include "refine.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <utility>

#include "half.hpp"
#include "parallel.hpp"
#include "simd.hpp"
#include "topk.hpp"

#ifdef FASTMARCO_X86
#include <immintrin.h>
#endif

namespace fastmarco {
namespace {

using DotFn16 = void (*)(const float*, const std::uint16_t*, std::int64_t, float&, float&);
using DotFn32 = void (*)(const float*, const float*, std::int64_t, float&, float&);

}  // namespace

// One copy of the kernel per SIMD variant. Baseline uses F16C only where the build's own -march has it.
namespace refine_baseline {
#if defined(__F16C__)
#define FASTMARCO_KERNEL_F16C 1
#else
#define FASTMARCO_KERNEL_F16C 0
#endif
#include "refine_kernels.inl"
#undef FASTMARCO_KERNEL_F16C
}  // namespace refine_baseline

#ifdef FASTMARCO_X86
#define FASTMARCO_KERNEL_F16C 1
FASTMARCO_TARGET_PUSH(FASTMARCO_ISA_AVX2)
namespace refine_avx2 {
#include "refine_kernels.inl"
}  // namespace refine_avx2
FASTMARCO_TARGET_POP
FASTMARCO_TARGET_PUSH(FASTMARCO_ISA_AVX512)
namespace refine_avx512 {
#include "refine_kernels.inl"
}  // namespace refine_avx512
FASTMARCO_TARGET_POP
#undef FASTMARCO_KERNEL_F16C
#endif

namespace {

std::pair<DotFn16, DotFn32> dot_for(Simd simd) {
  switch (simd) {
#ifdef FASTMARCO_X86
    case Simd::Avx512:
      return {refine_avx512::dot_and_norm<std::uint16_t>, refine_avx512::dot_and_norm<float>};
    case Simd::Avx2:
      return {refine_avx2::dot_and_norm<std::uint16_t>, refine_avx2::dot_and_norm<float>};
#endif
    default:
      return {refine_baseline::dot_and_norm<std::uint16_t>, refine_baseline::dot_and_norm<float>};
  }
}

}  // namespace

void refine_topk(const float* queries, std::int64_t nq, std::int64_t dim, const std::vector<RowBlock>& blocks,
                 const std::int64_t* candidates, std::int64_t ncand, std::int64_t k, Metric metric, int threads,
                 float* out_scores, std::int64_t* out_ids) {
  std::vector<std::int64_t> starts(blocks.size() + 1, 0);
  for (std::size_t b = 0; b < blocks.size(); ++b) starts[b + 1] = starts[b] + blocks[b].count;
  const std::int64_t total = starts.back();
  const bool cosine = metric == Metric::Cosine;
  const auto [dot16, dot32] = dot_for(simd_active());

  auto work = [&](std::int64_t q) {
    const float* query = queries + q * dim;
    const float qscale = cosine ? inverse_norm(query, dim) : 1.0f;
    TopKHeap heap(k);
    for (std::int64_t c = 0; c < ncand; ++c) {
      const std::int64_t id = candidates[q * ncand + c];
      if (id == kMissingId) continue;
      if (id < 0 || id >= total) {
        throw std::out_of_range("candidate id " + std::to_string(id) + " is outside [0, " + std::to_string(total) + ")");
      }
      const auto b = static_cast<std::size_t>(std::upper_bound(starts.begin(), starts.end(), id) - starts.begin() - 1);
      const std::int64_t local = id - starts[b];
      float dot = 0.0f, sq = 0.0f;
      if (blocks[b].dtype == DType::Float16) {
        dot16(query, static_cast<const std::uint16_t*>(blocks[b].rows) + local * dim, dim, dot, sq);
      } else {
        dot32(query, static_cast<const float*>(blocks[b].rows) + local * dim, dim, dot, sq);
      }
      const float score = cosine ? (sq > 0.0f ? dot * qscale / std::sqrt(sq) : 0.0f) : dot;
      heap.push(score, id);
    }
    heap.drain_sorted(out_scores + q * k, out_ids + q * k);
  };

  const int n_threads = thread_count(threads, nq);
  run_threads(n_threads, [&](int t) {
    for (std::int64_t q = t; q < nq; q += n_threads) work(q);
  });
}

}  // namespace fastmarco
