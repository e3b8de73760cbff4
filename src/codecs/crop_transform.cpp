// Crop transforms: plans from torchvision's rules, applied with the PIL-exact resampler.
#include "codecs/crop_transform.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include <fmt/format.h>

#include "detail/random.hpp"
#include "imgstore/error.hpp"

namespace imgstore {

void validate(const CropTransform& t) {
  if (!t.enabled()) return;
  if (t.height == 0 || t.width == 0) {
    throw UsageError(fmt::format("crop transform: output size {}x{} is empty", t.height, t.width));
  }
  if (!(t.scale_min > 0 && t.scale_min <= t.scale_max && t.scale_max <= 1)) {
    throw UsageError(fmt::format("crop transform: scale ({}, {}) must satisfy 0 < min <= max <= 1",
                                 t.scale_min, t.scale_max));
  }
  if (!(t.ratio_min > 0 && t.ratio_min <= t.ratio_max && std::isfinite(t.ratio_max))) {
    throw UsageError(fmt::format("crop transform: ratio ({}, {}) must satisfy 0 < min <= max",
                                 t.ratio_min, t.ratio_max));
  }
  if (!(t.flip_probability >= 0 && t.flip_probability <= 1)) {
    throw UsageError(fmt::format("crop transform: flip_probability {} is not in [0, 1]",
                                 t.flip_probability));
  }
  if (t.kind == CropKind::ResizeCenterCrop && t.short_side() < std::max(t.height, t.width)) {
    throw UsageError(fmt::format("crop transform: resize_short {} is below the output size {}x{}",
                                 t.short_side(), t.height, t.width));
  }
}

}  // namespace imgstore

