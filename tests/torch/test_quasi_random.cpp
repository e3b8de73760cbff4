// Quasi-random order (LoaderOptions::shuffle_window): each epoch is still a permutation of the
// store, but cut into windows of W consecutive records whose order is shuffled, and whose
// records are shuffled within the window; so each window is read in one stretch. Deterministic
// per (seed, epoch), sharded like the full shuffle, and the loader yields what it says.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <set>
#include <vector>

#include <torch/torch.h>

#include "imgstore/torch/loader.hpp"
#include "torch_test_support.hpp"

using namespace imgstore;
using imgstore::test::indexed_images;
using imgstore::test::MemoryReader;

namespace {

using imgstore::test::ShardedMemoryReader;
using Ranges = ShardedMemoryReader::Ranges;

LoaderOptions windowed(std::size_t window, std::uint64_t seed = 7) {
  LoaderOptions o;
  o.batch_size = 6;
  o.seed = seed;
  o.threads = 2;
  o.prefetch_depth = 3;
  o.shuffle_window = window;
  return o;
}

std::vector<std::uint64_t> pass_targets(PrefetchLoader& loader) {
  std::vector<std::uint64_t> seen;
  for (auto& batch : loader) {
    auto t = batch.target.contiguous();
    for (std::int64_t i = 0; i < t.size(0); ++i) {
      seen.push_back(static_cast<std::uint64_t>(t[i].item<std::int64_t>()));
    }
  }
  return seen;
}

// Checks that `order` (a sequence of record indices from [first, first + n)) visits the
// windows [first + k*W, first + (k+1)*W) one at a time: once the sequence leaves a window, it
// never comes back. Returns the windows in visiting order.
std::vector<std::uint64_t> window_runs(const std::vector<std::uint64_t>& order,
                                       std::uint64_t first, std::size_t window) {
  std::vector<std::uint64_t> runs;
  std::set<std::uint64_t> done;
  for (std::uint64_t i : order) {
    const std::uint64_t w = (i - first) / window;
    if (!runs.empty() && runs.back() == w) continue;
    CHECK_MESSAGE(done.count(w) == 0, "window " << w << " visited twice (record " << i << ")");
    done.insert(w);
    runs.push_back(w);
  }
  return runs;
}

bool is_permutation_of_range(std::vector<std::uint64_t> v, std::uint64_t first, std::size_t n) {
  std::sort(v.begin(), v.end());
  if (v.size() != n) return false;
  for (std::size_t k = 0; k < n; ++k) {
    if (v[k] != first + k) return false;
  }
  return true;
}

}  // namespace

TEST_CASE("quasi-random: a permutation visiting windows one at a time, shuffled in and across") {
  auto reader = test::memory_reader(100, 4, 4, 1);
  for (std::size_t window : {1u, 7u, 10u, 33u}) {
    CAPTURE(window);
    PrefetchLoader loader(reader, windowed(window));
    PrefetchLoader again(reader, windowed(window));
    const std::size_t windows = (100 + window - 1) / window;
    std::set<std::vector<std::uint64_t>> window_orders;
    bool within_shuffled = false;
    for (std::uint64_t epoch = 0; epoch < 4; ++epoch) {
      CAPTURE(epoch);
      const auto idx = loader.epoch_indices(epoch);
      CHECK(is_permutation_of_range(idx, 0, 100));
      CHECK(idx == again.epoch_indices(epoch));  // deterministic from (seed, epoch)
      const auto runs = window_runs(idx, 0, window);
      CHECK(runs.size() == windows);
      window_orders.insert(runs);
      for (std::size_t k = 0; k + 1 < idx.size(); ++k) {
        if (idx[k] / window == idx[k + 1] / window && idx[k + 1] != idx[k] + 1) {
          within_shuffled = true;
        }
      }
    }
    CHECK(window_orders.size() > 1);            // the windows' order changes per epoch
    if (window > 1) CHECK(within_shuffled);     // and records move within their window
  }
  // Another seed gives another order.
  PrefetchLoader a(reader, windowed(10, 1)), b(reader, windowed(10, 2));
  CHECK(a.epoch_indices(0) != b.epoch_indices(0));
}

TEST_CASE("quasi-random: a window of the whole store (or more) is the full shuffle") {
  auto reader = test::memory_reader(50, 4, 4, 1);
  PrefetchLoader full(reader, windowed(0));
  for (std::size_t window : {50u, 51u, 1000u}) {
    PrefetchLoader loader(reader, windowed(window));
    for (std::uint64_t epoch = 0; epoch < 3; ++epoch) {
      CHECK(loader.epoch_indices(epoch) == full.epoch_indices(epoch));
    }
  }
  // Windows smaller than the store give another order than the full shuffle.
  PrefetchLoader small(reader, windowed(5));
  CHECK(small.epoch_indices(0) != full.epoch_indices(0));
  // shuffle = false ignores the window: records in store order.
  LoaderOptions o = windowed(5);
  o.shuffle = false;
  PrefetchLoader plain(reader, o);
  const auto idx = plain.epoch_indices(0);
  for (std::size_t k = 0; k < idx.size(); ++k) CHECK(idx[k] == k);
}

