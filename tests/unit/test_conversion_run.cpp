// ConversionRun: several splits into one directory, all or none (issue 12).
#include <doctest/doctest.h>

#include <filesystem>
#include <string>
#include <vector>

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
