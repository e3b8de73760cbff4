// General PNG decoding (every colour type, bit depth, tRNS, Adam7) with libpng, converted to
// L or RGB as Pillow 9.4 does. The header is parsed by hand first (read_png_info), so limits
// are checked before libpng allocates anything the size of the image.
//
// libpng reports errors by longjmp: every libpng call that can fail runs in run_png_decode,
// a C-style frame holding no object with a destructor; it returns a status and leaves the
// message in a char buffer, and only its C++ caller throws.
#include <png.h>

#include <algorithm>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <new>
#include <vector>

#include <fmt/format.h>

#include "codecs/decoders.hpp"
#include "codecs/pixel_convert.hpp"
#include "imgstore/error.hpp"

namespace imgstore::detail {

namespace {

constexpr std::uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         p[3];
}

// Valid (colour type, bit depth) pairs of the PNG specification; returns the channel count.
int png_channels(int color_type, int depth) {
  auto one_of = [depth](std::initializer_list<int> ok) {
    return std::find(ok.begin(), ok.end(), depth) != ok.end();
  };
  switch (color_type) {
    case 0: return one_of({1, 2, 4, 8, 16}) ? 1 : 0;
    case 2: return one_of({8, 16}) ? 3 : 0;
    case 3: return one_of({1, 2, 4, 8}) ? 1 : 0;
    case 4: return one_of({8, 16}) ? 2 : 0;
    case 6: return one_of({8, 16}) ? 4 : 0;
  }
  return 0;
}

struct PngReadContext {
  char message[256] = {};
  const std::uint8_t* data = nullptr;
  std::size_t size = 0;
  std::size_t pos = 0;
};

extern "C" void codecs_png_error(png_structp png, png_const_charp message) {
  auto* ctx = static_cast<PngReadContext*>(png_get_error_ptr(png));
  std::snprintf(ctx->message, sizeof ctx->message, "%s", message ? message : "error");
  png_longjmp(png, 1);
}

// Pillow opens files libpng only warns about (e.g. tRNS in an RGBA file): so do we.
extern "C" void codecs_png_warning(png_structp, png_const_charp) {}

extern "C" void codecs_png_read(png_structp png, png_bytep dest, png_size_t length) {
  auto* ctx = static_cast<PngReadContext*>(png_get_io_ptr(png));
  if (length > ctx->size - ctx->pos) png_error(png, "truncated file (unexpected end of data)");
  std::memcpy(dest, ctx->data + ctx->pos, length);
  ctx->pos += length;
}

// Owns a png_struct/png_info read pair.
class PngReader {
 public:
  explicit PngReader(PngReadContext* ctx) {
    png_ = png_create_read_struct(PNG_LIBPNG_VER_STRING, ctx, codecs_png_error,
                                  codecs_png_warning);
    if (png_) info_ = png_create_info_struct(png_);
    if (!png_ || !info_) {
      png_destroy_read_struct(&png_, info_ ? &info_ : nullptr, nullptr);
      throw std::bad_alloc();
    }
  }
  ~PngReader() { png_destroy_read_struct(&png_, &info_, nullptr); }
  PngReader(const PngReader&) = delete;
  PngReader& operator=(const PngReader&) = delete;
  png_structp png() const { return png_; }
  png_infop info() const { return info_; }

 private:
  png_structp png_ = nullptr;
  png_infop info_ = nullptr;
};

// Where the rows go: the row layout libpng produces (after the transforms set for `mode`) and
// the conversion to the output.
struct RowSink {
  SourceMode mode = SourceMode::L;
  std::uint32_t width = 0, height = 0, channels = 0;
  std::uint8_t* native = nullptr;  // whole image in `mode` (interlaced files), else one row
  std::uint8_t* out = nullptr;
  std::uint8_t* palette = nullptr;  // 256 RGB entries, filled from PLTE
};

// Plain C frame: nothing here has a destructor (see the file comment).
int run_png_decode(png_structp png, png_infop info, PngReadContext* ctx, std::uint32_t max_side,
                   const RowSink* sink) {
  if (setjmp(png_jmpbuf(png))) return 1;
  png_set_read_fn(png, ctx, codecs_png_read);
  png_set_crc_action(png, PNG_CRC_ERROR_QUIT, PNG_CRC_ERROR_QUIT);
  png_set_benign_errors(png, 1);
  png_set_user_limits(png, max_side, max_side);
  png_set_chunk_cache_max(png, 128);
  png_set_chunk_malloc_max(png, std::max<std::size_t>(ctx->size, 1024));
  // Ancillary chunks (gamma, ICC, text) change nothing in Pillow's pixels: skip them.
  png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, nullptr, -1);
  png_read_info(png, info);
  png_uint_32 w = 0, h = 0;
  int depth = 0, ctype = 0, interlace = 0;
  png_get_IHDR(png, info, &w, &h, &depth, &ctype, &interlace, nullptr, nullptr);
  if (w != sink->width || h != sink->height) {
    std::snprintf(ctx->message, sizeof ctx->message, "libpng reads a different IHDR");
    return 1;
  }
  if (ctype == PNG_COLOR_TYPE_PALETTE) {
    // Pillow's palette: a grey ramp (i, i, i) overwritten by the PLTE entries, so indices
    // past the last entry read grey, not libpng's black.
    for (int i = 0; i < 256; ++i) {
      std::memset(sink->palette + 3 * i, i, 3);
    }
    png_colorp entries = nullptr;
    int count = 0;
    png_get_PLTE(png, info, &entries, &count);  // libpng refuses a palette file without PLTE
    for (int i = 0; i < count && i < 256; ++i) {
      sink->palette[3 * i] = entries[i].red;
      sink->palette[3 * i + 1] = entries[i].green;
      sink->palette[3 * i + 2] = entries[i].blue;
    }
    if (depth < 8) png_set_packing(png);  // one index per byte
  } else if (depth < 8) {
    png_set_expand_gray_1_2_4_to_8(png);  // v * 255 / (2^depth - 1), as Pillow's L;2 / L;4
  } else if (depth == 16 && sink->mode != SourceMode::I16) {
    png_set_strip_16(png);  // the high byte, as Pillow's RGB;16B / RGBA;16B / LA;16B
  }
  const int passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const std::size_t row_bytes = std::size_t{w} * source_mode_bytes(sink->mode);
  if (png_get_rowbytes(png, info) != row_bytes) {
    std::snprintf(ctx->message, sizeof ctx->message, "unexpected row size %zu, expected %zu",
                  static_cast<std::size_t>(png_get_rowbytes(png, info)), row_bytes);
    return 1;
  }
  const std::size_t out_row = std::size_t{w} * sink->channels;
  if (passes > 1) {
    for (int pass = 0; pass < passes; ++pass) {
      for (png_uint_32 y = 0; y < h; ++y) png_read_row(png, sink->native + y * row_bytes, nullptr);
    }
    for (png_uint_32 y = 0; y < h; ++y) {
      convert_row(sink->mode, sink->native + y * row_bytes, w, sink->channels,
                  sink->out + y * out_row, sink->palette);
    }
  } else {
    for (png_uint_32 y = 0; y < h; ++y) {
      png_read_row(png, sink->native, nullptr);
      convert_row(sink->mode, sink->native, w, sink->channels, sink->out + y * out_row,
                  sink->palette);
    }
  }
  // The chunks after the image data up to IEND: their CRCs, and truncation, count too.
  png_read_end(png, nullptr);
  return 0;
}

