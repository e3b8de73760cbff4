// Internals shared by the datasets and the prefetch loader: sampling plans, the deterministic
// random numbers behind shuffling and augmentation, and the HWC -> CHW batch writer.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "imgstore/image.hpp"
#include "imgstore/torch/dataset.hpp"

namespace imgstore::detail {

// splitmix64: a tiny, well-mixed, platform-independent generator (std distributions are not
// portable across standard libraries, and batches must not depend on the platform either).
inline std::uint64_t splitmix64(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

inline std::uint64_t mix_seed(std::uint64_t a, std::uint64_t b) {
  return splitmix64(a ^ splitmix64(b + 0x632be59bd9b4e019ULL));
}

class SplitMix {
 public:
  explicit SplitMix(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    state_ += 0x9e3779b97f4a7c15ULL;
    std::uint64_t z = state_;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  // Uniform in [0, bound), Lemire's multiply-shift (bias below 2^-40 for our bounds).
  std::uint64_t below(std::uint64_t bound) {
    return static_cast<std::uint64_t>((static_cast<unsigned __int128>(next()) * bound) >> 64);
  }

 private:
  std::uint64_t state_;
};

// DistributedSampler semantics over `count` records for one epoch: seeded permutation (or
// identity), padded by repeating its start to a multiple of world_size (or cut when drop_last),
// then rank's positions rank, rank + world_size, ...
struct SamplingPlan {
  std::uint64_t count = 0;
  bool shuffle = true;
  std::uint64_t seed = 0;
  bool drop_last = false;
  std::size_t rank = 0;
  std::size_t world_size = 1;
  std::size_t batch_size = 1;

  std::size_t samples_per_rank() const;
  std::size_t batches() const;
  std::vector<std::uint64_t> indices(std::uint64_t epoch) const;
};

// Per-sample augmentation, drawn from (seed, epoch, record index).
struct Augmentation {
  std::int32_t shift_y = 0;  // crop offset relative to the unpadded image, -padding..padding
  std::int32_t shift_x = 0;
  bool flip = false;
};

// Writes HWC uint8 images into CHW slots of a uint8 or float32 batch, transforming on the way.
class BatchWriter {
 public:
  BatchWriter(const Shape& shape, const Normalize& normalize, std::uint32_t crop_padding,
              bool horizontal_flip);

  bool to_float() const { return to_float_; }
  bool augments() const { return padding_ > 0 || flip_; }
  std::size_t elements() const { return shape_.bytes(); }  // per image, C*H*W

  Augmentation draw(std::uint64_t seed, std::uint64_t epoch, std::uint64_t index) const;

  // Image `hwc` into slot `slot` of `out` (uint8_t* or float*, per to_float()).
  void write(const std::uint8_t* hwc, void* out, std::size_t slot,
             const Augmentation& aug = {}) const;

 private:
  Shape shape_;
  bool to_float_;
  std::uint32_t padding_;
  bool flip_;
  // float output: v * scale[c] + bias[c] = (v/255 - mean[c]) / std[c]
  std::vector<float> scale_, bias_;
};

// Reusable per-thread scratch for HWC reads (grows to the largest batch, then stays).
std::uint8_t* thread_scratch(std::size_t bytes);

}  // namespace imgstore::detail
