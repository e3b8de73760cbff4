// One bit flipped on disk in one record, read through the PrefetchLoader: with checksums on, the
// loop gets the batches before it and then the reader's DataError, naming the store and the
// record; with checksums off, raw layouts yield the batch holding the flipped byte. (PNG files
// carry CRCs of their own, so there the DataError comes either way.)
#include <doctest/doctest.h>

#include <fcntl.h>
#include <unistd.h>

#include <filesystem>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <torch/torch.h>

#include "../unit/test_support.hpp"
#include "imgstore/error.hpp"
#include "imgstore/torch/loader.hpp"
#include "torch_test_support.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

namespace {

constexpr std::size_t kRecords = 96;
constexpr std::size_t kBatch = 16;
const Shape kShape{16, 16, 3};  // 768 bytes of noise: a record's pixels occur once per copy

doctest::Contains has(const std::string& text) { return doctest::Contains(text.c_str()); }

// Flips bit `bit` of pixel byte `byte` of record `index` in every copy of the record's pixels
// found in `file` (LMDB's copy-on-write may leave stale copies in free pages; flipping those
// too is harmless). Returns how many copies it flipped.
int flip_record_pixels(const fs::path& file, const ImageBatch& images, std::size_t index,
                       std::size_t byte, int bit) {
  std::string data = test::slurp(file);
  const std::string needle(reinterpret_cast<const char*>(images.image(index)),
                           images.shape.bytes());
  int copies = 0;
  for (auto pos = data.find(needle); pos != std::string::npos; pos = data.find(needle, pos + 1)) {
    data[pos + byte] = static_cast<char>(data[pos + byte] ^ (1 << bit));
    ++copies;
  }
  test::spit(file, data);
  return copies;
}

// Flips one bit inside the image data (IDAT) of a PNG file.
void flip_png_pixels(const fs::path& file, std::mt19937_64& rng) {
  std::string data = test::slurp(file);
  const auto idat = data.find("IDAT");
  REQUIRE(idat != std::string::npos);
  const auto* p = reinterpret_cast<const std::uint8_t*>(data.data() + idat - 4);
  const std::size_t length = (std::size_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
  REQUIRE(length > 0);
  data[idat + 4 + rng() % length] ^= static_cast<char>(1 << (rng() % 8));
  test::spit(file, data);
}

struct Outcome {
  std::size_t batches = 0;  // batches the loop got
  bool found = false;       // the batch holding the record was seen
  torch::Tensor image;      // record's [C,H,W] as the loader yielded it
};

Outcome run_loader(const fs::path& store, bool checksums, std::size_t index) {
  LoaderOptions o;
  o.batch_size = kBatch;
  o.shuffle = false;  // in order: the bad record's batch is known
  o.threads = 2;
  o.prefetch_depth = 3;
  o.reader.verify_checksums = checksums;
  PrefetchLoader loader(store, o);
  Outcome out;
  for (auto& batch : loader) {
    const auto first = out.batches * kBatch;
    if (index >= first && index < first + static_cast<std::size_t>(batch.data.size(0))) {
      out.found = true;
      out.image = batch.data[static_cast<std::int64_t>(index - first)].clone();
      CHECK(batch.target[static_cast<std::int64_t>(index - first)].item<std::int64_t>() ==
            static_cast<std::int64_t>(index));
    }
    ++out.batches;
  }
  return out;
}

}  // namespace

TEST_CASE("bit flip: prefetch loader rethrows the DataError naming store and record, "
          "and yields the batch without checksums") {
  test::TempDir dir;
  const ImageBatch images = test::indexed_images(kRecords, kShape.height, kShape.width,
                                                 kShape.channels, 99);
  std::mt19937_64 rng(20261128);
  struct Case {
    const char* name;
    Format format;
    std::size_t chunk;
  };
  for (const Case& c : {Case{"train.lmdb", Format::Lmdb, 0}, Case{"train.h5", Format::Hdf5, 0},
                        Case{"chunked.h5", Format::Hdf5, 8}, Case{"train.png", Format::PngFolder, 0}}) {
    const std::string name = c.name;
    CAPTURE(name);
    const fs::path store = dir / c.name;
    WriterOptions w;
    w.durable = false;
    w.hdf5.chunk_records = c.chunk;
    store_many(c.format, store, images, {}, w);  // no class names: labels are the indices

    const std::size_t index = kBatch + rng() % (kRecords - kBatch);  // not in the first batch
    const std::size_t byte = rng() % kShape.bytes();
    const int bit = static_cast<int>(rng() % 8);
    CAPTURE(index);
    CAPTURE(byte);
    std::string record;
    if (c.format == Format::PngFolder) {
      flip_png_pixels(store / fmt::format("{:08d}.png", index), rng);
      record = fmt::format("{:08d}.png", index);
    } else {
      const fs::path file = c.format == Format::Lmdb ? store / "data.mdb" : store;
      REQUIRE(flip_record_pixels(file, images, index, byte, bit) >= 1);
      record = c.format == Format::Lmdb ? fmt::format("key '{:08d}'", index)
                                        : fmt::format("record {}:", index);
    }

    // Checksums on: the batches before the bad one, then the DataError naming store and record.
    try {
      run_loader(store, true, index);
      FAIL("the loader read the flipped record without an error");
    } catch (const DataError& e) {
      CHECK_MESSAGE(std::string(e.what()).find(store.string()) != std::string::npos, e.what());
      CHECK_MESSAGE(std::string(e.what()).find(record) != std::string::npos, e.what());
    }
    {
      // And the loop really got the earlier batches first.
      LoaderOptions o;
      o.batch_size = kBatch;
      o.shuffle = false;
      o.threads = 2;
      PrefetchLoader loader(store, o);
      std::size_t seen = 0;
      CHECK_THROWS_AS(
          [&] {
            for (auto& batch : loader) {
              (void)batch;
              ++seen;
            }
          }(),
          DataError);
      CHECK(seen == index / kBatch);
    }

    // Checksums off.
    if (c.format == Format::PngFolder) {
      CHECK_THROWS_WITH_AS(run_loader(store, false, index), has(record), DataError);
      continue;
    }
    Outcome off;
    REQUIRE_NOTHROW(off = run_loader(store, false, index));
    CHECK(off.batches == (kRecords + kBatch - 1) / kBatch);
    REQUIRE(off.found);
    ImageBatch flipped = images;
    flipped.pixels[index * kShape.bytes() + byte] ^= static_cast<std::uint8_t>(1 << bit);
    CHECK(torch::equal(off.image, test::reference_chw(flipped, index)));
    CHECK_FALSE(torch::equal(off.image, test::reference_chw(images, index)));
  }
}
