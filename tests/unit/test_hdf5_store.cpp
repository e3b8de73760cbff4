// HDF5 store: round trips (contiguous, chunked, deflate), the on-disk layout, threads, the
// tutorial's layout, and bad input.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <fstream>
#include <memory>
#include <numeric>
#include <random>
#include <thread>

#include "detail/hdf5_handles.hpp"
#include "detail/testing.hpp"
#include "fixtures.hpp"
#include "formats/formats.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"
#include "imgstore/store.hpp"
#include "test_support.hpp"

using namespace imgstore;
using detail::H5Dataset;
using detail::H5File;
using detail::H5Plist;
using detail::H5Space;
using detail::Hdf5Lock;
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kClasses{"cat", "dog", "emu", "yak"};

// Writes `images` in batches of `batch` records (so chunks and batches do not line up).
void write_store(const fs::path& path, const ImageBatch& images, const WriterOptions& options,
                 std::size_t batch = 7) {
  const StoreSpec spec = test::spec_for(images, kClasses, "train", "hdf5 unit test");
  test::write_in_batches(*create_store(Format::Hdf5, path, spec, options), images, batch);
}

bool same_image(const ImageBatch& expected, std::size_t index, const std::uint8_t* pixels) {
  return std::equal(pixels, pixels + expected.shape.bytes(), expected.image(index));
}

// Creates dataset `name` and writes `data` (converted from mem_type to file_type).
void put_dataset(hid_t file, const char* name, hid_t file_type, hid_t mem_type,
                 const std::vector<hsize_t>& dims, const void* data) {
  Hdf5Lock lock;
  H5Space space(H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr));
  H5Dataset ds(
      H5Dcreate2(file, name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  REQUIRE(ds.get() >= 0);
  REQUIRE(H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) >= 0);
}

// The tutorial's layout, with the types its h5py calls give: /images and /meta, STD_U8BE,
// contiguous, no attributes.
void write_tutorial_file(const fs::path& path, const ImageBatch& images) {
  Hdf5Lock lock;
  H5File file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
  REQUIRE(file.get() >= 0);
  const auto& s = images.shape;
  put_dataset(file.get(), "images", H5T_STD_U8BE, H5T_NATIVE_UINT8,
              {images.size(), s.height, s.width, s.channels}, images.pixels.data());
  std::vector<std::uint8_t> meta(images.labels.begin(), images.labels.end());
  put_dataset(file.get(), "meta", H5T_STD_U8BE, H5T_NATIVE_UINT8, {images.size()}, meta.data());
}

// Opens an existing file read-write for surgery.
H5File open_rw(const fs::path& path) {
  Hdf5Lock lock;
  H5File file(H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT));
  REQUIRE(file.get() >= 0);
  return file;
}

void check_reads_back(const StoreReader& reader, const ImageBatch& expected) {
  REQUIRE(reader.size() == expected.size());
  REQUIRE(reader.shape() == expected.shape);
  for (std::size_t i = 0; i < expected.size(); ++i) {
    std::int64_t label = -1;
    auto pixels = reader.read_one(i, &label);
    CHECK(label == expected.labels[i]);
    CHECK(same_image(expected, i, pixels.data()));
  }
  ImageBatch all = read_all(reader);
  CHECK(all.pixels == expected.pixels);
  CHECK(all.labels == expected.labels);

  // Shuffled, with a repeat, through read_many.
  std::vector<std::uint64_t> order(expected.size());
  std::iota(order.begin(), order.end(), std::uint64_t{0});
  std::shuffle(order.begin(), order.end(), std::mt19937_64(42));
  order.push_back(order.front());
  std::vector<std::uint8_t> out(order.size() * expected.shape.bytes());
  std::vector<std::int64_t> labels(order.size());
  reader.read_many(order.data(), order.size(), out.data(), labels.data());
  for (std::size_t k = 0; k < order.size(); ++k) {
    CHECK(labels[k] == expected.labels[order[k]]);
    CHECK(same_image(expected, order[k], out.data() + k * expected.shape.bytes()));
  }
}

std::uint64_t digest_of(const ImageBatch& images) {
  ContentDigest d;
  for (std::size_t i = 0; i < images.size(); ++i) {
    d.add(record_checksum(images.image(i), images.shape.bytes(), images.labels[i]));
  }
  return d.value();
}

}  // namespace