SourceMode source_mode_of(const ImageInfo& info) {
  if (info.palette) return SourceMode::P;
  switch (info.channels) {
    case 1: return info.bit_depth == 16 ? SourceMode::I16 : SourceMode::L;
    case 2: return SourceMode::LA;
    case 3: return SourceMode::RGB;
    default: return SourceMode::RGBA;
  }
}

}  // namespace

ImageInfo read_png_info(const std::uint8_t* data, std::size_t size, const std::string& what) {
  if (size < 8 || std::memcmp(data, kPngSignature, 8) != 0) {
    throw DataError(fmt::format("{}: not a PNG file (bad signature)", what));
  }
  if (size < 33) throw DataError(fmt::format("{}: truncated PNG ({} bytes)", what, size));
  if (be32(data + 8) != 13 || std::memcmp(data + 12, "IHDR", 4) != 0) {
    throw DataError(fmt::format("{}: corrupt PNG: first chunk is not a 13-byte IHDR", what));
  }
  const std::uint8_t* ihdr = data + 16;
  ImageInfo info;
  info.kind = ImageKind::Png;
  info.width = be32(ihdr);
  info.height = be32(ihdr + 4);
  info.bit_depth = ihdr[8];
  const int color_type = ihdr[9];
  info.channels = static_cast<std::uint32_t>(png_channels(color_type, info.bit_depth));
  if (info.channels == 0) {
    throw DataError(fmt::format("{}: corrupt PNG: invalid colour type {} with bit depth {}", what,
                                color_type, info.bit_depth));
  }
  if (ihdr[10] != 0 || ihdr[11] != 0 || ihdr[12] > 1) {
    throw DataError(fmt::format("{}: corrupt PNG: unknown compression, filter or interlace "
                                "method in IHDR",
                                what));
  }
  info.palette = color_type == 3;
  info.interlaced = ihdr[12] == 1;
  // Walk the chunks up to the image data for tRNS (lengths only; libpng checks CRCs later).
  for (std::size_t pos = 33; pos + 8 <= size;) {
    const std::uint32_t length = be32(data + pos);
    const std::uint8_t* type = data + pos + 4;
    if (std::memcmp(type, "IDAT", 4) == 0 || std::memcmp(type, "IEND", 4) == 0) break;
    if (std::memcmp(type, "tRNS", 4) == 0) info.has_transparency = true;
    if (length > size - pos - 8) break;
    pos += std::size_t{length} + 12;
  }
  return info;
}

void decode_png_any(const std::uint8_t* data, std::size_t size, std::uint32_t channels,
                    const std::string& what, DecodedImage& out, const DecodeLimits& limits) {
  const ImageInfo info = read_png_info(data, size, what);
  check_decode_limits(info, limits, what);
  RowSink sink;
  sink.mode = source_mode_of(info);
  sink.width = info.width;
  sink.height = info.height;
  sink.channels = channels;

  PngReadContext ctx;
  ctx.data = data;
  ctx.size = size;
  PngReader reader(&ctx);
  std::uint8_t palette[256 * 3];
  sink.palette = palette;

  const std::size_t row_bytes = std::size_t{info.width} * source_mode_bytes(sink.mode);
  thread_local std::vector<std::uint8_t> native;
  native.resize(info.interlaced ? row_bytes * info.height : row_bytes);
  sink.native = native.data();
  out.shape = Shape{info.height, info.width, channels};
  out.pixels.resize(out.shape.bytes());
  sink.out = out.pixels.data();

  if (run_png_decode(reader.png(), reader.info(), &ctx, std::max(info.width, info.height),
                     &sink) != 0) {
    throw DataError(fmt::format("{}: corrupt PNG: {}", what, ctx.message));
  }
}

}  // namespace imgstore::detail
