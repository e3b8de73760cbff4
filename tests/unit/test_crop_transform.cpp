// src/codecs/crop_transform: torchvision's RandomResizedCrop / Resize + CenterCrop plans, and
// their application to raw, PNG and JPEG records on skimage's photos.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "codecs/crop_transform.hpp"
#include "detail/random.hpp"
#include "imgstore/error.hpp"
#include "test_support.hpp"

using namespace imgstore;
using namespace imgstore::detail;

namespace {

// The photo as a record of `encoding`: Raw holds its decoded pixels, others its file bytes.
EncodedRecord photo_record(const std::string& name, Encoding encoding) {
  const auto bytes = test::skimage_photo(name);
  DecodedImage img;
  decode_image(bytes.data(), bytes.size(), 3, name, img);
  EncodedRecord rec;
  rec.shape = img.shape;
  rec.encoding = encoding;
  rec.bytes = encoding == Encoding::Raw ? img.pixels : bytes;
  return rec;
}

std::vector<std::uint8_t> apply(const CropPlan& plan, const EncodedRecord& rec) {
  std::vector<std::uint8_t> out(std::size_t{plan.out_h} * plan.out_w * rec.shape.channels);
  CropScratch scratch;
  apply_crop(plan, rec, out.data(), scratch, "'photo'");
  return out;
}

double psnr(const std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b) {
  double se = 0;
  for (std::size_t i = 0; i < a.size(); ++i) se += (a[i] - b[i]) * double(a[i] - b[i]);
  const double mse = se / static_cast<double>(a.size());
  return mse == 0 ? 99.0 : 10 * std::log10(255.0 * 255.0 / mse);
}

bool same_plan(const CropPlan& a, const CropPlan& b) {
  return a.window.x == b.window.x && a.window.y == b.window.y && a.window.width == b.window.width &&
         a.window.height == b.window.height && a.box.x0 == b.box.x0 && a.box.y0 == b.box.y0 &&
         a.box.x1 == b.box.x1 && a.box.y1 == b.box.y1 && a.flip == b.flip;
}

}  // namespace

TEST_CASE("crop plan: RRC crops lie inside and keep torchvision's area and ratio bounds") {
  const CropTransform t = CropTransform::random_resized_crop(64);
  const std::pair<std::uint32_t, std::uint32_t> sizes[] = {{427, 640}, {512, 512}, {300, 451},
                                                           {40, 30}, {1, 1}, {3, 500}};
  for (const auto& [h, w] : sizes) {
    for (std::uint64_t i = 0; i < 400; ++i) {
      std::uint64_t k = 0;
      SplitMix rng(i);
      auto u = [&] { ++k; return static_cast<double>(rng.next() >> 11) * 0x1.0p-53; };
      const RrcParams p = rrc_params(h, w, t, u);
      REQUIRE(p.h >= 1);
      REQUIRE(p.w >= 1);
      REQUIRE(p.i + p.h <= h);
      REQUIRE(p.j + p.w <= w);
      if (!p.fallback && h >= 300) {
        // w = round(sqrt(ta * r)), h = round(sqrt(ta / r)): bounds widened by the rounding.
        const double area = double(h) * w;
        CHECK((p.w + 0.5) * (p.h + 0.5) >= 0.08 * area);
        CHECK((p.w - 0.5) * (p.h - 0.5) <= area);
        CHECK((p.w + 0.5) / (p.h - 0.5) >= 0.75);
        CHECK((p.w - 0.5) / (p.h + 0.5) <= 4.0 / 3.0);
      }
      if (p.fallback) CHECK(k == 20);  // 10 tries of two draws, no position draws
    }
  }
}

TEST_CASE("crop plan: extreme aspect ratios take torchvision's central fallback") {
  const CropTransform t = CropTransform::random_resized_crop(32);
  double x = 0.37;
  auto u = [&] { return x = std::fmod(x + 0.618034, 1.0); };
  // 10 x 1000: every try needs h >= sqrt(0.08 * 10000 / (4/3)) > 10, so the fallback:
  // h = 10, w = round(10 * 4/3) = 13, centred.
  RrcParams p = rrc_params(10, 1000, t, u);
  CHECK(p.fallback);
  CHECK(p.h == 10);
  CHECK(p.w == 13);
  CHECK(p.i == 0);
  CHECK(p.j == (1000 - 13) / 2);
  p = rrc_params(1000, 10, t, u);  // tall: w = 10, h = round(10 / 0.75) = 13
  CHECK(p.fallback);
  CHECK(p.w == 10);
  CHECK(p.h == 13);
  CHECK(p.i == (1000 - 13) / 2);
  // Ratio within bounds but nothing accepted (scale forced above 1 by rounding is impossible,
  // so force every try out with a tiny image and a large minimum scale): the whole image.
  CropTransform big = t;
  big.scale_min = big.scale_max = 1.0;
  big.ratio_min = big.ratio_max = 2.0;  // w = round(sqrt(2 * 6)) = 3 > 2 for a 3 x 2 image
  p = rrc_params(3, 2, big, u);
  CHECK(p.fallback);
  CHECK(p.h == 1);  // in_ratio 2/3 < 2: w = 2, h = round(2 / 2) = 1
  CHECK(p.w == 2);
}

