// The prefetching loader: batches [B,C,H,W] read, decoded and transformed by a TBB pipeline
// ahead of the training loop.
//
//   #include "imgstore/torch/loader.hpp"
//
//   imgstore::LoaderOptions opts;
//   opts.batch_size = 256;
//   opts.threads = 2;                       // its own tbb::task_arena
//   opts.normalize = imgstore::Normalize::mean_std({0.4914f, 0.4822f, 0.4465f},
//                                                  {0.2470f, 0.2435f, 0.2616f});
//   opts.crop_padding = 4;                  // random 32x32 crop of the image padded by 4
//   opts.horizontal_flip = true;            // flip half of the images
//   opts.rank = rank; opts.world_size = world;  // optional sharding
//   imgstore::PrefetchLoader loader("data/train.lmdb", opts);
//   for (int epoch = 0; epoch < 10; ++epoch) {
//     loader.set_epoch(epoch);              // optional: a pass otherwise takes the next epoch
//     for (auto& batch : loader) {          // torch::data::Example<>
//       auto out = model->forward(batch.data);   // float32 [256,3,32,32]
//       auto loss = torch::nll_loss(out, batch.target);  // int64 [256]
//     }
//   }
//
// Photos of any size (variable-size JPEG/PNG/raw stores, or fixed-size ones): crop and resize
// each record in the parallel stage, as torchvision's RandomResizedCrop / Resize + CenterCrop
// (docs/crop_transforms.md):
//
//   opts.transform = imgstore::CropTransform::random_resized_crop(224);  // batches [B,3,224,224]
//   opts.crop_padding = 0;                  // not with a transform
//
// How it works: a tbb::parallel_pipeline on a background thread, in an arena of `threads`
// threads: a serial in-order stage takes the next batch's indices and a free buffer from a pool
// of `prefetch_depth` buffers, a parallel stage reads the records (StoreReader::read_many into
// per-thread scratch) and writes them transposed and transformed into the buffer, and a serial
// in-order stage hands the batch to the consumer. Buffers are recycled, so memory stays flat.
//
// Guarantees:
// - The batches depend only on the options, the seed and the epoch: never on the thread count
//   or timing. Shuffling is a seeded permutation per epoch; augmentation draws from a seed
//   derived from (seed, epoch, record index).
// - Sharding follows PyTorch's DistributedSampler: the epoch's permutation is padded (by
//   repeating its start) to a multiple of world_size, or cut when drop_last, and rank r takes
//   positions r, r+world_size, ...; so every rank gets the same number of batches.
// - Leaving a loop early is fine: the next pass cancels the pipeline and starts cleanly.
// - A failing read (e.g. a corrupt record) is rethrown to the consumer, with its type, from
//   the iterator, after the batches before it; the loader stays usable.
// - The batch a loop iteration sees is valid until the iterator advances, when its buffer
//   goes back to the pool. Clone it to keep it. (If you keep a reference anyway, the loader
//   notices and gives that buffer up instead of overwriting it.)
// - prefetch_depth counts every batch buffer, including the one the loop holds, so use 2 or
//   more to overlap loading with training. One pass at a time per loader; a moved-from loader
//   may only be destroyed or assigned to.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <iterator>
#include <memory>
#include <string>
#include <vector>

#include <torch/data/example.h>

#include "imgstore/crop_transform.hpp"
#include "imgstore/torch/dataset.hpp"

namespace imgstore {

struct LoaderOptions {
  std::size_t batch_size = 64;
  bool shuffle = true;
  // Quasi-random order (as FFCV's QUASI_RANDOM), for stores larger than memory: 0 shuffles all
  // records at once; W > 0 cuts the store into windows of W consecutive records, shuffles the
  // windows' order and the records within each window. Each window is then read within a
  // short stretch of the epoch, so the page cache and readahead serve it instead of one random
  // disk read per record. Same determinism, sharding and resume as the full shuffle.
  std::size_t shuffle_window = 0;
  std::uint64_t seed = 0;
  bool drop_last = false;          // drop the last partial batch (and uneven shard tail)
  std::size_t prefetch_depth = 4;  // batches in flight or ready; bounds memory (>= 1)
  unsigned threads = 0;            // threads of the pipeline's arena; 0: all cores (also the cap)
  std::size_t rank = 0;            // this process's shard, < world_size
  std::size_t world_size = 1;
  // Transforms, run in the parallel stage.
  Normalize normalize;             // uint8 by default; float32 (normalised) when asked
  std::uint32_t crop_padding = 0;  // >0: random crop of the original size from the image
                                   // zero-padded by this many pixels on each side
  bool horizontal_flip = false;    // flip each image left-right with probability 1/2
  // Crop and resize each record to transform's size (imgstore/crop_transform.hpp): batches are
  // then [B, C, transform.height, transform.width] and records are read with read_record (JPEG
  // payloads decoded at the DCT scale the crop needs). Required for variable-size stores; not
  // with crop_padding. horizontal_flip then means transform.flip_probability of at least 1/2.
  CropTransform transform;
  ReaderOptions reader;            // used when the loader opens the store itself
  // Sharded stores only: rank r reads whole shards r, r+world_size, ... (local-disk friendly,
  // as WebDataset/MDS do) instead of a slice of a global permutation. Each epoch shuffles the
  // rank's shard order and the records within them; ranks still take equal step counts
  // (padded, or cut when drop_last).
  bool whole_shards = false;
};

// Where a loader stands, saved with a model checkpoint for an exact mid-epoch resume. A loader
// restored from it yields exactly the batches an uninterrupted run would have yielded next, in
// the same order, whatever the thread count; batches that were prefetched but not consumed are
// simply produced again.
struct LoaderState {
  std::uint64_t epoch = 0;             // epoch in progress
  std::uint64_t batches_consumed = 0;  // batches of that epoch the training loop has taken
  // What the position means; restore() refuses a state that disagrees with the loader.
  std::uint64_t seed = 0;
  bool shuffle = true;
  std::uint64_t shuffle_window = 0;    // 0 in state files written before it existed
  bool drop_last = false;
  bool whole_shards = false;
  std::size_t batch_size = 0;
  std::size_t rank = 0;
  std::size_t world_size = 1;
  std::uint64_t store_count = 0;
  std::uint64_t content_digest = 0;    // the store's Manifest::content_digest

