#include "topk.hpp"

#include <stdexcept>
#include <string>
#include <utility>

namespace fastmarco {

void TopKHeap::swap_slots(std::size_t a, std::size_t b) {
  std::swap(scores_[a], scores_[b]);
  std::swap(ids_[a], ids_[b]);
}

void TopKHeap::sift_up(std::size_t i) {
  while (i > 0) {
    const std::size_t parent = (i - 1) / 2;
    if (!above(i, parent)) break;
    swap_slots(i, parent);
    i = parent;
  }
}

void TopKHeap::sift_down(std::size_t i) {
  const std::size_t n = scores_.size();
  for (;;) {
    const std::size_t left = 2 * i + 1;
    if (left >= n) break;
    std::size_t worst = left;
    if (left + 1 < n && above(left + 1, left)) worst = left + 1;
    if (!above(worst, i)) break;
    swap_slots(i, worst);
    i = worst;
  }
}

void TopKHeap::drain_sorted(float* out_scores, std::int64_t* out_ids) {
  // Popping the root repeatedly yields worst-first, so fill from the back.
  std::int64_t n = static_cast<std::int64_t>(scores_.size());
  for (std::int64_t slot = n; slot < k_; ++slot) {
    out_scores[slot] = kMissingScore;
    out_ids[slot] = kMissingId;
  }
  while (n > 0) {
    out_scores[n - 1] = scores_[0];
    out_ids[n - 1] = ids_[0];
    scores_[0] = scores_.back();
    ids_[0] = ids_.back();
    scores_.pop_back();
    ids_.pop_back();
    --n;
    if (n > 0) sift_down(0);
  }
}

void merge_topk(const float* scores, const std::int64_t* ids, const std::int64_t* id_offsets, std::int64_t nshard,
                std::int64_t nq, std::int64_t k, float* out_scores, std::int64_t* out_ids) {
  std::vector<std::int64_t> cursor(static_cast<std::size_t>(nshard));
  for (std::int64_t q = 0; q < nq; ++q) {
    // Validate order first so a bad input is reported, not silently mis-merged.
    for (std::int64_t s = 0; s < nshard; ++s) {
      const float* ls = scores + (s * nq + q) * k;
      const std::int64_t* li = ids + (s * nq + q) * k;
      for (std::int64_t j = 1; j < k; ++j) {
        if (li[j] == kMissingId) continue;
        if (li[j - 1] == kMissingId || !is_better(ls[j - 1], li[j - 1], ls[j], li[j])) {
          throw std::invalid_argument("merge_topk: list of shard " + std::to_string(s) + ", query " +
                                      std::to_string(q) + " is not sorted best-first (position " +
                                      std::to_string(j) + ")");
        }
      }
      cursor[static_cast<std::size_t>(s)] = 0;
    }
    float* os = out_scores + q * k;
    std::int64_t* oi = out_ids + q * k;
    // nshard is small (shards or threads), so a linear scan of the heads beats a heap.
    for (std::int64_t j = 0; j < k; ++j) {
      std::int64_t best_shard = -1;
      float best_score = kMissingScore;
      std::int64_t best_id = kMissingId;
      for (std::int64_t s = 0; s < nshard; ++s) {
        const std::int64_t c = cursor[static_cast<std::size_t>(s)];
        if (c >= k) continue;
        const std::int64_t local = ids[(s * nq + q) * k + c];
        if (local == kMissingId) continue;
        const float sc = scores[(s * nq + q) * k + c];
        const std::int64_t global = local + id_offsets[s];
        if (best_shard < 0 || is_better(sc, global, best_score, best_id)) {
          best_shard = s;
          best_score = sc;
          best_id = global;
        }
      }
      if (best_shard < 0) {
        for (; j < k; ++j) {
          os[j] = kMissingScore;
          oi[j] = kMissingId;
        }
        break;
      }
      os[j] = best_score;
      oi[j] = best_id;
      ++cursor[static_cast<std::size_t>(best_shard)];
    }
  }
}

}  // namespace fastmarco
