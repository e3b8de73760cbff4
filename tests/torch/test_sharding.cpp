// Sharding: per epoch, the ranks together see the whole set, overlapping only by the documented
// padding; whole_shards gives each rank whole shards; the loader yields what epoch_indices says.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <set>
#include <utility>
#include <vector>

#include <torch/torch.h>

#include "imgstore/error.hpp"
#include "imgstore/torch/loader.hpp"
#include "torch_test_support.hpp"

using namespace imgstore;
using imgstore::test::indexed_images;
using imgstore::test::MemoryReader;

namespace {

using imgstore::test::ShardedMemoryReader;
using Ranges = ShardedMemoryReader::Ranges;

// Consecutive shards of the given sizes.
std::shared_ptr<ShardedMemoryReader> sharded(const std::vector<std::uint64_t>& sizes) {
  Ranges r;
  std::uint64_t at = 0;
  for (auto s : sizes) {
    r.emplace_back(at, at + s);
    at += s;
  }
  return std::make_shared<ShardedMemoryReader>(
      indexed_images(static_cast<std::size_t>(at), 4, 4, 1), r);
}

LoaderOptions sharding_options(std::size_t rank, std::size_t world, bool drop_last,
                               bool whole_shards) {
  LoaderOptions o;
  o.batch_size = 5;
  o.seed = 99;
  o.threads = 1;
  o.prefetch_depth = 2;
  o.rank = rank;
  o.world_size = world;
  o.drop_last = drop_last;
  o.whole_shards = whole_shards;
  return o;
}

// The targets (= record indices) a full pass yields.
std::vector<std::uint64_t> pass_targets(PrefetchLoader& loader) {
  std::vector<std::uint64_t> seen;
  for (auto& batch : loader) {
    CHECK(batch.target.size(0) <= static_cast<std::int64_t>(loader.options().batch_size));
    for (std::int64_t i = 0; i < batch.target.size(0); ++i) {
      seen.push_back(static_cast<std::uint64_t>(batch.target[i].item<std::int64_t>()));
    }
  }
  return seen;
}

std::size_t shard_of(const Ranges& r, std::uint64_t index) {
  for (std::size_t s = 0; s < r.size(); ++s) {
    if (index >= r[s].first && index < r[s].second) return s;
  }
  return r.size();
}

}  // namespace

TEST_CASE("rank slices: the union over ranks is the whole set, overlapping only by padding") {
  for (std::uint64_t count : {24u, 23u, 37u}) {
    auto reader = sharded({count});
    for (std::size_t world = 1; world <= 4; ++world) {
      for (bool drop_last : {false, true}) {
        for (std::uint64_t epoch : {0u, 1u}) {
          CAPTURE(count);
          CAPTURE(world);
          CAPTURE(drop_last);
          CAPTURE(epoch);
          std::map<std::uint64_t, int> seen;
          std::size_t per_rank = 0, batches = 0;
          for (std::size_t rank = 0; rank < world; ++rank) {
            PrefetchLoader loader(reader, sharding_options(rank, world, drop_last, false));
            const auto idx = loader.epoch_indices(epoch);
            if (rank == 0) {
              per_rank = idx.size();
              batches = loader.batches_per_epoch();
            }
            CHECK(idx.size() == per_rank);  // equal step counts on every rank
            CHECK(loader.samples_per_epoch() == idx.size());
            CHECK(loader.batches_per_epoch() == batches);
            for (auto i : idx) seen[i] += 1;
            if (epoch == 1) {  // the loader yields exactly those records
              loader.set_epoch(epoch);
              CHECK(pass_targets(loader) == idx);
            }
          }
          const std::uint64_t w = world, b = 5;
          if (!drop_last) {
            // Padded to a multiple of world_size: every record, plus pad < world repeats.
            const std::uint64_t pad = (count + w - 1) / w * w - count;
            CHECK(seen.size() == count);
            std::uint64_t extra = 0;
            for (auto& [i, n] : seen) {
              CHECK(i < count);
              CHECK(n >= 1);
              CHECK(n <= 2);
              extra += static_cast<std::uint64_t>(n - 1);
            }
            CHECK(extra == pad);
            CHECK(pad < w);
            CHECK(batches == (per_rank + b - 1) / b);
          } else {
            // Cut: nothing twice; what is left out is the uneven tail and the partial batch.
            for (auto& [i, n] : seen) CHECK(n == 1);
            CHECK(per_rank == count / w / b * b);
            CHECK(seen.size() == w * per_rank);
            CHECK(batches == per_rank / b);
          }
        }
      }
    }
  }
}

