// The lean PNG decode path (see png_fast.hpp for what it accepts and why).
//
// Equivalence with libpng as decode_png configures it (png_codec.cpp): strict CRCs on every
// chunk, benign errors are errors, no transforms, a zlib window taken from the stream header.
// Each check below mirrors one libpng makes; where libpng's verdict could differ from
// libdeflate's, the file is handed back to libpng instead.
#include "detail/png_fast.hpp"

#include <libdeflate.h>

#include <cstring>
#include <memory>
#include <new>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace imgstore::detail {

namespace {

constexpr std::uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
// libpng rejects chunk lengths above 2^31 - 1 ("PNG unsigned integer out of range").
constexpr std::uint32_t kMaxPngUint = 0x7fffffffu;
// Images up to this raw size keep their scratch buffer per thread; bigger ones allocate.
constexpr std::size_t kCachedScratchBytes = std::size_t{4} << 20;

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         p[3];
}

// `chunk` points at the length field; the CRC covers type and data.
bool crc_ok(const std::uint8_t* chunk, std::uint32_t length) {
  return libdeflate_crc32(0, chunk + 4, std::size_t{length} + 4) == be32(chunk + 8 + length);
}

struct DecompressorDeleter {
  void operator()(libdeflate_decompressor* d) const noexcept { libdeflate_free_decompressor(d); }
};

libdeflate_decompressor* thread_decompressor() {
  thread_local std::unique_ptr<libdeflate_decompressor, DecompressorDeleter> decompressor(
      libdeflate_alloc_decompressor());
  if (!decompressor) throw std::bad_alloc();
  return decompressor.get();
}


// ---- unfiltering: dst = src + predictor(a = left in dst, b = above in prev, c = above left) --

void unfilter_up(std::uint8_t* dst, const std::uint8_t* src, const std::uint8_t* prev,
                 std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) dst[i] = static_cast<std::uint8_t>(src[i] + prev[i]);
}

// Any bytes per pixel (1 and 2 in practice).
void unfilter_sub(std::uint8_t* dst, const std::uint8_t* src, std::size_t n, std::size_t bpp) {
  for (std::size_t i = 0; i < bpp; ++i) dst[i] = src[i];
  for (std::size_t i = bpp; i < n; ++i) dst[i] = static_cast<std::uint8_t>(src[i] + dst[i - bpp]);
}

void unfilter_avg(std::uint8_t* dst, const std::uint8_t* src, const std::uint8_t* prev,
                  std::size_t n, std::size_t bpp) {
  for (std::size_t i = 0; i < bpp; ++i) dst[i] = static_cast<std::uint8_t>(src[i] + prev[i] / 2);
  for (std::size_t i = bpp; i < n; ++i) {
    dst[i] = static_cast<std::uint8_t>(src[i] + (dst[i - bpp] + prev[i]) / 2);
  }
}

void unfilter_paeth(std::uint8_t* dst, const std::uint8_t* src, const std::uint8_t* prev,
                    std::size_t n, std::size_t bpp) {
  for (std::size_t i = 0; i < bpp; ++i) dst[i] = static_cast<std::uint8_t>(src[i] + prev[i]);
  for (std::size_t i = bpp; i < n; ++i) {
    dst[i] = static_cast<std::uint8_t>(
        src[i] + paeth_predictor(dst[i - bpp], prev[i], prev[i - bpp]));
  }
}

#if defined(__SSE2__)
// RGB and RGBA: one pixel per step in 16-bit lanes, as libpng's and libspng's SSE2 filters do.
// The dependency on the pixel to the left makes wider steps impossible for Sub, Avg and Paeth.
// Steps move 4 bytes while a whole 4 fit in the row (for RGB the 4th lane is scratch that the
// next step overwrites); the last RGB pixel moves exactly 3.
template <int Bytes>
__m128i load_pixel(const std::uint8_t* p) {
  std::uint32_t v = 0;
  std::memcpy(&v, p, Bytes);
  return _mm_unpacklo_epi8(_mm_cvtsi32_si128(static_cast<int>(v)), _mm_setzero_si128());
}

template <int Bytes>
void store_pixel(std::uint8_t* p, __m128i v16) {
  const auto v = static_cast<std::uint32_t>(_mm_cvtsi128_si32(_mm_packus_epi16(v16, v16)));
  std::memcpy(p, &v, Bytes);
}

// Runs step(i, 4-byte tag) then step(i, Bpp-byte tag) over the pixels of a row of n bytes.
template <int Bpp, typename Step>
void for_each_pixel(std::size_t n, Step&& step) {
  std::size_t i = 0;
  for (; i + 4 <= n; i += Bpp) step(i, std::integral_constant<int, 4>{});
  for (; i < n; i += Bpp) step(i, std::integral_constant<int, Bpp>{});
}

