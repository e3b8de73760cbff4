// PNG codec: bit-exact round trips, agreement with libpng's own simplified API, and strict
// rejection of malformed input (truncation, CRC errors, wrong shape, trailing data).
#include <doctest/doctest.h>

#include <png.h>
#include <zlib.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "detail/png_codec.hpp"
#include "fixtures.hpp"
#include "imgstore/error.hpp"

using namespace imgstore;
using detail::decode_png;
using detail::encode_png;
using detail::png_shape;

namespace {

std::vector<std::uint8_t> encode(const std::uint8_t* px, const Shape& s, int level = 6) {
  std::vector<std::uint8_t> out;
  encode_png(px, s, level, out);
  return out;
}

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         p[3];
}

// Offset of the first chunk of `type` (at its length field), or npos.
std::size_t find_chunk(const std::vector<std::uint8_t>& png, const char* type) {
  std::size_t pos = 8;
  while (pos + 12 <= png.size()) {
    if (std::memcmp(png.data() + pos + 4, type, 4) == 0) return pos;
    pos += 12 + be32(png.data() + pos);
  }
  return std::string::npos;
}

// A chunk with a correct (or deliberately wrong) CRC.
std::vector<std::uint8_t> make_chunk(const char* type, const std::string& data, bool good_crc) {
  const auto n = static_cast<std::uint32_t>(data.size());
  std::vector<std::uint8_t> c(12 + data.size());
  auto put32 = [&c](std::size_t at, std::uint32_t v) {
    for (int k = 0; k < 4; ++k) c[at + k] = static_cast<std::uint8_t>(v >> (24 - 8 * k));
  };
  put32(0, n);
  std::memcpy(c.data() + 4, type, 4);
  if (n) std::memcpy(c.data() + 8, data.data(), n);
  std::uint32_t crc = static_cast<std::uint32_t>(crc32(0, c.data() + 4, 4 + n));
  if (!good_crc) crc ^= 1;
  put32(8 + n, crc);
  return c;
}

// Encodes with libpng's simplified API, independent of our classic-API writer.
std::vector<std::uint8_t> encode_with_simplified_api(const std::uint8_t* px, const Shape& s,
                                                     bool sixteen_bit = false) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = s.width;
  image.height = s.height;
  const png_uint_32 formats[] = {0, PNG_FORMAT_GRAY, PNG_FORMAT_GA, PNG_FORMAT_RGB,
                                 PNG_FORMAT_RGBA};
  image.format = formats[s.channels] | (sixteen_bit ? PNG_FORMAT_FLAG_LINEAR : 0);
  std::vector<std::uint16_t> wide;
  const void* buffer = px;
  if (sixteen_bit) {
    wide.assign(px, px + s.bytes());
    for (auto& v : wide) v = static_cast<std::uint16_t>(v * 257);
    buffer = wide.data();
  }
  png_alloc_size_t size = 0;
  REQUIRE(png_image_write_to_memory(&image, nullptr, &size, 0, buffer, 0, nullptr));
  std::vector<std::uint8_t> out(size);
  REQUIRE(png_image_write_to_memory(&image, out.data(), &size, 0, buffer, 0, nullptr));
  out.resize(size);
  return out;
}

}  // namespace

TEST_CASE("png codec round-trips bit-exactly for 1-4 channels, odd sizes and all levels") {
  for (std::uint32_t c = 1; c <= 4; ++c) {
    for (Shape s : {Shape{5, 7, c}, Shape{1, 1, c}, Shape{32, 32, c}, Shape{3, 200, c}}) {
      for (int level : {0, 1, 6, 9}) {
        CAPTURE(to_string(s));
        CAPTURE(level);
        auto img = fixtures::make_images(1, s, 2, c * 100 + s.width + level);
        auto png = encode(img.image(0), s, level);
        CHECK(png_shape(png.data(), png.size(), "x") == s);
        std::vector<std::uint8_t> back(s.bytes(), 0xAB);
        decode_png(png.data(), png.size(), s, back.data(), "x");
        CHECK(back == img.pixels);
      }
    }
  }
}

