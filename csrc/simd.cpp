#include "simd.hpp"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <stdexcept>

namespace fastmarco {
namespace {

std::atomic<int> g_active{-1};

bool cpu_runs(Simd simd) {
  switch (simd) {
    case Simd::Baseline:
      return true;
#ifdef FASTMARCO_X86
    case Simd::Avx2:
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c") &&
             __builtin_cpu_supports("popcnt");
    case Simd::Avx512:
      return cpu_runs(Simd::Avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
#endif
    default:
      return false;
  }
}

std::string names(const std::vector<Simd>& variants) {
  std::string text;
  for (const Simd simd : variants) text += (text.empty() ? "" : ", ") + simd_name(simd);
  return text;
}

Simd checked(Simd simd, const std::string& source) {
  const auto supported = simd_supported();
  if (std::find(supported.begin(), supported.end(), simd) == supported.end()) {
    throw std::invalid_argument(source + simd_name(simd) + ": this CPU or build cannot run it; it runs " +
                                names(supported));
  }
  return simd;
}

}  // namespace

std::vector<Simd> simd_compiled() {
#ifdef FASTMARCO_X86
  return {Simd::Avx512, Simd::Avx2, Simd::Baseline};
#else
  return {Simd::Baseline};
#endif
}

std::vector<Simd> simd_supported() {
  std::vector<Simd> found;
  for (const Simd simd : simd_compiled()) {
    if (cpu_runs(simd)) found.push_back(simd);
  }
  return found;
}

Simd simd_active() {
  int active = g_active.load(std::memory_order_acquire);
  if (active < 0) {
    const char* forced = std::getenv("FASTMARCO_SIMD");
    Simd chosen = simd_supported().front();
    if (forced != nullptr && *forced != '\0' && std::string(forced) != "auto") {
      Simd named;
      try {
        named = simd_from_name(forced);
      } catch (const std::invalid_argument& e) {
        throw std::invalid_argument(std::string("FASTMARCO_SIMD: ") + e.what());
      }
      chosen = checked(named, "FASTMARCO_SIMD=");
    }
    active = static_cast<int>(chosen);
    g_active.store(active, std::memory_order_release);
  }
  return static_cast<Simd>(active);
}

void set_simd_active(Simd simd) { g_active.store(static_cast<int>(checked(simd, "")), std::memory_order_release); }

std::string simd_name(Simd simd) {
  switch (simd) {
    case Simd::Avx2:
      return "avx2";
    case Simd::Avx512:
      return "avx512";
    case Simd::Baseline:
      break;
  }
#ifdef FASTMARCO_X86
  return "baseline";
#else
  return "neon";
#endif
}

Simd simd_from_name(const std::string& name) {
  if (name == "baseline" || name == simd_name(Simd::Baseline)) return Simd::Baseline;
  for (const Simd simd : simd_compiled()) {
    if (simd_name(simd) == name) return simd;
  }
  throw std::invalid_argument("'" + name + "' is not a SIMD variant of this build; it has " +
                              names(simd_compiled()));
}

}  // namespace fastmarco
