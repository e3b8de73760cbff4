// The lean PNG decode path (src/detail/png_fast.hpp): bit-exact against libpng on every kind of
// PNG the encoder writes and on PNGs written with every filter, zlib level, strategy, window
// and IDAT split; it takes what imgstore writes and hands everything else back to libpng.
#include <doctest/doctest.h>

#include <png.h>
#include <zlib.h>

#include <csetjmp>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "detail/png_codec.hpp"
#include "detail/png_decode_limit.hpp"
#include "detail/png_fast.hpp"
#include "fixtures.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"

using namespace imgstore;
using detail::decode_png;
using detail::decode_png_fast;
using detail::decode_png_with_libpng;
using detail::encode_png;

namespace {

// How a test PNG is written with libpng's classic API.
struct WriteOptions {
  int filters = PNG_ALL_FILTERS;  // png_set_filter mask: one filter forces it on every row
  int level = 6;
  int strategy = -1;              // zlib strategy, -1 = libpng's default
  int window_bits = 15;
  std::size_t idat_bytes = 8192;  // png_set_compression_buffer_size: the IDAT chunk size
  bool interlaced = false;
};

extern "C" void test_png_write(png_structp png, png_bytep data, png_size_t length) {
  auto* out = static_cast<std::vector<std::uint8_t>*>(png_get_io_ptr(png));
  out->insert(out->end(), data, data + length);
}
extern "C" void test_png_flush(png_structp) {}

// setjmp scope with no destructors in its frame; returns false on a libpng error.
bool write_png_c(png_structp png, png_infop info, const std::uint8_t* px, const Shape& s,
                 const WriteOptions& o) {
  if (setjmp(png_jmpbuf(png))) return false;
  const int types[] = {0, PNG_COLOR_TYPE_GRAY, PNG_COLOR_TYPE_GRAY_ALPHA, PNG_COLOR_TYPE_RGB,
                       PNG_COLOR_TYPE_RGBA};
  png_set_IHDR(png, info, s.width, s.height, 8, types[s.channels],
               o.interlaced ? PNG_INTERLACE_ADAM7 : PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_set_filter(png, PNG_FILTER_TYPE_BASE, o.filters);
  png_set_compression_level(png, o.level);
  if (o.strategy >= 0) png_set_compression_strategy(png, o.strategy);
  png_set_compression_window_bits(png, o.window_bits);
  png_set_compression_buffer_size(png, o.idat_bytes);
  png_write_info(png, info);
  const int passes = o.interlaced ? png_set_interlace_handling(png) : 1;
  const std::size_t stride = std::size_t{s.width} * s.channels;
  for (int pass = 0; pass < passes; ++pass) {
    for (std::uint32_t y = 0; y < s.height; ++y) {
      png_write_row(png, const_cast<std::uint8_t*>(px + y * stride));
    }
  }
  png_write_end(png, nullptr);
  return true;
}

std::vector<std::uint8_t> write_png(const std::uint8_t* px, const Shape& s,
                                    const WriteOptions& o) {
  std::vector<std::uint8_t> out;
  png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr, nullptr);
  REQUIRE(png);
  png_infop info = png_create_info_struct(png);
  png_set_write_fn(png, &out, test_png_write, test_png_flush);
  const bool ok = info && write_png_c(png, info, px, s, o);
  png_destroy_write_struct(&png, &info);
  REQUIRE(ok);
  return out;
}

std::vector<std::uint8_t> encode(const std::uint8_t* px, const Shape& s, int level = 6) {
  std::vector<std::uint8_t> out;
  encode_png(px, s, level, out);
  return out;
}

// Pixels that make every filter type worthwhile somewhere: noise, gradients, flat patches.
std::vector<std::uint8_t> mixed_pixels(const Shape& s, std::uint64_t seed) {
  std::vector<std::uint8_t> px(s.bytes());
  std::uint64_t state = seed * 0x9E3779B97F4A7C15ull + 1;
  for (std::size_t i = 0; i < px.size(); ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const std::size_t x = (i / s.channels) % s.width, y = i / (s.channels * s.width);
    switch ((x / 7 + y / 5 + seed) % 4) {
      case 0: px[i] = static_cast<std::uint8_t>(state >> 56); break;              // noise
      case 1: px[i] = static_cast<std::uint8_t>(x * 3 + y * 2 + i % s.channels); break;
      case 2: px[i] = static_cast<std::uint8_t>(200 + (state >> 62)); break;       // near-flat
      default: px[i] = static_cast<std::uint8_t>((x * y) ^ (state >> 60)); break;
    }
  }
  return px;
}

// The fast path must take `png`, and give libpng's pixels, which are `expected`.
void check_fast_equals_libpng(const std::vector<std::uint8_t>& png, const Shape& s,
                              const std::vector<std::uint8_t>& expected) {
  std::vector<std::uint8_t> fast(s.bytes(), 0xAB), reference(s.bytes(), 0xCD);
  decode_png_with_libpng(png.data(), png.size(), s, reference.data(), "'ref.png'");
  REQUIRE(reference == expected);
  REQUIRE(decode_png_fast(png.data(), png.size(), s, fast.data()));
  REQUIRE(fast == reference);
}

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         p[3];
}

