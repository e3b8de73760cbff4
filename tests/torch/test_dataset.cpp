// Datasets: shapes, dtypes and exact values against the reader; the stock LibTorch loader over
// the batch path and over the per-sample view with LibTorch's transforms.
#include <doctest/doctest.h>

#include <algorithm>
#include <numeric>
#include <random>
#include <set>

#include <torch/torch.h>

#include "batch_fill.hpp"
#include "imgstore/torch/dataset.hpp"
#include "torch_test_support.hpp"

using namespace imgstore;
using imgstore::test::memory_reader;
using imgstore::test::reference_chw;

TEST_CASE("dataset get returns one CHW uint8 image and an int64 scalar target") {
  auto reader = memory_reader(20, 5, 7, 3);
  StoreDataset ds(reader);
  CHECK(ds.size().value() == 20);
  CHECK((ds.dtype() == torch::kUInt8));
  auto ex = ds.get(13);
  CHECK(ex.data.sizes() == torch::IntArrayRef({3, 5, 7}));
  CHECK(ex.data.dtype() == torch::kUInt8);
  CHECK(ex.target.dim() == 0);
  CHECK(ex.target.dtype() == torch::kInt64);
  CHECK(ex.target.item<std::int64_t>() == 13);
  CHECK(torch::equal(ex.data, reference_chw(reader->images(), 13)));
}

TEST_CASE("dataset get_batch fills one BxCxHxW tensor with exact pixels in request order") {
  auto reader = memory_reader(30, 6, 4, 3);
  StoreDataset ds(reader);
  std::vector<std::size_t> idx{29, 0, 7, 7, 15};
  auto batch = ds.get_batch(idx);
  CHECK(batch.data.sizes() == torch::IntArrayRef({5, 3, 6, 4}));
  CHECK(batch.data.is_contiguous());
  CHECK(batch.target.sizes() == torch::IntArrayRef({5}));
  CHECK(batch.target.dtype() == torch::kInt64);
  for (std::size_t i = 0; i < idx.size(); ++i) {
    CHECK(batch.target[i].item<std::int64_t>() == static_cast<std::int64_t>(idx[i]));
    CHECK(torch::equal(batch.data[i], reference_chw(reader->images(), idx[i])));
  }
}

TEST_CASE("dataset handles one-channel and four-channel images") {
  for (std::uint32_t c : {1u, 4u}) {
    CAPTURE(c);
    auto reader = memory_reader(10, 9, 3, c);
    StoreDataset ds(reader);
    std::vector<std::size_t> idx{3, 9, 1};
    auto batch = ds.get_batch(idx);
    CHECK(batch.data.sizes() == torch::IntArrayRef({3, c, 9, 3}));
    for (std::size_t i = 0; i < idx.size(); ++i) {
      CHECK(torch::equal(batch.data[i], reference_chw(reader->images(), idx[i])));
    }
  }
}

TEST_CASE("dataset normalises to float32 per channel") {
  auto reader = memory_reader(8, 4, 4, 3);
  const std::vector<float> mean{0.5f, 0.25f, 0.1f}, sd{0.2f, 0.5f, 2.0f};
  StoreDataset ds(reader, Normalize::mean_std(mean, sd));
  CHECK((ds.dtype() == torch::kFloat32));
  std::vector<std::size_t> idx{2, 5};
  auto batch = ds.get_batch(idx);
  CHECK(batch.data.dtype() == torch::kFloat32);
  CHECK(batch.data.sizes() == torch::IntArrayRef({2, 3, 4, 4}));
  for (std::size_t i = 0; i < idx.size(); ++i) {
    auto ref = reference_chw(reader->images(), idx[i]).to(torch::kFloat64) / 255.0;
    auto m = torch::tensor(std::vector<double>(mean.begin(), mean.end())).view({3, 1, 1});
    auto s = torch::tensor(std::vector<double>(sd.begin(), sd.end())).view({3, 1, 1});
    auto expected = ((ref - m) / s).to(torch::kFloat32);
    CHECK(torch::allclose(batch.data[i], expected, 1e-5, 1e-6));
  }
  // Plain float: x / 255.
  StoreDataset plain(reader, Normalize::float01());
  auto ex = plain.get(3);
  CHECK(torch::allclose(ex.data, reference_chw(reader->images(), 3).to(torch::kFloat32) / 255.0f));
}

