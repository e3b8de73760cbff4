// Image shapes and batches: the currency passed from sources to writers and from readers out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "imgstore/format.hpp"

namespace imgstore {

// Largest height or width of a record: what PNG, JPEG and every store layout can describe.
inline constexpr std::uint32_t kMaxImageSide = 65'535;

// Height × width × channels of every image in a store. Pixels are HWC uint8.
struct Shape {
  std::uint32_t height = 0;
  std::uint32_t width = 0;
  std::uint32_t channels = 0;

  std::size_t bytes() const { return std::size_t{height} * width * channels; }
  bool operator==(const Shape& o) const {
    return height == o.height && width == o.width && channels == o.channels;
  }
  bool operator!=(const Shape& o) const { return !(*this == o); }
};

std::string to_string(const Shape& shape);  // "32x32x3"

// A run of consecutive records, pixels HWC uint8 packed back to back.
//  - Fixed size (`shapes` empty): every record is `shape`, record i at i * shape.bytes().
//  - Variable size (format version 2, photos): `shape` holds only the channel count (H = W = 0);
//    record i is shapes[i] (same channels) at pixels[offsets[i], offsets[i + 1]).
// A source may also hand over each record's already-encoded bytes (a source JPEG when nothing
// is resized), which a writer of that encoding stores untouched: record i is
// payload[payload_offsets[i], payload_offsets[i + 1]) in `payload_encoding`. Such a batch may
// carry no pixels at all (`pixels` empty), when no writer of the conversion needs them.
struct ImageBatch {
  Shape shape;
  std::vector<std::uint8_t> pixels;
  std::vector<std::int64_t> labels;  // one per image

  std::vector<Shape> shapes;         // variable size: one per record; else empty
  std::vector<std::size_t> offsets;  // variable size: size() + 1 byte offsets into pixels

  std::optional<Encoding> payload_encoding;  // set: payload holds every record's encoded bytes
  std::vector<std::uint8_t> payload;
  std::vector<std::size_t> payload_offsets;  // size() + 1, with payload

  std::size_t size() const { return labels.size(); }
  bool variable_size() const { return !shapes.empty(); }
  bool has_pixels() const { return !pixels.empty() || size() == 0; }
  const Shape& image_shape(std::size_t i) const { return shapes.empty() ? shape : shapes[i]; }
  std::size_t image_bytes(std::size_t i) const { return image_shape(i).bytes(); }
  const std::uint8_t* image(std::size_t i) const { return pixels.data() + image_offset(i); }
  std::uint8_t* image(std::size_t i) { return pixels.data() + image_offset(i); }
  std::size_t image_offset(std::size_t i) const {
    return shapes.empty() ? i * shape.bytes() : offsets[i];
  }
  // Becomes a copy of records [first, first + n) of `src` (any kind), reusing capacity.
  void assign_range(const ImageBatch& src, std::size_t first, std::size_t n) {
    shape = src.shape;
    labels.assign(src.labels.begin() + first, src.labels.begin() + first + n);
    const std::size_t begin = src.has_pixels() && src.size() > 0 ? src.image_offset(first) : 0;
    const std::size_t end = src.pixels.empty() ? 0
                            : first + n < src.size() ? src.image_offset(first + n)
                                                     : src.pixels.size();
    pixels.assign(src.pixels.begin() + begin, src.pixels.begin() + end);
    shapes.clear();
    offsets.clear();
    if (src.variable_size()) {
      shapes.assign(src.shapes.begin() + first, src.shapes.begin() + first + n);
      for (std::size_t i = first; i <= first + n; ++i) offsets.push_back(src.offsets[i] - begin);
    }
    payload_encoding = src.payload_encoding;
    payload.clear();
    payload_offsets.clear();
    if (src.payload_encoding) {
      const std::size_t pb = src.payload_offsets[first], pe = src.payload_offsets[first + n];
      payload.assign(src.payload.begin() + pb, src.payload.begin() + pe);
      for (std::size_t i = first; i <= first + n; ++i) {
        payload_offsets.push_back(src.payload_offsets[i] - pb);
      }
    }
  }
  // Keeps the first n records (n <= size()), of any kind.
  void truncate(std::size_t n) {
    if (n >= size()) return;
    labels.resize(n);
    if (variable_size()) {
      shapes.resize(n);
      offsets.resize(n + 1);
      pixels.resize(pixels.empty() ? 0 : offsets.back());
    } else {
      pixels.resize(pixels.empty() ? 0 : n * shape.bytes());
    }
    if (payload_encoding) {
      payload_offsets.resize(n + 1);
      payload.resize(payload_offsets.back());
    }
  }
  // Sizes pixels and labels for n fixed-size images of `s`, reusing capacity.
  void resize(const Shape& s, std::size_t n) {
    shape = s;
    pixels.resize(n * s.bytes());
    labels.resize(n);
    shapes.clear();
    offsets.clear();
    payload_encoding.reset();
    payload.clear();
    payload_offsets.clear();
  }
};

}  // namespace imgstore