TEST_CASE("png codec decodes what libpng's simplified API wrote, and vice versa") {
  for (std::uint32_t c = 1; c <= 4; ++c) {
    const Shape s{9, 13, c};
    auto img = fixtures::make_images(1, s, 2, 7 + c);
    auto theirs = encode_with_simplified_api(img.image(0), s);
    std::vector<std::uint8_t> back(s.bytes());
    decode_png(theirs.data(), theirs.size(), s, back.data(), "theirs");
    CHECK(back == img.pixels);

    // And libpng reads ours back to the same pixels.
    auto ours = encode(img.image(0), s);
    png_image image;
    std::memset(&image, 0, sizeof image);
    image.version = PNG_IMAGE_VERSION;
    REQUIRE(png_image_begin_read_from_memory(&image, ours.data(), ours.size()));
    CHECK(image.width == s.width);
    CHECK(image.height == s.height);
    CHECK(PNG_IMAGE_SAMPLE_CHANNELS(image.format) == c);
    std::vector<std::uint8_t> libpng_pixels(PNG_IMAGE_SIZE(image));
    REQUIRE(png_image_finish_read(&image, nullptr, libpng_pixels.data(), 0, nullptr));
    CHECK(libpng_pixels == img.pixels);
  }
}

// The IDAT payload (all chunks concatenated).
std::vector<std::uint8_t> idat_data(const std::vector<std::uint8_t>& png) {
  std::vector<std::uint8_t> data;
  std::size_t pos = 8;
  while (pos + 12 <= png.size()) {
    const auto length = be32(png.data() + pos);
    if (std::memcmp(png.data() + pos + 4, "IDAT", 4) == 0) {
      data.insert(data.end(), png.begin() + static_cast<std::ptrdiff_t>(pos + 8),
                  png.begin() + static_cast<std::ptrdiff_t>(pos + 8 + length));
    }
    pos += 12 + length;
  }
  return data;
}

// The zlib stream `packed` inflated: the PNG's filtered rows, each after its filter type byte.
std::vector<std::uint8_t> inflated(const std::vector<std::uint8_t>& packed, std::size_t size) {
  std::vector<std::uint8_t> out(size + 1);
  uLongf got = static_cast<uLongf>(out.size());
  REQUIRE(uncompress(out.data(), &got, packed.data(), static_cast<uLong>(packed.size())) == Z_OK);
  out.resize(got);
  return out;
}

TEST_CASE("encode_png filters each row as libpng's default adaptive filtering does") {
  // Smooth content makes every filter type win some rows; widths of 37 leave the vector loop
  // a tail at every channel count. encode_png_with_libpng goes through
  // libpng's writer with the same choice: byte-identical to libpng's own default output.
  // encode_png compresses with libdeflate instead, so its IDAT differs in bytes, but inflates
  // to the same filtered rows.
  for (std::uint32_t c = 1; c <= 4; ++c) {
    for (Shape s : {Shape{32, 32, c}, Shape{9, 13, c}, Shape{2, 2, c}, Shape{12, 37, c}}) {
      CAPTURE(to_string(s));
      std::vector<std::uint8_t> px(s.bytes());
      for (std::size_t i = 0; i < px.size(); ++i) {
        px[i] = static_cast<std::uint8_t>((i * 7) / (c + 2) + (i % 5) * (i % 3) + (i / 97) * 13);
      }
      // The lower half: a random walk, so rows' sums differ by small amounts.
      std::mt19937 rng(c);
      for (std::size_t i = px.size() / 2; i < px.size(); ++i) {
        px[i] = static_cast<std::uint8_t>(px[i - 1] + static_cast<int>(rng() % 9) - 4);
      }
      const auto theirs = encode_with_simplified_api(px.data(), s);
      std::vector<std::uint8_t> via_libpng;
      detail::encode_png_with_libpng(px.data(), s, 6, via_libpng);
      CHECK(idat_data(via_libpng) == idat_data(theirs));
      const std::size_t rows = s.height * (1 + std::size_t{s.width} * c);
      const auto ours = encode(px.data(), s, 6);
      CHECK(inflated(idat_data(ours), rows) == inflated(idat_data(theirs), rows));
    }
  }
}

TEST_CASE("encode_png picks libpng's filter on rows where the filters' costs are close") {
  // Random walks with steps of +-s: at small s several filters cost nearly the same, so an
  // off-by-one in any filter's cost (the average's rounding, Paeth's ties) changes the choice.
  std::mt19937 rng(11);
  for (std::uint32_t c = 1; c <= 4; ++c) {
    for (int step : {1, 2, 3, 6, 20}) {
      for (int trial = 0; trial < 8; ++trial) {
        const Shape s{24, 19 + static_cast<std::uint32_t>(trial) * 5, c};
        CAPTURE(to_string(s));
        CAPTURE(step);
        std::vector<std::uint8_t> px(s.bytes());
        int v = static_cast<int>(rng() % 256);
        for (auto& p : px) {
          v += static_cast<int>(rng() % (2 * step + 1)) - step;
          p = static_cast<std::uint8_t>(v);
        }
        const auto theirs = encode_with_simplified_api(px.data(), s);
        std::vector<std::uint8_t> via_libpng;
        detail::encode_png_with_libpng(px.data(), s, 6, via_libpng);
        CHECK(idat_data(via_libpng) == idat_data(theirs));
        const std::size_t rows = s.height * (1 + std::size_t{s.width} * c);
        CHECK(inflated(idat_data(encode(px.data(), s, 6)), rows) ==
              inflated(idat_data(theirs), rows));
      }
    }
  }
}

