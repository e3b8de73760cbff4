// The prefetching loader: determinism, coverage, sharding, cancellation, errors, memory.
#include <doctest/doctest.h>

#include <algorithm>
#include <map>
#include <numeric>

#include <torch/torch.h>

#include "imgstore/torch/loader.hpp"
#include "torch_test_support.hpp"

using namespace imgstore;
using imgstore::test::memory_reader;
using imgstore::test::MemoryReader;
using imgstore::test::reference_chw;

namespace {

struct Pass {
  std::vector<torch::Tensor> data;     // cloned batches
  std::vector<torch::Tensor> targets;
  std::vector<std::int64_t> seen;      // all targets in order
};

Pass run_pass(PrefetchLoader& loader) {
  Pass p;
  for (auto& batch : loader) {
    p.data.push_back(batch.data.clone());
    p.targets.push_back(batch.target.clone());
    for (std::int64_t i = 0; i < batch.target.size(0); ++i) {
      p.seen.push_back(batch.target[i].item<std::int64_t>());
    }
  }
  return p;
}

std::vector<std::int64_t> iota_vec(std::size_t n) {
  std::vector<std::int64_t> v(n);
  std::iota(v.begin(), v.end(), 0);
  return v;
}

bool same_batches(const Pass& a, const Pass& b) {
  if (a.data.size() != b.data.size()) return false;
  for (std::size_t i = 0; i < a.data.size(); ++i) {
    if (!torch::equal(a.data[i], b.data[i]) || !torch::equal(a.targets[i], b.targets[i])) {
      return false;
    }
  }
  return true;
}

LoaderOptions augmenting_options(unsigned threads) {
  LoaderOptions o;
  o.batch_size = 16;
  o.shuffle = true;
  o.seed = 1234;
  o.threads = threads;
  o.prefetch_depth = 3;
  o.normalize = Normalize::mean_std({0.5f, 0.4f, 0.3f}, {0.25f, 0.25f, 0.25f});
  o.crop_padding = 2;
  o.horizontal_flip = true;
  return o;
}

}  // namespace

TEST_CASE("loader output does not depend on the thread count (shuffle + augmentation)") {
  auto reader = memory_reader(150, 8, 8, 3);
  PrefetchLoader one(reader, augmenting_options(1));
  PrefetchLoader four(reader, augmenting_options(4));
  for (int epoch = 0; epoch < 2; ++epoch) {
    Pass a = run_pass(one);
    Pass b = run_pass(four);
    CHECK(a.data.size() == 10);
    CHECK(a.data[0].dtype() == torch::kFloat32);
    CHECK(a.data[0].sizes() == torch::IntArrayRef({16, 3, 8, 8}));
    CHECK(same_batches(a, b));
  }
  // Different epochs and seeds give different orders.
  one.set_epoch(0);
  four.set_epoch(1);
  CHECK(run_pass(one).seen != run_pass(four).seen);
}

TEST_CASE("loader visits every sample exactly once per epoch with exact pixels when untransformed") {
  auto reader = memory_reader(103, 6, 5, 3);
  LoaderOptions o;
  o.batch_size = 10;
  o.threads = 2;
  PrefetchLoader loader(reader, o);
  CHECK(loader.batches_per_epoch() == 11);
  std::vector<std::vector<std::int64_t>> orders;
  for (int epoch = 0; epoch < 3; ++epoch) {
    const auto expected_order = loader.epoch_indices(loader.epoch());
    std::size_t batches = 0;
    std::vector<std::int64_t> seen;
    for (auto& batch : loader) {
      ++batches;
      CHECK(batch.data.dtype() == torch::kUInt8);
      CHECK(batch.data.size(0) == (batches == 11 ? 3 : 10));
      CHECK(batch.target.size(0) == batch.data.size(0));
      for (std::int64_t i = 0; i < batch.target.size(0); ++i) {
        const auto t = batch.target[i].item<std::int64_t>();
        seen.push_back(t);
        REQUIRE(torch::equal(batch.data[i], reference_chw(reader->images(), t)));
      }
    }
    CHECK(batches == 11);
    CHECK(std::vector<std::int64_t>(expected_order.begin(), expected_order.end()) == seen);
    orders.push_back(seen);
    std::sort(seen.begin(), seen.end());
    CHECK(seen == iota_vec(103));
  }
  CHECK(orders[0] != orders[1]);  // shuffled anew each epoch
  CHECK(loader.epoch() == 3);
}

