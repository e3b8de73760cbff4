// Bit flips in stored records, as a failing disk, cable or RAM stick makes them: one bit of a
// record's bytes on disk (pixels or label) is flipped in place, in every format and layout, and
// - verify_store reports it, naming the record,
// - a reader with verify_checksums=true throws DataError naming the record, and reads the other
//   records fine,
// - a reader with verify_checksums=false hands out the flipped bytes without complaint (raw
//   layouts). Encoded records (PNG files, PNG-encoded LMDB values) carry their own CRCs, so a
//   flipped byte there is a DataError naming the record even without checksums; a pixel changed
//   inside a still-valid PNG is what only the record checksum catches, and is tested too.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "detail/hdf5_handles.hpp"
#include "detail/lmdb_handles.hpp"
#include "detail/png_codec.hpp"
#include "fixtures.hpp"
#include "imgstore/convert.hpp"
#include "imgstore/error.hpp"
#include "imgstore/store.hpp"
#include "test_support.hpp"

using namespace imgstore;
namespace fs = std::filesystem;
namespace lmdb = imgstore::detail::lmdb;

namespace {

const Shape kShape{8, 6, 3};  // 144 bytes: small records, several per LMDB page
constexpr std::size_t kCount = 40;
constexpr int kClasses = 10;  // labels 0..9: flipping bit 0 keeps a label in range
constexpr std::uint64_t kSeed = 20261128;

enum class Layout { PngFolder, LmdbRaw, LmdbPng, Hdf5Contiguous, Hdf5Chunked };

struct Case {
  const char* name;
  Layout layout;
};
const Case kCases[] = {{"png folder", Layout::PngFolder},
                       {"lmdb raw", Layout::LmdbRaw},
                       {"lmdb png-encoded", Layout::LmdbPng},
                       {"hdf5 contiguous", Layout::Hdf5Contiguous},
                       {"hdf5 chunked", Layout::Hdf5Chunked}};

doctest::Contains has(const std::string& text) { return doctest::Contains(text.c_str()); }

fs::path write_store(const fs::path& dir, Layout layout, const ImageBatch& images) {
  WriterOptions options;
  Format format = Format::Hdf5;
  std::string name = "pristine.h5";
  // The PNG folder gets no class names: labels.csv then has an empty class column, so a flipped
  // label digit still parses and only the checksum can notice it (with class names the
  // label/class cross-check at open catches it, see the test below).
  std::vector<std::string> classes;
  if (layout != Layout::PngFolder) {
    for (int c = 0; c < kClasses; ++c) classes.push_back("class" + std::to_string(c));
  }
  switch (layout) {
    case Layout::PngFolder: format = Format::PngFolder, name = "pristine.png"; break;
    case Layout::LmdbRaw: format = Format::Lmdb, name = "pristine.lmdb"; break;
    case Layout::LmdbPng:
      format = Format::Lmdb, name = "pristine.lmdb", options.encoding = Encoding::Png;
      break;
    case Layout::Hdf5Contiguous: break;
    case Layout::Hdf5Chunked: options.hdf5.chunk_records = 8; break;
  }
  options.durable = false;
  const fs::path path = dir / name;
  store_many(format, path, images, classes, options);
  return path;
}

// Flips bit `bit` of byte `offset` of `file`, in place.
void flip_bit(const fs::path& file, std::uint64_t offset, int bit) {
  const imgstore::detail::Fd f(::open(file.c_str(), O_RDWR | O_CLOEXEC));
  REQUIRE(f.get() >= 0);
  std::uint8_t byte = 0;
  REQUIRE(::pread(f.get(), &byte, 1, static_cast<off_t>(offset)) == 1);
  byte = static_cast<std::uint8_t>(byte ^ (1u << bit));
  REQUIRE(::pwrite(f.get(), &byte, 1, static_cast<off_t>(offset)) == 1);
}

// Where record `index`'s value starts in data.mdb, and its size. LMDB maps the file page by
// page and every page starts with its page number, so the page holding the value (the map is
// page-aligned) tells the file offset. (Searching the file for the bytes would not do: copy-on-
// write leaves stale copies of pages in the free list.)
std::pair<std::uint64_t, std::size_t> lmdb_value(const fs::path& store, std::uint64_t index) {
  std::uint64_t offset = 0;
  std::string value_bytes;
  {
    auto env = lmdb::Env::create("bit flip");
    env.set_maxdbs(2, "bit flip");
    env.set_mapsize(fs::file_size(store / "data.mdb") + (1 << 20), "bit flip");
    env.open(store.string(), MDB_RDONLY | MDB_NOLOCK, 0644, "bit flip open");
    MDB_stat stat{};
    REQUIRE(::mdb_env_stat(env.get(), &stat) == 0);
    auto txn = lmdb::Txn::begin(env.get(), MDB_RDONLY, "bit flip begin");
    auto main = lmdb::Dbi::open(txn.get(), nullptr, 0, "bit flip main");
    const std::string key = fmt::format("{:08d}", index);
    MDB_val value{};
    REQUIRE(main.get(txn.get(), lmdb::make_val(key.data(), key.size()), value, "bit flip get"));
    value_bytes.assign(static_cast<const char*>(value.mv_data), value.mv_size);
    const auto addr = reinterpret_cast<std::uintptr_t>(value.mv_data);
    const auto page = addr & ~static_cast<std::uintptr_t>(stat.ms_psize - 1);
    std::uint64_t pgno = 0;
    std::memcpy(&pgno, reinterpret_cast<const void*>(page), sizeof pgno);
    offset = pgno * stat.ms_psize + (addr - page);
  }
  const std::string file = test::slurp(store / "data.mdb");
  REQUIRE(file.compare(offset, value_bytes.size(), value_bytes) == 0);
  return {offset, value_bytes.size()};
}

// File offset of row `index` of HDF5 dataset `name` (contiguous, or uncompressed chunks).
std::uint64_t hdf5_row_offset(const fs::path& file, const char* name, std::uint64_t index,
                              std::uint64_t row_bytes) {
  using namespace imgstore::detail;
  Hdf5Lock lock;
  H5File f(H5Fopen(file.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  REQUIRE(f.get() >= 0);
  H5Dataset ds(H5Dopen2(f.get(), name, H5P_DEFAULT));
  REQUIRE(ds.get() >= 0);
  H5Plist dcpl(H5Dget_create_plist(ds.get()));
  if (H5Pget_layout(dcpl.get()) == H5D_CONTIGUOUS) {
    const haddr_t base = H5Dget_offset(ds.get());
    REQUIRE(base != HADDR_UNDEF);
    return base + index * row_bytes;
  }
  hsize_t chunk[4] = {};
  REQUIRE(H5Pget_chunk(dcpl.get(), 4, chunk) >= 1);
  REQUIRE(H5Pget_nfilters(dcpl.get()) == 0);
  hsize_t coord[4] = {index / chunk[0] * chunk[0], 0, 0, 0};
  unsigned mask = 0;
  haddr_t addr = HADDR_UNDEF;
  hsize_t size = 0;
  REQUIRE(H5Dget_chunk_info_by_coord(ds.get(), coord, &mask, &addr, &size) >= 0);
  REQUIRE(addr != HADDR_UNDEF);
  return addr + (index % chunk[0]) * row_bytes;
}

// Offset of the data of the first IDAT chunk of a PNG file, and its length.
std::pair<std::uint64_t, std::uint64_t> png_idat(const fs::path& file) {
  const std::string bytes = test::slurp(file);
  std::size_t pos = 8;  // signature
  while (pos + 8 <= bytes.size()) {
    const auto* p = reinterpret_cast<const std::uint8_t*>(bytes.data() + pos);
    const std::uint64_t length = (std::uint64_t{p[0]} << 24) | (p[1] << 16) | (p[2] << 8) | p[3];
    if (bytes.compare(pos + 4, 4, "IDAT") == 0) return {pos + 8, length};
    pos += 12 + length;
  }
  FAIL("no IDAT chunk in " << file);
  return {0, 0};
}

// Offset of record `index`'s label digit in labels.csv ("file,label,class" rows).
std::uint64_t csv_label_offset(const fs::path& store, std::uint64_t index) {
  const std::string text = test::slurp(store / "labels.csv");
  const std::string row = fmt::format("\n{:08d}.png,", index);
  const auto pos = text.find(row);
  REQUIRE(pos != std::string::npos);
  return pos + row.size();
}

// How each format names record `index` in its errors.
std::string record_name(Layout layout, std::uint64_t index) {
  switch (layout) {
    case Layout::PngFolder: return fmt::format("{:08d}.png'", index);  // after a path or "file '"
    case Layout::LmdbRaw:
    case Layout::LmdbPng: return fmt::format("key '{:08d}'", index);
    default: return fmt::format("record {}:", index);
  }
}

void copy_store(const fs::path& from, const fs::path& to) {
  fs::copy(from, to, fs::copy_options::recursive);
}

enum class Target { Pixels, Label };

struct Flip {
  fs::path file;
  std::uint64_t offset = 0;
  int bit = 0;
  std::size_t pixel_byte = 0;  // raw layouts: which byte of the record's pixels changes
  bool encoded = false;        // the flipped byte is inside a PNG stream
};

// Chooses the byte to flip for `target` of record `index` in `store`.
Flip locate(Layout layout, const fs::path& store, std::uint64_t index, Target target,
            std::mt19937_64& rng) {
  Flip f;
  const std::size_t bytes = kShape.bytes();
  if (target == Target::Label) f.bit = 0;
  else f.bit = static_cast<int>(rng() % 8), f.pixel_byte = rng() % bytes;
  switch (layout) {
    case Layout::PngFolder:
      if (target == Target::Label) {
        f.file = store / "labels.csv", f.offset = csv_label_offset(store, index);
      } else {
        f.file = store / fmt::format("{:08d}.png", index);
        auto [start, length] = png_idat(f.file);
        f.offset = start + rng() % length, f.encoded = true;
      }
      break;
    case Layout::LmdbRaw:
    case Layout::LmdbPng: {
      auto [start, size] = lmdb_value(store, index);
      f.file = store / "data.mdb";
      if (target == Target::Label) {
        f.offset = start + 16;  // int32 label, little-endian: bit 0 is in its first byte
      } else if (layout == Layout::LmdbRaw) {
        REQUIRE(size == 32 + bytes);
        f.offset = start + 32 + f.pixel_byte;
      } else {
        f.offset = start + 32 + rng() % (size - 32), f.encoded = true;
      }
      break;
    }
    case Layout::Hdf5Contiguous:
    case Layout::Hdf5Chunked:
      f.file = store;
      f.offset = target == Target::Label ? hdf5_row_offset(store, "labels", index, 8)
                                         : hdf5_row_offset(store, "images", index, bytes) +
                                               f.pixel_byte;
      break;
  }
  return f;
}

}  // namespace

TEST_CASE("bit flips in pixels and labels are caught, naming the record, in every format") {
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(kCount, kShape, kClasses, 77);
  std::mt19937_64 rng(kSeed);
  ReaderOptions lax;
  lax.verify_checksums = false;
  for (const Case& c : kCases) {
    const std::string case_name = c.name;
    CAPTURE(case_name);
    fs::create_directories(dir.path() / c.name);
    const fs::path pristine = write_store(dir.path() / c.name, c.layout, images);
    verify_store(*open_store(pristine));  // intact before the flips
    int trial = 0;
    for (int pick = 0; pick < 4; ++pick) {
      const std::uint64_t index = rng() % kCount;
      for (Target target : {Target::Pixels, Target::Label}) {
        const std::string what = target == Target::Pixels ? "pixels" : "label";
        CAPTURE(index);
        CAPTURE(what);
        const fs::path store =
            dir.path() / c.name / (std::to_string(trial++) + pristine.extension().string());
        copy_store(pristine, store);
        const Flip flip = locate(c.layout, store, index, target, rng);
        CAPTURE(flip.file);
        CAPTURE(flip.offset);
        CAPTURE(flip.bit);
        flip_bit(flip.file, flip.offset, flip.bit);
        const std::string name = record_name(c.layout, index);

        // verify_store through a verifying reader: the reader's own check names the record.
        auto reader = open_store(store);
        CHECK_THROWS_WITH_AS(verify_store(*reader), has(name), DataError);
        CHECK_THROWS_WITH_AS(reader->read_one(index), has(name), DataError);
        CHECK_THROWS_WITH_AS(reader->read_one(index), has(store.string()), DataError);
        const std::uint64_t other = (index + 1) % kCount;
        std::int64_t label = -1;
        CHECK(reader->read_one(other, &label) ==
              std::vector<std::uint8_t>(images.image(other), images.image(other + 1)));
        CHECK(label == images.labels[other]);
        // read_many with the bad record among good ones.
        std::vector<std::uint64_t> idx{other, index};
        std::vector<std::uint8_t> out(2 * kShape.bytes());
        CHECK_THROWS_WITH_AS(reader->read_many(idx.data(), 2, out.data(), nullptr), has(name),
                             DataError);

        // Without checksums: raw layouts hand out the flipped bytes; verify_store's own
        // comparison with the manifest still names the record.
        auto loose = open_store(store, lax);
        if (flip.encoded) {
          CHECK_THROWS_WITH_AS(loose->read_one(index), has(name), DataError);
          CHECK_THROWS_WITH_AS(verify_store(*loose), has(name), DataError);
          continue;
        }
        CHECK_THROWS_WITH_AS(verify_store(*loose), has(fmt::format("record {}:", index)),
                             DataError);
        std::vector<std::uint8_t> expected(images.image(index), images.image(index + 1));
        std::int64_t expected_label = images.labels[index];
        if (target == Target::Pixels) {
          expected[flip.pixel_byte] = static_cast<std::uint8_t>(expected[flip.pixel_byte] ^
                                                                (1u << flip.bit));
        } else {
          expected_label ^= 1;
        }
        std::int64_t got_label = -1;
        std::vector<std::uint8_t> got;
        REQUIRE_NOTHROW(got = loose->read_one(index, &got_label));
        CHECK(got == expected);
        CHECK(got_label == expected_label);
      }
    }
  }
}

TEST_CASE("a pixel changed inside a valid PNG is caught only by the record checksum") {
  // The PNG's own CRCs and zlib checksum match (the file was re-encoded), so only the store's
  // checksum can tell: what a buggy editor or a flip before encoding leaves behind.
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(kCount, kShape, kClasses, 78);
  const fs::path store = write_store(dir.path(), Layout::PngFolder, images);
  std::mt19937_64 rng(kSeed + 1);
  for (int pick = 0; pick < 3; ++pick) {
    const std::uint64_t index = rng() % kCount;
    const std::size_t byte = rng() % kShape.bytes();
    const int bit = static_cast<int>(rng() % 8);
    CAPTURE(index);
    CAPTURE(byte);
    std::vector<std::uint8_t> pixels(images.image(index), images.image(index + 1));
    pixels[byte] = static_cast<std::uint8_t>(pixels[byte] ^ (1u << bit));
    std::vector<std::uint8_t> png;
    detail::encode_png(pixels.data(), kShape, 6, png);
    test::spit(store / fmt::format("{:08d}.png", index),
               std::string(png.begin(), png.end()));

    const std::string name = record_name(Layout::PngFolder, index);
    auto reader = open_store(store);
    CHECK_THROWS_WITH_AS(reader->read_one(index), has(name), DataError);
    CHECK_THROWS_WITH_AS(verify_store(*reader), has(name), DataError);
    ReaderOptions lax;
    lax.verify_checksums = false;
    auto loose = open_store(store, lax);
    CHECK(loose->read_one(index) == pixels);
    CHECK_THROWS_WITH_AS(verify_store(*loose), has(fmt::format("record {}:", index)), DataError);
    // Restore it for the next pick.
    detail::encode_png(images.image(index), kShape, 6, png);
    test::spit(store / fmt::format("{:08d}.png", index), std::string(png.begin(), png.end()));
  }
  verify_store(*open_store(store));
}

TEST_CASE("png folder with class names: a flipped label digit fails the open, naming the row") {
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(kCount, kShape, kClasses, 79);
  std::vector<std::string> classes;
  for (int c = 0; c < kClasses; ++c) classes.push_back("class" + std::to_string(c));
  WriterOptions options;
  options.durable = false;
  const fs::path store = dir / "named.png";
  store_many(Format::PngFolder, store, images, classes, options);
  const std::uint64_t index = 17;
  flip_bit(store / "labels.csv", csv_label_offset(store, index), 0);
  ReaderOptions lax;
  lax.verify_checksums = false;
  for (const ReaderOptions& options : {ReaderOptions{}, lax}) {
    CHECK_THROWS_WITH_AS(open_store(store, options), has(fmt::format("{:08d}.png", index)),
                         DataError);
  }
}
