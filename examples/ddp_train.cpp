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
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO  // Debian's libtorch is built with Gloo; the header hides it otherwise
#endif

#if !__has_include(<gloo/algorithm.h>)
// ProcessGroupGloo.hpp includes Gloo's headers (Debian: libgloo-dev). Without them, build a
// stub that says so instead of breaking the whole build.
#include <cstdio>
int main() {
  std::fprintf(stderr, "imgstore-ddp-train: built without Gloo's headers; install libgloo-dev "
                       "and rebuild\n");
  return 2;
}
#else

#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include "common.hpp"
#include "launcher.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"
#include "imgstore/torch/dataset.hpp"
#include "imgstore/torch/loader.hpp"

namespace {

using namespace imgstore;
using namespace imgstore::examples;
namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kCheckpointFormat = "imgstore-ddp-checkpoint";
constexpr int kCheckpointVersion = 1;

struct Args {
  std::string train, test, checkpoint, resume, json_out, master_addr, master_port;
  int epochs = 4, torch_threads = 1, nproc = 0, rank = -1, world_size = -1;
  std::size_t batch_size = 128, global_batch = 0;
  unsigned threads = 1;
  double lr = 0.05, momentum = 0.9, weight_decay = 5e-4, timeout = 300;
  std::uint64_t seed = 1, max_steps = 0, checkpoint_every = 0;
  bool whole_shards = false, augment = false;
};

std::string quote(const fs::path& p) { return "'" + p.string() + "'"; }

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(fmt::format("cannot open {}: {}", quote(path), std::strerror(errno)));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw IoError(fmt::format("cannot read {}", quote(path)));
  return ss.str();
}

// Writes through a temporary name and renames, so a checkpoint file is whole or absent.
template <class Write>
void write_atomically(const fs::path& path, Write&& write) {
  const fs::path tmp = path.string() + fmt::format(".tmp-{}", ::getpid());
  write(tmp);
  std::error_code ec;
  fs::rename(tmp, path, ec);
  if (ec) throw IoError(fmt::format("cannot rename {} to {}: {}", quote(tmp), quote(path), ec.message()));
}

void write_text(const fs::path& path, const std::string& text) {
  write_atomically(path, [&](const fs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
    out.flush();
    if (!out) throw IoError(fmt::format("cannot write {}", quote(tmp)));
  });
}

// ---- checkpoints -------------------------------------------------------------------------
// --checkpoint DIR holds DIR/step-<global step>/ {meta.json, model.pt, optimizer.pt (rank 0),
// loader-rank-<r>.json and buffers-rank-<r>.pt (each rank)} and DIR/latest naming the newest
// complete one: rank 0 updates it only after every rank has written its files.

std::string step_dir_name(std::uint64_t global_step) { return fmt::format("step-{:010d}", global_step); }
std::string loader_file(int rank) { return fmt::format("loader-rank-{:05d}.json", rank); }
std::string buffers_file(int rank) { return fmt::format("buffers-rank-{:05d}.pt", rank); }

// The step directory `dir` names: itself if it holds meta.json, else the one DIR/latest names.
fs::path resolve_checkpoint(const fs::path& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    throw IoError(fmt::format("--resume {}: no such checkpoint directory", quote(dir)));
  }
  if (fs::exists(dir / "meta.json")) return dir;
  if (!fs::exists(dir / "latest")) {
    throw IoError(fmt::format("--resume {}: no checkpoint there (neither meta.json nor 'latest')",
                              quote(dir)));
  }
  std::string name = read_text(dir / "latest");
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const bool ok = name.size() == 15 && name.rfind("step-", 0) == 0 &&
                  name.find_first_not_of("0123456789", 5) == std::string::npos;
  if (!ok) throw DataError(fmt::format("{}: '{}' is not a checkpoint name", quote(dir / "latest"), name));
  if (!fs::exists(dir / name / "meta.json")) {
    throw IoError(fmt::format("{} names {}, which has no meta.json", quote(dir / "latest"), quote(dir / name)));
  }
  return dir / name;
}

