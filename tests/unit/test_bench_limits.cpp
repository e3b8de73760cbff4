// The benchmarks' CPU limits (bench/common/limits.hpp) do the work they claim: the gather moves
// every record once, whole, into batches of the claimed size, on the claimed threads; the PNG
// limit decodes every PNG it is given with a decoder that matches decode_png; a ratio above 1
// is flagged as a beaten limit. No timings are asserted.
#include <doctest/doctest.h>

#include <algorithm>
#include <numeric>
#include <string>
#include <vector>

#include "common/limits.hpp"
#include "detail/png_codec.hpp"
#include "detail/png_decode_limit.hpp"
#include "imgstore/error.hpp"
#include "test_support.hpp"

using namespace imgstore;
using namespace imgstore::bench;
namespace fs = std::filesystem;

namespace {

// n records of `rb` bytes; record i's bytes are (i * 7 + k) % 251 + 1, so none is all zeros.
std::vector<std::uint8_t> numbered_records(std::size_t n, std::size_t rb) {
  std::vector<std::uint8_t> v(n * rb);
  for (std::size_t i = 0; i < n; ++i) {
    for (std::size_t k = 0; k < rb; ++k) v[i * rb + k] = static_cast<std::uint8_t>((i * 7 + k) % 251 + 1);
  }
  return v;
}

std::vector<std::uint64_t> reversed_order(std::size_t n) {
  std::vector<std::uint64_t> order(n);
  std::iota(order.rbegin(), order.rend(), 0);
  return order;
}

// n small noisy images of `shape`, and their PNGs.
std::pair<std::vector<std::uint8_t>, std::vector<std::vector<std::uint8_t>>> noisy_pngs(
    std::size_t n, const Shape& shape) {
  std::vector<std::uint8_t> pixels(n * shape.bytes());
  for (std::size_t k = 0; k < pixels.size(); ++k) pixels[k] = static_cast<std::uint8_t>(k * 2654435761u >> 13);
  std::vector<std::vector<std::uint8_t>> pngs(n);
  for (std::size_t i = 0; i < n; ++i) detail::encode_png(pixels.data() + i * shape.bytes(), shape, 6, pngs[i]);
  return {pixels, pngs};
}

}  // namespace

TEST_CASE("gather_run copies every record exactly once, whole, in batches, on any thread count") {
  const std::size_t n = 1000, rb = 28 * 28, batch = 256;  // 1000 = 3 full batches + 232
  const auto records = numbered_records(n, rb);
  std::uint64_t first_bytes = 0;
  for (std::size_t i = 0; i < n; ++i) first_bytes += records[i * rb];
  for (unsigned threads : {1u, 2u, 3u}) {
    CAPTURE(threads);
    const GatherRun run = gather_run(records.data(), rb, reversed_order(n), batch, threads, true);
    CHECK(run.threads == threads);
    CHECK(run.records == n);
    CHECK(run.bytes == n * rb);
    CHECK(run.batches == 4);
    CHECK(run.landed_sum == first_bytes);  // the bytes that landed are the records' own
    CHECK(run.seconds > 0);
    std::vector<std::uint64_t> seen = run.delivered;
    std::sort(seen.begin(), seen.end());
    std::vector<std::uint64_t> all(n);
    std::iota(all.begin(), all.end(), 0);
    CHECK(seen == all);  // each record once, none missing, none twice
  }
}

TEST_CASE("gather_run follows the order it is given: a repeated record is copied twice") {
  const std::size_t rb = 16;
  const auto records = numbered_records(4, rb);
  const GatherRun run = gather_run(records.data(), rb, {3, 3, 0}, 2, 1, true);
  CHECK(run.records == 3);
  CHECK(run.bytes == 3 * rb);
  CHECK(run.batches == 2);
  CHECK(run.delivered == std::vector<std::uint64_t>{3, 3, 0});
  CHECK(run.landed_sum == 2u * records[3 * rb] + records[0]);
}

