// Sharded stores: round trips in every format, shard ranges, reads across shard boundaries,
// the index and shard manifests, bad input (missing, foreign, swapped shards, corrupt index),
// and atomic output.
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <functional>
#include <numeric>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "detail/fs_util.hpp"
#include "formats/formats.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/convert.hpp"
#include "imgstore/error.hpp"
#include "imgstore/manifest.hpp"
#include "imgstore/store.hpp"
#include "test_support.hpp"

using namespace imgstore;
namespace fs = std::filesystem;
using test::TempDir;

namespace {

const Shape kShape{8, 6, 3};
const std::vector<std::string> kClasses{"a", "b", "c", "d", "e"};
const std::vector<Format> kFormats = all_formats();

doctest::Contains has(const std::string& text) { return doctest::Contains(text.c_str()); }

StoreSpec spec_for(const ImageBatch& images, const std::string& split = "train") {
  return test::spec_for(images, kClasses, split);
}

// Writes `images` as a store of `format` in `shards` shards, in batches of `batch` records.
void write_sharded(Format format, const fs::path& path, const ImageBatch& images,
                   std::uint32_t shards, std::size_t batch = 0, bool overwrite = false) {
  WriterOptions options;
  options.shards = shards;
  options.durable = false;
  options.overwrite = overwrite;
  test::write_in_batches(*create_store(format, path, spec_for(images), options), images, batch);
}

std::string store_name(Format format) { return store_file_name("train", format); }

// Parses shards.json as JSON, lets `edit` change it, and writes it back.
void edit_index(const fs::path& store, const std::function<void(nlohmann::json&)>& edit) {
  auto j = nlohmann::json::parse(test::slurp(store / ShardIndex::kFileName));
  edit(j);
  test::spit(store / ShardIndex::kFileName, j.dump(1));
}

// Replaces `store`/`name` by the same-named entry of `donor`.
void transplant(const fs::path& donor, const fs::path& store, const std::string& name) {
  fs::remove_all(store / name);
  fs::copy(donor / name, store / name, fs::copy_options::recursive);
}

// Nothing at all in `dir` (no store, no temporary), or no `dir`.
void check_nothing_left(const fs::path& dir) {
  CHECK((!fs::exists(dir) || test::list_dir(dir).empty()));
}

}  // namespace

TEST_CASE("shard_range splits records into contiguous ranges as equal as possible") {
  for (std::uint64_t n : {1ull, 2ull, 7ull, 50ull, 1000ull, 60000ull}) {
    for (std::uint32_t k : {1u, 2u, 3u, 7u, 64u}) {
      if (k > n) continue;
      CAPTURE(n);
      CAPTURE(k);
      std::uint64_t next = 0, smallest = n, largest = 0;
      for (std::uint32_t i = 0; i < k; ++i) {
        auto [first, count] = shard_range(n, k, i);
        CHECK(first == next);
        next = first + count;
        smallest = std::min(smallest, count);
        largest = std::max(largest, count);
      }
      CHECK(next == n);
      CHECK(largest - smallest <= 1);
      CHECK(smallest == n / k);
    }
  }
  // No overflow at the extremes.
  const std::uint64_t huge = std::uint64_t{1} << 63;
  auto [first, count] = shard_range(huge + 5, ShardIndex::kMaxShards, ShardIndex::kMaxShards - 1);
  CHECK(first + count == huge + 5);
  CHECK_THROWS_AS(shard_range(10, 3, 3), UsageError);
  CHECK_THROWS_AS(shard_range(10, 0, 0), UsageError);
  CHECK(shard_file_name(Format::Lmdb, 2, 4) == "shard-00002-of-00004.lmdb");
  CHECK(shard_file_name(Format::Hdf5, 0, 1) == "shard-00000-of-00001.h5");
  CHECK(shard_file_name(Format::PngFolder, 12, 99999) == "shard-00012-of-99999.png");
}

