// Hooks that only tests use, kept apart from the code they reach into. Production code consults
// the settings below in a couple of places; nothing else calls the setters.
#pragma once

#include <cstddef>

namespace imgstore {
class StoreReader;
}

namespace imgstore::detail::testing {

// LMDB writers start from this map size instead of their estimate when it is non-zero, so tests
// can exercise map growth with small stores. 0 (the default) restores the estimate.
void set_lmdb_initial_map_size(std::size_t bytes);
std::size_t lmdb_initial_map_size();

// While set, HDF5 readers opened afterwards read with pread() instead of mapping the file, as
// when mmap fails.
void set_hdf5_mmap_disabled(bool disabled);
bool hdf5_mmap_disabled();

// While set, ragged HDF5 writers leave libhdf5's end of address space alone, so /images is
// placed below the payloads and finish() has to move them there, as if libhdf5's allocator
// had placed it elsewhere.
void set_hdf5_payloads_in_place_disabled(bool disabled);
bool hdf5_payloads_in_place_disabled();

// While set, the resampler leaves its AVX2 kernels aside and runs the SSE2 and plain ones, and
// checksums use libxxhash instead of the AVX2 build of XXH3, as on a CPU without AVX2.
void set_avx2_kernels_disabled(bool disabled);
bool avx2_kernels_disabled();

// True if `reader` is an HDF5 reader that reads /images through a mapping of the file (defined
// in hdf5_store.cpp, which knows the reader type).
bool hdf5_reader_uses_mmap(const StoreReader& reader);

// Scoped forms for tests: each restores the default when it goes out of scope.
class ForcedLmdbMapSize {
 public:
  explicit ForcedLmdbMapSize(std::size_t bytes) { set_lmdb_initial_map_size(bytes); }
  ~ForcedLmdbMapSize() { set_lmdb_initial_map_size(0); }
  ForcedLmdbMapSize(const ForcedLmdbMapSize&) = delete;
  ForcedLmdbMapSize& operator=(const ForcedLmdbMapSize&) = delete;
};

// Sets a flag for its lifetime.
template <void (*Set)(bool)>
class ScopedFlag {
 public:
  ScopedFlag() { Set(true); }
  ~ScopedFlag() { Set(false); }
  ScopedFlag(const ScopedFlag&) = delete;
  ScopedFlag& operator=(const ScopedFlag&) = delete;
};
using Hdf5MmapDisabled = ScopedFlag<set_hdf5_mmap_disabled>;
using Hdf5PayloadsInPlaceDisabled = ScopedFlag<set_hdf5_payloads_in_place_disabled>;
using Avx2KernelsDisabled = ScopedFlag<set_avx2_kernels_disabled>;

}  // namespace imgstore::detail::testing