TEST_CASE("quasi-random: ranks share out the epoch as with the full shuffle; the loader yields "
          "it") {
  auto reader = test::memory_reader(53, 4, 4, 1);
  for (std::size_t world : {1u, 2u, 3u}) {
    for (bool drop_last : {false, true}) {
      CAPTURE(world);
      CAPTURE(drop_last);
      std::map<std::uint64_t, int> seen;
      std::size_t per_rank = 0;
      for (std::size_t rank = 0; rank < world; ++rank) {
        LoaderOptions o = windowed(8);
        o.rank = rank;
        o.world_size = world;
        o.drop_last = drop_last;
        PrefetchLoader loader(reader, o);
        const auto idx = loader.epoch_indices(1);
        if (rank == 0) per_rank = idx.size();
        CHECK(idx.size() == per_rank);
        for (auto i : idx) seen[i] += 1;
        loader.set_epoch(1);
        CHECK(pass_targets(loader) == idx);  // whatever the threads' timing
      }
      if (!drop_last) {
        CHECK(seen.size() == 53);  // every record; padding repeats fewer than world
        std::size_t total = 0;
        for (auto& [i, n] : seen) total += static_cast<std::size_t>(n);
        CHECK(total - 53 < world);
      } else {
        for (auto& [i, n] : seen) CHECK(n == 1);
      }
    }
  }
}

TEST_CASE("quasi-random with whole shards: each shard's records in windows of the shard") {
  // Shards [0,20) [20,31) [31,52) [52,70); windows count from each shard's first record.
  const Ranges ranges = {{0, 20}, {20, 31}, {31, 52}, {52, 70}};
  auto reader = std::make_shared<ShardedMemoryReader>(indexed_images(70, 4, 4, 1), ranges);
  LoaderOptions o = windowed(6);
  o.whole_shards = true;
  o.world_size = 2;
  for (std::size_t rank = 0; rank < 2; ++rank) {
    o.rank = rank;
    PrefetchLoader loader(reader, o);
    const auto idx = loader.epoch_indices(2);
    std::size_t at = 0;
    // The rank's shards come one after another, each a windowed permutation of itself.
    std::set<std::size_t> shards_seen;
    while (at < idx.size() && shards_seen.size() < 2) {
      std::size_t s = 0;
      while (!(idx[at] >= ranges[s].first && idx[at] < ranges[s].second)) ++s;
      CHECK(s % 2 == rank);
      shards_seen.insert(s);
      const std::size_t n = static_cast<std::size_t>(ranges[s].second - ranges[s].first);
      const std::vector<std::uint64_t> part(idx.begin() + static_cast<std::ptrdiff_t>(at),
                                            idx.begin() + static_cast<std::ptrdiff_t>(at + n));
      CHECK(is_permutation_of_range(part, ranges[s].first, n));
      CHECK(window_runs(part, ranges[s].first, 6).size() == (n + 5) / 6);
      at += n;
    }
    CHECK(shards_seen.size() == 2);
    loader.set_epoch(2);
    CHECK(pass_targets(loader) == idx);
  }
}

namespace {

// Records the reader's will_need hints and, for each record read, whether its window had
// been hinted by then.
class HintRecordingReader : public MemoryReader {
 public:
  HintRecordingReader(ImageBatch images, std::size_t window)
      : MemoryReader(std::move(images)), window_(window) {}

  void will_need(std::uint64_t first, std::uint64_t count) const override {
    std::lock_guard<std::mutex> lock(mutex_);
    hints_.emplace_back(first, count);
    hinted_.insert(first);
  }
  std::int64_t read_one(std::uint64_t index, std::uint8_t* out) const override {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      const std::uint64_t start = window_ ? index / window_ * window_ : 0;
      if (hinted_.count(start) == 0) ++reads_before_hint_;
    }
    return MemoryReader::read_one(index, out);
  }
  void new_epoch() {
    std::lock_guard<std::mutex> lock(mutex_);
    hints_.clear();
    hinted_.clear();
    reads_before_hint_ = 0;
  }
  std::vector<std::pair<std::uint64_t, std::uint64_t>> hints() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return hints_;
  }
  std::size_t reads_before_hint() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return reads_before_hint_;
  }

 private:
  mutable std::vector<std::pair<std::uint64_t, std::uint64_t>> hints_;
  mutable std::size_t reads_before_hint_ = 0;
  std::size_t window_;
  mutable std::mutex mutex_;
  mutable std::set<std::uint64_t> hinted_;
};

}  // namespace

TEST_CASE("quasi-random: the loader hints each window to the reader before reading from it") {
  const std::size_t n = 200, window = 16;
  auto reader = std::make_shared<HintRecordingReader>(indexed_images(n), window);
  for (std::uint64_t epoch : {0u, 1u}) {
    CAPTURE(epoch);
    reader->new_epoch();
    PrefetchLoader loader(reader, windowed(window));
    loader.set_epoch(epoch);
    CHECK(pass_targets(loader).size() == n);
    CHECK(reader->reads_before_hint() == 0);
    // Whole windows, aligned, each hinted (about) once: 13 windows of 16 (the last 8 long).
    std::set<std::uint64_t> starts;
    const auto hints = reader->hints();
    for (const auto& [first, count] : hints) {
      CHECK(first % window == 0);
      CHECK(count == window);
      starts.insert(first);
    }
    CHECK(starts.size() == (n + window - 1) / window);
    CHECK(hints.size() <= 2 * starts.size());
  }
  SUBCASE("no hints for the full shuffle, or when ranks take every world_size-th record") {
    reader->new_epoch();
    PrefetchLoader full(reader, windowed(0));
    CHECK(pass_targets(full).size() == n);
    LoaderOptions sliced = windowed(window);
    sliced.world_size = 2;
    sliced.rank = 1;
    PrefetchLoader rank(reader, sliced);
    CHECK(pass_targets(rank).size() == n / 2);
    CHECK(reader->hints().empty());
  }
}