struct CheckpointMeta {
  int world_size = 0;
  std::uint64_t epoch = 0, steps_in_epoch = 0, steps_per_epoch = 0, global_step = 0;

  static CheckpointMeta load(const fs::path& step_dir) {
    const fs::path file = step_dir / "meta.json";
    json j;
    try {
      j = json::parse(read_text(file));
      if (j.at("format").get<std::string>() != kCheckpointFormat || j.at("version").get<int>() != kCheckpointVersion) {
        throw DataError("not an imgstore-ddp-train checkpoint of version 1");
      }
      CheckpointMeta m;
      m.world_size = j.at("world_size").get<int>();
      m.epoch = j.at("epoch").get<std::uint64_t>();
      m.steps_in_epoch = j.at("steps_in_epoch").get<std::uint64_t>();
      m.steps_per_epoch = j.at("steps_per_epoch").get<std::uint64_t>();
      m.global_step = j.at("global_step").get<std::uint64_t>();
      return m;
    } catch (const json::exception& e) {
      throw DataError(fmt::format("malformed checkpoint {}: {}", quote(file), e.what()));
    } catch (const DataError& e) {
      throw DataError(fmt::format("malformed checkpoint {}: {}", quote(file), e.what()));
    }
  }
};

// ---- one rank's data, model and loader, built and checked before any communication --------

struct Setup {
  int rank = 0, world = 1;
  std::size_t batch_size = 0;
  std::shared_ptr<const StoreReader> train;
  std::unique_ptr<StoreDataset> test;
  Normalize normalize;
  std::unique_ptr<PrefetchLoader> loader;
  ConvNet model{nullptr};
  std::unique_ptr<torch::optim::SGD> opt;
  fs::path resume_dir;  // empty: fresh start
  CheckpointMeta meta;
  torch::Tensor own_buffers;  // this rank's BatchNorm statistics from the checkpoint

  Setup(const Args& a, int rank_, int world_) : rank(rank_), world(world_) {
    if (a.global_batch) {
      if (a.global_batch % static_cast<std::size_t>(world)) {
        throw UsageError(fmt::format("--global-batch {} is not divisible by {} ranks: pick a "
                                     "multiple of the rank count",
                                     a.global_batch, world));
      }
      batch_size = a.global_batch / static_cast<std::size_t>(world);
    } else {
      batch_size = a.batch_size;
    }
    if (batch_size == 0) throw UsageError("the batch size must be at least 1");
    if (a.epochs < 1) throw UsageError("--epochs must be at least 1");

    train = std::shared_ptr<const StoreReader>(open_store(a.train));
    const auto shape = train->shape();
    if (train->size() == 0) throw UsageError(fmt::format("training store {} is empty", quote(a.train)));
    auto [mean, stdev] = channel_stats(*train);
    normalize = Normalize::mean_std(mean, stdev);
    test = std::make_unique<StoreDataset>(a.test, DatasetOptions{{}, normalize});
    const auto tshape = test->reader().shape();
    if (tshape.height != shape.height || tshape.width != shape.width || tshape.channels != shape.channels) {
      throw UsageError(fmt::format("test store {} holds {} images, training store {} holds {}",
                                   quote(a.test), to_string(tshape), quote(a.train), to_string(shape)));
    }
    if (shape.height < 8 || shape.width < 8) {
      throw UsageError(fmt::format("the convnet needs images of at least 8x8, {} holds {}",
                                   quote(a.train), to_string(shape)));
    }

    LoaderOptions lo;
    lo.batch_size = batch_size;
    lo.shuffle = true;
    lo.seed = a.seed;
    lo.threads = a.threads;
    lo.normalize = normalize;
    lo.rank = static_cast<std::size_t>(rank);
    lo.world_size = static_cast<std::size_t>(world);
    lo.whole_shards = a.whole_shards;
    if (a.augment) {
      lo.crop_padding = shape.height >= 32 ? 4 : 2;
      lo.horizontal_flip = true;
    }
    loader = std::make_unique<PrefetchLoader>(train, lo);

    // Same seed everywhere, and rank 0's values are broadcast anyway.
    torch::manual_seed(a.seed);
    const auto& classes = train->manifest().class_names;
    model = ConvNet(static_cast<int>(shape.channels), static_cast<int>(shape.height),
                    static_cast<int>(shape.width), classes.empty() ? 10 : static_cast<int>(classes.size()));
    opt = std::make_unique<torch::optim::SGD>(
        model->parameters(), torch::optim::SGDOptions(a.lr).momentum(a.momentum)
                                 .weight_decay(a.weight_decay).nesterov(true));

    if (!a.resume.empty()) load_checkpoint(a);
  }