void put_be32(std::uint8_t* p, std::uint32_t v) {
  for (int k = 0; k < 4; ++k) p[k] = static_cast<std::uint8_t>(v >> (24 - 8 * k));
}

// Recomputes every chunk's CRC (as far as the lengths allow), so a test reaches past them.
void fix_crcs(std::vector<std::uint8_t>& png) {
  std::size_t pos = 8;
  while (pos + 12 <= png.size()) {
    const std::uint32_t length = be32(png.data() + pos);
    if (length > png.size() - pos - 12) break;
    put_be32(png.data() + pos + 8 + length,
             static_cast<std::uint32_t>(crc32(0, png.data() + pos + 4, length + 4)));
    pos += 12 + std::size_t{length};
  }
}

std::size_t find_chunk(const std::vector<std::uint8_t>& png, const char* type) {
  std::size_t pos = 8;
  while (pos + 12 <= png.size()) {
    if (std::memcmp(png.data() + pos + 4, type, 4) == 0) return pos;
    pos += 12 + be32(png.data() + pos);
  }
  return std::string::npos;
}

}  // namespace

TEST_CASE("png fast path: bit-exact with libpng for every filter, channel count and size") {
  const Shape sizes[] = {{1, 1, 1}, {1, 9, 1}, {9, 1, 1}, {2, 2, 1},   {5, 7, 1},
                         {32, 32, 1}, {28, 28, 1}, {17, 33, 1}, {300, 200, 1}, {200, 300, 1}};
  const int filters[] = {PNG_FILTER_NONE, PNG_FILTER_SUB, PNG_FILTER_UP, PNG_FILTER_AVG,
                         PNG_FILTER_PAETH, PNG_ALL_FILTERS};
  int checked = 0;
  for (std::uint32_t c = 1; c <= 4; ++c) {
    for (Shape s : sizes) {
      s.channels = c;
      const auto px = mixed_pixels(s, c * 1000 + s.width + s.height);
      for (int f : filters) {
        CAPTURE(to_string(s));
        CAPTURE(f);
        WriteOptions o;
        o.filters = f;
        check_fast_equals_libpng(write_png(px.data(), s, o), s, px);
        ++checked;
      }
      // And what imgstore's own encoder writes, at every level.
      for (int level : {0, 1, 6, 9}) {
        CAPTURE(level);
        check_fast_equals_libpng(encode(px.data(), s, level), s, px);
      }
    }
  }
  CHECK(checked == 4 * 10 * 6);
}

TEST_CASE("png fast path: random pixels, zlib strategies, split IDATs and window sizes") {
  std::uint64_t seed = 1;
  for (std::uint32_t c = 1; c <= 4; ++c) {
    for (Shape s : {Shape{32, 32, c}, Shape{13, 64, c}, Shape{120, 90, c}}) {
      auto img = fixtures::make_images(1, s, 2, seed++);
      const std::vector<std::uint8_t> px(img.image(0), img.image(0) + s.bytes());
      for (int strategy : {Z_FILTERED, Z_HUFFMAN_ONLY, Z_RLE, Z_FIXED}) {
        CAPTURE(strategy);
        WriteOptions o;
        o.strategy = strategy;
        check_fast_equals_libpng(write_png(px.data(), s, o), s, px);
      }
      // Many small IDAT chunks (6 bytes is libpng's minimum).
      for (std::size_t idat : {6, 7, 100}) {
        CAPTURE(idat);
        WriteOptions o;
        o.idat_bytes = idat;
        check_fast_equals_libpng(write_png(px.data(), s, o), s, px);
      }
    }
  }
  // A zlib window smaller than the image: zlib (in libpng) would reject distances past it and
  // libdeflate would not, so the fast path declines and decode_png gets libpng's answer.
  const Shape big{64, 64, 3};
  auto img = fixtures::make_images(1, big, 2, 99);
  const std::vector<std::uint8_t> px(img.image(0), img.image(0) + big.bytes());
  WriteOptions small_window;
  small_window.window_bits = 9;
  auto png = write_png(px.data(), big, small_window);
  std::vector<std::uint8_t> out(big.bytes());
  CHECK_FALSE(decode_png_fast(png.data(), png.size(), big, out.data()));
  decode_png(png.data(), png.size(), big, out.data(), "'w.png'");
  CHECK(out == px);
  // A window that holds the whole image is taken (libpng shrinks it so for small images).
  const Shape small{8, 8, 3};
  WriteOptions fits;
  fits.window_bits = 9;  // 512 bytes >= 8 * (1 + 24)
  check_fast_equals_libpng(write_png(px.data(), small, fits), small,
                           std::vector<std::uint8_t>(px.begin(), px.begin() + small.bytes()));
}

