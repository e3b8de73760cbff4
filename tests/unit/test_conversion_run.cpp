// ConversionRun: several splits into one directory, all or none (issue 12).
#include <doctest/doctest.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "imgstore/convert.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"
#include "imgstore/store.hpp"
#include "test_support.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

namespace {

constexpr const char* kSource = "synthetic:n=30,test=8,h=8,w=8,c=1,classes=3,seed=4";
constexpr const char* kOtherSource = "synthetic:n=11,test=5,h=8,w=8,c=1,classes=3,seed=9";

ConvertOptions lmdb_options(bool overwrite) {
  ConvertOptions o;
  o.formats = {Format::Lmdb};
  o.batch_records = 7;
  o.writer.durable = false;
  o.writer.overwrite = overwrite;
  return o;
}

// The one hidden staging directory of `target` in its parent, which must exist.
fs::path staging_dir_of(const fs::path& target) {
  const std::string prefix = "." + target.filename().string() + ".tmp-";
  for (const auto& e : fs::directory_iterator(target.parent_path())) {
    if (e.path().filename().string().rfind(prefix, 0) == 0) return e.path();
  }
  FAIL("no staging directory for " << target);
  return {};
}

}  // namespace

TEST_CASE("a conversion run shows its stores only at commit, all of them") {
  test::TempDir dir;
  const auto out = dir / "out";
  auto source = open_source(kSource);
  ConversionRun run(out);
  const auto train = run.add_split(*source, "train", lmdb_options(false));
  const auto test = run.add_split(*source, "test", lmdb_options(false));
  CHECK(train.formats.at(0).path == out / "train.lmdb");
  CHECK(train.formats.at(0).bytes_on_disk > 0);
  CHECK(test.count == 8);
  for (const auto& name : test::list_dir(out)) CHECK(name.rfind(".", 0) == 0);  // staging only
  run.commit();
  CHECK(test::list_dir(out) == std::vector<std::string>{"test.lmdb", "train.lmdb"});
  CHECK(open_store(out / "train.lmdb")->size() == 30);
  CHECK(open_store(out / "test.lmdb")->size() == 8);
  CHECK_THROWS_AS(run.commit(), UsageError);
}

TEST_CASE("an abandoned conversion run leaves nothing") {
  test::TempDir dir;
  auto source = open_source(kSource);
  {
    ConversionRun run(dir / "out");
    run.add_split(*source, "train", lmdb_options(false));
    CHECK_THROWS_WITH_AS(run.add_split(*source, "train", lmdb_options(false)),
                         doctest::Contains("written twice"), UsageError);
  }
  CHECK(test::list_dir(dir / "out").empty());
}

TEST_CASE("a conversion run whose commit fails puts back what it moved") {
  test::TempDir dir;
  const auto out = dir / "out";
  auto source = open_source(kSource);

  SUBCASE("new stores: a store that appeared meanwhile stops the run, nothing of it stays") {
    ConversionRun run(out);
    run.add_split(*source, "train", lmdb_options(false));
    run.add_split(*source, "test", lmdb_options(false));
    fs::create_directory(out / "test.lmdb");  // someone else's, created after the check
    CHECK_THROWS_WITH_AS(run.commit(), doctest::Contains("appeared while writing"), IoError);
    CHECK(fs::is_empty(out / "test.lmdb"));
    CHECK_FALSE(fs::exists(out / "train.lmdb"));  // moved in first, taken out again
  }

  SUBCASE("--overwrite: the old stores come back when a later rename fails") {
    convert_split(*open_source(kOtherSource), "train", out, lmdb_options(false));
    convert_split(*open_source(kOtherSource), "test", out, lmdb_options(false));
    ConversionRun run(out);
    run.add_split(*source, "train", lmdb_options(true));
    run.add_split(*source, "test", lmdb_options(true));
    // The staged test store vanishes before commit: its rename fails after train's succeeded.
    const auto staged_test = staging_dir_of(out / "test.lmdb") / "test.lmdb";
    REQUIRE(fs::remove_all(staged_test) > 0);
    CHECK_THROWS_AS(run.commit(), IoError);
    CHECK(open_store(out / "train.lmdb")->size() == 11);  // the old store, back in place
    CHECK(open_store(out / "test.lmdb")->size() == 5);
  }
  // Whatever failed, the run left no staging behind once destroyed.
  for (const auto& name : test::list_dir(out)) CHECK(name.rfind(".", 0) != 0);
}

namespace {

// A synthetic source whose stream misbehaves on cue, to test the conversion's read-ahead.
struct ScriptedSource : Source {
  explicit ScriptedSource(std::uint64_t announced) : announced(announced) {}
  std::string description() const override { return "scripted source"; }
  std::vector<SplitInfo> splits() const override {
    auto info = inner->splits().at(0);
    info.count = announced;
    return {info};
  }
  std::unique_ptr<BatchStream> open(const std::string& split) const override;

