// Helpers for the LibTorch tests: an in-memory StoreReader with optional injected faults.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "fixtures.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"
#include "imgstore/store.hpp"
#include "imgstore/torch/dataset.hpp"

namespace imgstore::test {

// Holds its images in memory; label i defaults to i (so targets name records). Record
// `bad_index` (if set) throws DataError as a corrupt record would.
class MemoryReader : public StoreReader {
 public:
  static constexpr std::uint64_t kNoFault = ~std::uint64_t{0};

  explicit MemoryReader(ImageBatch images, std::string name = "memory.lmdb")
      : StoreReader(name, make_manifest(images), ReaderOptions{}), images_(std::move(images)) {}

  std::int64_t read_one(std::uint64_t index, std::uint8_t* out) const override {
    check_index(index);
    if (index == bad_index.load()) {
      throw DataError(fmt::format("corrupt record in '{}' {}: injected fault", path_.string(),
                                  record_name(index)));
    }
    std::memcpy(out, images_.image(index), image_bytes());
    const std::int64_t label = images_.labels[index];
    check_record(index, out, label);
    return label;
  }

  const ImageBatch& images() const { return images_; }

  mutable std::atomic<std::uint64_t> bad_index{kNoFault};

 protected:
  std::string record_name(std::uint64_t index) const override {
    return fmt::format("key '{:08d}'", index);
  }

 private:
  static Manifest make_manifest(const ImageBatch& images) {
    Manifest m;
    m.format = Format::Lmdb;
    m.split = "memory";
    m.count = images.size();
    m.shape = images.shape;
    ContentDigest digest;
    for (std::size_t i = 0; i < images.size(); ++i) {
      m.checksums.push_back(record_checksum(images.image(i), images.shape.bytes(), images.labels[i]));
      digest.add(m.checksums.back());
    }
    m.content_digest = digest.value();
    return m;
  }

  ImageBatch images_;
};

// A MemoryReader that reports itself as sharded over `ranges`, as a sharded LMDB/HDF5 store
// would.
class ShardedMemoryReader : public MemoryReader {
 public:
  using Ranges = std::vector<std::pair<std::uint64_t, std::uint64_t>>;
  ShardedMemoryReader(ImageBatch images, Ranges ranges)
      : MemoryReader(std::move(images)), ranges_(std::move(ranges)) {}
  Ranges shard_ranges() const override { return ranges_; }

 private:
  Ranges ranges_;
};

// count deterministic images of h x w x c whose label is their index.
inline ImageBatch indexed_images(std::size_t count, std::uint32_t h = 8, std::uint32_t w = 8,
                                 std::uint32_t c = 3, std::uint64_t seed = 7) {
  ImageBatch b = fixtures::make_images(count, Shape{h, w, c}, 10, seed);
  for (std::size_t i = 0; i < count; ++i) b.labels[i] = static_cast<std::int64_t>(i);
  return b;
}

inline std::shared_ptr<MemoryReader> memory_reader(std::size_t count, std::uint32_t h = 8,
                                                   std::uint32_t w = 8, std::uint32_t c = 3) {
  return std::make_shared<MemoryReader>(indexed_images(count, h, w, c));
}

// Image i of a batch as a CHW uint8 tensor, transposed by hand (the reference).
inline torch::Tensor reference_chw(const ImageBatch& b, std::size_t i) {
  const auto& s = b.shape;
  auto t = torch::empty({s.channels, s.height, s.width}, torch::kUInt8);
  auto* out = t.data_ptr<std::uint8_t>();
  const std::uint8_t* in = b.image(i);
  for (std::uint32_t y = 0; y < s.height; ++y)
    for (std::uint32_t x = 0; x < s.width; ++x)
      for (std::uint32_t ch = 0; ch < s.channels; ++ch)
        out[(ch * s.height + y) * s.width + x] = in[(y * s.width + x) * s.channels + ch];
  return t;
}

// Dataset options that refuse any store format but `format` (for open_dataset).
inline DatasetOptions expecting(Format format) {
  DatasetOptions o;
  o.format = format;
  return o;
}

// Resident set size in bytes, from /proc/self/statm.
inline std::size_t rss_bytes() {
  std::FILE* f = std::fopen("/proc/self/statm", "r");
  if (!f) return 0;
  unsigned long size = 0, resident = 0;
  if (std::fscanf(f, "%lu %lu", &size, &resident) != 2) resident = 0;
  std::fclose(f);
  return resident * static_cast<std::size_t>(sysconf(_SC_PAGESIZE));
}

// Threads of this process, from /proc/self/status.
inline int thread_count() {
  std::FILE* f = std::fopen("/proc/self/status", "r");
  if (!f) return -1;
  char line[256];
  int threads = -1;
  while (std::fgets(line, sizeof line, f)) {
    if (std::sscanf(line, "Threads: %d", &threads) == 1) break;
  }
  std::fclose(f);
  return threads;
}

}  // namespace imgstore::test
