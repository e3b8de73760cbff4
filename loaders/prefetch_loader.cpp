// PrefetchLoader: a thin composition of its parts, each in its own file.
//   sampler.{hpp,cpp}     this rank's record order per epoch (DistributedSampler slices or whole
//                         shards), and the position a checkpoint saves (Position)
//   batch_pool.{hpp,cpp}  prefetch_depth recycled [B,C,H,W] slots: bounds memory
//   pipeline.{hpp,cpp}    the tbb::parallel_pipeline on a background thread, error hand-off
//   batch_fill.{hpp,cpp}  augmentation draws and the HWC -> CHW writer the fill stage uses
//
// Resume: the consumer counts the batches it has taken; state() reports that position and
// restore() makes the next pass start its input stage at that batch. Batch k of an epoch
// depends only on (options, epoch, k), so the resumed pass yields what the interrupted one would
// have, and batches prefetched but never taken are simply built again.
#include "imgstore/torch/loader.hpp"

#include <algorithm>
#include <exception>
#include <tuple>
#include <utility>

#include <fmt/format.h>
#include <oneapi/tbb/task_arena.h>
#include <torch/torch.h>

#include "batch_fill.hpp"
#include "batch_pool.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"
#include "pipeline.hpp"
#include "sampler.hpp"

namespace imgstore {

namespace {

// Rethrows `e` with " (while loading batch k of epoch e from 'path')" appended, keeping
// imgstore's exception types so callers can still tell corrupt data from a caller error.
std::exception_ptr with_context(std::exception_ptr e, const std::string& context) {
  try {
    std::rethrow_exception(e);
  } catch (const DataError& x) {
    return std::make_exception_ptr(DataError(std::string(x.what()) + context));
  } catch (const IoError& x) {
    return std::make_exception_ptr(IoError(std::string(x.what()) + context));
  } catch (const UsageError& x) {
    return std::make_exception_ptr(UsageError(std::string(x.what()) + context));
  } catch (const Error& x) {
    return std::make_exception_ptr(Error(std::string(x.what()) + context));
  } catch (...) {
    return e;  // foreign types (bad_alloc, c10::Error) pass through unchanged
  }
}

const StoreReader& checked(const std::shared_ptr<const StoreReader>& r, const LoaderOptions& o) {
  if (!r) throw UsageError("PrefetchLoader needs a reader, got null");
  if (o.batch_size == 0) throw UsageError("PrefetchLoader: batch_size must be at least 1");
  if (o.prefetch_depth == 0) throw UsageError("PrefetchLoader: prefetch_depth must be at least 1");
  if (o.world_size == 0 || o.rank >= o.world_size) {
    throw UsageError(fmt::format("PrefetchLoader: rank {} is not below world_size {}", o.rank,
                                 o.world_size));
  }
  detail::check_transform(*r, o.transform, o.crop_padding, "PrefetchLoader");
  if (!o.transform.enabled() &&
      (o.crop_padding > r->shape().height || o.crop_padding > r->shape().width)) {
    throw UsageError(fmt::format("PrefetchLoader: crop padding {} exceeds the image size {}",
                                 o.crop_padding, to_string(r->shape())));
  }
  return *r;
}

// With a crop transform the flip is part of it: horizontal_flip means probability 1/2.
CropTransform effective_transform(const LoaderOptions& o) {
  CropTransform t = o.transform;
  if (t.enabled() && o.horizontal_flip) t.flip_probability = std::max(t.flip_probability, 0.5);
  return t;
}

std::string hex(std::uint64_t v) { return "0x" + to_hex64(v); }

// restore()'s refusal of a state taken with another store or other options.
void check_compatible(const LoaderState& saved, const LoaderState& mine,
                      const std::filesystem::path& store) {
  if (saved.store_count != mine.store_count) {
    throw UsageError(fmt::format("loader state is from another data set: store count {} vs {} "
                                 "in '{}'",
                                 saved.store_count, mine.store_count, store.string()));
  }
  if (saved.content_digest != mine.content_digest) {
    throw UsageError(fmt::format("loader state is from another data set: content digest {} vs "
                                 "{} in '{}'",
                                 hex(saved.content_digest), hex(mine.content_digest),
                                 store.string()));
  }
  auto differs = [](const char* field, auto ours_saved, auto ours) {
    if (ours_saved == ours) return;
    throw UsageError(fmt::format("loader state does not match this loader: {} {} vs {}", field,
                                 ours_saved, ours));
  };
  differs("seed", saved.seed, mine.seed);
  differs("batch_size", saved.batch_size, mine.batch_size);
  differs("shuffle", saved.shuffle, mine.shuffle);
  differs("shuffle_window", saved.shuffle_window, mine.shuffle_window);
  differs("drop_last", saved.drop_last, mine.drop_last);
  differs("whole_shards", saved.whole_shards, mine.whole_shards);
  differs("rank", saved.rank, mine.rank);
  differs("world_size", saved.world_size, mine.world_size);
}

}  // namespace

struct PrefetchLoader::State {
  std::shared_ptr<const StoreReader> reader;
  LoaderOptions options;
  detail::Sampler sampler;
  CropTransform transform;  // options.transform with horizontal_flip folded in
  detail::BatchWriter writer;
  detail::Position position;
  detail::WindowHints hints;
  // The pass being run: set before the pipeline starts, read-only while it runs.
  std::uint64_t epoch = 0;
  std::vector<std::uint64_t> indices;
  detail::SlotPool pool;
  detail::Pipeline pipeline;  // after what its fill stage reads, so it stops first
  // The consumer's side.
  detail::Slot* current = nullptr;  // the batch the consumer holds
  torch::data::Example<> example;   // views of current

