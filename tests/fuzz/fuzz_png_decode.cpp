// PNG decoding (src/detail/png_codec.hpp) on raw bytes: png_shape, then decode_png with the
// shape the header claims (if small) and with a fixed shape that usually mismatches. A
// successful decode must survive an encode/decode round trip bit-exact.
#include "detail/png_codec.hpp"
#include "fuzz_common.hpp"

using namespace imgstore;

namespace {

constexpr std::size_t kMaxFuzzImageBytes = std::size_t{1} << 22;

void decode_and_check(const std::vector<std::uint8_t>& bytes, const Shape& shape) {
  std::vector<std::uint8_t> pixels(shape.bytes());
  try {
    detail::decode_png(bytes.data(), bytes.size(), shape, pixels.data(), "'fuzz.png'");
  } catch (const Error&) {
    return;
  }
  std::vector<std::uint8_t> png;
  detail::encode_png(pixels.data(), shape, 1, png);
  std::vector<std::uint8_t> again(shape.bytes());
  detail::decode_png(png.data(), png.size(), shape, again.data(), "'roundtrip.png'");
  if (again != pixels) fuzz::fail("PNG round trip changed the pixels");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::uint8_t> bytes(data, data + size);
  const Shape fixed{8, 8, 3};
  Shape claimed = fixed;
  try {
    claimed = detail::png_shape(bytes.data(), bytes.size(), "'fuzz.png'");
    if (claimed.height == 0 || claimed.width == 0 || claimed.channels < 1 ||
        claimed.channels > 4) {
      fuzz::fail("png_shape returned an impossible shape");
    }
  } catch (const Error&) {
  }
  if (claimed.bytes() <= kMaxFuzzImageBytes) decode_and_check(bytes, claimed);
  if (claimed != fixed) decode_and_check(bytes, fixed);
  return 0;
}
