// The refine kernel of one SIMD variant (see simd.hpp): included by refine.cpp once per variant,
// inside its namespace and target region. FASTMARCO_KERNEL_F16C: widen fp16 with F16C.

inline float widen(float v) { return v; }
inline float widen(std::uint16_t h) {
#if FASTMARCO_KERNEL_F16C
  return _cvtsh_ss(h);
#else
  return half_to_float(h);
#endif
}

// dot(q, row) and |row|^2 in fp32, the same accumulation as a straightforward loop in every variant
// (the same bits); the variants differ in how fp16 is widened.
template <typename T>
void dot_and_norm(const float* q, const T* row, std::int64_t dim, float& dot, float& sq) {
  float d = 0.0f, s = 0.0f;
  for (std::int64_t i = 0; i < dim; ++i) {
    const float v = widen(row[i]);
    d += q[i] * v;
    s += v * v;
  }
  dot = d;
  sq = s;
}
