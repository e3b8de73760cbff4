// PNG encode/decode with libpng's classic API.
//
// libpng reports errors by longjmp. To keep that sound in C++, every libpng call that can fail
// runs inside a small C-style function (run_encode, run_decode, run_header) whose frame holds no
// object with a destructor; the callbacks libpng calls hold none at the point they call
// png_error either. Those functions return a status and leave libpng's message in a plain char
// buffer, and only their C++ callers throw. The png_struct/png_info pair is owned by an RAII
// holder created outside the setjmp scope, so it is destroyed on every path.
#include "detail/png_codec.hpp"

#include "detail/png_fast.hpp"

#include <libdeflate.h>
#include <png.h>
#include <zlib.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cctype>
#include <cstddef>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>

#include <fmt/format.h>

#include "imgstore/error.hpp"

namespace imgstore::detail {

namespace {

constexpr std::uint8_t kSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

// Shared by the callbacks: where libpng's error message lands, and the memory stream.
struct PngContext {
  char message[256] = {};
  // Reading.
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
  std::size_t pos = 0;
  // Writing.
  std::vector<std::uint8_t>* out = nullptr;
};

extern "C" void on_png_error(png_structp png, png_const_charp message) {
  auto* ctx = static_cast<PngContext*>(png_get_error_ptr(png));
  if (ctx) std::snprintf(ctx->message, sizeof ctx->message, "%s", message ? message : "error");
  png_longjmp(png, 1);
}

extern "C" void on_png_warning(png_structp, png_const_charp) {
  // Warnings are about things libpng recovered from without changing pixels; the cases that do
  // matter (ancillary CRC errors, benign errors) are promoted to errors below.
}

extern "C" void on_png_read(png_structp png, png_bytep dest, png_size_t length) {
  auto* ctx = static_cast<PngContext*>(png_get_io_ptr(png));
  if (length > ctx->size - ctx->pos) png_error(png, "truncated file (unexpected end of data)");
  std::memcpy(dest, ctx->data + ctx->pos, length);
  ctx->pos += length;
}

extern "C" void on_png_write(png_structp png, png_bytep data, png_size_t length) {
  auto* ctx = static_cast<PngContext*>(png_get_io_ptr(png));
  bool ok = true;
  try {
    ctx->out->insert(ctx->out->end(), data, data + length);
  } catch (...) {
    ok = false;
  }
  // png_error only after the catch block has finished: no live exception object to skip.
  if (!ok) png_error(png, "out of memory while encoding");
}

extern "C" void on_png_flush(png_structp) {}

// Every encode or decode makes the same few allocations (png_struct, zlib's window, hash and
// pending buffers: ~150 KB for a write). Through malloc, freeing them shrinks the heap and the
// next image faults the pages back in (about a fifth of a 32x32 encode, measured). This
// per-thread cache keeps recently freed blocks and hands them back for requests of the same size.
class BlockCache {
 public:
  ~BlockCache() {
    for (std::size_t i = 0; i < count_; ++i) std::free(blocks_[i].ptr);
  }
  void* allocate(std::size_t size) noexcept {
    for (std::size_t i = count_; i-- > 0;) {
      if (blocks_[i].size == size) {
        void* p = blocks_[i].ptr;
        blocks_[i] = blocks_[--count_];
        return p;
      }
    }
    return std::malloc(size + kHeader);  // header keeps the size for free()
  }
  // `p` points at the header.
  void release(void* p, std::size_t size) noexcept {
    if (count_ == kMaxBlocks || size > kMaxBlockBytes) {
      std::free(p);
      return;
    }
    blocks_[count_++] = Block{p, size};
  }
  static constexpr std::size_t kHeader = alignof(std::max_align_t);