__m128i low_byte(__m128i v16) { return _mm_and_si128(v16, _mm_set1_epi16(0xff)); }

template <int Bpp>
void unfilter_sub_sse2(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) {
  __m128i a = _mm_setzero_si128();
  for_each_pixel<Bpp>(n, [&](std::size_t i, auto bytes) {
    a = low_byte(_mm_add_epi16(a, load_pixel<decltype(bytes)::value>(src + i)));
    store_pixel<decltype(bytes)::value>(dst + i, a);
  });
}

template <int Bpp>
void unfilter_avg_sse2(std::uint8_t* dst, const std::uint8_t* src, const std::uint8_t* prev,
                       std::size_t n) {
  __m128i a = _mm_setzero_si128();
  for_each_pixel<Bpp>(n, [&](std::size_t i, auto bytes) {
    const __m128i avg = _mm_srli_epi16(_mm_add_epi16(a, load_pixel<decltype(bytes)::value>(prev + i)), 1);
    a = low_byte(_mm_add_epi16(avg, load_pixel<decltype(bytes)::value>(src + i)));
    store_pixel<decltype(bytes)::value>(dst + i, a);
  });
}

__m128i abs_epi16(__m128i v) { return _mm_max_epi16(v, _mm_sub_epi16(_mm_setzero_si128(), v)); }

__m128i select(__m128i mask, __m128i yes, __m128i no) {
  return _mm_or_si128(_mm_and_si128(mask, yes), _mm_andnot_si128(mask, no));
}

template <int Bpp>
void unfilter_paeth_sse2(std::uint8_t* dst, const std::uint8_t* src, const std::uint8_t* prev,
                         std::size_t n) {
  __m128i a = _mm_setzero_si128(), c = _mm_setzero_si128();
  for_each_pixel<Bpp>(n, [&](std::size_t i, auto bytes) {
    const __m128i b = load_pixel<decltype(bytes)::value>(prev + i);
    const __m128i p = _mm_sub_epi16(b, c), q = _mm_sub_epi16(a, c);
    const __m128i pa = abs_epi16(p), pb = abs_epi16(q), pc = abs_epi16(_mm_add_epi16(p, q));
    const __m128i smallest = _mm_min_epi16(pc, _mm_min_epi16(pa, pb));
    // a if pa is smallest, else b if pb is, else c: libpng's order of preference.
    const __m128i pred = select(_mm_cmpeq_epi16(smallest, pa), a,
                                select(_mm_cmpeq_epi16(smallest, pb), b, c));
    a = low_byte(_mm_add_epi16(pred, load_pixel<decltype(bytes)::value>(src + i)));
    store_pixel<decltype(bytes)::value>(dst + i, a);
    c = b;
  });
}
#endif

// false for a filter type other than 0..4 (libpng: "bad adaptive filter value").
bool unfilter_row(std::uint8_t filter, std::uint8_t* dst, const std::uint8_t* src,
                  const std::uint8_t* prev, std::size_t n, std::size_t bpp) {
  switch (filter) {
    case 0: std::memcpy(dst, src, n); return true;
    case 2: unfilter_up(dst, src, prev, n); return true;
    case 1:
    case 3:
    case 4: break;
    default: return false;
  }
#if defined(__SSE2__)
  if (bpp == 3 || bpp == 4) {
    const bool rgb = bpp == 3;
    if (filter == 1) rgb ? unfilter_sub_sse2<3>(dst, src, n) : unfilter_sub_sse2<4>(dst, src, n);
    if (filter == 3) {
      rgb ? unfilter_avg_sse2<3>(dst, src, prev, n) : unfilter_avg_sse2<4>(dst, src, prev, n);
    }
    if (filter == 4) {
      rgb ? unfilter_paeth_sse2<3>(dst, src, prev, n) : unfilter_paeth_sse2<4>(dst, src, prev, n);
    }
    return true;
  }
#endif
  if (filter == 1) unfilter_sub(dst, src, n, bpp);
  if (filter == 3) unfilter_avg(dst, src, prev, n, bpp);
  if (filter == 4) unfilter_paeth(dst, src, prev, n, bpp);
  return true;
}

// PNG colour type for 1..4 channels.
constexpr std::uint8_t kColorType[5] = {0xff, 0, 4, 2, 6};

}  // namespace

const std::uint8_t* zero_row(std::size_t n) {
  thread_local std::vector<std::uint8_t> zeros;
  if (zeros.size() < n) zeros.resize(n);
  return zeros.data();
}

