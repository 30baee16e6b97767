#include "refine.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "half.hpp"
#include "parallel.hpp"
#include "topk.hpp"


namespace fastmarco {
namespace {

// dot(q, row) and |row|^2 in fp32, the same accumulation as a straightforward loop.
template <typename T>
void dot_and_norm(const float* q, const T* row, std::int64_t dim, float& dot, float& sq) {
  float d = 0.0f, s = 0.0f;
  for (std::int64_t i = 0; i < dim; ++i) {
    float v;
    if constexpr (std::is_same_v<T, std::uint16_t>) {
      v = half_to_float(row[i]);
    } else {
      v = row[i];
    }
    d += q[i] * v;
    s += v * v;
  }
  dot = d;
  sq = s;
}

}  // namespace

void refine_topk(const float* queries, std::int64_t nq, std::int64_t dim, const std::vector<RowBlock>& blocks,
                 const std::int64_t* candidates, std::int64_t ncand, std::int64_t k, Metric metric, int threads,
                 float* out_scores, std::int64_t* out_ids) {
  std::vector<std::int64_t> starts(blocks.size() + 1, 0);
  for (std::size_t b = 0; b < blocks.size(); ++b) starts[b + 1] = starts[b] + blocks[b].count;
  const std::int64_t total = starts.back();
  const bool cosine = metric == Metric::Cosine;

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
        dot_and_norm(query, static_cast<const std::uint16_t*>(blocks[b].rows) + local * dim, dim, dot, sq);
      } else {
        dot_and_norm(query, static_cast<const float*>(blocks[b].rows) + local * dim, dim, dot, sq);
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
