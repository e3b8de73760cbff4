// Pillow 9.4's ImagingResample (libImaging/Resample.c) for 8-bit images. Every floating-point
// step of precompute_coeffs is kept in Pillow's order and precision (the box is float, its
// width is computed in float, the rest in double) so the rounded coefficients, and hence the
// pixels, are identical. The integer sums are exact, so the loops may be reordered freely.
#include "codecs/resample.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <fmt/format.h>

#include "detail/isa_clones.hpp"
#include "imgstore/error.hpp"

namespace imgstore::detail {

namespace {

constexpr int kPrecisionBits = 32 - 8 - 2;

double bilinear_filter(double x) {
  if (x < 0.0) x = -x;
  if (x < 1.0) return 1.0 - x;
  return 0.0;
}

double bicubic_filter(double x) {
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

// Fixed-point taps for one axis: output i reads `count[i]` inputs from `first[i]` with
// weights coeffs[i * ksize ...]. Taps of weight 0 at either end are dropped (the sums are
// exact, so they add nothing): an upscale's window of 3 has at most 2 non-zero taps, which
// halves the kernels' work. max_count: the largest count after that.
struct Taps {
  int ksize = 0;
  int max_count = 0;
  std::vector<int> first, count;
  std::vector<std::int32_t> coeffs;
};

// Drops output xx's zero-weight taps at both ends (moving `first` past the leading ones).
void trim_zero_taps(Taps& taps, std::size_t xx) {
  std::int32_t* c = &taps.coeffs[xx * static_cast<std::size_t>(taps.ksize)];
  int n = taps.count[xx];
  while (n > 0 && c[n - 1] == 0) --n;
  int lead = 0;
  while (lead < n && c[lead] == 0) ++lead;
  if (lead > 0) {
    std::memmove(c, c + lead, static_cast<std::size_t>(n - lead) * sizeof *c);
    std::fill(c + (n - lead), c + n, 0);
    taps.first[xx] += lead;
    n -= lead;
  }
  taps.count[xx] = n;
  taps.max_count = std::max(taps.max_count, n);
}

// precompute_coeffs + normalize_coeffs_8bpc.
void compute_taps(int in_size, float in0, float in1, int out_size, ResampleFilter filter,
                  Taps& taps) {
  double (*fn)(double) = filter == ResampleFilter::Bilinear ? bilinear_filter : bicubic_filter;
  const double filter_support = filter == ResampleFilter::Bilinear ? 1.0 : 2.0;
  const double scale = static_cast<double>(in1 - in0) / out_size;  // float subtraction first
  const double filterscale = scale < 1.0 ? 1.0 : scale;
  const double support = filter_support * filterscale;
  const int ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.ksize = ksize;
  taps.max_count = 0;
  taps.first.resize(out_size);
  taps.count.resize(out_size);
  taps.coeffs.assign(static_cast<std::size_t>(out_size) * ksize, 0);
  thread_local std::vector<double> k;
  k.resize(ksize);
  for (int xx = 0; xx < out_size; ++xx) {
    const double center = in0 + (xx + 0.5) * scale;
    const double ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double ww = 0.0;
    for (int x = 0; x < xmax; ++x) {
      const double w = fn((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    std::int32_t* out = &taps.coeffs[static_cast<std::size_t>(xx) * ksize];
    for (int x = 0; x < xmax; ++x) {
      const double v = ww != 0.0 ? k[x] / ww : k[x];
      out[x] = v < 0 ? static_cast<std::int32_t>(-0.5 + v * (1 << kPrecisionBits))
                     : static_cast<std::int32_t>(0.5 + v * (1 << kPrecisionBits));
    }
    taps.first[xx] = xmin;
    taps.count[xx] = xmax < 0 ? 0 : xmax;
    trim_zero_taps(taps, static_cast<std::size_t>(xx));
  }
}

inline std::uint8_t clip8(std::int32_t ss) {
  const std::int32_t v = ss >> kPrecisionBits;
  return static_cast<std::uint8_t>(v < 0 ? 0 : v > 255 ? 255 : v);
}

constexpr std::int32_t kHalf = 1 << (kPrecisionBits - 1);

// Sums for every output pixel of `rows` rows. K > 0: exactly K taps per output, known at
// compile time so the loops unroll; `first` has then been moved left where first + K would
// pass the row's end, its coefficients moved right to match, and taps past an output's count
// weigh 0, so the sums equal the reference's (integer sums in any order). K == 0: the
// reference, count[xx] taps from first[xx], coefficient rows ksize apart.
// The arrays come in as restrict pointers: the output is uint8_t, which may alias anything,
// so the compiler would otherwise reload them per store.
template <int C, int K>
IMGSTORE_ISA_CLONES void horizontal_taps(const std::uint8_t* __restrict src, std::size_t stride,
                                         int row0, int rows, const int* __restrict first,
                                         const int* __restrict count,
                                         const std::int32_t* __restrict coeffs,
                                         std::size_t ksize, int out_w,
                                         std::uint8_t* __restrict dst) {
  for (int y = 0; y < rows; ++y) {
    const std::uint8_t* in = src + static_cast<std::size_t>(row0 + y) * stride;
    std::uint8_t* out = dst + static_cast<std::size_t>(y) * out_w * C;
    for (int xx = 0; xx < out_w; ++xx) {
      const std::int32_t* k = coeffs + static_cast<std::size_t>(xx) * (K ? K : ksize);
      const std::uint8_t* p = in + static_cast<std::size_t>(first[xx]) * C;
      const int n = K ? K : count[xx];
      std::int32_t ss[C];
      for (int c = 0; c < C; ++c) ss[c] = kHalf;
      for (int x = 0; x < n; ++x) {
        for (int c = 0; c < C; ++c) ss[c] += p[x * C + c] * k[x];
      }
      for (int c = 0; c < C; ++c) out[xx * C + c] = clip8(ss[c]);
    }
  }
}

#if defined(__SSE2__)
// 3-channel rows with K = 2, 4 or 5 fixed taps, one output pixel per step, in SSE2 (every x86-64).
// A 22-bit coefficient k splits exactly into k = hi * 2048 + lo with hi and lo in int16
// (lo in 0..2047), so _mm_madd_epi16 sums two taps' products for R, G and B at once in int32;
// sum = (sum_hi << 11) + sum_lo equals the reference's integer sum bit for bit (wrapping adds
// agree mod 2^32 and the reference's sum fits in int32).
constexpr int kHiShift = 11;

// k = hi * 2048 + lo exactly, hi and lo in int16 (lo in 0..2047; a multiplication, not a shift
// of a negative value, which C++17 leaves undefined).
struct SplitCoeff {
  std::int16_t hi, lo;
};
inline SplitCoeff split_coeff(std::int32_t k) {
  const auto hi = static_cast<std::int16_t>(k >> kHiShift);
  return {hi, static_cast<std::int16_t>(k - std::int32_t{hi} * (1 << kHiShift))};
}

// Per output pixel, per pair of taps (2m, 2m+1; a tap past K weighs 0): the int16 lanes
// (k0, k1, k0, k1, k0, k1, 0, 0) of the hi parts, then those of the lo parts.
void pack_pair_coeffs(const std::int32_t* coeffs, int k, int out_w,
                      std::vector<std::int16_t>& packed) {
  const int pairs = (k + 1) / 2;
  packed.resize(static_cast<std::size_t>(out_w) * pairs * 2 * 8);
  for (int xx = 0; xx < out_w; ++xx) {
    const std::int32_t* c = coeffs + static_cast<std::size_t>(xx) * k;
    for (int m = 0; m < pairs; ++m) {
      const SplitCoeff a = split_coeff(c[2 * m]), b = split_coeff(2 * m + 1 < k ? c[2 * m + 1] : 0);
      std::int16_t* out = &packed[(static_cast<std::size_t>(xx) * pairs + m) * 16];
      const std::int16_t lanes[16] = {a.hi, b.hi, a.hi, b.hi, a.hi, b.hi, 0, 0,
                                      a.lo, b.lo, a.lo, b.lo, a.lo, b.lo, 0, 0};
      std::memcpy(out, lanes, sizeof lanes);
    }
  }
}

// Pixel p (bytes 3p..3p+2 of v) and pixel p+1 as int16 lanes (r_p, r_p+1, g_p, g_p+1, b_p, b_p+1, .., ..).
template <int P>
inline __m128i pixel_pair(__m128i v, __m128i zero) {
  const __m128i a = _mm_srli_si128(v, 3 * P);
  const __m128i b = _mm_srli_si128(v, 3 * P + 3);
  return _mm_unpacklo_epi8(_mm_unpacklo_epi8(a, b), zero);
}

// One 3-channel output pixel of K fixed taps, as the reference loop sums it: the vector
// passes' fallback where a 16-byte load would leave the rows.
template <int K>
inline void horizontal_rgb_pixel(const std::uint8_t* p, const std::int32_t* k, std::uint8_t* o) {
  for (int c = 0; c < 3; ++c) {
    std::int32_t ss = kHalf;
    for (int x = 0; x < K; ++x) ss += p[x * 3 + c] * k[x];
    o[c] = clip8(ss);
  }
}

template <int K>
IMGSTORE_ISA_CLONES void horizontal_rgb_sse2(const std::uint8_t* src, std::size_t stride,
                                             int row0, int rows, int in_w,
                                             const int* __restrict first,
                                             const std::int32_t* __restrict coeffs, int out_w,
                                             std::uint8_t* __restrict dst) {
  constexpr int kPairs = (K + 1) / 2;
  thread_local std::vector<std::int16_t> packed_buffer;
  pack_pair_coeffs(coeffs, K, out_w, packed_buffer);
  const std::int16_t* packed = packed_buffer.data();
  const __m128i zero = _mm_setzero_si128(), half = _mm_set1_epi32(kHalf);
  // A 16-byte load from p stays inside the rows read while p + 16 <= limit.
  const std::uint8_t* limit =
      src + static_cast<std::size_t>(row0 + rows - 1) * stride + static_cast<std::size_t>(in_w) * 3;
  for (int y = 0; y < rows; ++y) {
    const std::uint8_t* in = src + static_cast<std::size_t>(row0 + y) * stride;
    std::uint8_t* out = dst + static_cast<std::size_t>(y) * out_w * 3;
    for (int xx = 0; xx < out_w; ++xx) {
      const std::uint8_t* p = in + static_cast<std::size_t>(first[xx]) * 3;
      std::uint8_t* o = out + static_cast<std::size_t>(xx) * 3;
      if (p + 16 > limit) {  // the last row's last pixels: the reference loop
        horizontal_rgb_pixel<K>(p, coeffs + static_cast<std::size_t>(xx) * K, o);
        continue;
      }
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
      const std::int16_t* c = packed + static_cast<std::size_t>(xx) * kPairs * 16;
      auto lanes = [c](int i) { return _mm_loadu_si128(reinterpret_cast<const __m128i*>(c + 8 * i)); };
      __m128i w = pixel_pair<0>(v, zero);
      __m128i hi = _mm_madd_epi16(w, lanes(0));
      __m128i lo = _mm_madd_epi16(w, lanes(1));
      if constexpr (kPairs >= 2) {
        w = pixel_pair<2>(v, zero);
        hi = _mm_add_epi32(hi, _mm_madd_epi16(w, lanes(2)));
        lo = _mm_add_epi32(lo, _mm_madd_epi16(w, lanes(3)));
      }
      if constexpr (kPairs == 3) {
        w = pixel_pair<4>(v, zero);
        hi = _mm_add_epi32(hi, _mm_madd_epi16(w, lanes(4)));
        lo = _mm_add_epi32(lo, _mm_madd_epi16(w, lanes(5)));
      }
      __m128i sum = _mm_add_epi32(_mm_add_epi32(_mm_slli_epi32(hi, kHiShift), lo), half);
      sum = _mm_srai_epi32(sum, kPrecisionBits);
      const __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(sum, sum), zero);  // clip to 0..255
      const auto rgb = static_cast<std::uint32_t>(_mm_cvtsi128_si32(bytes));
      std::memcpy(o, &rgb, 3);
    }
  }
}
#endif

// Rows are summed one tap at a time over the whole row (cache-friendly; integer sums are
// order-independent). The accumulator is a thread_local vector reached through a local
// restrict pointer, so the inner loops vectorise and never call __tls_get_addr.
IMGSTORE_ISA_CLONES void vertical_pass(const std::uint8_t* src, std::size_t stride,
                                       std::size_t row_len, const Taps& t, int out_h,
                                       std::uint8_t* dst) {
  thread_local std::vector<std::int32_t> acc_buffer;
  acc_buffer.resize(row_len);
  std::int32_t* __restrict acc = acc_buffer.data();
  const std::int32_t* const coeffs = t.coeffs.data();
  const std::size_t ksize = static_cast<std::size_t>(t.ksize);
  for (int yy = 0; yy < out_h; ++yy) {
    for (std::size_t i = 0; i < row_len; ++i) acc[i] = kHalf;
    const std::int32_t* k = coeffs + static_cast<std::size_t>(yy) * ksize;
    const int n = t.count[static_cast<std::size_t>(yy)];
    const int y0 = t.first[static_cast<std::size_t>(yy)];
    for (int y = 0; y < n; ++y) {
      const std::uint8_t* __restrict in = src + static_cast<std::size_t>(y0 + y) * stride;
      const std::int32_t w = k[y];
      for (std::size_t i = 0; i < row_len; ++i) acc[i] += in[i] * w;
    }
    std::uint8_t* __restrict out = dst + static_cast<std::size_t>(yy) * row_len;
    for (std::size_t i = 0; i < row_len; ++i) out[i] = clip8(acc[i]);
  }
}

#if defined(__x86_64__) && defined(__GNUC__)
// Output row yy's columns [from, row_len), summed one column at a time (the AVX2 pass's tail).
void vertical_columns(const std::uint8_t* src, std::size_t stride, std::size_t row_len,
                      const Taps& t, int yy, std::size_t from, std::uint8_t* dst) {
  const std::int32_t* k = t.coeffs.data() + static_cast<std::size_t>(yy) * static_cast<std::size_t>(t.ksize);
  const int n = t.count[static_cast<std::size_t>(yy)];
  const std::uint8_t* rows = src + static_cast<std::size_t>(t.first[static_cast<std::size_t>(yy)]) * stride;
  for (std::size_t i = from; i < row_len; ++i) {
    std::int32_t ss = kHalf;
    for (int y = 0; y < n; ++y) ss += rows[static_cast<std::size_t>(y) * stride + i] * k[y];
    dst[static_cast<std::size_t>(yy) * row_len + i] = clip8(ss);
  }
}

// The vertical pass in AVX2, 32 columns at a time held in registers across all taps: two
// rows' bytes interleaved into int16 pairs, and _mm256_madd_epi16 sums two taps at once on the
// exact hi/lo split of the coefficients (split_coeff), where the plain loop's AVX2 clone needs
// a 32-bit multiply per tap and keeps its sums in memory. The last row_len % 32 columns take
// vertical_columns.
__attribute__((target("avx2"))) void vertical_avx2(const std::uint8_t* src, std::size_t stride,
                                                   std::size_t row_len, const Taps& t, int out_h,
                                                   std::uint8_t* dst) {
  // Per pair of taps, the 16 int16 lanes of its hi parts (k0, k1, k0, k1, ...), then of its lo
  // parts: loaded in the inner loop, for any number of taps.
  thread_local std::vector<std::int16_t> lanes_buffer;
  const std::size_t max_pairs = (static_cast<std::size_t>(t.max_count) + 1) / 2;
  lanes_buffer.resize(max_pairs * 32);
  std::int16_t* const lanes = lanes_buffer.data();
  const __m256i zero = _mm256_setzero_si256(), half = _mm256_set1_epi32(kHalf);
  const std::size_t blocks = row_len / 32 * 32;
  for (int yy = 0; yy < out_h; ++yy) {
    const int n = t.count[static_cast<std::size_t>(yy)];
    const std::int32_t* k = t.coeffs.data() + static_cast<std::size_t>(yy) * static_cast<std::size_t>(t.ksize);
    const std::uint8_t* rows = src + static_cast<std::size_t>(t.first[static_cast<std::size_t>(yy)]) * stride;
    const int pairs = (n + 1) / 2;
    for (int p = 0; p < pairs; ++p) {
      const SplitCoeff a = split_coeff(k[2 * p]), b = split_coeff(2 * p + 1 < n ? k[2 * p + 1] : 0);
      for (int j = 0; j < 16; j += 2) {
        lanes[32 * p + j] = a.hi, lanes[32 * p + j + 1] = b.hi;
        lanes[32 * p + 16 + j] = a.lo, lanes[32 * p + 16 + j + 1] = b.lo;
      }
    }
    std::uint8_t* out = dst + static_cast<std::size_t>(yy) * row_len;
    for (std::size_t i = 0; i < blocks; i += 32) {
      // Sums of columns (0-3 | 16-19), (4-7 | 20-23), (8-11 | 24-27), (12-15 | 28-31): the
      // in-lane order of the unpacks, which the packs below undo.
      __m256i sh[4] = {zero, zero, zero, zero}, sl[4] = {zero, zero, zero, zero};
      for (int p = 0; p < pairs; ++p) {
        const std::uint8_t* ra = rows + static_cast<std::size_t>(2 * p) * stride + i;
        const std::uint8_t* rb = 2 * p + 1 < n ? ra + stride : ra;  // weighs 0 then
        const __m256i a = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(ra));
        const __m256i b = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rb));
        const __m256i ab_lo = _mm256_unpacklo_epi8(a, b), ab_hi = _mm256_unpackhi_epi8(a, b);
        const __m256i q[4] = {_mm256_unpacklo_epi8(ab_lo, zero), _mm256_unpackhi_epi8(ab_lo, zero),
                              _mm256_unpacklo_epi8(ab_hi, zero), _mm256_unpackhi_epi8(ab_hi, zero)};
        const __m256i hi = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes + 32 * p));
        const __m256i lo = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lanes + 32 * p + 16));
        for (int j = 0; j < 4; ++j) {
          sh[j] = _mm256_add_epi32(sh[j], _mm256_madd_epi16(q[j], hi));
          sl[j] = _mm256_add_epi32(sl[j], _mm256_madd_epi16(q[j], lo));
        }
      }
      __m256i sum[4];
      for (int j = 0; j < 4; ++j) {
        sum[j] = _mm256_srai_epi32(
            _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(sh[j], kHiShift), sl[j]), half),
            kPrecisionBits);
      }
      // Saturating packs clip to 0..255 and put the columns back in order.
      const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(sum[0], sum[1]),
                                                _mm256_packs_epi32(sum[2], sum[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), bytes);
    }
    if (blocks < row_len) vertical_columns(src, stride, row_len, t, yy, blocks, dst);
  }
}

