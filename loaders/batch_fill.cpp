// Augmentation draws and the HWC -> CHW batch writer.
#include "batch_fill.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <iterator>
#include <string>

#include <fmt/format.h>

#include "codecs/crop_transform.hpp"
#include "detail/isa_clones.hpp"
#include "imgstore/error.hpp"

namespace imgstore::detail {

// ---- BatchWriter ----

BatchWriter::BatchWriter(const Shape& shape, const Normalize& normalize,
                         std::uint32_t crop_padding, bool horizontal_flip)
    : shape_(shape),
      to_float_(normalize.to_float || !normalize.mean.empty() || !normalize.std.empty()),
      padding_(crop_padding),
      flip_(horizontal_flip) {
  const std::size_t c = shape.channels;
  auto check = [&](const std::vector<float>& v, const char* what) {
    if (!v.empty() && v.size() != 1 && v.size() != c) {
      throw UsageError(fmt::format("normalisation {} has {} values for images of {} channels",
                                   what, v.size(), c));
    }
  };
  check(normalize.mean, "mean");
  check(normalize.std, "std");
  if (!to_float_) return;
  scale_.resize(c);
  bias_.resize(c);
  for (std::size_t ch = 0; ch < c; ++ch) {
    const double mean = normalize.mean.empty() ? 0.0 : normalize.mean[normalize.mean.size() == 1 ? 0 : ch];
    const double sd = normalize.std.empty() ? 1.0 : normalize.std[normalize.std.size() == 1 ? 0 : ch];
    if (!(std::fabs(sd) > 0) || !std::isfinite(sd) || !std::isfinite(mean)) {
      throw UsageError(fmt::format("normalisation of channel {}: mean {} / std {} is not usable",
                                   ch, mean, sd));
    }
    scale_[ch] = static_cast<float>(1.0 / (255.0 * sd));
    bias_[ch] = static_cast<float>(-mean / sd);
  }
}

Augmentation BatchWriter::draw(std::uint64_t seed, std::uint64_t epoch,
                               std::uint64_t index) const {
  Augmentation aug;
  if (!augments()) return aug;
  SplitMix rng(mix_seed(mix_seed(seed, epoch), index));
  if (padding_ > 0) {
    const std::int64_t pad = padding_;
    aug.shift_y = static_cast<std::int32_t>(static_cast<std::int64_t>(rng.below(2 * pad + 1)) - pad);
    aug.shift_x = static_cast<std::int32_t>(static_cast<std::int64_t>(rng.below(2 * pad + 1)) - pad);
  }
  if (flip_) aug.flip = (rng.next() >> 63) != 0;
  return aug;
}

// Float results must not depend on which ISA clone runs (FMA fuses v * scale + bias with one
// rounding instead of two), or batches would differ between machines.
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC optimize("fp-contract=off")
#endif

namespace {

// n pixels of interleaved `src` into the channel planes at `out` (plane elements apart):
// out[ch*plane + i] = f(src pixel i). kC: channels if known at compile time, 0 for any count.
// Floats are v * scale[ch] + bias[ch], rounded twice in every clone (see the pragma above).
template <typename T, std::size_t kC>
IMGSTORE_ISA_CLONES void convert_run(const std::uint8_t* __restrict src, T* __restrict out,
                                     std::size_t plane, std::size_t n, std::size_t channels,
                                     const float* __restrict scale, const float* __restrict bias) {
  const std::size_t c = kC ? kC : channels;
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint8_t* px = src + i * c;
    for (std::size_t ch = 0; ch < c; ++ch) {
      if constexpr (std::is_same_v<T, float>) {
        out[ch * plane + i] = static_cast<float>(px[ch]) * scale[ch] + bias[ch];
      } else {
        out[ch * plane + i] = px[ch];
      }
    }
  }
}

// Reverses each of `rows` rows of w elements in place (the horizontal flip).
template <typename T>
IMGSTORE_ISA_CLONES void reverse_rows(T* __restrict data, std::size_t rows, std::size_t w) {
  T tmp[256];
  for (std::size_t r = 0; r < rows; ++r) {
    T* row = data + r * w;
    if (w <= 256) {
      for (std::size_t x = 0; x < w; ++x) tmp[x] = row[w - 1 - x];
      std::memcpy(row, tmp, w * sizeof(T));
    } else {
      std::reverse(row, row + w);
    }
  }
}

// One image HWC -> CHW with crop shift and flip. Crop then flip, as torchvision's
// RandomCrop(padding) + RandomHorizontalFlip:
// out[y][x] = src[y + shift_y][x' + shift_x] with x' = flip ? w-1-x : x; 0 outside the image.
template <typename T, std::size_t kC>
void write_image(const std::uint8_t* hwc, T* out, std::size_t h, std::size_t w,
                 std::size_t channels, const float* scale, const float* bias,
                 const Augmentation& aug) {
  const std::size_t c = kC ? kC : channels;
  const std::size_t plane = h * w;
  if (aug.shift_y == 0 && aug.shift_x == 0 && !aug.flip) {
    if constexpr (std::is_same_v<T, std::uint8_t>) {
      if (c == 1) {
        std::memcpy(out, hwc, plane);
        return;
      }
    }
    convert_run<T, kC>(hwc, out, plane, plane, c, scale, bias);
    return;
  }
  // Crop: shift the HWC image into per-thread scratch (zero bytes outside the source), so the
  // conversion below runs over whole planes, where it vectorises; then flip rows in place.
  thread_local std::vector<std::uint8_t> shifted;
  shifted.assign(plane * c, 0);
  const std::ptrdiff_t sh = static_cast<std::ptrdiff_t>(h), sw = static_cast<std::ptrdiff_t>(w);
  const std::ptrdiff_t dy = aug.shift_y, dx = aug.shift_x;
  const std::ptrdiff_t x0 = std::max<std::ptrdiff_t>(0, -dx), x1 = std::min(sw, sw - dx);
  if (x0 < x1) {
    for (std::ptrdiff_t y = std::max<std::ptrdiff_t>(0, -dy); y < std::min(sh, sh - dy); ++y) {
      std::memcpy(shifted.data() + (static_cast<std::size_t>(y) * w + x0) * c,
                  hwc + (static_cast<std::size_t>(y + dy) * w + (x0 + dx)) * c,
                  static_cast<std::size_t>(x1 - x0) * c);
    }
  }
  convert_run<T, kC>(shifted.data(), out, plane, plane, c, scale, bias);
  if (aug.flip) reverse_rows(out, c * h, w);
}

template <typename T>
void write_any(const std::uint8_t* hwc, T* out, const Shape& s, const float* scale,
               const float* bias, const Augmentation& aug) {
  switch (s.channels) {
    case 1: return write_image<T, 1>(hwc, out, s.height, s.width, 1, scale, bias, aug);
    case 3: return write_image<T, 3>(hwc, out, s.height, s.width, 3, scale, bias, aug);
    case 4: return write_image<T, 4>(hwc, out, s.height, s.width, 4, scale, bias, aug);
    default:
      return write_image<T, 0>(hwc, out, s.height, s.width, s.channels, scale, bias, aug);
  }
}

}  // namespace