TEST_CASE("hdf5 store round-trips bit-exact: contiguous, chunked, chunked+deflate; C=1 and C=3") {
  test::TempDir dir;
  for (std::uint32_t channels : {1u, 3u}) {
    const ImageBatch images = fixtures::make_images(23, {6, 5, channels}, 4, 7 + channels);
    struct Case {
      const char* name;
      std::size_t chunk;
      int deflate;
    };
    for (const Case& c : {Case{"contiguous", 0, 0}, Case{"chunked", 5, 0}, Case{"deflate", 5, 6},
                          Case{"one-chunk", 100, 1}}) {
      CAPTURE(channels);
      CAPTURE(c.name);
      WriterOptions options;
      options.hdf5.chunk_records = c.chunk;
      options.hdf5.deflate = c.deflate;
      options.durable = false;
      const auto path = dir / (std::string(c.name) + std::to_string(channels) + ".h5");
      write_store(path, images, options);
      CHECK(test::list_dir(dir.path()) == std::vector<std::string>{path.filename().string()});

      auto reader = open_store(path);
      const Manifest& m = reader->manifest();
      CHECK(m.format == Format::Hdf5);
      CHECK(m.split == "train");
      CHECK(m.source == "hdf5 unit test");
      CHECK(m.class_names == kClasses);
      CHECK(m.encoding == Encoding::Raw);
      CHECK(m.checksums.size() == images.size());
      CHECK(m.content_digest == digest_of(images));
      check_reads_back(*reader, images);
      reader.reset();
      fs::remove(path);
    }
  }
}

TEST_CASE("hdf5 store of zero records opens empty") {
  test::TempDir dir;
  for (std::size_t chunk : {std::size_t{0}, std::size_t{4}}) {
    WriterOptions options;
    options.hdf5.chunk_records = chunk;
    const auto path = dir / ("empty" + std::to_string(chunk) + ".h5");
    write_store(path, fixtures::make_images(0, {4, 4, 3}, 4, 1), options);
    auto reader = open_store(path);
    CHECK(reader->size() == 0);
    CHECK(reader->shape() == Shape{4, 4, 3});
    CHECK_THROWS_AS(reader->read_one(0), UsageError);
  }
}

TEST_CASE("hdf5 store keeps a manifest larger than 64 KiB (20000 class names)") {
  test::TempDir dir;
  std::vector<std::string> names;
  for (int i = 0; i < 20000; ++i) names.push_back("class number " + std::to_string(i));
  ImageBatch images = fixtures::make_images(5, {2, 2, 3}, 4, 1);
  images.labels[4] = 19999;
  const auto path = dir / "many.h5";
  store_many(Format::Hdf5, path, images, names);
  auto reader = open_store(path);
  CHECK(reader->manifest().class_names == names);
  check_reads_back(*reader, images);
}

