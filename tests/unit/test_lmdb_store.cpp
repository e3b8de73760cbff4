// LMDB store: round trips, map growth, shared environments, concurrency, and corrupt input.
#include <doctest/doctest.h>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>
#include <thread>

#include "detail/fs_util.hpp"
#include "detail/lmdb_handles.hpp"
#include "detail/testing.hpp"
#include "fixtures.hpp"
#include "formats/formats.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"
#include "imgstore/store.hpp"
#include "test_support.hpp"

using namespace imgstore;
namespace fs = std::filesystem;
namespace lmdb = imgstore::detail::lmdb;

namespace {

const Shape kCifar{32, 32, 3};

// doctest::Contains takes a doctest::String; build it from std::string messages.
doctest::Contains has(const std::string& text) { return doctest::Contains(text.c_str()); }
const std::vector<std::string> kClasses{"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};

void write_store(const fs::path& path, const ImageBatch& images, WriterOptions options = {},
                 std::size_t batch_size = 0) {
  const StoreSpec spec = test::spec_for(images, kClasses, path.stem().string());
  test::write_in_batches(*detail::create_lmdb_store(path, spec, options), images, batch_size);
}

void check_same(const ImageBatch& a, const ImageBatch& b) {
  REQUIRE(a.shape == b.shape);
  CHECK(a.labels == b.labels);
  CHECK(a.pixels == b.pixels);
}

// Opens a committed store with the plain C API (no lock file, so nothing is left behind) to
// damage it the way a bad disk or a foreign writer would.
class RawStore {
 public:
  explicit RawStore(const fs::path& path) {
    env_ = lmdb::Env::create("raw");
    env_.set_maxdbs(2, "raw");
    env_.set_mapsize(fs::file_size(path / "data.mdb") * 2 + (4 << 20), "raw");
    env_.open(path.string(), MDB_NOLOCK, 0644, "raw open");
    txn_ = lmdb::Txn::begin(env_.get(), 0, "raw begin");
    main_ = lmdb::Dbi::open(txn_.get(), nullptr, 0, "raw main");
  }
  ~RawStore() {
    if (txn_) txn_.commit("raw commit");
  }
  std::vector<std::uint8_t> get(const std::string& key) {
    MDB_val v{};
    REQUIRE(main_.get(txn_.get(), lmdb::make_val(key.data(), key.size()), v, "raw get"));
    auto* p = static_cast<const std::uint8_t*>(v.mv_data);
    return {p, p + v.mv_size};
  }
  void put(const std::string& key, const std::vector<std::uint8_t>& value, MDB_dbi dbi) {
    MDB_val k = lmdb::make_val(key.data(), key.size());
    MDB_val v = lmdb::make_val(value.data(), value.size());
    lmdb::check(::mdb_put(txn_.get(), dbi, &k, &v, 0), "raw put");
  }
  void put(const std::string& key, const std::vector<std::uint8_t>& value) {
    put(key, value, main_.get());
  }
  void modify(const std::string& key, const std::function<void(std::vector<std::uint8_t>&)>& f) {
    auto value = get(key);
    f(value);
    put(key, value);
  }
  void erase(const std::string& key, MDB_dbi dbi) {
    MDB_val k = lmdb::make_val(key.data(), key.size());
    lmdb::check(::mdb_del(txn_.get(), dbi, &k, nullptr), "raw del");
  }
  void erase(const std::string& key) { erase(key, main_.get()); }
  MDB_dbi meta() {
    return lmdb::Dbi::open(txn_.get(), "__imgstore__", 0, "raw meta").get();
  }
  void drop_meta() { lmdb::check(::mdb_drop(txn_.get(), meta(), 1), "raw drop"); }

 private:
  lmdb::Env env_;
  lmdb::Txn txn_;
  lmdb::Dbi main_;
};


}  // namespace

TEST_CASE("lmdb store round-trips raw records bit-exactly") {
  test::TempDir dir;
  fs::file_time_type mtime_before;
  for (Shape shape : {kCifar, Shape{28, 28, 1}, Shape{5, 7, 4}}) {
    CAPTURE(to_string(shape));
    auto images = fixtures::make_images(37, shape, 10, 42);
    auto path = dir / ("train" + std::to_string(shape.channels) + ".lmdb");
    write_store(path, images, {}, 10);
    // Only data.mdb: no lock.mdb, no staging leftovers.
    CHECK(test::list_dir(path) == std::vector<std::string>{"data.mdb"});

    if (shape.channels == 3) mtime_before = fs::last_write_time(path / "data.mdb");
    auto reader = open_store(path);
    CHECK(reader->format() == Format::Lmdb);
    CHECK(reader->size() == 37);
    CHECK(reader->shape() == shape);
    CHECK(reader->manifest().class_names == kClasses);
    CHECK(reader->manifest().encoding == Encoding::Raw);
    check_same(read_all(*reader), images);
    for (std::size_t i = 0; i < images.size(); ++i) {
      std::int64_t label = -1;
      auto px = reader->read_one(i, &label);
      CHECK(label == images.labels[i]);
      CHECK(std::equal(px.begin(), px.end(), images.image(i)));
    }
    CHECK(reader->bytes_on_disk() > images.pixels.size());
  }
  // Reading never writes: no lock file, data.mdb untouched.
  CHECK(test::list_dir(dir / "train3.lmdb") == std::vector<std::string>{"data.mdb"});
  CHECK(fs::last_write_time(dir / "train3.lmdb" / "data.mdb") == mtime_before);
}

TEST_CASE("lmdb value layout: 32-byte header, raw pixels last") {
  test::TempDir dir;
  auto images = fixtures::make_images(3, kCifar, 10, 7);
  auto path = dir / "v.lmdb";
  write_store(path, images);
  RawStore raw(path);
  auto v = raw.get("00000002");
  REQUIRE(v.size() == 32 + 3072);
  CHECK(std::memcmp(v.data(), "IMGS", 4) == 0);
  CHECK(v[4] == 1);
  CHECK(v[5] == 0);
  CHECK(v[6] == 0);  // raw
  CHECK(v[7] == 3);
  CHECK(v[8] == 32);
  CHECK(v[12] == 32);
  CHECK(v[16] == images.labels[2]);
  CHECK(v[20] == 0x00);  // 3072 = 0x0c00
  CHECK(v[21] == 0x0c);
  std::uint64_t hash = 0;
  for (int i = 7; i >= 0; --i) hash = (hash << 8) | v[24 + i];
  CHECK(hash == xxh3_64(images.image(2), 3072));
  CHECK(std::equal(v.begin() + 32, v.end(), images.image(2)));
}

TEST_CASE("lmdb store round-trips png-encoded records bit-exactly") {
  test::TempDir dir;
  for (Shape shape : {kCifar, Shape{28, 28, 1}, Shape{9, 6, 2}, Shape{4, 4, 4}}) {
    CAPTURE(to_string(shape));
    auto images = fixtures::make_images(25, shape, 10, 3);
    auto path = dir / ("png" + std::to_string(shape.channels) + ".lmdb");
    WriterOptions opt;
    opt.encoding = Encoding::Png;
    opt.threads = 2;
    write_store(path, images, opt, 8);
    auto reader = open_store(path);
    CHECK(reader->manifest().encoding == Encoding::Png);
    check_same(read_all(*reader), images);
  }
}

TEST_CASE("lmdb store_one, store_many, read_all and shuffled read_many") {
  test::TempDir dir;
  auto images = fixtures::make_images(64, kCifar, 10, 11);

  store_one(Format::Lmdb, dir / "one.lmdb", kCifar, images.image(5), images.labels[5]);
  auto one = open_store(dir / "one.lmdb");
  REQUIRE(one->size() == 1);
  std::int64_t label = -1;
  auto px = one->read_one(0, &label);
  CHECK(label == images.labels[5]);
  CHECK(std::equal(px.begin(), px.end(), images.image(5)));

  store_many(Format::Lmdb, dir / "many.lmdb", images, kClasses);
  auto many = open_store(dir / "many.lmdb");
  CHECK(many->manifest().split == "many");
  check_same(read_all(*many), images);

  std::vector<std::uint64_t> order(images.size());
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(5));
  order.push_back(order.front());  // duplicates are fine
  std::vector<std::uint8_t> out(order.size() * kCifar.bytes());
  std::vector<std::int64_t> labels(order.size());
  many->read_many(order.data(), order.size(), out.data(), labels.data());
  for (std::size_t i = 0; i < order.size(); ++i) {
    CHECK(labels[i] == images.labels[order[i]]);
    CHECK(std::equal(out.begin() + i * kCifar.bytes(), out.begin() + (i + 1) * kCifar.bytes(),
                     images.image(order[i])));
  }
  many->read_many(order.data(), 0, nullptr, nullptr);  // empty is fine
  std::uint64_t bad[] = {3, 64};
  CHECK_THROWS_WITH_AS(many->read_many(bad, 2, out.data(), nullptr),
                       has("out of range"), UsageError);
  CHECK_THROWS_AS(many->read_one(64, out.data()), UsageError);
}