  std::unique_ptr<Source> inner = open_source(kSource);  // train: 30 records
  std::uint64_t announced;
  int fail_at_call = 0;     // > 0: that call of next() throws
  std::size_t extra = 0;    // records handed over beyond what was asked
  mutable std::atomic<int> calls{0};
};

struct ScriptedStream : BatchStream {
  ScriptedStream(const ScriptedSource& s, std::unique_ptr<BatchStream> inner)
      : source(s), inner(std::move(inner)) {}
  bool next(ImageBatch& out, std::size_t max_records) override {
    const int call = ++source.calls;
    if (call == source.fail_at_call) throw DataError(fmt::format("scripted failure at call {}", call));
    return inner->next(out, max_records + source.extra);
  }
  const ScriptedSource& source;
  std::unique_ptr<BatchStream> inner;
};

std::unique_ptr<BatchStream> ScriptedSource::open(const std::string& split) const {
  return std::make_unique<ScriptedStream>(*this, inner->open(split));
}

}  // namespace

TEST_CASE("a conversion reads the source one batch ahead of the writers") {
  test::TempDir dir;
  ScriptedSource source(30);
  auto o = lmdb_options(false);  // batches of 7
  bool read_ahead = false;
  o.progress = [&](std::uint64_t done, std::uint64_t) {
    if (done != 7) return;
    // The first batch is written: the source is asked for the second meanwhile, not after.
    for (int i = 0; i < 10'000 && source.calls.load() < 2; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    read_ahead = source.calls.load() >= 2;
  };
  const auto r = convert_split(source, "train", dir / "out", o);
  CHECK(read_ahead);
  CHECK(r.count == 30);
  // Every record arrives once and in order.
  ImageBatch expected;
  REQUIRE(source.inner->open("train")->next(expected, 30));
  REQUIRE(expected.size() == 30);
  auto written = open_store(dir / "out" / "train.lmdb");
  REQUIRE(written->size() == 30);
  std::vector<std::uint64_t> all(30);
  for (std::uint64_t i = 0; i < 30; ++i) all[i] = i;
  std::vector<std::uint8_t> pixels(expected.pixels.size());
  std::vector<std::int64_t> labels(30);
  written->read_many(all.data(), all.size(), pixels.data(), labels.data());
  CHECK(pixels == expected.pixels);
  CHECK(labels == expected.labels);
}

TEST_CASE("a conversion's read-ahead ends with the source's error or its early end, leaving nothing") {
  test::TempDir dir;
  const auto out = dir / "out";

  SUBCASE("the source fails on its third batch: that error, no store") {
    ScriptedSource source(30);
    source.fail_at_call = 3;
    CHECK_THROWS_WITH_AS(convert_split(source, "train", out, lmdb_options(false)),
                         doctest::Contains("scripted failure at call 3"), DataError);
  }
  SUBCASE("the source fails on its first batch") {
    ScriptedSource source(30);
    source.fail_at_call = 1;
    CHECK_THROWS_WITH_AS(convert_split(source, "train", out, lmdb_options(false)),
                         doctest::Contains("scripted failure at call 1"), DataError);
  }
  SUBCASE("the source ends before the count it announced") {
    ScriptedSource source(40);  // holds 30
    CHECK_THROWS_WITH_AS(convert_split(source, "train", out, lmdb_options(false)),
                         doctest::Contains("ended after 30 records, 40 announced"), DataError);
  }
  SUBCASE("a writer fails while the next batch is read: the writer's error, no hang") {
    ScriptedSource source(30);
    auto o = lmdb_options(false);
    o.progress = [](std::uint64_t done, std::uint64_t) {
      if (done == 14) throw IoError("scripted writer failure after 14 records");
    };
    CHECK_THROWS_WITH_AS(convert_split(source, "train", out, o),
                         doctest::Contains("scripted writer failure"), IoError);
  }
  CHECK(test::list_dir(out).empty());
}

TEST_CASE("a conversion keeps only the records asked for when the source hands over more") {
  test::TempDir dir;
  ScriptedSource source(30);
  source.extra = 5;  // asked for 7, hands over 12
  auto o = lmdb_options(false);
  o.limit = 20;
  const auto r = convert_split(source, "train", dir / "out", o);
  CHECK(r.count == 20);
  auto written = open_store(dir / "out" / "train.lmdb");
  CHECK(written->size() == 20);
  ImageBatch expected;
  REQUIRE(source.inner->open("train")->next(expected, 20));
  std::vector<std::uint8_t> last(written->image_bytes());
  written->read_one(19, last.data());
  CHECK(std::equal(last.begin(), last.end(), expected.image(19)));
}