  void load_checkpoint(const Args& a) {
    resume_dir = resolve_checkpoint(a.resume);
    meta = CheckpointMeta::load(resume_dir);
    if (meta.world_size != world) {
      throw UsageError(fmt::format("checkpoint {} was taken with {} ranks, this run has {}: "
                                   "resume with the same rank count",
                                   quote(resume_dir), meta.world_size, world));
    }
    // The loader decides whether the state fits this store, seed, batch size and rank.
    const fs::path state_file = resume_dir / loader_file(rank);
    const LoaderState state = LoaderState::load(state_file);
    try {
      loader->restore(state);
    } catch (const UsageError& e) {
      throw UsageError(fmt::format("cannot resume from {}: {}", quote(state_file), e.what()));
    }
    if (loader->batches_per_epoch() != meta.steps_per_epoch) {
      throw UsageError(fmt::format("checkpoint {} has {} steps per epoch, this run {}",
                                   quote(resume_dir), meta.steps_per_epoch, loader->batches_per_epoch()));
    }
    // The loader's position must be the one the checkpoint's step counter says.
    const bool epoch_done = meta.steps_in_epoch == meta.steps_per_epoch;
    const std::uint64_t want_epoch = epoch_done ? meta.epoch + 1 : meta.epoch;
    if (loader->epoch() != want_epoch) {
      throw DataError(fmt::format("checkpoint {} is inconsistent: {} resumes epoch {}, meta.json "
                                  "epoch {}", quote(resume_dir), loader_file(rank), loader->epoch(), want_epoch));
    }
    try {
      torch::load(model, (resume_dir / "model.pt").string());
      torch::load(*opt, (resume_dir / "optimizer.pt").string());
      torch::load(own_buffers, (resume_dir / buffers_file(rank)).string());
    } catch (const c10::Error& e) {
      throw DataError(fmt::format("cannot load the model from checkpoint {}: {}", quote(resume_dir),
                                  e.what_without_backtrace()));
    }
  }
};

// ---- tensors <-> one flat buffer ---------------------------------------------------------

std::vector<torch::Tensor> float_buffers(ConvNet& model) {
  std::vector<torch::Tensor> out;
  for (auto& b : model->buffers()) {
    if (b.is_floating_point()) out.push_back(b);
  }
  return out;
}

std::vector<torch::Tensor> all_state(ConvNet& model) {
  auto v = model->parameters();
  for (auto& b : model->buffers()) v.push_back(b);  // including num_batches_tracked
  return v;
}

torch::Tensor flatten(const std::vector<torch::Tensor>& ts) {
  std::vector<torch::Tensor> flat;
  for (const auto& t : ts) flat.push_back(t.detach().reshape(-1).to(torch::kFloat64));
  return flat.empty() ? torch::zeros({0}, torch::kFloat64) : torch::cat(flat);
}

void unflatten(const torch::Tensor& flat, const std::vector<torch::Tensor>& ts) {
  torch::NoGradGuard no_grad;
  std::int64_t off = 0;
  for (const auto& t : ts) {
    const auto n = t.numel();
    t.copy_(flat.narrow(0, off, n).view(t.sizes()));
    off += n;
  }
}