TEST_CASE("hdf5 store has the documented layout") {
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(10, {4, 3, 3}, 4, 5);
  WriterOptions options;
  options.hdf5.chunk_records = 4;
  options.hdf5.deflate = 3;
  const auto path = dir / "train.h5";
  write_store(path, images, options);

  Hdf5Lock lock;
  H5File file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
  REQUIRE(file.get() >= 0);
  auto check_dataset = [&](const char* name, hid_t type, std::vector<hsize_t> dims) {
    CAPTURE(name);
    H5Dataset ds(H5Dopen2(file.get(), name, H5P_DEFAULT));
    REQUIRE(ds.get() >= 0);
    detail::H5Type t(H5Dget_type(ds.get()));
    CHECK(H5Tequal(t.get(), type) > 0);
    H5Space space(H5Dget_space(ds.get()));
    std::vector<hsize_t> actual(H5Sget_simple_extent_ndims(space.get()));
    H5Sget_simple_extent_dims(space.get(), actual.data(), nullptr);
    CHECK(actual == dims);
  };
  check_dataset("images", H5T_STD_U8LE, {10, 4, 3, 3});
  check_dataset("labels", H5T_STD_I64LE, {10});
  check_dataset("checksums", H5T_STD_U64LE, {10});
  {
    H5Dataset ds(H5Dopen2(file.get(), "images", H5P_DEFAULT));
    H5Plist dcpl(H5Dget_create_plist(ds.get()));
    REQUIRE(H5Pget_layout(dcpl.get()) == H5D_CHUNKED);
    hsize_t chunk[4] = {};
    CHECK(H5Pget_chunk(dcpl.get(), 4, chunk) == 4);
    CHECK(chunk[0] == 4);
    CHECK(chunk[3] == 3);
    REQUIRE(H5Pget_nfilters(dcpl.get()) == 1);
    CHECK(H5Pget_filter2(dcpl.get(), 0, nullptr, nullptr, nullptr, 0, nullptr, nullptr) ==
          H5Z_FILTER_DEFLATE);
    // /checksums holds the record checksums.
    H5Dataset sums(H5Dopen2(file.get(), "checksums", H5P_DEFAULT));
    std::vector<std::uint64_t> values(10);
    REQUIRE(H5Dread(sums.get(), H5T_NATIVE_UINT64, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()) >=
            0);
    CHECK(values[9] == record_checksum(images.image(9), images.shape.bytes(), images.labels[9]));
  }
  CHECK(H5Aexists(file.get(), "class_names") > 0);
  CHECK(H5Aexists(file.get(), "imgstore_manifest") > 0);
  CHECK(H5Aexists(file.get(), "imgstore_format_version") > 0);
  {
    detail::H5Attr attr(H5Aopen(file.get(), "class_names", H5P_DEFAULT));
    H5Space space(H5Aget_space(attr.get()));
    CHECK(H5Sget_simple_extent_npoints(space.get()) == 4);
    detail::H5Type type(H5Aget_type(attr.get()));
    CHECK(H5Tis_variable_str(type.get()) > 0);
    CHECK(H5Tget_cset(type.get()) == H5T_CSET_UTF8);
    std::vector<char*> names(4);
    REQUIRE(H5Aread(attr.get(), type.get(), names.data()) >= 0);
    CHECK(std::string(names[1]) == "dog");
    for (char* p : names) H5free_memory(p);
  }
}

TEST_CASE("hdf5 reader serves many threads at once") {
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(200, {8, 8, 3}, 4, 11);
  for (std::size_t chunk : {std::size_t{0}, std::size_t{16}}) {
    CAPTURE(chunk);
    WriterOptions options;
    options.hdf5.chunk_records = chunk;
    options.hdf5.deflate = chunk ? 1 : 0;
    options.durable = false;
    const auto path = dir / ("threads" + std::to_string(chunk) + ".h5");
    write_store(path, images, options, 64);
    auto reader = open_store(path);

    std::atomic<int> wrong{0};
    std::atomic<int> errors{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        try {
          std::mt19937_64 rng(t);
          std::vector<std::uint64_t> idx(24);
          std::vector<std::uint8_t> out(idx.size() * images.shape.bytes());
          std::vector<std::int64_t> labels(idx.size());
          for (int round = 0; round < 20; ++round) {
            for (auto& i : idx) i = rng() % images.size();
            reader->read_many(idx.data(), idx.size(), out.data(), labels.data());
            for (std::size_t k = 0; k < idx.size(); ++k) {
              if (labels[k] != images.labels[idx[k]] ||
                  !same_image(images, idx[k], out.data() + k * images.shape.bytes())) {
                ++wrong;
              }
            }
            std::int64_t label = -1;
            auto one = reader->read_one(idx[0], &label);
            if (label != images.labels[idx[0]] || !same_image(images, idx[0], one.data())) ++wrong;
          }
        } catch (...) {
          ++errors;
        }
      });
    }
    for (auto& th : threads) th.join();
    CHECK(wrong == 0);
    CHECK(errors == 0);
  }
}

TEST_CASE("hdf5 reader opens the tutorial's layout (/images + /meta, big-endian u8)") {
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(37, {32, 32, 3}, 10, 3);
  const auto path = dir / "cifar_tutorial.h5";
  write_tutorial_file(path, images);

  auto reader = open_store(path);
  const Manifest& m = reader->manifest();
  CHECK(m.format == Format::Hdf5);
  CHECK(m.source == "tutorial layout");
  CHECK(m.count == 37);
  CHECK(m.shape == Shape{32, 32, 3});
  CHECK(m.class_names.empty());
  CHECK(m.encoding == Encoding::Raw);
  CHECK(m.split == "cifar_tutorial");
  CHECK(m.content_digest == digest_of(images));
  check_reads_back(*reader, images);
}

