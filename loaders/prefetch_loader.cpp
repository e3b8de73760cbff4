// The prefetching loader: a tbb::parallel_pipeline on a background thread feeding the consumer.
//
// Memory: a pool of prefetch_depth slots (one [B,C,H,W] tensor and one [B] label tensor each).
// The input stage takes a free slot before it starts a batch and waits when there is none, so
// at most prefetch_depth batches exist at once, whether in the pipeline, ready in the queue or
// held by the consumer. Only the consumer frees slots, and the batches it waits for never need
// the thread that waits in the input stage (with one thread TBB runs each batch through every
// stage before it takes the next input), so the wait cannot deadlock.
//
// Sampling: a Sampler gives each epoch's record order for this rank, either DistributedSampler
// slices of a global permutation (detail::SamplingPlan) or whole shards.
//
// Resume: the consumer counts the batches it has taken (`consumed`); state() reports that
// position and restore() makes the next pass start its input stage at that batch. Batch k of an
// epoch depends only on (options, epoch, k), so the resumed pass yields what the interrupted
// one would have, and batches prefetched but never taken are simply built again.
//
// Errors: the parallel stage catches a failing read and marks its slot; the in-order output
// stage turns the first marked slot into an error entry in the queue and stops the pass. So the
// consumer sees every batch before the failed one, then the exception, deterministically.
#include "imgstore/torch/loader.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include <fmt/format.h>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/parallel_pipeline.h>
#include <oneapi/tbb/task_arena.h>
#include <torch/torch.h>

#include "batch_fill.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"

namespace imgstore {

namespace {

struct Slot {
  torch::Tensor data;    // [B,C,H,W], allocated on first use and reused
  torch::Tensor target;  // [B] int64
  std::size_t batch = 0;  // batch number within the pass
  std::size_t n = 0;      // records in this batch (< B for a last partial batch)
  std::exception_ptr error;
};

struct QueueEntry {
  Slot* slot = nullptr;        // a ready batch, or
  std::exception_ptr error;    // the pass failed, or (both empty) the pass ended
};

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

// This rank's records per epoch: DistributedSampler slices, or whole shards.
class Sampler {
 public:
  Sampler(const StoreReader& reader, const LoaderOptions& o) {
    plan_.count = reader.size();
    plan_.shuffle = o.shuffle;
    plan_.seed = o.seed;
    plan_.drop_last = o.drop_last;
    plan_.rank = o.rank;
    plan_.world_size = o.world_size;
    plan_.batch_size = o.batch_size;
    whole_shards_ = o.whole_shards;
    if (whole_shards_) plan_shards(reader, o);
  }

  std::size_t batches() const {
    if (!whole_shards_) return plan_.batches();
    const std::size_t b = plan_.batch_size;
    return plan_.drop_last ? per_rank_ / b : (per_rank_ + b - 1) / b;
  }

  std::size_t samples() const {
    if (plan_.drop_last) return batches() * plan_.batch_size;
    return whole_shards_ ? per_rank_ : plan_.samples_per_rank();
  }

  std::vector<std::uint64_t> indices(std::uint64_t epoch) const {
    if (!whole_shards_) return plan_.indices(epoch);
    // The rank's shards in a per-epoch order, each shard's records shuffled within it, so a
    // rank still reads shard by shard.
    std::vector<std::size_t> order(shards_.size());
    for (std::size_t i = 0; i < order.size(); ++i) order[i] = i;
    const std::uint64_t epoch_seed = detail::mix_seed(plan_.seed, epoch);
    if (plan_.shuffle) shuffle(order.data(), order.size(), detail::SplitMix(epoch_seed));
    std::vector<std::uint64_t> seq;
    seq.reserve(own_);
    for (std::size_t i : order) {
      const std::size_t first = seq.size();
      for (std::uint64_t r = shards_[i].begin; r < shards_[i].end; ++r) seq.push_back(r);
      if (plan_.shuffle) {
        // Seeded by the shard's global number, so its order does not depend on the world size.
        shuffle(seq.data() + first, seq.size() - first,
                detail::SplitMix(detail::mix_seed(epoch_seed, shards_[i].id + 1)));
      }
    }
    const std::size_t n = samples();
    std::vector<std::uint64_t> mine(n);
    // Padding repeats the rank's sequence from its start (own_ > 0 whenever n > 0).
    for (std::size_t k = 0; k < n; ++k) mine[k] = seq[k % seq.size()];
    return mine;
  }

