// The one deterministic random source of imgstore: splitmix64 and Fisher-Yates. Synthetic
// images, the loader's shuffling and augmentation, the fixtures and the benchmarks all draw
// from here, so a seed means the same sequence on every platform and standard library (std
// distributions are not portable, and stores and batches must not depend on the platform).
// Header-only: the loaders and tests include it too.
#pragma once

#include <cstddef>
#include <cstdint>
#include <utility>

namespace imgstore::detail {

// splitmix64's increment (2^64 / golden ratio).
constexpr std::uint64_t kGoldenGamma = 0x9e3779b97f4a7c15ULL;

// splitmix64's output function: a bijective, well-mixed hash of one 64-bit word.
constexpr std::uint64_t mix64(std::uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// One splitmix64 step from state x: the value SplitMix(x).next() returns.
constexpr std::uint64_t splitmix64(std::uint64_t x) { return mix64(x + kGoldenGamma); }

// A seed derived from two values (e.g. the run's seed and the epoch).
constexpr std::uint64_t mix_seed(std::uint64_t a, std::uint64_t b) {
  return splitmix64(a ^ splitmix64(b + 0x632be59bd9b4e019ULL));
}

// The splitmix64 generator: tiny state, good statistics, trivially seeded per item.
class SplitMix {
 public:
  explicit SplitMix(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() { return mix64(state_ += kGoldenGamma); }
  // Uniform in [0, bound), Lemire's multiply-shift (bias below 2^-40 for our bounds).
  std::uint64_t below(std::uint64_t bound) {
    return static_cast<std::uint64_t>((static_cast<unsigned __int128>(next()) * bound) >> 64);
  }

 private:
  std::uint64_t state_;
};

// Fisher-Yates over v[0, n): for i = n .. 2, swap v[i-1] with v[pick(i)], pick(i) in [0, i).
template <typename T, typename Pick>
void fisher_yates(T* v, std::size_t n, Pick&& pick) {
  for (std::size_t i = n; i > 1; --i) {
    std::swap(v[i - 1], v[static_cast<std::size_t>(pick(static_cast<std::uint64_t>(i)))]);
  }
}

// The shuffle of the loader and datasets: Fisher-Yates drawing with SplitMix::below.
template <typename T>
void shuffle(T* v, std::size_t n, SplitMix rng) {
  fisher_yates(v, n, [&rng](std::uint64_t i) { return rng.below(i); });
}

}  // namespace imgstore::detail