// Identifies the model's exact bits: every parameter and buffer, in order.
std::uint64_t state_hash(ConvNet& model) {
  ContentDigest digest;
  for (const auto& t : all_state(model)) {
    auto c = t.detach().contiguous();
    digest.add(xxh3_64(c.data_ptr(), c.numel() * c.element_size()));
  }
  return digest.value();
}

// CPU time of the whole process (training, loader and Gloo threads): on a shared machine
// images per CPU-second compares configurations where wall time cannot.
double process_cpu_seconds() {
  timespec ts{};
  ::clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// ---- communication -----------------------------------------------------------------------

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;

  void allreduce(torch::Tensor& t, c10d::ReduceOp op = c10d::ReduceOp::SUM) {
    std::vector<torch::Tensor> v{t};
    c10d::AllreduceOptions o;
    o.reduceOp = op;
    pg->allreduce(v, o)->wait();
  }
  void broadcast(torch::Tensor& t) {
    std::vector<torch::Tensor> v{t};
    pg->broadcast(v)->wait();
  }
  void barrier() { pg->barrier()->wait(); }
};

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

Group connect(const std::string& addr, std::uint16_t port, int rank, int world, double timeout) {
  const auto ms = std::chrono::milliseconds(static_cast<std::int64_t>(timeout * 1000));
  c10d::TCPStoreOptions so;
  so.port = port;
  so.isServer = rank == 0;
  so.numWorkers = static_cast<std::size_t>(world);
  so.waitWorkers = true;
  so.timeout = ms;
  Group g;
  g.store = c10::make_intrusive<c10d::TCPStore>(addr, so);
  auto opts = c10d::ProcessGroupGloo::Options::create(ms);
  // Like torch.distributed: GLOO_SOCKET_IFNAME picks the interface; on one machine loopback.
  if (const char* ifname = std::getenv("GLOO_SOCKET_IFNAME"); ifname && *ifname) {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
  } else if (is_loopback(addr)) {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  } else {
    opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
  }
  opts->threads = 1;  // collectives are waited for at once; more threads only compete for cores
  g.pg = c10::make_intrusive<c10d::ProcessGroupGloo>(g.store, rank, world, opts);
  return g;
}

// ---- training ----------------------------------------------------------------------------

struct Rank {
  const Args& a;
  Setup& s;
  Group& g;
  std::string tag;
  std::vector<torch::Tensor> params;
  torch::Tensor grad_flat;  // one buffer, so each step is one allreduce
  std::uint64_t global_step = 0;

  Rank(const Args& a_, Setup& s_, Group& g_) : a(a_), s(s_), g(g_) {
    tag = fmt::format("[rank {}/{}]", s.rank, s.world);
    params = s.model->parameters();
    std::int64_t n = 0;
    for (const auto& p : params) n += p.numel();
    grad_flat = torch::zeros({n}, torch::kFloat32);
  }

  template <class... T>
  void say(fmt::format_string<T...> f, T&&... args) {
    fmt::print("{} {}\n", tag, fmt::format(f, std::forward<T>(args)...));
    std::fflush(stdout);
  }

  void set_lr(int epoch) {
    const double lr = 0.5 * a.lr * (1 + std::cos(M_PI * epoch / std::max(1, a.epochs)));
    for (auto& group : s.opt->param_groups()) static_cast<torch::optim::SGDOptions&>(group.options()).lr(lr);
  }

  // Averages the gradients of every rank: copy into one buffer, one allreduce, copy back.
  void average_gradients() {
    torch::NoGradGuard no_grad;
    std::int64_t off = 0;
    for (auto& p : params) {
      const auto n = p.numel();
      auto slot = grad_flat.narrow(0, off, n);
      if (p.grad().defined()) slot.copy_(p.grad().reshape(-1));
      else slot.zero_();
      off += n;
    }
    g.allreduce(grad_flat);
    grad_flat.div_(static_cast<double>(s.world));
    off = 0;
    for (auto& p : params) {
      const auto n = p.numel();
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      p.mutable_grad().view(-1).copy_(grad_flat.narrow(0, off, n));
      off += n;
    }
  }

