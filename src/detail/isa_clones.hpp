// IMGSTORE_ISA_CLONES: clone a hot loop per x86-64 ISA level, picked once at load time. The
// portable baseline (SSE2) has no 32-bit vector multiply and vectorises stride-C byte loads
// badly; the AVX2/AVX-512 clones run such loops several times faster. Integer loops give the
// same results in every clone; float loops must also turn off FMA contraction (see
// loaders/batch_fill.cpp). Not under TSan: the clones' IFUNC resolvers are instrumented and
// run during relocation, before the TSan runtime is up, which crashes the program.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#define IMGSTORE_ISA_CLONES \
  __attribute__((target_clones("default", "arch=x86-64-v2", "arch=x86-64-v3", "arch=x86-64-v4")))
#else
#define IMGSTORE_ISA_CLONES
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#include "detail/testing.hpp"

namespace imgstore::detail {

// Whether hand-written AVX2 code may run (the resampler's kernels, the AVX2 build of XXH3):
// the CPU has AVX2 and no test has turned such code off to compare it with the portable path.
// Not for files compiled with -mavx2 (xxh3_avx2.cpp): an AVX2 copy of this inline function
// could be the one linked.
inline bool avx2_kernels_enabled() {
  static const bool cpu_has_avx2 = __builtin_cpu_supports("avx2");
  return cpu_has_avx2 && !testing::avx2_kernels_disabled();
}

}  // namespace imgstore::detail
#endif