// pixel_pair for two outputs at once, one per 128-bit lane (AVX2's byte shifts and unpacks
// stay within lanes).
template <int P>
__attribute__((target("avx2"))) inline __m256i pixel_pair_x2(__m256i v, __m256i zero) {
  const __m256i a = _mm256_bsrli_epi128(v, 3 * P);
  const __m256i b = _mm256_bsrli_epi128(v, 3 * P + 3);
  return _mm256_unpacklo_epi8(_mm256_unpacklo_epi8(a, b), zero);
}

// horizontal_rgb_sse2's step for two output pixels at once, output xx in the low lane and
// xx + 1 in the high one: the same lanes, the same exact sums, half the instructions per pixel.
// Per pair of outputs and pair of taps, the coefficient lanes are (hi of xx | hi of xx + 1),
// then (lo of xx | lo of xx + 1). An odd last output, and pixels whose load would leave the
// rows, take the reference loop.
template <int K>
__attribute__((target("avx2"))) void horizontal_rgb_avx2(const std::uint8_t* src,
                                                         std::size_t stride, int row0, int rows,
                                                         int in_w, const int* __restrict first,
                                                         const std::int32_t* __restrict coeffs,
                                                         int out_w, std::uint8_t* __restrict dst) {
  constexpr int kPairs = (K + 1) / 2;
  thread_local std::vector<std::int16_t> packed_buffer, wide_buffer;
  pack_pair_coeffs(coeffs, K, out_w, packed_buffer);
  const std::size_t couples = static_cast<std::size_t>(out_w / 2);
  wide_buffer.resize(couples * kPairs * 32);
  for (std::size_t j = 0; j < couples; ++j) {
    for (std::size_t m = 0; m < kPairs; ++m) {
      for (std::size_t part = 0; part < 2; ++part) {  // hi, lo
        for (std::size_t o = 0; o < 2; ++o) {         // output 2j, 2j + 1
          std::memcpy(&wide_buffer[((j * kPairs + m) * 4 + part * 2 + o) * 8],
                      &packed_buffer[((2 * j + o) * kPairs + m) * 16 + part * 8],
                      8 * sizeof(std::int16_t));
        }
      }
    }
  }
  const std::int16_t* wide = wide_buffer.data();
  const __m256i zero = _mm256_setzero_si256(), half = _mm256_set1_epi32(kHalf);
  const std::uint8_t* limit =
      src + static_cast<std::size_t>(row0 + rows - 1) * stride + static_cast<std::size_t>(in_w) * 3;
  for (int y = 0; y < rows; ++y) {
    const std::uint8_t* in = src + static_cast<std::size_t>(row0 + y) * stride;
    std::uint8_t* out = dst + static_cast<std::size_t>(y) * out_w * 3;
    int xx = 0;
    for (; xx + 1 < out_w; xx += 2) {
      const std::uint8_t* p0 = in + static_cast<std::size_t>(first[xx]) * 3;
      const std::uint8_t* p1 = in + static_cast<std::size_t>(first[xx + 1]) * 3;
      if (p0 + 16 > limit || p1 + 16 > limit) break;
      const __m256i v = _mm256_inserti128_si256(
          _mm256_castsi128_si256(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p0))),
          _mm_loadu_si128(reinterpret_cast<const __m128i*>(p1)), 1);
      const std::int16_t* c = wide + static_cast<std::size_t>(xx / 2) * kPairs * 32;
      const auto* lanes = reinterpret_cast<const __m256i*>(c);  // lanes[2m]: hi, [2m + 1]: lo
      __m256i w = pixel_pair_x2<0>(v, zero);
      __m256i hi = _mm256_madd_epi16(w, _mm256_loadu_si256(lanes + 0));
      __m256i lo = _mm256_madd_epi16(w, _mm256_loadu_si256(lanes + 1));
      if constexpr (kPairs >= 2) {
        w = pixel_pair_x2<2>(v, zero);
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(w, _mm256_loadu_si256(lanes + 2)));
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(w, _mm256_loadu_si256(lanes + 3)));
      }
      if constexpr (kPairs == 3) {
        w = pixel_pair_x2<4>(v, zero);
        hi = _mm256_add_epi32(hi, _mm256_madd_epi16(w, _mm256_loadu_si256(lanes + 4)));
        lo = _mm256_add_epi32(lo, _mm256_madd_epi16(w, _mm256_loadu_si256(lanes + 5)));
      }
      __m256i sum = _mm256_add_epi32(_mm256_add_epi32(_mm256_slli_epi32(hi, kHiShift), lo), half);
      sum = _mm256_srai_epi32(sum, kPrecisionBits);
      const __m256i bytes = _mm256_packus_epi16(_mm256_packs_epi32(sum, sum), zero);  // clip
      const auto a = static_cast<std::uint32_t>(_mm256_cvtsi256_si32(bytes));
      const auto b = static_cast<std::uint32_t>(_mm_cvtsi128_si32(_mm256_extracti128_si256(bytes, 1)));
      std::memcpy(out + static_cast<std::size_t>(xx) * 3, &a, 3);
      std::memcpy(out + static_cast<std::size_t>(xx) * 3 + 3, &b, 3);
    }
    for (; xx < out_w; ++xx) {
      horizontal_rgb_pixel<K>(in + static_cast<std::size_t>(first[xx]) * 3,
                              coeffs + static_cast<std::size_t>(xx) * K,
                              out + static_cast<std::size_t>(xx) * 3);
    }
  }
}

