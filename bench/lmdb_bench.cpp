// imgstore-lmdb-bench: LMDB store throughput, once a skipped doctest ("lmdb benchmark").
//
//   imgstore-lmdb-bench [--count 100000] [--dir DIR] [--quick]
//
// Writes --count 32x32x3 images (batches of 1000 copies of one random batch) with and without
// fsync, then reads them back in a shuffled order: read_one with and without checksum
// verification (two passes each: the first may still fault pages in) and read_many(256). Prints
// images/s (wall) and images per CPU-second for each, and the ratios between them. --quick
// writes 2,000 images: it shows the program still runs, its figures mean little.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <exception>
#include <filesystem>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "imgstore/error.hpp"
#include "imgstore/store.hpp"

namespace {

namespace fs = std::filesystem;
using namespace imgstore;
using Clock = std::chrono::steady_clock;

constexpr Shape kCifar{32, 32, 3};

struct Figures {
  double wall_per_s = 0;  // images per wall-clock second
  double cpu_per_s = 0;   // images per CPU-second of this process
};

// Runs `work` once; n images per run.
template <typename F>
Figures measure(std::size_t n, F&& work) {
  const auto t0 = Clock::now();
  const std::clock_t c0 = std::clock();
  work();
  const double s = std::chrono::duration<double>(Clock::now() - t0).count();
  const double cpu = double(std::clock() - c0) / CLOCKS_PER_SEC;
  return Figures{n / std::max(s, 1e-9), n / std::max(cpu, 1e-9)};
}

void print_row(const std::string& what, const Figures& f) {
  std::printf("%-44s %12.0f %14.0f\n", what.c_str(), f.wall_per_s, f.cpu_per_s);
}

void print_ratio(const std::string& what, double ratio) {
  std::printf("%-44s %12.2fx\n", what.c_str(), ratio);
}

ImageBatch random_batch(std::size_t n) {
  ImageBatch b;
  b.resize(kCifar, n);
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> byte(0, 255), label(0, 9);
  for (auto& p : b.pixels) p = static_cast<std::uint8_t>(byte(rng));
  for (auto& l : b.labels) l = label(rng);
  return b;
}

// A scratch directory removed at scope exit.
struct Scratch {
  fs::path path;
  explicit Scratch(const fs::path& parent)
      : path(parent / ("imgstore-lmdb-bench-" + std::to_string(::getpid()))) {
    fs::create_directories(path);
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

void run(std::size_t n, const fs::path& parent) {
  const std::size_t batch_size = std::min<std::size_t>(1000, n);
  n -= n % batch_size;  // whole batches
  const ImageBatch batch = random_batch(batch_size);
  Scratch scratch(parent);
  const fs::path store = scratch.path / "bench.lmdb";
  StoreSpec spec;
  spec.split = "bench";
  spec.count = n;
  spec.shape = kCifar;

  std::printf("LMDB, %zu images of 32x32x3, in %s\n", n, scratch.path.c_str());
  std::printf("%-44s %12s %14s\n", "case", "images/s", "images/cpu-s");
  Figures write[2];
  for (bool durable : {false, true}) {
    WriterOptions opt;
    opt.durable = durable;
    opt.overwrite = true;
    write[durable] = measure(n, [&] {
      auto writer = create_store(Format::Lmdb, store, spec, opt);
      for (std::size_t i = 0; i < n; i += batch_size) writer->write(batch);
      writer->commit();
    });
    print_row(std::string("write, durable=") + (durable ? "1" : "0"), write[durable]);
  }

  std::vector<std::uint64_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937(1));
  std::vector<std::uint8_t> out(256 * kCifar.bytes());
  Figures one[2], many[2];
  for (bool verify : {true, false}) {
    ReaderOptions ro;
    ro.verify_checksums = verify;
    auto reader = open_store(store, ro);
    const std::string v = verify ? "1" : "0";
    for (int pass = 1; pass <= 2; ++pass) {
      one[verify] = measure(n, [&] {
        for (std::size_t i = 0; i < n; ++i) reader->read_one(order[i], out.data());
      });
      print_row("shuffled read_one, verify=" + v + ", pass " + std::to_string(pass), one[verify]);
    }
    many[verify] = measure(n, [&] {
      for (std::size_t i = 0; i < n; i += 256) {
        reader->read_many(order.data() + i, std::min<std::size_t>(256, n - i), out.data(), nullptr);
      }
    });
    print_row("shuffled read_many(256), verify=" + v, many[verify]);
  }
  std::printf("ratios (wall)\n");
  print_ratio("write: durable=0 / durable=1", write[0].wall_per_s / write[1].wall_per_s);
  print_ratio("read_one pass 2: verify=0 / verify=1", one[0].wall_per_s / one[1].wall_per_s);
  print_ratio("read_many(256) / read_one, verify=1", many[1].wall_per_s / one[1].wall_per_s);
}

}  // namespace

int main(int argc, char** argv) {
  std::size_t count = 100000;
  std::string dir = fs::temp_directory_path().string();
  bool quick = false;
  CLI::App app{"LMDB store write and shuffled read throughput"};
  app.add_option("--count", count, "Images written and read (default 100000)")
      ->check(CLI::Range(std::size_t{1}, std::size_t{100000000}));
  app.add_option("--dir", dir, "Where the scratch store goes (default the temp directory)");
  app.add_flag("--quick", quick, "2,000 images: checks the program runs, not the speed");
  CLI11_PARSE(app, argc, argv);
  if (quick) count = 2000;
  try {
    run(count, dir);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "imgstore-lmdb-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
