// Quick throughput figures, not tests: skipped unless run with
//   imgstore_torch_tests --no-skip -tc='bench*'
// Shuffled epochs of 50,000 32x32x3 images, batch 256: the prefetch loader, LibTorch's stock
// loader (workers 0 and 2) and an in-memory gather, over an in-memory reader and real stores.
#include <doctest/doctest.h>

#include <sys/resource.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>

#include <torch/torch.h>

#include "../unit/test_support.hpp"
#include "imgstore/torch/loader.hpp"
#include "torch_test_support.hpp"

using namespace imgstore;

namespace {

constexpr std::size_t kImages = 50000;
constexpr std::size_t kBatch = 256;

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// Best wall-clock rate and least process CPU time per image over `repeats` epochs. CPU time
// is the steadier figure on a shared machine; it counts every thread, page faults included.
struct Rate {
  double images_per_s = 0;
  double cpu_us_per_image = 1e300;
};

template <typename F>
Rate best_rate(int repeats, F&& epoch) {
  Rate best;
  for (int r = 0; r < repeats; ++r) {
    const double c0 = cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    const std::size_t n = epoch();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double c = cpu_seconds() - c0;
    best.images_per_s = std::max(best.images_per_s, n / s);
    best.cpu_us_per_image = std::min(best.cpu_us_per_image, 1e6 * c / n);
  }
  return best;
}

void print_row(const char* name, const char* what, const Rate& r) {
  std::printf("%-20s %-32s %9.0f images/s %7.2f cpu-us/image\n", name, what, r.images_per_s,
              r.cpu_us_per_image);
  std::fflush(stdout);
}

void bench_reader(const char* name, std::shared_ptr<const StoreReader> reader, int repeats) {
  auto row = [&](const char* what, const Rate& rate) { print_row(name, what, rate); };
  for (unsigned threads : {1u, 2u}) {
    for (bool transform : {false, true}) {
      LoaderOptions o;
      o.batch_size = kBatch;
      o.threads = threads;
      if (transform) {
        o.normalize = Normalize::mean_std({0.49f, 0.48f, 0.45f}, {0.25f, 0.24f, 0.26f});
        o.crop_padding = 4;
        o.horizontal_flip = true;
      }
      PrefetchLoader loader(reader, o);
      const Rate rate = best_rate(repeats, [&] {
        std::size_t n = 0;
        for (auto& b : loader) n += static_cast<std::size_t>(b.data.size(0));
        return n;
      });
      char what[64];
      std::snprintf(what, sizeof what, "prefetch t=%u %s", threads, transform ? "float+aug" : "uint8");
      row(what, rate);
    }
  }
  for (std::size_t workers : {0u, 2u}) {
    auto stock = torch::data::make_data_loader(
        StoreDataset(reader), torch::data::DataLoaderOptions().batch_size(kBatch).workers(workers));
    const Rate rate = best_rate(repeats, [&] {
      std::size_t n = 0;
      for (auto& b : *stock) n += static_cast<std::size_t>(b.data.size(0));
      return n;
    });
    char what[64];
    std::snprintf(what, sizeof what, "stock loader workers=%zu uint8", workers);
    row(what, rate);
  }
}

}  // namespace

TEST_CASE("bench: loaders over 50000 32x32x3 images" * doctest::skip()) {
  torch::set_num_threads(1);
  const int repeats = 5;
  auto images = imgstore::test::indexed_images(kImages, 32, 32, 3);

  // In-memory gather: the ceiling, a shuffled index_select from one resident tensor.
  {
    auto all = torch::from_blob(images.pixels.data(), {static_cast<std::int64_t>(kImages), 32, 32, 3},
                                torch::kUInt8)
                   .permute({0, 3, 1, 2})
                   .contiguous();
    const Rate rate = best_rate(repeats, [&] {
      auto perm = torch::randperm(static_cast<std::int64_t>(kImages), torch::kInt64);
      std::size_t n = 0;
      for (std::int64_t i = 0; i < static_cast<std::int64_t>(kImages); i += kBatch) {
        auto idx = perm.narrow(0, i, std::min<std::int64_t>(kBatch, kImages - i));
        auto b = all.index_select(0, idx);
        n += static_cast<std::size_t>(b.size(0));
      }
      return n;
    });
    print_row("in-memory tensor", "index_select gather", rate);
  }

  bench_reader("memory reader", std::make_shared<imgstore::test::MemoryReader>(images), repeats);

  if (const char* e = std::getenv("IMGSTORE_BENCH_MEMORY_ONLY"); e && *e == '1') return;
  imgstore::test::TempDir dir;
  WriterOptions w;
  w.durable = false;
  struct Case {
    const char* name;
    Format format;
    std::size_t chunk;
    bool verify;
  };
  for (const Case& c : {Case{"lmdb raw", Format::Lmdb, 0, true},
                        Case{"lmdb raw noverify", Format::Lmdb, 0, false},
                        Case{"hdf5 contiguous", Format::Hdf5, 0, true},
                        Case{"hdf5 chunk 256", Format::Hdf5, 256, true},
                        Case{"png folder", Format::PngFolder, 0, true}}) {
    if (const char* f = std::getenv("IMGSTORE_BENCH_ONLY"); f && std::string(c.name) != f) continue;
    const auto path = dir / store_file_name("train" + std::to_string(c.chunk), c.format);
    if (!std::filesystem::exists(path)) {
      w.hdf5.chunk_records = c.chunk;
      w.overwrite = true;
      store_many(c.format, path, images, {}, w);
    }
    ReaderOptions r;
    r.verify_checksums = c.verify;
    bench_reader(c.name, std::shared_ptr<const StoreReader>(open_store(path, r)),
                 c.format == Format::PngFolder ? 1 : repeats);
  }
}
