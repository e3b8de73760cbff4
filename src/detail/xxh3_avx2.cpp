// XXH3 compiled for AVX2; checksum.cpp calls it when the CPU has AVX2 (CMake compiles this
// file alone with -mavx2). Debian's libxxhash is built for the x86-64 baseline and without
// xxHash's own dispatcher: seeded, it hashed 38 KB photos at 4 GB/s and 3 KiB records at
// 17 GB/s, against 48 and 43 GB/s here (one core, hot cache). XXH3's values do not depend on
// the vector width (test_core checks both ways agree). Everything here is xxHash's static
// inline code, so no AVX2 copy of a function shared with other files can be linked in.
#include "detail/xxh3_avx2.hpp"

#if defined(IMGSTORE_HAVE_XXH3_AVX2)

#define XXH_INLINE_ALL
#include <xxhash.h>

namespace imgstore::detail {

std::uint64_t xxh3_64_avx2(const void* data, std::size_t size) {
  return XXH3_64bits(data, size);
}

std::uint64_t xxh3_64_seeded_avx2(const void* data, std::size_t size, std::uint64_t seed) {
  return XXH3_64bits_withSeed(data, size, seed);
}

}  // namespace imgstore::detail

#endif
