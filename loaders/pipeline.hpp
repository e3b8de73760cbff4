// The prefetch loader's engine: passes of a tbb::parallel_pipeline, run in the loader's own
// task arena on one background thread (kept for the loader's life, so per-thread scratch is
// reused across epochs), handing filled slots to the consumer in batch order.
//
//   input (serial, in order)   take a free slot from the pool (waits while there is none)
//   fill (parallel)            the loader's Fill: read, transform, write into the slot
//   hand-off (serial, in order) queue the slot for the consumer
//
// The input stage's wait cannot deadlock: only the consumer frees slots, and the batches it
// waits for never need the waiting thread (with one thread TBB runs each batch through every
// stage before it takes the next input).
//
// Errors: Fill records a failure in its slot; the in-order hand-off turns the first failed slot
// into an error entry and stops the pass. So the consumer sees every batch before the failed
// one, then the exception, deterministically.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <deque>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>

#include <oneapi/tbb/task_arena.h>

#include "batch_pool.hpp"

namespace imgstore::detail {

class Pipeline {
 public:
  // Fills slot.batch's records into the slot. Runs on the arena's threads, several at once;
  // whatever it throws is recorded in slot.error.
  using Fill = std::function<void(Slot& slot)>;

  // `threads`: 0 for every core (also the cap); `tokens`: batches in flight at most.
  Pipeline(unsigned threads, std::size_t tokens, SlotPool& pool, Fill fill);
  // Cancels any pass and joins the background thread.
  ~Pipeline();
  Pipeline(const Pipeline&) = delete;
  Pipeline& operator=(const Pipeline&) = delete;

  // Starts a pass over batches [first_batch, batches), cancelling any unfinished one. What
  // Fill reads must be in place before the call and stay unchanged until cancel() or the end.
  void start(std::size_t first_batch, std::size_t batches);
  // Consumer: the next filled slot (give it back to the pool when done), or null at the end of
  // the pass. Rethrows a failed batch's error after the batches before it.
  Slot* next();
  // Stops the running pass, waits until it is over and returns its queued slots to the pool.
  void cancel();

 private:
  struct Entry {
    Slot* slot = nullptr;      // a ready batch, or
    std::exception_ptr error;  // the pass failed, or (both empty) the pass ended
  };

  void serve();
  void run();
  void pipeline();
  Slot* take_input();
  void fill_checked(Slot& s);
  void hand_off(Slot* s);
  void push_error(std::exception_ptr e);
  void stop_locked();  // with mutex_ held

  SlotPool& pool_;
  Fill fill_;
  std::size_t tokens_;
  tbb::task_arena arena_;

  std::mutex mutex_;
  std::condition_variable entry_ready_;
  std::condition_variable command_;    // wakes the worker: a pass is requested, or quit
  std::condition_variable pass_done_;  // the worker finished a pass
  std::deque<Entry> queue_;
  bool pass_requested_ = false;
  bool pass_running_ = false;
  bool quit_ = false;
  // Cancel requested or the pass failed: stages stop early. Written under mutex_ (for the
  // condition variables), read without it by the stages and the pool.
  std::atomic<bool> stop_{false};

  // The pass: set by start() before it is requested, then read by the stages.
  std::size_t batches_ = 0;
  std::size_t next_batch_ = 0;  // input stage's cursor (serial stage: no lock needed)

  bool active_ = false;  // consumer side: a pass is being consumed
  std::thread worker_;   // last: started after everything above exists
};

}  // namespace imgstore::detail
