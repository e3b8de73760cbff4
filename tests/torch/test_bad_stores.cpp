// Bad stores through the prefetching loader (issue #3): a store that is missing, of the wrong
// format, corrupt (bad checksum, truncated value, wrong shape), or whose manifest disagrees with
// its data gets a clear error, at open or at the failing record, naming the store and the
// record. Every pass runs with 2 threads, prefetch depth >= 2 and shuffling; after each failure
// the loader is destroyed, a new loader makes a full pass over a good store, and the process
// goes back to the thread count it had before (no leaked pipeline threads).
//
// Stores are damaged with the tools a user would have: std::filesystem for PNG files, py-lmdb
// and h5py (Debian's /usr/bin/python3) for LMDB values and HDF5 datasets. (liblmdb is a private
// dependency of the shared imgstore_core, so this binary does not link the LMDB C API.)
#include <doctest/doctest.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <numeric>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <oneapi/tbb/parallel_for.h>
#include <oneapi/tbb/task_arena.h>
#include <torch/torch.h>

#include "../unit/test_support.hpp"
#include "imgstore/error.hpp"
#include "imgstore/torch/dataset.hpp"
#include "imgstore/torch/loader.hpp"
#include "torch_test_support.hpp"

using namespace imgstore;
using imgstore::test::expecting;
namespace fs = std::filesystem;

namespace {

constexpr std::size_t kRecords = 256;
constexpr std::size_t kBatch = 16;
// Position in the first shuffled pass of the record we damage: batch 5, so five batches come
// through before the failing one.
constexpr std::size_t kBadPosition = 5 * kBatch + 3;

LoaderOptions bad_loader_options() {
  LoaderOptions o;
  o.batch_size = kBatch;
  o.threads = 2;
  o.prefetch_depth = 3;
  o.shuffle = true;
  o.seed = 11;
  return o;
}

void write_store(Format format, const fs::path& path, std::size_t hdf5_chunk = 0) {
  WriterOptions w;
  w.durable = false;
  w.hdf5.chunk_records = hdf5_chunk;
  store_many(format, path, imgstore::test::indexed_images(kRecords, 8, 8, 3), {}, w);
}

// Runs a Python program with Debian's interpreter (which has py-lmdb, h5py and numpy); the
// program sees `args` as sys.argv[1:].
void run_python(const imgstore::test::TempDir& dir, const std::string& program,
                const std::vector<std::string>& args) {
  const fs::path script = dir / "damage.py";
  imgstore::test::spit(script, program);
  std::string cmd = "/usr/bin/python3 '" + script.string() + "'";
  for (const auto& a : args) cmd += " '" + a + "'";
  REQUIRE_MESSAGE(std::system(cmd.c_str()) == 0, cmd);
}

// Edits the committed LMDB store at `path` as a py-lmdb user would (no lock file: the store
// is written and read with MDB_NOLOCK). mode "flip": invert the last pixel byte of `key`;
// "truncate": drop the value's last byte; "add": put a copy of record 0 under `key`;
// "delete": remove `key`.
void edit_lmdb(const imgstore::test::TempDir& dir, const fs::path& path, const std::string& key,
               const std::string& mode) {
  run_python(dir, R"(import sys, lmdb
path, key, mode = sys.argv[1], sys.argv[2].encode(), sys.argv[3]
env = lmdb.open(path, lock=False, max_dbs=2)
with env.begin(write=True) as txn:
    if mode == "add":
        assert txn.get(key) is None
        txn.put(key, txn.get(b"00000000"))
    elif mode == "delete":
        assert txn.delete(key)
    else:
        v = bytearray(txn.get(key))
        if mode == "flip":
            v[-1] ^= 0xFF
        else:
            v = v[:-1]
        txn.put(key, bytes(v))
env.close()
)",
             {path.string(), key, mode});
}

