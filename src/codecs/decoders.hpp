// Per-format halves of image_codec.hpp (jpeg_codec.cpp, png_decode.cpp); internal.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "codecs/image_codec.hpp"

namespace imgstore::detail {

ImageInfo read_jpeg_info(const std::uint8_t* data, std::size_t size, const std::string& what);
ImageInfo read_png_info(const std::uint8_t* data, std::size_t size, const std::string& what);

// Throws DataError naming `what` and the claimed size if `info` exceeds `limits`.
void check_decode_limits(const ImageInfo& info, const DecodeLimits& limits,
                         const std::string& what);

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
