// STUB: to be implemented.
#include "detail/png_codec.hpp"
#include "imgstore/error.hpp"
namespace imgstore::detail {
void encode_png(const std::uint8_t*, const Shape&, int, std::vector<std::uint8_t>&) { throw Error("encode_png: not implemented"); }
void decode_png(const std::uint8_t*, std::size_t, const Shape&, std::uint8_t*, const std::string&) { throw Error("decode_png: not implemented"); }
Shape png_shape(const std::uint8_t*, std::size_t, const std::string&) { throw Error("png_shape: not implemented"); }
}
