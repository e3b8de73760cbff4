// Image shapes and batches: the currency passed from sources to writers and from readers out.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace imgstore {

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

// A run of consecutive records, all of one shape, pixels packed back to back (N×H×W×C).
struct ImageBatch {
  Shape shape;
  std::vector<std::uint8_t> pixels;  // size() * shape.bytes()
  std::vector<std::int64_t> labels;  // one per image

  std::size_t size() const { return labels.size(); }
  const std::uint8_t* image(std::size_t i) const { return pixels.data() + i * shape.bytes(); }
  std::uint8_t* image(std::size_t i) { return pixels.data() + i * shape.bytes(); }
  // Sizes pixels and labels for n images of `s`, reusing capacity.
  void resize(const Shape& s, std::size_t n) {
    shape = s;
    pixels.resize(n * s.bytes());
    labels.resize(n);
  }
};

}  // namespace imgstore
