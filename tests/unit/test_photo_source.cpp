// Image folder and list-file sources (src/ingest/photo_source.cpp), on the real-photo fixtures
// of tests/fixtures/make_photo_fixtures.py. Expected values come from the scanner and the
// codecs (tested on their own), never written in here.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "codecs/image_codec.hpp"
#include "codecs/resample.hpp"
#include "detail/fs_util.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"
#include "ingest/image_files.hpp"
#include "test_support.hpp"

using namespace imgstore;
using namespace imgstore::detail;
namespace fs = std::filesystem;
using imgstore::test::data_error;

namespace {

// The fixtures, generated once per process: photos/ (--size small) and bad/ (--bad).
const fs::path& fixture_dir() {
  static test::TempDir dir;
  static const bool made = [] {
    const std::string cmd = std::string("/usr/bin/python3 '") + IMGSTORE_TEST_SOURCE_DIR +
                            "/tests/fixtures/make_photo_fixtures.py' --size small --out '" +
                            (dir / "photos").string() + "' --bad '" + (dir / "bad").string() +
                            "' >/dev/null";
    return std::system(cmd.c_str()) == 0;
  }();
  // Not a skip: the generator needs Debian's python3-pil, -numpy and -skimage.
  REQUIRE_MESSAGE(made, "make_photo_fixtures.py failed (needs python3-pil/numpy/skimage)");
  return dir.path();
}
fs::path photos() { return fixture_dir() / "photos"; }
fs::path bad_dir() { return fixture_dir() / "bad"; }

nlohmann::json read_json(const fs::path& path) {
  std::ifstream in(path);
  return nlohmann::json::parse(in);
}

struct Rec {
  Shape shape;
  std::int64_t label = 0;
  std::vector<std::uint8_t> pixels, payload;
};

// Every record of a split, streamed in batches of `batch`.
std::vector<Rec> read_split(const Source& source, const std::string& split, std::size_t batch) {
  std::vector<Rec> out;
  auto stream = source.open(split);
  ImageBatch b;
  while (stream->next(b, batch)) {
    CHECK(b.size() <= batch);
    if (b.variable_size()) {
      REQUIRE(b.shapes.size() == b.size());
      if (!b.pixels.empty()) {
        REQUIRE(b.offsets.size() == b.size() + 1);
        CHECK(b.offsets.front() == 0);
        CHECK(b.offsets.back() == b.pixels.size());
      }
    }
    if (b.payload_encoding) {
      CHECK(*b.payload_encoding == Encoding::Jpeg);
      REQUIRE(b.payload_offsets.size() == b.size() + 1);
      CHECK(b.payload_offsets.back() == b.payload.size());
    }
    for (std::size_t i = 0; i < b.size(); ++i) {
      Rec r;
      r.shape = b.image_shape(i);
      r.label = b.labels[i];
      if (!b.pixels.empty()) {
        if (b.variable_size()) CHECK(b.offsets[i + 1] - b.offsets[i] == r.shape.bytes());
        r.pixels.assign(b.image(i), b.image(i) + r.shape.bytes());
      }
      if (b.payload_encoding) {
        r.payload.assign(b.payload.begin() + b.payload_offsets[i],
                         b.payload.begin() + b.payload_offsets[i + 1]);
      }
      out.push_back(std::move(r));
    }
  }
  return out;
}

DecodedImage decode_file(const fs::path& path, std::uint32_t channels) {
  const auto bytes = read_file(path);
  DecodedImage img;
  decode_image(bytes.data(), bytes.size(), channels, path.string(), img);
  return img;
}

std::vector<std::uint8_t> resized(const DecodedImage& img, std::uint32_t w, std::uint32_t h) {
  const Shape& s = img.shape;
  std::vector<std::uint8_t> out(std::size_t{w} * h * s.channels);
  resize(img.pixels.data(), s.width, s.height, s.channels,
         ResizeBox{0, 0, float(s.width), float(s.height)}, w, h, out.data());
  return out;
}

// Opens `spec`, asks for its splits and reads them all.
void read_everything(const std::string& spec, const SourceOptions& options = {}) {
  auto source = open_source(spec, options);
  for (const auto& s : source->splits()) read_split(*source, s.name, 16);
}

}  // namespace

