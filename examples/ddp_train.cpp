// imgstore-ddp-train: data-parallel training of the example convnet over N processes, with
// LibTorch's own c10d (TCPStore rendezvous, Gloo collectives). Each rank reads its shard of the
// store with imgstore::PrefetchLoader (DistributedSampler semantics, or whole shards of a
// sharded store), gradients are averaged with one allreduce per step, rank 0 evaluates.
//
//   imgstore-ddp-train --nproc 2 --train train.lmdb --test test.lmdb --epochs 4
//       starts 2 ranks on this machine (fork/exec of itself with --rank r --world-size 2)
//   MASTER_ADDR=node0 MASTER_PORT=29500 RANK=1 WORLD_SIZE=4 imgstore-ddp-train --train ...
//       runs one rank of a run across machines (docs/distributed.md)
//
// Everything a rank can check alone (stores, divisibility, shard counts, a checkpoint to resume)
// is checked before training: by the launcher for every rank before it starts any, and by each
// rank, which then agrees with the others in one collective so that nobody trains alone.
// Plumbing: ddp_group.hpp (collectives), ddp_checkpoint.hpp (checkpoints), launcher.hpp (ranks).
#if !__has_include(<gloo/algorithm.h>)
// ProcessGroupGloo.hpp includes Gloo's headers (Debian: libgloo-dev). Without them, build a
// stub that says so instead of breaking the whole build.
#include <cstdio>
int main() {
  std::fprintf(stderr, "imgstore-ddp-train: built without Gloo's headers; install libgloo-dev and rebuild\n");
  return 2;
}
#else

#include <fstream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common.hpp"
#include "ddp_checkpoint.hpp"
#include "ddp_group.hpp"
#include "launcher.hpp"

namespace {

using namespace imgstore;
using namespace imgstore::examples;
using nlohmann::json;

struct Args {
  std::string train, test, checkpoint, resume, json_out;
  RankOptions ranks;
  int epochs = 4, torch_threads = 1;
  std::size_t batch_size = 128, global_batch = 0;
  unsigned threads = 1;
  double lr = 0.05, momentum = 0.9, weight_decay = 5e-4, timeout = 300;
  std::uint64_t seed = 1, max_steps = 0, checkpoint_every = 0;
  bool whole_shards = false, augment = false;
};

std::size_t per_rank_batch(const Args& a, int world) {
  if (!a.global_batch) return a.batch_size;
  if (a.global_batch % static_cast<std::size_t>(world)) {
    throw UsageError(fmt::format("--global-batch {} is not divisible by {} ranks: pick a "
                                 "multiple of the rank count", a.global_batch, world));
  }
  return a.global_batch / static_cast<std::size_t>(world);
}

// One rank's data, model and loader, built and checked before any communication.
struct Setup {
  int rank = 0, world = 1;
  std::size_t batch_size = 0;
  std::shared_ptr<const StoreReader> train;
  std::unique_ptr<StoreDataset> test;
  std::unique_ptr<PrefetchLoader> loader;
  ConvNet model{nullptr};
  std::unique_ptr<torch::optim::SGD> opt;
  Resume resume;  // resume.dir empty: a fresh start

  Setup(const Args& a, int rank_, int world_) : rank(rank_), world(world_), batch_size(per_rank_batch(a, world_)) {
    if (batch_size == 0) throw UsageError("the batch size must be at least 1");
    if (a.epochs < 1) throw UsageError("--epochs must be at least 1");
    train = std::shared_ptr<const StoreReader>(open_store(a.train));
    if (train->size() == 0) throw UsageError(fmt::format("training store '{}' is empty", a.train));
    auto [mean, stdev] = channel_stats(*train);
    const Normalize normalize = Normalize::mean_std(mean, stdev);
    DatasetOptions test_options;
    test_options.normalize = normalize;
    test = std::make_unique<StoreDataset>(a.test, test_options);
    check_convnet_stores(*train, a.train, test->reader(), a.test);
    LoaderOptions lo;
    lo.batch_size = batch_size;
    lo.shuffle = true;
    lo.seed = a.seed;
    lo.threads = a.threads;
    lo.normalize = normalize;
    lo.rank = static_cast<std::size_t>(rank);
    lo.world_size = static_cast<std::size_t>(world);
    lo.whole_shards = a.whole_shards;
    if (a.augment) augment(lo, train->shape());
    loader = std::make_unique<PrefetchLoader>(train, lo);
    torch::manual_seed(a.seed);  // the same everywhere, and rank 0's values are broadcast anyway
    model = make_convnet(*train);
    opt = std::make_unique<torch::optim::SGD>(model->parameters(), sgd_options(a.lr, a.momentum, a.weight_decay));
    if (!a.resume.empty()) resume = load_checkpoint(a.resume, rank, world, *loader, model, *opt);
  }