// The record the first pass of a loader with bad_loader_options() meets at kBadPosition.
std::uint64_t record_at_bad_position(const fs::path& good_store,
                                     std::size_t position = kBadPosition) {
  PrefetchLoader probe(good_store, bad_loader_options());
  const auto order = probe.epoch_indices(probe.epoch());
  REQUIRE(order.size() == kRecords);
  return order[position];
}

// One pass; counts the batches delivered before anything is thrown.
void consume(PrefetchLoader& loader, std::size_t& batches) {
  batches = 0;
  for (auto& batch : loader) {
    REQUIRE(batch.data.size(0) > 0);
    ++batches;
  }
}

// A full pass of a new loader over a good store sees every record exactly once.
void good_pass(const fs::path& good_store) {
  PrefetchLoader loader(good_store, bad_loader_options());
  std::vector<std::int64_t> seen;
  for (auto& batch : loader) {
    for (std::int64_t i = 0; i < batch.target.size(0); ++i) {
      seen.push_back(batch.target[i].item<std::int64_t>());
    }
  }
  std::sort(seen.begin(), seen.end());
  std::vector<std::int64_t> all(kRecords);
  std::iota(all.begin(), all.end(), 0);
  CHECK(seen == all);
}

// Thread count of the process once loaders have run on a good store (TBB keeps its workers).
// TBB's worker pool is shared by every arena (the loader's, the PNG writer's) and lives while
// any arena does, so its threads come and go independently of loaders. Pin it: keep one
// arena alive for the whole run and make every worker start, so that the count measured here
// only grows if a loader leaks a thread.
int warm_thread_count(const fs::path& good_store) {
  static tbb::task_arena pinned = [] {
    tbb::task_arena arena;
    arena.initialize();
    return arena;
  }();
  pinned.execute([] {
    tbb::parallel_for(0, 64, [](int) { std::this_thread::sleep_for(std::chrono::milliseconds(5)); });
  });
  good_pass(good_store);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  good_pass(good_store);
  return imgstore::test::thread_count();
}

// After the failing loader is gone, a new loader works and no thread is left behind.
void check_recovers(const fs::path& good_store, int threads_before) {
  good_pass(good_store);
  int now = imgstore::test::thread_count();
  for (int i = 0; i < 500 && now > threads_before; ++i) {  // up to 5 s on a loaded machine
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
    now = imgstore::test::thread_count();
  }
  CHECK(now <= threads_before);
}

std::string quoted(const fs::path& p) { return "'" + p.string() + "'"; }

// doctest::Contains takes a doctest::String, which it copies.
doctest::Contains has(const std::string& s) { return doctest::Contains(s.c_str()); }

// Two passes over `bad`: the first fails naming `first` after delivering the batches before
// the bad record; the next pass (another epoch, another order) meets it too, failing with
// `second`. The loader stays usable in between.
void check_fails_midway(const fs::path& bad, const std::string& first, const std::string& second) {
  PrefetchLoader loader(bad, bad_loader_options());
  std::size_t batches = 0;
  CHECK_THROWS_WITH_AS(consume(loader, batches), has(first), DataError);
  CHECK(batches == kBadPosition / kBatch);
  CHECK_THROWS_WITH_AS(consume(loader, batches), has(second), DataError);
}

}  // namespace

TEST_CASE("bad store: a missing path fails at open naming it") {
  imgstore::test::TempDir dir;
  const auto good = dir / "good.lmdb";
  write_store(Format::Lmdb, good);
  const int threads = warm_thread_count(good);

  for (const char* name : {"absent.lmdb", "absent.h5", "absent.png"}) {
    CAPTURE(name);
    const auto path = dir / name;
    CHECK_THROWS_WITH_AS(PrefetchLoader(path, bad_loader_options()),
                         has(quoted(path) + " does not exist"), IoError);
    CHECK_THROWS_WITH_AS(PrefetchLoader(open_dataset(path, expecting(Format::Lmdb)),
                                        bad_loader_options()),
                         has(quoted(path)), IoError);
    check_recovers(good, threads);
  }
}

