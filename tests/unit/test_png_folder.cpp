// PNG folder store: layout, round trips through the tutorial's four operations, and every way
// a folder on disk can be wrong.
#include <doctest/doctest.h>

#include <fcntl.h>

#include <tbb/parallel_for.h>

#include <algorithm>
#include <fstream>
#include <numeric>
#include <random>
#include <sstream>

#include "detail/fs_util.hpp"
#include "detail/png_codec.hpp"
#include "fixtures.hpp"
#include "formats/formats.hpp"
#include "imgstore/error.hpp"
#include "imgstore/store.hpp"
#include "test_support.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  std::ostringstream s;
  s << in.rdbuf();
  return s.str();
}

void spit(const fs::path& p, const std::string& text) {
  std::ofstream out(p, std::ios::binary | std::ios::trunc);
  out << text;
}

// A small committed store to break in various ways.
fs::path make_store(const test::TempDir& dir, std::size_t count = 6, Shape shape = {5, 7, 3}) {
  auto images = fixtures::make_images(count, shape, 3, 11);
  auto path = dir / "train.png";
  WriterOptions options;
  options.durable = false;
  store_many(Format::PngFolder, path, images, {"cat", "dog", "bird"}, options);
  return path;
}

// doctest::Contains takes a C string; it copies it.
doctest::Contains has(const std::string& text) { return doctest::Contains(text.c_str()); }

}  // namespace

TEST_CASE("png folder: layout on disk") {
  test::TempDir dir;
  auto images = fixtures::make_images(3, {4, 4, 1}, 3, 1);
  auto path = dir / "train.png";
  WriterOptions fast;
  fast.durable = false;
  store_many(Format::PngFolder, path, images, {"a", "b,c", "say \"hi\""}, fast);
  CHECK(test::list_dir(path) == std::vector<std::string>{"00000000.png", "00000001.png",
                                                         "00000002.png", "labels.csv",
                                                         "manifest.json"});
  CHECK(test::list_dir(dir.path()) == std::vector<std::string>{"train.png"});
  std::string expected = "file,label,class\n";
  const char* quoted[] = {"a", "\"b,c\"", "\"say \"\"hi\"\"\""};
  for (int i = 0; i < 3; ++i) {
    expected += "0000000" + std::to_string(i) + ".png," + std::to_string(images.labels[i]) + "," +
                quoted[images.labels[i]] + "\n";
  }
  CHECK(slurp(path / "labels.csv") == expected);
  auto manifest = Manifest::from_json(slurp(path / "manifest.json"), "m");
  CHECK(manifest.format == Format::PngFolder);
  CHECK(manifest.encoding == Encoding::Png);
  CHECK(manifest.count == 3);
  CHECK(manifest.split == "train");
  // Each file is an ordinary PNG of the right shape.
  auto bytes = detail::read_file(path / "00000001.png");
  CHECK(detail::png_shape(bytes.data(), bytes.size(), "x") == Shape{4, 4, 1});
}

TEST_CASE("png folder: store_many / read_all round-trip for 1-4 channels and odd sizes") {
  for (std::uint32_t c = 1; c <= 4; ++c) {
    CAPTURE(c);
    test::TempDir dir;
    const Shape shape{7, 5, c};
    auto images = fixtures::make_images(40, shape, 10, c);
    WriterOptions options;
    options.durable = c == 4;  // both paths of commit (durable syncs the whole file system)
    options.png_level = static_cast<int>(c) * 3 - 3;
    store_many(Format::PngFolder, dir / "s.png", images, {}, options);
    auto reader = open_store(dir / "s.png");
    CHECK(reader->format() == Format::PngFolder);
    CHECK(reader->size() == 40);
    CHECK(reader->shape() == shape);
    auto back = read_all(*reader);
    CHECK(back.pixels == images.pixels);
    CHECK(back.labels == images.labels);
    CHECK(reader->bytes_on_disk() > 0);
  }
}

TEST_CASE("png folder: store_one and read_one") {
  test::TempDir dir;
  const Shape shape{32, 32, 3};
  auto images = fixtures::make_images(1, shape, 10, 9);
  store_one(Format::PngFolder, dir / "one.png", shape, images.image(0), 7);
  auto reader = open_store(dir / "one.png");
  REQUIRE(reader->size() == 1);
  std::int64_t label = -1;
  CHECK(reader->read_one(0, &label) == images.pixels);
  CHECK(label == 7);
  CHECK_THROWS_WITH_AS(reader->read_one(1), doctest::Contains("out of range"), UsageError);
}