TEST_CASE("encode_png and encode_png_with_libpng write PNGs both decoders read back exactly") {
  std::mt19937 rng(5);
  for (std::uint32_t c = 1; c <= 4; ++c) {
    for (Shape s : {Shape{1, 1, c}, Shape{1, 17, c}, Shape{23, 1, c}, Shape{32, 32, c},
                    Shape{61, 7, c}}) {
      for (int level : {0, 1, 6, 9}) {
        CAPTURE(to_string(s));
        CAPTURE(level);
        std::vector<std::uint8_t> px(s.bytes());
        for (std::size_t i = 0; i < px.size(); ++i) {  // noise, then a smooth ramp
          px[i] = i < px.size() / 2 ? static_cast<std::uint8_t>(rng())
                                    : static_cast<std::uint8_t>(i / 3 + i % c);
        }
        std::vector<std::uint8_t> ours, via_libpng;
        encode_png(px.data(), s, level, ours);
        detail::encode_png_with_libpng(px.data(), s, level, via_libpng);
        for (const auto* png : {&ours, &via_libpng}) {
          std::vector<std::uint8_t> lean(s.bytes()), libpng(s.bytes());
          decode_png(png->data(), png->size(), s, lean.data(), "encoded");
          detail::decode_png_with_libpng(png->data(), png->size(), s, libpng.data(), "encoded");
          CHECK(lean == px);
          CHECK(libpng == px);
        }
      }
    }
  }
}

TEST_CASE("encode_png reuses the caller's buffer") {
  const Shape s{32, 32, 3};
  auto img = fixtures::make_images(2, s, 2, 3);
  std::vector<std::uint8_t> out;
  encode_png(img.image(0), s, 6, out);
  const auto first = out;
  const auto* data = out.data();
  const auto capacity = out.capacity();
  encode_png(img.image(0), s, 6, out);
  CHECK(out == first);  // cleared first, not appended to
  CHECK(out.data() == data);
  CHECK(out.capacity() == capacity);
}

TEST_CASE("decode_png rejects a PNG of the wrong shape or depth, naming the input") {
  const Shape s{8, 6, 3};
  auto img = fixtures::make_images(1, s, 2, 1);
  auto png = encode(img.image(0), s);
  std::vector<std::uint8_t> out(64 * 64 * 4);
  CHECK_THROWS_WITH_AS(decode_png(png.data(), png.size(), Shape{6, 8, 3}, out.data(), "'a.png'"),
                       doctest::Contains("'a.png': PNG is 8x6 8-bit RGB, expected 6x8x3"),
                       DataError);
  CHECK_THROWS_WITH_AS(decode_png(png.data(), png.size(), Shape{8, 6, 4}, out.data(), "'a.png'"),
                       doctest::Contains("expected 8x6x4"), DataError);
  CHECK_THROWS_WITH_AS(decode_png(png.data(), png.size(), Shape{64, 64, 3}, out.data(), "'a.png'"),
                       doctest::Contains("'a.png'"), DataError);
  auto wide = encode_with_simplified_api(img.image(0), s, true);
  CHECK_THROWS_WITH_AS(decode_png(wide.data(), wide.size(), s, out.data(), "'w.png'"),
                       doctest::Contains("16-bit"), DataError);
}

TEST_CASE("decode_png rejects every truncation") {
  const Shape s{5, 7, 3};
  auto img = fixtures::make_images(1, s, 2, 2);
  auto png = encode(img.image(0), s);
  std::vector<std::uint8_t> out(s.bytes());
  for (std::size_t n = 0; n < png.size(); ++n) {
    CAPTURE(n);
    CHECK_THROWS_WITH_AS(decode_png(png.data(), n, s, out.data(), "'t.png'"),
                         doctest::Contains("'t.png': "), DataError);
  }
  CHECK_THROWS_WITH_AS(decode_png(png.data(), png.size() - 1, s, out.data(), "'t.png'"),
                       doctest::Contains("truncated"), DataError);
}