TEST_CASE("manifests without a shard position still parse; with one it round-trips") {
  Manifest m;
  m.format = Format::Lmdb;
  m.count = 2;
  m.shape = kShape;
  m.checksums = {7, 9};
  ContentDigest d;
  for (auto c : m.checksums) d.add(c);
  m.content_digest = d.value();
  const std::string old_text = m.to_json();
  CHECK(old_text.find("\"shard\"") == std::string::npos);
  CHECK_FALSE(Manifest::from_json(old_text, "old").shard.has_value());

  m.shard = ShardPosition{std::string(32, 'a'), 2, 5, 40};
  auto back = Manifest::from_json(m.to_json(), "new");
  REQUIRE(back.shard.has_value());
  CHECK(*back.shard == *m.shard);

  auto bad = m;
  bad.shard->index = 5;  // not < shards
  CHECK_THROWS_WITH_AS(Manifest::from_json(bad.to_json(), "m.json"),
                       has("not a valid position"), DataError);
  bad = m;
  bad.shard->conversion_id = "xyz";
  CHECK_THROWS_WITH_AS(Manifest::from_json(bad.to_json(), "m.json"), has("conversion_id"),
                       DataError);
  auto j = nlohmann::json::parse(m.to_json());
  j["shard"]["first_record"] = -1;
  CHECK_THROWS_WITH_AS(Manifest::from_json(j.dump(), "m.json"), has("first_record"), DataError);
  j["shard"] = "shard 2";
  CHECK_THROWS_WITH_AS(Manifest::from_json(j.dump(), "m.json"), has("'shard' is not an object"),
                       DataError);
}

TEST_CASE("sharded stores round-trip bit-exact in every format, for 1, 3 and 7 shards") {
  TempDir dir;
  const auto images = fixtures::make_images(50, kShape, 5, 11);
  const auto unsharded_path = dir / "plain.lmdb";
  write_sharded(Format::Lmdb, unsharded_path, images, 1);
  const auto plain = open_store(unsharded_path);
  for (Format format : kFormats) {
    for (std::uint32_t k : {1u, 3u, 7u}) {
      // Batches of 8 straddle shard boundaries; one batch of all records crosses all of them.
      for (std::size_t batch : {std::size_t{8}, std::size_t{0}}) {
        CAPTURE(to_string(format));
        CAPTURE(k);
        CAPTURE(batch);
        const auto sub = dir / fmt::format("{}-{}-{}", to_string(format), k, batch);
        fs::create_directories(sub);
        const auto path = sub / store_name(format);
        write_sharded(format, path, images, k, batch);
        CHECK(test::list_dir(sub) == std::vector<std::string>{store_name(format)});
        CHECK(is_sharded_store(path) == (k > 1));
        CHECK(detect_store_format(path) == format);

        auto reader = open_store(path);
        CHECK(reader->format() == format);
        CHECK(reader->size() == images.size());
        CHECK(reader->shape() == kShape);
        CHECK(reader->manifest().class_names == kClasses);
        CHECK(reader->manifest().split == "train");
        CHECK(reader->manifest().content_digest == plain->manifest().content_digest);
        CHECK(reader->manifest().checksums == plain->manifest().checksums);
        CHECK_FALSE(reader->manifest().shard.has_value());
        const auto all = read_all(*reader);
        CHECK(all.labels == images.labels);
        CHECK(all.pixels == images.pixels);
        CHECK(verify_store(*reader).content_digest == plain->manifest().content_digest);
        compare_stores(*reader, *plain);
        CHECK(reader->bytes_on_disk() == detail::bytes_on_disk(path));

        const auto ranges = reader->shard_ranges();
        REQUIRE(ranges.size() == k);
        for (std::uint32_t i = 0; i < k; ++i) {
          auto [first, count] = shard_range(images.size(), k, i);
          CHECK(ranges[i].first == first);
          CHECK(ranges[i].second == first + count);
        }
        if (k == 1) continue;

        const auto index = read_shard_index(path);
        CHECK(index.format == format);
        CHECK(index.count == images.size());
        CHECK(index.content_digest == plain->manifest().content_digest);
        REQUIRE(index.shards.size() == k);
        std::vector<std::string> expected_files{ShardIndex::kFileName};
        for (std::uint32_t i = 0; i < k; ++i) {
          const auto& e = index.shards[i];
          expected_files.push_back(e.file);
          // Each shard is a complete store of its own, whose manifest names its position.
          auto shard = detail::open_single_store(format, path / e.file, {});
          REQUIRE(shard->manifest().shard.has_value());
          CHECK(shard->manifest().shard->conversion_id == index.conversion_id);
          CHECK(shard->manifest().shard->index == i);
          CHECK(shard->manifest().shard->shards == k);
          CHECK(shard->manifest().shard->first_record == e.first_record);
          CHECK(shard->size() == e.count);
          CHECK(shard->manifest().content_digest == e.content_digest);
          std::vector<std::uint8_t> px(kShape.bytes());
          CHECK(shard->read_one(0, px.data()) == images.labels[e.first_record]);
          CHECK(std::equal(px.begin(), px.end(), images.image(e.first_record)));
        }
        std::sort(expected_files.begin(), expected_files.end());
        CHECK(test::list_dir(path) == expected_files);
      }
    }
  }
}

