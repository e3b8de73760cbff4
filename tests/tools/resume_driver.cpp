// A stand-in training loop for the kill-and-resume test (tests/cli/test_resume_kill.sh).
//
// Loops over a store with the prefetching loader. Each consumed batch is one "step": its epoch,
// batch number, a hash of its tensors and its record indices are appended to --log. Every
// --every steps the LoaderState is checkpointed to --state with LoaderState::save (staged: temp
// file, fsync unless --no-fsync, rename), as a trainer saves it next to the model after the optimizer step.
// --resume restores from that file. --kill-after N raises SIGKILL after the N-th step of this
// process, so the pipeline dies with batches in flight, exactly as under `kill -9`.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <torch/torch.h>

#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"
#include "imgstore/torch/loader.hpp"

namespace {

using imgstore::IoError;

std::uint64_t batch_hash(const torch::data::Example<>& batch) {
  const auto data = batch.data.contiguous();
  const auto target = batch.target.contiguous();
  const std::uint64_t d = imgstore::xxh3_64(data.data_ptr(), data.numel() * data.element_size());
  const std::uint64_t t =
      imgstore::xxh3_64(target.data_ptr(), target.numel() * target.element_size());
  return d ^ (t * 0x9e3779b97f4a7c15ULL);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"imgstore resume driver: a training loop that checkpoints its loader state"};
  std::string store, log_path, state_path;
  imgstore::LoaderOptions o;
  std::uint64_t epochs = 2, every = 3, kill_after = 0, sleep_ms = 0;
  bool resume = false, augment = false, no_fsync = false;
  app.add_option("--store", store, "store to read")->required();
  app.add_option("--log", log_path, "append one line per consumed batch here")->required();
  app.add_option("--state", state_path, "LoaderState checkpoint (JSON)")->required();
  app.add_flag("--resume", resume, "restore the loader from --state first");
  app.add_option("--epochs", epochs, "stop when this epoch is reached");
  app.add_option("--every", every, "checkpoint every N steps")->check(CLI::PositiveNumber);
  app.add_flag("--no-fsync", no_fsync, "rename without fsync (enough to survive SIGKILL)");
  app.add_option("--kill-after", kill_after, "SIGKILL this process after N steps (0: never)");
  app.add_option("--sleep-ms", sleep_ms, "pretend each step trains this long");
  app.add_option("--threads", o.threads, "loader threads");
  app.add_option("--prefetch", o.prefetch_depth, "loader prefetch depth");
  app.add_option("--batch-size", o.batch_size, "batch size");
  app.add_option("--seed", o.seed, "shuffle and augmentation seed");
  app.add_option("--rank", o.rank, "this process's rank");
  app.add_option("--world-size", o.world_size, "number of ranks");
  app.add_flag("--drop-last", o.drop_last, "drop uneven tails");
  app.add_flag("--whole-shards", o.whole_shards, "sharded stores: each rank reads whole shards");
  app.add_flag("--augment", augment, "random crop (padding 2) and horizontal flip");
  CLI11_PARSE(app, argc, argv);
  if (augment) {
    o.crop_padding = 2;
    o.horizontal_flip = true;
  }

  try {
    imgstore::PrefetchLoader loader(store, o);
    if (resume) {
      loader.restore(imgstore::LoaderState::load(state_path));
    }
    std::ofstream log(log_path, std::ios::app);
    if (!log) throw IoError(fmt::format("cannot open '{}' for appending", log_path));
    std::uint64_t steps = 0;
    while (loader.epoch() < epochs) {
      const imgstore::LoaderState at = loader.state();  // where this pass starts
      const std::uint64_t epoch = at.epoch;
      const auto indices = loader.epoch_indices(epoch);
      std::uint64_t b = at.batches_consumed;
      for (auto& batch : loader) {
        // The "training step": here, record what it trained on.
        std::string line = fmt::format("{} {} {:016x}", epoch, b, batch_hash(batch));
        const std::size_t n = static_cast<std::size_t>(batch.target.size(0));
        for (std::size_t i = 0; i < n; ++i) {
          line += fmt::format(" {}", indices.at(b * o.batch_size + i));
        }
        log << line << '\n' << std::flush;
        if (sleep_ms > 0) std::this_thread::sleep_for(std::chrono::milliseconds(sleep_ms));
        ++b;
        ++steps;
        // After the step, save the loader state with the (here imaginary) model.
        if (steps % every == 0) loader.state().save(state_path, !no_fsync);
        if (kill_after > 0 && steps == kill_after) ::raise(SIGKILL);
      }
    }
    loader.state().save(state_path, !no_fsync);
    std::cerr << fmt::format("resume-driver: {} steps, now at epoch {}\n", steps, loader.epoch());
    return 0;
  } catch (const imgstore::UsageError& e) {
    std::cerr << "resume-driver: " << e.what() << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "resume-driver: " << e.what() << '\n';
    return 1;
  }
}
