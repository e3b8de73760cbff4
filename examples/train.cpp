// imgstore-train: trains a small convnet from any imgstore store, to show the loaders in a real
// training loop. Each epoch prints train loss, test accuracy, images/s and the share of wall
// time the loop spent waiting for data.
//
//   imgstore-train --train out/train.lmdb --test out/test.lmdb --epochs 5 --loader prefetch
//   imgstore-train --train photos/train.lmdb --test photos/val.lmdb --crop 64   # any-size photos
// With --crop S (needed for stores of any image size): training batches are RandomResizedCrop(S)
// + horizontal flip, evaluation is Resize(floor(S * 256 / 224)) + CenterCrop(S), both
// normalised with ImageNet's mean and std.
#include <cstdio>
#include <iostream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common.hpp"
#include "imgstore/error.hpp"
#include "imgstore/torch/dataset.hpp"
#include "imgstore/torch/loader.hpp"

namespace {

using namespace imgstore;
using namespace imgstore::examples;

struct Args {
  std::string train, test, loader = "prefetch", json;
  int epochs = 5, torch_threads = 0;
  std::size_t batch_size = 128;
  unsigned threads = 1, workers = 2;
  double lr = 0.05, momentum = 0.9, weight_decay = 5e-4;
  std::uint64_t seed = 1;
  std::size_t shuffle_window = 0;  // >0: quasi-random order (prefetch loader only)
  bool augment = false;
  std::uint32_t crop = 0;  // >0: RandomResizedCrop to crop x crop (eval: resize + centre crop)
};

struct EpochStats {
  double loss = 0, seconds = 0, wait_seconds = 0;
  std::size_t images = 0;
};

// One optimisation step on a float batch; returns the summed loss.
double step(ConvNet& model, torch::optim::SGD& opt, const torch::Tensor& x, const torch::Tensor& y) {
  opt.zero_grad();
  auto loss = torch::nn::functional::cross_entropy(model->forward(x), y);
  loss.backward();
  opt.step();
  return loss.item<double>() * static_cast<double>(x.size(0));
}

// What the store and --crop decide: normalisation, the transforms, and the convnet's input.
struct Inputs {
  Normalize normalize;
  CropTransform train_crop, eval_crop;  // kind None without --crop
  Shape shape;                          // the batches' image shape
};

Inputs inputs_for(const Args& a, const StoreReader& train) {
  Inputs in;
  in.shape = train.shape();
  if (a.crop == 0) {
    if (train.variable_size()) {
      throw UsageError(fmt::format("'{}' holds images of any size: pass --crop S", a.train));
    }
    auto [mean, stdev] = channel_stats(train);
    in.normalize = Normalize::mean_std(mean, stdev);
    return in;
  }
  if (a.augment) throw UsageError("--augment is for fixed-size stores; --crop flips already");
  in.normalize = Normalize::mean_std({0.485f, 0.456f, 0.406f}, {0.229f, 0.224f, 0.225f});
  in.train_crop = CropTransform::random_resized_crop(a.crop);
  in.train_crop.flip_probability = 0.5;
  in.eval_crop = CropTransform::resize_center_crop(a.crop);
  in.shape.height = in.shape.width = a.crop;
  return in;
}

int run(const Args& a) {
  if (a.torch_threads > 0) torch::set_num_threads(a.torch_threads);
  torch::manual_seed(a.seed);
  auto train_reader = std::shared_ptr<const StoreReader>(open_store(a.train));
  const Inputs in = inputs_for(a, *train_reader);
  const Normalize& normalize = in.normalize;
  DatasetOptions test_options;
  test_options.normalize = normalize;
  test_options.transform = in.eval_crop;
  auto test = open_dataset(a.test, test_options);
  const auto shape = in.shape;
  const auto& classes = train_reader->manifest().class_names;
  ConvNet model(static_cast<int>(shape.channels), static_cast<int>(shape.height),
                static_cast<int>(shape.width), classes.empty() ? 10 : static_cast<int>(classes.size()));
  torch::optim::SGD opt(model->parameters(), sgd_options(a.lr, a.momentum, a.weight_decay));
  fmt::print("train {} ({} x {}), test {} ({}), loader {}, batch {}, loader threads {}, "
             "torch threads {}, order {}\n", a.train, train_reader->size(),
             a.crop ? fmt::format("RandomResizedCrop {} + flip", a.crop) : to_string(shape), a.test,
             test.reader().size(), a.loader, a.batch_size,
             a.loader == "stock" ? a.workers : a.threads, torch::get_num_threads(),
             a.shuffle_window ? fmt::format("quasi-random, windows of {}", a.shuffle_window)
                              : std::string("shuffled"));

  // Each loader kind yields float batches; only the feeding differs.
  LoaderOptions lo;
  lo.batch_size = a.batch_size;
  lo.shuffle = true;
  lo.shuffle_window = a.shuffle_window;
  lo.seed = a.seed;
  lo.threads = a.threads;
  lo.normalize = normalize;
  lo.transform = in.train_crop;
  if (a.augment) augment(lo, shape);
  std::unique_ptr<PrefetchLoader> prefetch;
  std::optional<MemoryStore> memory;
  if (a.shuffle_window > 0 && a.loader != "prefetch") {
    throw UsageError("--shuffle-window needs --loader prefetch");
  }
  if (a.loader == "prefetch") prefetch = std::make_unique<PrefetchLoader>(train_reader, lo);
  else if (a.loader == "memory" && a.crop) throw UsageError("--loader memory needs a fixed-size store, without --crop");
  else if (a.loader == "memory") memory = MemoryStore::load(*train_reader);
  else if (a.loader != "stock") throw UsageError("--loader must be prefetch, stock or memory");
  StoreDataset stock_ds(train_reader, normalize, in.train_crop, a.seed);

  nlohmann::json log = nlohmann::json::array();
  for (int epoch = 0; epoch < a.epochs; ++epoch) {
    const double lr = set_cosine_lr(opt, a.lr, epoch, a.epochs);
    EpochStats st;
    const auto start = Clock::now();
    // Trains on every batch of an iterable loader, timing how long each batch was waited for.
    auto train_on = [&](auto& loader) {
      auto t = Clock::now();
      for (auto it = loader.begin(); it != loader.end();) {
        st.wait_seconds += seconds_since(t);
        st.loss += step(model, opt, it->data, it->target);
        st.images += static_cast<std::size_t>(it->data.size(0));
        t = Clock::now();
        ++it;
      }
      st.wait_seconds += seconds_since(t);
    };
    if (prefetch) {
      prefetch->set_epoch(static_cast<std::uint64_t>(epoch));
      train_on(*prefetch);
    } else if (memory) {
      const auto n = memory->images.size(0);
      auto perm = permutation(n, a.seed * 1000003 + static_cast<std::uint64_t>(epoch));
      for (std::int64_t first = 0; first < n; first += static_cast<std::int64_t>(a.batch_size)) {
        auto t = Clock::now();
        auto index = perm.slice(0, first, std::min<std::int64_t>(n, first + a.batch_size));
        auto x = normalise(memory->images.index_select(0, index), normalize.mean, normalize.std);
        auto y = memory->labels.index_select(0, index);
        st.wait_seconds += seconds_since(t);
        st.loss += step(model, opt, x, y);
        st.images += static_cast<std::size_t>(x.size(0));
      }
    } else {
      stock_ds.set_epoch(static_cast<std::uint64_t>(epoch));
      auto loader = torch::data::make_data_loader(
          stock_ds, torch::data::DataLoaderOptions().batch_size(a.batch_size).workers(a.workers));
      train_on(*loader);
    }
    st.seconds = seconds_since(start);
    const double acc = evaluate(model, test);
    const double rate = st.images / st.seconds;
    fmt::print("epoch {}/{}  lr {:.4f}  train loss {:.4f}  test acc {:.2f}%  {:.0f} img/s  "
               "data wait {:.1f}%\n", epoch + 1, a.epochs, lr, st.loss / std::max<std::size_t>(1, st.images),
               100 * acc, rate, 100 * st.wait_seconds / st.seconds);
    std::fflush(stdout);
    log.push_back({{"epoch", epoch + 1},
                   {"train_loss", st.loss / std::max<std::size_t>(1, st.images)},
                   {"test_accuracy", acc},
                   {"images_per_second", rate},
                   {"data_wait_share", st.wait_seconds / st.seconds}});
  }
  if (!a.json.empty()) {
    std::ofstream out(a.json);
    out << nlohmann::json{{"loader", a.loader}, {"train", a.train}, {"test", a.test},
                          {"batch_size", a.batch_size}, {"crop", a.crop},
                          {"shuffle_window", a.shuffle_window}, {"loader_threads", a.threads},
                          {"torch_threads", torch::get_num_threads()}, {"epochs", log}}
               .dump(2)
        << "\n";
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  imgstore::examples::keep_freed_memory_for_reuse();
  Args a;
  CLI::App app{"imgstore-train: train a small convnet from an imgstore store", "imgstore-train"};
  app.add_option("--train", a.train, "training store (PNG folder, LMDB or HDF5)")->required();
  app.add_option("--test", a.test, "test store")->required();
  app.add_option("--epochs", a.epochs)->capture_default_str();
  app.add_option("--batch-size", a.batch_size)->capture_default_str();
  app.add_option("--threads", a.threads, "prefetch loader threads")->capture_default_str();
  app.add_option("--workers", a.workers, "stock DataLoader workers")->capture_default_str();
  app.add_option("--torch-threads", a.torch_threads, "intra-op threads (0: LibTorch's default)");
  app.add_option("--loader", a.loader, "prefetch, stock or memory")->capture_default_str();
  app.add_option("--lr", a.lr)->capture_default_str();
  app.add_option("--momentum", a.momentum)->capture_default_str();
  app.add_option("--seed", a.seed)->capture_default_str();
  app.add_option("--shuffle-window", a.shuffle_window,
                 "quasi-random order for stores larger than memory: shuffle windows of W "
                 "consecutive records and the records within them (0: full shuffle)")
      ->capture_default_str();
  app.add_flag("--augment", a.augment, "random crop with padding and horizontal flip");
  app.add_option("--crop", a.crop, "RandomResizedCrop size for stores of any image size "
                 "(evaluation: resize + centre crop)");
  app.add_option("--json", a.json, "write per-epoch figures to this file");
  return run_main(app, argc, argv, [&] { return run(a); });
}