  State(std::shared_ptr<const StoreReader> r, const LoaderOptions& o)
      : reader(std::move(r)),
        options(o),
        sampler(checked(reader, o), o),
        transform(effective_transform(o)),
        writer(detail::output_shape(*reader, o.transform), o.normalize, o.crop_padding,
               o.horizontal_flip && !o.transform.enabled()),
        hints(o),
        pool(o.prefetch_depth),
        pipeline(o.threads, o.prefetch_depth, pool, [this](detail::Slot& s) { fill(s); }) {}

  ~State() { release_current(); }

  void release_current() {
    example = torch::data::Example<>();
    if (current) pool.release(std::exchange(current, nullptr));
  }

  void cancel() {
    release_current();
    pipeline.cancel();
  }

  void start() {
    cancel();
    const std::size_t batches = sampler.batches();
    const detail::Position::Pass pass = position.begin_pass(batches);
    epoch = pass.epoch;
    indices = sampler.indices(epoch);
    hints.reset();
    pipeline.start(pass.first_batch, batches);
  }

  // Consumer: the next batch, or false at the end of the pass. Throws a failed batch's error.
  bool next() {
    release_current();
    current = pipeline.next();
    if (!current) return false;
    position.taken(current->batch);
    example = current->example();
    return true;
  }