TEST_CASE("png fast path: real Fashion-MNIST and CIFAR fixture images") {
  auto source = open_source("/usr/share/datasets/fashion-mnist");
  auto stream = source->open("test");
  ImageBatch batch;
  REQUIRE(stream->next(batch, 500));
  REQUIRE(batch.size() == 500);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const std::vector<std::uint8_t> px(batch.image(i), batch.image(i) + batch.shape.bytes());
    check_fast_equals_libpng(encode(px.data(), batch.shape), batch.shape, px);
  }
  const auto cifar = fixtures::cifar10_expected("test", 50);
  for (std::size_t i = 0; i < cifar.size(); ++i) {
    const std::vector<std::uint8_t> px(cifar.image(i), cifar.image(i) + cifar.shape.bytes());
    check_fast_equals_libpng(encode(px.data(), cifar.shape), cifar.shape, px);
  }
}

TEST_CASE("png fast path declines what it does not handle, and libpng still decodes it") {
  const Shape s{12, 10, 3};
  const auto px = mixed_pixels(s, 5);
  std::vector<std::uint8_t> out(s.bytes());
  std::vector<std::vector<std::uint8_t>> declined;
  WriteOptions interlaced;
  interlaced.interlaced = true;
  declined.push_back(write_png(px.data(), s, interlaced));
  // Ancillary chunks (libpng validates the known ones), before and after the image data.
  const std::vector<std::uint8_t> gama = {0, 0, 0, 4, 'g', 'A', 'M', 'A', 0, 0, 0xb1, 0x8f,
                                          0, 0, 0, 0};
  const std::vector<std::uint8_t> text = {0, 0, 0, 3, 't', 'E', 'X', 't', 'a', 0, 'b',
                                          0, 0, 0, 0};
  for (const auto& [anchor, chunk] : {std::pair{"IDAT", gama}, std::pair{"IDAT", text},
                                      std::pair{"IEND", text}}) {
    auto png = encode(px.data(), s);
    png.insert(png.begin() + static_cast<std::ptrdiff_t>(find_chunk(png, anchor)), chunk.begin(),
               chunk.end());
    fix_crcs(png);
    declined.push_back(png);
  }
  for (const auto& png : declined) {
    CHECK_FALSE(decode_png_fast(png.data(), png.size(), s, out.data()));
    std::fill(out.begin(), out.end(), 0);
    decode_png(png.data(), png.size(), s, out.data(), "'d.png'");
    CHECK(out == px);
  }
}

