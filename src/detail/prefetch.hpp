// A CPU prefetch hint for the readers' shuffled read_many paths, where every record misses
// the cache: asking for record i + k while copying record i overlaps those misses.
#pragma once

#include <algorithm>
#include <cstddef>

namespace imgstore::detail {

// Bytes of a record worth hinting; the hardware prefetcher does the rest once it streams.
constexpr std::size_t kMaxPrefetchBytes = 1024;

// Asks the CPU to start loading [p, p + size), up to kMaxPrefetchBytes of it. A hint only.
inline void prefetch_bytes(const void* p, std::size_t size) noexcept {
  const auto* c = static_cast<const char*>(p);
  const std::size_t n = std::min(size, kMaxPrefetchBytes);
  for (std::size_t off = 0; off < n; off += 64) __builtin_prefetch(c + off);
  if (n > 0) __builtin_prefetch(c + n - 1);
}

}  // namespace imgstore::detail