bool decode_png_fast(const std::uint8_t* data, std::size_t size, const Shape& expected,
                     std::uint8_t* out) {
  const std::uint32_t width = expected.width, height = expected.height;
  const std::uint32_t channels = expected.channels;
  if (channels < 1 || channels > 4 || width == 0 || height == 0 || width > kMaxPngUint ||
      height > kMaxPngUint) {
    return false;
  }
  // Signature, then IHDR: 13 bytes, 8-bit, the expected colour type, compression and filter
  // method 0, not interlaced.
  if (size < 8 + 25 || std::memcmp(data, kSignature, 8) != 0) return false;
  const std::uint8_t* ihdr = data + 8;
  if (be32(ihdr) != 13 || std::memcmp(ihdr + 4, "IHDR", 4) != 0 || !crc_ok(ihdr, 13)) return false;
  const std::uint8_t* fields = ihdr + 8;
  if (be32(fields) != width || be32(fields + 4) != height || fields[8] != 8 ||
      fields[9] != kColorType[channels] || fields[10] != 0 || fields[11] != 0 || fields[12] != 0) {
    return false;
  }
  const std::size_t stride = std::size_t{width} * channels;
  if (stride / channels != width || stride + 1 > SIZE_MAX / height) return false;
  const std::size_t row_bytes = stride + 1;
  const std::size_t raw_size = row_bytes * height;

  // IDAT chunks right after IHDR, consecutive; then IEND, empty, ending the input.
  std::size_t pos = 33;
  std::size_t idat_total = 0, idat_count = 0;
  const std::uint8_t* first_idat = nullptr;
  for (;;) {
    if (size - pos < 12) return false;
    const std::uint32_t length = be32(data + pos);
    if (length > kMaxPngUint || length > size - pos - 12) return false;
    if (std::memcmp(data + pos + 4, "IDAT", 4) != 0) break;
    if (!crc_ok(data + pos, length)) return false;
    if (idat_count++ == 0) first_idat = data + pos + 8;
    idat_total += length;
    pos += 12 + std::size_t{length};
  }
  if (idat_count == 0 || idat_total < 2) return false;
  if (be32(data + pos) != 0 || std::memcmp(data + pos + 4, "IEND", 4) != 0 ||
      !crc_ok(data + pos, 0) || pos + 12 != size) {
    return false;
  }

  // Scratch: the inflated rows, then (if split over several chunks) the joined IDAT data.
  thread_local std::vector<std::uint8_t> cached;
  std::vector<std::uint8_t> own;
  const std::size_t scratch_bytes = raw_size + (idat_count > 1 ? idat_total : 0);
  std::vector<std::uint8_t>& scratch = scratch_bytes <= kCachedScratchBytes ? cached : own;
  if (scratch.size() < scratch_bytes) scratch.resize(scratch_bytes);
  std::uint8_t* raw = scratch.data();
  const std::uint8_t* stream = first_idat;
  if (idat_count > 1) {
    std::uint8_t* joined = raw + raw_size;
    std::size_t at = 0;
    for (std::size_t p = 33; at < idat_total;) {
      const std::uint32_t length = be32(data + p);
      std::memcpy(joined + at, data + p + 8, length);
      at += length;
      p += 12 + std::size_t{length};
    }
    stream = joined;
  }

  // zlib's window (from the header, as libpng asks) limits how far back a match may reach;
  // libdeflate does not check that. Both agree when the window is the maximum 32 KiB (deflate's
  // largest distance) or holds the whole image; any other stream goes to libpng.
  const unsigned window_log = (stream[0] >> 4) + 8u;
  if (window_log > 15 || (window_log < 15 && (std::size_t{1} << window_log) < raw_size)) {
    return false;
  }
  // Exactly raw_size bytes out (a NULL actual_out demands it), every input byte consumed (no
  // data after the adler32), adler32 checked by libdeflate.
  std::size_t consumed = 0;
  if (libdeflate_zlib_decompress_ex(thread_decompressor(), stream, idat_total, raw, raw_size,
                                    &consumed, nullptr) != LIBDEFLATE_SUCCESS ||
      consumed != idat_total) {
    return false;
  }

  const std::uint8_t* prev = zero_row(stride);
  for (std::uint32_t y = 0; y < height; ++y) {
    const std::uint8_t* row = raw + std::size_t{y} * row_bytes;
    std::uint8_t* dst = out + std::size_t{y} * stride;
    if (!unfilter_row(row[0], dst, row + 1, prev, stride, channels)) return false;
    prev = dst;
  }
  return true;
}

}  // namespace imgstore::detail
