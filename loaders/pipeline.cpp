// The background tbb::parallel_pipeline behind PrefetchLoader (see pipeline.hpp).
#include "pipeline.hpp"

#include <algorithm>
#include <utility>

#include <oneapi/tbb/info.h>
#include <oneapi/tbb/parallel_pipeline.h>

namespace imgstore::detail {

namespace {

// TBB caps workers at the core count (and warns past it); more threads would only wait.
int arena_threads(unsigned requested) {
  const int cores = tbb::info::default_concurrency();
  return requested == 0 ? cores : std::min(static_cast<int>(requested), cores);
}

}  // namespace

Pipeline::Pipeline(unsigned threads, std::size_t tokens, SlotPool& pool, Fill fill)
    : pool_(pool), fill_(std::move(fill)), tokens_(tokens), arena_(arena_threads(threads)) {}

Pipeline::~Pipeline() {
  cancel();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    quit_ = true;
  }
  command_.notify_all();
  if (worker_.joinable()) worker_.join();
}

void Pipeline::stop_locked() {
  stop_ = true;
  pool_.wake();  // an input stage waiting for a slot gives up
}

void Pipeline::cancel() {
  std::unique_lock<std::mutex> lock(mutex_);
  stop_locked();
  pass_done_.wait(lock, [this] { return !pass_requested_ && !pass_running_; });
  for (auto& e : queue_) {
    if (e.slot) pool_.release(e.slot);
  }
  queue_.clear();
  active_ = false;
}

void Pipeline::start(std::size_t first_batch, std::size_t batches) {
  cancel();
  batches_ = batches;
  next_batch_ = std::min(first_batch, batches);
  active_ = true;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = false;
    pass_requested_ = true;
  }
  command_.notify_one();
  if (!worker_.joinable()) worker_ = std::thread([this] { serve(); });
}

void Pipeline::serve() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    command_.wait(lock, [this] { return quit_ || pass_requested_; });
    if (quit_) return;
    pass_requested_ = false;
    pass_running_ = true;
    lock.unlock();
    run();
    lock.lock();
    pass_running_ = false;
    pass_done_.notify_all();
  }
}

// One pass on the background thread, then the end marker.
void Pipeline::run() {
  try {
    arena_.execute([this] { pipeline(); });
  } catch (...) {
    // Failures outside the fill stage (allocation, TBB itself) end the pass the same way.
    push_error(std::current_exception());
  }
  std::lock_guard<std::mutex> lock(mutex_);
  queue_.push_back(Entry{});
  entry_ready_.notify_one();
}

void Pipeline::push_error(std::exception_ptr e) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (stop_) return;  // cancelled, or an earlier error is already queued
  stop_locked();
  queue_.push_back(Entry{nullptr, std::move(e)});
  entry_ready_.notify_one();
}

void Pipeline::pipeline() {
  tbb::parallel_pipeline(
      tokens_,
      tbb::make_filter<void, Slot*>(tbb::filter_mode::serial_in_order,
                                    [this](tbb::flow_control& fc) -> Slot* {
                                      Slot* s = take_input();
                                      if (!s) fc.stop();
                                      return s;
                                    }) &
          tbb::make_filter<Slot*, Slot*>(tbb::filter_mode::parallel,
                                         [this](Slot* s) -> Slot* {
                                           fill_checked(*s);
                                           return s;
                                         }) &
          tbb::make_filter<Slot*, void>(tbb::filter_mode::serial_in_order,
                                        [this](Slot* s) { hand_off(s); }));
}

// The input stage: a free slot for the next batch, or null when the pass is over or stopped.
Slot* Pipeline::take_input() {
  if (next_batch_ >= batches_) return nullptr;
  Slot* s = pool_.acquire(stop_);
  if (!s) return nullptr;
  s->batch = next_batch_++;
  return s;
}

void Pipeline::fill_checked(Slot& s) {
  if (stop_.load(std::memory_order_relaxed)) return;
  try {
    fill_(s);
  } catch (...) {
    s.error = std::current_exception();
  }
}

// The in-order output stage.
void Pipeline::hand_off(Slot* s) {
  std::unique_lock<std::mutex> lock(mutex_);
  if (stop_) {
    lock.unlock();
    pool_.release(s);
    return;
  }
  if (s->error) {
    stop_locked();
    queue_.push_back(Entry{nullptr, s->error});
    lock.unlock();
    pool_.release(s);
  } else {
    queue_.push_back(Entry{s, nullptr});
  }
  entry_ready_.notify_one();
}

Slot* Pipeline::next() {
  if (!active_) return nullptr;
  Entry e;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    entry_ready_.wait(lock, [this] { return !queue_.empty(); });
    e = std::move(queue_.front());
    queue_.pop_front();
  }
  if (e.slot) return e.slot;
  // End or error: the pass is over (or about to be: the end marker is its last act).
  active_ = false;
  if (e.error) {
    cancel();
    std::rethrow_exception(e.error);
  }
  return nullptr;
}

}  // namespace imgstore::detail
