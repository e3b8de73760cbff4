// Format version 2: variable-size records and JPEG payloads (LMDB, HDF5's ragged layout), read
// back record by record,
// verified, compared, sharded and converted store to store. Images are crops of real photos
// (python3-skimage's data), not noise.
#include <doctest/doctest.h>

#include <cmath>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>

#include <fmt/format.h>

#include "codecs/image_codec.hpp"
#include "detail/hdf5_handles.hpp"
#include "detail/testing.hpp"
#include "formats/formats.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/convert.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"
#include "imgstore/store.hpp"
#include "test_support.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

namespace {

const std::vector<std::string> kClasses{"cat", "astronaut", "coffee"};

detail::DecodedImage load_photo(const std::string& name) {
  const std::string path = "/usr/lib/python3/dist-packages/skimage/data/" + name;
  std::ifstream in(path, std::ios::binary);
  REQUIRE_MESSAGE(in.good(), "python3-skimage's data is missing: " << path);
  std::vector<std::uint8_t> bytes{std::istreambuf_iterator<char>(in),
                                  std::istreambuf_iterator<char>()};
  detail::DecodedImage img;
  detail::decode_image(bytes.data(), bytes.size(), 3, path, img);
  return img;
}

// n records of differing sizes, cut from three photos: variable-size pixels (and, with
// `jpeg_payload`, each record's JPEG bytes as a source would pass them through).
ImageBatch photo_crops(std::size_t n, bool jpeg_payload) {
  const detail::DecodedImage photos[] = {load_photo("chelsea.png"), load_photo("astronaut.png"),
                                         load_photo("coffee.png")};
  ImageBatch b;
  b.shape = Shape{0, 0, 3};
  b.offsets.push_back(0);
  if (jpeg_payload) {
    b.payload_encoding = Encoding::Jpeg;
    b.payload_offsets.push_back(0);
  }
  std::vector<std::uint8_t> jpeg;
  for (std::size_t i = 0; i < n; ++i) {
    const auto& photo = photos[i % 3];
    const std::uint32_t h = 17 + static_cast<std::uint32_t>(i * 37 % 200);
    const std::uint32_t w = 9 + static_cast<std::uint32_t>(i * 53 % 260);
    const std::uint32_t y0 = static_cast<std::uint32_t>(i * 11 % (photo.shape.height - h));
    const std::uint32_t x0 = static_cast<std::uint32_t>(i * 7 % (photo.shape.width - w));
    const std::size_t at = b.pixels.size();
    b.pixels.resize(at + std::size_t{h} * w * 3);
    for (std::uint32_t y = 0; y < h; ++y) {
      std::memcpy(b.pixels.data() + at + std::size_t{y} * w * 3,
                  photo.pixels.data() + (std::size_t{y0 + y} * photo.shape.width + x0) * 3,
                  std::size_t{w} * 3);
    }
    b.shapes.push_back(Shape{h, w, 3});
    b.offsets.push_back(b.pixels.size());
    b.labels.push_back(static_cast<std::int64_t>(i % 3));
    if (jpeg_payload) {
      detail::encode_jpeg(b.pixels.data() + at, w, h, 3, 75 + static_cast<int>(i % 20), jpeg);
      b.payload.insert(b.payload.end(), jpeg.begin(), jpeg.end());
      b.payload_offsets.push_back(b.payload.size());
    }
  }
  return b;
}

StoreSpec spec_for(const ImageBatch& b, const std::string& split) {
  return test::spec_for(b, kClasses, split, "unit test photo crops");
}

// The formats that hold variable-size and JPEG records.
const Format kFormats[] = {Format::Lmdb, Format::Hdf5};
// And those that hold variable-size records losslessly: the JPEG formats plus PNG folders.
const Format kLosslessFormats[] = {Format::Lmdb, Format::Hdf5, Format::PngFolder};

// Writes `b` as DIR/<name><format's suffix>; returns the path.
fs::path write_store(Format format, const fs::path& dir, const std::string& name,
                     const ImageBatch& b, Encoding encoding, std::size_t batch = 7,
                     std::uint32_t shards = 1) {
  WriterOptions options;
  options.encoding = encoding;
  options.durable = false;
  options.shards = shards;
  const fs::path path = dir / store_file_name(name, format);
  test::write_in_batches(*create_store(format, path, spec_for(b, name), options), b, batch);
  return path;
}

fs::path write_lmdb(const fs::path& path, const ImageBatch& b, Encoding encoding,
                    std::size_t batch = 7, std::uint32_t shards = 1) {
  return write_store(Format::Lmdb, path.parent_path(), path.stem().string(), b, encoding, batch,
                     shards);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace

TEST_CASE("a variable-size store (LMDB, HDF5, PNG folder) keeps every record's own shape and pixels") {
  test::TempDir dir;
  const ImageBatch crops = photo_crops(23, false);
  for (Format f : kLosslessFormats) {
  CAPTURE(to_string(f));
  const fs::path path = write_store(f, dir.path(), "v", crops, format_info(f).encodings.front());
  auto reader = open_store(path);
  const Manifest& m = reader->manifest();
  CHECK(reader->variable_size());
  CHECK(m.format_version == 2);
  CHECK(m.shape == Shape{0, 0, 3});
  std::uint32_t min_h = ~0u, max_h = 0, min_w = ~0u, max_w = 0;
  for (const auto& s : crops.shapes) {
    min_h = std::min(min_h, s.height), max_h = std::max(max_h, s.height);
    min_w = std::min(min_w, s.width), max_w = std::max(max_w, s.width);
  }
  CHECK(m.min_height == min_h);
  CHECK(m.max_height == max_h);
  CHECK(m.min_width == min_w);
  CHECK(m.max_width == max_w);
  EncodedRecord r;
  for (std::size_t i = 0; i < crops.size(); ++i) {
    CHECK(reader->record_shape(i) == crops.shapes[i]);
    reader->read_record(i, r);
    CHECK(r.encoding == Encoding::Raw);  // PNG payloads arrive decoded
    CHECK(r.shape == crops.shapes[i]);
    CHECK(r.label == crops.labels[i]);
    REQUIRE(r.bytes.size() == crops.image_bytes(i));
    CHECK(std::equal(r.bytes.begin(), r.bytes.end(), crops.image(i)));
    CHECK(m.checksums[i] == record_checksum(crops.image(i), crops.image_bytes(i), crops.labels[i]));
  }
  std::vector<std::uint8_t> out(1 << 20);
  CHECK_THROWS_AS(reader->read_one(0, out.data()), UsageError);
  CHECK(error_of([&] { reader->read_one(0, out.data()); }).find("different sizes") !=
        std::string::npos);
  CHECK(verify_store(*reader).records == crops.size());
  const CompareResult same = compare_stores(*reader, *open_store(path));
  CHECK(same.exact);
  CHECK(same.max_abs_diff == 0);
  }
}

TEST_CASE("a ragged HDF5 store is the same whether its payloads are written in place or moved "
          "under /images") {
  test::TempDir dir;
  const ImageBatch crops = photo_crops(23, false);
  fs::create_directories(dir.path() / "k");
  fs::create_directories(dir.path() / "h");
  const fs::path in_place = write_store(Format::Hdf5, dir.path() / "k", "v", crops, Encoding::Raw);
  fs::path moved;
  {
    detail::testing::Hdf5PayloadsInPlaceDisabled off;
    moved = write_store(Format::Hdf5, dir.path() / "h", "v", crops, Encoding::Raw);
  }
  // In place, /images starts where the payloads were written, past a margin above libhdf5's
  // metadata; moved, libhdf5 put it right after its metadata, so the file is smaller.
  CHECK(fs::file_size(in_place) > fs::file_size(moved));
  const auto images_offset = [](const fs::path& path) {
    detail::Hdf5Lock lock;
    detail::H5File file(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT));
    REQUIRE(file.get() >= 0);
    detail::H5Dataset images(H5Dopen2(file.get(), "images", H5P_DEFAULT));
    REQUIRE(images.get() >= 0);
    return H5Dget_offset(images.get());
  };
  const haddr_t placed = images_offset(in_place), after_metadata = images_offset(moved);
  CHECK(placed % 4096 == 0);  // where the writer put the payloads, page-aligned
  CHECK(after_metadata < placed);
  auto a = open_store(in_place), b = open_store(moved);
  EncodedRecord r;
  for (std::size_t i = 0; i < crops.size(); ++i) {
    a->read_record(i, r);
    REQUIRE(r.bytes.size() == crops.image_bytes(i));
    CHECK(std::equal(r.bytes.begin(), r.bytes.end(), crops.image(i)));
  }
  CHECK(verify_store(*a).records == crops.size());
  CHECK(compare_stores(*a, *b).exact);
}

TEST_CASE("a ragged HDF5 store holds the same records whatever its batch sizes") {
  // The writer appends payloads in whole pages and carries each batch's last partial page to
  // the next: batches of one record under a page (the carry not yet full), of records spanning
  // pages, and the whole set at once must all give the same records and checksums.
  test::TempDir dir;
  for (const bool jpeg : {false, true}) {
    CAPTURE(jpeg);
    const ImageBatch crops = photo_crops(23, jpeg);
    const Encoding encoding = jpeg ? Encoding::Jpeg : Encoding::Raw;
    std::vector<std::unique_ptr<StoreReader>> readers;
    for (const std::size_t batch : {std::size_t{1}, std::size_t{2}, std::size_t{5}, crops.size()}) {
      const fs::path sub = dir.path() / fmt::format("{}-{}", jpeg, batch);
      fs::create_directories(sub);
      readers.push_back(open_store(write_store(Format::Hdf5, sub, "v", crops, encoding, batch)));
    }
    EncodedRecord r;
    for (const auto& reader : readers) {
      REQUIRE(reader->size() == crops.size());
      CHECK(verify_store(*reader).records == crops.size());
      for (std::size_t i = 0; i < crops.size(); ++i) {
        reader->read_record(i, r);
        const std::uint8_t* want = jpeg ? crops.payload.data() + crops.payload_offsets[i] : crops.image(i);
        const std::size_t want_size =
            jpeg ? crops.payload_offsets[i + 1] - crops.payload_offsets[i] : crops.image_bytes(i);
        REQUIRE(r.bytes.size() == want_size);
        CHECK(std::equal(r.bytes.begin(), r.bytes.end(), want));
      }
      CHECK(reader->manifest().checksums == readers.back()->manifest().checksums);
    }
  }
}

TEST_CASE("a JPEG store (LMDB, HDF5) keeps the source's JPEG bytes untouched") {
  test::TempDir dir;
  ImageBatch crops = photo_crops(12, true);
  ImageBatch payload_only = crops;
  payload_only.pixels.clear();  // what a source sends when no writer needs pixels
  for (Format f : kFormats) {
  CAPTURE(to_string(f));
  const fs::path path = write_store(f, dir.path(), "j", payload_only, Encoding::Jpeg, 5);
  const fs::path out = dir / to_string(f);
  fs::create_directories(out);
  auto reader = open_store(path);
  CHECK(reader->manifest().encoding == Encoding::Jpeg);
  CHECK(reader->manifest().format_version == 2);
  EncodedRecord r;
  for (std::size_t i = 0; i < crops.size(); ++i) {
    reader->read_record(i, r);
    CHECK(r.encoding == Encoding::Jpeg);
    CHECK(r.shape == crops.shapes[i]);
    const std::size_t b = crops.payload_offsets[i], e = crops.payload_offsets[i + 1];
    REQUIRE(r.bytes.size() == e - b);
    CHECK(std::equal(r.bytes.begin(), r.bytes.end(), crops.payload.begin() + b));
    // The checksum of a lossy record covers its stored bytes, seeded with the label.
    CHECK(reader->manifest().checksums[i] == record_checksum(r.bytes.data(), r.bytes.size(),
                                                             crops.labels[i]));
  }
  CHECK(verify_store(*reader).records == crops.size());

  {  // compared with the raw pixels it measures the loss instead of failing
    const CompareResult c = compare_stores(
        *reader, *open_store(write_store(f, out, "raw", crops, Encoding::Raw)));
    CHECK_FALSE(c.exact);
    CHECK(c.max_abs_diff > 0);
    CHECK(c.psnr_db > 28.0);  // quality 75..94 on photos
    CHECK(std::isfinite(c.psnr_db));
  }
  {  // converted store to store, the JPEG bytes pass through unchanged
    auto source = open_source(path.string());
    ConvertOptions options;
    options.formats = {Format::Lmdb, Format::Hdf5};
    options.encodings[Format::Lmdb] = Encoding::Jpeg;
    options.encodings[Format::Hdf5] = Encoding::Jpeg;
    options.writer.durable = false;
    convert_split(*source, "j", out / "copy", options);
    for (const char* name : {"j.lmdb", "j.h5"}) {
      auto copy = open_store(out / "copy" / name);
      CHECK(copy->manifest().content_digest == reader->manifest().content_digest);
      CHECK(copy->variable_size());
    }
  }
  {  // converted to raw, the pixels are the decoded JPEGs
    auto source = open_source(path.string());
    ConvertOptions options;
    options.formats = {Format::Lmdb};
    options.writer.durable = false;
    convert_split(*source, "j", out / "decoded", options);
    auto raw = open_store(out / "decoded" / "j.lmdb");
    CHECK(raw->manifest().encoding == Encoding::Raw);
    const CompareResult c = compare_stores(*raw, *reader);
    CHECK(c.max_abs_diff == 0);  // the same decoder on the same bytes
  }
  }
}

TEST_CASE("pixels written to a JPEG store are encoded at the writer's quality") {
  test::TempDir dir;
  const ImageBatch crops = photo_crops(6, false);
  WriterOptions low, high;
  low.encoding = high.encoding = Encoding::Jpeg;
  low.durable = high.durable = false;
  low.jpeg_quality = 20;
  high.jpeg_quality = 95;
  test::write_in_batches(*create_store(Format::Lmdb, dir / "low.lmdb", spec_for(crops, "low"), low),
                         crops, 0);
  test::write_in_batches(*create_store(Format::Lmdb, dir / "high.lmdb", spec_for(crops, "high"),
                                       high), crops, 0);
  write_lmdb(dir / "raw.lmdb", crops, Encoding::Raw);
  auto raw = open_store(dir / "raw.lmdb");
  const double psnr_low = compare_stores(*open_store(dir / "low.lmdb"), *raw).psnr_db;
  const double psnr_high = compare_stores(*open_store(dir / "high.lmdb"), *raw).psnr_db;
  CHECK(psnr_high > psnr_low + 5);
  CHECK(open_store(dir / "high.lmdb")->bytes_on_disk() > open_store(dir / "low.lmdb")->bytes_on_disk());
  WriterOptions bad = low;
  bad.jpeg_quality = 0;
  CHECK_THROWS_AS(create_store(Format::Lmdb, dir / "bad.lmdb", spec_for(crops, "bad"), bad),
                  UsageError);
}

TEST_CASE("a fixed-size JPEG store reads through read_one, decoded") {
  test::TempDir dir;
  const detail::DecodedImage photo = load_photo("chelsea.png");
  ImageBatch tiles;
  const Shape tile{64, 48, 3};
  tiles.resize(tile, 5);
  for (std::size_t i = 0; i < 5; ++i) {
    for (std::uint32_t y = 0; y < tile.height; ++y) {
      std::memcpy(tiles.image(i) + std::size_t{y} * tile.width * 3,
                  photo.pixels.data() + (std::size_t{y + 20 * i} * photo.shape.width + 30 * i) * 3,
                  std::size_t{tile.width} * 3);
    }
    tiles.labels[i] = static_cast<std::int64_t>(i % 3);
  }
  write_lmdb(dir / "f.lmdb", tiles, Encoding::Jpeg);
  auto reader = open_store(dir / "f.lmdb");
  CHECK_FALSE(reader->variable_size());
  CHECK(reader->manifest().format_version == 2);
  std::vector<std::uint8_t> px(tile.bytes());
  for (std::uint64_t i = 0; i < 5; ++i) {
    CHECK(reader->read_one(i, px.data()) == tiles.labels[i]);
    int worst = 0;
    for (std::size_t k = 0; k < px.size(); ++k) {
      worst = std::max(worst, std::abs(int{px[k]} - int{tiles.image(i)[k]}));
    }
    CHECK(worst > 0);   // lossy
    CHECK(worst < 80);  // but the same picture
  }
  CHECK(verify_store(*reader).records == 5);
}

TEST_CASE("variable-size stores: sharded, and formats that cannot hold them refuse") {
  test::TempDir dir;
  const ImageBatch crops = photo_crops(10, true);
  for (Format f : kFormats) {
  CAPTURE(to_string(f));
  auto reader = open_store(write_store(f, dir.path(), "s", crops, Encoding::Jpeg, 4, 3));
  CHECK(reader->variable_size());
  CHECK(reader->shard_ranges().size() == 3);
  EncodedRecord r;
  for (std::size_t i = 0; i < crops.size(); ++i) {
    reader->read_record(i, r);
    CHECK(r.shape == crops.shapes[i]);
  }
  CHECK(verify_store(*reader).records == 10);
  }
  CHECK(error_of([&] {
          WriterOptions o;
          o.encoding = Encoding::Jpeg;
          create_store(Format::PngFolder, dir / "j.png", spec_for(crops, "j"), o);
        }).find("jpeg") != std::string::npos);
  CHECK(error_of([&] {
          WriterOptions o;
          o.hdf5.chunk_records = 4;
          create_store(Format::Hdf5, dir / "c.h5", spec_for(crops, "c"), o);
        }).find("ragged") != std::string::npos);
}

TEST_CASE("a corrupt JPEG record is named by verify; bad batches are refused") {
  test::TempDir dir;
  ImageBatch crops = photo_crops(4, true);
  // Record 2's JPEG loses its second half: written as given (the checksum covers the bytes),
  // found by verify's full decode.
  const std::size_t b = crops.payload_offsets[2], e = crops.payload_offsets[3];
  ImageBatch broken = crops;
  broken.payload.erase(broken.payload.begin() + (b + (e - b) / 2), broken.payload.begin() + e);
  for (std::size_t i = 3; i < broken.payload_offsets.size(); ++i) {
    broken.payload_offsets[i] -= e - (b + (e - b) / 2);
  }
  broken.pixels.clear();
  write_lmdb(dir / "broken.lmdb", broken, Encoding::Jpeg);
  const std::string message = error_of([&] { verify_store(*open_store(dir / "broken.lmdb")); });
  CHECK(message.find("record 2") != std::string::npos);

  // A variable-size batch into a fixed-size store, and offsets that disagree with the shapes.
  StoreSpec fixed = spec_for(crops, "fixed");
  fixed.variable_size = false;
  fixed.shape = Shape{32, 32, 3};
  auto writer = create_store(Format::Lmdb, dir / "fixed.lmdb", fixed);
  CHECK_THROWS_AS(writer->write(crops), DataError);
  auto vwriter = create_store(Format::Lmdb, dir / "v.lmdb", spec_for(crops, "v"));
  ImageBatch skewed = crops;
  skewed.payload_encoding.reset();
  skewed.offsets[1] += 3;
  CHECK_THROWS_AS(vwriter->write(skewed), DataError);
}

TEST_CASE("manifest version 2 fields round-trip; version 1 cannot claim variable sizes") {
  Manifest m;
  m.format = Format::Lmdb;
  m.split = "train";
  m.count = 0;
  m.shape = Shape{0, 0, 3};
  m.variable_size = true;
  m.format_version = 2;
  m.encoding = Encoding::Jpeg;
  m.content_digest = ContentDigest{}.value();
  const Manifest back = Manifest::from_json(m.to_json(), "m");
  CHECK(back.variable_size);
  CHECK(back.format_version == 2);
  CHECK(back.encoding == Encoding::Jpeg);
  std::string v1 = m.to_json();
  const auto at = v1.find("\"format_version\": 2");
  REQUIRE(at != std::string::npos);
  v1.replace(at, 19, "\"format_version\": 1");
  CHECK(error_of([&] { Manifest::from_json(v1, "m"); }).find("format_version 1") !=
        std::string::npos);
  std::string v3 = m.to_json();
  v3.replace(v3.find("\"format_version\": 2"), 19, "\"format_version\": 3");
  CHECK(error_of([&] { Manifest::from_json(v3, "m"); }).find("not supported") != std::string::npos);
}