TEST_CASE("loader without shuffle keeps store order") {
  auto reader = memory_reader(25, 4, 4, 1);
  LoaderOptions o;
  o.batch_size = 8;
  o.shuffle = false;
  PrefetchLoader loader(StoreDataset(reader), o);
  CHECK(&loader.reader() == reader.get());
  CHECK(run_pass(loader).seen == iota_vec(25));
}

TEST_CASE("loader drop_last drops the partial batch") {
  auto reader = memory_reader(103, 4, 4, 3);
  LoaderOptions o;
  o.batch_size = 10;
  o.drop_last = true;
  o.threads = 2;
  PrefetchLoader loader(reader, o);
  CHECK(loader.batches_per_epoch() == 10);
  CHECK(loader.samples_per_epoch() == 100);
  Pass p = run_pass(loader);
  CHECK(p.data.size() == 10);
  for (auto& t : p.targets) CHECK(t.size(0) == 10);
  auto seen = p.seen;
  std::sort(seen.begin(), seen.end());
  CHECK(std::adjacent_find(seen.begin(), seen.end()) == seen.end());  // no repeats
}

TEST_CASE("sharded loaders cover the set with equal batch counts") {
  auto reader = memory_reader(101, 4, 4, 3);
  for (bool drop_last : {false, true}) {
    CAPTURE(drop_last);
    const std::size_t world = 3;
    std::vector<std::int64_t> all;
    std::vector<std::size_t> counts;
    for (std::size_t rank = 0; rank < world; ++rank) {
      LoaderOptions o;
      o.batch_size = 8;
      o.seed = 99;
      o.rank = rank;
      o.world_size = world;
      o.drop_last = drop_last;
      o.threads = 2;
      PrefetchLoader loader(reader, o);
      loader.set_epoch(5);
      Pass p = run_pass(loader);
      CHECK(p.data.size() == loader.batches_per_epoch());
      counts.push_back(p.data.size());
      all.insert(all.end(), p.seen.begin(), p.seen.end());
    }
    CHECK(std::all_of(counts.begin(), counts.end(), [&](std::size_t c) { return c == counts[0]; }));
    std::sort(all.begin(), all.end());
    auto unique = all;
    unique.erase(std::unique(unique.begin(), unique.end()), unique.end());
    if (drop_last) {
      CHECK(counts[0] == 4);  // 101/3 = 33 per rank, 4 full batches of 8
      CHECK(all.size() == 96);
      CHECK(unique.size() == all.size());  // no sample twice
    } else {
      CHECK(counts[0] == 5);  // 34 per rank (padded to 102)
      CHECK(all.size() == 102);
      CHECK(unique == iota_vec(101));  // every sample, one repeated as padding
    }
  }
}

TEST_CASE("after breaking out of an epoch early the next epoch is complete and correct") {
  auto reader = memory_reader(200, 8, 8, 3);
  PrefetchLoader broken(reader, augmenting_options(2));
  PrefetchLoader fresh(reader, augmenting_options(2));
  int taken = 0;
  for (auto& batch : broken) {
    CHECK(batch.data.size(0) == 16);
    if (++taken == 2) break;
  }
  CHECK(broken.epoch() == 1);
  fresh.set_epoch(1);
  Pass a = run_pass(broken);
  Pass b = run_pass(fresh);
  CHECK(a.data.size() == 13);
  CHECK(same_batches(a, b));
  // Breaking at the very first batch, and cancelling explicitly, are fine too.
  for (auto& batch : broken) {
    (void)batch;
    break;
  }
  broken.cancel();
  broken.set_epoch(1);
  CHECK(same_batches(run_pass(broken), b));
}

