// Exact resume: a loader restored from a saved LoaderState yields exactly the batches an
// uninterrupted run yields next (indices and tensor bytes, augmentation included), whatever
// its thread count or prefetch depth; bad states are refused by name.
#include <doctest/doctest.h>

#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "../unit/test_support.hpp"
#include "imgstore/error.hpp"
#include "imgstore/torch/loader.hpp"
#include "torch_test_support.hpp"

using namespace imgstore;
using imgstore::test::indexed_images;
using imgstore::test::MemoryReader;
using imgstore::test::ShardedMemoryReader;

namespace {

// One batch as the training loop saw it: its targets (= record indices) and its bytes.
struct Seen {
  std::uint64_t epoch = 0;
  std::vector<std::int64_t> targets;
  std::vector<std::uint8_t> bytes;
  bool operator==(const Seen& o) const {
    return epoch == o.epoch && targets == o.targets && bytes == o.bytes;
  }
};

Seen record(std::uint64_t epoch, const torch::data::Example<>& batch) {
  Seen s;
  s.epoch = epoch;
  auto t = batch.target.contiguous();
  s.targets.assign(t.data_ptr<std::int64_t>(), t.data_ptr<std::int64_t>() + t.numel());
  auto d = batch.data.contiguous();
  const auto* p = static_cast<const std::uint8_t*>(d.data_ptr());
  s.bytes.assign(p, p + d.numel() * static_cast<std::int64_t>(d.element_size()));
  return s;
}

// Every batch of `epochs` full passes.
std::vector<Seen> run_epochs(PrefetchLoader& loader, int epochs) {
  std::vector<Seen> out;
  for (int e = 0; e < epochs; ++e) {
    const std::uint64_t epoch = loader.epoch();
    for (auto& batch : loader) out.push_back(record(epoch, batch));
  }
  return out;
}

LoaderOptions options(unsigned threads, std::size_t prefetch, std::size_t rank = 0,
                      std::size_t world = 1) {
  LoaderOptions o;
  o.batch_size = 7;
  o.seed = 2024;
  o.threads = threads;
  o.prefetch_depth = prefetch;
  o.rank = rank;
  o.world_size = world;
  // Augmentation on, so the random crop/flip streams must resume too.
  o.normalize = Normalize::mean_std({0.5f, 0.4f, 0.3f}, {0.2f, 0.25f, 0.3f});
  o.crop_padding = 2;
  o.horizontal_flip = true;
  return o;
}

// Runs epoch 0 and `k` batches of epoch 1 (holding the k-th, with the pipeline given time to
// prefetch more), then returns the state as JSON, as a checkpoint would hold it.
std::string interrupted_state(std::shared_ptr<const StoreReader> reader, const LoaderOptions& o,
                              std::size_t k, std::vector<Seen>* consumed) {
  PrefetchLoader loader(reader, o);
  for (auto& batch : loader) consumed->push_back(record(0, batch));
  if (k == 0) return loader.state().to_json();
  std::size_t taken = 0;
  for (auto& batch : loader) {
    consumed->push_back(record(1, batch));
    if (++taken == k) {
      // Let the pipeline fill its buffers: those batches are prefetched but never consumed.
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
      return loader.state().to_json();
    }
  }
  return loader.state().to_json();  // k == every batch: the state taken after the loop
}

void check_resume(std::shared_ptr<const StoreReader> reader, std::size_t rank,
                  std::size_t world, LoaderOptions base) {
  base.rank = rank;
  base.world_size = world;
  PrefetchLoader reference(reader, base);
  const std::size_t per_epoch = reference.batches_per_epoch();
  const std::vector<Seen> full = run_epochs(reference, 3);
  REQUIRE(full.size() == 3 * per_epoch);
  REQUIRE(per_epoch >= 4);

  const std::size_t ks[] = {0, 1, per_epoch / 2, per_epoch - 1, per_epoch};
  const unsigned thread_counts[] = {1, 2, 4};
  const std::size_t depths[] = {1, 2, 5};
  int variant = 0;
  for (std::size_t k : ks) {
    CAPTURE(k);
    // Stopped with one configuration, resumed with another.
    LoaderOptions before = base;
    before.threads = thread_counts[variant % 3];
    before.prefetch_depth = depths[(variant + 1) % 3] + 1;
    LoaderOptions after = base;
    after.threads = thread_counts[(variant + 1) % 3];
    after.prefetch_depth = depths[variant % 3];
    ++variant;
    CAPTURE(before.threads);
    CAPTURE(after.threads);
    CAPTURE(after.prefetch_depth);

    std::vector<Seen> seen;
    const std::string json = interrupted_state(reader, before, k, &seen);
    REQUIRE(seen.size() == per_epoch + k);
    for (std::size_t i = 0; i < seen.size(); ++i) CHECK(seen[i] == full[i]);

    PrefetchLoader resumed(reader, after);
    resumed.restore(LoaderState::from_json(json));
    const LoaderState st = resumed.state();
    CHECK(st.epoch == (k == per_epoch ? 2u : 1u));
    CHECK(st.batches_consumed == (k == per_epoch ? 0u : k));
    CHECK(resumed.epoch() == st.epoch);
    // The rest of the interrupted epoch, then the next epoch as usual.
    std::vector<Seen> rest = run_epochs(resumed, k == per_epoch ? 1 : 2);
    REQUIRE(seen.size() + rest.size() == full.size());
    for (std::size_t i = 0; i < rest.size(); ++i) {
      CAPTURE(i);
      CHECK(rest[i] == full[seen.size() + i]);
    }
  }
}

}  // namespace

