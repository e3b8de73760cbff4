// The format and encoding tables are the single source: every format of the table works
// through every generic entry point, with the names and suffixes of its row.
#include <doctest/doctest.h>

#include <string>

#include "fixtures.hpp"
#include "formats/encoding_table.hpp"
#include "formats/format_table.hpp"
#include "imgstore/error.hpp"
#include "imgstore/format.hpp"
#include "imgstore/convert.hpp"
#include "imgstore/store.hpp"
#include "test_support.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

TEST_CASE("every format of the table round-trips through the generic entry points") {
  test::TempDir dir;
  const Shape shape{5, 4, 3};
  const ImageBatch images = fixtures::make_images(9, shape, 4, 7);
  REQUIRE(all_formats().size() == detail::format_table().size());
  for (Format f : all_formats()) {
    const FormatInfo& info = format_info(f);
    CAPTURE(info.name);
    CHECK(to_string(f) == info.name);
    CHECK(parse_format(info.name) == f);
    for (const auto& alias : info.aliases) CHECK(parse_format(alias) == f);
    CHECK(store_file_name("train", f) == "train" + info.suffix);
    CHECK(shard_file_name(f, 1, 3) == "shard-00001-of-00003" + info.suffix);
    REQUIRE(!info.encodings.empty());

    for (Encoding e : info.encodings) {
      CAPTURE(to_string(e));
      const fs::path path = dir / (to_string(e) + "-" + store_file_name("train", f));
      WriterOptions options;
      options.encoding = e;
      store_many(f, path, images, {}, options);
      CHECK(detect_store_format(path) == f);
      CHECK(fs::is_directory(path) == info.directory);
      auto reader = open_store(path);
      CHECK(reader->format() == f);
      CHECK(reader->manifest().encoding == e);
      const ImageBatch back = read_all(*reader);
      CHECK(back.labels == images.labels);
      if (encoding_info(e).lossless) {
        CHECK(back.pixels == images.pixels);
      } else {  // lossy: the same images, within JPEG's error on tiny noise images
        REQUIRE(back.pixels.size() == images.pixels.size());
        CHECK(verify_store(*reader).records == images.size());
      }
    }
    // Unset encoding: the row's first.
    const fs::path plain = dir / store_file_name("plain", f);
    store_many(f, plain, images);
    CHECK(open_store(plain)->manifest().encoding == info.encodings.front());

    // Sharded: shards named with the row's suffix, opened back transparently.
    WriterOptions sharded;
    sharded.shards = 3;
    const fs::path sp = dir / store_file_name("sharded", f);
    store_many(f, sp, images, {}, sharded);
    CHECK(detect_store_format(sp) == f);
    CHECK(fs::exists(sp / shard_file_name(f, 2, 3)));
    auto sr = open_store(sp);
    CHECK(sr->shard_ranges().size() == 3);
    CHECK(read_all(*sr).pixels == images.pixels);

    // Encodings the row does not list are refused by the writer.
    for (Encoding e : all_encodings()) {
      if (std::find(info.encodings.begin(), info.encodings.end(), e) != info.encodings.end()) {
        continue;
      }
      WriterOptions bad;
      bad.encoding = e;
      CHECK_THROWS_AS(store_many(f, dir / ("bad" + info.suffix), images, {}, bad), UsageError);
      CHECK(!fs::exists(dir / ("bad" + info.suffix)));
    }
  }
  CHECK_THROWS_WITH_AS(parse_format("tiff"),
                       doctest::Contains(("expected " + format_names()).c_str()), UsageError);
}

TEST_CASE("every encoding of the table has a unique code and a codec that round-trips") {
  const Shape shape{6, 5, 3};
  const ImageBatch images = fixtures::make_images(1, shape, 2, 3);
  std::vector<std::uint8_t> payload, out(shape.bytes());
  for (const auto& e : detail::encoding_table()) {
    CAPTURE(e.info.name);
    CHECK(parse_encoding(e.info.name) == e.info.encoding);
    CHECK(detail::encoding_by_code(e.code) == &e);
    e.encode(images.image(0), shape, WriterOptions{}, payload);
    e.decode(payload.data(), payload.size(), shape, out.data(), "test");
    if (e.info.lossless) CHECK(std::equal(out.begin(), out.end(), images.image(0)));
  }
  CHECK_THROWS_AS(parse_encoding("webp"), UsageError);
}
