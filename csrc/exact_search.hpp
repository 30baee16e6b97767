// Exact top-k inner-product / cosine search of fp32 queries against fp16 or fp32 rows.
#pragma once

#include <cstdint>

#include "shard_file.hpp"

namespace fastmarco {

enum class Metric { InnerProduct, Cosine };

struct SearchOptions {
  Metric metric = Metric::InnerProduct;
  int threads = 0;  // 0: all hardware threads
};

// queries: (nq, dim) fp32 row-major; rows: (nrows, dim) of `dtype`, row-major.
// Writes (nq, k) scores and row indices [0, nrows) best-first (higher score, then lower row),
// padded with (-inf, -1) when nrows < k. For cosine, a zero-norm row or query scores 0.
// Rows are split across threads; each thread streams its rows once per query chunk. The kernels are
// the SIMD variant simd_active() names (simd.hpp).
void exact_search(const float* queries, std::int64_t nq, std::int64_t dim, const void* rows, DType dtype,
                  std::int64_t nrows, std::int64_t k, const SearchOptions& options, float* out_scores,
                  std::int64_t* out_ids);

}  // namespace fastmarco
