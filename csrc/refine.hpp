// Exact re-scoring of approximate candidates (faiss PQ / IVF-PQ) against the stored rows.
#pragma once

#include <cstdint>
#include <vector>

#include "exact_search.hpp"
#include "shard_file.hpp"

namespace fastmarco {

struct RowBlock {
  const void* rows;  // (count, dim) row-major of `dtype`
  DType dtype;
  std::int64_t count;
};

// candidates: (nq, ncand) global row ids over the concatenated blocks (-1 = none, ignored).
// Writes the k best candidates per query, best-first (higher score, then lower id), padded with
// (-inf, -1). Throws std::out_of_range for an id beyond the blocks.
void refine_topk(const float* queries, std::int64_t nq, std::int64_t dim, const std::vector<RowBlock>& blocks,
                 const std::int64_t* candidates, std::int64_t ncand, std::int64_t k, Metric metric, int threads,
                 float* out_scores, std::int64_t* out_ids);

}  // namespace fastmarco
