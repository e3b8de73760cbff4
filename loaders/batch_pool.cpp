// Recycled batch slots, bounded by the prefetch depth.
#include "batch_pool.hpp"

#include <sys/mman.h>

#include <cstdlib>
#include <new>

namespace imgstore::detail {

torch::Tensor empty_batch_tensor(c10::IntArrayRef sizes, torch::ScalarType dtype) {
  constexpr std::size_t kHugePage = std::size_t{2} << 20;
  std::size_t bytes = c10::elementSize(dtype);
  for (const std::int64_t d : sizes) bytes *= static_cast<std::size_t>(d);
  if (bytes < 2 * kHugePage) return torch::empty(sizes, dtype);
  const std::size_t rounded = (bytes + kHugePage - 1) / kHugePage * kHugePage;
  void* p = std::aligned_alloc(kHugePage, rounded);
  if (p == nullptr) throw std::bad_alloc();
  // Before the first touch, so the kernel can back it with huge pages from the start. Only a
  // hint: it fails harmlessly on kernels without THP.
  (void)madvise(p, rounded, MADV_HUGEPAGE);
  return torch::from_blob(p, sizes, [](void* q) { std::free(q); }, torch::TensorOptions(dtype));
}

void Slot::allocate(std::size_t batch_size, const Shape& shape, bool to_float) {
  if (data.defined()) return;
  auto dim = [](std::size_t v) { return static_cast<std::int64_t>(v); };
  data = empty_batch_tensor({dim(batch_size), dim(shape.channels), dim(shape.height), dim(shape.width)},
                            to_float ? torch::kFloat32 : torch::kUInt8);
  target = torch::empty({dim(batch_size)}, torch::kInt64);
}

torch::data::Example<> Slot::example() const {
  if (static_cast<std::int64_t>(n) == data.size(0)) return {data, target};
  const auto rows = static_cast<std::int64_t>(n);
  return {data.narrow(0, 0, rows), target.narrow(0, 0, rows)};
}

SlotPool::SlotPool(std::size_t depth) {
  for (std::size_t i = 0; i < depth; ++i) {
    slots_.push_back(std::make_unique<Slot>());
    free_.push_back(slots_.back().get());
  }
}

Slot* SlotPool::acquire(const std::atomic<bool>& stop) {
  std::unique_lock<std::mutex> lock(mutex_);
  freed_.wait(lock, [&] { return stop.load() || !free_.empty(); });
  if (stop.load()) return nullptr;
  Slot* s = free_.back();
  free_.pop_back();
  return s;
}

void SlotPool::release(Slot* s) {
  auto shared = [](const torch::Tensor& t) {
    return t.use_count() > 1 || t.storage().use_count() > 1;  // the handle, or a view
  };
  std::lock_guard<std::mutex> lock(mutex_);
  if (s->data.defined() && (shared(s->data) || shared(s->target))) {
    s->data = torch::Tensor();
    s->target = torch::Tensor();
  }
  s->error = nullptr;
  free_.push_back(s);
  freed_.notify_one();
}

void SlotPool::wake() {
  std::lock_guard<std::mutex> lock(mutex_);
  freed_.notify_all();
}

}  // namespace imgstore::detail
