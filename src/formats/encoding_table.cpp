#include "formats/encoding_table.hpp"

#include <cstring>

#include <fmt/format.h>

#include "codecs/image_codec.hpp"
#include "detail/png_codec.hpp"
#include "imgstore/error.hpp"

namespace imgstore {

namespace detail {

namespace {

// Raw: the payload is the pixels. (Containers that hold raw payloads copy them directly on
// their hot paths; these are for code that treats every encoding alike.)
void encode_raw(const std::uint8_t* pixels, const Shape& shape, const WriterOptions&,
                std::vector<std::uint8_t>& out) {
  out.assign(pixels, pixels + shape.bytes());
}

void decode_raw(const std::uint8_t* data, std::size_t size, const Shape& shape, std::uint8_t* out,
                const std::string& what) {
  if (size != shape.bytes()) {
    throw DataError(fmt::format("{}: payload is {} bytes, expected {}", what, size, shape.bytes()));
  }
  std::memcpy(out, data, size);
}

void encode_png_payload(const std::uint8_t* pixels, const Shape& shape,
                        const WriterOptions& options, std::vector<std::uint8_t>& out) {
  encode_png(pixels, shape, options.png_level, out);
}

void encode_jpeg_payload(const std::uint8_t* pixels, const Shape& shape,
                         const WriterOptions& options, std::vector<std::uint8_t>& out) {
  encode_jpeg(pixels, shape.width, shape.height, shape.channels, options.jpeg_quality, out);
}

// A JPEG payload decodes as Pillow's convert() would, to the store's channel count, and must
// have exactly the record's height and width.
void decode_jpeg_payload(const std::uint8_t* data, std::size_t size, const Shape& shape,
                         std::uint8_t* out, const std::string& what) {
  thread_local DecodedImage image;
  decode_image(data, size, shape.channels, what, image);
  if (image.shape != shape) {
    throw DataError(fmt::format("{}: payload decodes to {}, expected {}", what,
                                to_string(image.shape), to_string(shape)));
  }
  std::memcpy(out, image.pixels.data(), shape.bytes());
}

}  // namespace

// One row per encoding, in enum order.
const std::vector<EncodingEntry>& encoding_table() {
  // A function-local static: safe to use from other files' static initialisers.
  static const std::vector<EncodingEntry> table = {
      {{Encoding::Raw, "raw", true}, 0, encode_raw, decode_raw},
      {{Encoding::Png, "png", true}, 1, encode_png_payload, decode_png},
      {{Encoding::Jpeg, "jpeg", false}, 2, encode_jpeg_payload, decode_jpeg_payload},
  };
  return table;
}

const EncodingEntry& encoding_entry(Encoding encoding) {
  for (const auto& e : encoding_table()) {
    if (e.info.encoding == encoding) return e;
  }
  throw UsageError(fmt::format("encoding {} is not in the encoding table",
                               static_cast<int>(encoding)));
}

const EncodingEntry* encoding_by_code(std::uint8_t code) {
  for (const auto& e : encoding_table()) {
    if (e.code == code) return &e;
  }
  return nullptr;
}

std::string join_names(const std::vector<std::string>& names, const std::string& last_separator) {
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i > 0) out += i + 1 == names.size() ? last_separator : ", ";
    out += names[i];
  }
  return out;
}

}  // namespace detail

std::vector<Encoding> all_encodings() {
  std::vector<Encoding> out;
  for (const auto& e : detail::encoding_table()) out.push_back(e.info.encoding);
  return out;
}

const EncodingInfo& encoding_info(Encoding encoding) {
  return detail::encoding_entry(encoding).info;
}

std::string to_string(Encoding encoding) { return encoding_info(encoding).name; }

Encoding parse_encoding(const std::string& name) {
  for (const auto& e : detail::encoding_table()) {
    if (e.info.name == name) return e.info.encoding;
  }
  throw UsageError(fmt::format("unknown encoding '{}' (expected {})", name,
                               encoding_names(all_encodings())));
}

std::string encoding_names(const std::vector<Encoding>& encodings,
                           const std::string& last_separator) {
  std::vector<std::string> names;
  for (Encoding e : encodings) names.push_back(to_string(e));
  return detail::join_names(names, last_separator);
}

}  // namespace imgstore
