// CIFAR-10 / CIFAR-100 binary folders: round trips against the fixtures, and every bad input.
#include <doctest/doctest.h>

#include <algorithm>

#include "cifar100_fixtures.hpp"
#include "fixtures.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"
#include "ingest/sources.hpp"
#include "test_support.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

namespace {

using test::drain;
using test::slurp;
using test::spit;

constexpr std::size_t kPerBatch = 50;

}  // namespace

TEST_CASE("CIFAR-10 binary folder round-trips bit-exact") {
  test::TempDir tmp;
  const auto dir = tmp / "cifar-10-batches-bin";
  fixtures::write_cifar10_binary(dir, kPerBatch);
  auto source = open_source(dir.string());
  CHECK(source->description().find("CIFAR-10 binary") != std::string::npos);
  // 37 does not divide 50: batches straddle file boundaries.
  test::check_cifar10_source(*source, kPerBatch, {37, 1000});
  CHECK_THROWS_WITH_AS(source->open("validation"), doctest::Contains("no split 'validation'"),
                       UsageError);
}

TEST_CASE("CIFAR-100 binary folder gives fine or coarse labels") {
  test::TempDir tmp;
  const auto dir = tmp / "cifar-100-binary";
  fixtures::write_cifar100_binary(dir, 120, 40);
  test::check_cifar100_source(dir, "CIFAR-100 binary", 120, 40, 33);
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
