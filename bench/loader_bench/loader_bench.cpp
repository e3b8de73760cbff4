// imgstore-loader-bench: loader throughput, once a skipped doctest in the LibTorch tests.
//
//   imgstore-loader-bench [--images 50000] [--repeats 5] [--memory-only] [--only CASE]
//                         [--dir DIR] [--quick]
//
// Shuffled epochs of 32x32x3 images, batch 256: the prefetch loader (1 and 2 threads, uint8 and
// float with augmentation) and LibTorch's stock loader (workers 0 and 2) over an in-memory
// reader and over real stores (LMDB with and without checksum verification, HDF5 contiguous
// and chunked, PNG folder), against the ceiling of a shuffled index_select from one resident
// tensor. Each figure is the best wall-clock rate and the least CPU time per image over
// --repeats epochs (CPU time is the steadier figure on a shared machine); the last column is
// the rate as a fraction of the in-memory ceiling. --quick: 2,048 images, one epoch each, to
// show the program runs; its figures mean little.
#include <stdlib.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <memory>
#include <string>

#include <CLI/CLI.hpp>
#include <torch/torch.h>

#include "imgstore/error.hpp"
#include "imgstore/store.hpp"
#include "imgstore/torch/loader.hpp"
#include "torch_test_support.hpp"  // MemoryReader, indexed_images

namespace {

namespace fs = std::filesystem;
using namespace imgstore;

constexpr std::size_t kBatch = 256;

struct Options {
  std::size_t images = 50000;
  int repeats = 5;
  bool memory_only = false;
  std::string only;  // one store case by name
  std::string dir = fs::temp_directory_path().string();
};

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return u.ru_utime.tv_sec + u.ru_stime.tv_sec + 1e-6 * (u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

struct Rate {
  double images_per_s = 0;
  double cpu_us_per_image = 1e300;
};

// Best wall-clock rate and least process CPU time per image over `repeats` epochs. CPU time
// counts every thread, page faults included.
template <typename F>
Rate best_rate(int repeats, F&& epoch) {
  Rate best;
  for (int r = 0; r < repeats; ++r) {
    const double c0 = cpu_seconds();
    const auto t0 = std::chrono::steady_clock::now();
    const std::size_t n = epoch();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double c = cpu_seconds() - c0;
    best.images_per_s = std::max(best.images_per_s, n / std::max(s, 1e-9));
    best.cpu_us_per_image = std::min(best.cpu_us_per_image, 1e6 * c / n);
  }
  return best;
}

class Table {
 public:
  Table() {
    std::printf("%-20s %-32s %12s %13s %10s\n", "reader", "loader", "images/s", "cpu-us/image",
                "vs memory");
  }
  void row(const std::string& reader, const std::string& loader, const Rate& r) {
    if (ceiling_ == 0) ceiling_ = r.images_per_s;  // the first row is the in-memory ceiling
    std::printf("%-20s %-32s %12.0f %13.2f %9.2fx\n", reader.c_str(), loader.c_str(),
                r.images_per_s, r.cpu_us_per_image, r.images_per_s / ceiling_);
    std::fflush(stdout);
  }

 private:
  double ceiling_ = 0;
};

void bench_reader(Table& table, const std::string& name,
                  const std::shared_ptr<const StoreReader>& reader, int repeats) {
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
      table.row(name, "prefetch t=" + std::to_string(threads) + (transform ? " float+aug" : " uint8"),
                rate);
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
    table.row(name, "stock loader workers=" + std::to_string(workers) + " uint8", rate);
  }
}

// A scratch directory (mkdtemp) removed at scope exit.
class Scratch {
 public:
  explicit Scratch(const fs::path& parent) {
    std::string name = (parent / "imgstore-loader-bench-XXXXXX").string();
    if (!::mkdtemp(name.data())) throw IoError("cannot create a scratch directory in " + parent.string());
    path_ = name;
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

void run(const Options& opt) {
  torch::set_num_threads(1);
  const std::size_t n = opt.images;
  auto images = test::indexed_images(n, 32, 32, 3);
  std::printf("%zu shuffled 32x32x3 images per epoch, batch %zu, best of %d epochs\n", n, kBatch,
              opt.repeats);
  Table table;

  // In-memory gather: the ceiling, a shuffled index_select from one resident tensor.
  {
    auto all = torch::from_blob(images.pixels.data(), {static_cast<std::int64_t>(n), 32, 32, 3},
                                torch::kUInt8)
                   .permute({0, 3, 1, 2})
                   .contiguous();
    const Rate rate = best_rate(opt.repeats, [&] {
      auto perm = torch::randperm(static_cast<std::int64_t>(n), torch::kInt64);
      std::size_t done = 0;
      for (std::int64_t i = 0; i < static_cast<std::int64_t>(n); i += kBatch) {
        auto idx = perm.narrow(0, i, std::min<std::int64_t>(kBatch, static_cast<std::int64_t>(n) - i));
        done += static_cast<std::size_t>(all.index_select(0, idx).size(0));
      }
      return done;
    });
    table.row("in-memory tensor", "index_select gather", rate);
  }

  bench_reader(table, "memory reader", std::make_shared<test::MemoryReader>(images), opt.repeats);
  if (opt.memory_only) return;

  Scratch dir(opt.dir);
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
    if (!opt.only.empty() && opt.only != c.name) continue;
    const auto path = dir.path() / store_file_name("train" + std::to_string(c.chunk), c.format);
    if (!fs::exists(path)) {
      w.hdf5.chunk_records = c.chunk;
      store_many(c.format, path, images, {}, w);
    }
    ReaderOptions r;
    r.verify_checksums = c.verify;
    bench_reader(table, c.name, std::shared_ptr<const StoreReader>(open_store(path, r)),
                 c.format == Format::PngFolder ? 1 : opt.repeats);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Options opt;
  bool quick = false;
  CLI::App app{"Prefetch loader vs LibTorch's stock loader over memory and real stores"};
  app.add_option("--images", opt.images, "Images per epoch (default 50000)")
      ->check(CLI::Range(std::size_t{kBatch}, std::size_t{10000000}));
  app.add_option("--repeats", opt.repeats, "Epochs per case, the best is kept (default 5)")
      ->check(CLI::Range(1, 1000));
  app.add_flag("--memory-only", opt.memory_only, "Only the in-memory rows, no stores written");
  app.add_option("--only", opt.only, "Only this store case ('lmdb raw', 'hdf5 chunk 256', ...)");
  app.add_option("--dir", opt.dir, "Where the scratch stores go (default the temp directory)");
  app.add_flag("--quick", quick, "2,048 images, one epoch per case: checks it runs, not speed");
  CLI11_PARSE(app, argc, argv);
  if (quick) opt.images = 2048, opt.repeats = 1;
  try {
    run(opt);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "imgstore-loader-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