 private:
  struct Shard {
    std::size_t id;
    std::uint64_t begin, end;
  };

  // Fisher-Yates, as SamplingPlan shuffles.
  template <typename T>
  static void shuffle(T* v, std::size_t n, detail::SplitMix rng) {
    for (std::size_t i = n; i > 1; --i) {
      std::swap(v[i - 1], v[static_cast<std::size_t>(rng.below(i))]);
    }
  }

  void plan_shards(const StoreReader& reader, const LoaderOptions& o) {
    const auto ranges = reader.shard_ranges();
    const std::size_t s = ranges.size(), w = o.world_size;
    if (s < w) {
      throw UsageError(fmt::format("PrefetchLoader: store '{}' has {} shard{}, cannot give whole "
                                   "shards to {} ranks (use fewer ranks or whole_shards = false)",
                                   reader.path().string(), s, s == 1 ? "" : "s", w));
    }
    // Ranges come from the store's own files; check them before sizing anything by them.
    std::vector<std::uint64_t> per_rank(w, 0);
    std::uint64_t prev_end = 0;
    for (std::size_t i = 0; i < s; ++i) {
      const auto [b, e] = ranges[i];
      if (b < prev_end || b > e || e > reader.size()) {
        throw DataError(fmt::format("store '{}': shard {} has records [{}, {}), which is not "
                                    "within the store's {} records in order",
                                    reader.path().string(), i, b, e, reader.size()));
      }
      prev_end = e;
      per_rank[i % w] += e - b;
      if (i % w == o.rank) shards_.push_back(Shard{i, b, e});
    }
    own_ = static_cast<std::size_t>(per_rank[o.rank]);
    // Equal step counts on every rank: pad to the largest rank, or cut to the smallest.
    per_rank_ = static_cast<std::size_t>(
        o.drop_last ? *std::min_element(per_rank.begin(), per_rank.end())
                    : *std::max_element(per_rank.begin(), per_rank.end()));
    if (own_ == 0 && samples() > 0) {
      throw UsageError(fmt::format("PrefetchLoader: rank {}'s shards of '{}' hold no records, so "
                                   "it cannot pad to the {} samples of the other ranks",
                                   o.rank, reader.path().string(), per_rank_));
    }
  }

  detail::SamplingPlan plan_;
  bool whole_shards_ = false;
  std::vector<Shard> shards_;  // this rank's shards, ascending
  std::size_t own_ = 0;        // records in them
  std::size_t per_rank_ = 0;   // samples per rank before drop_last's batch cut
};

std::string hex(std::uint64_t v) { return "0x" + to_hex64(v); }

}  // namespace

struct PrefetchLoader::State {
  std::shared_ptr<const StoreReader> reader;
  LoaderOptions options;
  Sampler sampler;
  detail::BatchWriter writer;
  tbb::task_arena arena;
  std::uint64_t next_epoch = 0;
  std::size_t next_offset = 0;  // first batch of the next pass (set by restore())

  // One background thread for the loader's life, so its per-thread scratch is reused across
  // epochs. It runs one pass per request.
  std::thread worker;
  std::vector<std::uint64_t> indices;  // this pass's record order, read-only while it runs
  std::uint64_t epoch = 0;             // this pass's epoch
  std::size_t batches = 0;

  std::mutex mutex;
  std::condition_variable slot_freed;
  std::condition_variable entry_ready;
  std::vector<std::unique_ptr<Slot>> slots;  // all slots ever made (the pool owns them)
  std::vector<Slot*> free_slots;
  std::deque<QueueEntry> queue;
  std::condition_variable command;    // wakes the worker: a pass is requested, or quit
  std::condition_variable pass_done;  // the worker finished a pass
  bool pass_requested = false;
  bool pass_running = false;
  bool quit = false;
  // Cancel requested or the pass failed: stages stop early. Written under `mutex` (for the
  // condition variables), read without it by the parallel stage.
  std::atomic<bool> stop{false};
  std::size_t next_batch = 0; // input stage's cursor (serial stage: no lock needed)