TEST_CASE("gather_limit is images per second of whole gathers, and refuses bad arguments") {
  const auto records = numbered_records(300, 64);
  CHECK(gather_limit(records.data(), 300, 64, 256, 2, 3, 1) > 0);
  CHECK_THROWS_AS(gather_limit(records.data(), 0, 64, 256, 2, 3, 1), UsageError);
  CHECK_THROWS_AS(gather_run(records.data(), 64, {0}, 0, 1), UsageError);
  CHECK_THROWS_AS(gather_run(records.data(), 64, {0}, 1, 0), UsageError);
}

TEST_CASE("png_decode_limit decodes every PNG with the fastest decoder that matches decode_png") {
  const Shape shape{12, 10, 3};
  auto [pixels, pngs] = noisy_pngs(20, shape);
  const DecodeLimit limit = png_decode_limit(pngs, shape, 3, 2);
  CHECK(limit.images == pngs.size());
  CHECK(limit.threads == 3);
  const std::vector<std::string> full{"imgstore", "libpng", "libpng-simplified", "libspng"};
  CHECK(std::find(full.begin(), full.end(), limit.decoder) != full.end());  // never inflate-only
  // libspng is among the decoders timed, and the limit is the fastest full one.
  const auto timings = png_decoder_timings(pngs, shape, 2);
  std::vector<std::string> names;
  for (const auto& t : timings) names.push_back(t.name);
  for (const auto& name : full) {
    CHECK(std::find(names.begin(), names.end(), name) != names.end());
  }
  CHECK(detail::fastest_png_decoder(timings).full_decode);
  CHECK(limit.single_thread_ips > 0);
  CHECK(limit.ips == doctest::Approx(limit.single_thread_ips * 3));
  // The last PNG broken: the limit refuses rather than time decoders that did not decode it.
  pngs.back().resize(pngs.back().size() / 2);
  CHECK_THROWS_AS(png_decode_limit(pngs, shape, 3, 2), DataError);
}

TEST_CASE("png_folder_sample reads the PNG folder's own files, a seeded sample of them") {
  test::TempDir dir;
  const Shape shape{8, 8, 1};
  auto [pixels, pngs] = noisy_pngs(6, shape);
  for (std::size_t i = 0; i < pngs.size(); ++i) {
    test::spit(dir / ("0000000" + std::to_string(i) + ".png"),
               std::string(pngs[i].begin(), pngs[i].end()));
  }
  const auto sample = png_folder_sample(dir.path(), 6, 4, 9);
  REQUIRE(sample.size() == 4);
  std::vector<std::uint8_t> px(shape.bytes());
  for (const auto& png : sample) {
    const auto it = std::find(pngs.begin(), pngs.end(), png);
    REQUIRE(it != pngs.end());
    const auto i = static_cast<std::size_t>(it - pngs.begin());
    detail::decode_png(png.data(), png.size(), shape, px.data(), "sample");
    CHECK(std::equal(px.begin(), px.end(), pixels.begin() + static_cast<std::ptrdiff_t>(i * shape.bytes())));
  }
  CHECK(png_folder_sample(dir.path(), 6, 100, 9).size() == 6);
  CHECK_THROWS_AS(png_folder_sample(dir.path(), 7, 100, 9), IoError);
}

TEST_CASE("a ratio above 1 is a beaten limit, flagged loudly, and 1 or below is not") {
  CHECK_FALSE(compare_to_limit(90, 100).beaten);
  CHECK_FALSE(compare_to_limit(100, 100).beaten);
  CHECK(compare_to_limit(105, 100).beaten);
  CHECK(compare_to_limit(105, 100).ratio == doctest::Approx(1.05));
  CHECK_FALSE(compare_to_limit(5, 0).beaten);  // no limit measured: nothing to beat
  CHECK(format_ratio(compare_to_limit(93, 100)) == "0.93x");
  CHECK(format_ratio(compare_to_limit(105, 100)) == "1.05x  LIMIT BEATEN: the limit is wrong");
  CHECK(beaten_flag("floor") == "FLOOR BEATEN: the floor is wrong");
}
