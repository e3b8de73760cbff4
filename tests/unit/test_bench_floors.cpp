// The benchmarks' floors (bench/common/floors.hpp) move exactly the bytes they claim, into or
// out of the files they claim, in the pieces they claim: otherwise every "x limit" is a lie.
// No timings are asserted.
#include <doctest/doctest.h>

#include <sys/stat.h>

#include <string>
#include <vector>

#include "common/floors.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"
#include "test_support.hpp"

using namespace imgstore;
using namespace imgstore::bench;
namespace fs = std::filesystem;

namespace {

std::string expected_pattern(std::uint64_t bytes) {
  std::string s(bytes, '\0');
  for (std::uint64_t k = 0; k < bytes; ++k) s[k] = static_cast<char>(floor_pattern_byte(k));
  return s;
}

std::uint64_t hash_of(const std::string& s) { return xxh3_64(s.data(), s.size()); }

// A PNG folder's file name of record i.
std::string fmt_index(std::size_t i) {
  std::string s = std::to_string(i);
  return std::string(8 - s.size(), '0') + s + ".png";
}

std::uint64_t ceil_div(std::uint64_t a, std::uint64_t b) { return (a + b - 1) / b; }

}  // namespace

TEST_CASE("write_floor writes the claimed bytes to one file, in pieces of the claimed size") {
  test::TempDir dir;
  const std::uint64_t bytes = 3 * 1000 * 1000 + 17;  // not a multiple of the piece
  const std::size_t piece = 1 << 20;
  for (Flush flush : {Flush::None, Flush::Fsync}) {
    const fs::path file = dir / (flush == Flush::None ? "nosync.raw" : "fsync.raw");
    const FloorRun run = write_floor(file, bytes, piece, flush);
    CHECK(run.bytes == bytes);
    CHECK(run.files == 1);
    CHECK(run.write_calls == ceil_div(bytes, piece));  // one call per piece: no short writes
    CHECK(run.largest_piece == piece);
    CHECK(run.read_calls == 0);
    CHECK(run.seconds > 0);
    CHECK(fs::file_size(file) == bytes);
    CHECK(hash_of(test::slurp(file)) == hash_of(expected_pattern(bytes)));
    CHECK(test::list_dir(dir.path()).size() == (flush == Flush::None ? 1u : 2u));
  }
}

TEST_CASE("copy_floor is cat: the sources' bytes in order, into one file, in full pieces read one piece ahead") {
  test::TempDir dir;
  const std::string a(5000, 'a'), b = expected_pattern(12345), c;  // c: an empty file
  test::spit(dir / "a", a);
  test::spit(dir / "b", b);
  test::spit(dir / "c", c);
  const std::size_t piece = 4096;
  const FloorRun run = copy_floor({dir / "a", dir / "b", dir / "c"}, dir / "out", piece, Flush::Fsync);
  const std::string all = a + b + c;
  CHECK(run.bytes == all.size());
  CHECK(run.files == 1);
  // Files are packed into full pieces: a read stops at a file's end or a piece's end.
  CHECK(run.write_calls == ceil_div(all.size(), piece));
  CHECK(run.read_calls == 2 + 4);  // a: 4096 + 904; b: 3192 + 4096 + 4096 + 961
  CHECK(run.largest_piece == piece);
  CHECK(fs::file_size(dir / "out") == all.size());
  CHECK(hash_of(test::slurp(dir / "out")) == hash_of(all));
}

TEST_CASE("copy_floor with a total copies exactly that many bytes, cycling through the sources") {
  test::TempDir dir;
  const std::string a(5000, 'a'), b = expected_pattern(12345);
  test::spit(dir / "a", a);
  test::spit(dir / "b", b);
  test::spit(dir / "empty", "");
  const std::string once = a + b;
  // Two and a half passes (the stores of a split repeated), and part of one pass.
  for (const std::uint64_t total : {std::uint64_t{once.size() * 2 + 4000}, std::uint64_t{7000}}) {
    CAPTURE(total);
    const FloorRun run = copy_floor({dir / "a", dir / "empty", dir / "b"}, dir / "out", 4096,
                                    Flush::None, total);
    CHECK(run.bytes == total);
    CHECK(run.largest_piece == 4096);
    std::string want;
    while (want.size() < total) want += once;
    want.resize(total);
    CHECK(hash_of(test::slurp(dir / "out")) == hash_of(want));
  }
  CHECK_THROWS_AS(copy_floor({dir / "empty"}, dir / "out", 4096, Flush::None, 10),
                  std::invalid_argument);
}

