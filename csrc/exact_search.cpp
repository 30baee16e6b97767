#include "exact_search.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "half.hpp"
#include "parallel.hpp"
#include "simd.hpp"
#include "topk.hpp"

#ifdef FASTMARCO_X86
#include <immintrin.h>
#endif

namespace fastmarco {
namespace {

constexpr std::int64_t kDimPad = 8;            // queries and panels are padded to a multiple of 8 dims
constexpr std::int64_t kSpanRows = 32;         // threads' row ranges start at multiples of this
constexpr std::int64_t kTileQueries = 6;       // queries per micro-tile: 6 x 2 accumulators
constexpr std::int64_t kBlockBytes = 256 << 10;  // packed row block, sized for L2
constexpr std::int64_t kQueryChunkBytes = 2 << 20;  // queries kept hot while a thread streams its rows

std::int64_t round_up(std::int64_t v, std::int64_t m) { return (v + m - 1) / m * m; }

struct AlignedFloats {
  explicit AlignedFloats(std::size_t n) : data(static_cast<float*>(::operator new[](n * sizeof(float), std::align_val_t(64)))) {}
  ~AlignedFloats() { ::operator delete[](data, std::align_val_t(64)); }
  AlignedFloats(const AlignedFloats&) = delete;
  AlignedFloats& operator=(const AlignedFloats&) = delete;
  float* data;
};

struct Job {
  const float* queries;  // (nq, padded_dim), normalised for cosine
  std::int64_t nq;
  std::int64_t dim;
  std::int64_t padded_dim;
  std::int64_t k;
  bool cosine;
};

using ScanFn = void (*)(const Job&, const void*, DType, std::int64_t, std::int64_t, float*, std::int64_t*);

}  // namespace

// One copy of the kernels per SIMD variant: 16 fp32 lanes a vector for AVX-512, 8 for AVX2, 4 for the
// baseline (SSE2, NEON). Baseline uses F16C (and 8 lanes) only where the build's own -march has it.
namespace exact_baseline {
#if defined(__F16C__) && defined(__AVX__)
#define FASTMARCO_KERNEL_F16C 1
#define FASTMARCO_KERNEL_LANES 8
#else
#define FASTMARCO_KERNEL_F16C 0
#define FASTMARCO_KERNEL_LANES 4  // one SSE2 or NEON register: 12 accumulators fit in 16 registers
#endif
#include "exact_kernels.inl"
#undef FASTMARCO_KERNEL_F16C
#undef FASTMARCO_KERNEL_LANES
}  // namespace exact_baseline

#ifdef FASTMARCO_X86
#define FASTMARCO_KERNEL_F16C 1
FASTMARCO_TARGET_PUSH(FASTMARCO_ISA_AVX2)
namespace exact_avx2 {
#define FASTMARCO_KERNEL_LANES 8
#include "exact_kernels.inl"
#undef FASTMARCO_KERNEL_LANES
}  // namespace exact_avx2
FASTMARCO_TARGET_POP
FASTMARCO_TARGET_PUSH(FASTMARCO_ISA_AVX512)
namespace exact_avx512 {
#define FASTMARCO_KERNEL_LANES 16
#include "exact_kernels.inl"
#undef FASTMARCO_KERNEL_LANES
}  // namespace exact_avx512
FASTMARCO_TARGET_POP
#undef FASTMARCO_KERNEL_F16C
#endif

namespace {

ScanFn scan_for(Simd simd) {
  switch (simd) {
#ifdef FASTMARCO_X86
    case Simd::Avx512:
      return exact_avx512::scan;
    case Simd::Avx2:
      return exact_avx2::scan;
#endif
    default:
      return exact_baseline::scan;
  }
}

}  // namespace

void exact_search(const float* queries, std::int64_t nq, std::int64_t dim, const void* rows, DType dtype,
                  std::int64_t nrows, std::int64_t k, const SearchOptions& options, float* out_scores,
                  std::int64_t* out_ids) {
  if (nq < 0 || dim <= 0 || nrows < 0 || k <= 0) throw std::invalid_argument("exact_search: bad sizes");
  if (nq == 0) return;
  const bool cosine = options.metric == Metric::Cosine;
  const std::int64_t pd = round_up(dim, kDimPad);
  AlignedFloats padded(static_cast<std::size_t>(nq * pd));
  for (std::int64_t q = 0; q < nq; ++q) {
    float* dst = padded.data + q * pd;
    const float* src = queries + q * dim;
    const float scale = cosine ? inverse_norm(src, dim) : 1.0f;
    for (std::int64_t d = 0; d < dim; ++d) dst[d] = src[d] * scale;
    std::fill(dst + dim, dst + pd, 0.0f);
  }
  const Job job{padded.data, nq, dim, pd, k, cosine};

  const int threads = thread_count(options.threads, nrows / kSpanRows);
  const ScanFn scan_fn = scan_for(simd_active());
  auto scan = [&](std::int64_t begin, std::int64_t end, float* s, std::int64_t* i) {
    scan_fn(job, rows, dtype, begin, end, s, i);
  };
  if (threads == 1) {
    scan(0, nrows, out_scores, out_ids);
    return;
  }
  // Each thread scans a contiguous, tile-aligned row range; the lists are merged at the end.
  const std::size_t per_thread = static_cast<std::size_t>(nq * k);
  std::vector<float> part_scores(per_thread * threads);
  std::vector<std::int64_t> part_ids(per_thread * threads);
  const std::int64_t span = round_up((nrows + threads - 1) / threads, kSpanRows);
  run_threads(threads, [&](int t) {
    const std::int64_t begin = std::min(nrows, t * span);
    const std::int64_t end = std::min(nrows, begin + span);
    scan(begin, end, part_scores.data() + t * per_thread, part_ids.data() + t * per_thread);
  });
  const std::vector<std::int64_t> offsets(static_cast<std::size_t>(threads), 0);
  merge_topk(part_scores.data(), part_ids.data(), offsets.data(), threads, nq, k, out_scores, out_ids);
}

}  // namespace fastmarco
