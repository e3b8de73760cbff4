// The one table of payload encodings, independent of the container that holds the payload.
// To add an encoding (e.g. JPEG): add it to the Encoding enum, write its codec in its own file,
// and add one row to kEncodings in encoding_table.cpp; then list it in the `encodings` of the
// formats that may hold it (format_table.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "imgstore/format.hpp"
#include "imgstore/image.hpp"
#include "imgstore/store.hpp"

namespace imgstore::detail {

struct EncodingEntry {
  EncodingInfo info;
  // Stable on-disk number (byte 6 of an LMDB record header). Never reuse or renumber one.
  std::uint8_t code;
  // Encodes one HWC uint8 image of `shape` into `out` (cleared first, its capacity reused).
  void (*encode)(const std::uint8_t* pixels, const Shape& shape, const WriterOptions& options,
                 std::vector<std::uint8_t>& out);
  // Decodes an untrusted payload that must hold exactly one image of `shape` into `out`
  // (shape.bytes()). Throws DataError "<what>: <problem>" on anything malformed.
  void (*decode)(const std::uint8_t* data, std::size_t size, const Shape& shape,
                 std::uint8_t* out, const std::string& what);
};

// Every encoding's row, in the order of the Encoding enum.
const std::vector<EncodingEntry>& encoding_table();
const EncodingEntry& encoding_entry(Encoding encoding);
// The row with on-disk number `code`, or null if no encoding has it.
const EncodingEntry* encoding_by_code(std::uint8_t code);

// "a, b or c" (with last_separator " or "): lists of names in messages and help text.
std::string join_names(const std::vector<std::string>& names, const std::string& last_separator);

}  // namespace imgstore::detail
