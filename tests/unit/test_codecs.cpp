// src/codecs/: sniffing, header info and limits, decode of skimage's photos, bad input,
// DCT-scale choice and scaled crops, the resampler's invariants, JPEG encode round trips.
// Pixel equality with Pillow is checked by tests/python/test_codecs_pil.py.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <vector>

#include "codecs/image_codec.hpp"
#include "codecs/resample.hpp"
#include "detail/testing.hpp"
#include "imgstore/error.hpp"
#include "test_support.hpp"

using namespace imgstore;
using namespace imgstore::detail;

namespace {

std::string error_of(const std::vector<std::uint8_t>& bytes, std::uint32_t channels = 3) {
  DecodedImage img;
  try {
    decode_image(bytes.data(), bytes.size(), channels, "'x.jpg'", img);
  } catch (const DataError& e) {
    return e.what();
  }
  return "no error";
}

// Gradient test image, HWC.
std::vector<std::uint8_t> gradient(std::uint32_t w, std::uint32_t h, std::uint32_t c) {
  std::vector<std::uint8_t> px(std::size_t{w} * h * c);
  for (std::uint32_t y = 0; y < h; ++y)
    for (std::uint32_t x = 0; x < w; ++x)
      for (std::uint32_t k = 0; k < c; ++k)
        px[(std::size_t{y} * w + x) * c + k] = static_cast<std::uint8_t>((x + y * 2 + k * 30) % 256);
  return px;
}

}  // namespace

TEST_CASE("codecs: magic bytes decide the kind, not the name") {
  const auto jpg = test::skimage_photo("rocket.jpg");
  const auto png = test::skimage_photo("astronaut.png");
  CHECK(sniff_image(jpg.data(), jpg.size()) == ImageKind::Jpeg);
  CHECK(sniff_image(png.data(), png.size()) == ImageKind::Png);
  const std::uint8_t text[] = "GIF89a not ours";
  CHECK(sniff_image(text, sizeof text) == ImageKind::Unknown);
  CHECK(sniff_image(nullptr, 0) == ImageKind::Unknown);
  CHECK(sniff_image(jpg.data(), 2) == ImageKind::Unknown);
}

TEST_CASE("codecs: header info of skimage's photos") {
  const auto jpg = test::skimage_photo("rocket.jpg");
  const ImageInfo j = read_image_info(jpg.data(), jpg.size(), "rocket.jpg");
  CHECK(j.kind == ImageKind::Jpeg);
  CHECK(j.width == 640);
  CHECK(j.height == 427);
  CHECK(j.channels == 3);
  CHECK(j.colorspace == JpegColorspace::YCbCr);
  CHECK_FALSE(j.progressive);
  const auto pal = test::skimage_photo("foo3x5x4indexed.png");
  const ImageInfo p = read_image_info(pal.data(), pal.size(), "foo.png");
  CHECK(p.kind == ImageKind::Png);
  CHECK(p.width == 5);
  CHECK(p.height == 3);
  CHECK(p.palette);
  CHECK(p.has_transparency);
  CHECK_FALSE(can_store_untouched(p, ImageKind::Png, 3));
  CHECK(can_store_untouched(j, ImageKind::Jpeg, 3));
  CHECK_FALSE(can_store_untouched(j, ImageKind::Jpeg, 1));
  CHECK_FALSE(can_store_untouched(j, ImageKind::Png, 3));
  const auto rgb = test::skimage_photo("astronaut.png");
  CHECK(can_store_untouched(read_image_info(rgb.data(), rgb.size(), "a.png"), ImageKind::Png, 3));
}

TEST_CASE("codecs: decode to L and RGB has the header's shape") {
  for (const char* name : {"rocket.jpg", "astronaut.png", "camera.png", "palette_color.png"}) {
    const auto bytes = test::skimage_photo(name);
    const ImageInfo info = read_image_info(bytes.data(), bytes.size(), name);
    for (std::uint32_t c : {1u, 3u}) {
      DecodedImage img;
      decode_image(bytes.data(), bytes.size(), c, name, img);
      CHECK(img.shape == Shape{info.height, info.width, c});
      CHECK(img.pixels.size() == img.shape.bytes());
    }
  }
}

