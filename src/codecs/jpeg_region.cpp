// JPEG region decode for the loader's crops, through libjpeg-turbo's libjpeg API: TurboJPEG 2.1
// decodes only whole images, while jpeg_crop_scanline decodes only the iMCU columns a region
// needs and jpeg_skip_scanlines skips the IDCT and colour conversion of the rows above it;
// decoding stops after the region's last row. The settings are tjDecompress2's (accurate
// integer IDCT, fancy upsampling, corrupt-data warnings are errors, at most 500 progressive
// scans), so the pixels are those of the full decode at the same scale (tested).
//
// libjpeg reports errors by longjmp: every libjpeg call sits in run_region_decode, whose
// locals are all trivially destructible, and nothing in it allocates or throws.
#include <csetjmp>
#include <cstdio>  // jpeglib.h needs FILE and size_t first
#include <cstring>
#include <memory>
#include <new>
#include <vector>

#include <jpeglib.h>

#include <fmt/format.h>

#include "codecs/decoders.hpp"
#include "codecs/pixel_convert.hpp"
#include "imgstore/error.hpp"

namespace imgstore::detail {

namespace {

constexpr int kMaxProgressiveScans = 500;  // TJFLAG_LIMITSCANS's limit
constexpr JDIMENSION kBatchRows = 16;      // rows per jpeg_read_scanlines: one 4:2:0 iMCU row

struct ErrorManager {
  jpeg_error_mgr pub;
  std::jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

[[noreturn]] void fail_with(j_common_ptr cinfo) {
  auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, err->message);
  std::longjmp(err->jump, 1);
}

void on_error(j_common_ptr cinfo) { fail_with(cinfo); }

// Level -1 is libjpeg's "corrupt data" warning class (premature end, bad Huffman code...):
// TJFLAG_STOPONWARNING's rule, never a silently grey image. Trace messages (>= 0) are ignored.
void on_message(j_common_ptr cinfo, int level) {
  if (level < 0) fail_with(cinfo);
}

void on_progress(j_common_ptr cinfo) {
  auto* dinfo = reinterpret_cast<j_decompress_ptr>(cinfo);
  if (dinfo->input_scan_number > kMaxProgressiveScans) {
    auto* err = reinterpret_cast<ErrorManager*>(cinfo->err);
    std::snprintf(err->message, sizeof err->message,
                  "progressive JPEG has more than %d scans", kMaxProgressiveScans);
    std::longjmp(err->jump, 1);
  }
}

// One decompressor per thread, created once (jpeg_create_decompress allocates its pools) and
// reset with jpeg_abort_decompress after every image; after a failure it is replaced, as
// jpeg_codec.cpp replaces a failed TurboJPEG handle.
struct Decompressor {
  jpeg_decompress_struct cinfo{};
  ErrorManager err{};
  jpeg_progress_mgr progress{};

