// CIFAR-10 / CIFAR-100 binary folders: round trips against the fixtures, and every bad input.
#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>

#include "cifar100_fixtures.hpp"
#include "fixtures.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"
#include "ingest/sources.hpp"
#include "test_support.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

namespace {

constexpr std::size_t kPerBatch = 50;

// Streams a whole split, checking every batch respects max_records.
ImageBatch read_all(const Source& source, const std::string& split, std::size_t max_records) {
  auto stream = source.open(split);
  ImageBatch all, part;
  all.shape = Shape{32, 32, 3};
  while (stream->next(part, max_records)) {
    REQUIRE(part.size() > 0);
    REQUIRE(part.size() <= max_records);
    REQUIRE(part.shape == (Shape{32, 32, 3}));
    REQUIRE(part.pixels.size() == part.size() * 3072);
    all.pixels.insert(all.pixels.end(), part.pixels.begin(), part.pixels.end());
    all.labels.insert(all.labels.end(), part.labels.begin(), part.labels.end());
  }
  return all;
}

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

void spit(const fs::path& p, const std::string& bytes) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// Drains a split (to reach stream-time validation).
void drain(const Source& source, const std::string& split) {
  auto stream = source.open(split);
  ImageBatch b;
  while (stream->next(b, 64)) {
  }
}

}  // namespace

TEST_CASE("CIFAR-10 binary folder round-trips bit-exact") {
  test::TempDir tmp;
  const auto dir = tmp / "cifar-10-batches-bin";
  fixtures::write_cifar10_binary(dir, kPerBatch);
  auto source = open_source(dir.string());
  CHECK(source->description().find("CIFAR-10 binary") != std::string::npos);

  auto splits = source->splits();
  REQUIRE(splits.size() == 2);
  CHECK(splits[0].name == "train");
  CHECK(splits[0].count == 5 * kPerBatch);
  CHECK(splits[1].name == "test");
  CHECK(splits[1].count == kPerBatch);
  for (const auto& s : splits) {
    CHECK(s.shape == (Shape{32, 32, 3}));
    CHECK(s.class_names == fixtures::cifar10_class_names());
  }
  for (const char* split : {"train", "test"}) {
    CAPTURE(split);
    const auto expected = fixtures::cifar10_expected(split, kPerBatch);
    // 37 does not divide 50: batches straddle file boundaries.
    for (std::size_t max_records : {std::size_t{37}, std::size_t{1000}}) {
      const auto got = read_all(*source, split, max_records);
      CHECK(got.labels == expected.labels);
      CHECK(got.pixels == expected.pixels);
    }
  }
  CHECK_THROWS_WITH_AS(source->open("validation"), doctest::Contains("no split 'validation'"),
                       UsageError);
}

TEST_CASE("CIFAR-100 binary folder gives fine or coarse labels") {
  test::TempDir tmp;
  const auto dir = tmp / "cifar-100-binary";
  fixtures::write_cifar100_binary(dir, 120, 40);
  for (const char* label_set : {"fine", "coarse"}) {
    CAPTURE(label_set);
    SourceOptions opts;
    opts.label_set = label_set;
    auto source = open_source(dir.string(), opts);
    const bool coarse = std::string(label_set) == "coarse";
    auto splits = source->splits();
    REQUIRE(splits.size() == 2);
    CHECK(splits[0].count == 120);
    CHECK(splits[1].count == 40);
    CHECK(splits[0].class_names ==
          (coarse ? fixtures::cifar100_coarse_names() : fixtures::cifar100_fine_names()));
    for (const char* split : {"train", "test"}) {
      const auto e = fixtures::cifar100_expected(split, split == std::string("train") ? 120 : 40);
      const auto got = read_all(*source, split, 33);
      CHECK(got.pixels == e.fine.pixels);
      CHECK(got.labels == (coarse ? e.coarse : e.fine.labels));
    }
  }
  SourceOptions bad;
  bad.label_set = "medium";
  CHECK_THROWS_WITH_AS(detail::open_cifar_binary_dir(dir, bad), doctest::Contains("'medium'"),
                       UsageError);
}

TEST_CASE("CIFAR binary folder rejects truncated and wrong-size batch files") {
  test::TempDir tmp;
  const auto dir = tmp / "cifar-10-batches-bin";
  fixtures::write_cifar10_binary(dir, kPerBatch);
  auto bytes = slurp(dir / "data_batch_3.bin");
  spit(dir / "data_batch_3.bin", bytes.substr(0, bytes.size() - 100));
  CHECK_THROWS_WITH_AS(open_source(dir.string()),
                       doctest::Contains("data_batch_3.bin' is truncated or has the wrong record "
                                         "size: 153550 bytes is not a whole number of 3073-byte "
                                         "records"),
                       DataError);
  spit(dir / "data_batch_3.bin", "");
  CHECK_THROWS_WITH_AS(open_source(dir.string()),
                       doctest::Contains("data_batch_3.bin' is empty"), DataError);

  // CIFAR-100 records are 3074 bytes: a CIFAR-10-sized file is refused.
  const auto dir100 = tmp / "cifar-100-binary";
  fixtures::write_cifar100_binary(dir100, 20, 10);
  spit(dir100 / "test.bin", std::string(10 * 3073, '\0'));
  CHECK_THROWS_WITH_AS(open_source(dir100.string()),
                       doctest::Contains("test.bin' is truncated or has the wrong record size: "
                                         "30730 bytes is not a whole number of 3074-byte records"),
                       DataError);
}