#endif

// Taps as exactly k per output (k >= t.max_count), packed k apart: false if the row is
// shorter than k.
bool fixed_taps(const Taps& t, int k, int in_size, std::vector<int>& first,
                std::vector<std::int32_t>& coeffs) {
  if (in_size < k) return false;
  const std::size_t n = t.first.size(), ks = static_cast<std::size_t>(k);
  first.assign(t.first.begin(), t.first.end());
  coeffs.assign(n * ks, 0);
  for (std::size_t i = 0; i < n; ++i) {
    std::copy_n(&t.coeffs[i * static_cast<std::size_t>(t.ksize)], t.count[i], &coeffs[i * ks]);
    const int shift = first[i] + k - in_size;
    if (shift <= 0) continue;
    // Read the k inputs ending at the row's end; the taps move right by `shift`.
    std::int32_t* c = &coeffs[i * ks];
    for (int x = k - 1; x >= 0; --x) c[x] = x >= shift ? c[x - shift] : 0;
    first[i] -= shift;
  }
  return true;
}

// The fixed kernel width for t: 2 (any bilinear upscale), 4 (bilinear downscales below 2x,
// bicubic upscales) or 5; 0 if wider, for the reference loop.
int fixed_width(const Taps& t) {
  if (t.max_count <= 2) return 2;
  if (t.max_count <= 4) return 4;
  return t.max_count == 5 ? 5 : 0;
}

