// torch::data datasets over StoreReader: one preallocated [B,C,H,W] tensor per batch.
#include "imgstore/torch/dataset.hpp"

#include <fmt/format.h>
#include <torch/torch.h>

#include "batch_fill.hpp"
#include "batch_pool.hpp"
#include "imgstore/error.hpp"

namespace imgstore {

namespace {

std::shared_ptr<const StoreReader> open_checked(const std::filesystem::path& path,
                                                const ReaderOptions& options,
                                                const std::optional<Format>& expected) {
  std::shared_ptr<const StoreReader> reader = open_store(path, options);
  if (expected && reader->format() != *expected) {
    throw UsageError(fmt::format("'{}' is a {} store, not {}", path.string(),
                                 to_string(reader->format()), to_string(*expected)));
  }
  return reader;
}

// Reads n records and writes them transformed into `out` (B >= n slots). Uses the calling
// thread's scratch for the HWC reads, so repeated batches do not touch fresh pages.
void fill_batch(const StoreReader& reader, const detail::BatchWriter& writer,
                const std::uint64_t* indices, std::size_t n, void* out, std::int64_t* labels) {
  const std::size_t bytes = reader.image_bytes();
  if (!writer.to_float() && reader.shape().channels == 1) {
    // HWC is CHW for one channel: read straight into place.
    reader.read_many(indices, n, static_cast<std::uint8_t*>(out), labels);
    return;
  }
  std::uint8_t* scratch = detail::thread_scratch(n * bytes);
  reader.read_many(indices, n, scratch, labels);
  for (std::size_t i = 0; i < n; ++i) writer.write(scratch + i * bytes, out, i);
}

}  // namespace

StoreDataset::StoreDataset(const std::filesystem::path& path, const DatasetOptions& options)
    : StoreDataset(open_checked(path, options.reader, options.format), options.normalize,
                   options.transform, options.seed) {}

StoreDataset::StoreDataset(std::shared_ptr<const StoreReader> reader, const Normalize& normalize)
    : StoreDataset(std::move(reader), normalize, CropTransform{}) {}

StoreDataset::StoreDataset(std::shared_ptr<const StoreReader> reader, const Normalize& normalize,
                           const CropTransform& transform, std::uint64_t seed)
    : reader_(std::move(reader)), normalize_(normalize), transform_(transform), seed_(seed) {
  if (!reader_) throw UsageError("StoreDataset needs a reader, got null");
  detail::check_transform(*reader_, transform_, 0, "StoreDataset");
  // Validates the normalisation against the channel count now rather than on the first batch.
  detail::BatchWriter(reader_->shape(), normalize_, 0, false);
}

torch::Dtype StoreDataset::dtype() const {
  const bool to_float = normalize_.to_float || !normalize_.mean.empty() || !normalize_.std.empty();
  return to_float ? torch::kFloat32 : torch::kUInt8;
}

torch::data::Example<> StoreDataset::get(std::size_t index) const {
  const std::uint64_t i = index;
  auto batch = read_batch(&i, 1);
  return {batch.data[0], batch.target[0]};
}

torch::data::Example<> StoreDataset::get_batch(c10::ArrayRef<std::size_t> indices) {
  static_assert(sizeof(std::size_t) == sizeof(std::uint64_t), "size_t is 64-bit here");
  return read_batch(reinterpret_cast<const std::uint64_t*>(indices.data()), indices.size());
}

torch::data::Example<> StoreDataset::read_batch(const std::uint64_t* indices,
                                                std::size_t n) const {
  const Shape s = detail::output_shape(*reader_, transform_);
  detail::BatchWriter writer(s, normalize_, 0, false);
  auto data = detail::empty_batch_tensor(
      {static_cast<std::int64_t>(n), static_cast<std::int64_t>(s.channels),
       static_cast<std::int64_t>(s.height), static_cast<std::int64_t>(s.width)},
      dtype());
  auto target = torch::empty({static_cast<std::int64_t>(n)}, torch::kInt64);
  if (transform_.enabled()) {
    detail::fill_cropped(*reader_, transform_, writer, seed_, epoch(), indices, n, data.data_ptr(),
                         target.data_ptr<std::int64_t>());
  } else {
    fill_batch(*reader_, writer, indices, n, data.data_ptr(), target.data_ptr<std::int64_t>());
  }
  return {std::move(data), std::move(target)};
}

StoreDataset open_dataset(const std::filesystem::path& path, const DatasetOptions& options) {
  return StoreDataset(path, options);
}

}  // namespace imgstore