  // Hashes everything the ranks must agree on, so that one collective compares it.
  std::int64_t config_hash(const Args& a) const {
    const std::string cfg = fmt::format(
        "{} {} {} {} {} {} {} {} {} {} {}", to_hex64(train->manifest().content_digest),
        to_hex64(test->reader().manifest().content_digest), a.seed, batch_size, a.lr, a.momentum,
        a.weight_decay, a.epochs, a.whole_shards, a.augment, resume.dir.empty() ? 0 : resume.meta.global_step);
    return static_cast<std::int64_t>(xxh3_64(cfg.data(), cfg.size()) >> 16);
  }
};

struct EpochFigures {  // one rank's
  double loss = 0, images = 0, wait = 0, comm = 0;
  std::uint64_t steps = 0;
};

struct Rank {
  const Args& a;
  Setup& s;
  Group& g;
  GradientAverager average_gradients{*s.model};
  std::uint64_t global_step = 0;
  bool stop = false;

  template <class... T>
  void say(fmt::format_string<T...> f, T&&... args) {
    fmt::print("[rank {}/{}] {}\n", s.rank, s.world, fmt::format(f, std::forward<T>(args)...));
    std::fflush(stdout);
  }

  void save_checkpoint(std::uint64_t epoch, std::uint64_t steps_in_epoch) {
    const auto dir = save_rank_files(a.checkpoint, global_step, s.rank, *s.loader,
                                     flatten(float_buffers(*s.model)), s.model, *s.opt);
    g.barrier();  // every rank's files are in place
    if (s.rank != 0) return;
    publish_checkpoint(a.checkpoint, global_step,
                       {{"world_size", s.world}, {"epoch", epoch}, {"steps_in_epoch", steps_in_epoch},
                        {"steps_per_epoch", s.loader->batches_per_epoch()}, {"seed", a.seed},
                        {"batch_size", s.batch_size}, {"lr", a.lr}, {"epochs", a.epochs}, {"train", a.train},
                        {"train_digest", to_hex64(s.train->manifest().content_digest)}});
    say("checkpoint '{}' (epoch {}, step {} of {})", dir.string(), epoch + 1, steps_in_epoch,
        s.loader->batches_per_epoch());
  }

  // One pass over this rank's part of the epoch, from step `done` on (a resumed pass).
  EpochFigures run_epoch(int epoch, std::uint64_t done) {
    EpochFigures f;
    f.steps = done;
    const std::size_t steps = s.loader->batches_per_epoch();
    auto t = Clock::now();
    for (auto it = s.loader->begin(); it != s.loader->end();) {
      f.wait += seconds_since(t);
      // Dropout draws from a generator seeded per rank and step, so a resumed run continues
      // exactly as an uninterrupted one.
      const std::uint64_t key[] = {a.seed, global_step, static_cast<std::uint64_t>(s.rank)};
      torch::manual_seed(xxh3_64(key, sizeof key));
      s.opt->zero_grad();
      auto l = torch::nn::functional::cross_entropy(s.model->forward(it->data), it->target);
      l.backward();
      const auto tc = Clock::now();
      average_gradients(g, s.world);
      f.comm += seconds_since(tc);
      s.opt->step();
      f.loss += l.item<double>() * static_cast<double>(it->data.size(0));
      f.images += static_cast<double>(it->data.size(0));
      ++f.steps;
      ++global_step;
      stop = a.max_steps && global_step >= a.max_steps;
      // Mid-epoch checkpoints hold the loop's batch (it counts as consumed); one taken at the
      // epoch's end is written after the epoch's evaluation.
      if (!a.checkpoint.empty() && f.steps < steps &&
          (stop || (a.checkpoint_every && global_step % a.checkpoint_every == 0))) {
        save_checkpoint(static_cast<std::uint64_t>(epoch), f.steps);
      }
      if (stop) return f;
      t = Clock::now();
      ++it;
    }
    f.wait += seconds_since(t);
    return f;
  }