 private:
  static constexpr std::size_t kMaxBlocks = 24;
  static constexpr std::size_t kMaxBlockBytes = std::size_t{1} << 20;
  struct Block {
    void* ptr;
    std::size_t size;
  };
  Block blocks_[kMaxBlocks] = {};
  std::size_t count_ = 0;
};

BlockCache& block_cache() {
  thread_local BlockCache cache;
  return cache;
}

extern "C" png_voidp on_png_malloc(png_structp, png_alloc_size_t size) {
  auto* block = static_cast<unsigned char*>(block_cache().allocate(size));
  if (!block) return nullptr;  // libpng reports out of memory
  std::memcpy(block, &size, sizeof size);
  return block + BlockCache::kHeader;
}

extern "C" void on_png_free(png_structp, png_voidp ptr) {
  if (!ptr) return;
  auto* block = static_cast<unsigned char*>(ptr) - BlockCache::kHeader;
  std::size_t size = 0;
  std::memcpy(&size, block, sizeof size);
  block_cache().release(block, size);
}

// Owns a png_struct and its png_info; destroys them on every path.
class PngHandle {
 public:
  enum class Mode { Read, Write };

  PngHandle(Mode mode, PngContext* ctx) : mode_(mode) {
    png_ = mode == Mode::Read
               ? png_create_read_struct_2(PNG_LIBPNG_VER_STRING, ctx, on_png_error,
                                          on_png_warning, nullptr, on_png_malloc, on_png_free)
               : png_create_write_struct_2(PNG_LIBPNG_VER_STRING, ctx, on_png_error,
                                           on_png_warning, nullptr, on_png_malloc, on_png_free);
    if (png_) info_ = png_create_info_struct(png_);
    if (!png_ || !info_) {
      destroy();
      throw std::bad_alloc();
    }
  }
  ~PngHandle() { destroy(); }
  PngHandle(const PngHandle&) = delete;
  PngHandle& operator=(const PngHandle&) = delete;

  png_structp png() const { return png_; }
  png_infop info() const { return info_; }

 private:
  void destroy() noexcept {
    if (!png_) return;
    if (mode_ == Mode::Read) {
      png_destroy_read_struct(&png_, info_ ? &info_ : nullptr, nullptr);
    } else {
      png_destroy_write_struct(&png_, info_ ? &info_ : nullptr);
    }
    png_ = nullptr;
    info_ = nullptr;
  }