TEST_CASE("hdf5 reader opens chunk layouts other writers choose") {
  // HDF5's own chunked writes (deflate: the raw-chunk path), shuffle+deflate and chunks that
  // split images (both through H5Dread under the lock).
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(21, {8, 8, 3}, 10, 4);
  std::vector<std::uint8_t> meta(images.labels.begin(), images.labels.end());
  struct Case {
    const char* name;
    std::vector<hsize_t> chunk;
    bool shuffle;
    int deflate;
  };
  for (const Case& c :
       {Case{"deflate", {6, 8, 8, 3}, false, 5}, Case{"shuffle", {4, 8, 8, 3}, true, 1},
        Case{"split", {5, 4, 8, 3}, false, 0}}) {
    CAPTURE(c.name);
    const auto path = dir / (std::string(c.name) + ".h5");
    {
      Hdf5Lock lock;
      H5File file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
      const hsize_t dims[4] = {21, 8, 8, 3};
      H5Space space(H5Screate_simple(4, dims, nullptr));
      H5Plist dcpl(H5Pcreate(H5P_DATASET_CREATE));
      REQUIRE(H5Pset_chunk(dcpl.get(), 4, c.chunk.data()) >= 0);
      if (c.shuffle) H5Pset_shuffle(dcpl.get());
      if (c.deflate) H5Pset_deflate(dcpl.get(), c.deflate);
      H5Dataset ds(H5Dcreate2(file.get(), "images", H5T_STD_U8BE, space.get(), H5P_DEFAULT,
                              dcpl.get(), H5P_DEFAULT));
      REQUIRE(H5Dwrite(ds.get(), H5T_NATIVE_UINT8, H5S_ALL, H5S_ALL, H5P_DEFAULT,
                       images.pixels.data()) >= 0);
      put_dataset(file.get(), "meta", H5T_STD_U8BE, H5T_NATIVE_UINT8, {21}, meta.data());
    }
    auto reader = open_store(path);
    CHECK(reader->manifest().content_digest == digest_of(images));
    check_reads_back(*reader, images);
  }
}

TEST_CASE("hdf5 reader reads chunks never written as HDF5's fill value") {
  test::TempDir dir;
  ImageBatch images = fixtures::make_images(10, {2, 2, 3}, 10, 4);
  std::vector<std::uint8_t> meta(images.labels.begin(), images.labels.end());
  const auto path = dir / "sparse.h5";
  {
    Hdf5Lock lock;
    H5File file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
    const hsize_t dims[4] = {10, 2, 2, 3}, chunk[4] = {4, 2, 2, 3};
    H5Space space(H5Screate_simple(4, dims, nullptr));
    H5Plist dcpl(H5Pcreate(H5P_DATASET_CREATE));
    REQUIRE(H5Pset_chunk(dcpl.get(), 4, chunk) >= 0);
    H5Dataset ds(H5Dcreate2(file.get(), "images", H5T_STD_U8BE, space.get(), H5P_DEFAULT,
                            dcpl.get(), H5P_DEFAULT));
    const hsize_t start[4] = {0, 0, 0, 0};  // records 0..3 only: chunks 1 and 2 stay unwritten
    REQUIRE(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, chunk, nullptr) >= 0);
    H5Space mem(H5Screate_simple(4, chunk, nullptr));
    REQUIRE(H5Dwrite(ds.get(), H5T_NATIVE_UINT8, mem.get(), space.get(), H5P_DEFAULT,
                     images.pixels.data()) >= 0);
    put_dataset(file.get(), "meta", H5T_STD_U8BE, H5T_NATIVE_UINT8, {10}, meta.data());
  }
  std::fill(images.image(4), images.image(10), 0);
  auto reader = open_store(path);
  check_reads_back(*reader, images);
}