  std::string to_json() const;
  // Throws DataError naming `what` on malformed text.
  static LoaderState from_json(const std::string& text, const std::string& what = "loader state");

  // Writes to_json() to `path` atomically: a temporary name beside it, fsynced (unless
  // !durable, enough against a killed process but not against power loss), renamed over `path`,
  // then the directory fsynced. `path` holds the whole new state or, after any failure, what it
  // held before. Throws IoError naming the file.
  void save(const std::filesystem::path& path, bool durable = true) const;
  // Reads a file save() wrote. Throws IoError (unreadable) or DataError (not a loader state),
  // naming the file.
  static LoaderState load(const std::filesystem::path& path);
};

class PrefetchLoader {
 public:
  class Iterator;

 private:
  struct State;

 public:
  // Opens the store at `path` (any format).
  PrefetchLoader(const std::filesystem::path& path, const LoaderOptions& options = {});
  // Shares a reader, or a dataset's reader (options.normalize is used, not the dataset's).
  PrefetchLoader(std::shared_ptr<const StoreReader> reader, const LoaderOptions& options = {});
  PrefetchLoader(const StoreDataset& dataset, const LoaderOptions& options = {});
  // Cancels any running pass and joins its thread.
  ~PrefetchLoader();
  PrefetchLoader(const PrefetchLoader&) = delete;
  PrefetchLoader& operator=(const PrefetchLoader&) = delete;
  PrefetchLoader(PrefetchLoader&&) noexcept;
  PrefetchLoader& operator=(PrefetchLoader&&) noexcept;

  // Starts a pass over epoch epoch() (cancelling any unfinished one), then advances epoch()
  // by one. Throws what the first batch's read threw.
  Iterator begin();
  Iterator end();

  // The epoch the next pass uses. Call before each pass for DistributedSampler-style control.
  void set_epoch(std::uint64_t epoch);
  std::uint64_t epoch() const;
  // Batches per pass for this rank.
  std::size_t batches_per_epoch() const;
  // Samples per pass for this rank (after padding or drop_last).
  std::size_t samples_per_epoch() const;
  // The record indices this rank visits in `epoch`, in order (what the batches hold).
  std::vector<std::uint64_t> epoch_indices(std::uint64_t epoch) const;

  // The position after the batches handed out so far (the batch the loop holds counts as
  // consumed). Save it with the checkpoint.
  LoaderState state() const;
  // Makes the next begin() resume at state's epoch and batch. Throws UsageError, naming the
  // field, if the state was taken with another store (count or digest), seed, batch size,
  // shuffle, shuffle_window, drop_last, whole_shards, rank or world size. Cancels any running pass.
  void restore(const LoaderState& state);

  const LoaderOptions& options() const;
  const StoreReader& reader() const;

  // Stops a running pass now (what begin() does implicitly). Safe to call any time.
  void cancel();

  class Iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = torch::data::Example<>;
    using difference_type = std::ptrdiff_t;
    using pointer = value_type*;
    using reference = value_type&;

    Iterator() = default;
    reference operator*() const;
    pointer operator->() const;
    Iterator& operator++();  // returns the current batch's buffer, waits for the next
    bool operator==(const Iterator& other) const { return state_ == other.state_; }
    bool operator!=(const Iterator& other) const { return state_ != other.state_; }

   private:
    friend class PrefetchLoader;
    explicit Iterator(State* state) : state_(state) {}
    State* state_ = nullptr;  // null at the end; owned by the loader
  };

 private:
  std::unique_ptr<State> state_;
};

}  // namespace imgstore