  // The consumer's side.
  Slot* current = nullptr;            // the batch the consumer holds
  torch::data::Example<> example;     // views of current
  bool active = false;                // a pass is being consumed
  // Position for state(): `consumed` batches of `epoch` taken, valid once a pass has begun and
  // until set_epoch() or restore() sets the next pass's position instead.
  std::size_t consumed = 0;
  bool position_from_pass = false;

  State(std::shared_ptr<const StoreReader> r, const LoaderOptions& o)
      : reader(std::move(r)),
        options(o),
        sampler(check(reader, o), o),
        writer(reader->shape(), o.normalize, o.crop_padding, o.horizontal_flip),
        arena(arena_threads(o.threads)) {
    for (std::size_t i = 0; i < o.prefetch_depth; ++i) {
      slots.push_back(std::make_unique<Slot>());
      free_slots.push_back(slots.back().get());
    }
  }

  ~State() {
    cancel();
    {
      std::lock_guard<std::mutex> lock(mutex);
      quit = true;
    }
    command.notify_all();
    if (worker.joinable()) worker.join();
  }

  // TBB caps workers at the core count (and warns past it); more threads would only wait.
  static int arena_threads(unsigned requested) {
    const int cores = tbb::info::default_concurrency();
    return requested == 0 ? cores : std::min(static_cast<int>(requested), cores);
  }

  static const StoreReader& check(const std::shared_ptr<const StoreReader>& r,
                                  const LoaderOptions& o) {
    if (!r) throw UsageError("PrefetchLoader needs a reader, got null");
    if (o.batch_size == 0) throw UsageError("PrefetchLoader: batch_size must be at least 1");
    if (o.prefetch_depth == 0) throw UsageError("PrefetchLoader: prefetch_depth must be at least 1");
    if (o.world_size == 0 || o.rank >= o.world_size) {
      throw UsageError(fmt::format("PrefetchLoader: rank {} is not below world_size {}", o.rank,
                                   o.world_size));
    }
    if (o.crop_padding > r->shape().height || o.crop_padding > r->shape().width) {
      throw UsageError(fmt::format("PrefetchLoader: crop padding {} exceeds the image size {}",
                                   o.crop_padding, to_string(r->shape())));
    }
    return *r;
  }

  // Gives a slot back to the pool. A slot whose tensors someone still references is emptied
  // instead of reused, so a batch the user kept is never overwritten.
  void recycle(Slot* s) {
    auto shared = [](const torch::Tensor& t) {
      return t.use_count() > 1 || t.storage().use_count() > 1;  // the handle, or a view
    };
    if (s->data.defined() && (shared(s->data) || shared(s->target))) {
      s->data = torch::Tensor();
      s->target = torch::Tensor();
    }
    s->error = nullptr;
    free_slots.push_back(s);
  }

  void release_current() {
    example = torch::data::Example<>();
    if (!current) return;
    std::lock_guard<std::mutex> lock(mutex);
    recycle(current);
    current = nullptr;
    slot_freed.notify_one();
  }

  // Stops the running pass, waits until it is over and returns every slot to the pool.
  void cancel() {
    release_current();
    std::unique_lock<std::mutex> lock(mutex);
    stop = true;
    slot_freed.notify_all();
    pass_done.wait(lock, [this] { return !pass_requested && !pass_running; });
    for (auto& e : queue) {
      if (e.slot) recycle(e.slot);
    }
    queue.clear();
    active = false;
  }

  void start(std::uint64_t pass_epoch, std::size_t first_batch) {
    cancel();
    epoch = pass_epoch;
    indices = sampler.indices(epoch);
    batches = sampler.batches();
    next_batch = std::min(first_batch, batches);
    consumed = next_batch;
    position_from_pass = true;
    active = true;
    {
      std::lock_guard<std::mutex> lock(mutex);
      stop = false;
      pass_requested = true;
    }
    command.notify_one();
    if (!worker.joinable()) worker = std::thread([this] { serve(); });
  }

  void serve() {
    std::unique_lock<std::mutex> lock(mutex);
    for (;;) {
      command.wait(lock, [this] { return quit || pass_requested; });
      if (quit) return;
      pass_requested = false;
      pass_running = true;
      lock.unlock();
      run();
      lock.lock();
      pass_running = false;
      pass_done.notify_all();
    }
  }