TEST_CASE("rank slices: each epoch is a different permutation, the same on every rank") {
  auto reader = sharded({40});
  PrefetchLoader r0(reader, sharding_options(0, 2, false, false));
  PrefetchLoader r1(reader, sharding_options(1, 2, false, false));
  CHECK(r0.epoch_indices(0) != r0.epoch_indices(1));
  // Interleaving the two ranks (DistributedSampler's r, r+W, ...) gives one permutation.
  for (std::uint64_t epoch : {0u, 1u}) {
    auto a = r0.epoch_indices(epoch), b = r1.epoch_indices(epoch);
    std::set<std::uint64_t> all(a.begin(), a.end());
    all.insert(b.begin(), b.end());
    CHECK(all.size() == 40);
  }
}

TEST_CASE("whole shards: each rank reads whole shards r, r+W, ... with equal step counts") {
  const std::vector<std::uint64_t> sizes = {10, 7, 9, 5, 6, 8};  // 45 records, uneven shards
  auto reader = sharded(sizes);
  const Ranges ranges = reader->shard_ranges();
  for (std::size_t world = 1; world <= 4; ++world) {
    for (bool drop_last : {false, true}) {
      for (std::uint64_t epoch : {0u, 3u}) {
        CAPTURE(world);
        CAPTURE(drop_last);
        CAPTURE(epoch);
        // Records each rank owns, and the documented target: pad to the largest rank, or cut
        // to the smallest (then to whole batches when drop_last).
        std::vector<std::uint64_t> own(world, 0);
        for (std::size_t s = 0; s < sizes.size(); ++s) own[s % world] += sizes[s];
        const std::uint64_t most = *std::max_element(own.begin(), own.end());
        const std::uint64_t least = *std::min_element(own.begin(), own.end());
        const std::uint64_t want = drop_last ? least / 5 * 5 : most;

        std::map<std::uint64_t, int> seen;
        for (std::size_t rank = 0; rank < world; ++rank) {
          CAPTURE(rank);
          PrefetchLoader loader(reader, sharding_options(rank, world, drop_last, true));
          const auto idx = loader.epoch_indices(epoch);
          CHECK(idx.size() == want);
          CHECK(loader.samples_per_epoch() == want);
          CHECK(loader.batches_per_epoch() == (drop_last ? want / 5 : (want + 4) / 5));
          // Only this rank's shards, each read as one contiguous run.
          std::vector<std::size_t> runs;
          const std::size_t real = std::min<std::size_t>(idx.size(), own[rank]);
          for (std::size_t k = 0; k < real; ++k) {
            const std::size_t s = shard_of(ranges, idx[k]);
            CHECK(s % world == rank);
            if (runs.empty() || runs.back() != s) runs.push_back(s);
          }
          std::set<std::size_t> distinct_runs(runs.begin(), runs.end());
          CHECK(distinct_runs.size() == runs.size());
          // Padding repeats the rank's sequence from its start.
          for (std::size_t k = own[rank]; k < idx.size(); ++k) CHECK(idx[k] == idx[k - own[rank]]);
          std::set<std::uint64_t> mine(idx.begin(), idx.end());
          CHECK(mine.size() == std::min<std::uint64_t>(want, own[rank]));
          for (auto i : mine) seen[i] += 1;
          if (epoch == 3) {
            loader.set_epoch(epoch);
            CHECK(pass_targets(loader) == idx);
          }
        }
        // No record on two ranks; without drop_last every record is read.
        for (auto& [i, n] : seen) CHECK(n == 1);
        if (!drop_last) CHECK(seen.size() == 45);
      }
    }
  }
}