  // Sums the epoch's figures over the ranks; rank 0 evaluates, prints and returns the log entry.
  json report_epoch(int epoch, const EpochFigures& f, double seconds, double cpu, double totals[3]) {
    average_buffers(g, *s.model, s.world);
    auto stats = torch::tensor({f.loss, f.images, f.wait, f.comm, cpu}, torch::kFloat64);
    g.allreduce(stats);
    const double images = stats[1].item<double>(), rate = images / seconds;
    for (const double x : {images, seconds, stats[4].item<double>()}) *totals++ += x;  // images, wall, cpu
    if (s.rank != 0) return nullptr;
    const double acc = evaluate(s.model, *s.test);
    const double mean_loss = stats[0].item<double>() / std::max(1.0, images);
    const double wait_share = stats[2].item<double>() / s.world / seconds;  // of the wall time,
    const double comm_share = stats[3].item<double>() / s.world / seconds;  // averaged over ranks
    const double per_cpu = images / std::max(1e-9, stats[4].item<double>());
    say("epoch {}/{}  steps {}  train loss {:.4f}  test acc {:.2f}%  {:.0f} img/s (all ranks)  "
        "{:.0f} img/cpu-s  data wait {:.1f}%  allreduce {:.1f}%", epoch + 1, a.epochs, f.steps,
        mean_loss, 100 * acc, rate, per_cpu, 100 * wait_share, 100 * comm_share);
    return {{"epoch", epoch + 1}, {"steps", f.steps}, {"train_loss", mean_loss}, {"test_accuracy", acc},
            {"images_per_second", rate}, {"images_per_cpu_second", per_cpu}, {"seconds", seconds},
            {"data_wait_share", wait_share}, {"allreduce_share", comm_share}};
  }

  int train() {
    const bool resumed = !s.resume.dir.empty();
    const int start_epoch = resumed ? static_cast<int>(s.loader->epoch()) : 0;
    if (resumed) global_step = s.resume.meta.global_step;
    bool resumed_pass = resumed && s.resume.meta.steps_in_epoch < s.resume.meta.steps_per_epoch;
    broadcast_state(g, *s.model);  // every rank loaded rank 0's model; this makes sure
    if (s.resume.own_buffers.defined()) unflatten(s.resume.own_buffers, float_buffers(*s.model));
    if (s.rank == 0) {
      say("train {} ({} x {}), test {} ({}), {} ranks, batch {} per rank ({} global), {} steps per epoch, "
          "loader threads {}, torch threads {}{}", a.train, s.train->size(), to_string(s.train->shape()), a.test,
          s.test->reader().size(), s.world, s.batch_size, s.batch_size * static_cast<std::size_t>(s.world),
          s.loader->batches_per_epoch(), a.threads, torch::get_num_threads(),
          resumed ? fmt::format(", resumed from '{}' at step {}", s.resume.dir.string(), global_step) : "");
    }
    json log = json::array();
    double totals[3] = {0, 0, 0};  // images, seconds, cpu seconds
    for (int epoch = start_epoch; epoch < a.epochs && !stop; ++epoch) {
      set_cosine_lr(*s.opt, a.lr, epoch, a.epochs);
      if (!resumed_pass) s.loader->set_epoch(static_cast<std::uint64_t>(epoch));
      const auto start = Clock::now();
      const double cpu_start = process_cpu_seconds();
      const EpochFigures f = run_epoch(epoch, resumed_pass ? s.resume.meta.steps_in_epoch : 0);
      resumed_pass = false;
      const json entry = report_epoch(epoch, f, seconds_since(start), process_cpu_seconds() - cpu_start, totals);
      if (!entry.is_null()) log.push_back(entry);
      if (!a.checkpoint.empty() && f.steps == s.loader->batches_per_epoch()) {
        save_checkpoint(static_cast<std::uint64_t>(epoch), f.steps);
      }
    }
    if (stop) say("stopped after --max-steps {}", a.max_steps);
    say("params xxh3 {}", to_hex64(state_hash(*s.model)));
    if (s.rank == 0 && !a.json_out.empty()) {
      std::ofstream(a.json_out) << json{{"train", a.train}, {"test", a.test}, {"world_size", s.world},
          {"batch_size_per_rank", s.batch_size}, {"loader_threads", a.threads}, {"lr", a.lr},
          {"torch_threads", torch::get_num_threads()}, {"epochs", log},
          {"images_per_second", totals[1] > 0 ? totals[0] / totals[1] : 0},
          {"images_per_cpu_second", totals[2] > 0 ? totals[0] / totals[2] : 0}}.dump(2) << "\n";
    }
    return 0;
  }
};

// One rank: check everything locally, meet the others, agree that all are ready, train. A rank
// that fails its checks still joins, so the others stop too instead of waiting until the timeout.
int run_rank(const Args& a, const RankOptions& where) {
  torch::set_num_threads(std::max(1, a.torch_threads));
  const std::uint16_t port = master_port(where);
  std::unique_ptr<Setup> s;
  const SetupOutcome outcome = attempt_setup([&] { s = std::make_unique<Setup>(a, where.rank, where.world_size); });
  Group g = connect(master_addr(where), port, where.rank, where.world_size, a.timeout);
  const int others = agree_to_start(g, outcome, s ? static_cast<std::int64_t>(s->loader->batches_per_epoch()) : 0,
                                    s ? s->config_hash(a) : 0, fmt::format("imgstore-ddp-train: rank {}", where.rank));
  return others ? others : Rank{a, *s, g}.train();
}

}  // namespace

