// The prefetching loader: a tbb::parallel_pipeline on a background thread feeding the consumer.
//
// Memory: a pool of prefetch_depth slots (one [B,C,H,W] tensor and one [B] label tensor each).
// The input stage takes a free slot before it starts a batch and waits when there is none, so
// at most prefetch_depth batches exist at once, whether in the pipeline, ready in the queue or
// held by the consumer. Only the consumer frees slots, and the batches it waits for never need
// the thread that waits in the input stage (with one thread TBB runs each batch through every
// stage before it takes the next input), so the wait cannot deadlock.
//
// Errors: the parallel stage catches a failing read and marks its slot; the in-order output
// stage turns the first marked slot into an error entry in the queue and stops the pass. So the
// consumer sees every batch before the failed one, then the exception, deterministically.
#include "imgstore/torch/loader.hpp"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include <fmt/format.h>
#include <oneapi/tbb/info.h>
#include <oneapi/tbb/parallel_pipeline.h>
#include <oneapi/tbb/task_arena.h>
#include <torch/torch.h>

#include "batch_fill.hpp"
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

}  // namespace

struct PrefetchLoader::State {
  std::shared_ptr<const StoreReader> reader;
  LoaderOptions options;
  detail::SamplingPlan plan;
  detail::BatchWriter writer;
  tbb::task_arena arena;
  std::uint64_t next_epoch = 0;

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

  State(std::shared_ptr<const StoreReader> r, const LoaderOptions& o)
      : reader(std::move(r)),
        options(o),
        writer(check(reader, o).shape(), o.normalize, o.crop_padding, o.horizontal_flip),
        arena(arena_threads(o.threads)) {
    plan.count = reader->size();
    plan.shuffle = o.shuffle;
    plan.seed = o.seed;
    plan.drop_last = o.drop_last;
    plan.rank = o.rank;
    plan.world_size = o.world_size;
    plan.batch_size = o.batch_size;
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

  void start(std::uint64_t pass_epoch) {
    cancel();
    epoch = pass_epoch;
    indices = plan.indices(epoch);
    batches = plan.batches();
    next_batch = 0;
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
  state_->start(state_->next_epoch++);
  if (!state_->next()) return end();
  return Iterator(state_.get());
}

PrefetchLoader::Iterator PrefetchLoader::end() { return Iterator(); }

void PrefetchLoader::set_epoch(std::uint64_t epoch) { state_->next_epoch = epoch; }
std::uint64_t PrefetchLoader::epoch() const { return state_->next_epoch; }
std::size_t PrefetchLoader::batches_per_epoch() const { return state_->plan.batches(); }
std::size_t PrefetchLoader::samples_per_epoch() const {
  return state_->options.drop_last ? state_->plan.batches() * state_->options.batch_size
                                   : state_->plan.samples_per_rank();
}
std::vector<std::uint64_t> PrefetchLoader::epoch_indices(std::uint64_t epoch) const {
  return state_->plan.indices(epoch);
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
