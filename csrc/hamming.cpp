#include "hamming.hpp"

#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "parallel.hpp"
#include "simd.hpp"
#include "topk.hpp"

#ifdef FASTMARCO_X86
#include <immintrin.h>
#endif

namespace fastmarco {
namespace {

constexpr std::int64_t kBlockRows = 2048;  // rows whose distances are computed before selection

// distances[r] = popcount(query XOR codes[r]) for r in [0, count).
using DistanceFn = void (*)(const std::uint8_t* query, const std::uint8_t* codes, std::int64_t count,
                            std::int64_t nbytes, std::uint16_t* distances);

inline std::uint64_t load_word(const std::uint8_t* p) {
  std::uint64_t w;
  std::memcpy(&w, p, sizeof(w));
  return w;
}

// The byte tail (nbytes % 8) by a table, shared by the word kernels.
inline int tail_bits(const std::uint8_t* a, const std::uint8_t* b, std::int64_t from, std::int64_t nbytes) {
  int bits = 0;
  for (std::int64_t i = from; i < nbytes; ++i) {
    std::uint8_t x = static_cast<std::uint8_t>(a[i] ^ b[i]);
    while (x) {
      x &= static_cast<std::uint8_t>(x - 1);
      ++bits;
    }
  }
  return bits;
}

// Portable: SWAR popcount of 64-bit words (what a build without POPCNT would otherwise call a
// library routine for).
inline int swar_popcount(std::uint64_t x) {
  x = x - ((x >> 1) & 0x5555555555555555ULL);
  x = (x & 0x3333333333333333ULL) + ((x >> 2) & 0x3333333333333333ULL);
  x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0FULL;
  return static_cast<int>((x * 0x0101010101010101ULL) >> 56);
}

void distances_generic(const std::uint8_t* query, const std::uint8_t* codes, std::int64_t count, std::int64_t nbytes,
                       std::uint16_t* distances) {
  const std::int64_t words = nbytes / 8;
  for (std::int64_t r = 0; r < count; ++r) {
    const std::uint8_t* row = codes + r * nbytes;
    int bits = 0;
    for (std::int64_t w = 0; w < words; ++w) bits += swar_popcount(load_word(query + 8 * w) ^ load_word(row + 8 * w));
    distances[r] = static_cast<std::uint16_t>(bits + tail_bits(query, row, 8 * words, nbytes));
  }
}

#ifdef FASTMARCO_X86
__attribute__((target("popcnt"))) void distances_popcnt(const std::uint8_t* query, const std::uint8_t* codes,
                                                        std::int64_t count, std::int64_t nbytes,
                                                        std::uint16_t* distances) {
  const std::int64_t words = nbytes / 8;
  for (std::int64_t r = 0; r < count; ++r) {
    const std::uint8_t* row = codes + r * nbytes;
    long long bits = 0;
    for (std::int64_t w = 0; w < words; ++w) {
      bits += _mm_popcnt_u64(load_word(query + 8 * w) ^ load_word(row + 8 * w));
    }
    distances[r] = static_cast<std::uint16_t>(bits + tail_bits(query, row, 8 * words, nbytes));
  }
}

// AVX2 (Mula): popcount of each byte by two 4-bit table lookups, summed per 64-bit lane by SAD.
__attribute__((target("avx2"))) void distances_avx2(const std::uint8_t* query, const std::uint8_t* codes,
                                                    std::int64_t count, std::int64_t nbytes,
                                                    std::uint16_t* distances) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                         2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0F);
  const std::int64_t vectors = nbytes / 32;
  for (std::int64_t r = 0; r < count; ++r) {
    const std::uint8_t* row = codes + r * nbytes;
    __m256i acc = _mm256_setzero_si256();
    for (std::int64_t v = 0; v < vectors; ++v) {
      const __m256i x = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(query + 32 * v)),
                                         _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + 32 * v)));
      const __m256i counts = _mm256_add_epi8(_mm256_shuffle_epi8(table, _mm256_and_si256(x, low)),
                                             _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(x, 4), low)));
      acc = _mm256_add_epi64(acc, _mm256_sad_epu8(counts, _mm256_setzero_si256()));
    }
    long long bits = _mm256_extract_epi64(acc, 0) + _mm256_extract_epi64(acc, 1) + _mm256_extract_epi64(acc, 2) +
                     _mm256_extract_epi64(acc, 3);
    for (std::int64_t w = 4 * vectors; w < nbytes / 8; ++w) {
      bits += swar_popcount(load_word(query + 8 * w) ^ load_word(row + 8 * w));
    }
    distances[r] = static_cast<std::uint16_t>(bits + tail_bits(query, row, nbytes / 8 * 8, nbytes));
  }
}