TEST_CASE("copy_floor reports a source it cannot read, from its reader thread") {
  test::TempDir dir;
  test::spit(dir / "a", std::string(10000, 'a'));
  // Two pieces of a are written before the missing file stops the copy.
  CHECK_THROWS_WITH_AS(copy_floor({dir / "a", dir / "missing"}, dir / "out", 4096, Flush::None),
                       doctest::Contains("missing"), IoError);
}

TEST_CASE("read_floor reads every byte of every file, sequentially, in pieces") {
  test::TempDir dir;
  test::spit(dir / "x", expected_pattern(70000));
  test::spit(dir / "y", std::string(10, 'y'));
  const FloorRun run = read_floor({dir / "x", dir / "y"}, 32768);
  CHECK(run.bytes == 70010);
  CHECK(run.files == 2);
  CHECK(run.read_calls == ceil_div(70000, 32768) + 1);
  CHECK(run.largest_piece == 32768);
  CHECK(run.write_calls == 0);
  CHECK_THROWS_AS(read_floor({dir / "missing"}, 4096), IoError);
  CHECK_THROWS_AS(read_floor({dir / "x"}, 0), UsageError);
}

TEST_CASE("read_floor with threads reads every byte once, in contiguous parts") {
  test::TempDir dir;
  test::spit(dir / "x", expected_pattern(70000));
  test::spit(dir / "y", std::string(10, 'y'));
  test::spit(dir / "z", expected_pattern(5));
  for (unsigned threads : {2u, 3u, 7u}) {
    CAPTURE(threads);
    const FloorRun run = read_floor({dir / "x", dir / "y", dir / "z"}, 32768, threads);
    CHECK(run.bytes == 70015);
    CHECK(run.files == 3);
    CHECK(run.largest_piece <= 32768);
    // Each part of about 70015 / threads bytes takes at most one call per piece per file it
    // touches: far fewer calls than bytes, and at least as many as whole pieces.
    CHECK(run.read_calls >= ceil_div(70015, 32768));
    CHECK(run.read_calls <= ceil_div(70015, 32768) + 3 * threads);
    CHECK(run.write_calls == 0);
  }
  CHECK_THROWS_AS(read_floor({dir / "x", dir / "missing"}, 4096, 2), IoError);
}

TEST_CASE("file_creation_floor creates one file per size, one write each, in one new directory") {
  test::TempDir dir;
  const std::vector<std::uint64_t> sizes{2500, 1, 3100, 0, 2800};
  for (Flush flush : {Flush::None, Flush::Fsync}) {
    const fs::path out = dir / (flush == Flush::None ? "nosync" : "fsync");
    const FloorRun run = file_creation_floor(out, sizes, flush);
    CHECK(run.files == sizes.size());
    CHECK(run.bytes == 2500 + 1 + 3100 + 2800);
    CHECK(run.write_calls == 4);  // the empty file needs none
    CHECK(run.largest_piece == 3100);
    const auto names = test::list_dir(out);
    REQUIRE(names.size() == sizes.size());
    for (std::size_t i = 0; i < sizes.size(); ++i) {
      CHECK(names[i] == fmt_index(i));
      CHECK(fs::file_size(out / names[i]) == sizes[i]);
      CHECK(test::slurp(out / names[i]) == expected_pattern(sizes[i]));
    }
    // A second run into the same directory would not be "a new directory": refused.
    CHECK_THROWS_AS(file_creation_floor(out, sizes, flush), IoError);
  }
}

TEST_CASE("resident_fraction sees pages a read brought in and none of an empty list") {
  test::TempDir dir;
  test::spit(dir / "r", expected_pattern(1 << 16));
  read_floor({dir / "r"}, 1 << 16);
  CHECK(resident_fraction({dir / "r"}) > 0);
  CHECK(resident_fraction({}) == 0);
}