  Mode mode_;
  png_structp png_ = nullptr;
  png_infop info_ = nullptr;
};

int color_type_for(std::uint32_t channels) {
  switch (channels) {
    case 1: return PNG_COLOR_TYPE_GRAY;
    case 2: return PNG_COLOR_TYPE_GRAY_ALPHA;
    case 3: return PNG_COLOR_TYPE_RGB;
    case 4: return PNG_COLOR_TYPE_RGBA;
  }
  return -1;
}

const char* color_type_name(int color_type) {
  switch (color_type) {
    case PNG_COLOR_TYPE_GRAY: return "gray";
    case PNG_COLOR_TYPE_GRAY_ALPHA: return "gray+alpha";
    case PNG_COLOR_TYPE_RGB: return "RGB";
    case PNG_COLOR_TYPE_RGBA: return "RGBA";
    case PNG_COLOR_TYPE_PALETTE: return "palette";
  }
  return "unknown colour type";
}

// ---- the setjmp scopes: plain C style, nothing with a destructor ----

// The cost libpng's adaptive filtering gives a filtered byte, and its parts for choose_filter.
namespace filter_cost {

inline unsigned cost(unsigned v) {
  v &= 0xffu;
  return v < 128 ? v : 256 - v;
}

// Adds the five filters' costs of bytes [from, n) to sums[0..4] (None, Sub, Up, Avg, Paeth).
void add_scalar(const std::uint8_t* row, const std::uint8_t* prev, std::size_t from,
                std::size_t n, std::size_t bpp, unsigned* sums) {
  for (std::size_t i = from; i < n; ++i) {
    const int x = row[i], b = prev[i];
    const int a = i >= bpp ? row[i - bpp] : 0, c = i >= bpp ? prev[i - bpp] : 0;
    sums[0] += cost(static_cast<unsigned>(x));
    sums[1] += cost(static_cast<unsigned>(x - a));
    sums[2] += cost(static_cast<unsigned>(x - b));
    sums[3] += cost(static_cast<unsigned>(x - (a + b) / 2));
    sums[4] += cost(static_cast<unsigned>(x - paeth_predictor(a, b, c)));
  }
}

#if defined(__SSE2__)
// |signed byte| of each lane kept, as the unsigned byte min(d, 256 - d); summed in 64-bit
// halves.
inline __m128i cost_sums(__m128i d, __m128i keep) {
  const __m128i negated = _mm_sub_epi8(_mm_setzero_si128(), d);
  return _mm_sad_epu8(_mm_and_si128(_mm_min_epu8(d, negated), keep), _mm_setzero_si128());
}

inline __m128i abs_epi16(__m128i v) {
  const __m128i sign = _mm_srai_epi16(v, 15);
  return _mm_sub_epi16(_mm_xor_si128(v, sign), sign);
}

// Paeth predictor of 8 pixels' bytes widened to 16 bits (as in paeth_predictor).
inline __m128i paeth_epi16(__m128i a, __m128i b, __m128i c) {
  const __m128i p = _mm_sub_epi16(b, c), q = _mm_sub_epi16(a, c);
  const __m128i pa = abs_epi16(p), pb = abs_epi16(q), pc = abs_epi16(_mm_add_epi16(p, q));
  // a where pa <= pb and pa <= pc; else b where pb <= pc; else c.
  const __m128i take_a = _mm_andnot_si128(_mm_or_si128(_mm_cmpgt_epi16(pa, pb),
                                                       _mm_cmpgt_epi16(pa, pc)),
                                          _mm_set1_epi16(-1));
  const __m128i take_b = _mm_andnot_si128(_mm_cmpgt_epi16(pb, pc), _mm_set1_epi16(-1));
  const __m128i b_or_c = _mm_or_si128(_mm_and_si128(take_b, b), _mm_andnot_si128(take_b, c));
  return _mm_or_si128(_mm_and_si128(take_a, a), _mm_andnot_si128(take_a, b_or_c));
}
#endif

}  // namespace filter_cost

// The filter libpng's default adaptive heuristic would pick for `row` (png_write_find_filter
// in pngwutil.c): the one whose output has the smallest sum of |byte as signed|, the earliest
// on ties, among None, Sub, Up, Average, Paeth. libpng computes all five filtered rows with
// early exits and buffer swaps, which costs about a third of a small image's encode time; this
// pass only sums (16 bytes at a time with SSE2), and libpng then applies the single chosen
// filter. The sums, and so the output, are identical.
int choose_filter(const std::uint8_t* row, const std::uint8_t* prev, std::size_t n,
                  std::size_t bpp) {
  unsigned sums[5] = {0, 0, 0, 0, 0};
  std::size_t i = 0;
#if defined(__SSE2__)
  // Vectors start at bpp, so left (a) and up-left (c) are plain loads; the first bpp bytes
  // go through the scalar loop, and so do rows too short for one vector.
  filter_cost::add_scalar(row, prev, 0, std::min(bpp, n), bpp, sums);
  i = std::min(bpp, n);
  __m128i acc[5] = {};
  const __m128i zero = _mm_setzero_si128(), low_bit = _mm_set1_epi8(1);
  const auto load = [](const std::uint8_t* p) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  };
  // Adds the costs of the 16 bytes at `at`, of which only the lanes set in `keep` count.
  const auto add16 = [&](std::size_t at, __m128i keep) {
    const __m128i x = load(row + at), a = load(row + at - bpp), b = load(prev + at),
                  c = load(prev + at - bpp);
    // floor((a + b) / 2): _mm_avg_epu8 rounds up, so take the low bit of a ^ b back off.
    const __m128i avg =
        _mm_sub_epi8(_mm_avg_epu8(a, b), _mm_and_si128(_mm_xor_si128(a, b), low_bit));
    const __m128i paeth = _mm_packus_epi16(
        filter_cost::paeth_epi16(_mm_unpacklo_epi8(a, zero), _mm_unpacklo_epi8(b, zero),
                                 _mm_unpacklo_epi8(c, zero)),
        filter_cost::paeth_epi16(_mm_unpackhi_epi8(a, zero), _mm_unpackhi_epi8(b, zero),
                                 _mm_unpackhi_epi8(c, zero)));
    const __m128i filtered[5] = {x, _mm_sub_epi8(x, a), _mm_sub_epi8(x, b),
                                 _mm_sub_epi8(x, avg), _mm_sub_epi8(x, paeth)};
    for (int f = 0; f < 5; ++f) {
      acc[f] = _mm_add_epi64(acc[f], filter_cost::cost_sums(filtered[f], keep));
    }
  };
  const __m128i all = _mm_set1_epi8(-1);
  for (; i + 16 <= n; i += 16) add16(i, all);
  // The tail: one more vector ending at n, counting only the lanes not counted yet.
  if (i < n && n >= bpp + 16) {
    alignas(16) static constexpr std::uint8_t kKeepLast[32] = {
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    add16(n - 16, load(kKeepLast + (n - i)));
    i = n;
  }
  for (int f = 0; f < 5; ++f) {
    sums[f] += static_cast<unsigned>(_mm_cvtsi128_si32(acc[f]) +
                                     _mm_cvtsi128_si32(_mm_srli_si128(acc[f], 8)));
  }
#endif
  filter_cost::add_scalar(row, prev, i, n, bpp, sums);
  int best = PNG_FILTER_NONE;
  unsigned mins = sums[0];
  if (sums[1] < mins) { mins = sums[1]; best = PNG_FILTER_SUB; }
  if (sums[2] < mins) { mins = sums[2]; best = PNG_FILTER_UP; }
  if (sums[3] < mins) { mins = sums[3]; best = PNG_FILTER_AVG; }
  if (sums[4] < mins) best = PNG_FILTER_PAETH;
  return best;
}

int run_encode(png_structp png, png_infop info, const std::uint8_t* pixels, std::uint32_t height,
               std::uint32_t width, int color_type, std::size_t stride, std::size_t bpp,
               int level) {
  if (setjmp(png_jmpbuf(png))) return 1;
  png_set_compression_level(png, level);
  png_set_IHDR(png, info, width, height, 8, color_type, PNG_INTERLACE_NONE,
               PNG_COMPRESSION_TYPE_DEFAULT, PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  // Row 0 goes through libpng's own choice, so it sets up every filter's buffers (and the
  // zlib strategy) exactly as by default; 1-pixel-wide or -high images are left to it entirely.
  png_write_row(png, pixels);
  const bool choose = height > 1 && width > 1;
  for (std::uint32_t y = 1; y < height; ++y) {
    const std::uint8_t* row = pixels + y * stride;
    if (choose) png_set_filter(png, PNG_FILTER_TYPE_BASE, choose_filter(row, row - stride, stride, bpp));
    png_write_row(png, row);
  }
  png_write_end(png, nullptr);
  return 0;
}

// Shared read set-up: memory source, strict CRC and benign-error handling, limits.
void configure_reader(png_structp png, PngContext* ctx, std::uint32_t max_width,
                      std::uint32_t max_height) {
  png_set_read_fn(png, ctx, on_png_read);
  // A bad CRC in any chunk, critical or ancillary, is an error (not a warning and a skip).
  png_set_crc_action(png, PNG_CRC_ERROR_QUIT, PNG_CRC_ERROR_QUIT);
  // "Benign" errors such as extra compressed data are errors for untrusted input.
  png_set_benign_errors(png, 0);
  png_set_user_limits(png, max_width, max_height);
  png_set_chunk_cache_max(png, 64);
  // No chunk can be larger than the whole input; never let a declared length allocate more.
  png_set_chunk_malloc_max(png, std::max<std::size_t>(ctx->size, 1024));
  // Ancillary chunks carry nothing we use: skip them (their CRCs are still checked).
  png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, nullptr, -1);
}

int run_header(png_structp png, png_infop info, PngContext* ctx, png_uint_32* width,
               png_uint_32* height, int* bit_depth, int* color_type) {
  if (setjmp(png_jmpbuf(png))) return 1;
  configure_reader(png, ctx, PNG_USER_WIDTH_MAX, PNG_USER_HEIGHT_MAX);
  png_read_info(png, info);
  png_get_IHDR(png, info, width, height, bit_depth, color_type, nullptr, nullptr, nullptr);
  return 0;
}

// Checks the header against `expected` (2 = mismatch, message in ctx) before reading any rows
// straight into `out`.
int run_decode(png_structp png, png_infop info, PngContext* ctx, std::uint32_t height,
               std::uint32_t width, int color_type, std::size_t stride, std::uint8_t* out) {
  if (setjmp(png_jmpbuf(png))) return 1;
  configure_reader(png, ctx, width, height);
  png_read_info(png, info);
  png_uint_32 w = 0, h = 0;
  int depth = 0, ctype = 0;
  png_get_IHDR(png, info, &w, &h, &depth, &ctype, nullptr, nullptr, nullptr);
  if (w != width || h != height || depth != 8 || ctype != color_type) {
    std::snprintf(ctx->message, sizeof ctx->message, "PNG is %ux%u %d-bit %s", unsigned(h),
                  unsigned(w), depth, color_type_name(ctype));
    return 2;
  }
  // Interlaced files need every pass over the same rows; libpng combines them in place.
  const int passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  if (png_get_rowbytes(png, info) != stride) {
    std::snprintf(ctx->message, sizeof ctx->message, "PNG rows are %zu bytes, expected %zu",
                  static_cast<std::size_t>(png_get_rowbytes(png, info)), stride);
    return 2;
  }
  for (int pass = 0; pass < passes; ++pass) {
    for (std::uint32_t y = 0; y < height; ++y) png_read_row(png, out + y * stride, nullptr);
  }
  // Reads the chunks after the image data up to IEND: their CRCs, and truncation, count too.
  png_read_end(png, nullptr);
  return 0;
}

// Cheap look at the IHDR bytes, before libpng, so a wrong-shape file gets a clear message.
// Returns false if the bytes do not start like a PNG (libpng then produces the message).
bool peek_ihdr(const std::uint8_t* data, std::size_t size, png_uint_32* width,
               png_uint_32* height, int* bit_depth, int* color_type) {
  if (size < 33 || std::memcmp(data, kSignature, 8) != 0 || std::memcmp(data + 12, "IHDR", 4) != 0)
    return false;
  auto be32 = [](const std::uint8_t* p) {
    return (png_uint_32{p[0]} << 24) | (png_uint_32{p[1]} << 16) | (png_uint_32{p[2]} << 8) | p[3];
  };
  *width = be32(data + 16);
  *height = be32(data + 20);
  *bit_depth = data[24];
  *color_type = data[25];
  return true;
}

// After libpng failed: the first chunk whose CRC does not match, if any. libpng inflates IDAT
// data before it reaches the chunk's CRC, so a flipped byte often surfaces as a zlib error;
// naming the bad CRC says what actually happened. Only runs on the error path.
std::string find_bad_crc(const std::uint8_t* data, std::size_t size) {
  std::size_t pos = 8;
  while (pos + 12 <= size) {
    const std::uint32_t length = (std::uint32_t{data[pos]} << 24) |
                                 (std::uint32_t{data[pos + 1]} << 16) |
                                 (std::uint32_t{data[pos + 2]} << 8) | data[pos + 3];
    if (length > size - pos - 12) break;
    const std::uint8_t* stored = data + pos + 8 + length;
    const std::uint32_t expected = (std::uint32_t{stored[0]} << 24) |
                                   (std::uint32_t{stored[1]} << 16) |
                                   (std::uint32_t{stored[2]} << 8) | stored[3];
    const auto actual = static_cast<std::uint32_t>(crc32(0, data + pos + 4, length + 4));
    if (actual != expected) {
      std::string name(reinterpret_cast<const char*>(data + pos + 4), 4);
      for (char& c : name) {
        if (!std::isalpha(static_cast<unsigned char>(c))) c = '?';
      }
      return name;
    }
    pos += 12 + length;
  }
  return {};
}

[[noreturn]] void throw_corrupt(const std::uint8_t* data, std::size_t size, const char* message,
                                const std::string& what) {
  const std::string chunk = find_bad_crc(data, size);
  if (!chunk.empty()) {
    throw DataError(fmt::format("{}: corrupt PNG: CRC error in {} (libpng: {})", what, chunk,
                                message));
  }
  throw DataError(fmt::format("{}: corrupt PNG: {}", what, message));
}

}  // namespace

namespace {

// Throws UsageError unless `shape` and `level` can be written as PNG; returns the colour type.
int check_encode_request(const Shape& shape, int level) {
  const int color_type = color_type_for(shape.channels);
  if (color_type < 0 || shape.height == 0 || shape.width == 0 ||
      shape.width > PNG_USER_WIDTH_MAX || shape.height > PNG_USER_HEIGHT_MAX) {
    throw UsageError(fmt::format("cannot encode an image of shape {} as PNG", to_string(shape)));
  }
  if (level < 0 || level > 9) throw UsageError(fmt::format("PNG level {} is not in 0..9", level));
  return color_type;
}

// Writes `filter` (a PNG_FILTER_* flag) applied to `row` as the PNG filter type byte and the
// filtered bytes at `out` (1 + n bytes).
void apply_filter(int filter, const std::uint8_t* row, const std::uint8_t* prev, std::size_t n,
                  std::size_t bpp, std::uint8_t* out) {
  std::uint8_t* f = out + 1;
  auto left = [&](std::size_t i) -> int { return i >= bpp ? row[i - bpp] : 0; };
  auto up_left = [&](std::size_t i) -> int { return i >= bpp ? prev[i - bpp] : 0; };
  switch (filter) {
    case PNG_FILTER_SUB:
      out[0] = 1;
      for (std::size_t i = 0; i < n; ++i) f[i] = static_cast<std::uint8_t>(row[i] - left(i));
      return;
    case PNG_FILTER_UP:
      out[0] = 2;
      for (std::size_t i = 0; i < n; ++i) f[i] = static_cast<std::uint8_t>(row[i] - prev[i]);
      return;
    case PNG_FILTER_AVG:
      out[0] = 3;
      for (std::size_t i = 0; i < n; ++i) {
        f[i] = static_cast<std::uint8_t>(row[i] - ((left(i) + prev[i]) >> 1));
      }
      return;
    case PNG_FILTER_PAETH:
      out[0] = 4;
      for (std::size_t i = 0; i < n; ++i) {
        f[i] = static_cast<std::uint8_t>(row[i] - paeth_predictor(left(i), prev[i], up_left(i)));
      }
      return;
    default:
      out[0] = 0;
      std::memcpy(f, row, n);
  }
}

void put_u32(std::uint8_t* p, std::uint32_t v) {
  p[0] = static_cast<std::uint8_t>(v >> 24);
  p[1] = static_cast<std::uint8_t>(v >> 16);
  p[2] = static_cast<std::uint8_t>(v >> 8);
  p[3] = static_cast<std::uint8_t>(v);
}

// Completes the chunk whose 4-byte length field is at `chunk` and whose type and `length`
// data bytes follow: writes the length and the CRC over type and data; returns its end.
std::uint8_t* finish_chunk(std::uint8_t* chunk, std::uint32_t length) {
  put_u32(chunk, length);
  const uLong crc = crc32(0L, chunk + 4, static_cast<uInt>(length + 4));
  put_u32(chunk + 8 + length, static_cast<std::uint32_t>(crc));
  return chunk + 12 + length;
}

struct CompressorDeleter {
  void operator()(libdeflate_compressor* c) const noexcept { libdeflate_free_compressor(c); }
};

// This thread's libdeflate compressor for `level` (its set-up allocates several hundred KiB).
libdeflate_compressor* thread_compressor(int level) {
  thread_local std::unique_ptr<libdeflate_compressor, CompressorDeleter> compressors[10];
  auto& c = compressors[level];
  if (!c) c.reset(libdeflate_alloc_compressor(level));
  if (!c) throw std::bad_alloc();
  return c.get();
}

}  // namespace

// Filters every row as libpng's default adaptive filtering would (choose_filter), then
// compresses the whole filtered image with libdeflate in one call into a single IDAT: about
// 1.6x faster than libpng's zlib stream at the same level, and a PNG every decoder reads.
void encode_png(const std::uint8_t* pixels, const Shape& shape, int level,
                std::vector<std::uint8_t>& out) {
  const int color_type = check_encode_request(shape, level);
  const std::size_t stride = std::size_t{shape.width} * shape.channels, bpp = shape.channels;
  thread_local std::vector<std::uint8_t> filtered;
  filtered.resize(shape.height * (stride + 1));
  const bool choose = shape.height > 1 && shape.width > 1;
  for (std::uint32_t y = 0; y < shape.height; ++y) {
    const std::uint8_t* row = pixels + y * stride;
    const std::uint8_t* prev = y ? row - stride : zero_row(stride);
    // 1-pixel-wide or -high images: no filter (libpng weighs a subset of filters for them;
    // any filter is valid PNG).
    const int filter = choose ? choose_filter(row, prev, stride, bpp) : PNG_FILTER_NONE;
    apply_filter(filter, row, prev, stride, bpp, filtered.data() + y * (stride + 1));
  }
  libdeflate_compressor* compressor = thread_compressor(level);
  const std::size_t bound = libdeflate_zlib_compress_bound(compressor, filtered.size());
  out.resize(8 + 25 + 12 + bound + 12);
  std::uint8_t* p = out.data();
  std::memcpy(p, kSignature, 8);
  std::uint8_t* chunk = p + 8;
  std::memcpy(chunk + 4, "IHDR", 4);
  put_u32(chunk + 8, shape.width);
  put_u32(chunk + 12, shape.height);
  const std::uint8_t ihdr_rest[5] = {8, static_cast<std::uint8_t>(color_type), 0, 0, 0};
  std::memcpy(chunk + 16, ihdr_rest, 5);
  chunk = finish_chunk(chunk, 13);
  std::memcpy(chunk + 4, "IDAT", 4);
  const std::size_t packed =
      libdeflate_zlib_compress(compressor, filtered.data(), filtered.size(), chunk + 8, bound);
  if (packed == 0) {
    throw Error(fmt::format("PNG encoding of a {} image failed: libdeflate found no room",
                            to_string(shape)));
  }
  chunk = finish_chunk(chunk, static_cast<std::uint32_t>(packed));
  std::memcpy(chunk + 4, "IEND", 4);
  chunk = finish_chunk(chunk, 0);
  out.resize(static_cast<std::size_t>(chunk - out.data()));
}

void encode_png_with_libpng(const std::uint8_t* pixels, const Shape& shape, int level,
                            std::vector<std::uint8_t>& out) {
  const int color_type = check_encode_request(shape, level);
  out.clear();
  // Room for the usual case up front, so the write callback rarely grows the vector.
  out.reserve(shape.bytes() + shape.height + 1024);
  PngContext ctx;
  ctx.out = &out;
  PngHandle handle(PngHandle::Mode::Write, &ctx);
  png_set_write_fn(handle.png(), &ctx, on_png_write, on_png_flush);
  if (run_encode(handle.png(), handle.info(), pixels, shape.height, shape.width, color_type,
                 std::size_t{shape.width} * shape.channels, shape.channels, level) != 0) {
    if (std::strstr(ctx.message, "out of memory")) throw std::bad_alloc();
    throw Error(fmt::format("PNG encoding of a {} image failed: {}", to_string(shape),
                            ctx.message));
  }
}

namespace {

// The shape and the IHDR checks both decoders share; throws on a mismatch.
void check_decode_request(const std::uint8_t* data, std::size_t size, const Shape& expected,
                          const std::string& what) {
  const int color_type = color_type_for(expected.channels);
  if (color_type < 0 || expected.height == 0 || expected.width == 0) {
    throw UsageError(fmt::format("{}: cannot decode into shape {}", what, to_string(expected)));
  }
  png_uint_32 w = 0, h = 0;
  int depth = 0, ctype = 0;
  if (peek_ihdr(data, size, &w, &h, &depth, &ctype) &&
      (w != expected.width || h != expected.height || depth != 8 || ctype != color_type)) {
    throw DataError(fmt::format("{}: PNG is {}x{} {}-bit {}, expected {} (8-bit {})", what, h, w,
                                depth, color_type_name(ctype), to_string(expected),
                                color_type_name(color_type)));
  }
}

void decode_checked_with_libpng(const std::uint8_t* data, std::size_t size,
                                const Shape& expected, std::uint8_t* out,
                                const std::string& what) {
  const int color_type = color_type_for(expected.channels);
  PngContext ctx;
  ctx.data = data;
  ctx.size = size;
  PngHandle handle(PngHandle::Mode::Read, &ctx);
  const std::size_t stride = std::size_t{expected.width} * expected.channels;
  const int rc = run_decode(handle.png(), handle.info(), &ctx, expected.height, expected.width,
                            color_type, stride, out);
  if (rc == 2) {
    throw DataError(fmt::format("{}: {}, expected {} (8-bit {})", what, ctx.message,
                                to_string(expected), color_type_name(color_type)));
  }
  if (rc != 0) throw_corrupt(data, size, ctx.message, what);
  if (ctx.pos != size) {
    throw DataError(fmt::format("{}: corrupt PNG: {} bytes of trailing data after IEND", what,
                                size - ctx.pos));
  }
}

// IMGSTORE_PNG_CROSSCHECK=1 (a test-suite mode): every image the lean path decodes is decoded
// by libpng too, and any difference is an error. Running the tests so shows the lean path is
// bit-exact on every store they write.
bool crosscheck_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("IMGSTORE_PNG_CROSSCHECK");
    return v != nullptr && *v != '\0' && std::strcmp(v, "0") != 0;
  }();
  return enabled;
}