TEST_CASE("photo source: an image folder with split folders gives the scan's splits, classes "
          "and labels, variable-size records equal to decode_image's") {
  const auto index = read_json(photos() / "fixture_index.json");
  const ImageFileScan scan = scan_image_folder(photos());
  auto source = open_source(photos().string());
  CHECK(source->description().find("image folder") != std::string::npos);
  const auto splits = source->splits();
  REQUIRE(splits.size() == scan.splits.size());
  for (std::size_t s = 0; s < splits.size(); ++s) {
    const ImageSplit& split = scan.splits[s];
    CAPTURE(split.name);
    CHECK(splits[s].name == split.name);
    std::uint64_t expected = 0;
    for (const auto& [cls, n] : index["counts"][split.name].items()) expected += n.get<std::uint64_t>();
    CHECK(splits[s].count == expected);
    CHECK(splits[s].count == split.files.size());
    CHECK(splits[s].variable_size);
    CHECK(splits[s].shape == Shape{0, 0, 3});
    CHECK(splits[s].class_names == index["classes"].get<std::vector<std::string>>());
    const auto recs = read_split(*source, split.name, 7);
    REQUIRE(recs.size() == split.files.size());
    for (std::size_t i = 0; i < recs.size(); ++i) {
      const fs::path file = split.base / std::string(split.files.path(i));
      CAPTURE(file);
      CHECK(recs[i].label == split.files.label(i));
      CHECK(recs[i].payload.empty());
      const DecodedImage img = decode_file(file, 3);
      CHECK(recs[i].shape == img.shape);
      CHECK(recs[i].pixels == img.pixels);
    }
  }
  // Non-image entries are counted per reason, as the scanner counted them.
  std::uint64_t ignored = 0;
  for (const auto& [reason, n] : source->ignored_entries()) ignored += n;
  std::uint64_t expected_ignored = 0;
  for (const auto& [reason, n] : index["skipped"].items()) expected_ignored += n.get<std::uint64_t>();
  CHECK(ignored == expected_ignored);
  CHECK(source->skipped_inputs().empty());
}

TEST_CASE("photo source: the same records whatever the batch size and thread count") {
  SourceOptions one;
  one.threads = 1;
  auto a = open_source(photos().string(), one);
  auto b = open_source(photos().string());
  const auto ra = read_split(*a, "val", 1), rb = read_split(*b, "val", 64);
  REQUIRE(ra.size() == rb.size());
  for (std::size_t i = 0; i < ra.size(); ++i) {
    CHECK(ra[i].shape == rb[i].shape);
    CHECK(ra[i].label == rb[i].label);
    CHECK(ra[i].pixels == rb[i].pixels);
  }
  // Pass-through reads files straight into the batch (re-packing chunks that mix in encoded
  // records): one record per batch on one thread must give the same payloads as 64 at once.
  one.need_pixels = false;
  SourceOptions all_threads;
  all_threads.need_pixels = false;
  auto c = open_source(photos().string(), one);
  auto d = open_source(photos().string(), all_threads);
  for (const std::string split : {"train", "val"}) {
    CAPTURE(split);
    const auto rc = read_split(*c, split, 1), rd = read_split(*d, split, 64);
    REQUIRE(rc.size() == rd.size());
    for (std::size_t i = 0; i < rc.size(); ++i) {
      CHECK(rc[i].shape == rd[i].shape);
      CHECK(rc[i].label == rd[i].label);
      CHECK(rc[i].payload == rd[i].payload);
    }
  }
}

TEST_CASE("photo source: a list file gives its splits in order with the same records") {
  auto list = open_source((photos() / "list.csv").string());
  CHECK(list->description().find("image list") != std::string::npos);
  auto folder = open_source(photos().string());
  const ImageFileScan scan = read_image_list(photos() / "list.csv");
  const auto splits = list->splits();
  REQUIRE(splits.size() == scan.splits.size());
  for (std::size_t s = 0; s < splits.size(); ++s) {
    CHECK(splits[s].name == scan.splits[s].name);
    CHECK(splits[s].count == scan.splits[s].files.size());
    CHECK(splits[s].class_names == scan.class_names);
  }
  const ImageSplit& val = scan.splits[1];
  const auto recs = read_split(*list, val.name, 5);
  REQUIRE(recs.size() == val.files.size());
  for (std::size_t i = 0; i < recs.size(); ++i) {
    CHECK(recs[i].label == val.files.label(i));
    CHECK(recs[i].pixels == decode_file(val.base / std::string(val.files.path(i)), 3).pixels);
  }
}

TEST_CASE("photo source: resize gives a fixed-size split of resize()'s pixels") {
  SourceOptions o;
  o.resize = std::make_pair(40u, 56u);
  auto source = open_source(photos().string(), o);
  const auto info = source->splits();
  CHECK_FALSE(info[1].variable_size);
  CHECK(info[1].shape == Shape{40, 56, 3});
  const ImageFileScan scan = scan_image_folder(photos());
  const ImageSplit& val = scan.splits[1];
  auto stream = source->open(val.name);
  ImageBatch b;
  REQUIRE(stream->next(b, 8));
  CHECK_FALSE(b.variable_size());
  CHECK(b.shape == Shape{40, 56, 3});
  for (std::size_t i = 0; i < b.size(); ++i) {
    const auto img = decode_file(val.base / std::string(val.files.path(i)), 3);
    const auto expected = resized(img, 56, 40);
    CHECK(std::equal(expected.begin(), expected.end(), b.image(i)));
  }
}