TEST_CASE("resume: the remaining batches equal an uninterrupted run's (1 rank, augmented)") {
  auto reader = std::make_shared<MemoryReader>(indexed_images(61, 8, 8, 3));
  check_resume(reader, 0, 1, options(1, 2));
}

TEST_CASE("resume: 2 ranks, each resumes its own shard exactly") {
  auto reader = std::make_shared<MemoryReader>(indexed_images(61, 8, 8, 3));
  for (std::size_t rank = 0; rank < 2; ++rank) {
    CAPTURE(rank);
    check_resume(reader, rank, 2, options(1, 2));
  }
}

TEST_CASE("resume: drop_last, unshuffled, and whole shards") {
  auto reader = std::make_shared<MemoryReader>(indexed_images(61, 8, 8, 3));
  LoaderOptions o = options(1, 2);
  o.drop_last = true;
  check_resume(reader, 1, 2, o);
  o.drop_last = false;
  o.shuffle = false;
  check_resume(reader, 0, 1, o);

  auto sharded = std::make_shared<ShardedMemoryReader>(
      indexed_images(70, 6, 6, 3), std::vector<std::pair<std::uint64_t, std::uint64_t>>{
                                       {0, 20}, {20, 31}, {31, 52}, {52, 70}});
  LoaderOptions w = options(1, 2);
  w.whole_shards = true;
  check_resume(sharded, 1, 2, w);
}

TEST_CASE("resume: quasi-random order (shuffle_window), plain and whole shards") {
  auto reader = std::make_shared<MemoryReader>(indexed_images(61, 8, 8, 3));
  LoaderOptions o = options(1, 2);
  o.shuffle_window = 8;
  check_resume(reader, 0, 1, o);
  check_resume(reader, 1, 2, o);

  auto sharded = std::make_shared<ShardedMemoryReader>(
      indexed_images(70, 6, 6, 3), std::vector<std::pair<std::uint64_t, std::uint64_t>>{
                                       {0, 20}, {20, 31}, {31, 52}, {52, 70}});
  o.whole_shards = true;
  o.shuffle_window = 6;
  check_resume(sharded, 0, 2, o);
}

TEST_CASE("resume: state() reports the consumer's position") {
  auto reader = test::memory_reader(30);
  LoaderOptions o = options(2, 3);
  o.batch_size = 10;
  PrefetchLoader loader(reader, o);
  LoaderState s = loader.state();
  CHECK(s.epoch == 0);
  CHECK(s.batches_consumed == 0);
  CHECK(s.seed == o.seed);
  CHECK(s.batch_size == 10);
  CHECK(s.store_count == 30);
  CHECK(s.content_digest == reader->manifest().content_digest);
  {
    auto it = loader.begin();
    CHECK(loader.state().batches_consumed == 1);  // the batch the loop holds counts
    ++it;
    CHECK(loader.state().batches_consumed == 2);
    CHECK(loader.state().epoch == 0);
    ++it;
    s = loader.state();  // the last batch: the epoch is done
    CHECK(s.epoch == 1);
    CHECK(s.batches_consumed == 0);
    ++it;
    CHECK(it == loader.end());
    CHECK(loader.state().epoch == 1);
  }
  {
    auto it = loader.begin();  // epoch 1, left after one batch
    CHECK(loader.state().epoch == 1);
    CHECK(loader.state().batches_consumed == 1);
  }
  loader.set_epoch(5);
  CHECK(loader.state().epoch == 5);
  CHECK(loader.state().batches_consumed == 0);

  // set_epoch() of the restored epoch keeps the position; another epoch starts at batch 0.
  LoaderState at;
  at = loader.state();
  at.epoch = 3;
  at.batches_consumed = 2;
  loader.restore(at);
  loader.set_epoch(3);
  CHECK(loader.state().batches_consumed == 2);
  std::size_t n = 0;
  for (auto& batch : loader) n += static_cast<std::size_t>(batch.target.size(0));
  CHECK(n == 10);
  loader.restore(at);
  loader.set_epoch(4);
  CHECK(loader.state().batches_consumed == 0);
  n = 0;
  for (auto& batch : loader) n += static_cast<std::size_t>(batch.target.size(0));
  CHECK(n == 30);
}

