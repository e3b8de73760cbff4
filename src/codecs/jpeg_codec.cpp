// JPEG decode (full) and encode with TurboJPEG 2.1; crops decode through jpeg_region.cpp.
//
// Pixels match Pillow 9.4 (which decodes with the same libjpeg-turbo, accurate integer IDCT
// and fancy upsampling, both TurboJPEG's defaults too): YCbCr/RGB JPEGs are decoded by libjpeg
// straight to RGB, gray ones to gray (libjpeg's gray -> RGB replication equals Pillow's l2rgb),
// and RGB -> L and CMYK -> RGB are done by convert_row with Pillow's rules.
// TJFLAG_STOPONWARNING makes libjpeg's "corrupt data" and "premature end" warnings errors.
#include <turbojpeg.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include <fmt/format.h>

#include "codecs/decoders.hpp"
#include "codecs/pixel_convert.hpp"
#include "imgstore/error.hpp"

namespace imgstore::detail {

namespace {

// Corrupt data is an error; and at most 500 progressive scans (a scan-flood is a known
// denial-of-service input).
constexpr int kDecodeFlags = TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS;

struct TjDeleter {
  void operator()(void* handle) const { tjDestroy(handle); }
};
using TjHandle = std::unique_ptr<void, TjDeleter>;

// One decompressor and one compressor per thread: tjInit* allocates ~ tens of KB each time.
// After a failure TurboJPEG 2.1 leaves the handle in a state where the next, valid, header
// fails too ("Bogus Huffman table definition"): a failed handle is replaced.
TjHandle& decompressor_slot() {
  thread_local TjHandle handle;
  return handle;
}

tjhandle decompressor() {
  TjHandle& handle = decompressor_slot();
  if (!handle) handle.reset(tjInitDecompress());
  if (!handle) throw std::bad_alloc();
  return handle.get();
}

tjhandle compressor() {
  thread_local TjHandle handle(tjInitCompress());
  if (!handle) throw std::bad_alloc();
  return handle.get();
}

std::uint16_t be16(const std::uint8_t* p) { return static_cast<std::uint16_t>((p[0] << 8) | p[1]); }

// Walks the marker segments up to the first SOF: is it progressive (SOF2/6/10/14)?
bool is_progressive(const std::uint8_t* data, std::size_t size) {
  std::size_t pos = 2;
  while (pos + 4 <= size) {
    if (data[pos] != 0xFF) return false;
    const std::uint8_t marker = data[pos + 1];
    if (marker == 0xFF) {  // fill byte
      ++pos;
      continue;
    }
    if (marker >= 0xC0 && marker <= 0xCF && marker != 0xC4 && marker != 0xC8 && marker != 0xCC) {
      return marker == 0xC2 || marker == 0xC6 || marker == 0xCA || marker == 0xCE;
    }
    pos += 2 + std::size_t{be16(data + pos + 2)};
  }
  return false;
}

const char* subsampling_name(int tjsamp) {
  switch (tjsamp) {
    case TJSAMP_444: return "4:4:4";
    case TJSAMP_422: return "4:2:2";
    case TJSAMP_420: return "4:2:0";
    case TJSAMP_GRAY: return "gray";
    case TJSAMP_440: return "4:4:0";
    case TJSAMP_411: return "4:1:1";
  }
  return "unknown";
}

JpegColorspace colorspace_of(int tjcs) {
  switch (tjcs) {
    case TJCS_GRAY: return JpegColorspace::Gray;
    case TJCS_YCbCr: return JpegColorspace::YCbCr;
    case TJCS_RGB: return JpegColorspace::Rgb;
    case TJCS_CMYK: return JpegColorspace::Cmyk;
    case TJCS_YCCK: return JpegColorspace::Ycck;
  }
  return JpegColorspace::Unknown;
}

[[noreturn]] void throw_tj(tjhandle handle, const std::string& what, const char* doing) {
  std::string message =
      fmt::format("{}: corrupt JPEG: {} failed: {}", what, doing, tjGetErrorStr2(handle));
  if (handle == decompressor_slot().get()) decompressor_slot().reset();
  throw DataError(message);
}

// Decodes the whole image (header `info`, limits checked) into `out` as `channels`.
void decode_whole(const std::uint8_t* data, std::size_t size, const ImageInfo& info,
                  std::uint32_t channels, const std::string& what, DecodedImage& out) {
  const std::uint32_t w = info.width, h = info.height;
  out.shape = Shape{h, w, channels};
  out.pixels.resize(out.shape.bytes());
  tjhandle tj = decompressor();
  const JpegOutput plan = jpeg_output(info, channels);
  const int format = plan.mode == SourceMode::CMYK ? TJPF_CMYK
                     : plan.mode == SourceMode::L  ? TJPF_GRAY
                                                   : TJPF_RGB;
  thread_local std::vector<std::uint8_t> scratch;
  std::uint8_t* dest = out.pixels.data();
  const std::size_t pitch = std::size_t{w} * static_cast<std::size_t>(tjPixelSize[format]);
  if (!plan.direct) {
    scratch.resize(pitch * h);
    dest = scratch.data();
  }
  if (tjDecompress2(tj, data, static_cast<unsigned long>(size), dest, static_cast<int>(w),
                    static_cast<int>(pitch), static_cast<int>(h), format, kDecodeFlags) != 0) {
    throw_tj(tj, what, "decoding");
  }
  if (!plan.direct) convert_rows(plan.mode, dest, w, h, channels, out.pixels.data());
}

}  // namespace

ImageInfo read_jpeg_info(const std::uint8_t* data, std::size_t size, const std::string& what) {
  tjhandle tj = decompressor();
  int width = 0, height = 0, subsamp = -1, colorspace = -1;
  if (tjDecompressHeader3(tj, data, static_cast<unsigned long>(size), &width, &height, &subsamp,
                          &colorspace) != 0) {
    throw_tj(tj, what, "reading the header");
  }
  ImageInfo info;
  info.kind = ImageKind::Jpeg;
  info.width = static_cast<std::uint32_t>(width);
  info.height = static_cast<std::uint32_t>(height);
  info.colorspace = colorspace_of(colorspace);
  switch (info.colorspace) {
    case JpegColorspace::Gray: info.channels = 1; break;
    case JpegColorspace::YCbCr:
    case JpegColorspace::Rgb: info.channels = 3; break;
    case JpegColorspace::Cmyk:
    case JpegColorspace::Ycck: info.channels = 4; break;
    case JpegColorspace::Unknown:
      throw DataError(fmt::format("{}: unsupported JPEG colour space", what));
  }
  info.subsampling = subsampling_name(subsamp);
  info.progressive = is_progressive(data, size);
  return info;
}

JpegOutput jpeg_output(const ImageInfo& info, std::uint32_t channels) {
  if (info.colorspace == JpegColorspace::Cmyk || info.colorspace == JpegColorspace::Ycck) {
    return {SourceMode::CMYK, false};
  }
  if (info.colorspace == JpegColorspace::Gray && channels == 1) return {SourceMode::L, true};
  return {SourceMode::RGB, channels == 3};
}

void decode_jpeg(const std::uint8_t* data, std::size_t size, std::uint32_t channels,
                 const std::string& what, DecodedImage& out, const DecodeLimits& limits) {
  const ImageInfo info = read_jpeg_info(data, size, what);
  check_decode_limits(info, limits, what);
  decode_whole(data, size, info, channels, what, out);
}

int choose_jpeg_scale(std::uint32_t crop_w, std::uint32_t crop_h, std::uint32_t out_w,
                      std::uint32_t out_h) {
  for (int denom : {8, 4, 2}) {
    if (std::uint64_t{crop_w} >= std::uint64_t{out_w} * denom &&
        std::uint64_t{crop_h} >= std::uint64_t{out_h} * denom) {
      return denom;
    }
  }
  return 1;
}

void decode_jpeg_crop(const std::uint8_t* data, std::size_t size, const CropRect& crop,
                      std::uint32_t out_w, std::uint32_t out_h, std::uint32_t channels,
                      const std::string& what, ScaledCrop& out, const DecodeLimits& limits) {
  if (channels != 1 && channels != 3) {
    throw UsageError(fmt::format("{}: cannot decode to {} channels (1 or 3)", what, channels));
  }
  if (crop.width == 0 || crop.height == 0 || out_w == 0 || out_h == 0) {
    throw UsageError(fmt::format("{}: empty crop or output size", what));
  }
  const ImageInfo info = read_jpeg_info(data, size, what);
  check_decode_limits(info, limits, what);
  if (std::uint64_t{crop.x} + crop.width > info.width ||
      std::uint64_t{crop.y} + crop.height > info.height) {
    throw UsageError(fmt::format("{}: crop {}x{} at ({}, {}) exceeds the {}x{} image", what,
                                 crop.width, crop.height, crop.x, crop.y, info.width,
                                 info.height));
  }
  const int denom = choose_jpeg_scale(crop.width, crop.height, out_w, out_h);
  // The pixels of the scaled image that cover the crop; at scale 1 exactly the crop.
  const double d = denom;
  const double fx0 = crop.x / d, fy0 = crop.y / d;
  const double fx1 = (static_cast<double>(crop.x) + crop.width) / d;
  const double fy1 = (static_cast<double>(crop.y) + crop.height) / d;
  const std::uint32_t x0 = crop.x / denom, y0 = crop.y / denom;
  const std::uint32_t x1 = std::min(jpeg_scaled(info.width, denom), jpeg_scaled(crop.x + crop.width, denom));
  const std::uint32_t y1 = std::min(jpeg_scaled(info.height, denom), jpeg_scaled(crop.y + crop.height, denom));
  decode_jpeg_region(data, size, info, channels, denom, x0, y0, x1, y1, what, out.image);
  out.scale_denom = denom;
  out.box[0] = static_cast<float>(fx0 - x0);
  out.box[1] = static_cast<float>(fy0 - y0);
  out.box[2] = static_cast<float>(std::min<double>(fx1 - x0, x1 - x0));
  out.box[3] = static_cast<float>(std::min<double>(fy1 - y0, y1 - y0));
}

void encode_jpeg(const std::uint8_t* pixels, std::uint32_t width, std::uint32_t height,
                 std::uint32_t channels, int quality, std::vector<std::uint8_t>& out) {
  if (channels != 1 && channels != 3) {
    throw UsageError(fmt::format("cannot encode {} channels as JPEG (1 or 3)", channels));
  }
  if (quality < 1 || quality > 100) {
    throw UsageError(fmt::format("JPEG quality {} is not in 1..100", quality));
  }
  if (width == 0 || height == 0 || width > 65'500 || height > 65'500) {
    throw UsageError(fmt::format("cannot encode a {}x{} image as JPEG", width, height));
  }
  const int format = channels == 1 ? TJPF_GRAY : TJPF_RGB;
  const int subsamp = channels == 1 ? TJSAMP_GRAY : TJSAMP_420;
  tjhandle tj = compressor();
  // Compress into a per-thread buffer sized for the worst case, so TurboJPEG never
  // reallocates, then copy the (much smaller) result: sizing `out` itself for the worst case
  // zero-filled (and page-faulted) about w*h*1.5 bytes per image (imgstore-photo-convert-bench).
  thread_local std::vector<std::uint8_t> scratch;
  const unsigned long worst = tjBufSize(static_cast<int>(width), static_cast<int>(height), subsamp);
  if (scratch.size() < worst) scratch.resize(worst);
  if (scratch.size() > (std::size_t{64} << 20) && worst < scratch.size() / 4) {
    std::vector<std::uint8_t>(worst).swap(scratch);  // one huge image does not pin its buffer
  }
  unsigned char* buffer = scratch.data();
  unsigned long length = worst;
  if (tjCompress2(tj, pixels, static_cast<int>(width), static_cast<int>(width * channels),
                  static_cast<int>(height), format, &buffer, &length, subsamp, quality,
                  TJFLAG_NOREALLOC) != 0) {
    throw Error(fmt::format("JPEG encoding of a {}x{}x{} image failed: {}", height, width,
                            channels, tjGetErrorStr2(tj)));
  }
  out.assign(scratch.data(), scratch.data() + length);
}

}  // namespace imgstore::detail
