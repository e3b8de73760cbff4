// StoreReader::will_need: LMDB, HDF5 and sharded stores start reading exactly the hinted
// records into the page cache (seen with mincore after evicting the file), and ignore hints
// they cannot place. The stores live under the working directory (the build tree), not a
// tmpfs, so evicting their pages is possible; the test fails, saying so, if it is not.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "detail/fs_util.hpp"
#include "fixtures.hpp"
#include "imgstore/format.hpp"
#include "imgstore/store.hpp"
#include "test_support.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

namespace {

constexpr std::size_t kPage = 4096;

// A fresh directory under the current one (ctest runs tests in the build tree), removed at the end.
class DiskDir {
 public:
  DiskDir() : path_(fs::current_path() / ("will-need-" + std::to_string(::getpid()) + "-" +
                                          std::to_string(std::random_device{}()))) {
    fs::create_directories(path_);
  }
  ~DiskDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  DiskDir(const DiskDir&) = delete;
  DiskDir& operator=(const DiskDir&) = delete;
  fs::path operator/(const std::string& name) const { return path_ / name; }

 private:
  fs::path path_;
};

// Pages of `file` in the page cache, per mincore over a mapping of our own (mapping faults
// nothing in).
std::size_t resident_pages(const fs::path& file) {
  const detail::Fd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(fd.get() >= 0);
  const auto size = static_cast<std::size_t>(fs::file_size(file));
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, fd.get(), 0);
  REQUIRE(map != MAP_FAILED);
  std::vector<unsigned char> in_core((size + kPage - 1) / kPage);
  const int rc = ::mincore(map, size, in_core.data());
  ::munmap(map, size);
  REQUIRE(rc == 0);
  std::size_t n = 0;
  for (unsigned char c : in_core) n += c & 1;
  return n;
}

// Writes the file's dirty pages and drops them from the page cache.
void evict(const fs::path& file) {
  const detail::Fd fd(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  REQUIRE(fd.get() >= 0);
  ::fdatasync(fd.get());
  REQUIRE(::posix_fadvise(fd.get(), 0, 0, POSIX_FADV_DONTNEED) == 0);
}

// Waits (up to 10 s: the read is asynchronous) until at least `want` pages are resident.
std::size_t wait_resident(const fs::path& file, std::size_t want) {
  std::size_t now = resident_pages(file);
  for (int i = 0; i < 1000 && now < want; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    now = resident_pages(file);
  }
  return now;
}

void write_store(Format format, const fs::path& path, const ImageBatch& images,
                 std::uint32_t shards = 1) {
  const StoreSpec spec = test::spec_for(images, {"a", "b", "c", "d"}, "train", "will_need unit test");
  WriterOptions options;
  options.shards = shards;
  test::write_in_batches(*create_store(format, path, spec, options), images, 256);
}

// Pages `count` records of the store take: LMDB puts each value (32-byte header + pixels, plus
// its 16-byte page header) in whole pages of its own; HDF5 packs them back to back.
std::size_t record_pages(const StoreReader& reader, std::uint64_t count) {
  const std::size_t bytes = reader.image_bytes();
  if (reader.format() == Format::Lmdb) return count * ((bytes + 48 + kPage - 1) / kPage);
  return count * bytes / kPage;
}

// Hints records [first, first + count) of a store whose data is `file` and checks that their
// pages, and not the rest of the file, were read in.
void check_hint_reads_the_records(const StoreReader& reader, const fs::path& file,
                                  std::uint64_t first, std::uint64_t count) {
  evict(file);
  const std::size_t before = resident_pages(file);
  const std::size_t file_pages = (fs::file_size(file) + kPage - 1) / kPage;
  const std::size_t records = record_pages(reader, count);
  INFO("file pages ", file_pages, ", resident after eviction ", before);
  REQUIRE_MESSAGE(before + records < file_pages / 2,
                  "the file's pages could not be evicted (a tmpfs?), so the test proves nothing");
  reader.will_need(first, count);
  const std::size_t after = wait_resident(file, before + records);
  INFO("resident after the hint ", after, ", the records take ", records, " pages");
  CHECK(after >= before + records);
  // The span's ends and LMDB's leaf pages among the values: nowhere near the whole file.
  CHECK(after <= before + records + records / 16 + 16);
}

}  // namespace

TEST_CASE("will_need: LMDB and HDF5 read the hinted records into the page cache, and no more") {
  DiskDir dir;
  // 4,000 records of 32x32x3: 12 MiB (LMDB 16 MiB, one 4 KiB overflow page each).
  const ImageBatch images = fixtures::make_images(4000, {32, 32, 3}, 4, 11);
  for (Format format : {Format::Lmdb, Format::Hdf5}) {
    CAPTURE(to_string(format));
    // LMDB opened with readahead walks its keys at open through the map, which faults in
    // (and maps, so no eviction can drop) pages all over the file: with no_readahead only.
    for (bool no_readahead : {false, true}) {
      if (format == Format::Lmdb && !no_readahead) continue;
      CAPTURE(no_readahead);
      const fs::path path = dir / ((no_readahead ? "nra-" : "") + store_file_name("train", format));
      write_store(format, path, images);
      ReaderOptions ro;
      ro.no_readahead = no_readahead;
      const auto reader = open_store(path, ro);
      const fs::path file = format == Format::Lmdb ? path / "data.mdb" : path;
      check_hint_reads_the_records(*reader, file, 1000, 1024);
      // Still read back exactly, hinted or not.
      std::vector<std::uint8_t> pixels(images.shape.bytes());
      for (std::uint64_t i : {0u, 1000u, 2023u, 3999u}) {
        CHECK(reader->read_one(i, pixels.data()) == images.labels[i]);
        CHECK(std::equal(pixels.begin(), pixels.end(), images.image(i)));
      }
      // Out of range or empty: ignored, no throw.
      CHECK_NOTHROW(reader->will_need(3990, 1000));
      CHECK_NOTHROW(reader->will_need(5000, 10));
      CHECK_NOTHROW(reader->will_need(0, 0));
    }
  }
}

TEST_CASE("will_need: a sharded store forwards the hint to the shards it covers") {
  DiskDir dir;
  const ImageBatch images = fixtures::make_images(4000, {32, 32, 3}, 4, 12);
  const fs::path path = dir / "train.h5";
  write_store(Format::Hdf5, path, images, 4);
  const auto reader = open_store(path, {});
  const auto ranges = reader->shard_ranges();
  REQUIRE(ranges.size() == 4);
  // A hint across the boundary of shards 1 and 2 reads pages of both, none of shards 0 and 3.
  std::vector<fs::path> files;
  for (const auto& entry : fs::directory_iterator(path)) {
    if (entry.path().extension() == ".h5") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  REQUIRE(files.size() == 4);
  std::vector<std::size_t> before;
  for (const auto& f : files) {
    evict(f);
    before.push_back(resident_pages(f));
  }
  const std::uint64_t first = ranges[2].first - 300, count = 600;
  reader->will_need(first, count);
  const std::size_t per_shard = 300 * reader->image_bytes() / kPage;
  CHECK(wait_resident(files[1], before[1] + per_shard) >= before[1] + per_shard);
  CHECK(wait_resident(files[2], before[2] + per_shard) >= before[2] + per_shard);
  CHECK(resident_pages(files[0]) <= before[0] + 2);
  CHECK(resident_pages(files[3]) <= before[3] + 2);
}
