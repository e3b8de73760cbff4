// imgstore-bench: the timed operations themselves (each returns the seconds of one run).
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>
#include <torch/torch.h>

#include "common/floors.hpp"
#include "common/limits.hpp"
#include "detail/png_codec.hpp"
#include "detail/random.hpp"
#include "experiments.hpp"
#include "imgstore/error.hpp"
#include "imgstore/torch/dataset.hpp"
#include "imgstore/torch/loader.hpp"

namespace imgstore::bench {

std::vector<std::uint64_t> read_order(std::uint64_t n, bool shuffled, std::uint64_t seed) {
  std::vector<std::uint64_t> order(n);
  for (std::uint64_t i = 0; i < n; ++i) order[i] = i;
  if (shuffled) {
    // The same permutation on every platform and library. (Its draw is next() % i, not the
    // loader's below(i): kept so that read orders, and so timings, compare with older runs.)
    detail::SplitMix rng(seed * detail::kGoldenGamma + n);
    detail::fisher_yates(order.data(), order.size(),
                         [&rng](std::uint64_t i) { return rng.next() % i; });
  }
  return order;
}

double time_store_one(const Variant& v, const fs::path& path, const ImageBatch& data) {
  const auto t0 = Clock::now();
  store_one(v.format, path, data.shape, data.image(0), data.labels[0], v.writer);
  return seconds_since(t0);
}

double time_store_many(const Variant& v, const fs::path& path, const ImageBatch& images,
                       const std::vector<std::string>& class_names) {
  const auto t0 = Clock::now();
  store_many(v.format, path, images, class_names, v.writer);
  return seconds_since(t0);
}

double time_read_one(const fs::path& path, std::uint64_t index) {
  std::vector<std::uint8_t> px;
  const auto t0 = Clock::now();
  auto reader = open_store(path);
  px.resize(reader->image_bytes());
  reader->read_one(index, px.data());
  return seconds_since(t0);
}

double time_read_many(const fs::path& path, const std::vector<std::uint64_t>& order) {
  std::vector<std::uint8_t> px;
  std::vector<std::int64_t> labels(order.size());
  tbb::task_arena one(1);  // the tutorial's reads are single-threaded; so are these
  const auto t0 = Clock::now();
  auto reader = open_store(path);
  px.resize(order.size() * reader->image_bytes());
  one.execute([&] { reader->read_many(order.data(), order.size(), px.data(), labels.data()); });
  return seconds_since(t0);
}

double time_seqread(const fs::path& store, unsigned threads, std::uint64_t& bytes) {
  const auto files = store_files(store);  // listed outside the timing
  const FloorRun run = read_floor(files, kFloorPiece, threads);
  bytes = run.bytes;
  return run.seconds;
}

double time_gather(const ImageBatch& data, const std::vector<std::uint64_t>& order,
                   std::size_t batch, unsigned threads) {
  return gather_run(data.pixels.data(), data.shape.bytes(), order, batch, threads).seconds;
}

std::vector<std::vector<std::uint8_t>> encode_pngs(const ImageBatch& data, std::size_t n,
                                                   int level) {
  std::vector<std::vector<std::uint8_t>> out(n);
  tbb::parallel_for(std::size_t{0}, n, [&](std::size_t i) {
    detail::encode_png(data.image(i), data.shape, level, out[i]);
  });
  return out;
}

std::vector<std::vector<std::uint8_t>> decode_sample(const std::vector<std::vector<std::uint8_t>>& pngs,
                                                     std::size_t n) {
  const auto m = static_cast<std::ptrdiff_t>(std::min({n, pngs.size(), kDecodeLimitSample}));
  return {pngs.begin(), pngs.begin() + m};
}

double time_decode_limit(const std::vector<std::vector<std::uint8_t>>& sample, std::size_t n,
                         const Shape& shape, std::string& decoder) {
  const DecodeLimit limit = png_decode_limit(sample, shape, 1, 1);
  decoder = limit.decoder;
  return static_cast<double>(n) / limit.single_thread_ips;
}

double time_epoch_prefetch(const fs::path& store, std::size_t batch, unsigned threads,
                           std::uint64_t seed, std::uint64_t epoch, bool time_open,
                           std::uint64_t& images) {
  LoaderOptions opts;
  opts.batch_size = batch;
  opts.threads = threads;
  opts.seed = seed;
  opts.shuffle = true;
  const auto t_open = Clock::now();
  PrefetchLoader loader(store, opts);
  loader.set_epoch(epoch);
  images = 0;
  const auto t0 = time_open ? t_open : Clock::now();
  for (auto& b : loader) images += static_cast<std::uint64_t>(b.data.size(0));
  return seconds_since(t0);
}

double time_epoch_stock(const fs::path& store, std::size_t batch, unsigned threads,
                        bool time_open, std::uint64_t& images) {
  const auto t_open = Clock::now();
  auto ds = open_dataset(store);
  const std::size_t n = ds.reader().size();
  auto loader = torch::data::make_data_loader(
      std::move(ds), torch::data::samplers::RandomSampler(n),
      torch::data::DataLoaderOptions().batch_size(batch).workers(threads));
  images = 0;
  const auto t0 = time_open ? t_open : Clock::now();
  for (auto& b : *loader) images += static_cast<std::uint64_t>(b.data.size(0));
  return seconds_since(t0);
}

}  // namespace imgstore::bench