template <int C>
void horizontal_channels(const std::uint8_t* src, std::size_t stride, int in_w, int row0,
                         int rows, const Taps& t, int out_w, std::uint8_t* dst, bool generic) {
  thread_local std::vector<int> first;
  thread_local std::vector<std::int32_t> coeffs;
  const int k = generic ? 0 : fixed_width(t);
  if (k != 0 && fixed_taps(t, k, in_w, first, coeffs)) {
    // Pick one instantiation per width; every kernel sums exactly k taps per output.
    auto pick = [k](auto two, auto four, auto five) { return k == 2 ? two : k == 4 ? four : five; };
#if defined(__x86_64__) && defined(__GNUC__)
    if constexpr (C == 3) {
      if (avx2_kernels_enabled()) {
        auto* rgb = pick(horizontal_rgb_avx2<2>, horizontal_rgb_avx2<4>, horizontal_rgb_avx2<5>);
        return rgb(src, stride, row0, rows, in_w, first.data(), coeffs.data(), out_w, dst);
      }
    }
#endif
#if defined(__SSE2__)
    if constexpr (C == 3) {
      auto* rgb = pick(horizontal_rgb_sse2<2>, horizontal_rgb_sse2<4>, horizontal_rgb_sse2<5>);
      return rgb(src, stride, row0, rows, in_w, first.data(), coeffs.data(), out_w, dst);
    }
#endif
    auto* fixed = pick(horizontal_taps<C, 2>, horizontal_taps<C, 4>, horizontal_taps<C, 5>);
    return fixed(src, stride, row0, rows, first.data(), nullptr, coeffs.data(), 0, out_w, dst);
  }
  horizontal_taps<C, 0>(src, stride, row0, rows, t.first.data(), t.count.data(),
                        t.coeffs.data(), static_cast<std::size_t>(t.ksize), out_w, dst);
}