TEST_CASE("codecs: bad input is a DataError naming the file and the problem") {
  CHECK(error_of({}).find("'x.jpg': empty file") != std::string::npos);
  const std::string text = "just some text";
  CHECK(error_of({text.begin(), text.end()}).find("not a JPEG or PNG") != std::string::npos);
  const std::string trunc = error_of(test::skimage_photo("truncated.jpg"));
  CHECK(trunc.find("'x.jpg': corrupt JPEG") != std::string::npos);
  // Cut a valid JPEG: libjpeg's "premature end" warning must be an error, not grey rows.
  auto jpg = test::skimage_photo("rocket.jpg");
  jpg.resize(jpg.size() / 2);
  CHECK(error_of(jpg).find("corrupt JPEG") != std::string::npos);
  auto png = test::skimage_photo("astronaut.png");
  png.resize(png.size() / 2);
  CHECK(error_of(png).find("corrupt PNG") != std::string::npos);
  // SOF0 claiming 60000x60000: refused from the header, before any allocation.
  std::vector<std::uint8_t> bomb = {0xFF, 0xD8, 0xFF, 0xDB, 0, 67, 0};
  bomb.insert(bomb.end(), 64, 1);
  for (int b : {0xFF, 0xC0, 0, 17, 8, 0xEA, 0x60, 0xEA, 0x60, 3, 1, 0x22, 0, 2, 0x11, 1, 3,
                0x11, 1, 0xFF, 0xDA, 0, 12, 3, 1, 0, 2, 0x11, 3, 0x11, 0, 63, 0, 0xFF, 0xD9})
    bomb.push_back(static_cast<std::uint8_t>(b));
  const std::string msg = error_of(bomb);
  CHECK(msg.find("'x.jpg'") != std::string::npos);
  CHECK(msg.find("60000x60000") != std::string::npos);
  CHECK(msg.find("decompression bomb") != std::string::npos);
  // A tighter limit refuses a real photo.
  const auto rocket = test::skimage_photo("rocket.jpg");
  DecodeLimits small;
  small.max_pixels = 1000;
  CHECK_THROWS_AS(read_image_info(rocket.data(), rocket.size(), "r", small), DataError);
  DecodedImage img;
  CHECK_THROWS_AS(decode_image(rocket.data(), rocket.size(), 2, "r", img), UsageError);
}

TEST_CASE("codecs: DCT scale is the smallest that still covers the output") {
  CHECK(choose_jpeg_scale(640, 427, 224, 224) == 1);
  CHECK(choose_jpeg_scale(1000, 900, 224, 224) == 4);
  CHECK(choose_jpeg_scale(2000, 1800, 224, 224) == 8);
  CHECK(choose_jpeg_scale(500, 460, 224, 224) == 2);
  CHECK(choose_jpeg_scale(447, 460, 224, 224) == 1);
  CHECK(choose_jpeg_scale(1, 1, 1, 1) == 1);
}

TEST_CASE("codecs: a scaled crop covers the crop and its box lies inside") {
  const auto jpg = test::skimage_photo("rocket.jpg");
  ScaledCrop sc;
  decode_jpeg_crop(jpg.data(), jpg.size(), CropRect{17, 33, 600, 380}, 64, 64, 3, "r", sc);
  CHECK(sc.scale_denom == 4);
  CHECK(sc.image.shape.channels == 3);
  CHECK(sc.box[0] >= 0);
  CHECK(sc.box[0] < 1);
  CHECK(sc.box[2] <= static_cast<float>(sc.image.shape.width));
  CHECK(sc.box[3] <= static_cast<float>(sc.image.shape.height));
  CHECK(sc.box[2] - sc.box[0] == doctest::Approx(150.0));
  CHECK(sc.box[3] - sc.box[1] == doctest::Approx(95.0));
  // At scale 1 the result is the crop of the full decode.
  DecodedImage full;
  decode_image(jpg.data(), jpg.size(), 1, "r", full);
  decode_jpeg_crop(jpg.data(), jpg.size(), CropRect{5, 7, 300, 200}, 224, 150, 1, "r", sc);
  REQUIRE(sc.image.shape == Shape{200, 300, 1});
  bool same = true;
  for (std::uint32_t y = 0; y < 200; ++y)
    for (std::uint32_t x = 0; x < 300; ++x)
      same &= sc.image.pixels[y * 300 + x] == full.pixels[(y + 7) * 640 + x + 5];
  CHECK(same);
  CHECK_THROWS_AS(decode_jpeg_crop(jpg.data(), jpg.size(), CropRect{600, 0, 100, 10}, 8, 8, 3,
                                   "r", sc),
                  UsageError);
}

