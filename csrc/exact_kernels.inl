// The exact-search kernels of one SIMD variant (see simd.hpp): included by exact_search.cpp once per
// variant, inside its namespace and target region, after every header it needs.
// FASTMARCO_KERNEL_LANES: fp32 lanes a vector (8 or 16); FASTMARCO_KERNEL_F16C: AVX and F16C intrinsics.

constexpr std::int64_t kPanel = FASTMARCO_KERNEL_LANES;  // rows per packed panel (one vector per dimension)
constexpr std::int64_t kTileRows = 2 * kPanel;           // rows per micro-tile: two panels

// GCC/Clang vector extension, lowered to whatever registers the variant's target has.
typedef float vf __attribute__((vector_size(4 * FASTMARCO_KERNEL_LANES), aligned(4 * FASTMARCO_KERNEL_LANES)));

template <typename T>
float load_value(const T* p);
template <>
float load_value<float>(const float* p) {
  return *p;
}
template <>
float load_value<std::uint16_t>(const std::uint16_t* p) {
#if FASTMARCO_KERNEL_F16C
  return _cvtsh_ss(*p);
#else
  return half_to_float(*p);
#endif
}

#if FASTMARCO_KERNEL_F16C
inline __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
inline __m256 load8(const std::uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

// Transposes an 8x8 block held in r[0..7] (r[i] = row i) so that r[d] holds dimension d of all rows.
inline void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}
#endif

// Packs `count` (<= kPanel) rows starting at `src` into a panel laid out as panel[d * kPanel + row],
// converting to fp32 and zero-filling missing rows and padded dimensions.
template <typename T>
void pack_panel(const T* src, std::int64_t dim, std::int64_t count, std::int64_t padded_dim, float* panel) {
  std::int64_t d = 0;
#if FASTMARCO_KERNEL_F16C
  if (count == kPanel) {
    for (; d + 8 <= dim; d += 8) {
      for (std::int64_t group = 0; group < kPanel; group += 8) {  // 8x8 blocks of the panel's rows
        __m256 r[8];
        for (int i = 0; i < 8; ++i) r[i] = load8(src + (group + i) * dim + d);
        transpose8(r);
        for (int i = 0; i < 8; ++i) _mm256_store_ps(panel + (d + i) * kPanel + group, r[i]);
      }
    }
  }
#endif
  for (; d < padded_dim; ++d) {
    for (std::int64_t i = 0; i < kPanel; ++i) {
      panel[d * kPanel + i] = (i < count && d < dim) ? load_value(src + i * dim + d) : 0.0f;
    }
  }
}

// scores[q][r] for MQ queries against one tile of two panels, r in [0, kTileRows).
template <int MQ>
void micro_tile(const float* queries, std::int64_t padded_dim, const float* panel0, const float* panel1,
                float scores[kTileQueries][kTileRows]) {
  vf acc0[MQ], acc1[MQ];
  for (int i = 0; i < MQ; ++i) {
    acc0[i] = vf{};
    acc1[i] = vf{};
  }
  const vf* x0 = reinterpret_cast<const vf*>(panel0);
  const vf* x1 = reinterpret_cast<const vf*>(panel1);
  for (std::int64_t d = 0; d < padded_dim; ++d) {
    const vf a = x0[d];
    const vf b = x1[d];
    for (int i = 0; i < MQ; ++i) {
      const vf q = queries[i * padded_dim + d] - vf{};  // broadcast
      acc0[i] += q * a;
      acc1[i] += q * b;
    }
  }
  for (int i = 0; i < MQ; ++i) {
    std::memcpy(scores[i], &acc0[i], sizeof(vf));
    std::memcpy(scores[i] + kPanel, &acc1[i], sizeof(vf));
  }
}

using TileFn = void (*)(const float*, std::int64_t, const float*, const float*, float[kTileQueries][kTileRows]);
constexpr TileFn kTileFns[kTileQueries + 1] = {nullptr,        micro_tile<1>, micro_tile<2>, micro_tile<3>,
                                               micro_tile<4>, micro_tile<5>, micro_tile<6>};

