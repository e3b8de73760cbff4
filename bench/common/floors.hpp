// What the disk and the kernel can do with the same bytes a store writes or reads, measured in
// the same run as the store: the "limit" every "x limit" figure of the benchmarks divides by.
// Each floor counts its own system calls, so a test can prove it moved exactly the bytes it
// claims, in the pieces it claims (tests/unit/test_bench_floors.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <vector>

namespace imgstore::bench {

namespace fs = std::filesystem;

// Pieces of 1 MiB: one sequential pass of large writes (3 KiB pieces cost ~9x more). Not more:
// writes of 2 MiB or more get 2 MiB page-cache folios (ext4, Linux 6.18), which cost up to 15x
// more per byte in a VM that returns free memory to its host (450 MB: 1.1 s in 4 MiB pieces,
// 0.07 s in 1 MiB pieces), so a floor of 4 MiB pieces was sometimes no floor.
constexpr std::size_t kFloorPiece = std::size_t{1} << 20;

// One timed floor run.
struct FloorRun {
  double seconds = 0;
  std::uint64_t bytes = 0;         // bytes written (or read)
  std::uint64_t files = 0;         // files created (or read)
  std::uint64_t write_calls = 0;   // write() calls that returned > 0 bytes
  std::uint64_t read_calls = 0;    // read() calls that returned > 0 bytes
  std::size_t largest_piece = 0;   // most bytes a single call moved
};

// How a floor ends, as the store it stands for: nothing (page cache), or fsync of the file(s)
// and their directory (a directory of many files gets one syncfs(), as imgstore's writers do).
enum class Flush { None, Fsync };

// The byte pattern the write floors fill their reused buffer with (not zeros, so nothing can
// special-case it): byte k of the output is floor_pattern_byte(k).
std::uint8_t floor_pattern_byte(std::uint64_t offset);

// `bytes` into one new file at `file`, sequentially, in pieces of `piece` bytes from one
// reused buffer (allocated and touched before the clock starts).
FloorRun write_floor(const fs::path& file, std::uint64_t bytes, std::size_t piece, Flush flush);

// `cat`: the sources' bytes, in order, streamed into one new file in pieces of `piece` bytes,
// read by a thread of its own one piece ahead of the writes (two reused buffers), as a
// conversion reads its source ahead of its writer: a one-thread cat was slower than a
// two-thread conversion of the same files, so it was no limit. Every piece but the last is
// full: small files are packed together, one write per piece. total > 0: exactly `total`
// bytes, going through the sources again from the first as often as needed (or stopping part
// way), so the floor writes as many bytes as the store it bounds holds (a store of a repeated
// split, or of one split of several).
FloorRun copy_floor(const std::vector<fs::path>& sources, const fs::path& file, std::size_t piece,
                    Flush flush, std::uint64_t total = 0);

// Every file in `files`, read sequentially (pread) to its end into a reused buffer of `piece`
// bytes. With threads > 1, the files taken as one stream of bytes are cut into that many
// contiguous parts, each read sequentially by a thread of its own: the limit of a loader
// reading the store with that many threads.
FloorRun read_floor(const std::vector<fs::path>& files, std::size_t piece, unsigned threads = 1);

// Creating a file per record from one thread: `dir` (new) gets one file per entry of `sizes`,
// named like a PNG folder's, each created, written in one call and closed; then flushed as a
// store directory is. The floor of any one-file-per-image store of those file sizes.
FloorRun file_creation_floor(const fs::path& dir, const std::vector<std::uint64_t>& sizes,
                             Flush flush);

// Fraction of the pages of `files` resident in the page cache (mincore), 0..1.
double resident_fraction(const std::vector<fs::path>& files);

}  // namespace imgstore::bench
