// Pillow 9.4's mode conversions (libImaging/Convert.c), for rows of a decoded image in the
// mode Pillow opens the file in. Bit-exact with `im.convert("L")` / `im.convert("RGB")`:
//   RGB -> L      L = (R*19595 + G*38470 + B*7471 + 0x8000) >> 16   (Convert.c L24, not /1000)
//   RGBA -> RGB   alpha dropped, no compositing; RGBA -> L as RGB -> L
//   LA -> L / RGB the L byte, alpha dropped
//   I (16-bit gray PNG) -> L / RGB   clipped to 0..255 (not scaled: a 16-bit gray photo
//                                    saturates to white, as in Pillow)
//   P -> RGB / L  palette lookup (tRNS ignored); indices past the PLTE entries read Pillow's
//                 default palette, a grey ramp (i, i, i)
//   CMYK -> RGB   Adobe-inverted CMYK as Pillow reads it ("CMYK;I"), then
//                 nk = 255 - K, R = nk - MULDIV255(C, nk); CMYK -> L via RGB
// 16-bit RGB / RGBA / LA samples are first reduced to their high byte (Pillow's "RGB;16B").
#pragma once

#include <cstddef>
#include <cstdint>

namespace imgstore::detail {

// Row layouts the decoders produce (Pillow's mode of the opened file).
enum class SourceMode {
  L,     // 1 byte
  LA,    // 2 bytes
  RGB,   // 3 bytes
  RGBA,  // 4 bytes
  I16,   // 2 bytes, big-endian 16-bit gray (Pillow mode "I")
  P,     // 1 byte palette index
  CMYK,  // 4 bytes, raw libjpeg output (Adobe inverted; converted as Pillow does)
};

std::size_t source_mode_bytes(SourceMode mode);

// `palette` (256 RGB triples) is used by P only.
void convert_row(SourceMode mode, const std::uint8_t* in, std::size_t width,
                 std::uint32_t channels, std::uint8_t* out, const std::uint8_t* palette);

// convert_row over `height` packed rows of `width` pixels (no palette).
void convert_rows(SourceMode mode, const std::uint8_t* in, std::size_t width, std::size_t height,
                  std::uint32_t channels, std::uint8_t* out);

// Pillow's RGB -> L (Convert.c L24).
inline std::uint8_t pil_luma(unsigned r, unsigned g, unsigned b) {
  return static_cast<std::uint8_t>((r * 19595u + g * 38470u + b * 7471u + 0x8000u) >> 16);
}

}  // namespace imgstore::detail