  // BatchNorm statistics are per rank while training (as in DDP); average them for evaluation
  // and so that every rank ends with the same model.
  void average_buffers() {
    auto bufs = float_buffers(s.model);
    auto flat = flatten(bufs);
    g.allreduce(flat);
    flat.div_(static_cast<double>(s.world));
    unflatten(flat, bufs);
  }

  void save_checkpoint(std::uint64_t epoch, std::uint64_t steps_in_epoch) {
    const fs::path root = a.checkpoint, dir = root / step_dir_name(global_step);
    std::error_code ec;
    fs::create_directories(dir, ec);
    if (ec) throw IoError(fmt::format("cannot create {}: {}", quote(dir), ec.message()));
    s.loader->state().save(dir / loader_file(s.rank));  // staged and fsynced by the library
    auto bufs = flatten(float_buffers(s.model));
    write_atomically(dir / buffers_file(s.rank), [&](const fs::path& t) { torch::save(bufs, t.string()); });
    if (s.rank == 0) {
      write_atomically(dir / "model.pt", [&](const fs::path& t) { torch::save(s.model, t.string()); });
      write_atomically(dir / "optimizer.pt", [&](const fs::path& t) { torch::save(*s.opt, t.string()); });
    }
    g.barrier();  // every rank's files are in place
    if (s.rank == 0) {
      json meta{{"format", kCheckpointFormat}, {"version", kCheckpointVersion},
                {"world_size", s.world}, {"epoch", epoch}, {"steps_in_epoch", steps_in_epoch},
                {"steps_per_epoch", s.loader->batches_per_epoch()}, {"global_step", global_step},
                {"seed", a.seed}, {"batch_size", s.batch_size}, {"lr", a.lr}, {"epochs", a.epochs},
                {"train", a.train}, {"train_digest", to_hex64(s.train->manifest().content_digest)}};
      write_text(dir / "meta.json", meta.dump(2) + "\n");
      write_text(root / "latest", step_dir_name(global_step) + "\n");
      for (const auto& e : fs::directory_iterator(root, ec)) {  // keep only the newest
        const auto name = e.path().filename().string();
        if (e.is_directory() && name.rfind("step-", 0) == 0 && name != step_dir_name(global_step)) {
          fs::remove_all(e.path(), ec);
        }
      }
      say("checkpoint {} (epoch {}, step {} of {})", quote(dir), epoch + 1, steps_in_epoch,
          s.loader->batches_per_epoch());
    }
  }