TEST_CASE("codecs: resize keeps a constant image constant and copies integer boxes") {
  std::vector<std::uint8_t> flat(50 * 40 * 3, 77);
  std::vector<std::uint8_t> out(17 * 13 * 3);
  for (auto f : {ResampleFilter::Bilinear, ResampleFilter::Bicubic}) {
    resize(flat.data(), 50, 40, 3, ResizeBox{1.5f, 2.25f, 49.f, 33.f}, 17, 13, out.data(), f);
    CHECK(std::all_of(out.begin(), out.end(), [](std::uint8_t v) { return v == 77; }));
  }
  const auto src = gradient(50, 40, 1);
  std::vector<std::uint8_t> crop(10 * 8);
  resize(src.data(), 50, 40, 1, ResizeBox{3, 4, 13, 12}, 10, 8, crop.data());
  CHECK(crop[0] == src[4 * 50 + 3]);
  CHECK(crop[79] == src[11 * 50 + 12]);
  // A stride views a crop in place: same as resizing a packed copy of the crop.
  std::vector<std::uint8_t> a(5 * 4), b(5 * 4);
  resize(src.data() + 4 * 50 + 3, 10, 8, 1, ResizeBox{0, 0, 10, 8}, 5, 4, a.data(),
         ResampleFilter::Bilinear, 50);
  resize(crop.data(), 10, 8, 1, ResizeBox{0, 0, 10, 8}, 5, 4, b.data());
  CHECK(a == b);
  CHECK_THROWS_AS(resize(src.data(), 50, 40, 1, ResizeBox{0, 0, 51, 40}, 5, 4, a.data()),
                  UsageError);
  CHECK_THROWS_AS(resize(src.data(), 50, 40, 1, ResizeBox{3, 0, 3, 40}, 5, 4, a.data()),
                  UsageError);
}

TEST_CASE("codecs: resize's fixed-tap kernels equal the reference loop byte for byte") {
  // Upscales (2 non-zero taps), downscales below 2x (4), a little beyond (5) and further
  // (generic), boxes at the image's edges (where the fixed taps are moved left), strided
  // sources, 1-4 channels, on a real photo so every coefficient meets varied pixels.
  const auto jpg = test::skimage_photo("astronaut.png");
  DecodedImage photo;
  decode_image(jpg.data(), jpg.size(), 3, "astronaut.png", photo);
  const std::uint32_t pw = photo.shape.width;
  std::uint64_t state = 12345;
  auto next = [&state](std::uint32_t bound) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return static_cast<std::uint32_t>((state >> 33) % bound);
  };
  // On a CPU with AVX2, its kernels are checked first, then the SSE2 ones they replace.
  std::optional<imgstore::detail::testing::Avx2KernelsDisabled> no_avx2;
  SUBCASE("the kernels this CPU picks") {}
  SUBCASE("without AVX2") { no_avx2.emplace(); }
  int cases = 0, fixed = 0;
  for (int trial = 0; trial < 400; ++trial) {
    const std::uint32_t c = 1 + next(4);
    const std::uint32_t w = 3 + next(120), h = 3 + next(90);
    // The source: a w x h x c view into the photo's bytes (rows of the photo's stride).
    const std::size_t stride = std::size_t{pw} * 3;
    const std::uint8_t* src = photo.pixels.data() + next(200) * stride + next(200) * 3;
    const float x0 = next(2) ? 0.f : static_cast<float>(next(w / 2)) + 0.25f * next(4);
    const float y0 = next(2) ? 0.f : static_cast<float>(next(h / 2)) + 0.25f * next(4);
    // The box's far edge: the image's edge, or a random point past its near edge.
    auto far_edge = [&](float near, std::uint32_t size) {
      if (next(2)) return static_cast<float>(size);
      const auto room = static_cast<std::uint32_t>(static_cast<float>(size) - near - 1) + 1;
      return std::min(static_cast<float>(size), near + 1 + static_cast<float>(next(room)) * 0.9f);
    };
    const ResizeBox box{x0, y0, far_edge(x0, w), far_edge(y0, h)};
    const std::uint32_t ow = 1 + next(3 * w), oh = 1 + next(3 * h);
    const auto filter = next(3) ? ResampleFilter::Bilinear : ResampleFilter::Bicubic;
    CAPTURE(trial);
    CAPTURE(c);
    CAPTURE(w);
    CAPTURE(h);
    CAPTURE(ow);
    CAPTURE(oh);
    std::vector<std::uint8_t> fast(std::size_t{ow} * oh * c), reference(fast.size());
    resize_with(src, w, h, c, box, ow, oh, fast.data(), filter, stride, false);
    resize_with(src, w, h, c, box, ow, oh, reference.data(), filter, stride, true);
    CHECK(fast == reference);
    // Mirrored: the same pixels, each row reversed (the horizontal taps in reverse order).
    std::vector<std::uint8_t> mirrored(fast.size());
    resize_with(src, w, h, c, box, ow, oh, mirrored.data(), filter, stride, next(2) == 1, true);
    flip_rows(fast.data(), oh, ow, c);
    CHECK(mirrored == fast);
    ++cases;
    const double scale = (box.x1 - box.x0) / ow;
    fixed += scale < 2 ? 1 : 0;
  }
  CHECK(cases == 400);
  CHECK(fixed > 200);  // most cases take the fixed-tap kernels
}