void crosscheck_with_libpng(const std::uint8_t* data, std::size_t size, const Shape& expected,
                            const std::uint8_t* fast, const std::string& what) {
  std::vector<std::uint8_t> reference(expected.bytes());
  try {
    decode_checked_with_libpng(data, size, expected, reference.data(), what);
  } catch (const DataError& e) {
    throw Error(fmt::format("{}: the lean PNG path accepted what libpng rejects ({})", what,
                            e.what()));
  }
  if (!std::equal(reference.begin(), reference.end(), fast)) {
    throw Error(fmt::format("{}: the lean PNG path and libpng decode different pixels", what));
  }
}

}  // namespace

void decode_png(const std::uint8_t* data, std::size_t size, const Shape& expected,
                std::uint8_t* out, const std::string& what) {
  check_decode_request(data, size, expected, what);
  // The lean path takes the files imgstore writes; everything else, and every error, is
  // libpng's (so the messages stay libpng's).
  if (decode_png_fast(data, size, expected, out)) {
    if (crosscheck_enabled()) crosscheck_with_libpng(data, size, expected, out, what);
    return;
  }
  decode_checked_with_libpng(data, size, expected, out, what);
}

void decode_png_with_libpng(const std::uint8_t* data, std::size_t size, const Shape& expected,
                            std::uint8_t* out, const std::string& what) {
  check_decode_request(data, size, expected, what);
  decode_checked_with_libpng(data, size, expected, out, what);
}