namespace imgstore::detail {

namespace {

// Keeps crop draws apart from the loader's other augmentation streams.
constexpr std::uint64_t kCropStream = 0x5243524f50ULL;  // "RCROP"

// Resize(short) then CenterCrop(out), as one box on the source (resize-then-crop reads pixels
// around the crop, so the window is the box widened by the filter's reach, within the image).
void plan_center(const CropTransform& t, std::uint32_t height, std::uint32_t width,
                 CropPlan& plan) {
  const std::uint32_t s = t.short_side();
  std::uint32_t new_h = s, new_w = s;
  // torchvision: new_long = int(short * long / short_side), in floating point.
  if (width <= height) {
    new_h = static_cast<std::uint32_t>(static_cast<double>(s) * height / width);
  } else {
    new_w = static_cast<std::uint32_t>(static_cast<double>(s) * width / height);
  }
  new_h = std::max(new_h, t.height);
  new_w = std::max(new_w, t.width);
  const auto top = static_cast<std::uint32_t>(python_round((new_h - t.height) / 2.0));
  const auto left = static_cast<std::uint32_t>(python_round((new_w - t.width) / 2.0));
  const double sy = static_cast<double>(height) / new_h, sx = static_cast<double>(width) / new_w;
  const double x0 = left * sx, x1 = (left + t.width) * sx;
  const double y0 = top * sy, y1 = (top + t.height) * sy;
  // Bilinear support is 1 output pixel: max(scale, 1) source pixels, plus rounding slack.
  const double rx = std::max(sx, 1.0) + 2, ry = std::max(sy, 1.0) + 2;
  const auto wx0 = static_cast<std::uint32_t>(std::max(0.0, std::floor(x0 - rx)));
  const auto wy0 = static_cast<std::uint32_t>(std::max(0.0, std::floor(y0 - ry)));
  const auto wx1 = static_cast<std::uint32_t>(std::min<double>(width, std::ceil(x1 + rx)));
  const auto wy1 = static_cast<std::uint32_t>(std::min<double>(height, std::ceil(y1 + ry)));
  plan.window = CropRect{wx0, wy0, wx1 - wx0, wy1 - wy0};
  plan.box = ResizeBox{static_cast<float>(x0), static_cast<float>(y0), static_cast<float>(x1),
                       static_cast<float>(y1)};
}

void check_window(const CropPlan& plan, const Shape& s, const std::string& what) {
  const CropRect& w = plan.window;
  if (std::uint64_t{w.x} + w.width > s.width || std::uint64_t{w.y} + w.height > s.height) {
    throw DataError(fmt::format("{}: crop {}x{} at ({}, {}) exceeds the {} image", what, w.width,
                                w.height, w.x, w.y, to_string(s)));
  }
}

// The planned region of a decoded HWC image, resampled (and flipped, if planned) into `out`.
void resample_window(const std::uint8_t* pixels, const Shape& s, const CropPlan& plan,
                     std::uint8_t* out, const std::string& what) {
  check_window(plan, s, what);
  const CropRect& w = plan.window;
  const std::size_t stride = std::size_t{s.width} * s.channels;
  const std::uint8_t* origin = pixels + w.y * stride + std::size_t{w.x} * s.channels;
  const ResizeBox box{plan.box.x0 - static_cast<float>(w.x), plan.box.y0 - static_cast<float>(w.y),
                      plan.box.x1 - static_cast<float>(w.x), plan.box.y1 - static_cast<float>(w.y)};
  resize(origin, w.width, w.height, s.channels, box, plan.out_w, plan.out_h, out,
         ResampleFilter::Bilinear, stride, plan.flip);
}

// JPEG: decode only the DCT scale the window needs, then resample the box mapped onto it.
void resample_jpeg(const EncodedRecord& rec, const CropPlan& plan, std::uint8_t* out,
                   ScaledCrop& sc, const std::string& what) {
  const ImageInfo info = read_image_info(rec.bytes.data(), rec.bytes.size(), what);
  if (info.height != rec.shape.height || info.width != rec.shape.width) {
    throw DataError(fmt::format("{}: JPEG is {}x{}, the record says {}", what, info.height,
                                info.width, to_string(rec.shape)));
  }
  check_window(plan, rec.shape, what);
  const CropRect& w = plan.window;
  decode_jpeg_crop(rec.bytes.data(), rec.bytes.size(), w, plan.out_w, plan.out_h,
                   rec.shape.channels, what, sc);
  // Source x maps to x / d - (window.x / d rounded down) = sc.box[0] + (x - window.x) / d.
  const float d = static_cast<float>(sc.scale_denom);
  const Shape& s = sc.image.shape;
  const ResizeBox box{sc.box[0] + (plan.box.x0 - static_cast<float>(w.x)) / d,
                      sc.box[1] + (plan.box.y0 - static_cast<float>(w.y)) / d,
                      std::min<float>(static_cast<float>(s.width),
                                      sc.box[0] + (plan.box.x1 - static_cast<float>(w.x)) / d),
                      std::min<float>(static_cast<float>(s.height),
                                      sc.box[1] + (plan.box.y1 - static_cast<float>(w.y)) / d)};
  resize(sc.image.pixels.data(), s.width, s.height, s.channels, box, plan.out_w, plan.out_h, out,
         ResampleFilter::Bilinear, 0, plan.flip);
}

}  // namespace

double python_round(double v) {
  // nearbyint rounds half to even in the default rounding mode, as Python's round() does.
  return std::nearbyint(v);
}

std::uint64_t crop_seed(std::uint64_t seed, std::uint64_t epoch, std::uint64_t index) {
  return mix_seed(mix_seed(seed, epoch), index) ^ kCropStream;
}

CropPlan plan_crop(const CropTransform& t, std::uint64_t seed, std::uint64_t epoch,
                   std::uint64_t index, std::uint32_t height, std::uint32_t width) {
  if (!t.enabled()) throw UsageError("plan_crop: the crop transform is off");
  if (height == 0 || width == 0) {
    throw DataError(fmt::format("cannot crop an empty {}x{} image", height, width));
  }
  SplitMix rng(crop_seed(seed, epoch, index));
  auto uniform = [&rng] { return static_cast<double>(rng.next() >> 11) * 0x1.0p-53; };
  CropPlan plan;
  plan.out_h = t.height;
  plan.out_w = t.width;
  if (t.kind == CropKind::RandomResizedCrop) {
    const RrcParams p = rrc_params(height, width, t, uniform);
    plan.window = CropRect{p.j, p.i, p.w, p.h};
    plan.box = ResizeBox{static_cast<float>(p.j), static_cast<float>(p.i),
                         static_cast<float>(p.j + p.w), static_cast<float>(p.i + p.h)};
  } else {
    plan_center(t, height, width, plan);
  }
  if (t.flip_probability > 0) plan.flip = uniform() < t.flip_probability;
  return plan;
}

void apply_crop(const CropPlan& plan, const EncodedRecord& rec, std::uint8_t* out,
                CropScratch& scratch, const std::string& what) {
  const Shape& s = rec.shape;
  switch (rec.encoding) {
    case Encoding::Raw:
      if (rec.bytes.size() != s.bytes()) {
        throw DataError(fmt::format("{}: raw payload is {} bytes, expected {} for {}", what,
                                    rec.bytes.size(), s.bytes(), to_string(s)));
      }
      resample_window(rec.bytes.data(), s, plan, out, what);
      break;
    case Encoding::Jpeg:
      resample_jpeg(rec, plan, out, scratch.scaled, what);
      break;
    default:  // PNG (and any other lossless encoding decode_image knows)
      decode_image(rec.bytes.data(), rec.bytes.size(), s.channels, what, scratch.decoded);
      if (scratch.decoded.shape != s) {
        throw DataError(fmt::format("{}: image is {}, the record says {}", what,
                                    to_string(scratch.decoded.shape), to_string(s)));
      }
      resample_window(scratch.decoded.pixels.data(), s, plan, out, what);
      break;
  }
}

}  // namespace imgstore::detail
