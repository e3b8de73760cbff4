// Decoding of photos of any size and kind (JPEG via TurboJPEG, PNG via libpng) into HWC uint8
// with exactly the pixels Pillow 9.4's `Image.open(f).convert("RGB")` / `.convert("L")` gives,
// plus the JPEG pieces the loader needs (DCT-scaled decode of a crop) and JPEG encoding.
//
// All input is untrusted: the header is read and checked against DecodeLimits before anything
// the size of the image is allocated; truncated or corrupt data (libjpeg "corrupt data"
// warnings included) is a DataError "<what>: <problem>", never a partly grey image.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "imgstore/image.hpp"

namespace imgstore::detail {

// What the bytes are, told by their magic bytes (never by the file name).
enum class ImageKind { Unknown, Jpeg, Png };
const char* image_kind_name(ImageKind kind);  // "JPEG", "PNG", "unknown"
ImageKind sniff_image(const std::uint8_t* data, std::size_t size);

// Pillow's Image.MAX_IMAGE_PIXELS. Pillow warns above it and raises DecompressionBombError
// above twice it; imgstore refuses above twice it too, so it opens every image Pillow opens.
inline constexpr std::uint64_t kPilMaxImagePixels = 89'478'485;

struct DecodeLimits {
  std::uint64_t max_pixels = 2 * kPilMaxImagePixels;  // refused when width*height is larger
  std::uint32_t max_side = 65'535;                    // refused when width or height is larger
};

enum class JpegColorspace { Gray, YCbCr, Rgb, Cmyk, Ycck, Unknown };
const char* jpeg_colorspace_name(JpegColorspace c);

struct ImageInfo {
  ImageKind kind = ImageKind::Unknown;
  std::uint32_t width = 0;
  std::uint32_t height = 0;
  std::uint32_t channels = 0;  // components in the file: JPEG 1/3/4; PNG 1..4 (palette: 1)
  // PNG only.
  int bit_depth = 8;
  bool palette = false;
  bool has_transparency = false;  // tRNS chunk
  bool interlaced = false;        // Adam7
  // JPEG only.
  JpegColorspace colorspace = JpegColorspace::Unknown;
  std::string subsampling;  // "4:4:4", "4:2:2", "4:2:0", "gray", "4:4:0", "4:1:1", "unknown"
  bool progressive = false;
};

// Reads only the header (no pixel data is decoded) and checks it against `limits`.
ImageInfo read_image_info(const std::uint8_t* data, std::size_t size, const std::string& what,
                          const DecodeLimits& limits = {});

// A decoded image, HWC uint8. Reused across calls (its vector keeps its capacity).
struct DecodedImage {
  Shape shape;
  std::vector<std::uint8_t> pixels;
};

// Decodes JPEG or PNG bytes to `channels` (1 = L, 3 = RGB) as Pillow's convert does
// (see pixel_convert.hpp for the exact rules). Throws DataError naming `what`.
void decode_image(const std::uint8_t* data, std::size_t size, std::uint32_t channels,
                  const std::string& what, DecodedImage& out, const DecodeLimits& limits = {});

// ---- JPEG for the loader ----

// A rectangle in source-image pixels.
struct CropRect {
  std::uint32_t x = 0, y = 0, width = 0, height = 0;
};

// The DCT scale denominator (1, 2, 4 or 8: decode at 1/denominator) that decodes the least
// while the crop still covers at least out_w x out_h pixels once scaled (so the resampler
// only ever shrinks). 1 if no smaller scale qualifies.
int choose_jpeg_scale(std::uint32_t crop_w, std::uint32_t crop_h, std::uint32_t out_w,
                      std::uint32_t out_h);

// The result of decode_jpeg_crop: the pixels of the scaled image that cover the crop, and
// where the crop lies in them (float, for resize()'s box).
struct ScaledCrop {
  DecodedImage image;
  int scale_denom = 1;  // decoded at 1/scale_denom
  float box[4] = {0, 0, 0, 0};  // x0, y0, x1, y1 of the crop in `image` coordinates
};

// Decodes the JPEG at the scale choose_jpeg_scale picks for `crop` -> out_w x out_h, and
// returns the covering pixels. At scale 1 the image is exactly the crop and box is
// (0, 0, crop.width, crop.height), so resize(box) then equals Pillow's crop().resize().
// Only the iMCU columns and the rows the crop needs are decoded (libjpeg's jpeg_crop_scanline
// and jpeg_skip_scanlines); rows below the crop are never read, so corrupt data there goes
// unnoticed (conversion decodes every image whole).
void decode_jpeg_crop(const std::uint8_t* data, std::size_t size, const CropRect& crop,
                      std::uint32_t out_w, std::uint32_t out_h, std::uint32_t channels,
                      const std::string& what, ScaledCrop& out, const DecodeLimits& limits = {});

// Encodes HWC pixels (1 = gray, 3 = RGB with 4:2:0 chroma subsampling, as Pillow's default)
// at `quality` 1..100 into `out` (cleared first).
void encode_jpeg(const std::uint8_t* pixels, std::uint32_t width, std::uint32_t height,
                 std::uint32_t channels, int quality, std::vector<std::uint8_t>& out);

// Whether source bytes described by `info` can be stored as they are in a store of
// `store_encoding` (Jpeg or Png) with `store_channels`, when nothing is resized: a JPEG whose
// components already are the store's channels (gray for 1, YCbCr/RGB for 3; never CMYK) in a
// JPEG store; an 8-bit, non-interlaced gray or RGB PNG without palette or tRNS in a PNG store.
bool can_store_untouched(const ImageInfo& info, ImageKind store_encoding,
                         std::uint32_t store_channels);

}  // namespace imgstore::detail