  // One pass on the background thread, then the end marker.
  void run() {
    try {
      arena.execute([this] { pipeline(); });
    } catch (...) {
      // Failures outside the read stage (allocation, TBB itself) end the pass the same way.
      push_error(std::current_exception());
    }
    std::lock_guard<std::mutex> lock(mutex);
    queue.push_back(QueueEntry{});
    entry_ready.notify_one();
  }

  void push_error(std::exception_ptr e) {
    std::lock_guard<std::mutex> lock(mutex);
    if (stop) return;  // cancelled, or an earlier error is already queued
    stop = true;
    queue.push_back(QueueEntry{nullptr, std::move(e)});
    entry_ready.notify_one();
    slot_freed.notify_all();
  }

  void pipeline() {
    const std::size_t tokens = options.prefetch_depth;
    tbb::parallel_pipeline(
        tokens,
        tbb::make_filter<void, Slot*>(
            tbb::filter_mode::serial_in_order,
            [this](tbb::flow_control& fc) -> Slot* {
              std::unique_lock<std::mutex> lock(mutex);
              slot_freed.wait(lock, [this] { return stop || !free_slots.empty(); });
              if (stop || next_batch >= batches) {
                fc.stop();
                return nullptr;
              }
              Slot* s = free_slots.back();
              free_slots.pop_back();
              s->batch = next_batch++;
              return s;
            }) &
            tbb::make_filter<Slot*, Slot*>(
                tbb::filter_mode::parallel,
                [this](Slot* s) -> Slot* {
                  if (!stopped()) fill(*s);
                  return s;
                }) &
            tbb::make_filter<Slot*, void>(
                tbb::filter_mode::serial_in_order, [this](Slot* s) { hand_off(s); }));
  }

  bool stopped() const { return stop.load(std::memory_order_relaxed); }

