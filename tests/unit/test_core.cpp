// Checksums, manifests and staged (atomic) output.
#include <doctest/doctest.h>

#include <algorithm>

#include <nlohmann/json.hpp>

#include "detail/fs_util.hpp"
#include "detail/testing.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"
#include "imgstore/manifest.hpp"
#include "test_support.hpp"

using namespace imgstore;

TEST_CASE("record checksum depends on pixels and label") {
  std::vector<std::uint8_t> px(3072, 7);
  auto a = record_checksum(px.data(), px.size(), 3);
  CHECK(a == record_checksum(px.data(), px.size(), 3));
  CHECK(a != record_checksum(px.data(), px.size(), 4));
  px[100] ^= 1;
  CHECK(a != record_checksum(px.data(), px.size(), 3));
}

TEST_CASE("checksums are the same with and without the AVX2 build of XXH3") {
  // Every length class of XXH3 (0, 1-3, 4-8, 9-16, 17-128, 129-240, long, several stripes and
  // blocks), odd offsets, and seeds of either sign (labels are signed).
  std::vector<std::uint8_t> bytes(70'000);
  std::uint64_t x = 0x9e3779b97f4a7c15ull;
  for (auto& b : bytes) {
    x ^= x << 13, x ^= x >> 7, x ^= x << 17;
    b = static_cast<std::uint8_t>(x);
  }
  const std::size_t sizes[] = {0, 1, 3, 4, 8, 9, 16, 17, 128, 129, 240, 241, 1024, 3072, 38'001,
                               69'990};
  for (const std::size_t size : sizes) {
    for (const std::size_t offset : {std::size_t{0}, std::size_t{3}}) {
      for (const std::int64_t label : {std::int64_t{0}, std::int64_t{7}, std::int64_t{-1}}) {
        CAPTURE(size);
        CAPTURE(offset);
        CAPTURE(label);
        const std::uint8_t* p = bytes.data() + offset;
        const std::uint64_t seeded = record_checksum(p, size, label);
        const std::uint64_t unseeded = xxh3_64(p, size);
        detail::testing::Avx2KernelsDisabled baseline;  // libxxhash from here on
        CHECK(record_checksum(p, size, label) == seeded);
        CHECK(xxh3_64(p, size) == unseeded);
      }
    }
  }
}

TEST_CASE("hex64 round-trips and rejects bad text") {
  CHECK(to_hex64(0x0123456789abcdefull) == "0123456789abcdef");
  CHECK(parse_hex64("0123456789abcdef", "x") == 0x0123456789abcdefull);
  CHECK_THROWS_AS(parse_hex64("0123", "x"), DataError);
  CHECK_THROWS_AS(parse_hex64("012345678zabcdef", "x"), DataError);
}

namespace {
Manifest sample_manifest() {
  Manifest m;
  m.format = Format::Lmdb;
  m.split = "train";
  m.source = "unit test";
  m.count = 3;
  m.shape = {2, 3, 1};
  m.class_names = {"a", "b"};
  m.checksums = {1, 2, 0xffffffffffffffffull};
  ContentDigest d;
  for (auto c : m.checksums) d.add(c);
  m.content_digest = d.value();
  return m;
}
}  // namespace

TEST_CASE("manifest JSON round-trips") {
  auto m = sample_manifest();
  auto back = Manifest::from_json(m.to_json(), "test");
  CHECK(back.format == Format::Lmdb);
  CHECK(back.split == "train");
  CHECK(back.count == 3);
  CHECK(back.shape == Shape{2, 3, 1});
  CHECK(back.class_names == m.class_names);
  CHECK(back.checksums == m.checksums);
  CHECK(back.content_digest == m.content_digest);
}

TEST_CASE("manifest JSON: the checksums are written in dump(1)'s own layout") {
  // to_json writes the checksums array by hand (memory); the text must be exactly what
  // nlohmann's dump(1) makes of the same document, for 0, 1 and many checksums, and a class
  // named like the placeholder must not confuse it.
  for (std::size_t n : {0u, 1u, 3u, 1000u}) {
    Manifest m = sample_manifest();
    m.count = n;
    m.checksums.clear();
    ContentDigest d;
    for (std::size_t i = 0; i < n; ++i) {
      m.checksums.push_back(0x9e3779b97f4a7c15ull * (i + 1));
      d.add(m.checksums.back());
    }
    m.content_digest = d.value();
    m.class_names = {"@imgstore-checksums@", "checksums\": \"x"};
    const std::string text = m.to_json();
    CAPTURE(n);
    CHECK(nlohmann::ordered_json::parse(text).dump(1) == text);
    const Manifest back = Manifest::from_json(text, "test");
    CHECK(back.checksums == m.checksums);
    CHECK(back.class_names == m.class_names);
  }
}

TEST_CASE("manifest rejects inconsistent or malformed content") {
  auto m = sample_manifest();
  SUBCASE("checksum count differs from count") {
    m.count = 4;
    CHECK_THROWS_WITH_AS(Manifest::from_json(m.to_json(), "m.json"),
                         doctest::Contains("3 checksums for 4 records"), DataError);
  }
  SUBCASE("digest mismatch") {
    m.content_digest ^= 1;
    CHECK_THROWS_WITH_AS(Manifest::from_json(m.to_json(), "m.json"),
                         doctest::Contains("content_digest"), DataError);
  }
  SUBCASE("not JSON") {
    CHECK_THROWS_WITH_AS(Manifest::from_json("{oops", "m.json"), doctest::Contains("m.json"),
                         DataError);
  }
  SUBCASE("missing field") {
    CHECK_THROWS_AS(Manifest::from_json(R"({"imgstore_format":"png"})", "m.json"), DataError);
  }
}

TEST_CASE("staged output appears only on commit") {
  test::TempDir dir;
  auto target = dir / "x.h5";
  {
    detail::StagedOutput out(target, detail::StagedOutput::Kind::File, false);
    detail::write_file(out.temp(), std::string("hello"), false);
    CHECK(!std::filesystem::exists(target));
    // destroyed without commit
  }
  CHECK(test::list_dir(dir.path()).empty());
  {
    detail::StagedOutput out(target, detail::StagedOutput::Kind::File, false);
    detail::write_file(out.temp(), std::string("hello"), true);
    out.commit(true);
  }
  CHECK(test::list_dir(dir.path()) == std::vector<std::string>{"x.h5"});
  CHECK_THROWS_WITH_AS(detail::StagedOutput(target, detail::StagedOutput::Kind::File, false),
                       doctest::Contains("already exists"), IoError);
  {
    detail::StagedOutput out(target, detail::StagedOutput::Kind::Directory, true);
    detail::write_file(out.temp() / "f", std::string("new"), false);
    out.commit(false);
  }
  CHECK(std::filesystem::is_directory(target));
  CHECK(test::list_dir(dir.path()) == std::vector<std::string>{"x.h5"});
}

TEST_CASE("staged output in an unwritable directory is an IoError naming it") {
  if (::geteuid() == 0) {
    // root ignores permissions; use a path under a regular file instead
    test::TempDir dir;
    detail::write_file(dir / "file", std::string("x"), false);
    CHECK_THROWS_WITH_AS(
        detail::StagedOutput(dir / "file" / "out.h5", detail::StagedOutput::Kind::File, false),
        doctest::Contains("file"), IoError);
  }
}