TEST_CASE("CIFAR-10 binary folder rejects a batch file longer or shorter than its siblings") {
  test::TempDir tmp;
  const auto dir = tmp / "cifar-10-batches-bin";
  fixtures::write_cifar10_binary(dir, kPerBatch);
  const auto good = slurp(dir / "data_batch_2.bin");
  spit(dir / "data_batch_2.bin", good + good.substr(0, 3073));
  CHECK_THROWS_WITH_AS(open_source(dir.string()),
                       doctest::Contains("data_batch_2.bin' holds 51 records, but its sibling"),
                       DataError);
  spit(dir / "data_batch_2.bin", good);
  const auto test_bytes = slurp(dir / "test_batch.bin");
  spit(dir / "test_batch.bin", test_bytes.substr(0, 49 * 3073));
  CHECK_THROWS_WITH_AS(open_source(dir.string()),
                       doctest::Contains("test_batch.bin' holds 49 records"), DataError);
}

TEST_CASE("CIFAR binary folder rejects a label past the class count, naming the record") {
  test::TempDir tmp;
  const auto dir = tmp / "cifar-10-batches-bin";
  fixtures::write_cifar10_binary(dir, kPerBatch);
  auto bytes = slurp(dir / "data_batch_2.bin");
  bytes[7 * 3073] = 10;
  spit(dir / "data_batch_2.bin", bytes);
  auto source = open_source(dir.string());  // counting does not read the records
  CHECK(source->splits()[0].count == 250);
  CHECK_NOTHROW(drain(*source, "test"));
  CHECK_THROWS_WITH_AS(drain(*source, "train"),
                       doctest::Contains("data_batch_2.bin' record 7 (split index 57): label 10, "
                                         "expected 0..9"),
                       DataError);

  const auto dir100 = tmp / "cifar-100-binary";
  fixtures::write_cifar100_binary(dir100, 20, 10);
  auto b100 = slurp(dir100 / "train.bin");
  b100[3 * 3074 + 1] = 100;  // fine label of record 3
  b100[5 * 3074] = 20;       // coarse label of record 5
  spit(dir100 / "train.bin", b100);
  auto fine = open_source(dir100.string());
  CHECK_THROWS_WITH_AS(drain(*fine, "train"),
                       doctest::Contains("train.bin' record 3 (split index 3): label 100"),
                       DataError);
  SourceOptions opts;
  opts.label_set = "coarse";
  auto coarse = open_source(dir100.string(), opts);
  CHECK_THROWS_WITH_AS(drain(*coarse, "train"),
                       doctest::Contains("train.bin' record 5 (split index 5): label 20, "
                                         "expected 0..19"),
                       DataError);
}

TEST_CASE("CIFAR binary folder rejects missing batch and class-name files") {
  test::TempDir tmp;
  const auto dir = tmp / "cifar-10-batches-bin";
  fixtures::write_cifar10_binary(dir, 5);
  fs::remove(dir / "data_batch_4.bin");
  CHECK_THROWS_WITH_AS(detail::open_cifar_binary_dir(dir, {}),
                       doctest::Contains("lacks the file 'data_batch_4.bin'"), DataError);
  fixtures::write_cifar10_binary(dir, 5);
  fs::remove(dir / "batches.meta.txt");
  CHECK_THROWS_WITH_AS(open_source(dir.string()),
                       doctest::Contains("lacks the file 'batches.meta.txt'"), DataError);
  spit(dir / "batches.meta.txt", "a\nb\nc\n\n");
  CHECK_THROWS_WITH_AS(open_source(dir.string()),
                       doctest::Contains("batches.meta.txt': found 3 names, expected 10"),
                       DataError);
  spit(dir / "batches.meta.txt", "a\nb\n\nc\nd\ne\nf\ng\nh\ni\nj\n");
  CHECK_THROWS_WITH_AS(open_source(dir.string()), doctest::Contains("follows a blank line"),
                       DataError);
  // Windows line endings are fine.
  spit(dir / "batches.meta.txt", "a\r\nb\r\nc\r\nd\r\ne\r\nf\r\ng\r\nh\r\ni\r\nj\r\n");
  CHECK(open_source(dir.string())->splits()[0].class_names.back() == "j");
}