void BatchWriter::write(const std::uint8_t* hwc, void* out, std::size_t slot,
                        const Augmentation& aug) const {
  const std::size_t offset = slot * elements();
  if (to_float_) {
    write_any(hwc, static_cast<float*>(out) + offset, shape_, scale_.data(), bias_.data(), aug);
  } else {
    write_any(hwc, static_cast<std::uint8_t*>(out) + offset, shape_, nullptr, nullptr, aug);
  }
}

std::uint8_t* thread_scratch(std::size_t bytes) {
  thread_local std::vector<std::uint8_t> scratch;
  if (scratch.size() < bytes) scratch.resize(bytes);
  return scratch.data();
}

// ---- Crop transforms ----

Shape output_shape(const StoreReader& reader, const CropTransform& t) {
  if (!t.enabled()) return reader.shape();
  return Shape{t.height, t.width, reader.shape().channels};
}

void check_transform(const StoreReader& reader, const CropTransform& t,
                     std::uint32_t crop_padding, const char* who) {
  validate(t);
  if (reader.variable_size() && !t.enabled()) {
    throw UsageError(fmt::format("{}: '{}' holds images of different sizes; set a crop transform "
                                 "(e.g. CropTransform::random_resized_crop(224) or "
                                 "resize_center_crop(224)) to batch them",
                                 who, reader.path().string()));
  }
  if (t.enabled() && crop_padding > 0) {
    throw UsageError(fmt::format("{}: crop_padding {} and a crop transform exclude each other; "
                                 "use one",
                                 who, crop_padding));
  }
}

void fill_cropped(const StoreReader& reader, const CropTransform& t, const BatchWriter& writer,
                  std::uint64_t seed, std::uint64_t epoch, const std::uint64_t* indices,
                  std::size_t n, void* out, std::int64_t* labels) {
  // One record's payload, its decode and its crop at a time, reused by this thread.
  thread_local EncodedRecord record;
  thread_local CropScratch scratch;
  thread_local std::string what;
  std::uint8_t* hwc = thread_scratch(writer.elements());
  for (std::size_t i = 0; i < n; ++i) {
    reader.read_record(indices[i], record);
    what.clear();
    fmt::format_to(std::back_inserter(what), "record {} of '{}'", indices[i],
                   reader.path().native());  // native(): no temporary string per record
    if (record.shape.channels != reader.shape().channels) {
      throw DataError(fmt::format("{}: {} channels, the store has {}", what,
                                  record.shape.channels, reader.shape().channels));
    }
    const CropPlan plan =
        plan_crop(t, seed, epoch, indices[i], record.shape.height, record.shape.width);
    apply_crop(plan, record, hwc, scratch, what);
    if (labels) labels[i] = record.label;
    writer.write(hwc, out, i);
  }
}

}  // namespace imgstore::detail
