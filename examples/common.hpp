// Shared by the examples: the small convnet, an in-memory copy of a store, channel statistics,
// and a few timing helpers.
#pragma once

#include <malloc.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <fstream>
#include <iostream>
#include <numeric>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <torch/torch.h>

#include "imgstore/error.hpp"
#include "imgstore/store.hpp"
#include "imgstore/torch/dataset.hpp"
#include "imgstore/torch/loader.hpp"

namespace imgstore::examples {

using Clock = std::chrono::steady_clock;

// LibTorch's CPU allocator mallocs every activation and gradient afresh at each step. glibc
// serves blocks above its mmap threshold (which adapts only up to 32 MiB) with new mappings and
// unmaps them on free, so each step page-faults its activations in again: one epoch of
// `imgstore-train --crop 64` (batch 128, 64 MiB activations) took 1.04M page faults and 3-4x
// the time on the 2-core VM. With freed memory kept in the heap, later steps reuse it (0.10M
// faults). Process-wide, so the programs call it first thing; the library never does.
inline void keep_freed_memory_for_reuse() {
  ::mallopt(M_MMAP_THRESHOLD, 1 << 30);
  ::mallopt(M_TRIM_THRESHOLD, 1 << 30);
}

inline double seconds_since(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// CPU time of the whole process (training, loader and communication threads): on a shared
// machine images per CPU-second compares configurations where wall time cannot.
inline double process_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const auto n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

// Three conv blocks (conv-BN-ReLU-maxpool) and two fully connected layers. Small enough to
// train Fashion-MNIST to ~91% in a few CPU epochs on 2 cores.
struct ConvNetImpl : torch::nn::Module {
  ConvNetImpl(int channels, int height, int width, int classes, int base = 16) {
    torch::nn::Sequential seq;
    int in = channels;
    for (int out : {base, 2 * base, 4 * base}) {  // conv-BN-ReLU-maxpool blocks
      seq->push_back(torch::nn::Conv2d(torch::nn::Conv2dOptions(in, out, 3).padding(1).bias(false)));
      seq->push_back(torch::nn::BatchNorm2d(out));
      seq->push_back(torch::nn::ReLU(torch::nn::ReLUOptions(true)));
      seq->push_back(torch::nn::MaxPool2d(2));
      in = out;
    }
    features = register_module("features", seq);
    const int flat = 4 * base * (height / 8) * (width / 8);
    fc1 = register_module("fc1", torch::nn::Linear(flat, 128));
    dropout = register_module("dropout", torch::nn::Dropout(0.25));
    fc2 = register_module("fc2", torch::nn::Linear(128, classes));
  }
  torch::Tensor forward(torch::Tensor x) {
    x = features->forward(x).flatten(1);
    x = dropout->forward(torch::relu(fc1->forward(x)));
    return fc2->forward(x);
  }
  torch::nn::Sequential features{nullptr};
  torch::nn::Linear fc1{nullptr}, fc2{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(ConvNet);

// Per-channel mean and std of pixel/255 over up to `limit` records (for normalisation).
inline std::pair<std::vector<float>, std::vector<float>> channel_stats(const StoreReader& reader,
                                                                       std::size_t limit = 10000) {
  const std::size_t n = std::min(limit, reader.size());
  const auto c = reader.shape().channels;
  std::vector<std::uint64_t> idx(n);
  std::iota(idx.begin(), idx.end(), 0);
  std::vector<std::uint8_t> px(n * reader.image_bytes());
  reader.read_many(idx.data(), n, px.data(), nullptr);
  std::vector<double> sum(c, 0), sq(c, 0);
  for (std::size_t i = 0; i < px.size(); ++i) {
    const double v = px[i] / 255.0;
    sum[i % c] += v;
    sq[i % c] += v * v;
  }
  std::vector<float> mean(c), stdev(c);
  const double per_channel = static_cast<double>(px.size() / c);
  for (std::size_t k = 0; k < c; ++k) {
    mean[k] = static_cast<float>(sum[k] / per_channel);
    stdev[k] = static_cast<float>(std::sqrt(std::max(1e-12, sq[k] / per_channel - mean[k] * mean[k])));
  }
  return {mean, stdev};
}

// A whole store in RAM as one uint8 [N,C,H,W] tensor plus int64 labels: the in-memory limit.
struct MemoryStore {
  torch::Tensor images;  // uint8 [N,C,H,W]
  torch::Tensor labels;  // int64 [N]

  static MemoryStore load(const StoreReader& reader) {
    const auto s = reader.shape();
    const auto n = static_cast<std::int64_t>(reader.size());
    auto hwc = torch::empty({n, s.height, s.width, s.channels}, torch::kUInt8);
    auto labels = torch::empty({n}, torch::kInt64);
    std::vector<std::uint64_t> idx(static_cast<std::size_t>(n));
    std::iota(idx.begin(), idx.end(), 0);
    reader.read_many(idx.data(), idx.size(), hwc.data_ptr<std::uint8_t>(),
                     labels.data_ptr<std::int64_t>());
    return {hwc.permute({0, 3, 1, 2}).contiguous(), labels};
  }

  // Gathers `index` rows into `out` (preallocated uint8 [B,C,H,W]) and `out_labels`.
  void gather(const torch::Tensor& index, torch::Tensor& out, torch::Tensor& out_labels) const {
    torch::index_select_out(out, images, 0, index);
    torch::index_select_out(out_labels, labels, 0, index);
  }
};

// Seeded permutation of [0, n), as int64 tensor.
inline torch::Tensor permutation(std::int64_t n, std::uint64_t seed) {
  std::vector<std::int64_t> p(static_cast<std::size_t>(n));
  std::iota(p.begin(), p.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(p.begin(), p.end(), rng);
  return torch::from_blob(p.data(), {n}, torch::kInt64).clone();
}

// Normalises a uint8 [B,C,H,W] batch to float32 with per-channel mean/std.
inline torch::Tensor normalise(const torch::Tensor& batch, const std::vector<float>& mean,
                               const std::vector<float>& stdev) {
  const auto c = static_cast<std::int64_t>(mean.size());
  auto m = torch::tensor(mean).view({1, c, 1, 1});
  auto s = torch::tensor(stdev).view({1, c, 1, 1});
  return (batch.to(torch::kFloat32).div_(255.0f) - m) / s;
}

// The example convnet for a store's images and classes (10 when the store names none).
inline ConvNet make_convnet(const StoreReader& train) {
  const auto shape = train.shape();
  const auto& classes = train.manifest().class_names;
  return ConvNet(static_cast<int>(shape.channels), static_cast<int>(shape.height),
                 static_cast<int>(shape.width), classes.empty() ? 10 : static_cast<int>(classes.size()));
}

inline torch::optim::SGDOptions sgd_options(double lr, double momentum, double weight_decay) {
  return torch::optim::SGDOptions(lr).momentum(momentum).weight_decay(weight_decay).nesterov(true);
}

// Cosine learning-rate schedule over the epochs; returns the epoch's rate.
inline double set_cosine_lr(torch::optim::SGD& opt, double base_lr, int epoch, int epochs) {
  const double lr = 0.5 * base_lr * (1 + std::cos(M_PI * epoch / std::max(1, epochs)));
  for (auto& group : opt.param_groups()) static_cast<torch::optim::SGDOptions&>(group.options()).lr(lr);
  return lr;
}

// The convnet wants test images of the training images' shape, at least 8x8.
inline void check_convnet_stores(const StoreReader& train, const std::string& train_path,
                                 const StoreReader& test, const std::string& test_path) {
  const auto shape = train.shape(), tshape = test.shape();
  if (tshape.height != shape.height || tshape.width != shape.width || tshape.channels != shape.channels) {
    throw UsageError(fmt::format("test store '{}' holds {} images, training store '{}' holds {}",
                                 test_path, to_string(tshape), train_path, to_string(shape)));
  }
  if (shape.height < 8 || shape.width < 8) {
    throw UsageError(fmt::format("the convnet needs images of at least 8x8, '{}' holds {}", train_path,
                                 to_string(shape)));
  }
}

// Random crop with padding (4 pixels for 32x32 and larger, else 2) and horizontal flip.
inline void augment(LoaderOptions& lo, const Shape& shape) {
  lo.crop_padding = shape.height >= 32 ? 4 : 2;
  lo.horizontal_flip = true;
}

// Parses the command line and runs `body`, mapping errors to exit codes: 2 for usage,
// 1 for anything else, with the program's name and the message on stderr.
template <class Body>
int run_main(CLI::App& app, int argc, char** argv, Body&& body) {
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }
  try {
    return body();
  } catch (const UsageError& e) {
    std::cerr << app.get_name() << ": " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << app.get_name() << ": " << e.what() << "\n";
    return 1;
  }
}

// Test accuracy of `model` over every record of `test`, in chunks of 1000 (eval mode, no grad).
inline double evaluate(ConvNet& model, const StoreDataset& test) {
  torch::NoGradGuard no_grad;
  model->eval();
  std::size_t correct = 0;
  const std::size_t n = test.reader().size(), chunk = 1000;
  std::vector<std::uint64_t> idx;
  for (std::size_t first = 0; first < n; first += chunk) {
    const std::size_t count = std::min(chunk, n - first);
    idx.resize(count);
    std::iota(idx.begin(), idx.end(), first);
    auto batch = test.read_batch(idx.data(), count);
    auto pred = model->forward(batch.data).argmax(1);
    correct += static_cast<std::size_t>(pred.eq(batch.target).sum().item<std::int64_t>());
  }
  model->train();
  return n ? static_cast<double>(correct) / static_cast<double>(n) : 0;
}

}  // namespace imgstore::examples
