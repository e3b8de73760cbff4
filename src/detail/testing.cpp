#include "detail/testing.hpp"

#include <atomic>

namespace imgstore::detail::testing {

namespace {
std::atomic<std::size_t> g_lmdb_initial_map_size{0};
std::atomic<bool> g_hdf5_mmap_disabled{false};
std::atomic<bool> g_hdf5_payloads_in_place_disabled{false};
std::atomic<bool> g_avx2_kernels_disabled{false};
}  // namespace

void set_lmdb_initial_map_size(std::size_t bytes) { g_lmdb_initial_map_size = bytes; }
std::size_t lmdb_initial_map_size() { return g_lmdb_initial_map_size.load(); }

void set_hdf5_mmap_disabled(bool disabled) { g_hdf5_mmap_disabled = disabled; }
bool hdf5_mmap_disabled() { return g_hdf5_mmap_disabled.load(); }

void set_hdf5_payloads_in_place_disabled(bool disabled) { g_hdf5_payloads_in_place_disabled = disabled; }
bool hdf5_payloads_in_place_disabled() { return g_hdf5_payloads_in_place_disabled.load(); }

void set_avx2_kernels_disabled(bool disabled) { g_avx2_kernels_disabled = disabled; }
bool avx2_kernels_disabled() { return g_avx2_kernels_disabled.load(std::memory_order_relaxed); }

}  // namespace imgstore::detail::testing