TEST_CASE("dataset rejects bad options and out-of-range indices") {
  auto reader = memory_reader(4, 4, 4, 3);
  CHECK_THROWS_WITH_AS(StoreDataset(reader, Normalize::mean_std({0.5f, 0.5f}, {})),
                       doctest::Contains("mean has 2 values for images of 3 channels"),
                       UsageError);
  CHECK_THROWS_WITH_AS(StoreDataset(reader, Normalize::mean_std({0.5f}, {0.0f})),
                       doctest::Contains("not usable"), UsageError);
  CHECK_THROWS_AS(StoreDataset(std::shared_ptr<const StoreReader>()), UsageError);
  StoreDataset ds(reader);
  CHECK_THROWS_WITH_AS(ds.get(4), doctest::Contains("out of range"), UsageError);
}

TEST_CASE("dataset copies share the reader") {
  auto reader = memory_reader(4);
  StoreDataset a(reader);
  StoreDataset b = a;
  CHECK(&a.reader() == &b.reader());
  CHECK(reader.use_count() == 3);
}

namespace {

// Runs a stock loader epoch and returns the targets seen, checking each batch's pixels.
template <typename Loader>
std::vector<std::int64_t> stock_epoch(Loader& loader, const imgstore::test::MemoryReader& reader,
                                      std::size_t batch_size, std::size_t* batches) {
  std::vector<std::int64_t> seen;
  *batches = 0;
  for (auto& batch : loader) {
    ++*batches;
    REQUIRE(batch.data.dim() == 4);
    CHECK(batch.data.size(0) <= static_cast<std::int64_t>(batch_size));
    CHECK(batch.target.size(0) == batch.data.size(0));
    for (std::int64_t i = 0; i < batch.target.size(0); ++i) {
      const auto t = batch.target[i].template item<std::int64_t>();
      seen.push_back(t);
      if (i == 0) CHECK(torch::equal(batch.data[i], reference_chw(reader.images(), t)));
    }
  }
  return seen;
}

}  // namespace

TEST_CASE("stock make_data_loader yields every sample once per epoch with workers 0 and 2") {
  auto reader = memory_reader(103, 4, 4, 3);
  for (std::size_t workers : {0u, 2u}) {
    CAPTURE(workers);
    auto loader = torch::data::make_data_loader(
        StoreDataset(reader),
        torch::data::DataLoaderOptions().batch_size(16).workers(workers));
    for (int epoch = 0; epoch < 2; ++epoch) {
      std::size_t batches = 0;
      auto seen = stock_epoch(*loader, *reader, 16, &batches);
      CHECK(batches == 7);
      std::sort(seen.begin(), seen.end());
      std::vector<std::int64_t> all(103);
      std::iota(all.begin(), all.end(), 0);
      CHECK(seen == all);
    }
  }
}

TEST_CASE("stock loader works with a sequential sampler and float output") {
  auto reader = memory_reader(10, 4, 4, 1);
  StoreDataset ds(reader, Normalize::float01());
  auto loader = torch::data::make_data_loader<torch::data::samplers::SequentialSampler>(
      ds, torch::data::DataLoaderOptions().batch_size(4).workers(2));
  std::vector<std::int64_t> seen;
  for (auto& batch : *loader) {
    CHECK(batch.data.dtype() == torch::kFloat32);
    for (std::int64_t i = 0; i < batch.target.size(0); ++i) {
      seen.push_back(batch.target[i].item<std::int64_t>());
    }
  }
  std::vector<std::int64_t> all(10);
  std::iota(all.begin(), all.end(), 0);
  CHECK(seen == all);
}

TEST_CASE("stock loader rethrows a corrupt record as a worker exception naming it") {
  auto reader = memory_reader(20);
  reader->bad_index = 11;
  auto loader = torch::data::make_data_loader(
      StoreDataset(reader), torch::data::DataLoaderOptions().batch_size(5).workers(2));
  CHECK_THROWS_WITH([&] { for (auto& b : *loader) (void)b; }(),
                    doctest::Contains("key '00000011'"));
}