TEST_CASE("a corrupt record reaches the consumer naming store and record and the loader stays usable") {
  auto reader = memory_reader(64, 4, 4, 3);
  LoaderOptions o;
  o.batch_size = 8;
  o.shuffle = false;
  o.threads = 4;
  o.prefetch_depth = 4;
  PrefetchLoader loader(reader, o);
  run_pass(loader);  // starts TBB's workers, which live on in TBB's pool
  const int threads_before = imgstore::test::thread_count();
  reader->bad_index = 43;  // batch 5
  std::size_t batches = 0;
  auto consume = [&](PrefetchLoader& l) {
    for (auto& batch : l) {
      (void)batch;
      ++batches;
    }
  };
  CHECK_THROWS_WITH_AS(consume(loader),
                       doctest::Contains("corrupt record in 'memory.lmdb' key '00000043'"),
                       DataError);
  CHECK(batches == 5);  // every batch before the bad one arrived, in order
  CHECK(imgstore::test::thread_count() == threads_before);  // the pass's thread is joined
  batches = 0;
  CHECK_THROWS_WITH_AS(consume(loader), doctest::Contains("batch 5 of epoch 2"), DataError);
  // The fault in the very first batch surfaces from begin().
  reader->bad_index = 2;
  CHECK_THROWS_AS(loader.begin(), DataError);
  // Fixed: the next pass is whole.
  reader->bad_index = MemoryReader::kNoFault;
  auto seen = run_pass(loader).seen;
  CHECK(seen == iota_vec(64));
  // And a loader destroyed right after a failure does not hang or leak its thread.
  {
    PrefetchLoader other(reader, o);
    reader->bad_index = 60;
    CHECK_THROWS_AS(consume(other), DataError);
  }
  {
    PrefetchLoader other(reader, o);
    auto it = other.begin();  // the pass runs on while we do nothing with it
    (void)it;
  }
  reader->bad_index = MemoryReader::kNoFault;
  CHECK(imgstore::test::thread_count() == threads_before);
}

TEST_CASE("a batch kept past its iteration is not overwritten") {
  auto reader = memory_reader(64, 4, 4, 3);
  LoaderOptions o;
  o.batch_size = 8;
  o.prefetch_depth = 2;
  PrefetchLoader loader(reader, o);
  torch::Tensor kept, kept_copy;
  for (auto& batch : loader) {
    if (!kept.defined()) {
      kept = batch.data;  // a reference into the loader's buffer
      kept_copy = batch.data.clone();
    }
  }
  run_pass(loader);
  CHECK(torch::equal(kept, kept_copy));
}

TEST_CASE("loader rejects bad options") {
  auto reader = memory_reader(8);
  LoaderOptions o;
  o.rank = 2;
  o.world_size = 2;
  CHECK_THROWS_WITH_AS(PrefetchLoader(reader, o), doctest::Contains("rank 2"), UsageError);
  o = LoaderOptions();
  o.batch_size = 0;
  CHECK_THROWS_AS(PrefetchLoader(reader, o), UsageError);
  o = LoaderOptions();
  o.crop_padding = 9;
  CHECK_THROWS_WITH_AS(PrefetchLoader(reader, o), doctest::Contains("crop padding 9"), UsageError);
}

TEST_CASE("memory stays flat over many epochs") {
  auto reader = memory_reader(640, 32, 32, 3);
  LoaderOptions o;
  o.batch_size = 64;
  o.threads = 2;
  o.prefetch_depth = 4;
  o.normalize = Normalize::float01();
  o.crop_padding = 4;
  o.horizontal_flip = true;
  PrefetchLoader loader(reader, o);
  std::size_t baseline = 0;
  volatile float sink = 0;
  for (int epoch = 0; epoch < 50; ++epoch) {
    int taken = 0;
    for (auto& batch : loader) {
      sink = batch.data[0][0][0][0].item<float>();
      if (epoch % 7 == 3 && ++taken == 3) break;  // some epochs end early
    }
    if (epoch == 4) baseline = imgstore::test::rss_bytes();
  }
  const std::size_t after = imgstore::test::rss_bytes();
  MESSAGE("RSS after 5 epochs " << baseline / 1024 << " KiB, after 50 " << after / 1024 << " KiB");
  // One batch is 64*3*32*32*4 = 768 KiB; growth by leaks of a batch per epoch would be ~35 MB.
  CHECK(after < baseline + 8 * 1024 * 1024);
}

TEST_CASE("loader output is the same for every prefetch depth and thread count") {
  auto reader = memory_reader(77, 8, 8, 3);
  auto reference_options = augmenting_options(1);
  reference_options.prefetch_depth = 1;
  PrefetchLoader reference(reader, reference_options);
  reference.set_epoch(3);
  const Pass want = run_pass(reference);
  for (unsigned threads : {1u, 2u}) {
    for (std::size_t depth : {1u, 2u, 5u}) {
      CAPTURE(threads);
      CAPTURE(depth);
      auto o = augmenting_options(threads);
      o.prefetch_depth = depth;
      PrefetchLoader loader(reader, o);
      loader.set_epoch(3);
      CHECK(same_batches(run_pass(loader), want));
    }
  }
}