TEST_CASE("hdf5 reader rejects /images of the wrong rank or dtype") {
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(4, {2, 2, 3}, 4, 3);
  std::vector<std::uint8_t> meta(4, 1);
  {
    const auto path = dir / "rank3.h5";
    {
      Hdf5Lock lock;
      H5File file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
      put_dataset(file.get(), "images", H5T_STD_U8BE, H5T_NATIVE_UINT8, {4, 2, 6},
                  images.pixels.data());
      put_dataset(file.get(), "meta", H5T_STD_U8BE, H5T_NATIVE_UINT8, {4}, meta.data());
    }
    CHECK_THROWS_WITH_AS(open_store(path),
                         doctest::Contains("rank3.h5' dataset /images: wrong shape"), DataError);
  }
  {
    const auto path = dir / "five_channels.h5";
    {
      Hdf5Lock lock;
      H5File file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
      std::vector<std::uint8_t> px(4 * 5);
      put_dataset(file.get(), "images", H5T_STD_U8BE, H5T_NATIVE_UINT8, {4, 1, 1, 5}, px.data());
      put_dataset(file.get(), "meta", H5T_STD_U8BE, H5T_NATIVE_UINT8, {4}, meta.data());
    }
    CHECK_THROWS_WITH_AS(open_store(path), doctest::Contains("wrong shape (4,1,1,5)"), DataError);
  }
  {
    const auto path = dir / "float.h5";
    {
      Hdf5Lock lock;
      H5File file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
      std::vector<float> px(images.pixels.begin(), images.pixels.end());
      put_dataset(file.get(), "images", H5T_IEEE_F32LE, H5T_NATIVE_FLOAT, {4, 2, 2, 3}, px.data());
      put_dataset(file.get(), "meta", H5T_STD_U8BE, H5T_NATIVE_UINT8, {4}, meta.data());
    }
    CHECK_THROWS_WITH_AS(open_store(path),
                         doctest::Contains("float.h5' dataset /images: wrong dtype float32"),
                         DataError);
  }
  {
    const auto path = dir / "short_meta.h5";
    {
      Hdf5Lock lock;
      H5File file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
      put_dataset(file.get(), "images", H5T_STD_U8BE, H5T_NATIVE_UINT8, {4, 2, 2, 3},
                  images.pixels.data());
      put_dataset(file.get(), "meta", H5T_STD_U8BE, H5T_NATIVE_UINT8, {3}, meta.data());
    }
    CHECK_THROWS_WITH_AS(open_store(path),
                         doctest::Contains("dataset /meta: wrong shape: 3 entries for 4 images"),
                         DataError);
  }
  {
    const auto path = dir / "no_meta.h5";
    {
      Hdf5Lock lock;
      H5File file(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT));
      put_dataset(file.get(), "images", H5T_STD_U8BE, H5T_NATIVE_UINT8, {4, 2, 2, 3},
                  images.pixels.data());
    }
    CHECK_THROWS_WITH_AS(open_store(path), doctest::Contains("no_meta.h5' is neither"), DataError);
  }
}

TEST_CASE("hdf5 reader rejects /labels of the wrong length") {
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(9, {3, 3, 1}, 4, 3);
  const auto path = dir / "train.h5";
  write_store(path, images, {});
  {
    H5File file = open_rw(path);
    Hdf5Lock lock;
    REQUIRE(H5Ldelete(file.get(), "labels", H5P_DEFAULT) >= 0);
    std::vector<std::int64_t> labels(8, 0);
    put_dataset(file.get(), "labels", H5T_STD_I64LE, H5T_NATIVE_INT64, {8}, labels.data());
  }
  CHECK_THROWS_WITH_AS(
      open_store(path),
      doctest::Contains("train.h5' dataset /labels: wrong shape: 8 entries for 9 images"),
      DataError);
}

