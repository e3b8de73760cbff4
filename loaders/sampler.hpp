// Sampling for the prefetch loader: which records this rank reads in each epoch, in what order,
// and where in that sequence of epochs the loader stands (for checkpoints and resume).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <utility>
#include <vector>

#include "imgstore/store.hpp"
#include "imgstore/torch/loader.hpp"

namespace imgstore::detail {

// The epoch's order of records first, first + 1, ..., first + n - 1, written to out[0, n):
// window == 0 (or >= n): one seeded permutation of them all. Otherwise quasi-random: windows
// of `window` consecutive records (the last may be shorter) in a seeded order, each window's
// records in its own seeded order, so records of one window are read close together.
void shuffled_order(std::uint64_t first, std::size_t n, std::size_t window, std::uint64_t seed,
                    std::uint64_t* out);

// DistributedSampler semantics over `count` records for one epoch: seeded permutation (or
// quasi-random windows, or identity), padded by repeating its start to a multiple of world_size (or cut when drop_last),
// then rank's positions rank, rank + world_size, ...
struct SamplingPlan {
  std::uint64_t count = 0;
  bool shuffle = true;
  std::size_t shuffle_window = 0;
  std::uint64_t seed = 0;
  bool drop_last = false;
  std::size_t rank = 0;
  std::size_t world_size = 1;
  std::size_t batch_size = 1;

  std::size_t samples_per_rank() const;
  std::size_t batches() const;
  std::vector<std::uint64_t> indices(std::uint64_t epoch) const;
};

// This rank's records per epoch: DistributedSampler slices (SamplingPlan), or whole shards of a
// sharded store (options.whole_shards). Batch k of an epoch depends only on (options, epoch).
class Sampler {
 public:
  // Throws UsageError if whole shards cannot be shared out (fewer shards than ranks, or this
  // rank's shards are empty), DataError if the store's shard ranges are not in order.
  Sampler(const StoreReader& reader, const LoaderOptions& options);

  std::size_t batches() const;
  std::size_t samples() const;
  std::vector<std::uint64_t> indices(std::uint64_t epoch) const;

 private:
  struct Shard {
    std::size_t id;
    std::uint64_t begin, end;
  };

  void plan_shards(const StoreReader& reader, const LoaderOptions& o);
  std::vector<std::uint64_t> shard_indices(std::uint64_t epoch) const;

  SamplingPlan plan_;
  bool whole_shards_ = false;
  std::vector<Shard> shards_;  // this rank's shards, ascending
  std::size_t own_ = 0;        // records in them
  std::size_t per_rank_ = 0;   // samples per rank before drop_last's batch cut
};

// Quasi-random order over a store larger than memory: the first batch to reach a window of
// records asks the reader to read the whole window ahead (StoreReader::will_need), and so
// does the window the next batch reaches, so the window arrives in large requests instead of
// one page fault per record. Off for the full shuffle, and for ranks that read every
// world_size-th record (they would each read the whole window); whole shards keep it.
// Called from the loader's threads at once.
class WindowHints {
 public:
  explicit WindowHints(const LoaderOptions& options);
  bool enabled() const { return window_ != 0; }
  // A new pass: every window may be hinted again.
  void reset();
  // Before the batch of positions [first, first + n) of `indices` (this pass's order) is read.
  void before_batch(const StoreReader& reader, const std::vector<std::uint64_t>& indices,
                    std::size_t first, std::size_t n);

 private:
  // True the first time `window` is seen among the last few (this call should hint it).
  bool first_sight(std::uint64_t window);

  std::uint64_t window_ = 0;  // records per window; 0: off
  std::mutex mutex_;
  std::array<std::uint64_t, 8> recent_{};  // windows hinted lately, a ring
  std::size_t next_ = 0;
};

// Where the loader stands in its sequence of passes: the next pass's epoch and first batch,
// and, while a pass is consumed, how many of its batches the training loop has taken. Used by
// the consumer's thread only.
class Position {
 public:
  struct Pass {
    std::uint64_t epoch;
    std::size_t first_batch;
  };
  // begin(): the pass to run now (of `batches` batches); later passes take the next epoch.
  Pass begin_pass(std::size_t batches);
  // The consumer took batch `batch` of the current pass.
  void taken(std::size_t batch) { consumed_ = batch + 1; }
  // set_epoch(): keeps a restored position of that same epoch.
  void set_epoch(std::uint64_t epoch);
  std::uint64_t next_epoch() const { return next_epoch_; }
  // (epoch, batches consumed) for state(). A finished pass reads as the start of the next
  // epoch, so a checkpoint taken on the last batch resumes with the next epoch.
  std::pair<std::uint64_t, std::uint64_t> saved() const;
  // restore(): a complete epoch (batches_consumed == batches > 0) resumes with the next one.
  void restore(std::uint64_t epoch, std::uint64_t batches_consumed, std::size_t batches);

 private:
  std::uint64_t next_epoch_ = 0;
  std::size_t next_offset_ = 0;  // first batch of the next pass (set by restore())
  std::uint64_t pass_epoch_ = 0;
  std::size_t pass_batches_ = 0;
  std::size_t consumed_ = 0;
  bool from_pass_ = false;  // saved() reports the pass, not the next pass's position
};

}  // namespace imgstore::detail