TEST_CASE("whole shards: shard order and record order are shuffled per epoch, seeded") {
  auto reader = sharded({6, 6, 6, 6, 6, 6, 6, 6});
  const Ranges ranges = reader->shard_ranges();
  PrefetchLoader loader(reader, sharding_options(0, 2, false, true));
  PrefetchLoader again(reader, sharding_options(0, 2, false, true));
  std::set<std::vector<std::size_t>> shard_orders;
  bool records_shuffled = false;
  for (std::uint64_t epoch = 0; epoch < 6; ++epoch) {
    const auto idx = loader.epoch_indices(epoch);
    CHECK(idx == again.epoch_indices(epoch));  // deterministic from (seed, epoch)
    std::vector<std::size_t> order;
    for (std::size_t k = 0; k < idx.size(); k += 6) order.push_back(shard_of(ranges, idx[k]));
    shard_orders.insert(order);
    for (std::size_t k = 0; k + 1 < idx.size(); ++k) {
      if (shard_of(ranges, idx[k]) == shard_of(ranges, idx[k + 1]) && idx[k + 1] != idx[k] + 1) {
        records_shuffled = true;
      }
    }
  }
  CHECK(shard_orders.size() > 1);
  CHECK(records_shuffled);

  LoaderOptions o = sharding_options(1, 2, false, true);
  o.shuffle = false;
  PrefetchLoader plain(reader, o);
  std::vector<std::uint64_t> expect;
  for (std::size_t s = 1; s < 8; s += 2) {
    for (auto i = ranges[s].first; i < ranges[s].second; ++i) expect.push_back(i);
  }
  CHECK(plain.epoch_indices(0) == expect);
}

TEST_CASE("whole shards on an unsharded store: one shard, so one rank only") {
  auto reader = test::memory_reader(20);
  LoaderOptions o = sharding_options(0, 1, false, true);
  PrefetchLoader one(reader, o);
  auto idx = one.epoch_indices(0);
  std::sort(idx.begin(), idx.end());
  std::vector<std::uint64_t> all(20);
  for (std::size_t i = 0; i < 20; ++i) all[i] = i;
  CHECK(idx == all);
  o.world_size = 2;
  CHECK_THROWS_WITH_AS(PrefetchLoader(reader, o),
                       doctest::Contains("has 1 shard, cannot give whole shards to 2 ranks"),
                       UsageError);
}

TEST_CASE("whole shards: refused when there are fewer shards than ranks, or bad ranges") {
  auto reader = sharded({5, 5, 5});
  CHECK_THROWS_WITH_AS(PrefetchLoader(reader, sharding_options(0, 4, false, true)),
                       doctest::Contains("has 3 shards, cannot give whole shards to 4 ranks"),
                       UsageError);
  // Without whole_shards the same store shards by slices.
  CHECK_NOTHROW(PrefetchLoader(reader, sharding_options(3, 4, false, false)));

  auto beyond = std::make_shared<ShardedMemoryReader>(indexed_images(10, 4, 4, 1),
                                                      Ranges{{0, 5}, {5, 1000000000000}});
  CHECK_THROWS_WITH_AS(PrefetchLoader(beyond, sharding_options(0, 1, false, true)),
                       doctest::Contains("shard 1 has records [5, 1000000000000)"), DataError);
  auto overlap = std::make_shared<ShardedMemoryReader>(indexed_images(10, 4, 4, 1), Ranges{{0, 6}, {5, 10}});
  CHECK_THROWS_AS(PrefetchLoader(overlap, sharding_options(0, 1, false, true)), DataError);

  // A rank whose shards are empty cannot pad; with drop_last every rank simply gets nothing.
  auto empty = sharded({4, 0});
  CHECK_THROWS_WITH_AS(PrefetchLoader(empty, sharding_options(1, 2, false, true)),
                       doctest::Contains("hold no records"), UsageError);
  PrefetchLoader dropped(empty, sharding_options(1, 2, true, true));
  CHECK(dropped.batches_per_epoch() == 0);
  CHECK(pass_targets(dropped).empty());
}