void horizontal(const std::uint8_t* src, std::size_t stride, int in_w, int row0, int rows,
                int channels, const Taps& t, int out_w, std::uint8_t* dst, bool generic) {
  switch (channels) {
    case 1: return horizontal_channels<1>(src, stride, in_w, row0, rows, t, out_w, dst, generic);
    case 2: return horizontal_channels<2>(src, stride, in_w, row0, rows, t, out_w, dst, generic);
    case 3: return horizontal_channels<3>(src, stride, in_w, row0, rows, t, out_w, dst, generic);
    default: return horizontal_channels<4>(src, stride, in_w, row0, rows, t, out_w, dst, generic);
  }
}

// The outputs in reverse order: output i takes output n-1-i's taps, which mirrors the result.
void reverse_outputs(Taps& t) {
  const std::size_t n = t.first.size(), k = static_cast<std::size_t>(t.ksize);
  std::reverse(t.first.begin(), t.first.end());
  std::reverse(t.count.begin(), t.count.end());
  for (std::size_t i = 0; i < n / 2; ++i) {
    std::swap_ranges(t.coeffs.begin() + i * k, t.coeffs.begin() + (i + 1) * k,
                     t.coeffs.begin() + (n - 1 - i) * k);
  }
}

// Pixels of C bytes swapped whole (C known at compile time: no per-byte loop).
template <std::uint32_t C>
void flip_pixels(std::uint8_t* hwc, std::uint32_t h, std::uint32_t w) {
  for (std::uint32_t y = 0; y < h; ++y) {
    std::uint8_t* row = hwc + std::size_t{y} * w * C;
    for (std::uint32_t a = 0, b = w - 1; a < b; ++a, --b) {
      std::uint8_t t[C];
      std::memcpy(t, row + a * C, C);
      std::memcpy(row + a * C, row + b * C, C);
      std::memcpy(row + b * C, t, C);
    }
  }
}

}  // namespace

