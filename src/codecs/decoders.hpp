// Per-format halves of image_codec.hpp (jpeg_codec.cpp, png_decode.cpp); internal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "codecs/image_codec.hpp"
#include "codecs/pixel_convert.hpp"

namespace imgstore::detail {

ImageInfo read_jpeg_info(const std::uint8_t* data, std::size_t size, const std::string& what);
ImageInfo read_png_info(const std::uint8_t* data, std::size_t size, const std::string& what);

// Throws DataError naming `what` and the claimed size if `info` exceeds `limits`.
void check_decode_limits(const ImageInfo& info, const DecodeLimits& limits,
                         const std::string& what);

// What libjpeg is asked for when a JPEG of `info` decodes to `channels` (1 or 3), shared by
// the whole-image (TurboJPEG) and region (libjpeg) decoders: pixels in `mode`, L, RGB or CMYK.
// `direct`: they are the result (RGB, gray to gray, or gray to RGB by libjpeg's replication,
// which is Pillow's l2rgb); else they go through convert_rows (RGB -> L, CMYK -> RGB or L).
struct JpegOutput {
  SourceMode mode = SourceMode::RGB;
  bool direct = true;
};
JpegOutput jpeg_output(const ImageInfo& info, std::uint32_t channels);

// A JPEG dimension at 1/denom scale, rounded up as libjpeg and TurboJPEG (TJSCALED) do.
inline std::uint32_t jpeg_scaled(std::uint32_t dim, int denom) {
  return static_cast<std::uint32_t>((std::uint64_t{dim} + denom - 1) / denom);
}

void decode_jpeg(const std::uint8_t* data, std::size_t size, std::uint32_t channels,
                 const std::string& what, DecodedImage& out, const DecodeLimits& limits);
// Rows [y0, y1) and columns [x0, x1) of the JPEG (header `info`, limits checked) decoded at
// 1/denom into `out` as `channels`, decoding only what libjpeg needs for them
// (jpeg_region.cpp). The pixels equal those of the full decode at that scale.
void decode_jpeg_region(const std::uint8_t* data, std::size_t size, const ImageInfo& info,
                        std::uint32_t channels, int denom, std::uint32_t x0, std::uint32_t y0,
                        std::uint32_t x1, std::uint32_t y1, const std::string& what,
                        DecodedImage& out);
void decode_png_any(const std::uint8_t* data, std::size_t size, std::uint32_t channels,
                    const std::string& what, DecodedImage& out, const DecodeLimits& limits);

}  // namespace imgstore::detail