  // The fill stage: read the batch's records into per-thread scratch, then write them
  // transposed and transformed into the slot's tensor.
  void fill(detail::Slot& s) {
    try {
      s.allocate(options.batch_size, detail::output_shape(*reader, transform), writer.to_float());
      const std::size_t first = s.batch * options.batch_size;
      s.n = std::min(options.batch_size, indices.size() - first);
      const std::uint64_t* idx = indices.data() + first;
      hints.before_batch(*reader, indices, first, s.n);
      std::int64_t* labels = s.target.data_ptr<std::int64_t>();
      if (transform.enabled()) {
        tbb::this_task_arena::isolate([&] {
          detail::fill_cropped(*reader, transform, writer, options.seed, epoch, idx, s.n,
                               s.data.data_ptr(), labels);
        });
        return;
      }
      // Isolated: a reader may run its own parallel_for (PNG decodes in parallel). Without
      // isolation a thread waiting for that loop can steal the pipeline's input stage, which
      // blocks until the consumer frees a buffer, stalling the whole batch behind it.
      auto read = [&](std::uint8_t* out) {
        tbb::this_task_arena::isolate([&] { reader->read_many(idx, s.n, out, labels); });
      };
      if (!writer.to_float() && !writer.augments() && reader->shape().channels == 1) {
        read(s.data.data_ptr<std::uint8_t>());  // CHW = HWC: straight into the batch
        return;
      }
      const std::size_t bytes = reader->image_bytes();
      std::uint8_t* scratch = detail::thread_scratch(s.n * bytes);
      read(scratch);
      void* out = s.data.data_ptr();
      for (std::size_t i = 0; i < s.n; ++i) {
        writer.write(scratch + i * bytes, out, i, writer.draw(options.seed, epoch, idx[i]));
      }
    } catch (...) {
      s.error = with_context(std::current_exception(),
                             fmt::format(" (while loading batch {} of epoch {} from '{}')",
                                         s.batch, epoch, reader->path().string()));
    }
  }
};

PrefetchLoader::PrefetchLoader(const std::filesystem::path& path, const LoaderOptions& options)
    : PrefetchLoader(std::shared_ptr<const StoreReader>(open_store(path, options.reader)),
                     options) {}

PrefetchLoader::PrefetchLoader(std::shared_ptr<const StoreReader> reader,
                               const LoaderOptions& options)
    : state_(std::make_unique<State>(std::move(reader), options)) {}

PrefetchLoader::PrefetchLoader(const StoreDataset& dataset, const LoaderOptions& options)
    : PrefetchLoader(dataset.shared_reader(), options) {}

PrefetchLoader::~PrefetchLoader() = default;
PrefetchLoader::PrefetchLoader(PrefetchLoader&&) noexcept = default;
PrefetchLoader& PrefetchLoader::operator=(PrefetchLoader&&) noexcept = default;

PrefetchLoader::Iterator PrefetchLoader::begin() {
  state_->start();
  if (!state_->next()) return end();
  return Iterator(state_.get());
}

PrefetchLoader::Iterator PrefetchLoader::end() { return Iterator(); }

void PrefetchLoader::set_epoch(std::uint64_t epoch) { state_->position.set_epoch(epoch); }
std::uint64_t PrefetchLoader::epoch() const { return state_->position.next_epoch(); }
std::size_t PrefetchLoader::batches_per_epoch() const { return state_->sampler.batches(); }
std::size_t PrefetchLoader::samples_per_epoch() const { return state_->sampler.samples(); }
std::vector<std::uint64_t> PrefetchLoader::epoch_indices(std::uint64_t epoch) const {
  return state_->sampler.indices(epoch);
}

LoaderState PrefetchLoader::state() const {
  const State& st = *state_;
  LoaderState s;
  std::tie(s.epoch, s.batches_consumed) = st.position.saved();
  const LoaderOptions& o = st.options;
  s.seed = o.seed;
  s.shuffle = o.shuffle;
  s.shuffle_window = o.shuffle_window;
  s.drop_last = o.drop_last;
  s.whole_shards = o.whole_shards;
  s.batch_size = o.batch_size;
  s.rank = o.rank;
  s.world_size = o.world_size;
  s.store_count = st.reader->size();
  s.content_digest = st.reader->manifest().content_digest;
  return s;
}

void PrefetchLoader::restore(const LoaderState& s) {
  State& st = *state_;
  check_compatible(s, state(), st.reader->path());
  const std::size_t batches = st.sampler.batches();
  if (s.batches_consumed > batches) {
    throw UsageError(fmt::format("loader state: batches_consumed {} exceeds the {} batches of an "
                                 "epoch",
                                 s.batches_consumed, batches));
  }
  st.cancel();
  st.position.restore(s.epoch, s.batches_consumed, batches);
}

const LoaderOptions& PrefetchLoader::options() const { return state_->options; }
const StoreReader& PrefetchLoader::reader() const { return *state_->reader; }
void PrefetchLoader::cancel() { state_->cancel(); }

PrefetchLoader::Iterator::reference PrefetchLoader::Iterator::operator*() const {
  return state_->example;
}
PrefetchLoader::Iterator::pointer PrefetchLoader::Iterator::operator->() const {
  return &state_->example;
}
PrefetchLoader::Iterator& PrefetchLoader::Iterator::operator++() {
  if (!state_->next()) state_ = nullptr;
  return *this;
}

}  // namespace imgstore