Shape png_shape(const std::uint8_t* data, std::size_t size, const std::string& what) {
  PngContext ctx;
  ctx.data = data;
  ctx.size = size;
  PngHandle handle(PngHandle::Mode::Read, &ctx);
  png_uint_32 w = 0, h = 0;
  int depth = 0, ctype = 0;
  if (run_header(handle.png(), handle.info(), &ctx, &w, &h, &depth, &ctype) != 0) {
    throw_corrupt(data, size, ctx.message, what);
  }
  std::uint32_t channels = 0;
  switch (ctype) {
    case PNG_COLOR_TYPE_GRAY: channels = 1; break;
    case PNG_COLOR_TYPE_GRAY_ALPHA: channels = 2; break;
    case PNG_COLOR_TYPE_RGB: channels = 3; break;
    case PNG_COLOR_TYPE_RGBA: channels = 4; break;
    default:
      throw DataError(fmt::format("{}: PNG colour type {} is not supported (gray, gray+alpha, RGB "
                                  "or RGBA only)", what, color_type_name(ctype)));
  }
  if (depth != 8) {
    throw DataError(fmt::format("{}: PNG is {}-bit; only 8-bit PNGs are supported", what, depth));
  }
  return Shape{h, w, channels};
}

}  // namespace imgstore::detail
