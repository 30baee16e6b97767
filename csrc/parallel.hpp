// Thread helpers: each call starts its own std::threads and joins them (no pool is kept between
// calls); callers bound the count with a thread budget. The first exception is rethrown in the caller.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <mutex>
#include <thread>
#include <vector>

namespace fastmarco {

// Threads to use: `requested` (0 = all hardware threads), at least 1, at most `max_useful`.
inline int thread_count(int requested, std::int64_t max_useful) {
  const int wanted = requested > 0 ? requested : static_cast<int>(std::thread::hardware_concurrency());
  return static_cast<int>(std::clamp<std::int64_t>(wanted, 1, std::max<std::int64_t>(1, max_useful)));
}

// Runs body(t) for t in [0, threads) on `threads` threads and joins them.
template <typename Body>
void run_threads(int threads, const Body& body) {
  if (threads == 1) {
    body(0);
    return;
  }
  std::vector<std::thread> pool;
  std::exception_ptr failure;
  std::mutex failure_lock;
  for (int t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        body(t);
      } catch (...) {
        std::lock_guard<std::mutex> guard(failure_lock);
        if (!failure) failure = std::current_exception();
      }
    });
  }
  for (auto& thread : pool) thread.join();
  if (failure) std::rethrow_exception(failure);
}

// 1 / |v| (0 for a zero vector), accumulated in double: the cosine scale of a query.
inline float inverse_norm(const float* v, std::int64_t dim) {
  double sq = 0.0;
  for (std::int64_t i = 0; i < dim; ++i) sq += static_cast<double>(v[i]) * v[i];
  return sq > 0.0 ? static_cast<float>(1.0 / std::sqrt(sq)) : 0.0f;
}

}  // namespace fastmarco