void flip_rows(std::uint8_t* hwc, std::uint32_t h, std::uint32_t w, std::uint32_t c) {
  switch (c) {
    case 1: return flip_pixels<1>(hwc, h, w);
    case 2: return flip_pixels<2>(hwc, h, w);
    case 3: return flip_pixels<3>(hwc, h, w);
    case 4: return flip_pixels<4>(hwc, h, w);
    default: throw UsageError(fmt::format("flip_rows: {} channels (1 to 4)", c));
  }
}

void resize(const std::uint8_t* src, std::uint32_t width, std::uint32_t height,
            std::uint32_t channels, const ResizeBox& box, std::uint32_t out_w,
            std::uint32_t out_h, std::uint8_t* dst, ResampleFilter filter,
            std::size_t src_stride, bool mirror) {
  resize_with(src, width, height, channels, box, out_w, out_h, dst, filter, src_stride, false,
              mirror);
}

void resize_with(const std::uint8_t* src, std::uint32_t width, std::uint32_t height,
                 std::uint32_t channels, const ResizeBox& box, std::uint32_t out_w,
                 std::uint32_t out_h, std::uint8_t* dst, ResampleFilter filter,
                 std::size_t src_stride, bool generic_kernels, bool mirror) {
  if (channels < 1 || channels > 4 || width == 0 || height == 0 || out_w == 0 || out_h == 0 ||
      width > (1u << 30) || height > (1u << 30) || out_w > (1u << 30) || out_h > (1u << 30)) {
    throw UsageError(fmt::format("resize: cannot resample {}x{}x{} to {}x{}", height, width,
                                 channels, out_h, out_w));
  }
  if (!(box.x0 >= 0 && box.y0 >= 0 && box.x1 <= static_cast<float>(width) &&
        box.y1 <= static_cast<float>(height) && box.x1 > box.x0 && box.y1 > box.y0)) {
    throw UsageError(fmt::format("resize: box ({}, {}, {}, {}) is empty or outside the {}x{} image",
                                 box.x0, box.y0, box.x1, box.y1, width, height));
  }
  const std::size_t stride = src_stride ? src_stride : std::size_t{width} * channels;
  const std::size_t out_row = std::size_t{out_w} * channels;
  // Integer box of the output's size: Pillow crops (no resampling).
  if (box.x0 == std::floor(box.x0) && box.y0 == std::floor(box.y0) &&
      box.x1 - box.x0 == static_cast<float>(out_w) && box.y1 - box.y0 == static_cast<float>(out_h)) {
    for (std::uint32_t y = 0; y < out_h; ++y) {
      std::memcpy(dst + y * out_row,
                  src + (static_cast<std::size_t>(box.y0) + y) * stride +
                      static_cast<std::size_t>(box.x0) * channels,
                  out_row);
    }
    if (mirror) flip_rows(dst, out_h, out_w, channels);
    return;
  }
  thread_local Taps horiz, vert;
  compute_taps(static_cast<int>(width), box.x0, box.x1, static_cast<int>(out_w), filter, horiz);
  compute_taps(static_cast<int>(height), box.y0, box.y1, static_cast<int>(out_h), filter, vert);
  // Pillow's test, quirk included (box.x1 is compared with the output width).
  const bool need_horizontal = out_w != width || box.x0 != 0 || box.x1 != static_cast<float>(out_w);
  const bool need_vertical = out_h != height || box.y0 != 0 || box.y1 != static_cast<float>(out_h);
  if (mirror && need_horizontal) reverse_outputs(horiz);

  const std::uint8_t* cur = src;
  std::size_t cur_stride = stride;
  std::size_t cur_row = std::size_t{width} * channels;
  thread_local std::vector<std::uint8_t> temp;
  if (need_horizontal) {
    // Only the rows the vertical pass reads.
    // (Trimmed windows need not grow monotonically at the ends: take the extremes.)
    int first = vert.first[0], last = first;
    for (std::size_t y = 0; y < vert.first.size(); ++y) {
      first = std::min(first, vert.first[y]);
      last = std::max(last, vert.first[y] + vert.count[y]);
    }
    const int rows = need_vertical ? last - first : static_cast<int>(height);
    const int row0 = need_vertical ? first : 0;
    std::uint8_t* hdst = dst;
    if (need_vertical) {
      temp.resize(static_cast<std::size_t>(rows) * out_row);
      hdst = temp.data();
      for (int& f : vert.first) f -= first;
    }
    horizontal(src, stride, static_cast<int>(width), row0, rows, static_cast<int>(channels),
               horiz, static_cast<int>(out_w), hdst, generic_kernels);
    if (!need_vertical) return;  // mirrored by the horizontal pass
    cur = temp.data();
    cur_stride = out_row;
    cur_row = out_row;
  }
  if (need_vertical) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (!generic_kernels && avx2_kernels_enabled()) {
      vertical_avx2(cur, cur_stride, cur_row, vert, static_cast<int>(out_h), dst);
    } else {
      vertical_pass(cur, cur_stride, cur_row, vert, static_cast<int>(out_h), dst);
    }
#else
    vertical_pass(cur, cur_stride, cur_row, vert, static_cast<int>(out_h), dst);
#endif
  } else {
    for (std::uint32_t y = 0; y < out_h; ++y) std::memcpy(dst + y * out_row, src + y * stride, out_row);
  }
  if (mirror && !need_horizontal) flip_rows(dst, out_h, out_w, channels);
}

}  // namespace imgstore::detail
