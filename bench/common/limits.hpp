// The CPU limits a loader's "x limit" figure divides by, measured in the same run on the same
// bytes: a RAM gather of the records at the loader's thread count (for raw payloads), and the
// fastest full PNG decoder times the thread count (for PNG payloads). A loader that beats its
// limit shows the limit is wrong, so beaten limits are flagged, never shown as a fine ratio.
// Each gather counts what it moved, so a test can prove it moved exactly the records it claims
// (tests/unit/test_bench_limits.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "imgstore/image.hpp"

namespace imgstore::detail {
struct PngDecoderTiming;  // src/detail/png_decode_limit.hpp
}  // namespace imgstore::detail

namespace imgstore::bench {

// One timed gather run.
struct GatherRun {
  double seconds = 0;
  unsigned threads = 0;
  std::uint64_t records = 0;     // records copied
  std::uint64_t bytes = 0;       // bytes copied into batch buffers
  std::uint64_t batches = 0;     // batches filled
  std::uint64_t landed_sum = 0;  // sum of each record's first byte as it landed in its batch
  std::vector<std::uint64_t> delivered;  // record indices copied (only when asked for)
};

// `threads` std::threads take batches of `batch` consecutive entries of `order` in turn and
// memcpy those records (each `record_bytes` long, record i at records + i * record_bytes) into
// their own batch buffer: what a loader moves per epoch, without reading, decoding or checking.
// With `keep_delivered`, run.delivered lists every record index copied (for tests; it costs).
GatherRun gather_run(const std::uint8_t* records, std::size_t record_bytes,
                     const std::vector<std::uint64_t>& order, std::size_t batch, unsigned threads,
                     bool keep_delivered = false);

// The RAM gather limit in images/s: the fastest of `runs` runs (after one warm-up gather; this
// VM's noise only slows a run down, so a median limit was beaten), each
// over a new seeded shuffle of the `count` records, gathered whole as many times as it takes
// to last at least `min_run_seconds`.
double gather_limit(const std::uint8_t* records, std::size_t count, std::size_t record_bytes,
                    std::size_t batch, unsigned threads, int runs, std::uint64_t seed,
                    double min_run_seconds = 0.05);

// The PNG decode limit: the fastest full decoder of detail::time_png_decoders (imgstore's lean
// path, libpng, libpng's simplified API; each checked against decode_png on every PNG) on one
// thread, times the thread count.
struct DecodeLimit {
  std::string decoder;            // the fastest full decoder's name
  double single_thread_ips = 0;   // its images/s on one thread
  unsigned threads = 0;
  double ips = 0;                 // single_thread_ips x threads
  std::size_t images = 0;         // PNGs timed
};

DecodeLimit png_decode_limit(const std::vector<std::vector<std::uint8_t>>& pngs, const Shape& shape,
                             unsigned threads, int repeats);

// Every decoder's single-thread timing on `pngs`: the core's (detail::time_png_decoders:
// imgstore, libpng, libpng simplified, and the inflate steps alone) plus "libspng" (its
// defaults: CRCs and adler32 checked). Throws DataError if libspng's pixels differ from
// decode_png's. png_decode_limit takes the fastest full decoder of these.
std::vector<detail::PngDecoderTiming> png_decoder_timings(
    const std::vector<std::vector<std::uint8_t>>& pngs, const Shape& shape, int repeats);

// Up to `sample` files of a PNG folder store of `count` records (00000000.png ...), chosen by
// a seeded shuffle, read into memory: the decode limit's input.
std::vector<std::vector<std::uint8_t>> png_folder_sample(const std::filesystem::path& dir,
                                                         std::size_t count, std::size_t sample,
                                                         std::uint64_t seed);

// A measured rate against its limit. ratio > 1: the measured path beat its limit, which can
// only mean the limit is wrong.
struct LimitRatio {
  double ratio = 0;
  bool beaten = false;
};

LimitRatio compare_to_limit(double measured_ips, double limit_ips);

// The loud flag printed next to a beaten limit (or floor: `what` = "floor").
std::string beaten_flag(const std::string& what = "limit");

// "0.93x", or "1.05x  LIMIT BEATEN: the limit is wrong".
std::string format_ratio(const LimitRatio& r);

}  // namespace imgstore::bench
