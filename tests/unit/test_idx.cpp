// MNIST / Fashion-MNIST IDX source: fixtures round-trip bit-exact (plain and gzip), the real
// Fashion-MNIST streams with checksums computed independently in Python, and every kind of bad
// input is refused with a DataError naming the file and record.
#include <doctest/doctest.h>
#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <fstream>

#include "detail/fs_util.hpp"
#include "fixtures.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"
#include "ingest/sources.hpp"
#include "test_support.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

namespace {

using test::read_split;

void put_be32(std::vector<std::uint8_t>& out, std::uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<std::uint8_t>(v >> shift));
}

std::vector<std::uint8_t> header(std::initializer_list<std::uint32_t> words) {
  std::vector<std::uint8_t> out;
  for (auto w : words) put_be32(out, w);
  return out;
}

std::vector<std::uint8_t> concat(std::vector<std::uint8_t> a, const std::vector<std::uint8_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

void write_bytes(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
  detail::write_file(path, bytes.data(), bytes.size(), false);
}

void write_gz(const fs::path& path, const std::vector<std::uint8_t>& bytes) {
  gzFile f = gzopen(path.c_str(), "wb6");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, bytes.data(), static_cast<unsigned>(bytes.size())) ==
          static_cast<int>(bytes.size()));
  REQUIRE(gzclose(f) == Z_OK);
}

std::vector<std::uint8_t> read_bytes(const fs::path& path) { return detail::read_file(path); }

// Valid images + labels content for n records of rows x cols.
std::vector<std::uint8_t> images_file(std::uint32_t n, std::uint32_t rows, std::uint32_t cols) {
  std::vector<std::uint8_t> pixels(std::size_t(n) * rows * cols);
  for (std::size_t i = 0; i < pixels.size(); ++i) pixels[i] = static_cast<std::uint8_t>(i * 7);
  return concat(header({0x803, n, rows, cols}), pixels);
}
std::vector<std::uint8_t> labels_file(std::uint32_t n) {
  std::vector<std::uint8_t> labels(n);
  for (std::uint32_t i = 0; i < n; ++i) labels[i] = static_cast<std::uint8_t>(i % 10);
  return concat(header({0x801, n}), labels);
}

// Streams every split to the end.
void drain(const fs::path& path) {
  auto source = detail::open_idx(path);
  for (const auto& split : source->splits()) read_split(*source, split.name, 4);
}

}  // namespace

TEST_CASE("IDX fixture writer emits the exact IDX layout") {
  test::TempDir dir;
  auto images = fixtures::make_images(3, {2, 3, 1}, 10, 5);
  fixtures::write_idx(dir.path(), "train", images, false);
  auto img = read_bytes(dir / "train-images-idx3-ubyte");
  auto lab = read_bytes(dir / "train-labels-idx1-ubyte");
  auto expected_img = concat(header({0x803, 3, 2, 3}), images.pixels);
  std::vector<std::uint8_t> label_bytes(images.labels.begin(), images.labels.end());
  CHECK(img == expected_img);
  CHECK(lab == concat(header({0x801, 3}), label_bytes));

  fixtures::write_idx(dir.path(), "t10k", images, true);
  auto gz = read_bytes(dir / "t10k-images-idx3-ubyte.gz");
  REQUIRE(gz.size() > 2);
  CHECK(gz[0] == 0x1f);
  CHECK(gz[1] == 0x8b);
}