TEST_CASE("png folder: read_many with shuffled indices, also from inside TBB tasks") {
  test::TempDir dir;
  const Shape shape{6, 9, 3};
  auto images = fixtures::make_images(64, shape, 5, 21);
  WriterOptions fast;
  fast.durable = false;
  store_many(Format::PngFolder, dir / "m.png", images, {"a", "b", "c", "d", "e"}, fast);
  auto reader = open_store(dir / "m.png");

  std::vector<std::uint64_t> indices(100);
  std::mt19937_64 rng(5);
  for (auto& i : indices) i = rng() % 64;  // shuffled, with repeats
  const auto bytes = shape.bytes();
  auto check_batch = [&](const std::vector<std::uint8_t>& out,
                         const std::vector<std::int64_t>& labels) {
    bool ok = true;
    for (std::size_t k = 0; k < indices.size(); ++k) {
      ok = ok && std::equal(out.begin() + k * bytes, out.begin() + (k + 1) * bytes,
                            images.image(indices[k])) &&
           labels[k] == images.labels[indices[k]];
    }
    return ok;
  };
  std::vector<std::uint8_t> out(indices.size() * bytes);
  std::vector<std::int64_t> labels(indices.size());
  reader->read_many(indices.data(), indices.size(), out.data(), labels.data());
  CHECK(check_batch(out, labels));

  // Four concurrent batches, each itself parallel, as a prefetching loader would issue them.
  std::vector<std::vector<std::uint8_t>> outs(4, std::vector<std::uint8_t>(out.size()));
  std::vector<std::vector<std::int64_t>> label_sets(4, std::vector<std::int64_t>(indices.size()));
  tbb::parallel_for(0, 4, [&](int b) {
    reader->read_many(indices.data(), indices.size(), outs[b].data(), label_sets[b].data());
  });
  for (int b = 0; b < 4; ++b) CHECK(check_batch(outs[b], label_sets[b]));

  // Labels may be null.
  reader->read_many(indices.data(), 3, out.data(), nullptr);
}

TEST_CASE("png folder: writer thread counts give identical files; batches may arrive in parts") {
  test::TempDir dir;
  const Shape shape{8, 8, 3};
  auto images = fixtures::make_images(50, shape, 4, 3);
  for (unsigned threads : {1u, 2u}) {
    StoreSpec spec;
    spec.split = "t";
    spec.count = 50;
    spec.shape = shape;
    WriterOptions options;
    options.threads = threads;
    options.durable = false;
    auto writer = create_store(Format::PngFolder, dir / ("t" + std::to_string(threads) + ".png"), spec,
                               options);
    // Parts of 1, 20 and 29 records.
    for (auto [begin, end] : {std::pair<std::size_t, std::size_t>{0, 1}, {1, 21}, {21, 50}}) {
      ImageBatch part;
      part.resize(shape, end - begin);
      std::copy(images.image(begin), images.image(end), part.pixels.begin());
      std::copy(images.labels.begin() + begin, images.labels.begin() + end, part.labels.begin());
      writer->write(part);
    }
    writer->commit();
  }
  for (const char* name : {"00000000.png", "00000020.png", "00000049.png", "labels.csv"}) {
    CAPTURE(name);
    CHECK(slurp(dir / "t1.png" / name) == slurp(dir / "t2.png" / name));
  }
  CHECK(read_all(*open_store(dir / "t2.png")).pixels == images.pixels);
}

TEST_CASE("png folder: a truncated or bit-flipped PNG file is a DataError naming the file") {
  test::TempDir dir;
  auto path = make_store(dir);
  auto reader = open_store(path);
  auto file = path / "00000002.png";
  auto good = slurp(file);

  spit(file, good.substr(0, good.size() - 5));
  CHECK_THROWS_WITH_AS(reader->read_one(2), doctest::Contains("00000002.png"), DataError);
  spit(file, good.substr(0, 20));
  CHECK_THROWS_WITH_AS(reader->read_one(2), doctest::Contains("00000002.png"), DataError);

  auto bad = good;
  bad[good.find("IDAT") + 6] ^= 0x20;  // inside the compressed data: the chunk CRC fails
  spit(file, bad);
  CHECK_THROWS_WITH_AS(reader->read_one(2),
                       has((path / "00000002.png").string() + "': corrupt PNG: "
                                         "CRC error in IDAT"),
                       DataError);
  // read_many reports the same, from whichever worker hit it.
  std::vector<std::uint64_t> idx{0, 1, 2, 3};
  std::vector<std::uint8_t> out(idx.size() * reader->image_bytes());
  CHECK_THROWS_WITH_AS(reader->read_many(idx.data(), idx.size(), out.data(), nullptr),
                       doctest::Contains("00000002.png"), DataError);

  fs::remove(file);
  CHECK_THROWS_WITH_AS(reader->read_one(2), doctest::Contains("00000002.png': record file is missing"),
                       DataError);
  // Other records are unaffected.
  CHECK(reader->read_one(1).size() == reader->image_bytes());
}

