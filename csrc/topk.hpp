// Top-K selection and k-way merging with deterministic ties.
//
// Order: a higher score is better; among equal scores the lower id is better.
// Sentinel for "fewer than k results": score = -infinity, id = -1 (kMissingId), always last.
#pragma once

#include <cstdint>
#include <limits>
#include <vector>

namespace fastmarco {

constexpr std::int64_t kMissingId = -1;
constexpr float kMissingScore = -std::numeric_limits<float>::infinity();

inline bool is_better(float score_a, std::int64_t id_a, float score_b, std::int64_t id_b) {
  return score_a > score_b || (score_a == score_b && id_a < id_b);
}

// Keeps the k best (score, id) pairs; the root of the binary heap is the worst kept pair.
class TopKHeap {
 public:
  explicit TopKHeap(std::int64_t k) : k_(k) {
    scores_.reserve(static_cast<std::size_t>(k));
    ids_.reserve(static_cast<std::size_t>(k));
  }

  // Scores below this cannot enter (equal scores may, depending on id).
  float threshold() const {
    return static_cast<std::int64_t>(scores_.size()) < k_ ? -std::numeric_limits<float>::infinity() : scores_[0];
  }

  void push(float score, std::int64_t id) {
    if (static_cast<std::int64_t>(scores_.size()) < k_) {
      scores_.push_back(score);
      ids_.push_back(id);
      sift_up(scores_.size() - 1);
    } else if (k_ > 0 && is_better(score, id, scores_[0], ids_[0])) {
      scores_[0] = score;
      ids_[0] = id;
      sift_down(0);
    }
  }

  // Writes the kept pairs best-first into k slots, padding with the sentinel; empties the heap.
  void drain_sorted(float* out_scores, std::int64_t* out_ids);

 private:
  // "a sits above b": a is worse than b.
  bool above(std::size_t a, std::size_t b) const { return is_better(scores_[b], ids_[b], scores_[a], ids_[a]); }
  void swap_slots(std::size_t a, std::size_t b);
  void sift_up(std::size_t i);
  void sift_down(std::size_t i);

  std::int64_t k_;
  std::vector<float> scores_;
  std::vector<std::int64_t> ids_;
};

// Merges per-shard top-k lists, faiss merge_knn_results style.
// scores/ids: (nshard, nq, k) row-major, each list best-first with sentinels at its end;
// local ids are shifted by id_offsets[shard]. Writes (nq, k) best-first, sentinel padded.
// Throws std::invalid_argument if an input list is not sorted best-first.
void merge_topk(const float* scores, const std::int64_t* ids, const std::int64_t* id_offsets, std::int64_t nshard,
                std::int64_t nq, std::int64_t k, float* out_scores, std::int64_t* out_ids);

}  // namespace fastmarco
