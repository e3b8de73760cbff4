// Helpers shared by the unit tests.
#pragma once

#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "cifar100_fixtures.hpp"
#include "fixtures.hpp"
#include "imgstore/error.hpp"
#include "imgstore/image.hpp"
#include "imgstore/source.hpp"
#include "imgstore/store.hpp"

namespace imgstore::test {

// The message of the DataError `f` throws (fails the test if it does not).
template <class F>
std::string data_error(F&& f) {
  try {
    f();
  } catch (const DataError& e) {
    return e.what();
  }
  FAIL("expected a DataError");
  return {};
}

// python3-skimage's sample photos (real photographs; setup installs the package).
inline const std::string kSkimagePhotos = "/usr/lib/python3/dist-packages/skimage/data/";

// The bytes of one of them (fails the test if it is missing).
inline std::vector<std::uint8_t> skimage_photo(const std::string& name) {
  std::ifstream in(kSkimagePhotos + name, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "python3-skimage's data is missing: " << kSkimagePhotos << name);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A fresh directory under the system temp dir, removed (with contents) at scope exit.
class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() /
            ("imgstore-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& name) const { return path_ / name; }

 private:
  std::filesystem::path path_;
};

// The spec of a store holding `images` (count, shape, fixed or variable size) as `split`.
inline StoreSpec spec_for(const ImageBatch& images, const std::vector<std::string>& classes,
                          const std::string& split = "train",
                          const std::string& source = "unit test") {
  StoreSpec spec;
  spec.split = split;
  spec.source = source;
  spec.count = images.size();
  spec.shape = images.shape;
  spec.class_names = classes;
  spec.variable_size = images.variable_size();
  return spec;
}

// Writes `images` through `writer` in batches of `batch` records (0: one batch), then commits.
inline void write_in_batches(StoreWriter& writer, const ImageBatch& images, std::size_t batch) {
  if (batch == 0) batch = std::max<std::size_t>(1, images.size());
  for (std::size_t first = 0; first < images.size(); first += batch) {
    const std::size_t n = std::min(batch, images.size() - first);
    ImageBatch part;
    part.assign_range(images, first, n);
    writer.write(part);
  }
  writer.commit();
}

// Names of the entries directly in `dir`, sorted.
inline std::vector<std::string> list_dir(const std::filesystem::path& dir) {
  std::vector<std::string> names;
  for (auto& e : std::filesystem::directory_iterator(dir)) names.push_back(e.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

// The whole content of a file (empty if it cannot be read).
inline std::string slurp(const std::filesystem::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Replaces the content of a file.
inline void spit(const std::filesystem::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Streams a whole split in next() calls of at most max_records and concatenates what they give.
// Requires every batch to be non-empty, within max_records, with pixels matching its shape, and
// of `shape` when one is given (the result then has that shape even if the split is empty).
inline ImageBatch read_split(const Source& source, const std::string& split,
                             std::size_t max_records, std::optional<Shape> shape = std::nullopt) {
  auto stream = source.open(split);
  ImageBatch all, part;
  if (shape) all.shape = *shape;
  while (stream->next(part, max_records)) {
    REQUIRE(part.size() > 0);
    REQUIRE(part.size() <= max_records);
    if (shape) REQUIRE(part.shape == *shape);
    REQUIRE(part.pixels.size() == part.size() * part.shape.bytes());
    all.shape = part.shape;
    all.pixels.insert(all.pixels.end(), part.pixels.begin(), part.pixels.end());
    all.labels.insert(all.labels.end(), part.labels.begin(), part.labels.end());
  }
  return all;
}

// Drains a split in next() calls of 64 records (to reach stream-time validation).
inline void drain(const Source& source, const std::string& split) {
  auto stream = source.open(split);
  ImageBatch b;
  while (stream->next(b, 64)) {
  }
}

// Checks a CIFAR source's "train" and "test" splits: names, counts, shape and class names.
inline void check_cifar_splits(const Source& source, std::uint64_t train_records,
                               std::uint64_t test_records,
                               const std::vector<std::string>& class_names) {
  auto splits = source.splits();
  REQUIRE(splits.size() == 2);
  CHECK(splits[0].name == "train");
  CHECK(splits[0].count == train_records);
  CHECK(splits[1].name == "test");
  CHECK(splits[1].count == test_records);
  for (const auto& s : splits) {
    CHECK(s.shape == (Shape{32, 32, 3}));
    CHECK(s.class_names == class_names);
  }
}

// Checks a source opened on a CIFAR-10 fixture written with records_per_batch: its splits, and
// every record bit-exact (HWC) when the splits are read in next() calls of each max_records.
inline void check_cifar10_source(
    const Source& source, std::size_t records_per_batch,
    std::initializer_list<std::size_t> max_records,
    const std::vector<std::string>& class_names = fixtures::cifar10_class_names()) {
  check_cifar_splits(source, 5 * records_per_batch, records_per_batch, class_names);
  for (const char* split : {"train", "test"}) {
    CAPTURE(split);
    const auto expected = fixtures::cifar10_expected(split, records_per_batch);
    for (std::size_t max : max_records) {
      CAPTURE(max);
      const auto got = read_split(source, split, max, Shape{32, 32, 3});
      CHECK(got.labels == expected.labels);
      CHECK(got.pixels == expected.pixels);
    }
  }
}

// Opens `path`, a CIFAR-100 fixture of train_records and test_records, with each label set
// ("fine", "coarse") and checks the description names `kind`, the splits, and every record
// bit-exact with the chosen labels, read in next() calls of max_records.
inline void check_cifar100_source(const std::filesystem::path& path, const std::string& kind,
                                  std::size_t train_records, std::size_t test_records,
                                  std::size_t max_records) {
  for (const char* label_set : {"fine", "coarse"}) {
    CAPTURE(label_set);
    SourceOptions options;
    options.label_set = label_set;
    auto source = open_source(path.string(), options);
    CHECK(source->description().find(kind) != std::string::npos);
    const bool coarse = options.label_set == "coarse";
    check_cifar_splits(*source, train_records, test_records,
                       coarse ? fixtures::cifar100_coarse_names() : fixtures::cifar100_fine_names());
    for (const char* split : {"train", "test"}) {
      CAPTURE(split);
      const auto e = fixtures::cifar100_expected(
          split, std::string(split) == "train" ? train_records : test_records);
      const auto got = read_split(*source, split, max_records, Shape{32, 32, 3});
      CHECK(got.pixels == e.fine.pixels);
      CHECK(got.labels == (coarse ? e.coarse : e.fine.labels));
    }
  }
}

}  // namespace imgstore::test
