// Format dispatch by magic bytes, decode limits, and Pillow's mode conversions.
#include "codecs/image_codec.hpp"

#include <cstring>

#include <fmt/format.h>

#include "codecs/decoders.hpp"
#include "codecs/pixel_convert.hpp"
#include "imgstore/error.hpp"

namespace imgstore::detail {

const char* image_kind_name(ImageKind kind) {
  switch (kind) {
    case ImageKind::Jpeg: return "JPEG";
    case ImageKind::Png: return "PNG";
    case ImageKind::Unknown: break;
  }
  return "unknown";
}

const char* jpeg_colorspace_name(JpegColorspace c) {
  switch (c) {
    case JpegColorspace::Gray: return "gray";
    case JpegColorspace::YCbCr: return "YCbCr";
    case JpegColorspace::Rgb: return "RGB";
    case JpegColorspace::Cmyk: return "CMYK";
    case JpegColorspace::Ycck: return "YCCK";
    case JpegColorspace::Unknown: break;
  }
  return "unknown";
}

ImageKind sniff_image(const std::uint8_t* data, std::size_t size) {
  static constexpr std::uint8_t kPng[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  // SOI followed by the start of any marker: what libjpeg itself requires.
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) return ImageKind::Jpeg;
  if (size >= 8 && std::memcmp(data, kPng, 8) == 0) return ImageKind::Png;
  return ImageKind::Unknown;
}

void check_decode_limits(const ImageInfo& info, const DecodeLimits& limits,
                         const std::string& what) {
  const char* kind = image_kind_name(info.kind);
  if (info.width == 0 || info.height == 0) {
    throw DataError(fmt::format("{}: {} header claims an empty image ({}x{})", what, kind,
                                info.width, info.height));
  }
  const std::uint64_t pixels = std::uint64_t{info.width} * info.height;
  if (info.width > limits.max_side || info.height > limits.max_side ||
      pixels > limits.max_pixels) {
    throw DataError(fmt::format(
        "{}: {} header claims {}x{} pixels ({} pixels), over the decode limit of {} pixels "
        "and {} per side (possible decompression bomb)",
        what, kind, info.width, info.height, pixels, limits.max_pixels, limits.max_side));
  }
}

namespace {

[[noreturn]] void throw_unknown(const std::uint8_t* data, std::size_t size,
                                const std::string& what) {
  if (size == 0) throw DataError(fmt::format("{}: empty file, not an image", what));
  throw DataError(fmt::format("{}: not a JPEG or PNG image (starts with {:02x})", what,
                              fmt::join(data, data + std::min<std::size_t>(size, 8), " ")));
}

}  // namespace

ImageInfo read_image_info(const std::uint8_t* data, std::size_t size, const std::string& what,
                          const DecodeLimits& limits) {
  ImageInfo info;
  switch (sniff_image(data, size)) {
    case ImageKind::Jpeg: info = read_jpeg_info(data, size, what); break;
    case ImageKind::Png: info = read_png_info(data, size, what); break;
    case ImageKind::Unknown: throw_unknown(data, size, what);
  }
  check_decode_limits(info, limits, what);
  return info;
}

void decode_image(const std::uint8_t* data, std::size_t size, std::uint32_t channels,
                  const std::string& what, DecodedImage& out, const DecodeLimits& limits) {
  if (channels != 1 && channels != 3) {
    throw UsageError(fmt::format("{}: cannot decode to {} channels (1 or 3)", what, channels));
  }
  switch (sniff_image(data, size)) {
    case ImageKind::Jpeg: return decode_jpeg(data, size, channels, what, out, limits);
    case ImageKind::Png: return decode_png_any(data, size, channels, what, out, limits);
    case ImageKind::Unknown: throw_unknown(data, size, what);
  }
}

bool can_store_untouched(const ImageInfo& info, ImageKind store_encoding,
                         std::uint32_t store_channels) {
  if (info.kind != store_encoding) return false;
  if (info.kind == ImageKind::Jpeg) {
    if (store_channels == 1) return info.colorspace == JpegColorspace::Gray;
    return store_channels == 3 &&
           (info.colorspace == JpegColorspace::YCbCr || info.colorspace == JpegColorspace::Rgb);
  }
  if (info.kind == ImageKind::Png) {
    return info.bit_depth == 8 && !info.palette && !info.has_transparency && !info.interlaced &&
           info.channels == store_channels && (store_channels == 1 || store_channels == 3);
  }
  return false;
}

// ---- Pillow's conversions ----

std::size_t source_mode_bytes(SourceMode mode) {
  switch (mode) {
    case SourceMode::L:
    case SourceMode::P: return 1;
    case SourceMode::LA:
    case SourceMode::I16: return 2;
    case SourceMode::RGB: return 3;
    case SourceMode::RGBA:
    case SourceMode::CMYK: return 4;
  }
  return 0;
}

namespace {

// Convert.c MULDIV255 and cmyk2rgb, on Pillow's (inverted) CMYK values.
inline std::uint8_t cmyk_channel(unsigned pil_c, int nk) {
  const int tmp = static_cast<int>(pil_c) * nk + 128;
  const int v = nk - (((tmp >> 8) + tmp) >> 8);
  return static_cast<std::uint8_t>(v <= 0 ? 0 : v < 256 ? v : 255);
}

inline void cmyk_to_rgb(const std::uint8_t* raw, std::uint8_t* rgb) {
  // libjpeg hands out Adobe-inverted values; Pillow's "CMYK;I" inverts them first, and
  // cmyk2rgb's nk = 255 - K then is the raw K byte.
  const int nk = raw[3];
  rgb[0] = cmyk_channel(255u - raw[0], nk);
  rgb[1] = cmyk_channel(255u - raw[1], nk);
  rgb[2] = cmyk_channel(255u - raw[2], nk);
}

inline std::uint8_t clip_i16(const std::uint8_t* be) {
  const unsigned v = (unsigned{be[0]} << 8) | be[1];
  return static_cast<std::uint8_t>(v >= 255 ? 255 : v);
}

}  // namespace

void convert_row(SourceMode mode, const std::uint8_t* in, std::size_t width,
                 std::uint32_t channels, std::uint8_t* out, const std::uint8_t* palette) {
  const bool rgb = channels == 3;
  switch (mode) {
    case SourceMode::L:
      if (!rgb) {
        std::memcpy(out, in, width);
      } else {
        for (std::size_t x = 0; x < width; ++x, out += 3) out[0] = out[1] = out[2] = in[x];
      }
      return;
    case SourceMode::LA:
      for (std::size_t x = 0; x < width; ++x, in += 2) {
        if (rgb) {
          out[0] = out[1] = out[2] = in[0];
          out += 3;
        } else {
          *out++ = in[0];
        }
      }
      return;
    case SourceMode::I16:
      for (std::size_t x = 0; x < width; ++x, in += 2) {
        const std::uint8_t v = clip_i16(in);
        if (rgb) {
          out[0] = out[1] = out[2] = v;
          out += 3;
        } else {
          *out++ = v;
        }
      }
      return;
    case SourceMode::RGB:
    case SourceMode::RGBA: {
      const std::size_t step = source_mode_bytes(mode);
      for (std::size_t x = 0; x < width; ++x, in += step) {
        if (rgb) {
          out[0] = in[0];
          out[1] = in[1];
          out[2] = in[2];
          out += 3;
        } else {
          *out++ = pil_luma(in[0], in[1], in[2]);
        }
      }
      return;
    }
    case SourceMode::P:
      for (std::size_t x = 0; x < width; ++x) {
        const std::uint8_t* c = palette + 3 * std::size_t{in[x]};
        if (rgb) {
          out[0] = c[0];
          out[1] = c[1];
          out[2] = c[2];
          out += 3;
        } else {
          *out++ = pil_luma(c[0], c[1], c[2]);
        }
      }
      return;
    case SourceMode::CMYK:
      for (std::size_t x = 0; x < width; ++x, in += 4) {
        std::uint8_t c[3];
        cmyk_to_rgb(in, c);
        if (rgb) {
          out[0] = c[0];
          out[1] = c[1];
          out[2] = c[2];
          out += 3;
        } else {
          *out++ = pil_luma(c[0], c[1], c[2]);
        }
      }
      return;
  }
}

void convert_rows(SourceMode mode, const std::uint8_t* in, std::size_t width, std::size_t height,
                  std::uint32_t channels, std::uint8_t* out) {
  const std::size_t in_row = width * source_mode_bytes(mode), out_row = width * channels;
  for (std::size_t y = 0; y < height; ++y) {
    convert_row(mode, in + y * in_row, width, channels, out + y * out_row, nullptr);
  }
}

}  // namespace imgstore::detail
