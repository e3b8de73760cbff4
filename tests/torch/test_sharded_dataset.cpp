// Sharded stores through the LibTorch side: datasets and the loader read a store written with
// WriterOptions::shards exactly as they read the same records unsharded.
#include <doctest/doctest.h>

#include <set>
#include <vector>

#include <torch/torch.h>

#include "../unit/test_support.hpp"
#include "imgstore/torch/loader.hpp"
#include "torch_test_support.hpp"

using namespace imgstore;

namespace {

// Writes `images` twice in `format`: as one store and as `shards` shards.
std::pair<std::filesystem::path, std::filesystem::path> write_plain_and_sharded(
    const std::filesystem::path& dir, Format format, const ImageBatch& images, unsigned shards) {
  WriterOptions plain;
  plain.durable = false;
  WriterOptions sharded = plain;
  sharded.shards = shards;
  auto plain_path = dir / ("plain_" + store_file_name("train", format));
  auto sharded_path = dir / ("sharded_" + store_file_name("train", format));
  store_many(format, plain_path, images, {}, plain);
  store_many(format, sharded_path, images, {}, sharded);
  return {plain_path, sharded_path};
}

}  // namespace

TEST_CASE("datasets and the loader read a sharded store like the same store unsharded") {
  imgstore::test::TempDir dir;
  const auto images = imgstore::test::indexed_images(53, 6, 5, 3);
  for (Format format : all_formats()) {
    CAPTURE(to_string(format));
    auto [plain_path, sharded_path] = write_plain_and_sharded(dir.path(), format, images, 4);
    auto plain = open_dataset(plain_path);
    auto sharded = open_dataset(sharded_path);
    REQUIRE(sharded.reader().shard_ranges().size() == 4);
    CHECK(sharded.reader().manifest().content_digest == plain.reader().manifest().content_digest);

    // Indices crossing every shard boundary, out of order and repeated.
    std::vector<std::size_t> idx{52, 0, 13, 14, 27, 26, 40, 39, 0, 52, 7};
    auto a = plain.get_batch(idx);
    auto b = sharded.get_batch(idx);
    CHECK(torch::equal(a.data, b.data));
    CHECK(torch::equal(a.target, b.target));

    LoaderOptions opts;
    opts.batch_size = 8;
    opts.threads = 2;
    opts.seed = 11;
    PrefetchLoader plain_loader(plain_path, opts);
    PrefetchLoader sharded_loader(sharded_path, opts);
    std::vector<torch::Tensor> from_plain, from_sharded;
    for (auto& batch : plain_loader) from_plain.push_back(batch.data.clone());
    for (auto& batch : sharded_loader) from_sharded.push_back(batch.data.clone());
    REQUIRE(from_plain.size() == from_sharded.size());
    for (std::size_t i = 0; i < from_plain.size(); ++i) {
      CHECK(torch::equal(from_plain[i], from_sharded[i]));
    }
  }
}

TEST_CASE("whole-shard loading over a real sharded store gives each rank only its shards") {
  imgstore::test::TempDir dir;
  const auto images = imgstore::test::indexed_images(40, 4, 4, 1);
  auto [plain_path, sharded_path] = write_plain_and_sharded(dir.path(), Format::Lmdb, images, 4);
  (void)plain_path;
  auto ranges = open_store(sharded_path)->shard_ranges();
  REQUIRE(ranges.size() == 4);

  std::set<std::uint64_t> seen;
  for (std::size_t rank = 0; rank < 2; ++rank) {
    LoaderOptions opts;
    opts.batch_size = 5;
    opts.rank = rank;
    opts.world_size = 2;
    opts.whole_shards = true;
    PrefetchLoader loader(sharded_path, opts);
    std::vector<std::int64_t> labels;
    for (auto& batch : loader) {
      auto t = batch.target.contiguous();
      labels.insert(labels.end(), t.data_ptr<std::int64_t>(), t.data_ptr<std::int64_t>() + t.numel());
    }
    // Labels are record indices; rank r owns shards r and r + 2.
    for (auto label : labels) {
      const auto index = static_cast<std::uint64_t>(label);
      const bool in_own_shard = (index >= ranges[rank].first && index < ranges[rank].second) ||
                                (index >= ranges[rank + 2].first && index < ranges[rank + 2].second);
      CHECK(in_own_shard);
      seen.insert(index);
    }
  }
  CHECK(seen.size() == 40);
}