TEST_CASE("png fast path rejects truncation, bad CRCs, junk in IDAT and a missing IEND") {
  const Shape s{7, 9, 4};
  const auto px = mixed_pixels(s, 8);
  const auto png = encode(px.data(), s);
  std::vector<std::uint8_t> out(s.bytes());
  auto rejected_by_both = [&](const std::vector<std::uint8_t>& bad, std::size_t n) {
    CHECK_FALSE(decode_png_fast(bad.data(), n, s, out.data()));
    CHECK_THROWS_WITH_AS(decode_png(bad.data(), n, s, out.data(), "'r.png'"),
                         doctest::Contains("'r.png': "), DataError);
  };
  for (std::size_t n = 0; n < png.size(); ++n) {
    CAPTURE(n);
    rejected_by_both(png, n);
  }
  // Every single-bit flip: the signature or a CRC catches it.
  for (std::size_t i = 0; i < png.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      auto bad = png;
      bad[i] ^= static_cast<std::uint8_t>(1 << bit);
      CHECK_FALSE(decode_png_fast(bad.data(), bad.size(), s, out.data()));
    }
  }
  const std::size_t idat = find_chunk(png, "IDAT");
  REQUIRE(idat != std::string::npos);
  const std::uint32_t idat_length = be32(png.data() + idat);
  // Bytes after the zlib stream inside the IDAT (CRC made valid): libpng's "extra compressed
  // data".
  auto junk = png;
  junk.insert(junk.begin() + static_cast<std::ptrdiff_t>(idat + 8 + idat_length), 3, 0x5a);
  put_be32(junk.data() + idat, idat_length + 3);
  fix_crcs(junk);
  rejected_by_both(junk, junk.size());
  // IEND missing, or not last.
  const std::size_t iend = find_chunk(png, "IEND");
  rejected_by_both(std::vector<std::uint8_t>(png.begin(), png.begin() + iend), iend);
  auto after = png;
  after.push_back(0);
  rejected_by_both(after, after.size());
  // A bad filter type with valid CRC and adler32.
  std::vector<std::uint8_t> raw(s.height * (1 + s.width * s.channels), 0);
  raw[0] = 5;
  std::vector<std::uint8_t> z(compressBound(raw.size()));
  uLongf zsize = z.size();
  REQUIRE(compress(z.data(), &zsize, raw.data(), raw.size()) == Z_OK);
  auto bad_filter = std::vector<std::uint8_t>(png.begin(), png.begin() + idat);
  std::vector<std::uint8_t> chunk(12 + zsize);
  put_be32(chunk.data(), static_cast<std::uint32_t>(zsize));
  std::memcpy(chunk.data() + 4, "IDAT", 4);
  std::memcpy(chunk.data() + 8, z.data(), zsize);
  bad_filter.insert(bad_filter.end(), chunk.begin(), chunk.end());
  bad_filter.insert(bad_filter.end(), png.begin() + iend, png.end());
  fix_crcs(bad_filter);
  rejected_by_both(bad_filter, bad_filter.size());
  raw[0] = 4;  // the same stream with a valid filter decodes
  REQUIRE(compress(z.data(), &zsize, raw.data(), raw.size()) == Z_OK);
  std::memcpy(bad_filter.data() + idat + 8, z.data(), zsize);
  fix_crcs(bad_filter);
  CHECK(decode_png_fast(bad_filter.data(), bad_filter.size(), s, out.data()));
}

TEST_CASE("png fast path: whatever it accepts from corrupted PNGs (CRCs fixed), libpng accepts "
          "with the same pixels") {
  const Shape s{6, 6, 3};
  const auto px = mixed_pixels(s, 3);
  const auto png = encode(px.data(), s, 9);
  std::vector<std::uint8_t> fast(s.bytes()), reference(s.bytes());
  std::uint64_t state = 777;
  int accepted = 0, declined = 0;
  for (int trial = 0; trial < 20000; ++trial) {
    auto bad = png;
    for (int k = 0; k < 1 + trial % 3; ++k) {
      state = state * 6364136223846793005ull + 1442695040888963407ull;
      bad[8 + (state >> 33) % (bad.size() - 8)] ^= static_cast<std::uint8_t>(1 + (state >> 20) % 255);
    }
    fix_crcs(bad);
    if (!decode_png_fast(bad.data(), bad.size(), s, fast.data())) {
      ++declined;
      continue;
    }
    ++accepted;
    REQUIRE_NOTHROW(
        decode_png_with_libpng(bad.data(), bad.size(), s, reference.data(), "'m.png'"));
    REQUIRE(fast == reference);
  }
  MESSAGE("accepted " << accepted << ", declined " << declined);
  CHECK(declined > 0);
}

TEST_CASE("time_png_decoders times every decoder on the same PNGs and checks their output") {
  const Shape s{32, 32, 3};
  auto images = fixtures::make_images(6, s, 2, 11);
  std::vector<std::vector<std::uint8_t>> pngs;
  for (std::size_t i = 0; i < images.size(); ++i) pngs.push_back(encode(images.image(i), s));
  const auto timings = detail::time_png_decoders(pngs, s, 3);
  std::vector<std::string> names;
  for (const auto& t : timings) {
    names.push_back(t.name);
    CHECK(t.seconds_per_image > 0);
    CHECK(t.full_decode == (t.name.find("inflate") == std::string::npos));
  }
  CHECK(names == std::vector<std::string>{"imgstore", "libpng", "libpng-simplified",
                                          "zlib-inflate", "libdeflate-inflate"});
  // The limit is the fastest full decoder, never an inflate-only floor.
  const auto fastest = detail::fastest_png_decoder(timings);
  CHECK(fastest.full_decode);
  for (const auto& t : timings) {
    if (t.full_decode) CHECK(fastest.seconds_per_image <= t.seconds_per_image);
  }
  // A PNG some decoder cannot decode stops the measurement instead of timing a failure.
  pngs[3][pngs[3].size() - 5] ^= 1;  // IEND's CRC
  CHECK_THROWS_AS(detail::time_png_decoders(pngs, s, 1), DataError);
}
