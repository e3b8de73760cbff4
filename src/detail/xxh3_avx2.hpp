// XXH3-64 built for AVX2 (xxh3_avx2.cpp). Call only where the CPU has AVX2: record_checksum
// and xxh3_64 (checksum.cpp) choose between these and libxxhash.
#pragma once

#include <cstddef>
#include <cstdint>

namespace imgstore::detail {

// Defined only where CMake can build the AVX2 file (x86-64 with GCC or Clang).
#if defined(IMGSTORE_HAVE_XXH3_AVX2)
std::uint64_t xxh3_64_avx2(const void* data, std::size_t size);
std::uint64_t xxh3_64_seeded_avx2(const void* data, std::size_t size, std::uint64_t seed);
#endif

}  // namespace imgstore::detail