TEST_CASE("hdf5 reader detects pixels changed in place") {
  test::TempDir dir;
  const std::uint8_t junk_bytes[6] = {1, 2, 3, 4, 5, 6};
  const ImageBatch images = fixtures::make_images(12, {4, 4, 3}, 4, 9);
  for (std::size_t chunk : {std::size_t{0}, std::size_t{5}}) {
    CAPTURE(chunk);
    WriterOptions options;
    options.hdf5.chunk_records = chunk;
    options.hdf5.deflate = chunk ? 4 : 0;
    const auto path = dir / ("tampered" + std::to_string(chunk) + ".h5");
    write_store(path, images, options);
    {
      H5File file = open_rw(path);
      Hdf5Lock lock;
      H5Dataset ds(H5Dopen2(file.get(), "images", H5P_DEFAULT));
      H5Space space(H5Dget_space(ds.get()));
      const hsize_t start[4] = {6, 1, 1, 0}, count[4] = {1, 1, 2, 3};
      REQUIRE(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) >=
              0);
      H5Space mem(H5Screate_simple(4, count, nullptr));
      REQUIRE(H5Dwrite(ds.get(), H5T_NATIVE_UINT8, mem.get(), space.get(), H5P_DEFAULT,
                       junk_bytes) >= 0);
    }
    auto reader = open_store(path);
    CHECK(reader->read_one(5) == std::vector<std::uint8_t>(images.image(5), images.image(6)));
    CHECK_THROWS_WITH_AS(
        reader->read_one(6),
        doctest::Contains(("corrupt record in '" + path.string() + "' record 6").c_str()),
        DataError);
    std::vector<std::uint64_t> idx{2, 6};
    std::vector<std::uint8_t> out(2 * images.shape.bytes());
    CHECK_THROWS_WITH_AS(reader->read_many(idx.data(), 2, out.data(), nullptr),
                         doctest::Contains("record 6"), DataError);
    // Without verification the changed bytes come through.
    ReaderOptions lax;
    lax.verify_checksums = false;
    auto raw = open_store(path, lax);
    std::vector<std::uint8_t> tampered(images.image(6), images.image(7));
    std::copy(junk_bytes, junk_bytes + 6, tampered.begin() + (1 * 4 + 1) * 3);  // (y=1, x=1)
    CHECK(raw->read_one(6) == tampered);
  }
}

namespace {

// Overwrites record `index`'s first bytes in place through HDF5 (contiguous data stays put).
void overwrite_record_start(const fs::path& path, std::uint64_t index) {
  H5File file = open_rw(path);
  Hdf5Lock lock;
  H5Dataset ds(H5Dopen2(file.get(), "images", H5P_DEFAULT));
  H5Space space(H5Dget_space(ds.get()));
  const hsize_t start[4] = {index, 0, 0, 0}, count[4] = {1, 1, 2, 3};
  REQUIRE(H5Sselect_hyperslab(space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr) >= 0);
  H5Space mem(H5Screate_simple(4, count, nullptr));
  const std::uint8_t junk[6] = {9, 8, 7, 6, 5, 4};
  REQUIRE(H5Dwrite(ds.get(), H5T_NATIVE_UINT8, mem.get(), space.get(), H5P_DEFAULT, junk) >= 0);
}

}  // namespace

TEST_CASE("hdf5 direct layouts read bit-exact through the mapping and through pread") {
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(41, {7, 5, 3}, 4, 31);
  struct Case {
    const char* name;
    std::size_t chunk;
    int deflate;
  };
  for (const Case& c : {Case{"contiguous", 0, 0}, Case{"chunked", 6, 0}, Case{"deflate", 6, 3}}) {
    CAPTURE(c.name);
    WriterOptions options;
    options.hdf5.chunk_records = c.chunk;
    options.hdf5.deflate = c.deflate;
    options.durable = false;
    const auto path = dir / (std::string(c.name) + ".h5");
    write_store(path, images, options);
    for (bool random : {false, true}) {
      CAPTURE(random);
      ReaderOptions ro;
      ro.no_readahead = random;  // stores larger than memory: pread, no mapping
      auto reader = open_store(path, ro);
      CHECK(detail::testing::hdf5_reader_uses_mmap(*reader) == !random);
      check_reads_back(*reader, images);
      check_reads_back(*reader, images);  // again, now from warm pages and caches
    }
    {
      detail::testing::Hdf5MmapDisabled fallback;
      auto plain = open_store(path);
      CHECK_FALSE(detail::testing::hdf5_reader_uses_mmap(*plain));
      check_reads_back(*plain, images);
    }
    CHECK(detail::testing::hdf5_reader_uses_mmap(*open_store(path)));  // hook released
  }
}

