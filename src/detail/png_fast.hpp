// A lean decoder for the PNGs imgstore writes itself, about twice as fast as libpng on small
// images: walk the chunks, check every CRC, inflate the IDAT stream with libdeflate in one
// call (adler32 checked), unfilter straight into the caller's HWC buffer.
//
// It only accepts files it can decode exactly as libpng would (decode_png in png_codec.hpp
// uses libpng with no transforms): signature, IHDR, one or more consecutive IDAT, IEND, nothing
// after; 8-bit gray, gray+alpha, RGB or RGBA; not interlaced. Any other chunk (libpng validates
// known ancillary chunks and treats their problems as errors here), any oddity and any error
// make it return false without throwing, and the caller falls back to libpng, which then
// decodes the file or reports the problem with today's messages. So the set of files it
// accepts is a subset of libpng's, and on those the pixels are identical (tested and fuzzed
// differentially).
#pragma once

#include <cstddef>
#include <cstdint>

#include "imgstore/image.hpp"

namespace imgstore::detail {

// true: `out` (expected.bytes()) holds the pixels. false: not decoded, `out` may hold garbage;
// decode with libpng instead. Never throws except std::bad_alloc.
bool decode_png_fast(const std::uint8_t* data, std::size_t size, const Shape& expected,
                     std::uint8_t* out);

// Shared with the encoder (png_codec.cpp), which filters with the same predictors.
// PNG's Paeth predictor from a = left, b = above, c = above left.
inline std::uint8_t paeth_predictor(int a, int b, int c) {
  const int p = b - c, q = a - c;
  const int pa = p < 0 ? -p : p, pb = q < 0 ? -q : q, pc = (p + q) < 0 ? -(p + q) : p + q;
  return static_cast<std::uint8_t>((pa <= pb && pa <= pc) ? a : (pb <= pc ? b : c));
}

// This thread's row of at least `n` zeros: the "previous row" of row 0. Grows, never written.
const std::uint8_t* zero_row(std::size_t n);

}  // namespace imgstore::detail
