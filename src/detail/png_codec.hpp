// PNG encode/decode with libpng, shared by the PNG folder and PNG-encoded LMDB payloads.
// Decoding treats the bytes as untrusted: dimensions are checked against the expected shape
// before any allocation, CRC errors and truncation are errors, and libpng's longjmp never
// crosses C++ frames.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "imgstore/image.hpp"

namespace imgstore::detail {

// Encodes HWC uint8 pixels (1 = gray, 2 = gray+alpha, 3 = RGB, 4 = RGBA) at zlib `level`:
// libpng's filter choice, one IDAT compressed by libdeflate. Replaces `out`'s contents,
// reusing its capacity.
void encode_png(const std::uint8_t* pixels, const Shape& shape, int level,
                std::vector<std::uint8_t>& out);

// The same through libpng and zlib: the same filtered rows, in libpng's IDAT chunks (the
// reference encode_png is tested against, and the benchmarks' libpng figure).
void encode_png_with_libpng(const std::uint8_t* pixels, const Shape& shape, int level,
                            std::vector<std::uint8_t>& out);

// Decodes a PNG that must have exactly `expected` shape, 8-bit, into `out` (expected.bytes()).
// Throws DataError "<what>: <problem>" on any malformed, truncated or mismatching input.
// The PNGs imgstore writes go through a lean path (png_fast.hpp), the rest through libpng.
void decode_png(const std::uint8_t* data, std::size_t size, const Shape& expected,
                std::uint8_t* out, const std::string& what);

// decode_png through libpng only: the reference the lean path is tested and fuzzed against,
// and the benchmarks' libpng figure. Same checks, same messages, same pixels.
void decode_png_with_libpng(const std::uint8_t* data, std::size_t size, const Shape& expected,
                            std::uint8_t* out, const std::string& what);

// Reads only the header: shape of a PNG (throws DataError naming `what` if not a PNG).
Shape png_shape(const std::uint8_t* data, std::size_t size, const std::string& what);

}  // namespace imgstore::detail