TEST_CASE("resume: restore() refuses a state from another store, seed or layout") {
  auto reader = std::make_shared<MemoryReader>(indexed_images(40));
  LoaderOptions o = options(1, 2, 0, 2);
  PrefetchLoader loader(reader, o);
  const LoaderState good = loader.state();
  CHECK_NOTHROW(loader.restore(good));

  auto refused = [&](LoaderState s, const std::string& what) {
    CAPTURE(what);
    CHECK_THROWS_WITH_AS(loader.restore(s), doctest::Contains(what.c_str()), UsageError);
  };
  LoaderState s = good;
  s.seed += 1;
  refused(s, fmt::format("seed {} vs {}", o.seed + 1, o.seed));
  s = good;
  s.batch_size = 8;
  refused(s, "batch_size 8 vs 7");
  s = good;
  s.shuffle = false;
  refused(s, "shuffle false vs true");
  s = good;
  s.shuffle_window = 16;
  refused(s, "shuffle_window 16 vs 0");
  s = good;
  s.drop_last = true;
  refused(s, "drop_last true vs false");
  s = good;
  s.whole_shards = true;
  refused(s, "whole_shards true vs false");
  s = good;
  s.rank = 1;
  refused(s, "rank 1 vs 0");
  s = good;
  s.world_size = 4;
  refused(s, "world_size 4 vs 2");
  s = good;
  s.store_count = 41;
  refused(s, "loader state is from another data set: store count 41 vs 40");
  s = good;
  s.batches_consumed = loader.batches_per_epoch() + 1;
  refused(s, "batches_consumed");

  // Same size, other images: the content digest tells them apart.
  auto other = std::make_shared<MemoryReader>(indexed_images(40, 8, 8, 3, 8));
  PrefetchLoader elsewhere(other, o);
  const std::string digest = fmt::format("content digest 0x{} vs 0x{}",
                                         to_hex64(good.content_digest),
                                         to_hex64(other->manifest().content_digest));
  const std::string message = "loader state is from another data set: " + digest;
  CHECK_THROWS_WITH_AS(elsewhere.restore(good), doctest::Contains(message.c_str()), UsageError);
  // A refused restore leaves the loader as it was.
  CHECK(loader.state().epoch == good.epoch);
}

TEST_CASE("LoaderState JSON: round trip, and malformed text is a DataError naming it") {
  LoaderState s;
  s.epoch = 12;
  s.batches_consumed = 345;
  s.seed = 0xfedcba9876543210ULL;
  s.shuffle = false;
  s.shuffle_window = 4096;
  s.drop_last = true;
  s.whole_shards = true;
  s.batch_size = 256;
  s.rank = 3;
  s.world_size = 8;
  s.store_count = 60000;
  s.content_digest = 0x8000000000000001ULL;
  const LoaderState r = LoaderState::from_json(s.to_json());
  CHECK(r.epoch == s.epoch);
  CHECK(r.batches_consumed == s.batches_consumed);
  CHECK(r.seed == s.seed);
  CHECK(r.shuffle == s.shuffle);
  CHECK(r.shuffle_window == s.shuffle_window);
  CHECK(r.drop_last == s.drop_last);
  CHECK(r.whole_shards == s.whole_shards);
  CHECK(r.batch_size == s.batch_size);
  CHECK(r.rank == s.rank);
  CHECK(r.world_size == s.world_size);
  CHECK(r.store_count == s.store_count);
  CHECK(r.content_digest == s.content_digest);

  const std::string what = "checkpoint 'ckpt/loader.json'";
  auto bad = [&](const std::string& text, const std::string& says) {
    CAPTURE(text);
    const std::string message = what + ": " + says;
    CHECK_THROWS_WITH_AS(LoaderState::from_json(text, what), doctest::Contains(message.c_str()),
                         DataError);
  };
  bad("", "not valid JSON");
  bad("{\"epoch\": 1,", "not valid JSON");
  bad("[1, 2]", "expected a JSON object");
  const nlohmann::json good = nlohmann::json::parse(s.to_json());
  for (auto& [key, value] : good.items()) {
    if (key == "shuffle_window") continue;  // optional, below
    nlohmann::json j = good;
    j.erase(key);
    bad(j.dump(), "missing field '" + key + "'");
  }
  // States saved before quasi-random order existed read as the full shuffle.
  nlohmann::json j = good;
  j.erase("shuffle_window");
  CHECK(LoaderState::from_json(j.dump()).shuffle_window == 0);
  j = good;
  j["shuffle_window"] = -3;
  bad(j.dump(), "field 'shuffle_window' must be a non-negative integer");
  j = good;
  j["epoch"] = -1;
  bad(j.dump(), "field 'epoch' must be a non-negative integer");
  j = good;
  j["shuffle"] = "yes";
  bad(j.dump(), "field 'shuffle' must be true or false");
  j = good;
  j["content_digest"] = "12345";
  bad(j.dump(), "field 'content_digest': '12345' is not 16 hex digits");
  j = good;
  j["content_digest"] = 5;
  bad(j.dump(), "field 'content_digest' must be a string");
  j = good;
  j["rank"] = 8;
  bad(j.dump(), "rank 8 is not below world_size 8");
  j = good;
  j["imgstore_loader_state"] = 2;
  bad(j.dump(), "imgstore_loader_state version 2 is not supported");
}

