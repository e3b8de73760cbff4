// Crop-and-resize transforms that turn images of any size into fixed-size ones, as
// torchvision's training and evaluation transforms do:
//
//   imgstore::CropTransform train = imgstore::CropTransform::random_resized_crop(224);
//   train.flip_probability = 0.5;       // RandomHorizontalFlip()
//   imgstore::CropTransform eval = imgstore::CropTransform::resize_center_crop(224);  // 256 / 224
//
// - RandomResizedCrop: torchvision's RandomResizedCrop.get_params rule exactly (10 tries of a
//   random area fraction in `scale` and a log-uniform aspect ratio in `ratio`, then the central
//   fallback with the ratio clamped), then the crop resized to the output size
//   (F.resized_crop: crop first, so the filter never reads pixels outside the crop).
// - ResizeCenterCrop: Resize(resize_short) (long side = int(short * long / short_side)), then
//   CenterCrop(output) with torchvision's offsets (round half to even).
// - The filter is Pillow's antialiased bilinear (torchvision with antialias=True, or on PIL).
// Random draws come from (seed, epoch, record index) through splitmix64, so results never depend
// on threads or call order; the numbers differ from torchvision's RNG, the distribution doesn't.
#pragma once

#include <cstdint>

namespace imgstore {

enum class CropKind { None, RandomResizedCrop, ResizeCenterCrop };

struct CropTransform {
  CropKind kind = CropKind::None;
  std::uint32_t height = 224;  // output size
  std::uint32_t width = 224;
  // RandomResizedCrop: area fraction and aspect ratio (w/h) ranges.
  double scale_min = 0.08, scale_max = 1.0;
  double ratio_min = 3.0 / 4.0, ratio_max = 4.0 / 3.0;
  // ResizeCenterCrop: the short side before the centre crop; 0: floor(max(height, width) *
  // 256 / 224), the ImageNet convention (Resize(256) + CenterCrop(224)).
  std::uint32_t resize_short = 0;
  // Probability of a left-right flip of the output (RandomHorizontalFlip(p)); 0: never.
  double flip_probability = 0.0;

  bool enabled() const { return kind != CropKind::None; }
  // The short side ResizeCenterCrop resizes to (resize_short or its default).
  std::uint32_t short_side() const {
    if (resize_short != 0) return resize_short;
    const std::uint32_t s = height > width ? height : width;
    return static_cast<std::uint32_t>(std::uint64_t{s} * 256 / 224);
  }

  static CropTransform random_resized_crop(std::uint32_t size) {
    CropTransform t;
    t.kind = CropKind::RandomResizedCrop;
    t.height = t.width = size;
    return t;
  }
  static CropTransform resize_center_crop(std::uint32_t size, std::uint32_t resize_short = 0) {
    CropTransform t;
    t.kind = CropKind::ResizeCenterCrop;
    t.height = t.width = size;
    t.resize_short = resize_short;
    return t;
  }
};

// Throws UsageError naming the bad field (empty output, scale/ratio ranges out of order or not
// positive, resize_short below the output size, flip probability outside [0, 1]).
void validate(const CropTransform& transform);

}  // namespace imgstore