TEST_CASE("lmdb map grows by itself far beyond the initial size") {
  test::TempDir dir;
  detail::testing::ForcedLmdbMapSize tiny(64 << 10);  // 64 KiB; the store needs ~1.3 MiB
  auto images = fixtures::make_images(300, kCifar, 10, 9);
  write_store(dir / "big.lmdb", images, {}, 70);
  CHECK(fs::file_size(dir / "big.lmdb" / "data.mdb") > 16 * (64 << 10));
  auto reader = open_store(dir / "big.lmdb");
  check_same(read_all(*reader), images);

  // One batch larger than several doublings, and the manifest write, also grow it.
  store_many(Format::Lmdb, dir / "one_batch.lmdb", images, kClasses);
  check_same(read_all(*open_store(dir / "one_batch.lmdb")), images);
}

TEST_CASE("lmdb store opened twice in one process shares one environment") {
  test::TempDir dir;
  auto images = fixtures::make_images(20, kCifar, 10, 4);
  write_store(dir / "s.lmdb", images);
  auto a = open_store(dir / "s.lmdb");
  auto b = open_store(dir / "s.lmdb");
  ReaderOptions unchecked;
  unchecked.verify_checksums = false;
  unchecked.no_readahead = true;
  auto c = open_store(dir / "." / "s.lmdb", unchecked);  // another spelling of the path
  check_same(read_all(*a), images);
  check_same(read_all(*b), images);
  a.reset();
  check_same(read_all(*b), images);
  check_same(read_all(*c), images);
  b.reset();
  c.reset();
  check_same(read_all(*open_store(dir / "s.lmdb")), images);
}

