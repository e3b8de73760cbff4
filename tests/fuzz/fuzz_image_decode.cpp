// The photo decoders (src/codecs/image_codec.hpp) on raw bytes: read_image_info, decode_image
// to L and RGB under a 4-Mpixel limit, and for JPEG a DCT-scaled crop and an unscaled gray one
// (libjpeg's region decode). Built twice:
// fuzz_jpeg_decode (seeds: JPEGs) and fuzz_image_png (seeds: PNGs of every kind); the code
// path is chosen by the magic bytes either way. Decoded shapes must match the header.
#include "codecs/image_codec.hpp"
#include "fuzz_common.hpp"

using namespace imgstore;
using namespace imgstore::detail;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  DecodeLimits limits;
  limits.max_pixels = std::uint64_t{1} << 22;
  limits.max_side = 8192;
  ImageInfo info;
  try {
    info = read_image_info(data, size, "'fuzz'", limits);
  } catch (const Error&) {
    return 0;
  }
  if (info.width == 0 || info.height == 0 || info.width > limits.max_side ||
      info.height > limits.max_side) {
    fuzz::fail("read_image_info accepted a size over its limits");
  }
  DecodedImage img;
  for (std::uint32_t channels : {1u, 3u}) {
    try {
      decode_image(data, size, channels, "'fuzz'", img, limits);
    } catch (const Error&) {
      continue;
    }
    if (img.shape != Shape{info.height, info.width, channels} ||
        img.pixels.size() != img.shape.bytes()) {
      fuzz::fail("decoded shape differs from the header");
    }
  }
  if (info.kind == ImageKind::Jpeg) {
    ScaledCrop sc;
    const CropRect crop{info.width / 4, info.height / 4, info.width - info.width / 4,
                        info.height - info.height / 4};
    try {
      decode_jpeg_crop(data, size, crop, 1 + crop.width / 5, 1 + crop.height / 5, 3, "'fuzz'", sc,
                       limits);
    } catch (const Error&) {
      return 0;
    }
    if (sc.image.pixels.size() != sc.image.shape.bytes() || sc.box[2] <= sc.box[0] ||
        sc.box[2] > static_cast<float>(sc.image.shape.width) + 1e-3f) {
      fuzz::fail("scaled crop inconsistent");
    }
    // At scale 1, to gray: the region decode crops columns and skips rows, and its result is
    // exactly the crop.
    try {
      decode_jpeg_crop(data, size, crop, crop.width, crop.height, 1, "'fuzz'", sc, limits);
    } catch (const Error&) {
      return 0;
    }
    if (sc.scale_denom != 1 || sc.image.shape != Shape{crop.height, crop.width, 1}) {
      fuzz::fail("unscaled crop is not the crop");
    }
  }
  return 0;
}