TEST_CASE("photo source: resize_short and max_side sizes follow torchvision and FFCV") {
  const ImageFileScan scan = scan_image_folder(photos());
  const ImageSplit& train = scan.splits[0];
  SourceOptions s_opt, m_opt;
  s_opt.resize_short = 48;
  m_opt.max_side = 100;
  auto s_src = open_source(photos().string(), s_opt);
  auto m_src = open_source(photos().string(), m_opt);
  const auto s_recs = read_split(*s_src, train.name, 32);
  const auto m_recs = read_split(*m_src, train.name, 32);
  REQUIRE(s_recs.size() == train.files.size());
  REQUIRE(m_recs.size() == train.files.size());
  std::size_t shrunk = 0, kept = 0;
  for (std::size_t i = 0; i < train.files.size(); ++i) {
    const auto img = decode_file(train.base / std::string(train.files.path(i)), 3);
    const std::uint32_t w = img.shape.width, h = img.shape.height;
    const std::uint32_t lo = std::min(w, h), hi = std::max(w, h);
    // torchvision Resize(48): short side 48, long side int(48 * long / short).
    const auto s_long = static_cast<std::uint32_t>(48.0 * hi / lo);
    CHECK(s_recs[i].shape == (w >= h ? Shape{48, s_long, 3} : Shape{s_long, 48, 3}));
    CHECK(s_recs[i].pixels ==
          resized(img, s_recs[i].shape.width, s_recs[i].shape.height));
    if (hi <= 100) {
      CHECK(m_recs[i].pixels == img.pixels);
      ++kept;
    } else {
      const std::uint32_t m_lo = std::max<std::uint32_t>(1, std::uint32_t(std::uint64_t{lo} * 100 / hi));
      CHECK(m_recs[i].shape == (w >= h ? Shape{m_lo, 100, 3} : Shape{100, m_lo, 3}));
      ++shrunk;
    }
  }
  CHECK(shrunk > 0);
  CHECK(kept > 0);
}

TEST_CASE("photo source: channels 1 converts as decode_image to L") {
  SourceOptions o;
  o.channels = 1;
  auto source = open_source(photos().string(), o);
  CHECK(source->splits()[1].shape == Shape{0, 0, 1});
  const ImageFileScan scan = scan_image_folder(photos());
  const ImageSplit& val = scan.splits[1];
  const auto recs = read_split(*source, val.name, 9);
  REQUIRE(recs.size() == val.files.size());
  for (std::size_t i = 0; i < recs.size(); ++i) {
    CHECK(recs[i].shape.channels == 1);
    CHECK(recs[i].pixels == decode_file(val.base / std::string(val.files.path(i)), 1).pixels);
  }
}

TEST_CASE("photo source: without pixels, JPEGs pass through byte for byte, others are encoded") {
  SourceOptions o;
  o.need_pixels = false;
  auto source = open_source(photos().string(), o);
  const ImageFileScan scan = scan_image_folder(photos());
  const ImageSplit& train = scan.splits[0];
  const auto recs = read_split(*source, train.name, 16);
  REQUIRE(recs.size() == train.files.size());
  std::size_t passed = 0, encoded = 0;
  for (std::size_t i = 0; i < recs.size(); ++i) {
    const fs::path file = train.base / std::string(train.files.path(i));
    CAPTURE(file);
    CHECK(recs[i].pixels.empty());
    const auto bytes = read_file(file);
    const auto info = read_image_info(bytes.data(), bytes.size(), file.string());
    const DecodedImage img = decode_file(file, 3);
    CHECK(recs[i].shape == img.shape);
    if (info.kind == ImageKind::Jpeg && can_store_untouched(info, ImageKind::Jpeg, 3)) {
      CHECK(recs[i].payload == bytes);
      ++passed;
    } else {
      REQUIRE(sniff_image(recs[i].payload.data(), recs[i].payload.size()) == ImageKind::Jpeg);
      DecodedImage back;
      decode_image(recs[i].payload.data(), recs[i].payload.size(), 3, "payload", back);
      CHECK(back.shape == img.shape);
      ++encoded;
    }
  }
  CHECK(passed > 0);
  CHECK(encoded > 0);
}

