// Record checksums. One definition for every format, so stores compare across formats:
//   checksum = XXH3_64bits_withSeed(pixels HWC, H*W*C, seed = label)
// Seeding with the label makes a flipped label as detectable as a flipped pixel.
// Python: xxhash.xxh3_64_intdigest(pixels.tobytes(), seed=label)
// Lossy encodings (JPEG) are the exception: decoders may differ in the last bit, so their
// checksum covers the stored payload bytes instead (the JPEG file's bytes), same seed:
//   xxhash.xxh3_64_intdigest(jpeg_bytes, seed=label)
// and such stores compare with other stores by PSNR, not by checksum (verify --against).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace imgstore {

std::uint64_t record_checksum(const std::uint8_t* pixels, std::size_t size, std::int64_t label);

// Plain xxh3-64 of bytes (no seed), e.g. for an LMDB payload.
std::uint64_t xxh3_64(const void* data, std::size_t size);

// 16 lowercase hex digits, and back. parse_hex64 throws DataError naming `what` on bad text.
std::string to_hex64(std::uint64_t value);
std::uint64_t parse_hex64(const std::string& text, const std::string& what);

// Streaming digest over the sequence of record checksums: identifies a store's content.
class ContentDigest {
 public:
  ContentDigest();
  ~ContentDigest();
  ContentDigest(const ContentDigest&) = delete;
  ContentDigest& operator=(const ContentDigest&) = delete;
  void add(std::uint64_t record_checksum);
  std::uint64_t value() const;

 private:
  void* state_;  // XXH3_state_t, kept out of the public header
};

}  // namespace imgstore