  int train() {
    const std::size_t steps = s.loader->batches_per_epoch();
    int start_epoch = 0;
    bool resumed_pass = false;
    if (!s.resume_dir.empty()) {
      // Every rank loaded rank 0's model; the broadcast below makes sure. Buffers stay per rank.
      start_epoch = static_cast<int>(s.loader->epoch());
      global_step = s.meta.global_step;
      resumed_pass = s.meta.steps_in_epoch < s.meta.steps_per_epoch;
    }
    {  // identical start: rank 0's parameters and buffers everywhere
      auto state = all_state(s.model);
      auto flat = flatten(state);
      g.broadcast(flat);
      unflatten(flat, state);
      if (s.own_buffers.defined()) unflatten(s.own_buffers, float_buffers(s.model));
    }
    if (s.rank == 0) {
      say("train {} ({} x {}), test {} ({}), {} ranks, batch {} per rank ({} global), "
          "{} steps per epoch, loader threads {}, torch threads {}{}",
          a.train, s.train->size(), to_string(s.train->shape()), a.test, s.test->reader().size(), s.world,
          s.batch_size, s.batch_size * static_cast<std::size_t>(s.world), steps, a.threads,
          torch::get_num_threads(),
          s.resume_dir.empty() ? "" : fmt::format(", resumed from {} at step {}", quote(s.resume_dir), global_step));
    }

    json log = json::array();
    bool stop = false;
    double total_images = 0, total_seconds = 0, total_cpu = 0;
    for (int epoch = start_epoch; epoch < a.epochs && !stop; ++epoch) {
      set_lr(epoch);
      if (!resumed_pass) s.loader->set_epoch(static_cast<std::uint64_t>(epoch));
      std::uint64_t done = resumed_pass ? s.meta.steps_in_epoch : 0;
      resumed_pass = false;
      double loss = 0, images = 0, wait = 0, comm = 0;
      const auto start = Clock::now();
      const double cpu_start = process_cpu_seconds();
      auto t = Clock::now();
      for (auto it = s.loader->begin(); it != s.loader->end();) {
        wait += seconds_since(t);
        // Dropout draws from a generator seeded per rank and step, so a resumed run continues
        // exactly as an uninterrupted one.
        const std::uint64_t key[] = {a.seed, global_step, static_cast<std::uint64_t>(s.rank)};
        torch::manual_seed(xxh3_64(key, sizeof key));
        s.opt->zero_grad();
        auto l = torch::nn::functional::cross_entropy(s.model->forward(it->data), it->target);
        l.backward();
        const auto tc = Clock::now();
        average_gradients();
        comm += seconds_since(tc);
        s.opt->step();
        loss += l.item<double>() * static_cast<double>(it->data.size(0));
        images += static_cast<double>(it->data.size(0));
        ++done;
        ++global_step;
        stop = a.max_steps && global_step >= a.max_steps;
        // Mid-epoch checkpoints hold the loop's batch (it counts as consumed); one taken at the
        // epoch's end is written after the epoch's evaluation, below.
        if (!a.checkpoint.empty() && done < steps &&
            (stop || (a.checkpoint_every && global_step % a.checkpoint_every == 0))) {
          save_checkpoint(static_cast<std::uint64_t>(epoch), done);
        }
        if (stop) break;
        t = Clock::now();
        ++it;
      }
      if (!stop) wait += seconds_since(t);
      const double seconds = seconds_since(start);
      const double cpu = process_cpu_seconds() - cpu_start;
      average_buffers();
      auto stats = torch::tensor({loss, images, wait, comm, cpu}, torch::kFloat64);
      g.allreduce(stats);
      const double global_images = stats[1].item<double>();
      const double rate = global_images / seconds;
      total_images += global_images;
      total_seconds += seconds;
      total_cpu += stats[4].item<double>();
      if (s.rank == 0) {
        const double acc = evaluate(s.model, *s.test);
        const double mean_loss = stats[0].item<double>() / std::max(1.0, global_images);
        // Shares of the wall time, averaged over ranks.
        const double wait_share = stats[2].item<double>() / s.world / seconds;
        const double comm_share = stats[3].item<double>() / s.world / seconds;
        const double per_cpu = global_images / std::max(1e-9, stats[4].item<double>());
        say("epoch {}/{}  steps {}  train loss {:.4f}  test acc {:.2f}%  {:.0f} img/s (all ranks)  "
            "{:.0f} img/cpu-s  data wait {:.1f}%  allreduce {:.1f}%",
            epoch + 1, a.epochs, done, mean_loss, 100 * acc, rate, per_cpu, 100 * wait_share,
            100 * comm_share);
        log.push_back({{"epoch", epoch + 1}, {"steps", done}, {"train_loss", mean_loss},
                       {"test_accuracy", acc}, {"images_per_second", rate},
                       {"images_per_cpu_second", per_cpu}, {"seconds", seconds},
                       {"data_wait_share", wait_share}, {"allreduce_share", comm_share}});
      }
      if (!a.checkpoint.empty() && done == steps) save_checkpoint(static_cast<std::uint64_t>(epoch), done);
    }
    if (stop) say("stopped after --max-steps {}", a.max_steps);
    say("params xxh3 {}", to_hex64(state_hash(s.model)));
    if (s.rank == 0 && !a.json_out.empty()) {
      std::ofstream out(a.json_out);
      out << json{{"train", a.train}, {"test", a.test}, {"world_size", s.world},
                  {"batch_size_per_rank", s.batch_size}, {"loader_threads", a.threads},
                  {"torch_threads", torch::get_num_threads()}, {"lr", a.lr},
                  {"images_per_second", total_seconds > 0 ? total_images / total_seconds : 0},
                  {"images_per_cpu_second", total_cpu > 0 ? total_images / total_cpu : 0},
                  {"epochs", log}}
                 .dump(2)
          << "\n";
    }
    return 0;
  }
};