TEST_CASE("bad store: the wrong format fails at open naming the store") {
  imgstore::test::TempDir dir;
  const auto png = dir / "train.png";
  const auto lmdb = dir / "train.lmdb";
  const auto h5 = dir / "train.h5";
  write_store(Format::PngFolder, png);
  write_store(Format::Lmdb, lmdb);
  write_store(Format::Hdf5, h5);
  const int threads = warm_thread_count(lmdb);

  const auto o = bad_loader_options();
  CHECK_THROWS_WITH_AS(PrefetchLoader(open_dataset(png, expecting(Format::Lmdb)), o),
                       has(quoted(png) + " is a png store, not lmdb"), UsageError);
  CHECK_THROWS_WITH_AS(PrefetchLoader(open_dataset(h5, expecting(Format::Lmdb)), o),
                       has(quoted(h5) + " is a hdf5 store, not lmdb"), UsageError);
  CHECK_THROWS_WITH_AS(PrefetchLoader(open_dataset(lmdb, expecting(Format::Hdf5)), o),
                       has(quoted(lmdb) + " is a lmdb store, not hdf5"), UsageError);
  CHECK_THROWS_WITH_AS(PrefetchLoader(open_dataset(png, expecting(Format::Hdf5)), o),
                       has(quoted(png) + " is a png store, not hdf5"), UsageError);
  CHECK_THROWS_WITH_AS(PrefetchLoader(open_dataset(h5, expecting(Format::PngFolder)), o),
                       has(quoted(h5) + " is a hdf5 store, not png"), UsageError);
  CHECK_THROWS_WITH_AS(PrefetchLoader(open_dataset(lmdb, expecting(Format::PngFolder)), o),
                       has(quoted(lmdb) + " is a lmdb store, not png"), UsageError);
  check_recovers(lmdb, threads);

  // A directory that is not a store, and a file that is not HDF5.
  const auto plain_dir = dir / "photos";
  fs::create_directories(plain_dir);
  fs::copy_file(png / "00000000.png", plain_dir / "00000000.png");
  CHECK_THROWS_WITH_AS(PrefetchLoader(plain_dir, o),
                       has(quoted(plain_dir) + " is a directory but not an imgstore"),
                       DataError);
  CHECK_THROWS_WITH_AS(PrefetchLoader(open_dataset(plain_dir, expecting(Format::Lmdb)), o),
                       has(quoted(plain_dir)), DataError);
  const auto text = dir / "train.txt";
  imgstore::test::spit(text, "not a store at all\n");
  CHECK_THROWS_WITH_AS(PrefetchLoader(text, o), has(quoted(text)), DataError);
  check_recovers(lmdb, threads);
}

TEST_CASE("bad store: an LMDB record with a corrupt pixel fails at that key after earlier batches") {
  imgstore::test::TempDir dir;
  const auto good = dir / "good.lmdb";
  const auto bad = dir / "train.lmdb";
  write_store(Format::Lmdb, good);
  write_store(Format::Lmdb, bad);
  const int threads = warm_thread_count(good);
  const std::uint64_t record = record_at_bad_position(good);
  const std::string key = fmt::format("{:08d}", record);
  edit_lmdb(dir, bad, key, "flip");

  check_fails_midway(bad, fmt::format("{} key '{}'", quoted(bad), key), "checksum");
  check_recovers(good, threads);

  // The least prefetch, and a corrupt record in the first batch: begin() itself throws.
  const auto first = dir / "first.lmdb";
  write_store(Format::Lmdb, first);
  const std::string first_key = fmt::format("{:08d}", record_at_bad_position(good, 7));
  edit_lmdb(dir, first, first_key, "flip");
  {
    auto o = bad_loader_options();
    o.prefetch_depth = 2;
    PrefetchLoader loader(first, o);
    std::size_t batches = 0;
    CHECK_THROWS_WITH_AS(consume(loader, batches),
                         has(fmt::format("{} key '{}'", quoted(first), first_key)), DataError);
    CHECK(batches == 0);
  }
  check_recovers(good, threads);
}