int main(int argc, char** argv) {
  imgstore::examples::keep_freed_memory_for_reuse();
  Args a;
  CLI::App app{"imgstore-ddp-train: data-parallel training of the example convnet (c10d + Gloo)",
               "imgstore-ddp-train"};
  app.add_option("--train", a.train, "training store (any format; sharded stores too)")->required();
  app.add_option("--test", a.test, "test store (rank 0 evaluates each epoch)")->required();
  app.add_option("--epochs", a.epochs)->capture_default_str();
  auto* bs = app.add_option("--batch-size", a.batch_size, "batch per rank (global = N x this)")->capture_default_str();
  app.add_option("--global-batch", a.global_batch, "global batch, split evenly over the ranks")->excludes(bs);
  app.add_option("--lr", a.lr)->capture_default_str();
  app.add_option("--momentum", a.momentum)->capture_default_str();
  app.add_option("--weight-decay", a.weight_decay)->capture_default_str();
  app.add_option("--seed", a.seed)->capture_default_str();
  app.add_option("--threads", a.threads, "prefetch loader threads per rank")->capture_default_str();
  app.add_option("--torch-threads", a.torch_threads, "intra-op threads per rank")->capture_default_str();
  app.add_flag("--augment", a.augment, "random crop with padding and horizontal flip");
  app.add_flag("--whole-shards", a.whole_shards, "sharded stores: each rank reads whole shards");
  app.add_option("--nproc", a.ranks.nproc, "start this many ranks on this machine");
  app.add_option("--rank", a.ranks.rank, "this process's rank (default: $RANK)");
  app.add_option("--world-size", a.ranks.world_size, "number of ranks (default: $WORLD_SIZE)");
  app.add_option("--master-addr", a.ranks.master_addr, "rank 0's address (default: $MASTER_ADDR or 127.0.0.1)");
  app.add_option("--master-port", a.ranks.master_port, "rank 0's port (default: $MASTER_PORT; --nproc: a free port)");
  app.add_option("--timeout", a.timeout, "seconds to wait for the other ranks")->capture_default_str();
  app.add_option("--checkpoint", a.checkpoint, "write checkpoints into this directory");
  app.add_option("--checkpoint-every", a.checkpoint_every, "also every this many steps (0: per epoch)");
  app.add_option("--resume", a.resume, "resume from this checkpoint directory");
  app.add_option("--max-steps", a.max_steps, "stop after this many steps in all (0: no limit)");
  app.add_option("--json", a.json_out, "rank 0 writes per-epoch figures to this file");
  return run_main(app, argc, argv, [&] {
    return run_distributed(
        a.ranks, argc, argv, [&](int rank, int world) { Setup check(a, rank, world); },
        [&](const RankOptions& where) {
          try {
            return run_rank(a, where);
          } catch (const c10::Error& e) {
            throw std::runtime_error(e.what_without_backtrace());
          }
        });
  });
}

#endif  // __has_include(<gloo/algorithm.h>)
