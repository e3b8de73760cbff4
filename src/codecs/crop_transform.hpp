// The crop transforms of imgstore/crop_transform.hpp, in two steps the loader runs per record:
// plan_crop (where to crop, from the record's size and its (seed, epoch, index) draws) and
// apply_crop (decode what the crop needs and resample it to the output size).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "codecs/image_codec.hpp"
#include "codecs/resample.hpp"
#include "imgstore/crop_transform.hpp"
#include "imgstore/store.hpp"

namespace imgstore::detail {

// torchvision's RandomResizedCrop.get_params result: top i, left j, height h, width w.
struct RrcParams {
  std::uint32_t i = 0, j = 0, h = 0, w = 0;
  bool fallback = false;  // no try was accepted: the central crop
};

// The rule, drawing uniforms in [0, 1) from `uniform`: see the header of
// imgstore/crop_transform.hpp. Exposed for tests of its statistics.
template <typename Uniform>
RrcParams rrc_params(std::uint32_t height, std::uint32_t width, const CropTransform& t,
                     Uniform&& uniform);

// The seed of record `index`'s crop draws in `epoch` (plan_crop's generator).
std::uint64_t crop_seed(std::uint64_t seed, std::uint64_t epoch, std::uint64_t index);

// What to do with one record.
struct CropPlan {
  CropRect window;  // the source pixels the filter may read (RRC: the crop itself)
  ResizeBox box;    // the region resampled to the output, in source pixels
  std::uint32_t out_h = 0, out_w = 0;
  bool flip = false;
};

// The plan for record `index` of size height x width in `epoch`. Deterministic in its arguments.
CropPlan plan_crop(const CropTransform& t, std::uint64_t seed, std::uint64_t epoch,
                   std::uint64_t index, std::uint32_t height, std::uint32_t width);

// A thread's reusable buffers for apply_crop: after the first few records no allocation.
struct CropScratch {
  DecodedImage decoded;
  ScaledCrop scaled;
};

// Writes the planned crop of `record` as out_h x out_w x C HWC uint8 into `out`. Raw: resampled
// straight from the pixels; Jpeg: decode_jpeg_crop at the smallest DCT scale keeping the window
// at least the output size, then resampled; Png: decoded, then resampled. Throws DataError
// naming `what` on a payload that does not decode to the record's shape.
void apply_crop(const CropPlan& plan, const EncodedRecord& record, std::uint8_t* out,
                CropScratch& scratch, const std::string& what);

// ---- template definition ----

double python_round(double v);  // Python's round(): half to even
// torch.randint(0, n + 1) from a uniform u in [0, 1): one of 0..n.
inline std::uint32_t uniform_int(double u, std::uint32_t n) {
  return static_cast<std::uint32_t>(std::min<double>(std::floor(u * (static_cast<double>(n) + 1)), n));
}

template <typename Uniform>
RrcParams rrc_params(std::uint32_t height, std::uint32_t width, const CropTransform& t,
                     Uniform&& uniform) {
  const double area = static_cast<double>(height) * width;
  const double log_lo = std::log(t.ratio_min), log_hi = std::log(t.ratio_max);
  for (int attempt = 0; attempt < 10; ++attempt) {
    const double target = area * (t.scale_min + (t.scale_max - t.scale_min) * uniform());
    const double ratio = std::exp(log_lo + (log_hi - log_lo) * uniform());
    const double w = python_round(std::sqrt(target * ratio));
    const double h = python_round(std::sqrt(target / ratio));
    if (w > 0 && w <= width && h > 0 && h <= height) {
      RrcParams p;
      p.w = static_cast<std::uint32_t>(w);
      p.h = static_cast<std::uint32_t>(h);
      // torch.randint(0, n + 1): uniform over 0..n.
      p.i = uniform_int(uniform(), height - p.h);
      p.j = uniform_int(uniform(), width - p.w);
      return p;
    }
  }
  RrcParams p;
  p.fallback = true;
  const double in_ratio = static_cast<double>(width) / height;
  if (in_ratio < t.ratio_min) {
    p.w = width;
    p.h = static_cast<std::uint32_t>(python_round(width / t.ratio_min));
  } else if (in_ratio > t.ratio_max) {
    p.h = height;
    p.w = static_cast<std::uint32_t>(python_round(height * t.ratio_max));
  } else {
    p.w = width;
    p.h = height;
  }
  p.h = std::clamp<std::uint32_t>(p.h, 1, height);
  p.w = std::clamp<std::uint32_t>(p.w, 1, width);
  p.i = (height - p.h) / 2;
  p.j = (width - p.w) / 2;
  return p;
}

}  // namespace imgstore::detail