TEST_CASE("png folder: a PNG of the wrong size is a DataError") {
  test::TempDir dir;
  auto path = make_store(dir);
  auto other = fixtures::make_images(1, {7, 5, 3}, 3, 1);  // transposed shape
  std::vector<std::uint8_t> png;
  detail::encode_png(other.image(0), other.shape, 6, png);
  detail::write_file(path / "00000004.png", png.data(), png.size(), false);
  auto reader = open_store(path);
  CHECK_THROWS_WITH_AS(reader->read_one(4),
                       doctest::Contains("00000004.png': PNG is 7x5 8-bit RGB, expected 5x7x3"),
                       DataError);
}

TEST_CASE("png folder: a record whose pixels changed fails its checksum") {
  test::TempDir dir;
  auto path = make_store(dir);
  auto other = fixtures::make_images(1, {5, 7, 3}, 3, 999);  // valid PNG, different pixels
  std::vector<std::uint8_t> png;
  detail::encode_png(other.image(0), other.shape, 6, png);
  detail::write_file(path / "00000003.png", png.data(), png.size(), false);
  auto reader = open_store(path);
  CHECK_THROWS_WITH_AS(reader->read_one(3),
                       has("corrupt record in '" + path.string() +
                                         "' file '00000003.png': checksum"),
                       DataError);
  // With verification off the (wrong) pixels come through.
  ReaderOptions lax;
  lax.verify_checksums = false;
  CHECK(open_store(path, lax)->read_one(3) == other.pixels);
}

TEST_CASE("png folder: labels.csv must list every record, in order, with integer labels") {
  test::TempDir dir;
  auto path = make_store(dir, 6);
  const auto csv_path = path / "labels.csv";
  const std::string good = slurp(csv_path);
  std::vector<std::string> lines;
  std::istringstream in(good);
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  REQUIRE(lines.size() == 7);
  auto join = [](const std::vector<std::string>& ls) {
    std::string s;
    for (auto& l : ls) s += l + "\n";
    return s;
  };
  const auto csv = csv_path.string();

  SUBCASE("missing row") {
    auto ls = lines;
    ls.pop_back();
    spit(csv_path, join(ls));
    CHECK_THROWS_WITH_AS(open_store(path), has(csv + "' line 7: missing row"),
                         DataError);
  }
  SUBCASE("row missing in the middle") {
    auto ls = lines;
    ls.erase(ls.begin() + 3);
    spit(csv_path, join(ls));
    CHECK_THROWS_WITH_AS(open_store(path),
                         has(csv + "' line 4: row names '00000003.png', expected "
                                           "'00000002.png'"),
                         DataError);
  }
  SUBCASE("extra row") {
    auto ls = lines;
    ls.push_back("00000006.png,1,dog");
    spit(csv_path, join(ls));
    CHECK_THROWS_WITH_AS(open_store(path), has(csv + "' line 8: extra row"),
                         DataError);
  }
  SUBCASE("non-numeric label") {
    auto ls = lines;
    ls[3] = "00000002.png,x1,dog";
    spit(csv_path, join(ls));
    CHECK_THROWS_WITH_AS(open_store(path),
                         has(csv + "' line 4: label 'x1' of '00000002.png' is not "
                                           "an integer"),
                         DataError);
  }
  SUBCASE("label outside the classes") {
    auto ls = lines;
    ls[2] = "00000001.png,3,dog";
    spit(csv_path, join(ls));
    CHECK_THROWS_WITH_AS(open_store(path), doctest::Contains("line 3: label 3"), DataError);
  }
  SUBCASE("class disagrees with label") {
    auto ls = lines;
    auto comma = ls[5].rfind(',');
    ls[5] = ls[5].substr(0, comma) + ",horse";
    spit(csv_path, join(ls));
    CHECK_THROWS_WITH_AS(open_store(path), doctest::Contains("line 6: class 'horse'"), DataError);
  }
  SUBCASE("bad header") {
    auto ls = lines;
    ls[0] = "file,label";
    spit(csv_path, join(ls));
    CHECK_THROWS_WITH_AS(open_store(path), has(csv + "' line 1: header"), DataError);
  }
  SUBCASE("a label changed to another valid class fails the record checksum") {
    auto ls = lines;
    // Rewrite row 0 with a different valid label and matching class name.
    auto reader = open_store(path);
    std::int64_t label = 0;
    reader->read_one(0, &label);
    const std::int64_t other = (label + 1) % 3;
    const char* names[] = {"cat", "dog", "bird"};
    ls[1] = "00000000.png," + std::to_string(other) + "," + names[other];
    spit(csv_path, join(ls));
    CHECK_THROWS_WITH_AS(open_store(path)->read_one(0), doctest::Contains("checksum"), DataError);
  }
  SUBCASE("missing labels.csv") {
    fs::remove(csv_path);
    CHECK_THROWS_WITH_AS(open_store(path), doctest::Contains("labels.csv"), IoError);
  }
  SUBCASE("the good file still opens") {
    CHECK(open_store(path)->size() == 6);
  }
}