TEST_CASE("per-sample view serves the dataset's examples one at a time over the same reader") {
  auto reader = memory_reader(12, 5, 7, 3);
  StoreDataset ds(reader, Normalize::float01());
  auto samples = ds.samples();
  CHECK(samples.size().value() == 12);
  CHECK(&samples.dataset().reader() == &ds.reader());
  for (std::size_t i : {0u, 7u, 11u}) {
    auto ex = samples.get(i);
    CHECK(ex.data.sizes() == torch::IntArrayRef({3, 5, 7}));
    CHECK(ex.data.dtype() == torch::kFloat32);
    CHECK(ex.target.item<std::int64_t>() == static_cast<std::int64_t>(i));
    CHECK(torch::equal(ex.data, ds.get(i).data));
  }
  CHECK_THROWS_WITH_AS(samples.get(12), doctest::Contains("out of range"), UsageError);
}

TEST_CASE("per-sample view + Normalize<> + Stack<> through make_data_loader matches get_batch") {
  auto reader = memory_reader(37, 5, 6, 3);
  const std::vector<double> mean{0.5, 0.25, 0.1}, sd{0.2, 0.5, 2.0};
  StoreDataset plain(reader, Normalize::float01());
  StoreDataset normalised(reader, Normalize::mean_std({0.5f, 0.25f, 0.1f}, {0.2f, 0.5f, 2.0f}));
  // What Normalize<> computes, applied to a whole get_batch: float32 (x - mean[c]) / std[c].
  auto m = torch::tensor(mean, torch::kFloat32).view({1, 3, 1, 1});
  auto s = torch::tensor(sd, torch::kFloat32).view({1, 3, 1, 1});
  for (std::size_t workers : {0u, 2u}) {
    CAPTURE(workers);
    auto loader = torch::data::make_data_loader(
        plain.samples()
            .map(torch::data::transforms::Normalize<>(mean, sd))
            .map(torch::data::transforms::Stack<>()),
        torch::data::DataLoaderOptions().batch_size(8).workers(workers));
    std::vector<std::int64_t> seen;
    std::size_t batches = 0;
    for (auto& batch : *loader) {
      ++batches;
      REQUIRE(batch.data.dim() == 4);
      CHECK(batch.data.dtype() == torch::kFloat32);
      CHECK(batch.target.dtype() == torch::kInt64);
      // The same records through the batch path (a record's label is its index).
      std::vector<std::size_t> idx;
      for (std::int64_t i = 0; i < batch.target.size(0); ++i) {
        seen.push_back(batch.target[i].item<std::int64_t>());
        idx.push_back(static_cast<std::size_t>(seen.back()));
      }
      auto fast = plain.get_batch(idx);
      CHECK(torch::equal(batch.target, fast.target));
      CHECK(torch::equal(batch.data, fast.data.sub(m).div(s)));
      CHECK(torch::allclose(batch.data, normalised.get_batch(idx).data, 1e-5, 1e-6));
    }
    CHECK(batches == 5);
    std::sort(seen.begin(), seen.end());
    std::vector<std::int64_t> all(37);
    std::iota(all.begin(), all.end(), 0);
    CHECK(seen == all);
  }
}