// One rank: check everything locally, meet the others, agree that all are ready, train.
int run_rank(const Args& a, int rank, int world) {
  torch::set_num_threads(std::max(1, a.torch_threads));
  const std::string addr = a.master_addr.empty() ? env_str("MASTER_ADDR", "127.0.0.1") : a.master_addr;
  const std::string port_text = a.master_port.empty() ? env_str("MASTER_PORT", "29500") : a.master_port;
  char* end = nullptr;
  const long port = std::strtol(port_text.c_str(), &end, 10);
  if (*end || port < 1 || port > 65535) throw UsageError(fmt::format("bad master port '{}'", port_text));

  // A rank that fails here still joins the group, so the others learn it and stop too
  // instead of waiting for it until the timeout.
  std::unique_ptr<Setup> setup;
  std::string error;
  int code = 0;
  try {
    setup = std::make_unique<Setup>(a, rank, world);
  } catch (const UsageError& e) {
    error = e.what();
    code = 2;
  } catch (const std::exception& e) {
    error = e.what();
    code = 1;
  }
  Group g = connect(addr, static_cast<std::uint16_t>(port), rank, world, a.timeout);

  // One collective: the worst error code, and min/max of the step count and configuration hash.
  std::int64_t steps = 0, config = 0;
  if (setup) {
    steps = static_cast<std::int64_t>(setup->loader->batches_per_epoch());
    const std::string cfg = fmt::format(
        "{} {} {} {} {} {} {} {} {} {} {}", to_hex64(setup->train->manifest().content_digest),
        to_hex64(setup->test->reader().manifest().content_digest), a.seed, setup->batch_size, a.lr,
        a.momentum, a.weight_decay, a.epochs, a.whole_shards, a.augment,
        setup->resume_dir.empty() ? 0 : setup->meta.global_step);
    config = static_cast<std::int64_t>(xxh3_64(cfg.data(), cfg.size()) >> 16);
  }
  auto agree = torch::tensor({static_cast<std::int64_t>(code), steps, -steps, config, -config}, torch::kInt64);
  g.allreduce(agree, c10d::ReduceOp::MAX);
  const auto worst = agree[0].item<std::int64_t>();
  if (code) {
    if (code == 2) throw UsageError(error);
    throw std::runtime_error(error);
  }
  if (worst) {
    std::cerr << fmt::format("imgstore-ddp-train: rank {}: another rank failed its checks (see its "
                             "message); not training\n", rank);
    return static_cast<int>(worst);
  }
  if (agree[1].item<std::int64_t>() != -agree[2].item<std::int64_t>()) {
    throw UsageError(fmt::format("ranks disagree on the steps per epoch ({} to {}): every rank "
                                 "must read the same store with the same batch size",
                                 -agree[2].item<std::int64_t>(), agree[1].item<std::int64_t>()));
  }
  if (agree[3].item<std::int64_t>() != -agree[4].item<std::int64_t>()) {
    throw UsageError("ranks disagree on the configuration (store contents, seed, batch size, lr, "
                     "epochs or checkpoint): start every rank with the same options");
  }
  Rank r(a, *setup, g);
  return r.train();
}

// ---- launcher ----------------------------------------------------------------------------