  Decompressor() {
    cinfo.err = jpeg_std_error(&err.pub);
    err.pub.error_exit = on_error;
    err.pub.emit_message = on_message;
    if (setjmp(err.jump)) throw std::bad_alloc();  // jpeg_create_decompress's only failure
    jpeg_create_decompress(&cinfo);
    progress.progress_monitor = on_progress;
  }
  ~Decompressor() { jpeg_destroy_decompress(&cinfo); }
  Decompressor(const Decompressor&) = delete;
  Decompressor& operator=(const Decompressor&) = delete;
};

// What run_region_decode decodes and where its rows go. Sized by the caller: `rows` holds
// kBatchRows rows of the full scaled width in `pixel_size` bytes, `dest` the region.
struct RegionJob {
  const std::uint8_t* data;
  std::size_t size;
  J_COLOR_SPACE space;
  int pixel_size, denom;
  JDIMENSION width, height;  // the scaled image
  JDIMENSION x0, y0, x1, y1;  // the region in it
  std::uint8_t* rows;
  std::uint8_t* dest;  // (y1 - y0) rows of (x1 - x0) * pixel_size bytes
};

// False with d.err.message set if libjpeg fails. Columns: the crop widens by one pixel each
// side where it can, because fancy upsampling treats a partial region's left and right edges
// as the image's (libjpeg.txt, "Partial image decompression"); those pixels are not copied.
bool run_region_decode(Decompressor& d, const RegionJob& job) {
  j_decompress_ptr cinfo = &d.cinfo;
  if (setjmp(d.err.jump)) {
    jpeg_abort_decompress(cinfo);
    return false;
  }
  jpeg_mem_src(cinfo, job.data, static_cast<unsigned long>(job.size));
  jpeg_read_header(cinfo, TRUE);
  cinfo->scale_num = 1;
  cinfo->scale_denom = static_cast<unsigned>(job.denom);
  cinfo->out_color_space = job.space;
  cinfo->dct_method = JDCT_ISLOW;
  cinfo->do_fancy_upsampling = TRUE;
  cinfo->progress = cinfo->progressive_mode ? &d.progress : nullptr;
  jpeg_start_decompress(cinfo);
  if (cinfo->output_width != job.width || cinfo->output_height != job.height ||
      cinfo->output_components != job.pixel_size) {
    std::snprintf(d.err.message, sizeof d.err.message,
                  "libjpeg decodes %ux%ux%d at 1/%d, expected %ux%ux%d", cinfo->output_height,
                  cinfo->output_width, cinfo->output_components, job.denom, job.height, job.width,
                  job.pixel_size);
    jpeg_abort_decompress(cinfo);
    return false;
  }
  JDIMENSION xoff = job.x0 > 0 ? job.x0 - 1 : 0;
  JDIMENSION crop_w = (job.x1 < job.width ? job.x1 + 1 : job.width) - xoff;
  if (crop_w < job.width) jpeg_crop_scanline(cinfo, &xoff, &crop_w);  // xoff moves left
  if (job.y0 > 0) jpeg_skip_scanlines(cinfo, job.y0);
  const std::size_t row_bytes = std::size_t{cinfo->output_width} * job.pixel_size;
  const std::size_t out_row = std::size_t{job.x1 - job.x0} * job.pixel_size;
  const std::size_t skip = std::size_t{job.x0 - xoff} * job.pixel_size;
  JSAMPROW pointers[kBatchRows];
  for (JDIMENSION r = 0; r < kBatchRows; ++r) pointers[r] = job.rows + r * row_bytes;
  JDIMENSION y = job.y0;
  while (y < job.y1) {
    const JDIMENSION want = job.y1 - y < kBatchRows ? job.y1 - y : kBatchRows;
    const JDIMENSION got = jpeg_read_scanlines(cinfo, pointers, want);
    for (JDIMENSION r = 0; r < got; ++r) {
      std::memcpy(job.dest + std::size_t{y - job.y0 + r} * out_row, pointers[r] + skip, out_row);
    }
    y += got;
  }
  jpeg_abort_decompress(cinfo);  // the rows below the region are never decoded
  return true;
}

}  // namespace

void decode_jpeg_region(const std::uint8_t* data, std::size_t size, const ImageInfo& info,
                        std::uint32_t channels, int denom, std::uint32_t x0, std::uint32_t y0,
                        std::uint32_t x1, std::uint32_t y1, const std::string& what,
                        DecodedImage& out) {
  const std::uint32_t width = jpeg_scaled(info.width, denom), height = jpeg_scaled(info.height, denom);
  if (!(x0 < x1 && x1 <= width && y0 < y1 && y1 <= height)) {
    throw UsageError(fmt::format("{}: region [{}, {}) x [{}, {}) is empty or outside the {}x{} "
                                 "image at 1/{}", what, x0, x1, y0, y1, width, height, denom));
  }
  const JpegOutput plan = jpeg_output(info, channels);
  const J_COLOR_SPACE space = plan.mode == SourceMode::CMYK ? JCS_CMYK
                              : plan.mode == SourceMode::L  ? JCS_GRAYSCALE
                                                            : JCS_RGB;
  const int pixel_size = static_cast<int>(source_mode_bytes(plan.mode));
  const std::uint32_t out_w = x1 - x0, out_h = y1 - y0;
  out.shape = Shape{out_h, out_w, channels};
  out.pixels.resize(out.shape.bytes());
  thread_local std::vector<std::uint8_t> rows, converted;
  rows.resize(std::size_t{kBatchRows} * width * pixel_size);
  std::uint8_t* dest = out.pixels.data();
  if (!plan.direct) {
    converted.resize(std::size_t{out_w} * out_h * pixel_size);
    dest = converted.data();
  }
  thread_local std::unique_ptr<Decompressor> decompressor;
  if (!decompressor) decompressor = std::make_unique<Decompressor>();
  const RegionJob job{data, size, space, pixel_size, denom, width, height,
                      x0, y0, x1, y1, rows.data(), dest};
  if (!run_region_decode(*decompressor, job)) {
    const std::string message =
        fmt::format("{}: corrupt JPEG: decoding failed: {}", what, decompressor->err.message);
    decompressor.reset();
    throw DataError(message);
  }
  if (!plan.direct) convert_rows(plan.mode, dest, out_w, out_h, channels, out.pixels.data());
}

}  // namespace imgstore::detail