TEST_CASE("crop plan: deterministic per (seed, epoch, index), whatever the call order") {
  CropTransform t = CropTransform::random_resized_crop(64);
  t.flip_probability = 0.5;
  std::vector<CropPlan> forward, backward(100);
  for (std::uint64_t i = 0; i < 100; ++i) forward.push_back(plan_crop(t, 7, 3, i, 427, 640));
  for (std::uint64_t i = 100; i-- > 0;) backward[i] = plan_crop(t, 7, 3, i, 427, 640);
  int flips = 0, differ_epoch = 0;
  for (std::uint64_t i = 0; i < 100; ++i) {
    CHECK(same_plan(forward[i], backward[i]));
    flips += forward[i].flip;
    differ_epoch += !same_plan(forward[i], plan_crop(t, 7, 4, i, 427, 640));
  }
  // rrc_params over crop_seed's stream is plan_crop's window (what the codec tool prints).
  SplitMix rng(crop_seed(7, 3, 42));
  auto u = [&rng] { return static_cast<double>(rng.next() >> 11) * 0x1.0p-53; };
  const RrcParams p = rrc_params(427, 640, t, u);
  CHECK(forward[42].window.x == p.j);
  CHECK(forward[42].window.y == p.i);
  CHECK(forward[42].window.width == p.w);
  CHECK(forward[42].window.height == p.h);
  CHECK(flips > 25);
  CHECK(flips < 75);
  CHECK(differ_epoch > 90);
}

TEST_CASE("crop plan: eval is torchvision's Resize(short) then CenterCrop") {
  const CropTransform t = CropTransform::resize_center_crop(224);
  CHECK(t.short_side() == 256);
  CHECK(CropTransform::resize_center_crop(64).short_side() == 73);
  // 427 x 640: Resize(256) gives 256 x int(256 * 640 / 427) = 256 x 383; top = round(16) = 16,
  // left = round(79.5) = 80 (half to even).
  const CropPlan p = plan_crop(t, 0, 0, 0, 427, 640);
  const double sx = 640.0 / 383, sy = 427.0 / 256;
  CHECK(p.box.x0 == doctest::Approx(80 * sx));
  CHECK(p.box.x1 == doctest::Approx((80 + 224) * sx));
  CHECK(p.box.y0 == doctest::Approx(16 * sy));
  CHECK(p.box.y1 == doctest::Approx((16 + 224) * sy));
  CHECK(p.window.x + p.window.width <= 640);
  CHECK(p.window.y + p.window.height <= 427);
  CHECK(!p.flip);
}

TEST_CASE("crop apply: raw RRC equals Pillow's crop().resize() through the resampler") {
  const EncodedRecord rec = photo_record("astronaut.png", Encoding::Raw);
  const CropTransform t = CropTransform::random_resized_crop(64);
  for (std::uint64_t i = 0; i < 8; ++i) {
    const CropPlan p = plan_crop(t, 1, 0, i, rec.shape.height, rec.shape.width);
    std::vector<std::uint8_t> crop(std::size_t{p.window.width} * p.window.height * 3);
    for (std::uint32_t y = 0; y < p.window.height; ++y) {
      const auto* row = rec.bytes.data() + ((std::size_t{p.window.y} + y) * 512 + p.window.x) * 3;
      std::copy(row, row + p.window.width * 3, crop.begin() + std::size_t{y} * p.window.width * 3);
    }
    std::vector<std::uint8_t> want(64 * 64 * 3);
    resize(crop.data(), p.window.width, p.window.height, 3,
           ResizeBox{0, 0, float(p.window.width), float(p.window.height)}, 64, 64, want.data());
    CHECK(apply(p, rec) == want);
  }
}