TEST_CASE("bad store: a truncated LMDB value fails at that key naming the payload size") {
  imgstore::test::TempDir dir;
  const auto good = dir / "good.lmdb";
  const auto bad = dir / "train.lmdb";
  write_store(Format::Lmdb, good);
  write_store(Format::Lmdb, bad);
  const int threads = warm_thread_count(good);
  const std::uint64_t record = record_at_bad_position(good);
  const std::string key = fmt::format("{:08d}", record);
  edit_lmdb(dir, bad, key, "truncate");

  check_fails_midway(bad, fmt::format("{} key '{}'", quoted(bad), key),
                     "payload is 191 bytes, expected 192");
  check_recovers(good, threads);
}

TEST_CASE("bad store: an HDF5 file with /images of rank 3 fails at open naming it") {
  imgstore::test::TempDir dir;
  const auto good = dir / "good.h5";
  write_store(Format::Hdf5, good);
  const int threads = warm_thread_count(good);

  // The tutorial's layout, as its h5py calls write it; rank 4 loads, rank 3 must not.
  const auto rank4 = dir / "rank4.h5";
  const auto rank3 = dir / "rank3.h5";
  run_python(dir, R"(import sys, h5py, numpy as np
for path, shape in ((sys.argv[1], (40, 8, 8, 3)), (sys.argv[2], (40, 8, 24))):
    images = np.arange(np.prod(shape), dtype=np.uint64).astype(np.uint8).reshape(shape)
    meta = np.arange(40, dtype=np.uint8)
    with h5py.File(path, "w") as f:
        f.create_dataset("images", np.shape(images), h5py.h5t.STD_U8BE, data=images)
        f.create_dataset("meta", np.shape(meta), h5py.h5t.STD_U8BE, data=meta)
)",
             {rank4.string(), rank3.string()});
  {
    PrefetchLoader loader(rank4, bad_loader_options());
    std::size_t batches = 0;
    consume(loader, batches);
    CHECK(batches == 3);
  }
  CHECK_THROWS_WITH_AS(PrefetchLoader(rank3, bad_loader_options()),
                       has(quoted(rank3)), DataError);
  CHECK_THROWS_WITH_AS(PrefetchLoader(open_dataset(rank3, expecting(Format::Hdf5)),
                                      bad_loader_options()),
                       has("rank 3"), DataError);
  check_recovers(good, threads);
}

TEST_CASE("bad store: an HDF5 record overwritten in place fails its checksum naming it") {
  imgstore::test::TempDir dir;
  const auto good = dir / "good.h5";
  write_store(Format::Hdf5, good);
  const int threads = warm_thread_count(good);

  for (std::size_t chunk : {std::size_t{0}, std::size_t{16}}) {
    CAPTURE(chunk);
    const auto bad = dir / fmt::format("train-{}.h5", chunk);
    write_store(Format::Hdf5, bad, chunk);
    const std::uint64_t record = record_at_bad_position(good);
    run_python(dir, R"(import sys, h5py
with h5py.File(sys.argv[1], "r+") as f:
    f["images"][int(sys.argv[2])] = 0
)",
               {bad.string(), std::to_string(record)});
    check_fails_midway(bad, fmt::format("{} record {}:", quoted(bad), record), "checksum");
    check_recovers(good, threads);
  }
}

TEST_CASE("bad store: a PNG file swapped for another image or truncated fails naming the file") {
  imgstore::test::TempDir dir;
  const auto good = dir / "good.png";
  write_store(Format::PngFolder, good);
  const int threads = warm_thread_count(good);
  const std::uint64_t record = record_at_bad_position(good);
  const std::string file = fmt::format("{:08d}.png", record);
  const std::string other = fmt::format("{:08d}.png", (record + 1) % kRecords);

  SUBCASE("a different valid PNG of the same shape: checksum mismatch") {
    const auto bad = dir / "swapped.png";
    write_store(Format::PngFolder, bad);
    fs::copy_file(bad / other, bad / file, fs::copy_options::overwrite_existing);
    check_fails_midway(bad, fmt::format("{} file '{}'", quoted(bad), file), "checksum");
  }
  SUBCASE("a truncated file") {
    const auto bad = dir / "truncated.png";
    write_store(Format::PngFolder, bad);
    fs::resize_file(bad / file, fs::file_size(bad / file) / 2);
    check_fails_midway(bad, quoted(bad / file), "corrupt PNG");
  }
  check_recovers(good, threads);
}