TEST_CASE("BatchWriter crop and flip match a naive reference in uint8 and float") {
  for (std::uint32_t c : {1u, 2u, 3u, 4u}) {
    auto images = imgstore::test::indexed_images(1, 5, 6, c);
    const int h = 5, w = 6;
    const std::uint8_t* src = images.image(0);
    for (std::uint32_t pad : {0u, 2u}) {
      imgstore::detail::BatchWriter writer(images.shape, {}, pad, true);
      imgstore::detail::BatchWriter fwriter(images.shape, Normalize::mean_std({0.5f}, {0.25f}),
                                            pad, true);
      for (int sy = -static_cast<int>(pad); sy <= static_cast<int>(pad); ++sy) {
        for (int sx = -static_cast<int>(pad); sx <= static_cast<int>(pad); ++sx) {
          for (bool flip : {false, true}) {
            CAPTURE(c);
            CAPTURE(sy);
            CAPTURE(sx);
            CAPTURE(flip);
            imgstore::detail::Augmentation aug{sy, sx, flip};
            std::vector<std::uint8_t> out(images.shape.bytes());
            std::vector<float> fout(images.shape.bytes());
            writer.write(src, out.data(), 0, aug);
            fwriter.write(src, fout.data(), 0, aug);
            for (int ch = 0; ch < static_cast<int>(c); ++ch)
              for (int y = 0; y < h; ++y)
                for (int x = 0; x < w; ++x) {
                  const int xx = flip ? w - 1 - x : x;
                  const int ys = y + sy, xs = xx + sx;
                  const std::uint8_t want = (ys < 0 || ys >= h || xs < 0 || xs >= w)
                                                ? 0
                                                : src[(ys * w + xs) * static_cast<int>(c) + ch];
                  const std::size_t at = static_cast<std::size_t>((ch * h + y) * w + x);
                  REQUIRE(out[at] == want);
                  REQUIRE(fout[at] == doctest::Approx((want / 255.0 - 0.5) / 0.25).epsilon(1e-6));
                }
          }
        }
      }
    }
  }
}

TEST_CASE("BatchWriter converts 3-channel images of any width bit-exactly") {
  // Widths around vector-width blocks and a 224x224 image, against v * scale + bias.
  const std::vector<float> mean{0.485f, 0.456f, 0.406f}, sd{0.229f, 0.224f, 0.225f};
  std::mt19937 rng(7);
  for (std::uint32_t w : {1u, 5u, 15u, 16u, 17u, 31u, 33u, 47u, 224u}) {
    const std::uint32_t h = w == 224 ? 224 : 3;
    const Shape shape{h, w, 3};
    std::vector<std::uint8_t> hwc(shape.bytes());
    for (auto& b : hwc) b = static_cast<std::uint8_t>(rng() & 0xff);
    imgstore::detail::BatchWriter bytes(shape, {}, 0, false);
    imgstore::detail::BatchWriter floats(shape, Normalize::mean_std(mean, sd), 0, false);
    std::vector<std::uint8_t> out(shape.bytes());
    std::vector<float> fout(shape.bytes());
    bytes.write(hwc.data(), out.data(), 0, {});
    floats.write(hwc.data(), fout.data(), 0, {});
    const std::size_t plane = std::size_t{h} * w;
    for (std::size_t ch = 0; ch < 3; ++ch) {
      // The writer's constants, then v * scale + bias rounded after each step.
      const float scale = static_cast<float>(1.0 / (255.0 * sd[ch]));
      const float bias = static_cast<float>(-static_cast<double>(mean[ch]) / sd[ch]);
      for (std::size_t i = 0; i < plane; ++i) {
        CAPTURE(w);
        CAPTURE(ch);
        CAPTURE(i);
        const std::uint8_t v = hwc[i * 3 + ch];
        REQUIRE(out[ch * plane + i] == v);
        const float scaled = static_cast<float>(v) * scale;
        REQUIRE(fout[ch * plane + i] == scaled + bias);
      }
    }
  }
}

TEST_CASE("augmentation draws depend only on seed and epoch and index and do vary") {
  imgstore::detail::BatchWriter writer(Shape{32, 32, 3}, {}, 4, true);
  int flips = 0;
  std::set<int> shifts;
  for (std::uint64_t i = 0; i < 200; ++i) {
    auto a = writer.draw(1, 2, i), b = writer.draw(1, 2, i);
    CHECK(a.shift_x == b.shift_x);
    CHECK(a.shift_y == b.shift_y);
    CHECK(a.flip == b.flip);
    CHECK(a.shift_x >= -4);
    CHECK(a.shift_x <= 4);
    flips += a.flip;
    shifts.insert(a.shift_y);
  }
  CHECK(flips > 60);
  CHECK(flips < 140);
  CHECK(shifts.size() == 9);
}
