// decode_jpeg_region (libjpeg's cropped and skipped decode) against TurboJPEG's full decode at
// the same DCT scale, on real photos in every chroma subsampling, baseline and progressive.
#include <doctest/doctest.h>
#include <turbojpeg.h>

#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "codecs/decoders.hpp"
#include "codecs/image_codec.hpp"
#include "imgstore/error.hpp"
#include "test_support.hpp"

using namespace imgstore;
using namespace imgstore::detail;

namespace {

struct Jpeg {
  std::string name;
  std::vector<std::uint8_t> bytes;
};

// A real photo (skimage's astronaut), cut to an odd size so the last MCUs are partial, encoded
// with TurboJPEG in `subsamp` (TJSAMP_GRAY from the gray version), optionally progressive.
Jpeg encode_photo(int subsamp, bool progressive) {
  const auto png = test::skimage_photo("astronaut.png");
  DecodedImage img;
  decode_image(png.data(), png.size(), subsamp == TJSAMP_GRAY ? 1 : 3, "astronaut.png", img);
  const int w = 317, h = 251, c = static_cast<int>(img.shape.channels);
  const int stride = static_cast<int>(img.shape.width) * c;
  tjhandle tj = tjInitCompress();
  unsigned char* out = nullptr;
  unsigned long size = 0;
  const int flags = progressive ? TJFLAG_PROGRESSIVE : 0;
  REQUIRE(tjCompress2(tj, img.pixels.data() + 40 * stride + 60 * c, w, stride, h,
                      c == 1 ? TJPF_GRAY : TJPF_RGB, &out, &size, subsamp, 85, flags) == 0);
  Jpeg jpeg{"astronaut subsampling " + std::to_string(subsamp) + (progressive ? " progressive" : ""),
            std::vector<std::uint8_t>(out, out + size)};
  tjFree(out);
  tjDestroy(tj);
  return jpeg;
}

// TurboJPEG's whole image at 1/denom, as `channels`.
std::vector<std::uint8_t> full_decode(const Jpeg& j, int denom, int width, int height,
                                      std::uint32_t channels) {
  tjhandle tj = tjInitDecompress();
  std::vector<std::uint8_t> px(std::size_t(width) * height * channels);
  REQUIRE(tjDecompress2(tj, j.bytes.data(), j.bytes.size(), px.data(), width, 0, height,
                        channels == 1 ? TJPF_GRAY : TJPF_RGB, TJFLAG_STOPONWARNING) == 0);
  tjDestroy(tj);
  return px;
}

}  // namespace

TEST_CASE("jpeg region: every region equals the full decode at its scale, in every subsampling") {
  std::vector<Jpeg> jpegs{{"rocket.jpg", test::skimage_photo("rocket.jpg")}};
  for (int s : {TJSAMP_444, TJSAMP_422, TJSAMP_420, TJSAMP_440, TJSAMP_411, TJSAMP_GRAY}) {
    jpegs.push_back(encode_photo(s, false));
  }
  jpegs.push_back(encode_photo(TJSAMP_420, true));
  std::uint32_t rng = 12345;
  auto next = [&](std::uint32_t n) {
    rng = rng * 1664525u + 1013904223u;
    return (rng >> 8) % n;
  };
  int regions = 0;
  for (const Jpeg& j : jpegs) {
    const ImageInfo info = read_image_info(j.bytes.data(), j.bytes.size(), j.name);
    const std::uint32_t channels = info.channels == 1 ? 1 : 3;
    for (int denom : {1, 2, 4, 8}) {
      CAPTURE(j.name);
      CAPTURE(denom);
      const std::uint32_t w = (info.width + denom - 1) / denom, h = (info.height + denom - 1) / denom;
      const auto full = full_decode(j, denom, static_cast<int>(w), static_cast<int>(h), channels);
      for (int k = 0; k < 12; ++k) {
        // Random regions, plus the whole image, a full-width band and a full-height bar.
        std::uint32_t x0 = next(w), y0 = next(h);
        std::uint32_t x1 = x0 + 1 + next(w - x0), y1 = y0 + 1 + next(h - y0);
        if (k == 0) x0 = 0, y0 = 0, x1 = w, y1 = h;
        if (k == 1) x0 = 0, x1 = w;
        if (k == 2) y0 = 0, y1 = h;
        CAPTURE(x0);
        CAPTURE(y0);
        CAPTURE(x1);
        CAPTURE(y1);
        DecodedImage region;
        decode_jpeg_region(j.bytes.data(), j.bytes.size(), info, channels, denom, x0, y0, x1, y1,
                           j.name, region);
        REQUIRE(region.shape == Shape{y1 - y0, x1 - x0, channels});
        std::size_t differing = 0;
        for (std::uint32_t y = y0; y < y1; ++y) {
          const std::uint8_t* want = full.data() + (std::size_t{y} * w + x0) * channels;
          const std::uint8_t* got = region.pixels.data() + std::size_t{y - y0} * (x1 - x0) * channels;
          for (std::size_t i = 0; i < std::size_t{x1 - x0} * channels; ++i) differing += want[i] != got[i];
        }
        CHECK(differing == 0);
        ++regions;
      }
    }
  }
  CHECK(regions == 8 * 4 * 12);
}

TEST_CASE("jpeg region: corrupt data in the region is an error naming the record; rows below "
          "the region are never read; the next image decodes") {
  // A real photo cut in half: libjpeg's "premature end" warning is an error, not grey rows.
  auto cut = test::skimage_photo("rocket.jpg");
  const ImageInfo info = read_image_info(cut.data(), cut.size(), "rocket");
  cut.resize(cut.size() / 2);
  DecodedImage out;
  try {
    decode_jpeg_region(cut.data(), cut.size(), info, 3, 1, 0, 0, info.width, info.height,
                       "record 7", out);
    FAIL("a truncated JPEG decoded");
  } catch (const DataError& e) {
    const std::string msg = e.what();
    CHECK(msg.find("record 7") != std::string::npos);
    CHECK(msg.find("corrupt JPEG") != std::string::npos);
  }
  // The top rows lie before the cut: they decode, equal to the whole file's, and the decode
  // stops there.
  const auto whole = test::skimage_photo("rocket.jpg");
  DecodedImage top;
  decode_jpeg_region(whole.data(), whole.size(), info, 3, 1, 5, 0, 300, 40, "rocket", top);
  decode_jpeg_region(cut.data(), cut.size(), info, 3, 1, 5, 0, 300, 40, "record 7", out);
  CHECK(out.shape == Shape{40, 295, 3});
  CHECK(out.pixels == top.pixels);
  // A region outside the scaled image is a usage error.
  CHECK_THROWS_AS(decode_jpeg_region(whole.data(), whole.size(), info, 3, 8, 0, 0, info.width, 1,
                                     "rocket", out),
                  UsageError);
}
