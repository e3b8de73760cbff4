// Recycled batch slots, bounded by the prefetch depth.
#include "batch_pool.hpp"

#include <sys/mman.h>

#include <cstdint>
#include <new>

namespace imgstore::detail {

torch::Tensor empty_batch_tensor(c10::IntArrayRef sizes, torch::ScalarType dtype) {
  constexpr std::size_t kHugePage = std::size_t{2} << 20;
  auto to_huge_page = [](std::uintptr_t n) { return (n + kHugePage - 1) / kHugePage * kHugePage; };
  std::size_t bytes = c10::elementSize(dtype);
  for (const std::int64_t d : sizes) bytes *= static_cast<std::size_t>(d);
  if (bytes < 2 * kHugePage) return torch::empty(sizes, dtype);
  // A mapping of its own, unmapped when the tensor dies: never handed back to malloc, where
  // khugepaged would refill the pages malloc_trim releases (a freed loader's 160 MiB of slots
  // stayed resident). One huge page more than needed, to start on a 2 MiB boundary.
  const std::size_t rounded = to_huge_page(bytes);
  const std::size_t mapped = rounded + kHugePage;
  void* base = mmap(nullptr, mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED) throw std::bad_alloc();
  const auto start = reinterpret_cast<std::uintptr_t>(base);
  const std::uintptr_t aligned = to_huge_page(start);
  if (aligned > start) munmap(base, aligned - start);
  const std::size_t tail = start + mapped - (aligned + rounded);
  if (tail > 0) munmap(reinterpret_cast<void*>(aligned + rounded), tail);
  void* p = reinterpret_cast<void*>(aligned);
  // Before the first touch, so the kernel backs it with huge pages from the start. A hint:
  // without THP it fails harmlessly and the pages are ordinary ones.
  (void)madvise(p, rounded, MADV_HUGEPAGE);
  return torch::from_blob(
      p, sizes, [rounded](void* q) { munmap(q, rounded); }, torch::TensorOptions(dtype));
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
