// The PNG decode limit the benchmarks compare against: every PNG decoder the core links (and
// the inflate step alone, as a floor no decoder can beat), timed on the same PNGs, single
// thread, from memory. The benchmarks add libspng to the same table (png_decoder_timings in
// bench/common/limits.cpp).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "imgstore/image.hpp"

namespace imgstore::detail {

struct PngDecoderTiming {
  std::string name;
  bool full_decode = true;      // false: inflate only, no chunk walk, CRC or unfiltering
  double seconds_per_image = 0;  // median over the passes
};

// Times, on `pngs` (each of `shape`, as decode_png accepts them; at least one):
//   "imgstore"          decode_png (the lean path, libpng for anything else)
//   "libpng"            decode_png_with_libpng (libpng's classic API, imgstore's settings)
//   "libpng-simplified" png_image_begin_read_from_memory + png_image_finish_read
//   "zlib-inflate"      the IDAT stream through zlib's inflate (one reused z_stream)
//   "libdeflate-inflate" the IDAT stream through libdeflate_zlib_decompress
// Each runs `repeats` passes over all images, interleaved; the median pass counts. Throws
// DataError if any decoder's output differs from decode_png's (so a timing is never of a
// decoder that did not do the work).
std::vector<PngDecoderTiming> time_png_decoders(const std::vector<std::vector<std::uint8_t>>& pngs,
                                                const Shape& shape, int repeats);

// The fastest full decoder of a time_png_decoders result: the decode limit.
PngDecoderTiming fastest_png_decoder(const std::vector<PngDecoderTiming>& timings);

}  // namespace imgstore::detail