  // The parallel stage: read the batch's records into per-thread scratch, then write them
  // transposed and transformed into the slot's tensor.
  void fill(Slot& s) {
    try {
      const std::size_t b = options.batch_size;
      const Shape& shape = reader->shape();
      if (!s.data.defined()) {
        s.data = torch::empty({static_cast<std::int64_t>(b), static_cast<std::int64_t>(shape.channels),
                               static_cast<std::int64_t>(shape.height),
                               static_cast<std::int64_t>(shape.width)},
                              writer.to_float() ? torch::kFloat32 : torch::kUInt8);
        s.target = torch::empty({static_cast<std::int64_t>(b)}, torch::kInt64);
      }
      const std::size_t first = s.batch * b;
      s.n = std::min(b, indices.size() - first);
      const std::uint64_t* idx = indices.data() + first;
      std::int64_t* labels = s.target.data_ptr<std::int64_t>();
      const std::size_t bytes = reader->image_bytes();
      // Isolated: a reader may run its own parallel_for (PNG decodes in parallel). Without
      // isolation a thread waiting for that loop can steal the pipeline's input stage, which
      // blocks until the consumer frees a buffer, stalling the whole batch behind it.
      auto read = [&](std::uint8_t* out) {
        tbb::this_task_arena::isolate([&] { reader->read_many(idx, s.n, out, labels); });
      };
      if (!writer.to_float() && !writer.augments() && shape.channels == 1) {
        read(s.data.data_ptr<std::uint8_t>());
        return;
      }
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

  // The in-order output stage.
  void hand_off(Slot* s) {
    std::lock_guard<std::mutex> lock(mutex);
    if (stop) {
      recycle(s);
      slot_freed.notify_all();
      return;
    }
    if (s->error) {
      stop = true;
      queue.push_back(QueueEntry{nullptr, s->error});
      recycle(s);
      slot_freed.notify_all();
    } else {
      queue.push_back(QueueEntry{s, nullptr});
    }
    entry_ready.notify_one();
  }

  // Consumer: the next batch, or false at the end of the pass. Throws a failed batch's error.
  bool next() {
    release_current();
    if (!active) return false;
    QueueEntry e;
    {
      std::unique_lock<std::mutex> lock(mutex);
      entry_ready.wait(lock, [this] { return !queue.empty(); });
      e = std::move(queue.front());
      queue.pop_front();
    }
    if (e.slot) {
      current = e.slot;
      consumed = e.slot->batch + 1;
      if (e.slot->n == options.batch_size) {
        example = {e.slot->data, e.slot->target};
      } else {
        const auto n = static_cast<std::int64_t>(e.slot->n);
        example = {e.slot->data.narrow(0, 0, n), e.slot->target.narrow(0, 0, n)};
      }
      return true;
    }
    // End or error: the pass is over (or about to be: the end marker is its last act).
    active = false;
    if (e.error) {
      cancel();
      std::rethrow_exception(e.error);
    }
    return false;
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
  const std::size_t first = std::exchange(state_->next_offset, 0);
  state_->start(state_->next_epoch++, first);
  if (!state_->next()) return end();
  return Iterator(state_.get());
}

PrefetchLoader::Iterator PrefetchLoader::end() { return Iterator(); }

void PrefetchLoader::set_epoch(std::uint64_t epoch) {
  // A restored position survives set_epoch() of its own epoch (the usual resume loop calls it).
  if (epoch != state_->next_epoch) state_->next_offset = 0;
  state_->next_epoch = epoch;
  state_->position_from_pass = false;
}
std::uint64_t PrefetchLoader::epoch() const { return state_->next_epoch; }
std::size_t PrefetchLoader::batches_per_epoch() const { return state_->sampler.batches(); }
std::size_t PrefetchLoader::samples_per_epoch() const { return state_->sampler.samples(); }
std::vector<std::uint64_t> PrefetchLoader::epoch_indices(std::uint64_t epoch) const {
  return state_->sampler.indices(epoch);
}

LoaderState PrefetchLoader::state() const {
  const State& st = *state_;
  LoaderState s;
  if (st.position_from_pass) {
    // A finished pass is reported as the start of the next epoch, so a checkpoint taken on
    // the last batch resumes with the next epoch rather than an empty pass.
    if (st.consumed >= st.batches) {
      s.epoch = st.epoch + 1;
      s.batches_consumed = 0;
    } else {
      s.epoch = st.epoch;
      s.batches_consumed = st.consumed;
    }
  } else {
    s.epoch = st.next_epoch;
    s.batches_consumed = st.next_offset;
  }
  const LoaderOptions& o = st.options;
  s.seed = o.seed;
  s.shuffle = o.shuffle;
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
  const LoaderState mine = state();
  if (s.store_count != mine.store_count) {
    throw UsageError(fmt::format("loader state is from another data set: store count {} vs {} "
                                 "in '{}'",
                                 s.store_count, mine.store_count, st.reader->path().string()));
  }
  if (s.content_digest != mine.content_digest) {
    throw UsageError(fmt::format("loader state is from another data set: content digest {} vs "
                                 "{} in '{}'",
                                 hex(s.content_digest), hex(mine.content_digest),
                                 st.reader->path().string()));
  }
  auto differs = [](const char* field, auto saved, auto ours) {
    if (saved == ours) return;
    throw UsageError(fmt::format("loader state does not match this loader: {} {} vs {}", field,
                                 saved, ours));
  };
  differs("seed", s.seed, mine.seed);
  differs("batch_size", s.batch_size, mine.batch_size);
  differs("shuffle", s.shuffle, mine.shuffle);
  differs("drop_last", s.drop_last, mine.drop_last);
  differs("whole_shards", s.whole_shards, mine.whole_shards);
  differs("rank", s.rank, mine.rank);
  differs("world_size", s.world_size, mine.world_size);
  const std::size_t batches = st.sampler.batches();
  if (s.batches_consumed > batches) {
    throw UsageError(fmt::format("loader state: batches_consumed {} exceeds the {} batches of an "
                                 "epoch",
                                 s.batches_consumed, batches));
  }
  st.cancel();
  st.position_from_pass = false;
  if (batches > 0 && s.batches_consumed == batches) {
    st.next_epoch = s.epoch + 1;  // the epoch was complete
    st.next_offset = 0;
  } else {
    st.next_epoch = s.epoch;
    st.next_offset = static_cast<std::size_t>(s.batches_consumed);
  }
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