TEST_CASE("read_many across shard boundaries, shuffled, repeated and from many threads") {
  TempDir dir;
  const auto images = fixtures::make_images(61, kShape, 5, 3);
  const std::size_t bytes = kShape.bytes();
  for (Format format : kFormats) {
    CAPTURE(to_string(format));
    const auto path = dir / store_name(format);
    write_sharded(format, path, images, 7, 5);
    auto reader = open_store(path);

    auto check_read = [&](const std::vector<std::uint64_t>& idx, bool with_labels) {
      std::vector<std::uint8_t> px(idx.size() * bytes, 0xee);
      std::vector<std::int64_t> labels(idx.size(), -1);
      reader->read_many(idx.data(), idx.size(), px.data(), with_labels ? labels.data() : nullptr);
      bool ok = true;
      for (std::size_t i = 0; i < idx.size(); ++i) {
        ok = ok && std::equal(px.begin() + i * bytes, px.begin() + (i + 1) * bytes,
                              images.image(idx[i]));
        if (with_labels) ok = ok && labels[i] == images.labels[idx[i]];
      }
      return ok;
    };

    std::vector<std::uint64_t> all(images.size());
    std::iota(all.begin(), all.end(), 0);
    CHECK(check_read(all, true));  // sequential: each shard's group read in place
    std::mt19937_64 rng(5);
    for (int round = 0; round < 5; ++round) {
      auto shuffled = all;
      std::shuffle(shuffled.begin(), shuffled.end(), rng);
      CHECK(check_read(shuffled, round % 2 == 0));
      shuffled.resize(17);
      CHECK(check_read(shuffled, true));
    }
    // Repeats, and runs that cross a boundary in both directions.
    const auto r = reader->shard_ranges();
    const std::uint64_t b = r[3].first;
    CHECK(check_read({b - 1, b, b - 1, b, b + 1, b - 2, 0, 60, 60, b}, true));
    CHECK(check_read({r[6].first, r[6].first + 1, r[0].first}, true));
    CHECK(check_read({}, true));
    for (std::uint64_t i : {std::uint64_t{0}, b - 1, b, std::uint64_t{60}}) {
      std::int64_t label = -1;
      auto px = reader->read_one(i, &label);
      CHECK(label == images.labels[i]);
      CHECK(std::equal(px.begin(), px.end(), images.image(i)));
    }
    std::vector<std::uint8_t> px(bytes);
    CHECK_THROWS_WITH_AS(reader->read_one(61, px.data()), has("out of range"), UsageError);
    std::vector<std::uint64_t> bad{3, 61};
    std::vector<std::uint8_t> out(2 * bytes);
    CHECK_THROWS_AS(reader->read_many(bad.data(), 2, out.data(), nullptr), UsageError);

    // One reader shared by threads (the datasets do this): every read still lands right.
    std::atomic<int> failures{0};
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        std::mt19937_64 trng(100 + t);
        for (int round = 0; round < 30; ++round) {
          auto idx = all;
          std::shuffle(idx.begin(), idx.end(), trng);
          idx.resize(1 + trng() % idx.size());
          if (!check_read(idx, true)) ++failures;
        }
      });
    }
    for (auto& t : threads) t.join();
    CHECK(failures.load() == 0);
  }
}

