// Internals shared by the datasets and the prefetch loader: augmentation draws and the
// HWC -> CHW batch writer. (Random numbers: detail/random.hpp; sampling: sampler.hpp.)
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "detail/random.hpp"
#include "imgstore/crop_transform.hpp"
#include "imgstore/image.hpp"
#include "imgstore/store.hpp"
#include "imgstore/torch/dataset.hpp"

namespace imgstore::detail {

// Per-sample augmentation, drawn from (seed, epoch, record index).
struct Augmentation {
  std::int32_t shift_y = 0;  // crop offset relative to the unpadded image, -padding..padding
  std::int32_t shift_x = 0;
  bool flip = false;
};

// Writes HWC uint8 images into CHW slots of a uint8 or float32 batch, transforming on the way.
class BatchWriter {
 public:
  BatchWriter(const Shape& shape, const Normalize& normalize, std::uint32_t crop_padding,
              bool horizontal_flip);

  bool to_float() const { return to_float_; }
  bool augments() const { return padding_ > 0 || flip_; }
  std::size_t elements() const { return shape_.bytes(); }  // per image, C*H*W

  Augmentation draw(std::uint64_t seed, std::uint64_t epoch, std::uint64_t index) const;

  // Image `hwc` into slot `slot` of `out` (uint8_t* or float*, per to_float()).
  void write(const std::uint8_t* hwc, void* out, std::size_t slot,
             const Augmentation& aug = {}) const;

 private:
  Shape shape_;
  bool to_float_;
  std::uint32_t padding_;
  bool flip_;
  // float output: v * scale[c] + bias[c] = (v/255 - mean[c]) / std[c]
  std::vector<float> scale_, bias_;
};

// Reusable per-thread scratch for HWC reads (grows to the largest batch, then stays).
std::uint8_t* thread_scratch(std::size_t bytes);

// ---- Crop transforms (imgstore/crop_transform.hpp) in the loader and the datasets ----

// The images' shape in batches: the transform's output size, else the store's shape.
Shape output_shape(const StoreReader& reader, const CropTransform& transform);

// Checks the transform, and refuses (UsageError naming `who` and the store) a variable-size
// store without one, and crop padding together with one.
void check_transform(const StoreReader& reader, const CropTransform& transform,
                     std::uint32_t crop_padding, const char* who);

// Reads records indices[0..n) with read_record, crops and resizes each as `transform` plans for
// (seed, epoch, index), and writes it through `writer` (whose shape is output_shape) into slot
// i of `out`; labels[i] gets its label. Per-thread scratch: no allocation in steady state.
void fill_cropped(const StoreReader& reader, const CropTransform& transform,
                  const BatchWriter& writer, std::uint64_t seed, std::uint64_t epoch,
                  const std::uint64_t* indices, std::size_t n, void* out, std::int64_t* labels);

}  // namespace imgstore::detail