TEST_CASE("bad store: a manifest that disagrees with the data fails at open naming the store") {
  imgstore::test::TempDir dir;
  const auto good = dir / "good.lmdb";
  write_store(Format::Lmdb, good);
  const int threads = warm_thread_count(good);

  SUBCASE("LMDB with an extra record") {
    const auto bad = dir / "extra.lmdb";
    write_store(Format::Lmdb, bad);
    edit_lmdb(dir, bad, "99999999", "add");
    CHECK_THROWS_WITH_AS(
        PrefetchLoader(bad, bad_loader_options()),
        has(fmt::format("{}: manifest says {} records, database holds {}",
                                      quoted(bad), kRecords, kRecords + 1)),
        DataError);
  }
  SUBCASE("LMDB with a record missing") {
    const auto bad = dir / "missing.lmdb";
    write_store(Format::Lmdb, bad);
    edit_lmdb(dir, bad, "00000100", "delete");
    CHECK_THROWS_WITH_AS(
        PrefetchLoader(open_dataset(bad, expecting(Format::Lmdb)), bad_loader_options()),
        has(fmt::format("{}: manifest says {} records, database holds {}", quoted(bad),
                        kRecords, kRecords - 1)),
        DataError);
  }
  SUBCASE("HDF5 whose /labels or /images was replaced by one of another size") {
    const auto h5_good = dir / "good.h5";
    write_store(Format::Hdf5, h5_good);
    const auto labels = dir / "labels.h5";
    const auto images = dir / "images.h5";
    write_store(Format::Hdf5, labels);
    write_store(Format::Hdf5, images, 16);
    run_python(dir, R"(import sys, h5py
with h5py.File(sys.argv[1], "r+") as f:
    old = f["labels"][:-1]
    del f["labels"]
    f.create_dataset("labels", data=old)
with h5py.File(sys.argv[2], "r+") as f:
    old = f["images"][:, :, :4, :]
    del f["images"]
    f.create_dataset("images", data=old, chunks=(16, 8, 4, 3))
)",
               {labels.string(), images.string()});
    CHECK_THROWS_WITH_AS(PrefetchLoader(labels, bad_loader_options()),
                         has(quoted(labels) + " dataset /labels: wrong shape"), DataError);
    CHECK_THROWS_WITH_AS(PrefetchLoader(open_dataset(images, expecting(Format::Hdf5)),
                                        bad_loader_options()),
                         has(quoted(images)), DataError);
    CHECK_THROWS_WITH_AS(PrefetchLoader(images, bad_loader_options()),
                         has(fmt::format("manifest says {} images", kRecords)), DataError);
    check_recovers(h5_good, threads);
  }
  SUBCASE("PNG folder whose labels.csv lacks its last row") {
    const auto bad = dir / "short.png";
    write_store(Format::PngFolder, bad);
    std::string csv = imgstore::test::slurp(bad / "labels.csv");
    REQUIRE(csv.size() > 2);
    csv.erase(csv.rfind('\n', csv.size() - 2) + 1);  // drop the last line
    imgstore::test::spit(bad / "labels.csv", csv);
    CHECK_THROWS_WITH_AS(PrefetchLoader(bad, bad_loader_options()),
                         has(quoted(bad / "labels.csv")), DataError);
    CHECK_THROWS_WITH_AS(PrefetchLoader(open_dataset(bad, expecting(Format::PngFolder)),
                                        bad_loader_options()),
                         has(fmt::format("missing row for record {}", kRecords - 1)),
                         DataError);
  }
  check_recovers(good, threads);
}