// AVX-512 VPOPCNTDQ: eight 64-bit popcounts an instruction; the last partial vector by a masked load.
// GCC 12's own _mm512_reduce_add_epi64 trips -Wmaybe-uninitialized (its _mm256_undefined_si256).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
__attribute__((target("avx512f,avx512vpopcntdq"))) void distances_avx512(const std::uint8_t* query,
                                                                         const std::uint8_t* codes, std::int64_t count,
                                                                         std::int64_t nbytes,
                                                                         std::uint16_t* distances) {
  const std::int64_t words = nbytes / 8;
  const std::int64_t full = words / 8;
  const __mmask8 rest = static_cast<__mmask8>((1u << (words % 8)) - 1u);
  for (std::int64_t r = 0; r < count; ++r) {
    const std::uint8_t* row = codes + r * nbytes;
    __m512i acc = _mm512_setzero_si512();
    for (std::int64_t v = 0; v < full; ++v) {
      const __m512i x =
          _mm512_xor_si512(_mm512_loadu_si512(query + 64 * v), _mm512_loadu_si512(row + 64 * v));
      acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(x));
    }
    if (rest) {
      const __m512i x = _mm512_xor_si512(_mm512_maskz_loadu_epi64(rest, query + 64 * full),
                                         _mm512_maskz_loadu_epi64(rest, row + 64 * full));
      acc = _mm512_add_epi64(acc, _mm512_popcnt_epi64(x));
    }
    const long long bits = _mm512_reduce_add_epi64(acc);
    distances[r] = static_cast<std::uint16_t>(bits + tail_bits(query, row, 8 * words, nbytes));
  }
}
#pragma GCC diagnostic pop
#endif

bool cpu_has(HammingKernel kernel) {
  switch (kernel) {
    case HammingKernel::Generic:
      return true;
#ifdef FASTMARCO_X86
    case HammingKernel::Popcnt:
      return __builtin_cpu_supports("popcnt");
    case HammingKernel::Avx2:
      return __builtin_cpu_supports("avx2");
    case HammingKernel::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vpopcntdq");
#endif
    default:
      return false;
  }
}

DistanceFn distance_fn(HammingKernel kernel) {
  switch (kernel) {
#ifdef FASTMARCO_X86
    case HammingKernel::Popcnt:
      return distances_popcnt;
    case HammingKernel::Avx2:
      return distances_avx2;
    case HammingKernel::Avx512:
      return distances_avx512;
#endif
    default:
      return distances_generic;
  }
}

// Rows [begin, end) against every query; best-first (nq, k) lists as (-distance, row) pairs.
void scan(const std::uint8_t* queries, std::int64_t nq, const std::uint8_t* codes, std::int64_t begin,
          std::int64_t end, std::int64_t nbytes, std::int64_t k, DistanceFn distances_of, float* out_scores,
          std::int64_t* out_ids) {
  std::vector<TopKHeap> heaps(static_cast<std::size_t>(nq), TopKHeap(k));
  std::vector<std::uint16_t> distances(static_cast<std::size_t>(kBlockRows));
  for (std::int64_t block = begin; block < end; block += kBlockRows) {
    const std::int64_t count = std::min(kBlockRows, end - block);
    for (std::int64_t q = 0; q < nq; ++q) {
      distances_of(queries + q * nbytes, codes + block * nbytes, count, nbytes, distances.data());
      TopKHeap& heap = heaps[static_cast<std::size_t>(q)];
      float threshold = heap.threshold();
      for (std::int64_t r = 0; r < count; ++r) {
        const float score = -static_cast<float>(distances[static_cast<std::size_t>(r)]);
        if (score >= threshold) {
          heap.push(score, block + r);
          threshold = heap.threshold();
        }
      }
    }
  }
  for (std::int64_t q = 0; q < nq; ++q) heaps[static_cast<std::size_t>(q)].drain_sorted(out_scores + q * k, out_ids + q * k);
}

}  // namespace