TEST_CASE("IDX round-trips bit-exact, plain and gzip, any chunking") {
  for (bool gz : {false, true}) {
    CAPTURE(gz);
    test::TempDir dir;
    auto train = fixtures::make_images(37, {28, 28, 1}, 10, 11);
    auto test = fixtures::make_images(9, {28, 28, 1}, 10, 12);
    fixtures::write_idx(dir.path(), "train", train, gz);
    fixtures::write_idx(dir.path(), "t10k", test, gz);

    auto source = detail::open_idx(dir.path());
    CHECK(source->description() == "MNIST IDX " + detail::quote(dir.path()));
    auto splits = source->splits();
    REQUIRE(splits.size() == 2);
    CHECK(splits[0].name == "train");
    CHECK(splits[0].count == 37);
    CHECK(splits[0].shape == Shape{28, 28, 1});
    CHECK(splits[1].name == "test");
    CHECK(splits[1].count == 9);
    CHECK(splits[0].class_names ==
          std::vector<std::string>{"0", "1", "2", "3", "4", "5", "6", "7", "8", "9"});

    for (std::size_t chunk : {1, 5, 37, 1000}) {
      CAPTURE(chunk);
      auto got = read_split(*source, "train", chunk);
      CHECK(got.shape == train.shape);
      CHECK(got.pixels == train.pixels);
      CHECK(got.labels == train.labels);
    }
    auto got = read_split(*source, "test", 4);
    CHECK(got.pixels == test.pixels);
    CHECK(got.labels == test.labels);

    // A single images file opens as its own split, labels found beside it; so does open_source.
    const std::string ext = gz ? ".gz" : "";
    auto single = detail::open_idx(dir / ("t10k-images-idx3-ubyte" + ext));
    REQUIRE(single->splits().size() == 1);
    CHECK(single->splits()[0].name == "test");
    CHECK(read_split(*single, "test", 3).pixels == test.pixels);
    auto via_spec = open_source((dir / ("train-images-idx3-ubyte" + ext)).string());
    CHECK(read_split(*via_spec, "train", 8).labels == train.labels);
    CHECK_THROWS_WITH_AS(source->open("valid"), doctest::Contains("no split 'valid'"),
                         UsageError);
  }
}

TEST_CASE("IDX 4-dimensional files (0x804) carry channels, HWC") {
  test::TempDir dir;
  auto images = fixtures::make_images(6, {5, 4, 3}, 10, 3);
  fixtures::write_idx(dir / "fashion-colour", "train", images, true);
  auto source = detail::open_idx(dir / "fashion-colour");
  CHECK(source->description().rfind("Fashion-MNIST IDX", 0) == 0);
  auto split = source->splits().at(0);
  CHECK(split.shape == Shape{5, 4, 3});
  CHECK(split.class_names.at(0) == "T-shirt/top");
  CHECK(split.class_names.at(9) == "Ankle boot");
  auto got = read_split(*source, "train", 4);
  CHECK(got.pixels == images.pixels);
  CHECK(got.labels == images.labels);
}