// Scans rows [begin, end) for all queries; writes best-first (nq, k) lists with row ids.
template <typename T>
void scan_rows(const Job& job, const T* rows, std::int64_t begin, std::int64_t end, float* out_scores,
               std::int64_t* out_ids) {
  const std::int64_t pd = job.padded_dim;
  const std::int64_t block_rows =
      std::max<std::int64_t>(kTileRows, kBlockBytes / (pd * static_cast<std::int64_t>(sizeof(float))) / kTileRows * kTileRows);
  const std::int64_t chunk_queries =
      std::max<std::int64_t>(kTileQueries, kQueryChunkBytes / (pd * static_cast<std::int64_t>(sizeof(float))));
  AlignedFloats packed(static_cast<std::size_t>(block_rows * pd));
  // Without F16C, fp16 rows are widened a block at a time first: a contiguous loop that vectorizes,
  // where widening inside the panel transpose would be one strided scalar conversion per value.
  constexpr bool widen_first = std::is_same_v<T, std::uint16_t> && !FASTMARCO_KERNEL_F16C;
  std::vector<float> widened(widen_first ? static_cast<std::size_t>(block_rows * job.dim) : 0);
  std::vector<float> inv_norm(static_cast<std::size_t>(block_rows), 1.0f);
  std::vector<TopKHeap> heaps;
  alignas(64) float tile[kTileQueries][kTileRows];

  for (std::int64_t q_begin = 0; q_begin < job.nq; q_begin += chunk_queries) {
    const std::int64_t q_end = std::min(job.nq, q_begin + chunk_queries);
    heaps.assign(static_cast<std::size_t>(q_end - q_begin), TopKHeap(job.k));
    for (std::int64_t block = begin; block < end; block += block_rows) {
      const std::int64_t n = std::min(block_rows, end - block);
      const std::int64_t n_tiles = (n + kTileRows - 1) / kTileRows;
      if constexpr (widen_first) {
        const T* source = rows + block * job.dim;
        for (std::int64_t i = 0; i < n * job.dim; ++i) widened[static_cast<std::size_t>(i)] = half_to_float(source[i]);
      }
      for (std::int64_t p = 0; p < n_tiles * 2; ++p) {
        const std::int64_t first = p * kPanel;
        const std::int64_t count = std::clamp<std::int64_t>(n - first, 0, kPanel);
        float* panel = packed.data + p * kPanel * pd;
        if constexpr (widen_first) {
          pack_panel(widened.data() + first * job.dim, job.dim, count, pd, panel);
        } else {
          pack_panel(rows + (block + first) * job.dim, job.dim, count, pd, panel);
        }
      }
      if (job.cosine) {
        for (std::int64_t r = 0; r < n; ++r) {
          const float* panel = packed.data + (r / kPanel) * kPanel * pd;
          float sq = 0.0f;
          for (std::int64_t d = 0; d < job.dim; ++d) {
            const float v = panel[d * kPanel + r % kPanel];
            sq += v * v;
          }
          inv_norm[static_cast<std::size_t>(r)] = sq > 0.0f ? 1.0f / std::sqrt(sq) : 0.0f;
        }
      }
      for (std::int64_t q0 = q_begin; q0 < q_end; q0 += kTileQueries) {
        const int mq = static_cast<int>(std::min<std::int64_t>(kTileQueries, q_end - q0));
        const TileFn fn = kTileFns[mq];
        for (std::int64_t t = 0; t < n_tiles; ++t) {
          const float* p0 = packed.data + (2 * t) * kPanel * pd;
          fn(job.queries + q0 * pd, pd, p0, p0 + kPanel * pd, tile);
          const std::int64_t row0 = t * kTileRows;
          const std::int64_t valid = std::min<std::int64_t>(kTileRows, n - row0);
          for (int i = 0; i < mq; ++i) {
            TopKHeap& heap = heaps[static_cast<std::size_t>(q0 - q_begin + i)];
            float threshold = heap.threshold();
            for (std::int64_t r = 0; r < valid; ++r) {
              float s = tile[i][r];
              if (job.cosine) s *= inv_norm[static_cast<std::size_t>(row0 + r)];
              if (s >= threshold) {
                heap.push(s, block + row0 + r);
                threshold = heap.threshold();
              }
            }
          }
        }
      }
    }
    for (std::int64_t q = q_begin; q < q_end; ++q) {
      heaps[static_cast<std::size_t>(q - q_begin)].drain_sorted(out_scores + q * job.k, out_ids + q * job.k);
    }
  }
}


// The variant's entry: rows [begin, end) of `rows` (of `dtype`) for every query of `job`.
void scan(const Job& job, const void* rows, DType dtype, std::int64_t begin, std::int64_t end, float* out_scores,
          std::int64_t* out_ids) {
  if (dtype == DType::Float16) {
    scan_rows(job, static_cast<const std::uint16_t*>(rows), begin, end, out_scores, out_ids);
  } else {
    scan_rows(job, static_cast<const float*>(rows), begin, end, out_scores, out_ids);
  }
}