TEST_CASE("codecs: a mirrored resize without a horizontal pass, or a plain crop, is flipped") {
  const auto src = gradient(50, 40, 3);
  std::vector<std::uint8_t> plain(50 * 13 * 3), mirrored(plain.size());
  // Only a vertical pass: the output keeps the source's width.
  resize(src.data(), 50, 40, 3, ResizeBox{0, 0, 50, 40}, 50, 13, plain.data());
  resize(src.data(), 50, 40, 3, ResizeBox{0, 0, 50, 40}, 50, 13, mirrored.data(),
         ResampleFilter::Bilinear, 0, true);
  flip_rows(plain.data(), 13, 50, 3);
  CHECK(mirrored == plain);
  // An integer box of the output's size: a copy.
  std::vector<std::uint8_t> crop(9 * 7 * 3), crop_mirrored(crop.size());
  resize(src.data(), 50, 40, 3, ResizeBox{4, 5, 13, 12}, 9, 7, crop.data());
  resize(src.data(), 50, 40, 3, ResizeBox{4, 5, 13, 12}, 9, 7, crop_mirrored.data(),
         ResampleFilter::Bilinear, 0, true);
  CHECK(crop_mirrored != crop);
  flip_rows(crop.data(), 7, 9, 3);
  CHECK(crop_mirrored == crop);
}

TEST_CASE("codecs: JPEG encode then decode is close and stays gray or RGB") {
  for (std::uint32_t c : {1u, 3u}) {
    const auto px = gradient(64, 48, c);
    std::vector<std::uint8_t> jpg;
    encode_jpeg(px.data(), 64, 48, c, 95, jpg);
    const ImageInfo info = read_image_info(jpg.data(), jpg.size(), "enc");
    CHECK(info.channels == c);
    CHECK(info.subsampling == (c == 1 ? "gray" : "4:2:0"));
    CHECK(can_store_untouched(info, ImageKind::Jpeg, c));
    DecodedImage img;
    decode_image(jpg.data(), jpg.size(), c, "enc", img);
    REQUIRE(img.pixels.size() == px.size());
    double err = 0;
    for (std::size_t i = 0; i < px.size(); ++i) err += std::abs(int(img.pixels[i]) - int(px[i]));
    CHECK(err / px.size() < 3.0);
  }
  std::vector<std::uint8_t> out;
  const auto px = gradient(4, 4, 3);
  CHECK_THROWS_AS(encode_jpeg(px.data(), 4, 4, 3, 0, out), UsageError);
  CHECK_THROWS_AS(encode_jpeg(px.data(), 4, 4, 2, 90, out), UsageError);
}