TEST_CASE("loader batches equal the dataset's batches for the same indices") {
  auto reader = memory_reader(45, 6, 6, 3);
  LoaderOptions o;
  o.batch_size = 16;
  o.threads = 2;
  o.normalize = Normalize::mean_std({0.3f, 0.4f, 0.5f}, {0.2f, 0.3f, 0.4f});
  PrefetchLoader loader(reader, o);
  StoreDataset ds(reader, o.normalize);
  const auto order = loader.epoch_indices(loader.epoch());
  std::size_t at = 0;
  for (auto& batch : loader) {
    const auto n = static_cast<std::size_t>(batch.data.size(0));
    auto want = ds.read_batch(order.data() + at, n);
    CHECK(torch::equal(batch.data, want.data));
    CHECK(torch::equal(batch.target, want.target));
    at += n;
  }
  CHECK(at == 45);
}

TEST_CASE("large batches sit on huge-page boundaries, hold exact pixels and outlive the loader") {
  // 24 images of 3x160x160: a batch of 12 is 921,600 bytes in uint8 and 3.7 MB in float32,
  // a batch of 24 in float32 7.4 MB, over the 4 MiB from which batches are huge-page backed.
  auto reader = memory_reader(24, 160, 160, 3);
  const Normalize norm = Normalize::mean_std({0.5f, 0.4f, 0.3f}, {0.25f, 0.25f, 0.25f});
  auto expected = [&](std::int64_t t) {
    return (reference_chw(reader->images(), static_cast<std::size_t>(t)).to(torch::kFloat32) / 255.0 -
            torch::tensor({0.5f, 0.4f, 0.3f}).view({3, 1, 1})) / 0.25;
  };
  auto aligned = [](const torch::Tensor& t) {
    return reinterpret_cast<std::uintptr_t>(t.data_ptr()) % (std::uintptr_t{2} << 20) == 0;
  };
  LoaderOptions o;
  o.batch_size = 24;
  o.threads = 2;
  o.normalize = norm;
  torch::Tensor kept, kept_targets;
  {
    PrefetchLoader loader(reader, o);
    for (int epoch = 0; epoch < 2; ++epoch) {
      for (auto& batch : loader) {
        REQUIRE(batch.data.sizes() == torch::IntArrayRef({24, 3, 160, 160}));
        CHECK(aligned(batch.data));
        for (std::int64_t i = 0; i < 24; ++i) {
          REQUIRE(torch::allclose(batch.data[i], expected(batch.target[i].item<std::int64_t>()),
                                  1e-5, 1e-5));
        }
        kept = batch.data;
        kept_targets = batch.target;
      }
    }
  }  // the loader is gone; the kept batch's memory is the tensor's own
  for (std::int64_t i = 0; i < 24; ++i) {
    CHECK(torch::allclose(kept[i], expected(kept_targets[i].item<std::int64_t>()), 1e-5, 1e-5));
  }
  // The stock loader's path: get_batch allocates each batch the same way.
  StoreDataset ds(reader, norm);
  std::vector<std::size_t> idx(24);
  std::iota(idx.rbegin(), idx.rend(), std::size_t{0});  // 23, 22, ..., 0
  const auto b = ds.get_batch(idx);
  CHECK(aligned(b.data));
  for (std::int64_t i = 0; i < 24; ++i) {
    CHECK(b.target[i].item<std::int64_t>() == 23 - i);
    CHECK(torch::allclose(b.data[i], expected(23 - i), 1e-5, 1e-5));
  }
  // A 12-image uint8 batch (under 4 MiB) takes torch::empty's path: exact pixels there too.
  o.batch_size = 12;
  o.normalize = {};
  PrefetchLoader small(reader, o);
  for (auto& batch : small) {
    for (std::int64_t i = 0; i < batch.target.size(0); ++i) {
      REQUIRE(torch::equal(batch.data[i], reference_chw(reader->images(),
                                                        batch.target[i].item<std::int64_t>())));
    }
  }
}
