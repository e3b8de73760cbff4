// Timing of the core's PNG decoders (see png_decode_limit.hpp).
#include "detail/png_decode_limit.hpp"

#include <libdeflate.h>
#include <png.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <functional>
#include <memory>
#include <new>

#include <fmt/format.h>

#include "detail/png_codec.hpp"
#include "imgstore/error.hpp"

namespace imgstore::detail {

namespace {

using Clock = std::chrono::steady_clock;

// The IDAT chunks' data joined: the zlib stream.
std::vector<std::uint8_t> idat_stream(const std::vector<std::uint8_t>& png) {
  std::vector<std::uint8_t> stream;
  std::size_t pos = 8;
  while (pos + 12 <= png.size()) {
    const std::uint32_t length = (std::uint32_t{png[pos]} << 24) |
                                 (std::uint32_t{png[pos + 1]} << 16) |
                                 (std::uint32_t{png[pos + 2]} << 8) | png[pos + 3];
    if (length > png.size() - pos - 12) break;
    if (std::memcmp(png.data() + pos + 4, "IDAT", 4) == 0) {
      stream.insert(stream.end(), png.begin() + static_cast<std::ptrdiff_t>(pos + 8),
                    png.begin() + static_cast<std::ptrdiff_t>(pos + 8 + length));
    }
    pos += 12 + std::size_t{length};
  }
  return stream;
}

struct ZlibInflater {
  z_stream zs{};
  ZlibInflater() {
    if (inflateInit(&zs) != Z_OK) throw std::bad_alloc();
  }
  ~ZlibInflater() { inflateEnd(&zs); }
  ZlibInflater(const ZlibInflater&) = delete;
  ZlibInflater& operator=(const ZlibInflater&) = delete;

  bool inflate_all(const std::vector<std::uint8_t>& in, std::uint8_t* out, std::size_t n) {
    inflateReset(&zs);
    zs.next_in = const_cast<Bytef*>(in.data());
    zs.avail_in = static_cast<uInt>(in.size());
    zs.next_out = out;
    zs.avail_out = static_cast<uInt>(n);
    return inflate(&zs, Z_FINISH) == Z_STREAM_END && zs.total_out == n;
  }
};

struct LibdeflateDeleter {
  void operator()(libdeflate_decompressor* d) const noexcept { libdeflate_free_decompressor(d); }
};

bool simplified_api_decode(const std::vector<std::uint8_t>& png, std::uint32_t channels,
                           std::uint8_t* out) {
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_memory(&image, png.data(), png.size())) return false;
  const png_uint_32 formats[] = {0, PNG_FORMAT_GRAY, PNG_FORMAT_GA, PNG_FORMAT_RGB,
                                 PNG_FORMAT_RGBA};
  image.format = formats[channels];
  if (!png_image_finish_read(&image, nullptr, out, 0, nullptr)) {
    png_image_free(&image);
    return false;
  }
  return true;
}

struct Candidate {
  const char* name;
  bool full_decode;
  // Decodes image i into `out`; false if it failed.
  std::function<bool(std::size_t i, std::uint8_t* out)> run;
};

}  // namespace

std::vector<PngDecoderTiming> time_png_decoders(const std::vector<std::vector<std::uint8_t>>& pngs,
                                                const Shape& shape, int repeats) {
  if (pngs.empty() || repeats < 1) {
    throw UsageError("time_png_decoders needs at least one PNG and one repeat");
  }
  const std::size_t raw_size = std::size_t{shape.height} * (1 + std::size_t{shape.width} *
                                                                     shape.channels);
  std::vector<std::vector<std::uint8_t>> streams;
  streams.reserve(pngs.size());
  for (const auto& png : pngs) streams.push_back(idat_stream(png));
  ZlibInflater zlib;
  std::unique_ptr<libdeflate_decompressor, LibdeflateDeleter> deflater(
      libdeflate_alloc_decompressor());
  if (!deflater) throw std::bad_alloc();

  const std::vector<Candidate> candidates = {
      {"imgstore", true,
       [&](std::size_t i, std::uint8_t* out) {
         decode_png(pngs[i].data(), pngs[i].size(), shape, out, "'bench.png'");
         return true;
       }},
      {"libpng", true,
       [&](std::size_t i, std::uint8_t* out) {
         decode_png_with_libpng(pngs[i].data(), pngs[i].size(), shape, out, "'bench.png'");
         return true;
       }},
      {"libpng-simplified", true,
       [&](std::size_t i, std::uint8_t* out) {
         return simplified_api_decode(pngs[i], shape.channels, out);
       }},
      {"zlib-inflate", false,
       [&](std::size_t i, std::uint8_t* out) { return zlib.inflate_all(streams[i], out, raw_size); }},
      {"libdeflate-inflate", false,
       [&](std::size_t i, std::uint8_t* out) {
         return libdeflate_zlib_decompress(deflater.get(), streams[i].data(), streams[i].size(),
                                           out, raw_size, nullptr) == LIBDEFLATE_SUCCESS;
       }},
  };

  // Untimed check pass: every decoder does the whole job on every image.
  std::vector<std::uint8_t> reference(std::max(shape.bytes(), raw_size));
  std::vector<std::uint8_t> reference_raw(raw_size), out(reference.size());
  for (std::size_t i = 0; i < pngs.size(); ++i) {
    candidates[0].run(i, reference.data());
    if (!zlib.inflate_all(streams[i], reference_raw.data(), raw_size)) {
      throw DataError(fmt::format("PNG {}: zlib cannot inflate its IDAT stream", i));
    }
    for (const auto& c : candidates) {
      const bool ok = c.run(i, out.data());
      const bool same = c.full_decode
                            ? std::equal(out.begin(), out.begin() + shape.bytes(), reference.begin())
                            : std::equal(out.begin(), out.begin() + raw_size, reference_raw.begin());
      if (!ok || !same) {
        throw DataError(fmt::format("PNG {}: decoder {} {}", i, c.name,
                                    ok ? "gives different bytes" : "failed"));
      }
    }
  }

  std::vector<std::vector<double>> passes(candidates.size());
  for (int r = 0; r < repeats; ++r) {
    for (std::size_t k = 0; k < candidates.size(); ++k) {
      const auto start = Clock::now();
      for (std::size_t i = 0; i < pngs.size(); ++i) candidates[k].run(i, out.data());
      passes[k].push_back(std::chrono::duration<double>(Clock::now() - start).count());
    }
  }
  std::vector<PngDecoderTiming> result;
  for (std::size_t k = 0; k < candidates.size(); ++k) {
    auto& p = passes[k];
    std::nth_element(p.begin(), p.begin() + static_cast<std::ptrdiff_t>(p.size() / 2), p.end());
    result.push_back({candidates[k].name, candidates[k].full_decode,
                      p[p.size() / 2] / static_cast<double>(pngs.size())});
  }
  return result;
}

PngDecoderTiming fastest_png_decoder(const std::vector<PngDecoderTiming>& timings) {
  const PngDecoderTiming* best = nullptr;
  for (const auto& t : timings) {
    if (t.full_decode && (!best || t.seconds_per_image < best->seconds_per_image)) best = &t;
  }
  if (!best) throw UsageError("fastest_png_decoder: no full decoder was timed");
  return *best;
}

}  // namespace imgstore::detail
