// LibTorch datasets over imgstore stores.
//
// A dataset is a thin, cheaply copyable handle on a shared, thread-safe StoreReader. It serves
// LibTorch's stock loader as a BatchDataset: get_batch(indices) returns ONE Example whose data
// is a single [B,C,H,W] tensor filled straight from the reader (no per-sample tensors, no
// torch::stack) and whose target is int64 [B]. Copies share the reader, so the stock loader's
// per-worker copies stay cheap and safe.
//
//   #include "imgstore/torch/dataset.hpp"
//
//   imgstore::DatasetOptions opts;
//   opts.normalize = imgstore::Normalize::mean_std({0.4914f, 0.4822f, 0.4465f},
//                                                  {0.2470f, 0.2435f, 0.2616f});
//   opts.format = imgstore::Format::Lmdb;   // optional: refuse any other format
//   auto ds = imgstore::open_dataset("data/train.lmdb", opts);
//   auto loader = torch::data::make_data_loader(
//       ds, torch::data::DataLoaderOptions().batch_size(256).workers(2));
//   for (auto& batch : *loader) {          // batch is torch::data::Example<>
//     // batch.data: float32 [256,3,32,32], batch.target: int64 [256]
//   }
//
// samples() gives the same records one [C,H,W] example at a time, for LibTorch's usual
// per-sample pipeline (slower: one tensor per image, then a torch::stack per batch):
//
//   opts.normalize = imgstore::Normalize::float01();
//   auto samples = imgstore::open_dataset("data/train.lmdb", opts).samples()
//       .map(torch::data::transforms::Normalize<>({0.4914, 0.4822, 0.4465},
//                                                 {0.2470, 0.2435, 0.2616}))
//       .map(torch::data::transforms::Stack<>());
//   auto loader = torch::data::make_data_loader(std::move(samples), 256);
//
// For training throughput prefer imgstore::PrefetchLoader (imgstore/torch/loader.hpp), which
// recycles batch memory and adds shuffling, sharding and augmentation.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include <torch/data/datasets/base.h>
#include <torch/data/example.h>
#include <torch/types.h>

#include "imgstore/crop_transform.hpp"
#include "imgstore/store.hpp"

namespace imgstore {

// Output pixel type and normalisation. Off by default: uint8 [C,H,W] exactly as stored.
// With to_float the output is float32 x/255; mean/std (one value per channel, or one for all)
// then give (x/255 - mean[c]) / std[c], as torchvision's ToTensor + Normalize.
struct Normalize {
  bool to_float = false;
  std::vector<float> mean;  // empty: 0
  std::vector<float> std;   // empty: 1

  static Normalize float01() { return Normalize{true, {}, {}}; }
  static Normalize mean_std(std::vector<float> mean, std::vector<float> std) {
    return Normalize{true, std::move(mean), std::move(std)};
  }
};

struct DatasetOptions {
  ReaderOptions reader;  // used when the dataset opens the store itself
  Normalize normalize;
  // When set, opening a store of another format throws UsageError naming the path, its
  // format and this one.
  std::optional<Format> format = std::nullopt;
  // Crop and resize each record (imgstore/crop_transform.hpp): data is then
  // [B, C, transform.height, transform.width]. Required for variable-size stores. Random crops
  // draw from (seed, epoch, index); the epoch is StoreDataset::set_epoch's, shared by copies.
  CropTransform transform;
  std::uint64_t seed = 0;
};

class SampleView;

// Works over any StoreReader (including your own subclasses).
class StoreDataset
    : public torch::data::datasets::BatchDataset<StoreDataset, torch::data::Example<>> {
 public:
  // Opens the store at `path` (any format unless options.format is set); as open_dataset.
  explicit StoreDataset(const std::filesystem::path& path, const DatasetOptions& options = {});
  // Shares an already open reader. Throws UsageError on a null reader or bad options.
  explicit StoreDataset(std::shared_ptr<const StoreReader> reader,
                        const Normalize& normalize = {});
  // Same, with a crop transform (throws UsageError on a variable-size store without one).
  StoreDataset(std::shared_ptr<const StoreReader> reader, const Normalize& normalize,
               const CropTransform& transform, std::uint64_t seed = 0);

  // One image: data [C,H,W] (uint8, or float32 when normalising), target int64 scalar.
  torch::data::Example<> get(std::size_t index) const;
  // One batch: data [B,C,H,W] in one preallocated tensor, target int64 [B].
  torch::data::Example<> get_batch(c10::ArrayRef<std::size_t> indices) override;
  // Same, const and for 64-bit indices.
  torch::data::Example<> read_batch(const std::uint64_t* indices, std::size_t n) const;

  // The same records one example at a time, as a per-sample torch::data Dataset that
  // composes with LibTorch's transforms (.map(Normalize<>), .map(Stack<>)). Shares the reader.
  SampleView samples() const;

  torch::optional<std::size_t> size() const override { return reader_->size(); }

  const StoreReader& reader() const { return *reader_; }
  const std::shared_ptr<const StoreReader>& shared_reader() const { return reader_; }
  const Normalize& normalize() const { return normalize_; }
  // Element type of data: torch::kUInt8 or torch::kFloat32.
  torch::Dtype dtype() const;
  const CropTransform& transform() const { return transform_; }
  // The epoch random crops draw from. Copies (the stock loader's) share it, so calling it on
  // the dataset you keep reaches the loader's workers.
  void set_epoch(std::uint64_t epoch) { epoch_->store(epoch); }
  std::uint64_t epoch() const { return epoch_->load(); }

 private:
  std::shared_ptr<const StoreReader> reader_;
  Normalize normalize_;
  CropTransform transform_;
  std::uint64_t seed_ = 0;
  std::shared_ptr<std::atomic<std::uint64_t>> epoch_ =
      std::make_shared<std::atomic<std::uint64_t>>(0);
};

// Per-sample view of a StoreDataset: get(i) is StoreDataset::get(i), one [C,H,W] example.
class SampleView : public torch::data::datasets::Dataset<SampleView, torch::data::Example<>> {
 public:
  explicit SampleView(StoreDataset dataset) : dataset_(std::move(dataset)) {}

  torch::data::Example<> get(std::size_t index) override { return dataset_.get(index); }
  torch::optional<std::size_t> size() const override { return dataset_.size(); }

  const StoreDataset& dataset() const { return dataset_; }

 private:
  StoreDataset dataset_;
};

inline SampleView StoreDataset::samples() const { return SampleView(*this); }

// Detects the format at `path` and opens it; with options.format set, refuses any other format
// (UsageError: "'<path>' is a <actual> store, not <expected>").
StoreDataset open_dataset(const std::filesystem::path& path, const DatasetOptions& options = {});

}  // namespace imgstore