namespace {

// Files in `dir` other than `keep` (a staged write must leave no temporary behind).
std::vector<std::string> other_files(const std::filesystem::path& dir, const std::string& keep) {
  std::vector<std::string> names;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    if (e.path().filename() != keep) names.push_back(e.path().filename().string());
  }
  return names;
}

LoaderState sample_state() {
  auto reader = test::memory_reader(50);
  LoaderOptions o;
  o.batch_size = 4;
  o.seed = 9;
  PrefetchLoader loader(reader, o);
  auto it = loader.begin();
  for (int i = 0; i < 3; ++i) ++it;
  return loader.state();  // epoch 0, 4 batches consumed
}

}  // namespace

TEST_CASE("LoaderState file: save() then load() round trips, replacing the old file whole") {
  test::TempDir dir;
  const auto path = dir / "loader.json";
  const LoaderState s = sample_state();
  REQUIRE(s.batches_consumed == 4);
  s.save(path);
  LoaderState r = LoaderState::load(path);
  CHECK(r.to_json() == s.to_json());
  CHECK(other_files(dir.path(), "loader.json").empty());

  LoaderState later = s;
  later.epoch = 3;
  later.batches_consumed = 1;
  later.save(path, /*durable=*/false);
  r = LoaderState::load(path);
  CHECK(r.epoch == 3);
  CHECK(r.batches_consumed == 1);
  CHECK(other_files(dir.path(), "loader.json").empty());
}

TEST_CASE("LoaderState file: a failed save() leaves no file and names the path") {
  test::TempDir dir;
  const LoaderState s = sample_state();
  const auto missing = dir / "no-such-dir" / "loader.json";
  CHECK_THROWS_WITH_AS(s.save(missing), doctest::Contains(("'" + missing.string() + "'").c_str()),
                       IoError);
  CHECK_FALSE(std::filesystem::exists(missing));
  CHECK_FALSE(std::filesystem::exists(dir / "no-such-dir"));

  // A directory in the way: refused, kept as it was, nothing staged left beside it.
  const auto taken = dir / "state";
  std::filesystem::create_directories(taken / "inside");
  CHECK_THROWS_WITH_AS(s.save(taken), doctest::Contains("is a directory"), IoError);
  CHECK(std::filesystem::is_directory(taken / "inside"));
  CHECK(other_files(dir.path(), "state").empty());
}

TEST_CASE("LoaderState file: load() of a missing, corrupt or oversized file names it") {
  test::TempDir dir;
  const auto path = dir / "loader.json";
  const std::string quoted = "'" + path.string() + "'";
  CHECK_THROWS_WITH_AS(LoaderState::load(path), doctest::Contains(quoted.c_str()), IoError);

  const std::string whole = sample_state().to_json();
  auto write = [&](const std::string& text) {
    std::ofstream(path, std::ios::binary | std::ios::trunc) << text;
  };
  write(whole.substr(0, whole.size() / 2));  // torn write
  CHECK_THROWS_WITH_AS(LoaderState::load(path), doctest::Contains((quoted + ": not valid JSON").c_str()),
                       DataError);
  write("\x89PNG\r\n\x1a\n binary junk");
  CHECK_THROWS_WITH_AS(LoaderState::load(path), doctest::Contains((quoted + ": not valid JSON").c_str()),
                       DataError);
  write("{\"imgstore_loader_state\": 1}");
  CHECK_THROWS_WITH_AS(LoaderState::load(path),
                       doctest::Contains((quoted + ": missing field 'epoch'").c_str()), DataError);
  write(std::string(2 << 20, ' '));
  CHECK_THROWS_WITH_AS(LoaderState::load(path), doctest::Contains(quoted.c_str()), DataError);
}