TEST_CASE("lmdb overwrite replaces a store even while a reader of the old one is open") {
  test::TempDir dir;
  auto first = fixtures::make_images(10, kCifar, 10, 1);
  auto second = fixtures::make_images(12, kCifar, 10, 2);
  write_store(dir / "s.lmdb", first);
  auto old_reader = open_store(dir / "s.lmdb");

  CHECK_THROWS_WITH_AS(write_store(dir / "s.lmdb", second),
                       has("already exists"), IoError);
  WriterOptions opt;
  opt.overwrite = true;
  write_store(dir / "s.lmdb", second, opt);
  CHECK(test::list_dir(dir.path()) == std::vector<std::string>{"s.lmdb"});
  auto new_reader = open_store(dir / "s.lmdb");
  check_same(read_all(*new_reader), second);
  check_same(read_all(*old_reader), first);  // the old mapping stays valid
}

TEST_CASE("lmdb reads are thread-safe") {
  test::TempDir dir;
  auto images = fixtures::make_images(200, kCifar, 10, 8);
  write_store(dir / "t.lmdb", images);
  auto r1 = open_store(dir / "t.lmdb");
  auto r2 = open_store(dir / "t.lmdb");
  std::atomic<int> mismatches{0}, reads{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 6; ++t) {
    threads.emplace_back([&, t] {
      try {
        const StoreReader& r = (t % 2) ? *r1 : *r2;
        std::mt19937 rng(t);
        std::vector<std::uint8_t> buf(8 * kCifar.bytes());
        std::vector<std::int64_t> labels(8);
        for (int iter = 0; iter < 300; ++iter) {
          std::uint64_t idx[8];
          for (auto& i : idx) i = rng() % images.size();
          if (iter % 2) {
            r.read_many(idx, 8, buf.data(), labels.data());
          } else {
            for (int k = 0; k < 8; ++k) labels[k] = r.read_one(idx[k], buf.data() + k * kCifar.bytes());
          }
          for (int k = 0; k < 8; ++k) {
            if (labels[k] != images.labels[idx[k]] ||
                !std::equal(buf.begin() + k * kCifar.bytes(), buf.begin() + (k + 1) * kCifar.bytes(),
                            images.image(idx[k]))) {
              ++mismatches;
            }
            ++reads;
          }
        }
      } catch (...) {
        ++errors;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(errors == 0);
  CHECK(mismatches == 0);
  CHECK(reads == 6 * 300 * 8);
}

TEST_CASE("lmdb reader rejects corrupt records, naming the store and key") {
  test::TempDir dir;
  auto images = fixtures::make_images(10, kCifar, 10, 6);
  auto path = dir / "train.lmdb";
  write_store(path, images);
  std::vector<std::uint8_t> out(kCifar.bytes());
  const std::string where = "corrupt record in " + detail::quote(path) + " key '00000005': ";

  SUBCASE("value one byte short") {
    RawStore(path).modify("00000005", [](auto& v) { v.pop_back(); });
    auto r = open_store(path);
    CHECK_THROWS_WITH_AS(r->read_one(5, out.data()),
                         has(where + "payload is 3071 bytes, expected 3072"),
                         DataError);
    CHECK_THROWS_AS(read_all(*r), DataError);
    CHECK(r->read_one(4, out.data()) == images.labels[4]);  // the others still read
  }
  SUBCASE("value shorter than the header") {
    RawStore(path).modify("00000005", [](auto& v) { v.resize(20); });
    CHECK_THROWS_WITH_AS(open_store(path)->read_one(5, out.data()),
                         has(where + "value is 20 bytes, shorter than the 32-byte header"),
                         DataError);
  }
  SUBCASE("header payload length disagrees") {
    RawStore(path).modify("00000005", [](auto& v) { v[20] = 1; });
    CHECK_THROWS_WITH_AS(open_store(path)->read_one(5, out.data()),
                         has(where + "header says the payload is 3073 bytes"),
                         DataError);
  }
  SUBCASE("flipped payload byte") {
    RawStore(path).modify("00000005", [](auto& v) { v[32 + 100] ^= 0x40; });
    CHECK_THROWS_WITH_AS(open_store(path)->read_one(5, out.data()),
                         has(where + "payload checksum"), DataError);
    // Without verification the damaged pixels come back as stored.
    ReaderOptions fast;
    fast.verify_checksums = false;
    CHECK(open_store(path, fast)->read_one(5, out.data()) == images.labels[5]);
    CHECK(out[100] == (images.image(5)[100] ^ 0x40));
  }
  SUBCASE("payload and its hash both changed: the manifest checksum catches it") {
    RawStore(path).modify("00000005", [](auto& v) {
      v[32] ^= 1;
      std::uint64_t h = xxh3_64(v.data() + 32, v.size() - 32);
      for (int i = 0; i < 8; ++i) v[24 + i] = static_cast<std::uint8_t>(h >> (8 * i));
    });
    CHECK_THROWS_WITH_AS(open_store(path)->read_one(5, out.data()),
                         has(where + "checksum"), DataError);
  }
  SUBCASE("label changed") {
    RawStore(path).modify("00000005", [&](auto& v) { v[16] = static_cast<std::uint8_t>((images.labels[5] + 1) % 10); });
    CHECK_THROWS_WITH_AS(open_store(path)->read_one(5, out.data()),
                         has(where + "checksum"), DataError);
  }
  SUBCASE("bad magic") {
    RawStore(path).modify("00000005", [](auto& v) { v[0] = 'X'; });
    CHECK_THROWS_WITH_AS(open_store(path)->read_one(5, out.data()),
                         has(where + "bad magic"), DataError);
  }
  SUBCASE("unsupported version") {
    RawStore(path).modify("00000005", [](auto& v) { v[4] = 9; });
    CHECK_THROWS_WITH_AS(open_store(path)->read_one(5, out.data()),
                         has(where + "value version 9"), DataError);
  }
  SUBCASE("wrong shape") {
    RawStore(path).modify("00000005", [](auto& v) { v[8] = 31; });
    CHECK_THROWS_WITH_AS(open_store(path)->read_one(5, out.data()),
                         has(where + "shape is 31x32x3"), DataError);
  }
  SUBCASE("wrong encoding") {
    RawStore(path).modify("00000005", [](auto& v) { v[6] = 1; });
    CHECK_THROWS_WITH_AS(open_store(path)->read_one(5, out.data()),
                         has(where + "encoding is png, the manifest says raw"),
                         DataError);
    RawStore(path).modify("00000005", [](auto& v) { v[6] = 7; });
    CHECK_THROWS_WITH_AS(open_store(path)->read_one(5, out.data()),
                         has(where + "unknown encoding 7"), DataError);
  }
  SUBCASE("missing key") {
    {
      RawStore raw(path);
      raw.put("00000099", raw.get("00000005"));  // keeps the entry count right
      raw.erase("00000005");
    }
    auto r = open_store(path);
    CHECK_THROWS_WITH_AS(r->read_one(5, out.data()), has("key '00000005' is missing"),
                         DataError);
  }
}

namespace {

// Reads every record twice, shuffled through read_many and one by one, and checks both.
void check_read_twice(const StoreReader& r, const ImageBatch& images) {
  std::vector<std::uint64_t> order(images.size());
  std::iota(order.begin(), order.end(), std::uint64_t{0});
  std::shuffle(order.begin(), order.end(), std::mt19937(7));
  std::vector<std::uint8_t> out(order.size() * images.shape.bytes());
  std::vector<std::int64_t> labels(order.size());
  for (int pass = 0; pass < 2; ++pass) {
    CAPTURE(pass);
    r.read_many(order.data(), order.size(), out.data(), labels.data());
    for (std::size_t k = 0; k < order.size(); ++k) {
      CHECK(labels[k] == images.labels[order[k]]);
      CHECK(std::equal(images.image(order[k]), images.image(order[k]) + images.shape.bytes(),
                       out.data() + k * images.shape.bytes()));
    }
    check_same(read_all(r), images);
  }
}

// Damages record `index`'s payload in place (byte `at` XOR 0x40), where data.mdb holds it, so
// that a reader that already mapped the value sees the change at the same address.
void flip_in_place(const fs::path& store, const ImageBatch& images, std::size_t index,
                   std::size_t at) {
  const fs::path data = store / "data.mdb";
  std::vector<std::uint8_t> file(fs::file_size(data));
  {
    std::ifstream in(data, std::ios::binary);
    REQUIRE(in.read(reinterpret_cast<char*>(file.data()), static_cast<std::streamsize>(file.size())));
  }
  const std::uint8_t* img = images.image(index);
  auto it = std::search(file.begin(), file.end(), img, img + images.shape.bytes());
  REQUIRE(it != file.end());
  const auto offset = static_cast<off_t>((it - file.begin()) + at);
  std::uint8_t byte = static_cast<std::uint8_t>(img[at] ^ 0x40);
  const int fd = ::open(data.c_str(), O_WRONLY);
  REQUIRE(fd >= 0);
  CHECK(::pwrite(fd, &byte, 1, offset) == 1);
  ::close(fd);
}

}  // namespace

TEST_CASE("lmdb cached value locations: every record reads the same twice, walked or lazy") {
  test::TempDir dir;
  auto images = fixtures::make_images(300, kCifar, 10, 21);
  for (bool lazy : {false, true}) {
    CAPTURE(lazy);
    // A store of its own per mode: the location cache belongs to the shared environment.
    const auto path = dir / (lazy ? "lazy.lmdb" : "walked.lmdb");
    write_store(path, images);
    ReaderOptions options;
    options.no_readahead = lazy;  // no walk at open: locations are cached on first lookup
    auto r = open_store(path, options);
    check_read_twice(*r, images);
    // A second reader of the same environment uses the cache filled by the first.
    auto again = open_store(path);
    check_read_twice(*again, images);
    // So does a reader that skips checksum verification.
    ReaderOptions fast = options;
    fast.verify_checksums = false;
    check_read_twice(*open_store(path, fast), images);
  }
}

TEST_CASE("lmdb corrupt values are caught on the first and every later read") {
  test::TempDir dir;
  auto images = fixtures::make_images(12, kCifar, 10, 22);
  const std::uint64_t pair[2] = {4, 5};
  std::vector<std::uint8_t> out(2 * kCifar.bytes());
  for (bool lazy : {false, true}) {
    CAPTURE(lazy);
    ReaderOptions options;
    options.no_readahead = lazy;
    {
      INFO("damaged before open");
      const auto path = dir / (lazy ? "before-lazy.lmdb" : "before.lmdb");
      write_store(path, images);
      RawStore(path).modify("00000005", [](auto& v) { v[32 + 7] ^= 0x40; });
      const std::string where =
          "corrupt record in " + detail::quote(path) + " key '00000005': payload checksum";
      auto r = open_store(path, options);
      for (int attempt = 0; attempt < 3; ++attempt) {
        CAPTURE(attempt);
        CHECK_THROWS_WITH_AS(r->read_one(5, out.data()), has(where), DataError);
        CHECK_THROWS_WITH_AS(r->read_many(pair, 2, out.data(), nullptr), has(where), DataError);
        CHECK(r->read_one(4, out.data()) == images.labels[4]);
      }
    }
    {
      INFO("damaged after its location was cached");
      const auto path = dir / (lazy ? "after-lazy.lmdb" : "after.lmdb");
      write_store(path, images);
      auto r = open_store(path, options);
      CHECK(r->read_one(5, out.data()) == images.labels[5]);  // cached now, in both modes
      flip_in_place(path, images, 5, 100);
      const std::string where =
          "corrupt record in " + detail::quote(path) + " key '00000005': ";
      for (int attempt = 0; attempt < 3; ++attempt) {
        CAPTURE(attempt);
        CHECK_THROWS_WITH_AS(r->read_one(5, out.data()), has(where + "payload checksum"),
                             DataError);
        CHECK_THROWS_WITH_AS(r->read_many(pair, 2, out.data(), nullptr), has(where), DataError);
      }
      // Unverified reads still check the header, and return the bytes as they now are.
      ReaderOptions fast = options;
      fast.verify_checksums = false;
      CHECK(open_store(path, fast)->read_one(5, out.data()) == images.labels[5]);
      CHECK(out[100] == (images.image(5)[100] ^ 0x40));
    }
  }
}

TEST_CASE("lmdb concurrent readers fill and use the location cache together") {
  test::TempDir dir;
  auto images = fixtures::make_images(400, Shape{8, 8, 3}, 10, 23);
  const auto path = dir / "race.lmdb";
  write_store(path, images);
  ReaderOptions lazy;
  lazy.no_readahead = true;  // start with an empty cache so threads race to fill it
  auto r1 = open_store(path, lazy);
  auto r2 = open_store(path, lazy);
  const std::size_t bytes = images.shape.bytes();
  std::atomic<int> mismatches{0}, errors{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      try {
        const StoreReader& r = (t % 2) ? *r1 : *r2;
        std::mt19937 rng(100 + t);
        std::vector<std::uint64_t> idx(32);
        std::vector<std::uint8_t> buf(idx.size() * bytes);
        std::vector<std::int64_t> labels(idx.size());
        for (int iter = 0; iter < 60; ++iter) {
          for (auto& i : idx) i = rng() % images.size();
          r.read_many(idx.data(), idx.size(), buf.data(), labels.data());
          for (std::size_t k = 0; k < idx.size(); ++k) {
            if (labels[k] != images.labels[idx[k]] ||
                !std::equal(buf.begin() + k * bytes, buf.begin() + (k + 1) * bytes,
                            images.image(idx[k]))) {
              ++mismatches;
            }
          }
          if (r.read_one(idx[0], buf.data()) != images.labels[idx[0]]) ++mismatches;
        }
      } catch (...) {
        ++errors;
      }
    });
  }
  for (auto& th : threads) th.join();
  CHECK(errors == 0);
  CHECK(mismatches == 0);
  check_same(read_all(*r1), images);
}

TEST_CASE("lmdb reader rejects a store whose structure is wrong") {
  test::TempDir dir;
  auto images = fixtures::make_images(10, kCifar, 10, 6);
  auto path = dir / "train.lmdb";
  write_store(path, images);

  SUBCASE("entry count differs from the manifest") {
    RawStore(path).erase("00000003");
    CHECK_THROWS_WITH_AS(open_store(path),
                         has("manifest says 10 records, database holds 9"), DataError);
  }
  SUBCASE("extra record") {
    { RawStore raw(path); raw.put("00000010", raw.get("00000001")); }
    CHECK_THROWS_WITH_AS(open_store(path),
                         has("manifest says 10 records, database holds 11"), DataError);
  }
  SUBCASE("no manifest sub-database") {
    RawStore(path).drop_meta();
    CHECK_THROWS_WITH_AS(open_store(path),
                         has(detail::quote(path) + " has no manifest"), DataError);
  }
  SUBCASE("no manifest key") {
    { RawStore raw(path); raw.erase("manifest", raw.meta()); }
    CHECK_THROWS_WITH_AS(open_store(path), has("has no manifest"), DataError);
  }
  SUBCASE("manifest is not JSON") {
    {
      RawStore raw(path);
      std::string junk = "{not json";
      raw.put("manifest", {junk.begin(), junk.end()}, raw.meta());
    }
    CHECK_THROWS_WITH_AS(open_store(path), has(detail::quote(path) + " manifest"),
                         DataError);
  }
  SUBCASE("truncated data.mdb") {
    fs::resize_file(path / "data.mdb", fs::file_size(path / "data.mdb") / 2);
    CHECK_THROWS_WITH_AS(open_store(path), has("truncated"), DataError);
  }
  SUBCASE("data.mdb that is not LMDB") {
    detail::write_file(path / "data.mdb", std::string(8192, 'x'), false);
    CHECK_THROWS_WITH_AS(open_store(path), has(detail::quote(path)), DataError);
  }
}

TEST_CASE("lmdb open rejects paths that are not stores") {
  test::TempDir dir;
  CHECK_THROWS_WITH_AS(detail::open_lmdb_store(dir / "nope.lmdb", {}),
                       has("does not exist"), IoError);
  fs::create_directory(dir / "empty.lmdb");
  CHECK_THROWS_WITH_AS(detail::open_lmdb_store(dir / "empty.lmdb", {}),
                       has("no data.mdb"), DataError);
  detail::write_file(dir / "file.lmdb", std::string("hello"), false);
  CHECK_THROWS_WITH_AS(detail::open_lmdb_store(dir / "file.lmdb", {}),
                       has("not a directory"), DataError);
  // A plain LMDB database without our metadata.
  {
    fs::create_directory(dir / "plain.lmdb");
    auto env = lmdb::Env::create("t");
    env.open((dir / "plain.lmdb").string(), MDB_NOLOCK, 0644, "t");
    auto txn = lmdb::Txn::begin(env.get(), 0, "t");
    auto dbi = lmdb::Dbi::open(txn.get(), nullptr, 0, "t");
    std::string v = "value";
    MDB_val val = lmdb::make_val(v.data(), v.size());
    lmdb::check(dbi.try_put(txn.get(), lmdb::make_val("00000000", 8), val, 0), "t");
    txn.commit("t");
  }
  CHECK_THROWS_WITH_AS(detail::open_lmdb_store(dir / "plain.lmdb", {}),
                       has("has no manifest"), DataError);
}

TEST_CASE("lmdb writer failures") {
  test::TempDir dir;
  auto images = fixtures::make_images(10, kCifar, 10, 6);
  StoreSpec spec;
  spec.split = "train";
  spec.count = 10;
  spec.shape = kCifar;

  SUBCASE("unwritable output directory") {
    detail::write_file(dir / "file", std::string("x"), false);
    CHECK_THROWS_WITH_AS(detail::create_lmdb_store(dir / "file" / "train.lmdb", spec, {}),
                         has("file"), IoError);
  }
  SUBCASE("unknown encoding") {
    // Encodings are typed now: an unknown name fails where it is parsed, naming it.
    CHECK_THROWS_WITH_AS(parse_encoding("webp"), has("webp"), UsageError);
    CHECK(test::list_dir(dir.path()).empty());
  }
  SUBCASE("encoding another format cannot hold") {
    WriterOptions opt;
    opt.encoding = Encoding::Png;
    CHECK_THROWS_WITH_AS(detail::create_hdf5_store(dir / "train.h5", spec, opt),
                         has("HDF5 stores hold raw or jpeg payloads, not png"), UsageError);
    opt.encoding = Encoding::Raw;
    CHECK_THROWS_WITH_AS(detail::create_png_folder(dir / "train.png", spec, opt),
                         has("PNG folder stores hold png payloads, not raw"), UsageError);
    CHECK(test::list_dir(dir.path()).empty());
  }
  SUBCASE("writer destroyed without commit leaves nothing") {
    {
      auto writer = detail::create_lmdb_store(dir / "train.lmdb", spec, {});
      ImageBatch half;
      half.resize(kCifar, 5);
      std::copy(images.pixels.begin(), images.pixels.begin() + 5 * kCifar.bytes(), half.pixels.begin());
      std::copy(images.labels.begin(), images.labels.begin() + 5, half.labels.begin());
      writer->write(half);
      CHECK_THROWS_AS(writer->commit(), DataError);  // 5 of 10 records
    }
    CHECK(test::list_dir(dir.path()).empty());
  }
  SUBCASE("label too large for the record header") {
    spec.count = 1;
    auto writer = detail::create_lmdb_store(dir / "train.lmdb", spec, {});
    ImageBatch one;
    one.resize(kCifar, 1);
    one.labels[0] = std::int64_t{1} << 40;
    CHECK_THROWS_WITH_AS(writer->write(one), has("label"), DataError);
  }
}