TEST_CASE("real Fashion-MNIST streams with the checksums Python computes") {
  const fs::path dir = "/usr/share/datasets/fashion-mnist";
  if (!fs::exists(dir / "train-images-idx3-ubyte.gz")) {
    MESSAGE("Fashion-MNIST not installed at " << dir << "; skipped");
    return;
  }
  auto source = open_source(dir.string());
  CHECK(source->description() == "Fashion-MNIST IDX '/usr/share/datasets/fashion-mnist'");
  auto splits = source->splits();
  REQUIRE(splits.size() == 2);
  CHECK(splits[0].name == "train");
  CHECK(splits[0].count == 60000);
  CHECK(splits[1].name == "test");
  CHECK(splits[1].count == 10000);
  CHECK(splits[0].shape == Shape{28, 28, 1});
  CHECK(splits[0].class_names ==
        std::vector<std::string>{"T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                                 "Shirt", "Sneaker", "Bag", "Ankle boot"});

  // Reference values from /usr/bin/python3 with gzip + struct on the raw files:
  //   per record: sum of pixels and sum of (i+1)*pixel[i]; plus all pixels and label counts.
  struct Expect {
    std::string split;
    std::uint64_t first_sum, first_weighted, last_sum, last_weighted, total;
    std::int64_t first_label, last_label, per_class;
  };
  const Expect expects[] = {
      {"train", 76247, 35954273, 16684, 7678154, 3431114169ull, 9, 5, 6000},
      {"test", 33456, 16008570, 24390, 10911940, 573469082ull, 9, 5, 1000},
  };
  auto sums = [](const std::uint8_t* p, std::size_t n) {
    std::uint64_t s = 0, w = 0;
    for (std::size_t i = 0; i < n; ++i) {
      s += p[i];
      w += (i + 1) * p[i];
    }
    return std::make_pair(s, w);
  };
  for (const auto& e : expects) {
    CAPTURE(e.split);
    auto stream = source->open(e.split);
    ImageBatch batch;
    std::uint64_t seen = 0, total = 0;
    std::vector<std::int64_t> per_class(10);
    std::pair<std::uint64_t, std::uint64_t> first{}, last{};
    std::int64_t first_label = -1, last_label = -1;
    while (stream->next(batch, 8192)) {
      if (seen == 0) {
        first = sums(batch.image(0), 784);
        first_label = batch.labels[0];
      }
      last = sums(batch.image(batch.size() - 1), 784);
      last_label = batch.labels.back();
      for (auto p : batch.pixels) total += p;
      for (auto l : batch.labels) per_class.at(static_cast<std::size_t>(l))++;
      seen += batch.size();
    }
    CHECK(first.first == e.first_sum);
    CHECK(first.second == e.first_weighted);
    CHECK(first_label == e.first_label);
    CHECK(last.first == e.last_sum);
    CHECK(last.second == e.last_weighted);
    CHECK(last_label == e.last_label);
    CHECK(total == e.total);
    CHECK(per_class == std::vector<std::int64_t>(10, e.per_class));
  }
}

TEST_CASE("IDX refuses bad headers at open, naming the file") {
  test::TempDir dir;
  const auto img = dir / "train-images-idx3-ubyte";
  const auto lab = dir / "train-labels-idx1-ubyte";

  SUBCASE("wrong images magic") {
    auto bytes = images_file(2, 3, 3);
    bytes[3] = 0x02;
    write_bytes(img, bytes);
    write_bytes(lab, labels_file(2));
    CHECK_THROWS_WITH_AS(detail::open_idx(dir.path()),
                         doctest::Contains("train-images-idx3-ubyte' is not an IDX images file: "
                                           "magic 0x00000802"),
                         DataError);
  }
  SUBCASE("wrong labels magic") {
    write_bytes(img, images_file(2, 3, 3));
    write_bytes(lab, images_file(2, 3, 3));
    CHECK_THROWS_WITH_AS(detail::open_idx(dir.path()),
                         doctest::Contains("train-labels-idx1-ubyte' is not an IDX labels file"),
                         DataError);
  }
  SUBCASE("counts disagree") {
    write_bytes(img, images_file(5, 3, 3));
    write_bytes(lab, labels_file(4));
    CHECK_THROWS_WITH_AS(detail::open_idx(dir.path()),
                         doctest::Contains("holds 5 images but"), DataError);
    CHECK_THROWS_WITH_AS(detail::open_idx(dir.path()), doctest::Contains("holds 4 labels"),
                         DataError);
  }
  SUBCASE("absurd dimensions are refused before any allocation") {
    write_bytes(lab, labels_file(1));
    write_bytes(img, header({0x803, 1, 70000, 28}));
    CHECK_THROWS_WITH_AS(detail::open_idx(img),
                         doctest::Contains("declares image dimensions 70000x28x1: refused"),
                         DataError);
    write_bytes(img, header({0x804, 1, 65536, 65536, 4}));
    CHECK_THROWS_WITH_AS(detail::open_idx(img), doctest::Contains("65536x65536x4: refused"),
                         DataError);
    write_bytes(img, header({0x804, 1, 8, 8, 7}));
    CHECK_THROWS_WITH_AS(detail::open_idx(img), doctest::Contains("8x8x7: refused"), DataError);
    write_bytes(img, header({0x803, 0xffffffffu, 28, 28}));
    CHECK_THROWS_WITH_AS(detail::open_idx(img),
                         doctest::Contains("declares 4294967295 records: refused"), DataError);
  }
  SUBCASE("header cut short") {
    write_bytes(img, {0, 0, 8, 3, 0, 0});
    write_bytes(lab, labels_file(1));
    CHECK_THROWS_WITH_AS(detail::open_idx(img),
                         doctest::Contains("train-images-idx3-ubyte' is truncated"), DataError);
  }
  SUBCASE("missing labels file") {
    write_bytes(img, images_file(1, 2, 2));
    CHECK_THROWS_WITH_AS(detail::open_idx(img), doctest::Contains("has no labels file beside it"),
                         DataError);
  }
  SUBCASE("name that is not an IDX images file") {
    write_bytes(dir / "data.bin", images_file(1, 2, 2));
    CHECK_THROWS_WITH_AS(detail::open_idx(dir / "data.bin"),
                         doctest::Contains("is not named like an IDX images file"), DataError);
  }
}

TEST_CASE("IDX plain files: length checked against the header at open") {
  test::TempDir dir;
  const auto img = dir / "train-images-idx3-ubyte";
  const auto lab = dir / "train-labels-idx1-ubyte";
  write_bytes(lab, labels_file(10));

  auto bytes = images_file(10, 4, 4);
  bytes.resize(bytes.size() - 16 * 3 - 5);  // 6 whole records and 11 bytes of the 7th
  write_bytes(img, bytes);
  CHECK_THROWS_WITH_AS(detail::open_idx(dir.path()),
                       doctest::Contains("train-images-idx3-ubyte' is truncated"), DataError);
  CHECK_THROWS_WITH_AS(detail::open_idx(dir.path()),
                       doctest::Contains("data runs out at record 6"), DataError);

  bytes = images_file(10, 4, 4);
  bytes.push_back(0);
  bytes.push_back(0);
  write_bytes(img, bytes);
  CHECK_THROWS_WITH_AS(detail::open_idx(dir.path()),
                       doctest::Contains("train-images-idx3-ubyte' has 2 trailing bytes"),
                       DataError);

  write_bytes(img, images_file(10, 4, 4));
  auto labels = labels_file(10);
  labels.pop_back();
  write_bytes(lab, labels);
  CHECK_THROWS_WITH_AS(detail::open_idx(dir.path()),
                       doctest::Contains("train-labels-idx1-ubyte' is truncated"), DataError);
}

TEST_CASE("IDX gzip files: short, long, cut and corrupt streams are caught while streaming") {
  test::TempDir dir;
  const auto img = dir / "train-images-idx3-ubyte.gz";
  const auto lab = dir / "train-labels-idx1-ubyte.gz";
  write_gz(lab, labels_file(10));

  SUBCASE("complete stream holding fewer records than declared") {
    auto bytes = images_file(10, 4, 4);
    bytes.resize(bytes.size() - 16 * 2 - 9);  // 7 whole records and 7 bytes of the 8th
    write_gz(img, bytes);
    auto source = detail::open_idx(dir.path());  // headers are fine
    CHECK_THROWS_WITH_AS(read_split(*source, "train", 3),
                         doctest::Contains("train-images-idx3-ubyte.gz' ends early: data runs out "
                                           "at record 7"),
                         DataError);
  }
  SUBCASE("extra bytes after the declared records") {
    auto bytes = images_file(10, 4, 4);
    bytes.insert(bytes.end(), 300, 0x55);
    write_gz(img, bytes);
    CHECK_THROWS_WITH_AS(drain(dir.path()),
                         doctest::Contains("has 300 trailing bytes after the last record 9"),
                         DataError);
  }
  SUBCASE("file cut mid-stream") {
    write_gz(img, images_file(10, 4, 4));
    auto gz = read_bytes(img);
    gz.resize(gz.size() - 12);
    write_bytes(img, gz);
    CHECK_THROWS_WITH_AS(drain(dir.path()), doctest::Contains("gzip stream truncated"),
                         DataError);
    CHECK_THROWS_WITH_AS(drain(dir.path()), doctest::Contains("train-images-idx3-ubyte.gz"),
                         DataError);
  }
  SUBCASE("CRC mismatch") {
    write_gz(img, images_file(10, 4, 4));
    auto gz = read_bytes(img);
    gz[gz.size() - 8] ^= 0xff;  // the trailer's CRC-32
    write_bytes(img, gz);
    CHECK_THROWS_WITH_AS(drain(dir.path()), doctest::Contains("incorrect data check"), DataError);
    CHECK_THROWS_WITH_AS(drain(dir.path()),
                         doctest::Contains(("corrupt gzip stream in '" + img.string()).c_str()),
                         DataError);
  }
  SUBCASE("garbage deflate data") {
    // Damage the middle of the deflate data, well past the IDX header.
    fixtures::write_idx(dir.path(), "train", fixtures::make_images(200, {8, 8, 1}, 10, 2), true);
    auto gz = read_bytes(img);
    for (std::size_t i = gz.size() / 2; i < gz.size() / 2 + 40; ++i) gz[i] ^= 0x5a;
    write_bytes(img, gz);
    CHECK_THROWS_WITH_AS(drain(dir.path()), doctest::Contains("corrupt gzip stream in"),
                         DataError);
  }
  SUBCASE("invalid deflate codes carry zlib's message") {
    auto images = fixtures::make_images(200, {8, 8, 1}, 10, 2);
    for (std::size_t i = 0; i < images.pixels.size(); ++i) {
      images.pixels[i] = static_cast<std::uint8_t>(i * 7 + i / 97);  // compressible
    }
    fixtures::write_idx(dir.path(), "train", images, true);
    auto gz = read_bytes(img);
    for (std::size_t i = gz.size() / 2; i < gz.size() / 2 + 20; ++i) gz[i] ^= 0x5a;
    write_bytes(img, gz);
    CHECK_THROWS_WITH_AS(drain(dir.path()),
                         doctest::Contains("uncompressed bytes: invalid distance too far back"),
                         DataError);
  }
  SUBCASE("non-gzip bytes after the stream") {
    write_gz(img, images_file(10, 4, 4));
    auto gz = read_bytes(img);
    gz.push_back('x');
    gz.push_back('y');
    write_bytes(img, gz);
    CHECK_THROWS_WITH_AS(drain(dir.path()),
                         doctest::Contains("non-gzip bytes follow the compressed stream"),
                         DataError);
  }
}

TEST_CASE("IDX concatenated gzip members read as one stream") {
  test::TempDir dir;
  auto bytes = images_file(10, 4, 4);
  const auto a = dir / "a.gz";
  const auto b = dir / "b.gz";
  write_gz(a, std::vector<std::uint8_t>(bytes.begin(), bytes.begin() + 50));
  write_gz(b, std::vector<std::uint8_t>(bytes.begin() + 50, bytes.end()));
  write_bytes(dir / "train-images-idx3-ubyte.gz", concat(read_bytes(a), read_bytes(b)));
  write_gz(dir / "train-labels-idx1-ubyte.gz", labels_file(10));
  auto source = detail::open_idx(dir.path());
  auto got = read_split(*source, "train", 3);
  CHECK(got.pixels == std::vector<std::uint8_t>(bytes.begin() + 16, bytes.end()));
}

TEST_CASE("IDX label out of range names the labels file and record") {
  for (bool gz : {false, true}) {
    CAPTURE(gz);
    test::TempDir dir;
    auto labels = labels_file(10);
    labels[8 + 3] = 12;
    const std::string ext = gz ? ".gz" : "";
    if (gz) {
      write_gz(dir / "t10k-images-idx3-ubyte.gz", images_file(10, 2, 2));
      write_gz(dir / "t10k-labels-idx1-ubyte.gz", labels);
    } else {
      write_bytes(dir / "t10k-images-idx3-ubyte", images_file(10, 2, 2));
      write_bytes(dir / "t10k-labels-idx1-ubyte", labels);
    }
    CHECK_THROWS_WITH_AS(drain(dir.path()),
                         doctest::Contains(("bad label in '" +
                                            (dir / ("t10k-labels-idx1-ubyte" + ext)).string() +
                                            "' record 3: 12, expected 0..9")
                                               .c_str()),
                         DataError);
  }
}
