// Shared by the throughput benchmarks (bench/throughput.cpp, bench/photo_throughput.cpp):
// repeated measurements, epoch timers for the prefetch and stock loaders, process RSS, the CPU's
// name, and running a peer program that prints JSON.
#pragma once

#include <malloc.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "examples/common.hpp"

namespace imgstore::bench {

using namespace imgstore::examples;
using Json = nlohmann::ordered_json;

// Median and spread of a repeated measurement of images/s.
struct Rate {
  double median = 0, min = 0, max = 0;
  Json json() const { return {{"median", median}, {"min", min}, {"max", max}}; }
};

inline Rate rate_of(const std::vector<double>& v) {
  return {median(v), *std::min_element(v.begin(), v.end()), *std::max_element(v.begin(), v.end())};
}

template <class F>
inline Rate measure(int runs, F&& once) {
  once();  // warm-up: page cache, buffers, thread pools
  std::vector<double> v;
  for (int r = 0; r < runs; ++r) v.push_back(once());
  return rate_of(v);
}

// Runs a and b alternately, `runs` times each, so that drift in the machine's speed (this VM's
// drifts 2x within minutes) hits both alike; returns their rates.
template <class A, class B>
inline std::pair<Rate, Rate> alternate(int runs, A&& a, B&& b) {
  std::vector<double> va, vb;
  for (int r = 0; r < runs; ++r) va.push_back(a()), vb.push_back(b());
  return {rate_of(va), rate_of(vb)};
}

// alternate() after one warm-up pass of each.
template <class A, class B>
inline std::pair<Rate, Rate> measure_pair(int runs, A&& a, B&& b) {
  a(), b();
  return alternate(runs, a, b);
}

inline double prefetch_epoch(PrefetchLoader& loader) {
  std::size_t images = 0;
  auto t = Clock::now();
  for (auto& batch : loader) images += static_cast<std::size_t>(batch.data.size(0));
  return images / seconds_since(t);
}

inline double stock_epoch(const StoreDataset& ds, std::size_t batch, std::size_t workers) {
  auto loader = torch::data::make_data_loader(
      ds, torch::data::DataLoaderOptions().batch_size(batch).workers(workers));
  std::size_t images = 0;
  auto t = Clock::now();
  for (auto& b : *loader) images += static_cast<std::size_t>(b.data.size(0));
  return images / seconds_since(t);
}

// Training images/s of the example convnet on images of shape `s`, over `steps` steps; `next` fills (x, y) and returns false at epoch end.
template <class Next>
inline std::pair<double, double> train_rate(const Shape& s, int classes, int steps, Next&& next) {
  torch::manual_seed(1);
  ConvNet model(static_cast<int>(s.channels), static_cast<int>(s.height),
                static_cast<int>(s.width), classes);
  torch::optim::SGD opt(model->parameters(), torch::optim::SGDOptions(0.01).momentum(0.9));
  torch::Tensor x, y;
  std::size_t images = 0;
  double wait = 0;
  // Two untimed warm-up steps (allocator, kernels), then `steps` timed ones.
  for (int i = 0; i < 2; ++i) {
    next(x, y);
    opt.zero_grad();
    torch::nn::functional::cross_entropy(model->forward(x), y).backward();
    opt.step();
  }
  auto t = Clock::now();
  for (int i = 0; i < steps; ++i) {
    auto w = Clock::now();
    next(x, y);
    wait += seconds_since(w);
    opt.zero_grad();
    torch::nn::functional::cross_entropy(model->forward(x), y).backward();
    opt.step();
    images += static_cast<std::size_t>(x.size(0));
  }
  const double secs = seconds_since(t);
  return {images / secs, wait / secs};
}

// Resident set size of this process in bytes: live memory only. The programs keep freed
// memory for reuse (keep_freed_memory_for_reuse), and a leak could hide in that reserve, so it
// is handed back to the kernel first.
inline double rss_bytes() {
  ::malloc_trim(0);
  std::ifstream in("/proc/self/statm");
  double pages = 0, resident = 0;
  in >> pages >> resident;
  return resident * static_cast<double>(sysconf(_SC_PAGE_SIZE));
}

inline std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
  }
  return "unknown";
}

// Runs `cmd` (a shell command line) and parses what it prints as JSON; null with a note naming
// `what` if it fails or prints no JSON.
inline Json run_json_command(const std::string& cmd, const std::string& what) {
  std::unique_ptr<FILE, int (*)(FILE*)> pipe(::popen(cmd.c_str(), "r"), ::pclose);
  if (!pipe) return nullptr;
  std::string out;
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, pipe.get())) out.append(buf, n);
  const int status = ::pclose(pipe.release());
  if (status != 0) {
    fmt::print("  {} failed (exit status {}); skipped\n", what, status);
    return nullptr;
  }
  try {
    return Json::parse(out);
  } catch (const std::exception& e) {
    fmt::print("  {} printed no JSON ({}); skipped\n", what, e.what());
    return nullptr;
  }
}


}  // namespace imgstore::bench
