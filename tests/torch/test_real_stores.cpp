// Datasets and the loader over real stores of every format, written with create_store.
#include <doctest/doctest.h>

#include <algorithm>
#include <fstream>
#include <numeric>
#include <vector>

#include <torch/torch.h>

#include "../unit/test_support.hpp"
#include "imgstore/torch/loader.hpp"
#include "torch_test_support.hpp"

using namespace imgstore;
using imgstore::test::expecting;
using imgstore::test::reference_chw;

namespace {

struct RealStore {
  Format format;
  std::filesystem::path path;
};

std::vector<RealStore> write_all_formats(const std::filesystem::path& dir, const ImageBatch& images) {
  std::vector<RealStore> stores;
  for (Format f : {Format::PngFolder, Format::Lmdb, Format::Hdf5}) {
    auto path = dir / store_file_name("train", f);
    WriterOptions w;
    w.durable = false;
    if (f == Format::Hdf5) w.hdf5.chunk_records = 16;
    store_many(f, path, images, {}, w);
    stores.push_back({f, path});
  }
  return stores;
}

}  // namespace

TEST_CASE("datasets over real PNG and LMDB and HDF5 stores match the written pixels") {
  imgstore::test::TempDir dir;
  auto images = imgstore::test::indexed_images(70, 6, 5, 3);
  for (auto& store : write_all_formats(dir.path(), images)) {
    CAPTURE(to_string(store.format));
    auto ds = open_dataset(store.path);
    CHECK(ds.reader().format() == store.format);
    CHECK(ds.size().value() == 70);
    auto typed = open_dataset(store.path, expecting(store.format));
    std::vector<std::size_t> idx{69, 3, 3, 40, 0};
    auto a = ds.get_batch(idx);
    auto b = typed.get_batch(idx);
    CHECK(torch::equal(a.data, b.data));
    for (std::size_t i = 0; i < idx.size(); ++i) {
      CHECK(a.target[i].item<std::int64_t>() == static_cast<std::int64_t>(idx[i]));
      CHECK(torch::equal(a.data[i], reference_chw(images, idx[i])));
    }
    CHECK(torch::equal(ds.get(40).data, reference_chw(images, 40)));
    // A dataset expecting one format refuses another, naming the path and both formats.
    if (store.format != Format::Lmdb) {
      CHECK_THROWS_WITH_AS(open_dataset(store.path, expecting(Format::Lmdb)),
                           doctest::Contains("not lmdb"), UsageError);
      const std::string names_all = "'" + store.path.string() + "' is a " +
                                    to_string(store.format) + " store, not lmdb";
      CHECK_THROWS_WITH_AS(StoreDataset(store.path, expecting(Format::Lmdb)),
                           doctest::Contains(names_all.c_str()), UsageError);
    } else {
      CHECK_THROWS_WITH_AS(open_dataset(store.path, expecting(Format::PngFolder)),
                           doctest::Contains("not png"), UsageError);
    }
  }
}

TEST_CASE("prefetch loader and stock loader over real stores visit every record once") {
  imgstore::test::TempDir dir;
  auto images = imgstore::test::indexed_images(90, 8, 8, 3);
  for (auto& store : write_all_formats(dir.path(), images)) {
    CAPTURE(to_string(store.format));
    LoaderOptions o;
    o.batch_size = 16;
    o.threads = 2;
    o.seed = 3;
    PrefetchLoader loader(store.path, o);
    std::vector<std::int64_t> seen;
    for (auto& batch : loader) {
      for (std::int64_t i = 0; i < batch.target.size(0); ++i) {
        const auto t = batch.target[i].item<std::int64_t>();
        seen.push_back(t);
        REQUIRE(torch::equal(batch.data[i], reference_chw(images, t)));
      }
    }
    std::vector<std::int64_t> all(90);
    std::iota(all.begin(), all.end(), 0);
    CHECK(std::vector<std::int64_t>(seen) != all);  // shuffled
    std::sort(seen.begin(), seen.end());
    CHECK(seen == all);

    auto stock = torch::data::make_data_loader(
        open_dataset(store.path), torch::data::DataLoaderOptions().batch_size(16).workers(2));
    std::vector<std::int64_t> stock_seen;
    for (auto& batch : *stock) {
      for (std::int64_t i = 0; i < batch.target.size(0); ++i) {
        stock_seen.push_back(batch.target[i].item<std::int64_t>());
      }
    }
    std::sort(stock_seen.begin(), stock_seen.end());
    CHECK(stock_seen == all);
  }
}

TEST_CASE("a corrupt PNG file reaches the loader's consumer naming the file") {
  imgstore::test::TempDir dir;
  auto images = imgstore::test::indexed_images(40, 8, 8, 3);
  auto path = dir / "train.png";
  WriterOptions w;
  w.durable = false;
  store_many(Format::PngFolder, path, images, {}, w);
  {
    std::ofstream bad(path / "00000021.png", std::ios::binary | std::ios::trunc);
    bad << "not a png at all";
  }
  LoaderOptions o;
  o.batch_size = 8;
  o.shuffle = false;
  o.threads = 2;
  PrefetchLoader loader(path, o);
  std::size_t batches = 0;
  auto consume = [&] {
    for (auto& batch : loader) {
      (void)batch;
      ++batches;
    }
  };
  CHECK_THROWS_WITH_AS(consume(), doctest::Contains("00000021.png"), DataError);
  CHECK(batches == 2);
}
