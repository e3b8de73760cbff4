// The prefetch loader's batch memory: a fixed pool of prefetch_depth slots, each one [B,C,H,W]
// batch tensor and one [B] label tensor, recycled from pass to pass. A batch exists only in a
// slot, so at most prefetch_depth batches exist at once, whether in the pipeline, ready for the
// consumer or held by it.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <exception>
#include <memory>
#include <mutex>
#include <vector>

#include <torch/torch.h>

#include "imgstore/image.hpp"

namespace imgstore::detail {

// An uninitialised [sizes] tensor of `dtype` for a batch. Large ones (>= 4 MiB) get a mapping
// of their own on 2 MiB boundaries, advised as transparent huge pages and unmapped when the
// tensor dies: on the VMs we measure, the first touch of a fresh 4 KiB page costs 5-9 us (a
// [64,3,224,224] float batch is 9,400 of them, 66 ms, more than decoding its images), a 2 MiB
// page about as much as zeroing it. Where THP is off the advice is ignored.
torch::Tensor empty_batch_tensor(c10::IntArrayRef sizes, torch::ScalarType dtype);

struct Slot {
  torch::Tensor data;     // [B,C,H,W], allocated on first use and reused
  torch::Tensor target;   // [B] int64
  std::size_t batch = 0;  // batch number within the pass
  std::size_t n = 0;      // records in this batch (< B for a last partial batch)
  std::exception_ptr error;

  // Allocates the tensors unless the slot has them (uint8, or float32 when to_float).
  void allocate(std::size_t batch_size, const Shape& shape, bool to_float);
  // The batch's first n records: the tensors themselves, or views of them.
  torch::data::Example<> example() const;
};

class SlotPool {
 public:
  explicit SlotPool(std::size_t depth);
  SlotPool(const SlotPool&) = delete;
  SlotPool& operator=(const SlotPool&) = delete;

  // Waits for a free slot. Returns null instead once `stop` is set (whoever sets it calls
  // wake() afterwards).
  Slot* acquire(const std::atomic<bool>& stop);
  // Gives a slot back. A slot whose tensors someone still references is emptied instead of
  // reused, so a batch the user kept is never overwritten.
  void release(Slot* slot);
  // Wakes every acquire() to look at its stop flag again.
  void wake();

 private:
  std::mutex mutex_;
  std::condition_variable freed_;
  std::vector<std::unique_ptr<Slot>> slots_;  // every slot (the pool owns them)
  std::vector<Slot*> free_;
};

}  // namespace imgstore::detail