TEST_CASE("sharded store: shard count checks, overwrite, and nothing left by a failed write") {
  TempDir dir;
  const auto images = fixtures::make_images(20, kShape, 5, 4);
  for (Format format : kFormats) {
    CAPTURE(to_string(format));
    const auto sub = dir / to_string(format);
    fs::create_directories(sub);
    const auto path = sub / store_name(format);
    WriterOptions options;
    options.durable = false;
    for (std::uint32_t k : {0u, 21u, ShardIndex::kMaxShards + 1}) {
      CAPTURE(k);
      options.shards = k;
      CHECK_THROWS_AS(create_store(format, path, spec_for(images), options), UsageError);
    }
    check_nothing_left(sub);

    // Destroyed before commit, mid-shard and after whole shards were committed inside the
    // staged directory: nothing remains.
    for (std::size_t written : {std::size_t{3}, std::size_t{15}, std::size_t{20}}) {
      CAPTURE(written);
      options.shards = 4;
      {
        auto writer = create_store(format, path, spec_for(images), options);
        ImageBatch part;
        part.resize(kShape, written);
        std::copy_n(images.pixels.begin(), written * kShape.bytes(), part.pixels.begin());
        std::copy_n(images.labels.begin(), written, part.labels.begin());
        writer->write(part);
        CHECK_FALSE(test::list_dir(sub).empty());  // the staged directory exists meanwhile
      }
      check_nothing_left(sub);
    }
    // A bad record midway (label outside the classes) fails the write; nothing remains.
    {
      auto bad = images;
      bad.labels[12] = 99;
      options.shards = 3;
      auto writer = create_store(format, path, spec_for(images), options);
      CHECK_THROWS_WITH_AS(test::write_in_batches(*writer, bad, 4), has("label 99"), DataError);
    }
    check_nothing_left(sub);
    // Committing short fails and leaves nothing.
    {
      auto writer = create_store(format, path, spec_for(images), options);
      CHECK_THROWS_AS(writer->commit(), DataError);
    }
    check_nothing_left(sub);

    // An existing store is kept unless overwrite is asked; then it is replaced whole.
    write_sharded(format, path, images, 3, 7);
    CHECK_THROWS_WITH_AS(write_sharded(format, path, images, 2), has("already exists"), IoError);
    CHECK(open_store(path)->shard_ranges().size() == 3);
    write_sharded(format, path, images, 2, 0, true);
    CHECK(open_store(path)->shard_ranges().size() == 2);
    CHECK(test::list_dir(sub) == std::vector<std::string>{store_name(format)});
    write_sharded(format, path, images, 1, 0, true);  // sharded -> single store
    CHECK_FALSE(is_sharded_store(path));
    CHECK(read_all(*open_store(path)).pixels == images.pixels);
  }
}