TEST_CASE("decode_png rejects CRC errors in critical and ancillary chunks") {
  const Shape s{16, 16, 1};
  auto img = fixtures::make_images(1, s, 2, 4);
  auto png = encode(img.image(0), s);
  std::vector<std::uint8_t> out(s.bytes());

  auto idat = find_chunk(png, "IDAT");
  REQUIRE(idat != std::string::npos);
  auto bad = png;
  bad[idat + 8 + 3] ^= 0x10;  // a byte of the compressed data
  CHECK_THROWS_WITH_AS(decode_png(bad.data(), bad.size(), s, out.data(), "'c.png'"),
                       doctest::Contains("'c.png': corrupt PNG: CRC error in IDAT"), DataError);

  auto iend = find_chunk(png, "IEND");
  REQUIRE(iend != std::string::npos);
  bad = png;
  bad[iend + 8] ^= 0x01;  // IEND's CRC itself, after all the pixels
  CHECK_THROWS_WITH_AS(decode_png(bad.data(), bad.size(), s, out.data(), "'c.png'"),
                       doctest::Contains("CRC error in IEND (libpng: IEND: CRC error)"), DataError);

  // An ancillary chunk with a bad CRC, before and after the image data.
  for (const char* anchor : {"IDAT", "IEND"}) {
    CAPTURE(anchor);
    bad = png;
    auto at = find_chunk(bad, anchor);
    auto text = make_chunk("tEXt", std::string("Comment\0hello", 13), false);
    bad.insert(bad.begin() + static_cast<std::ptrdiff_t>(at), text.begin(), text.end());
    CHECK_THROWS_WITH_AS(decode_png(bad.data(), bad.size(), s, out.data(), "'c.png'"),
                         doctest::Contains("CRC error in tEXt"), DataError);
    // The same chunk with a good CRC is skipped and the pixels still decode.
    auto good = png;
    auto ok = make_chunk("tEXt", std::string("Comment\0hello", 13), true);
    good.insert(good.begin() + static_cast<std::ptrdiff_t>(find_chunk(good, anchor)), ok.begin(),
                ok.end());
    decode_png(good.data(), good.size(), s, out.data(), "'c.png'");
    CHECK(out == img.pixels);
  }
}

TEST_CASE("decode_png rejects trailing data, garbage and hostile chunk lengths") {
  const Shape s{4, 4, 2};
  auto img = fixtures::make_images(1, s, 2, 5);
  auto png = encode(img.image(0), s);
  std::vector<std::uint8_t> out(s.bytes());

  auto extra = png;
  extra.push_back(0);
  CHECK_THROWS_WITH_AS(decode_png(extra.data(), extra.size(), s, out.data(), "'e.png'"),
                       doctest::Contains("trailing data"), DataError);

  std::vector<std::uint8_t> garbage(100, 0x42);
  CHECK_THROWS_WITH_AS(decode_png(garbage.data(), garbage.size(), s, out.data(), "'g.png'"),
                       doctest::Contains("'g.png': corrupt PNG"), DataError);
  CHECK_THROWS_WITH_AS(png_shape(garbage.data(), garbage.size(), "'g.png'"),
                       doctest::Contains("'g.png'"), DataError);

  // An ancillary chunk declaring 2 GB in a 100-byte input must not allocate or read past the end.
  auto hostile = png;
  auto chunk = make_chunk("zTXt", "", true);
  chunk[0] = 0x7f;
  hostile.insert(hostile.begin() + static_cast<std::ptrdiff_t>(find_chunk(hostile, "IDAT")),
                 chunk.begin(), chunk.end());
  CHECK_THROWS_AS(decode_png(hostile.data(), hostile.size(), s, out.data(), "'h.png'"), DataError);
}

TEST_CASE("decode_png never crashes on corrupted bytes") {
  const Shape s{6, 6, 3};
  auto img = fixtures::make_images(1, s, 2, 6);
  auto png = encode(img.image(0), s);
  std::vector<std::uint8_t> out(s.bytes());
  std::uint64_t state = 12345;
  int rejected = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    auto bad = png;
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const auto pos = static_cast<std::size_t>((state >> 33) % bad.size());
    bad[pos] ^= static_cast<std::uint8_t>(1 + ((state >> 20) % 255));
    try {
      decode_png(bad.data(), bad.size(), s, out.data(), "'f.png'");
    } catch (const DataError&) {
      ++rejected;
    }
  }
  // Every byte of a PNG is covered by the signature check or a CRC.
  CHECK(rejected == 2000);
}