TEST_CASE("photo source: keep_jpeg_payload gives pixels and payloads; resized payloads are "
          "fixed-size JPEGs") {
  const ImageFileScan scan = scan_image_folder(photos());
  const ImageSplit& val = scan.splits[1];
  SourceOptions both;
  both.keep_jpeg_payload = true;
  auto a = open_source(photos().string(), both);
  const auto recs = read_split(*a, val.name, 8);
  REQUIRE(recs.size() == val.files.size());
  for (std::size_t i = 0; i < recs.size(); ++i) {
    const fs::path file = val.base / std::string(val.files.path(i));
    const auto bytes = read_file(file);
    const auto info = read_image_info(bytes.data(), bytes.size(), file.string());
    CHECK(recs[i].pixels == decode_file(file, 3).pixels);
    if (info.kind == ImageKind::Jpeg && can_store_untouched(info, ImageKind::Jpeg, 3)) {
      CHECK(recs[i].payload == bytes);
    } else {
      CHECK(sniff_image(recs[i].payload.data(), recs[i].payload.size()) == ImageKind::Jpeg);
    }
  }
  SourceOptions fixed;
  fixed.need_pixels = false;
  fixed.resize = std::make_pair(24u, 32u);
  auto b = open_source(photos().string(), fixed);
  auto stream = b->open(val.name);
  ImageBatch batch;
  REQUIRE(stream->next(batch, 5));
  CHECK_FALSE(batch.variable_size());
  CHECK(batch.pixels.empty());
  CHECK(batch.shape == Shape{24, 32, 3});
  REQUIRE(batch.payload_offsets.size() == batch.size() + 1);
  for (std::size_t i = 0; i < batch.size(); ++i) {
    DecodedImage back;
    decode_image(batch.payload.data() + batch.payload_offsets[i],
                 batch.payload_offsets[i + 1] - batch.payload_offsets[i], 3, "payload", back);
    CHECK(back.shape == Shape{24, 32, 3});
  }
}

TEST_CASE("photo source: each bad input stops reading with its path; skip_bad lists it") {
  const auto cases = read_json(bad_dir() / "cases.json");
  std::vector<std::string> folder_bad;  // file names the mixed folder must skip
  for (const auto& c : cases) {
    const std::string name = c["name"], bad_path = c["bad_path"];
    if (name == "mixed") continue;
    CAPTURE(name);
    if (name == "unreadable" && ::geteuid() == 0) {
      MESSAGE("unreadable: root reads a mode-000 file; the dangling_symlink case covers it");
      continue;
    }
    const std::string spec = (bad_dir() / std::string(c["source"])).string();
    const std::string msg = data_error([&] { read_everything(spec); });
    CHECK_MESSAGE(msg.find(fs::path(bad_path).filename().string()) != std::string::npos, msg);
    // JPEG pass-through reads headers only, yet a bad file must still stop it.
    SourceOptions passthrough;
    passthrough.need_pixels = false;
    const std::string msg2 = data_error([&] { read_everything(spec, passthrough); });
    CHECK_MESSAGE(msg2.find(fs::path(bad_path).filename().string()) != std::string::npos, msg2);
    if (c["kind"] == "folder") folder_bad.push_back(fs::path(bad_path).filename().string());
  }
  // The mixed folder: the count is exactly the files that decode, every bad one is listed.
  SourceOptions o;
  o.skip_bad = true;
  auto source = open_source((bad_dir() / "mixed").string(), o);
  const ImageFileScan scan = scan_image_folder(bad_dir() / "mixed", ScanOptions{{}, true});
  std::uint64_t good = 0;
  for (std::size_t i = 0; i < scan.splits[0].files.size(); ++i) {
    try {
      decode_file(scan.splits[0].base / std::string(scan.splits[0].files.path(i)), 3);
      ++good;
    } catch (const Error&) {
    }
  }
  const auto splits = source->splits();
  REQUIRE(splits.size() == 1);
  CHECK(good > 0);
  CHECK(splits[0].count == good);
  CHECK(read_split(*source, splits[0].name, 2).size() == good);
  const auto skipped = source->skipped_inputs();
  for (const auto& bad : folder_bad) {
    CAPTURE(bad);
    CHECK(std::any_of(skipped.begin(), skipped.end(), [&](const SkippedInput& s) {
      return s.path.find(bad) != std::string::npos && !s.reason.empty();
    }));
  }
}

TEST_CASE("photo source: other folders are still not a source, and the message says what is") {
  test::TempDir dir;
  test::spit(dir / "notes.txt", "x");
  const std::string msg = data_error([&] { open_source(dir.path().string()); });
  CHECK(msg.find("image folder") != std::string::npos);
  SourceOptions o;
  o.resize = std::make_pair(8u, 8u);
  o.resize_short = 8;
  CHECK_THROWS_AS(open_source(photos().string(), o), UsageError);
}