TEST_CASE("sharded store: missing, foreign, swapped and inconsistent shards are refused") {
  TempDir dir;
  const auto images = fixtures::make_images(30, kShape, 5, 8);
  const auto other = fixtures::make_images(30, kShape, 5, 9);
  for (Format format : kFormats) {
    CAPTURE(to_string(format));
    const auto name = store_name(format);
    const auto good = dir / ("good-" + to_string(format)) / name;
    const auto twin = dir / ("twin-" + to_string(format)) / name;    // same data, other run
    const auto alien = dir / ("alien-" + to_string(format)) / name;  // other data
    for (auto* p : {&good, &twin, &alien}) fs::create_directories(p->parent_path());
    write_sharded(format, good, images, 3);
    write_sharded(format, twin, images, 3);
    write_sharded(format, alien, other, 3);
    const auto s1 = shard_file_name(format, 1, 3);
    const auto s0 = shard_file_name(format, 0, 3);
    int case_no = 0;
    // A fresh copy of the good store to damage.
    auto fresh = [&] {
      const auto p = dir / fmt::format("case-{}-{}", to_string(format), case_no++) / name;
      fs::create_directories(p.parent_path());
      fs::copy(good, p, fs::copy_options::recursive);
      return p;
    };

    {  // missing shard file
      auto p = fresh();
      fs::remove_all(p / s1);
      CHECK_THROWS_WITH_AS(open_store(p), has("shard file '" + s1 + "'"), IoError);
      CHECK_THROWS_WITH_AS(open_store(p), has("is missing"), IoError);
    }
    {  // shard from another conversion of the same data
      auto p = fresh();
      transplant(twin, p, s1);
      const auto want = read_shard_index(p).conversion_id;
      const auto got = read_shard_index(twin).conversion_id;
      REQUIRE(want != got);
      CHECK_THROWS_WITH_AS(
          open_store(p),
          has("shard '" + s1 + "' comes from another conversion (id " + got + ", expected " +
              want + ")"),
          DataError);
    }
    {  // shard from a conversion of other data
      auto p = fresh();
      transplant(alien, p, s0);
      CHECK_THROWS_WITH_AS(open_store(p), has("comes from another conversion"), DataError);
    }
    {  // index of another conversion over these shards
      auto p = fresh();
      fs::copy_file(twin / ShardIndex::kFileName, p / ShardIndex::kFileName,
                    fs::copy_options::overwrite_existing);
      CHECK_THROWS_WITH_AS(open_store(p), has("comes from another conversion"), DataError);
    }
    {  // two shards swapped
      auto p = fresh();
      fs::rename(p / s0, p / "tmp");
      fs::rename(p / s1, p / s0);
      fs::rename(p / "tmp", p / s1);
      CHECK_THROWS_WITH_AS(open_store(p), has("says it is shard 1 of 3"), DataError);
    }
    {  // a plain store in a shard's place
      auto p = fresh();
      fs::remove_all(p / s1);
      ImageBatch part;
      part.resize(kShape, 10);
      std::copy_n(images.image(10), 10 * kShape.bytes(), part.pixels.begin());
      std::copy_n(images.labels.begin() + 10, 10, part.labels.begin());
      store_many(format, p / s1, part, kClasses);
      CHECK_THROWS_WITH_AS(open_store(p), has("no shard position"), DataError);
    }
    {  // shards.json corrupted
      auto p = fresh();
      const auto text = test::slurp(p / ShardIndex::kFileName);
      test::spit(p / ShardIndex::kFileName, text.substr(0, text.size() / 2));
      CHECK_THROWS_WITH_AS(open_store(p), has("shards.json"), DataError);
      test::spit(p / ShardIndex::kFileName, "");
      CHECK_THROWS_AS(open_store(p), DataError);
      test::spit(p / ShardIndex::kFileName, "[1, 2, 3]");
      CHECK_THROWS_WITH_AS(open_store(p), has("not a JSON object"), DataError);
      test::spit(p / ShardIndex::kFileName, text);
      CHECK(open_store(p)->size() == 30);
      edit_index(p, [](auto& j) { j["shards"][1]["file"] = "../../etc/passwd"; });
      CHECK_THROWS_WITH_AS(open_store(p), has("is named '../../etc/passwd'"), DataError);
      test::spit(p / ShardIndex::kFileName, text);
      edit_index(p, [](auto& j) { j["conversion_id"] = "not hex"; });
      CHECK_THROWS_WITH_AS(open_store(p), has("conversion_id"), DataError);
      test::spit(p / ShardIndex::kFileName, text);
      edit_index(p, [](auto& j) { j["shards"] = nlohmann::json::array(); });
      CHECK_THROWS_WITH_AS(open_store(p), has("lists 0 shards"), DataError);
      test::spit(p / ShardIndex::kFileName, text);
      edit_index(p, [](auto& j) { j["shards"][0]["count"] = -3; });
      CHECK_THROWS_WITH_AS(open_store(p), has("'count'"), DataError);
      test::spit(p / ShardIndex::kFileName, text);
      edit_index(p, [](auto& j) { j["content_digest"] = "0123456789abcdef"; });
      CHECK_THROWS_WITH_AS(open_store(p), has("content_digest"), DataError);
      test::spit(p / ShardIndex::kFileName, text);
      edit_index(p, [](auto& j) { j["height"] = 9; });
      CHECK_THROWS_WITH_AS(open_store(p), has("holds 8x6x3 images"), DataError);
    }
    {  // counts that do not add up or disagree with the shards
      auto p = fresh();
      const auto text = test::slurp(p / ShardIndex::kFileName);
      edit_index(p, [](auto& j) { j["count"] = 31; });
      CHECK_THROWS_WITH_AS(open_store(p), has("the shards hold 30 records, the store says 31"),
                           DataError);
      test::spit(p / ShardIndex::kFileName, text);
      // Still contiguous and summing to 30, but not what the shards hold.
      edit_index(p, [](auto& j) {
        j["shards"][0]["count"] = 9;
        j["shards"][1]["first_record"] = 9;
        j["shards"][1]["count"] = 11;
      });
      CHECK_THROWS_WITH_AS(open_store(p), has("holds 10 records, shards.json says 9"),
                           DataError);
      test::spit(p / ShardIndex::kFileName, text);
      edit_index(p, [](auto& j) { j["shards"][2]["first_record"] = 21; });
      CHECK_THROWS_WITH_AS(open_store(p), has("must follow each other"), DataError);
      test::spit(p / ShardIndex::kFileName, text);
      edit_index(p, [](auto& j) { j["shards"][2]["count"] = 0; });
      CHECK_THROWS_WITH_AS(open_store(p), has("holds 0 records"), DataError);
    }
    {  // a corrupt record inside a shard names the shard and the store
      // PNG only: the formats' own tests cover record corruption.
      auto p = format == Format::PngFolder ? fresh() : fs::path();
      if (p.empty()) continue;
      const auto shard_dir = p / s1;
      fs::copy_file(shard_dir / "00000001.png", shard_dir / "00000000.png",
                    fs::copy_options::overwrite_existing);
      auto reader = open_store(p);
      std::vector<std::uint8_t> px(kShape.bytes() * 2);
      const auto first = reader->shard_ranges()[1].first;
      CHECK_THROWS_WITH_AS(reader->read_one(first, px.data()), has(s1), DataError);
      CHECK_THROWS_WITH_AS(reader->read_one(first, px.data()),
                           has("record " + std::to_string(first) + " of sharded store"), DataError);
      std::vector<std::uint64_t> idx{0, first};
      CHECK_THROWS_WITH_AS(reader->read_many(idx.data(), 2, px.data(), nullptr),
                           has("in sharded store"), DataError);
      CHECK_THROWS_AS(verify_store(*reader), DataError);
    }
  }
}

TEST_CASE("convert_split writes sharded stores in one pass") {
  TempDir dir;
  auto source = open_source("synthetic:n=40,test=9,h=8,w=8,c=1,classes=3,seed=2");
  ConvertOptions options;
  options.batch_records = 6;
  options.writer.durable = false;
  options.writer.shards = 4;
  auto result = convert_split(*source, "train", dir / "out", options);
  REQUIRE(result.formats.size() == 3);
  options.writer.shards = 1;
  convert_split(*source, "train", dir / "plain", options);
  for (const auto& f : result.formats) {
    CAPTURE(to_string(f.format));
    CHECK(f.shards == 4);
    auto reader = open_store(f.path);
    CHECK(reader->shard_ranges().size() == 4);
    compare_stores(*reader, *open_store(dir / "plain" / f.path.filename()));
    CHECK(f.bytes_on_disk == reader->bytes_on_disk());
  }
  // More shards than records: refused before anything is written.
  options.writer.shards = 10;
  CHECK_THROWS_AS(convert_split(*source, "test", dir / "few", options), UsageError);
  check_nothing_left(dir / "few");
}
