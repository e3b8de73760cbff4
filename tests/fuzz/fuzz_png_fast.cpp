// Differential fuzzing of the lean PNG decode path (src/detail/png_fast.hpp) against libpng:
// whenever decode_png_fast accepts an input, libpng (decode_png_with_libpng) must accept it
// too and give the same pixels, and decode_png must agree with libpng in every case.
//
// Byte 0 selects how the rest becomes a PNG, so the fuzzer reaches past the checksums:
//   bit 0 clear: the rest is a PNG file as it is;
//     bit 1: every chunk's CRC is recomputed first.
//   bit 0 set: bytes 1-4 = height (1-16), width (1-16), channels (1-4), IDAT chunk size; the
//     rest is a raw deflate stream, wrapped by this target into a zlib stream (window from
//     bits 4-6 of byte 0; adler32 computed from zlib's own inflate of the stream when it
//     inflates) and a PNG with valid CRCs. This reaches libdeflate-versus-zlib differences.
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "detail/png_codec.hpp"
#include "detail/png_fast.hpp"
#include "fuzz_common.hpp"

using namespace imgstore;

namespace {

constexpr std::size_t kMaxFuzzImageBytes = std::size_t{1} << 22;

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         p[3];
}

void append_be32(std::vector<std::uint8_t>& v, std::uint32_t x) {
  for (int k = 0; k < 4; ++k) v.push_back(static_cast<std::uint8_t>(x >> (24 - 8 * k)));
}

void fix_crcs(std::vector<std::uint8_t>& png) {
  std::size_t pos = 8;
  while (pos + 12 <= png.size()) {
    const std::uint32_t length = be32(png.data() + pos);
    if (length > png.size() - pos - 12) break;
    const auto crc = static_cast<std::uint32_t>(crc32(0, png.data() + pos + 4, length + 4));
    for (int k = 0; k < 4; ++k) {
      png[pos + 8 + length + k] = static_cast<std::uint8_t>(crc >> (24 - 8 * k));
    }
    pos += 12 + std::size_t{length};
  }
}

void append_chunk(std::vector<std::uint8_t>& png, const char* type, const std::uint8_t* data,
                  std::size_t n) {
  const std::size_t at = png.size();
  append_be32(png, static_cast<std::uint32_t>(n));
  png.insert(png.end(), type, type + 4);
  png.insert(png.end(), data, data + n);
  append_be32(png, static_cast<std::uint32_t>(crc32(0, png.data() + at + 4, n + 4)));
}

// Mode "bit 0 set" (see the header comment): a PNG around a fuzzed deflate stream.
std::vector<std::uint8_t> wrap_deflate(const std::uint8_t* data, std::size_t size, Shape& shape) {
  const std::uint8_t mode = data[0];
  shape = Shape{1u + data[1] % 16u, 1u + data[2] % 16u, 1u + data[3] % 4u};
  const std::size_t chunk_size = 1 + data[4];
  const std::uint8_t* body = data + 5;
  const std::size_t body_size = size - 5;

  std::vector<std::uint8_t> stream;
  const unsigned cinfo = (mode >> 4) & 7;
  const unsigned cmf = (cinfo << 4) | 8;
  unsigned flg = 0;
  while ((cmf * 256 + flg) % 31 != 0) ++flg;
  stream.push_back(static_cast<std::uint8_t>(cmf));
  stream.push_back(static_cast<std::uint8_t>(flg));
  stream.insert(stream.end(), body, body + body_size);
  // When zlib can inflate the raw stream, append the adler32 of what it produced, right after
  // the bytes it consumed (anything the fuzzer put after them stays after the adler32).
  z_stream zs{};
  if (inflateInit2(&zs, -15) == Z_OK) {
    std::vector<std::uint8_t> raw(std::size_t{shape.height} * (1 + shape.width * shape.channels) +
                                  64);
    zs.next_in = const_cast<Bytef*>(body);
    zs.avail_in = static_cast<uInt>(body_size);
    zs.next_out = raw.data();
    zs.avail_out = static_cast<uInt>(raw.size());
    if (inflate(&zs, Z_FINISH) == Z_STREAM_END) {
      const std::size_t consumed = body_size - zs.avail_in;
      const auto adler = static_cast<std::uint32_t>(adler32(1, raw.data(), zs.total_out));
      std::vector<std::uint8_t> tail;
      append_be32(tail, adler);
      stream.insert(stream.begin() + static_cast<std::ptrdiff_t>(2 + consumed), tail.begin(),
                    tail.end());
    }
    inflateEnd(&zs);
  }

  std::vector<std::uint8_t> png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  const std::uint8_t types[] = {0, 0, 4, 2, 6};
  std::vector<std::uint8_t> ihdr;
  append_be32(ihdr, shape.width);
  append_be32(ihdr, shape.height);
  ihdr.insert(ihdr.end(), {8, types[shape.channels], 0, 0, 0});
  append_chunk(png, "IHDR", ihdr.data(), ihdr.size());
  for (std::size_t at = 0; at < stream.size(); at += chunk_size) {
    append_chunk(png, "IDAT", stream.data() + at, std::min(chunk_size, stream.size() - at));
  }
  append_chunk(png, "IEND", nullptr, 0);
  return png;
}

void differential(const std::vector<std::uint8_t>& png, const Shape& shape) {
  std::vector<std::uint8_t> fast(shape.bytes()), reference(shape.bytes()), combined(shape.bytes());
  const bool fast_ok = detail::decode_png_fast(png.data(), png.size(), shape, fast.data());
  bool libpng_ok = true;
  try {
    detail::decode_png_with_libpng(png.data(), png.size(), shape, reference.data(), "'f.png'");
  } catch (const Error&) {
    libpng_ok = false;
  }
  if (fast_ok && !libpng_ok) fuzz::fail("the fast path accepted a PNG libpng rejects");
  if (fast_ok && fast != reference) fuzz::fail("the fast path and libpng give different pixels");
  bool combined_ok = true;
  try {
    detail::decode_png(png.data(), png.size(), shape, combined.data(), "'f.png'");
  } catch (const Error&) {
    combined_ok = false;
  }
  if (combined_ok != libpng_ok) fuzz::fail("decode_png and libpng disagree on accepting a PNG");
  if (combined_ok && combined != reference) fuzz::fail("decode_png and libpng disagree on pixels");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  Shape shape{8, 8, 3};
  std::vector<std::uint8_t> png;
  if (data[0] & 1) {
    if (size < 5) return 0;
    png = wrap_deflate(data, size, shape);
  } else {
    png.assign(data + 1, data + size);
    if (data[0] & 2) fix_crcs(png);
    try {
      shape = detail::png_shape(png.data(), png.size(), "'f.png'");
    } catch (const Error&) {
    }
    if (shape.bytes() > kMaxFuzzImageBytes) return 0;
  }
  differential(png, shape);
  return 0;
}