TEST_CASE("hdf5 mapped and pread readers both catch a record changed after open") {
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(10, {4, 4, 3}, 4, 32);
  for (bool use_mmap : {true, false}) {
    CAPTURE(use_mmap);
    WriterOptions options;
    options.durable = false;
    const auto path = dir / (use_mmap ? "mapped.h5" : "pread.h5");
    write_store(path, images, options);
    std::unique_ptr<StoreReader> reader;
    if (use_mmap) {
      reader = open_store(path);
    } else {
      detail::testing::Hdf5MmapDisabled fallback;
      reader = open_store(path);
    }
    REQUIRE(detail::testing::hdf5_reader_uses_mmap(*reader) == use_mmap);
    CHECK(reader->read_one(3) == std::vector<std::uint8_t>(images.image(3), images.image(4)));
    overwrite_record_start(path, 3);  // the mapping shows the new bytes at once
    const std::string where = "corrupt record in '" + path.string() + "' record 3";
    for (int attempt = 0; attempt < 2; ++attempt) {
      CAPTURE(attempt);
      CHECK_THROWS_WITH_AS(reader->read_one(3), doctest::Contains(where.c_str()), DataError);
      const std::uint64_t idx[3] = {1, 3, 2};
      std::vector<std::uint8_t> out(3 * images.shape.bytes());
      CHECK_THROWS_WITH_AS(reader->read_many(idx, 3, out.data(), nullptr),
                           doctest::Contains(where.c_str()), DataError);
    }
    CHECK(reader->read_one(4) == std::vector<std::uint8_t>(images.image(4), images.image(5)));
  }
}

TEST_CASE("hdf5 reader refuses truncated and non-HDF5 files with their name") {
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(50, {8, 8, 3}, 4, 2);
  for (std::size_t chunk : {std::size_t{0}, std::size_t{8}}) {
    CAPTURE(chunk);
    WriterOptions options;
    options.hdf5.chunk_records = chunk;
    const auto path = dir / ("cut" + std::to_string(chunk) + ".h5");
    write_store(path, images, options);
    fs::resize_file(path, fs::file_size(path) / 2);
    CHECK_THROWS_WITH_AS(detail::open_hdf5_store(path, {}),
                         doctest::Contains(path.string().c_str()), DataError);
  }
  const auto text = dir / "notes.h5";
  std::ofstream(text) << "this is not HDF5\n";
  CHECK_THROWS_WITH_AS(detail::open_hdf5_store(text, {}),
                       doctest::Contains("notes.h5' is not a readable HDF5 file"), DataError);
  CHECK_THROWS_WITH_AS(detail::open_hdf5_store(dir / "missing.h5", {}),
                       doctest::Contains("missing.h5"), IoError);
}

TEST_CASE("hdf5 writer: unwritable directory, existing target, deflate without chunks") {
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(3, {2, 2, 3}, 4, 1);
  std::ofstream(dir / "file.txt") << "x";
  CHECK_THROWS_AS(write_store(dir / "file.txt" / "train.h5", images, {}), IoError);

  const auto path = dir / "train.h5";
  write_store(path, images, {});
  CHECK_THROWS_WITH_AS(write_store(path, images, {}), doctest::Contains("already exists"), IoError);
  WriterOptions overwrite;
  overwrite.overwrite = true;
  const ImageBatch other = fixtures::make_images(5, {2, 2, 1}, 4, 2);
  write_store(path, other, overwrite);
  CHECK(open_store(path)->size() == 5);

  WriterOptions bad;
  bad.hdf5.deflate = 5;
  CHECK_THROWS_WITH_AS(write_store(dir / "x.h5", images, bad), doctest::Contains("chunking"),
                       UsageError);
  bad.hdf5.chunk_records = 2;
  bad.hdf5.deflate = 10;
  CHECK_THROWS_AS(write_store(dir / "x.h5", images, bad), UsageError);
  CHECK(test::list_dir(dir.path()) == std::vector<std::string>{"file.txt", "train.h5"});
}

TEST_CASE("hdf5 writer destroyed without commit leaves nothing") {
  test::TempDir dir;
  const ImageBatch images = fixtures::make_images(10, {2, 2, 3}, 4, 1);
  for (std::size_t chunk : {std::size_t{0}, std::size_t{3}}) {
    WriterOptions options;
    options.hdf5.chunk_records = chunk;
    StoreSpec spec;
    spec.split = "train";
    spec.count = 20;
    spec.shape = images.shape;
    {
      auto writer = create_store(Format::Hdf5, dir / "train.h5", spec, options);
      writer->write(images);
      CHECK_THROWS_AS(writer->commit(), DataError);  // 10 of 20 records
    }
    CHECK(test::list_dir(dir.path()).empty());
  }
}
