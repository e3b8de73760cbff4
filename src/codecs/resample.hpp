// Antialiased resize, bit-exact with Pillow 9.4's `Image.resize(size, BILINEAR | BICUBIC,
// box=...)` on 8-bit L and RGB images (libImaging/Resample.c: separable, the filter's support
// widened by the downscale factor, coefficients normalised then rounded to 22-bit fixed point,
// horizontal pass first over only the rows the vertical pass needs).
#pragma once

#include <cstddef>
#include <cstdint>

namespace imgstore::detail {

enum class ResampleFilter { Bilinear, Bicubic };

// The source region to resample, in source pixels (float, as Pillow's box).
struct ResizeBox {
  float x0 = 0, y0 = 0, x1 = 0, y1 = 0;
};

// Resamples the `box` region of `src` (HWC uint8, `channels` 1..4, rows `src_stride` bytes
// apart; 0 = width * channels) to out_w x out_h into `dst` (out_h * out_w * channels bytes).
// Pillow's crop((l, t, r, b)).resize(size) is resize(src + t*stride + l*C, r-l, b-t, ...,
// box {0, 0, r-l, b-t}). Channels are resampled independently: for 2 and 4 channels this is
// not Pillow's (which premultiplies alpha). mirror: the result flipped left to right (Pillow's
// FLIP_LEFT_RIGHT after the resize), at no cost when there is a horizontal pass: its outputs
// are written in reverse order. Throws UsageError on an empty size or a box outside the image.
void resize(const std::uint8_t* src, std::uint32_t width, std::uint32_t height,
            std::uint32_t channels, const ResizeBox& box, std::uint32_t out_w,
            std::uint32_t out_h, std::uint8_t* dst,
            ResampleFilter filter = ResampleFilter::Bilinear, std::size_t src_stride = 0,
            bool mirror = false);

// resize(), with generic_kernels choosing the reference horizontal loop (each output's own
// tap count) over the fixed-tap kernels resize() picks when it can: for the tests, which
// check the two agree byte for byte.
void resize_with(const std::uint8_t* src, std::uint32_t width, std::uint32_t height,
                 std::uint32_t channels, const ResizeBox& box, std::uint32_t out_w,
                 std::uint32_t out_h, std::uint8_t* dst, ResampleFilter filter,
                 std::size_t src_stride, bool generic_kernels, bool mirror = false);

// Mirrors each of the h rows of w pixels of c bytes (1..4) in place: FLIP_LEFT_RIGHT.
void flip_rows(std::uint8_t* hwc, std::uint32_t h, std::uint32_t w, std::uint32_t c);

}  // namespace imgstore::detail