TEST_CASE("png folder: manifest.json missing, corrupt or for another format") {
  test::TempDir dir;
  auto path = make_store(dir);
  const auto manifest = slurp(path / "manifest.json");
  SUBCASE("missing") {
    fs::remove(path / "manifest.json");
    CHECK_THROWS_WITH_AS(detail::open_png_folder(path, {}),
                         doctest::Contains("manifest.json is missing"), DataError);
    CHECK_THROWS_AS(open_store(path), DataError);
  }
  SUBCASE("not JSON") {
    spit(path / "manifest.json", manifest.substr(0, manifest.size() / 2));
    CHECK_THROWS_WITH_AS(open_store(path), doctest::Contains("manifest.json"), DataError);
  }
  SUBCASE("another format") {
    auto m = Manifest::from_json(manifest, "m");
    m.format = Format::Lmdb;
    spit(path / "manifest.json", m.to_json());
    CHECK_THROWS_WITH_AS(open_store(path), doctest::Contains("expected 'png'"), DataError);
  }
  SUBCASE("store directory missing") {
    CHECK_THROWS_AS(detail::open_png_folder(dir / "nope.png", {}), IoError);
  }
}

TEST_CASE("png folder: output that cannot be written, or already exists") {
  test::TempDir dir;
  auto images = fixtures::make_images(2, {3, 3, 3}, 2, 1);
  spit(dir / "plain-file", "x");
  CHECK_THROWS_WITH_AS(store_many(Format::PngFolder, dir / "plain-file" / "train.png", images),
                       doctest::Contains("plain-file"), IoError);

  auto path = make_store(dir);
  const auto before = slurp(path / "labels.csv");
  CHECK_THROWS_WITH_AS(store_many(Format::PngFolder, path, images),
                       doctest::Contains("already exists"), IoError);
  CHECK(slurp(path / "labels.csv") == before);

  WriterOptions overwrite;
  overwrite.overwrite = true;
  store_many(Format::PngFolder, path, images, {}, overwrite);
  CHECK(read_all(*open_store(path)).pixels == images.pixels);
  CHECK(test::list_dir(dir.path()) == std::vector<std::string>{"plain-file", "train.png"});
}

TEST_CASE("png folder: a writer destroyed without commit leaves nothing behind") {
  test::TempDir dir;
  auto images = fixtures::make_images(10, {4, 4, 3}, 2, 1);
  StoreSpec spec;
  spec.split = "train";
  spec.count = 20;
  spec.shape = images.shape;
  {
    auto writer = create_store(Format::PngFolder, dir / "train.png", spec);
    writer->write(images);
    CHECK(test::list_dir(dir.path()).size() == 1);  // the hidden staging directory
    CHECK_THROWS_WITH_AS(writer->commit(), doctest::Contains("10 records written, 20 announced"),
                         DataError);
  }
  CHECK(test::list_dir(dir.path()).empty());
}

TEST_CASE("BackgroundFlusher flushes once per period of bytes written and reports failures") {
  test::TempDir dir;
  detail::Fd dir_fd(::open(dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  REQUIRE(dir_fd.get() >= 0);
  SUBCASE("a valid directory: every due flush succeeds") {
    detail::BackgroundFlusher flusher(dir_fd.get(), dir.path(), 4096);
    for (int i = 0; i < 50; ++i) {
      detail::write_file(dir / ("f" + std::to_string(i)), std::string(1000, 'x'), false);
      flusher.note_written(1000);
    }
    CHECK_NOTHROW(flusher.finish());
  }
  // A descriptor that is not open makes syncfs() fail, which shows whether a flush ran.
  SUBCASE("less than a period written: no flush runs") {
    detail::BackgroundFlusher flusher(-1, dir.path(), 4096);
    flusher.note_written(4095);
    CHECK_NOTHROW(flusher.finish());
  }
  SUBCASE("a period written: the flush runs, and its failure names the directory") {
    detail::BackgroundFlusher flusher(-1, dir.path(), 4096);
    flusher.note_written(4096);
    const std::string expected = "cannot flush '" + dir.path().string() + "'";
    CHECK_THROWS_WITH_AS(flusher.finish(), doctest::Contains(expected.c_str()), IoError);
  }
  SUBCASE("destroyed without finish(): stops without throwing") {
    detail::BackgroundFlusher flusher(-1, dir.path(), 1);
    flusher.note_written(10);
  }
}
