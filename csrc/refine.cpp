#include "refine.hpp"

#include <algorithm>
#include <cmath>
#include <type_traits>
#include <exception>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>

#include "half.hpp"
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
    float qscale = 1.0f;
    if (cosine) {
      double sq = 0.0;
      for (std::int64_t i = 0; i < dim; ++i) sq += static_cast<double>(query[i]) * query[i];
      qscale = sq > 0.0 ? static_cast<float>(1.0 / std::sqrt(sq)) : 0.0f;
    }
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

  int n_threads = threads > 0 ? threads : static_cast<int>(std::thread::hardware_concurrency());
  n_threads = static_cast<int>(std::clamp<std::int64_t>(n_threads, 1, nq));
  std::vector<std::thread> pool;
  std::exception_ptr failure;
  std::mutex failure_lock;
  for (int t = 0; t < n_threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        for (std::int64_t q = t; q < nq; q += n_threads) work(q);
      } catch (...) {
        std::lock_guard<std::mutex> guard(failure_lock);
        failure = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  if (failure) std::rethrow_exception(failure);
}

}  // namespace fastmarco