TEST_CASE("crop apply: raw eval equals a full resize then a centre crop") {
  const EncodedRecord rec = photo_record("coffee.png", Encoding::Raw);  // 400 x 600
  const CropPlan p = plan_crop(CropTransform::resize_center_crop(112), 0, 0, 0, 400, 600);
  const std::uint32_t new_h = 128, new_w = 192, top = 8, left = 40;  // short 128 = 112*256/224
  std::vector<std::uint8_t> full(std::size_t{new_h} * new_w * 3);
  resize(rec.bytes.data(), 600, 400, 3, ResizeBox{0, 0, 600, 400}, new_w, new_h, full.data());
  std::vector<std::uint8_t> want(112 * 112 * 3);
  for (std::uint32_t y = 0; y < 112; ++y) {
    const auto* row = full.data() + ((std::size_t{y} + top) * new_w + left) * 3;
    std::copy(row, row + 112 * 3, want.begin() + std::size_t{y} * 112 * 3);
  }
  const auto got = apply(p, rec);
  int max_diff = 0;
  for (std::size_t i = 0; i < got.size(); ++i) max_diff = std::max(max_diff, std::abs(got[i] - want[i]));
  CHECK(max_diff <= 1);  // float box coordinates vs Pillow's doubles can move one rounding
}

TEST_CASE("crop apply: PNG records equal raw, JPEG fused decode is close to full decode") {
  const CropTransform t = CropTransform::random_resized_crop(64);
  const EncodedRecord png = photo_record("chelsea.png", Encoding::Png);
  const EncodedRecord png_raw = photo_record("chelsea.png", Encoding::Raw);
  const CropPlan pp = plan_crop(t, 2, 0, 5, png.shape.height, png.shape.width);
  CHECK(apply(pp, png) == apply(pp, png_raw));
  for (const char* name : {"rocket.jpg", "hubble_deep_field.jpg", "retina.jpg"}) {
    const EncodedRecord jpg = photo_record(name, Encoding::Jpeg);
    const EncodedRecord raw = photo_record(name, Encoding::Raw);
    for (auto tt : {t, CropTransform::random_resized_crop(224), CropTransform::resize_center_crop(64)}) {
      double worst = 99;
      for (std::uint64_t i = 0; i < 6; ++i) {
        const CropPlan p = plan_crop(tt, 3, 0, i, jpg.shape.height, jpg.shape.width);
        worst = std::min(worst, psnr(apply(p, jpg), apply(p, raw)));
      }
      MESSAGE(std::string(name) << " out " << tt.height << " kind " << int(tt.kind) << ": worst PSNR " << worst);
      CHECK(worst > 30.0);
    }
  }
}

TEST_CASE("crop apply: flip mirrors the output, bad records name themselves") {
  const EncodedRecord rec = photo_record("rocket.jpg", Encoding::Jpeg);
  CropPlan p = plan_crop(CropTransform::random_resized_crop(48), 0, 0, 1, 427, 640);
  p.flip = false;
  auto plain = apply(p, rec);
  p.flip = true;
  const auto flipped = apply(p, rec);
  flip_rows(plain.data(), 48, 48, 3);
  CHECK(plain == flipped);
  EncodedRecord wrong = rec;
  wrong.shape = Shape{500, 640, 3};
  CHECK_THROWS_WITH_AS(apply(p, wrong), doctest::Contains("'photo'"), DataError);
  wrong = rec;
  wrong.bytes.resize(wrong.bytes.size() / 2);
  CHECK_THROWS_WITH_AS(apply(p, wrong), doctest::Contains("'photo'"), DataError);
  EncodedRecord raw = photo_record("rocket.jpg", Encoding::Raw);
  raw.bytes.pop_back();
  CHECK_THROWS_WITH_AS(apply(p, raw), doctest::Contains("'photo'"), DataError);
}

TEST_CASE("crop transform: validate refuses unusable options, naming the field") {
  CropTransform t = CropTransform::random_resized_crop(0);
  CHECK_THROWS_WITH_AS(validate(t), doctest::Contains("output size"), UsageError);
  t = CropTransform::random_resized_crop(32);
  t.scale_min = 0.9;
  t.scale_max = 0.5;
  CHECK_THROWS_WITH_AS(validate(t), doctest::Contains("scale"), UsageError);
  t = CropTransform::random_resized_crop(32);
  t.ratio_min = 0;
  CHECK_THROWS_WITH_AS(validate(t), doctest::Contains("ratio"), UsageError);
  t.ratio_min = 0.5;
  t.flip_probability = 2;
  CHECK_THROWS_WITH_AS(validate(t), doctest::Contains("flip_probability"), UsageError);
  CHECK_THROWS_WITH_AS(validate(CropTransform::resize_center_crop(64, 60)),
                       doctest::Contains("resize_short"), UsageError);
  CHECK_NOTHROW(validate(CropTransform::resize_center_crop(64)));
  CHECK_NOTHROW(validate(CropTransform{}));
}