// Starts --nproc ranks of this very program and waits for them. The first rank to fail takes
// the others down (they would otherwise wait for it in a collective until the timeout).
int launch(const Args& a, int argc, char** argv) {
  const int n = a.nproc;
  // Check every rank's setup here first: one clear message, and nothing started.
  for (int r = 0; r < n; ++r) {
    try {
      Setup check(a, r, n);
    } catch (const UsageError& e) {
      throw UsageError(fmt::format("rank {} of {}: {}", r, n, e.what()));
    } catch (const DataError& e) {
      throw DataError(fmt::format("rank {} of {}: {}", r, n, e.what()));
    } catch (const IoError& e) {
      throw IoError(fmt::format("rank {} of {}: {}", r, n, e.what()));
    }
  }
  const std::string addr = a.master_addr.empty() ? env_str("MASTER_ADDR", "127.0.0.1") : a.master_addr;
  const std::string port = !a.master_port.empty() ? a.master_port
                                                  : env_str("MASTER_PORT", std::to_string(free_port()));
  return launch_ranks(n, argc, argv, addr, port);
}

int run(const Args& a0, int argc, char** argv) {
  Args a = a0;
  const bool explicit_rank = a.rank >= 0 || a.world_size >= 0;
  if (a.nproc < 0) throw UsageError("--nproc must be at least 1");
  if (a.nproc > 0) {
    if (explicit_rank) throw UsageError("--nproc starts the ranks itself: do not also give --rank or --world-size");
    return launch(a, argc, argv);
  }
  if (a.rank < 0) a.rank = static_cast<int>(env_int("RANK", -1));
  if (a.world_size < 0) a.world_size = static_cast<int>(env_int("WORLD_SIZE", -1));
  if (a.rank < 0 && a.world_size < 0) {  // plain single process
    a.rank = 0;
    a.world_size = 1;
    if (a.master_port.empty() && !std::getenv("MASTER_PORT")) a.master_port = std::to_string(free_port());
  }
  if (a.rank < 0 || a.world_size < 1) {
    throw UsageError("give both the rank and the world size (--rank/--world-size or RANK/WORLD_SIZE), or --nproc N");
  }
  if (a.rank >= a.world_size) {
    throw UsageError(fmt::format("rank {} is not below the world size {}", a.rank, a.world_size));
  }
  try {
    return run_rank(a, a.rank, a.world_size);
  } catch (const UsageError& e) {
    throw UsageError(fmt::format("rank {}: {}", a.rank, e.what()));
  } catch (const c10::Error& e) {
    throw std::runtime_error(fmt::format("rank {}: {}", a.rank, e.what_without_backtrace()));
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("rank {}: {}", a.rank, e.what()));
  }
}

}  // namespace

int main(int argc, char** argv) {
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
  app.add_option("--nproc", a.nproc, "start this many ranks on this machine");
  app.add_option("--rank", a.rank, "this process's rank (default: $RANK)");
  app.add_option("--world-size", a.world_size, "number of ranks (default: $WORLD_SIZE)");
  app.add_option("--master-addr", a.master_addr, "rank 0's address (default: $MASTER_ADDR or 127.0.0.1)");
  app.add_option("--master-port", a.master_port, "rank 0's port (default: $MASTER_PORT; --nproc: a free port)");
  app.add_option("--timeout", a.timeout, "seconds to wait for the other ranks")->capture_default_str();
  app.add_option("--checkpoint", a.checkpoint, "write checkpoints into this directory");
  app.add_option("--checkpoint-every", a.checkpoint_every, "also every this many steps (0: per epoch)");
  app.add_option("--resume", a.resume, "resume from this checkpoint directory");
  app.add_option("--max-steps", a.max_steps, "stop after this many steps in all (0: no limit)");
  app.add_option("--json", a.json_out, "rank 0 writes per-epoch figures to this file");
  return run_main(app, argc, argv, [&] { return run(a, argc, argv); });
}

#endif  // __has_include(<gloo/algorithm.h>)