std::vector<HammingKernel> hamming_kernels() {
  std::vector<HammingKernel> found;
  for (const auto kernel : {HammingKernel::Avx512, HammingKernel::Avx2, HammingKernel::Popcnt, HammingKernel::Generic}) {
    if (cpu_has(kernel)) found.push_back(kernel);
  }
  return found;
}

HammingKernel auto_kernel(Simd simd) {
  // The fastest kernel within the active SIMD variant: forcing FASTMARCO_SIMD=baseline runs only
  // baseline instructions (no POPCNT, which x86-64 v1 lacks), as a bug report may need.
  for (const auto kernel : hamming_kernels()) {
    if (simd == Simd::Avx512 || (simd == Simd::Avx2 && kernel != HammingKernel::Avx512) ||
        kernel == HammingKernel::Generic) {
      return kernel;
    }
  }
  return HammingKernel::Generic;
}

std::string hamming_kernel_name(HammingKernel kernel) {
  switch (kernel) {
    case HammingKernel::Auto:
      return "auto";
    case HammingKernel::Generic:
      return "generic";
    case HammingKernel::Popcnt:
      return "popcnt";
    case HammingKernel::Avx2:
      return "avx2";
    case HammingKernel::Avx512:
      return "avx512-vpopcntdq";
  }
  return "?";
}

HammingKernel hamming_kernel_from_name(const std::string& name) {
  for (const auto kernel : {HammingKernel::Auto, HammingKernel::Generic, HammingKernel::Popcnt, HammingKernel::Avx2,
                            HammingKernel::Avx512}) {
    if (hamming_kernel_name(kernel) == name) return kernel;
  }
  throw std::invalid_argument("kernel must be one of auto, generic, popcnt, avx2, avx512-vpopcntdq; got '" + name +
                              "'");
}

void hamming_topk(const std::uint8_t* queries, std::int64_t nq, const std::uint8_t* codes, std::int64_t n,
                  std::int64_t nbytes, std::int64_t k, int threads, HammingKernel kernel, std::int32_t* out_distances,
                  std::int64_t* out_ids) {
  if (nq < 0 || n < 0 || nbytes <= 0 || k <= 0) throw std::invalid_argument("hamming_topk: bad sizes");
  if (nbytes * 8 > 65535) throw std::invalid_argument("hamming_topk: codes wider than 65,535 bits");
  if (kernel == HammingKernel::Auto) kernel = auto_kernel(simd_active());
  if (!cpu_has(kernel)) {
    throw std::invalid_argument("kernel '" + hamming_kernel_name(kernel) + "' is not supported by this CPU");
  }
  if (nq == 0) return;
  const DistanceFn distances_of = distance_fn(kernel);
  const int workers = thread_count(threads, n / kBlockRows + 1);
  const std::size_t per_worker = static_cast<std::size_t>(nq * k);
  std::vector<float> scores(per_worker * workers);
  std::vector<std::int64_t> ids(per_worker * workers);
  const std::int64_t span = (n + workers - 1) / workers;
  run_threads(workers, [&](int t) {
    const std::int64_t begin = std::min(n, t * span);
    const std::int64_t end = std::min(n, begin + span);
    scan(queries, nq, codes, begin, end, nbytes, k, distances_of, scores.data() + t * per_worker,
         ids.data() + t * per_worker);
  });
  std::vector<float> merged(workers == 1 ? 0 : per_worker);
  const float* best = scores.data();
  if (workers > 1) {
    const std::vector<std::int64_t> offsets(static_cast<std::size_t>(workers), 0);
    merge_topk(scores.data(), ids.data(), offsets.data(), workers, nq, k, merged.data(), out_ids);
    best = merged.data();
  } else {
    std::copy(ids.begin(), ids.end(), out_ids);
  }
  for (std::size_t i = 0; i < per_worker; ++i) {
    out_distances[i] = out_ids[i] == kMissingId ? -1 : static_cast<std::int32_t>(-best[i]);
  }
}

}  // namespace fastmarco
