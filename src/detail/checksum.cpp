#include "imgstore/checksum.hpp"

#include <xxhash.h>

#include <fmt/format.h>

#include "detail/isa_clones.hpp"
#include "detail/xxh3_avx2.hpp"
#include "imgstore/error.hpp"

namespace imgstore {

// Where the CPU has AVX2, the AVX2 build of XXH3 (xxh3_avx2.cpp): 3-12x libxxhash's speed.
std::uint64_t record_checksum(const std::uint8_t* pixels, std::size_t size, std::int64_t label) {
  const auto seed = static_cast<XXH64_hash_t>(label);
#if defined(IMGSTORE_HAVE_XXH3_AVX2)
  if (detail::avx2_kernels_enabled()) return detail::xxh3_64_seeded_avx2(pixels, size, seed);
#endif
  return XXH3_64bits_withSeed(pixels, size, seed);
}

std::uint64_t xxh3_64(const void* data, std::size_t size) {
#if defined(IMGSTORE_HAVE_XXH3_AVX2)
  if (detail::avx2_kernels_enabled()) return detail::xxh3_64_avx2(data, size);
#endif
  return XXH3_64bits(data, size);
}

std::string to_hex64(std::uint64_t value) { return fmt::format("{:016x}", value); }

std::uint64_t parse_hex64(const std::string& text, const std::string& what) {
  if (text.size() != 16) throw DataError(fmt::format("{}: '{}' is not 16 hex digits", what, text));
  std::uint64_t value = 0;
  for (char ch : text) {
    int digit;
    if (ch >= '0' && ch <= '9') digit = ch - '0';
    else if (ch >= 'a' && ch <= 'f') digit = ch - 'a' + 10;
    else if (ch >= 'A' && ch <= 'F') digit = ch - 'A' + 10;
    else throw DataError(fmt::format("{}: '{}' is not 16 hex digits", what, text));
    value = (value << 4) | static_cast<std::uint64_t>(digit);
  }
  return value;
}

ContentDigest::ContentDigest() : state_(XXH3_createState()) {
  if (!state_) throw std::bad_alloc();
  XXH3_64bits_reset(static_cast<XXH3_state_t*>(state_));
}

ContentDigest::~ContentDigest() { XXH3_freeState(static_cast<XXH3_state_t*>(state_)); }

void ContentDigest::add(std::uint64_t checksum) {
  // Little-endian bytes, so Python can recompute it: xxh3_64(b''.join(c.to_bytes(8,'little'))).
  unsigned char bytes[8];
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<unsigned char>(checksum >> (8 * i));
  XXH3_64bits_update(static_cast<XXH3_state_t*>(state_), bytes, sizeof bytes);
}

std::uint64_t ContentDigest::value() const {
  return XXH3_64bits_digest(static_cast<XXH3_state_t*>(state_));
}

}  // namespace imgstore
