// The DDP example's checkpoints. --checkpoint DIR holds DIR/step-<global step>/ {meta.json,
// model.pt, optimizer.pt (rank 0), loader-rank-<r>.json and buffers-rank-<r>.pt (each rank)}
// and DIR/latest naming the newest complete one: rank 0 updates it only after every rank has
// written its files. The loader's position is the library's LoaderState (staged and fsynced).
#pragma once

#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "common.hpp"
#include "imgstore/error.hpp"
#include "imgstore/torch/loader.hpp"

namespace imgstore::examples {

namespace ddp_checkpoint_detail {
namespace fs = std::filesystem;

inline std::string quote(const fs::path& p) { return "'" + p.string() + "'"; }

inline std::string read_text(const fs::path& path) {
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

inline void write_text(const fs::path& path, const std::string& text) {
  write_atomically(path, [&](const fs::path& tmp) {
    std::ofstream out(tmp, std::ios::binary);
    out << text;
    out.flush();
    if (!out) throw IoError(fmt::format("cannot write {}", quote(tmp)));
  });
}

constexpr const char* kFormat = "imgstore-ddp-checkpoint";
constexpr int kVersion = 1;

inline std::string step_dir_name(std::uint64_t global_step) { return fmt::format("step-{:010d}", global_step); }
inline std::string loader_file(int rank) { return fmt::format("loader-rank-{:05d}.json", rank); }
inline std::string buffers_file(int rank) { return fmt::format("buffers-rank-{:05d}.pt", rank); }

// The step directory `dir` names: itself if it holds meta.json, else the one DIR/latest names.
inline fs::path resolve_checkpoint(const fs::path& dir) {
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
}  // namespace ddp_checkpoint_detail

// Where a checkpoint stands: meta.json's counters.
struct CheckpointMeta {
  int world_size = 0;
  std::uint64_t epoch = 0, steps_in_epoch = 0, steps_per_epoch = 0, global_step = 0;

  static CheckpointMeta load(const std::filesystem::path& step_dir) {
    using namespace ddp_checkpoint_detail;
    using nlohmann::json;
    const fs::path file = step_dir / "meta.json";
    try {
      const json j = json::parse(read_text(file));
      if (j.at("format").get<std::string>() != kFormat || j.at("version").get<int>() != kVersion) {
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

// A checkpoint loaded into one rank's loader, model and optimizer. An empty dir: a fresh start.
struct Resume {
  std::filesystem::path dir;
  CheckpointMeta meta;
  torch::Tensor own_buffers;  // this rank's BatchNorm statistics, flattened
};

// Loads `resume` (a step directory or a --checkpoint root) into this rank's parts, checking that
// it was taken with this rank count and that the loader's position matches meta.json.
inline Resume load_checkpoint(const std::filesystem::path& resume, int rank, int world,
                              PrefetchLoader& loader, ConvNet& model, torch::optim::Optimizer& opt) {
  using namespace ddp_checkpoint_detail;
  Resume r;
  r.dir = resolve_checkpoint(resume);
  r.meta = CheckpointMeta::load(r.dir);
  const CheckpointMeta& meta = r.meta;
  if (meta.world_size != world) {
    throw UsageError(fmt::format("checkpoint {} was taken with {} ranks, this run has {}: "
                                 "resume with the same rank count",
                                 quote(r.dir), meta.world_size, world));
  }
  // The loader decides whether the state fits this store, seed, batch size and rank.
  const fs::path state_file = r.dir / loader_file(rank);
  const LoaderState state = LoaderState::load(state_file);
  try {
    loader.restore(state);
  } catch (const UsageError& e) {
    throw UsageError(fmt::format("cannot resume from {}: {}", quote(state_file), e.what()));
  }
  if (loader.batches_per_epoch() != meta.steps_per_epoch) {
    throw UsageError(fmt::format("checkpoint {} has {} steps per epoch, this run {}",
                                 quote(r.dir), meta.steps_per_epoch, loader.batches_per_epoch()));
  }
  // The loader's position must be the one the checkpoint's step counter says.
  const bool epoch_done = meta.steps_in_epoch == meta.steps_per_epoch;
  const std::uint64_t want_epoch = epoch_done ? meta.epoch + 1 : meta.epoch;
  if (loader.epoch() != want_epoch) {
    throw DataError(fmt::format("checkpoint {} is inconsistent: {} resumes epoch {}, meta.json "
                                "epoch {}", quote(r.dir), loader_file(rank), loader.epoch(), want_epoch));
  }
  try {
    torch::load(model, (r.dir / "model.pt").string());
    torch::load(opt, (r.dir / "optimizer.pt").string());
    torch::load(r.own_buffers, (r.dir / buffers_file(rank)).string());
  } catch (const c10::Error& e) {
    throw DataError(fmt::format("cannot load the model from checkpoint {}: {}", quote(r.dir),
                                e.what_without_backtrace()));
  }
  return r;
}

// Writes this rank's files of the checkpoint at `global_step` into root/step-<n>/ (creating it)
// and returns that directory: the loader state and BatchNorm buffers of every rank, the model
// and optimizer from rank 0.
inline std::filesystem::path save_rank_files(const std::filesystem::path& root, std::uint64_t global_step,
                                             int rank, const PrefetchLoader& loader,
                                             const torch::Tensor& own_buffers, ConvNet& model,
                                             torch::optim::Optimizer& opt) {
  using namespace ddp_checkpoint_detail;
  const fs::path dir = root / step_dir_name(global_step);
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw IoError(fmt::format("cannot create {}: {}", quote(dir), ec.message()));
  loader.state().save(dir / loader_file(rank));  // staged and fsynced by the library
  write_atomically(dir / buffers_file(rank), [&](const fs::path& t) { torch::save(own_buffers, t.string()); });
  if (rank == 0) {
    write_atomically(dir / "model.pt", [&](const fs::path& t) { torch::save(model, t.string()); });
    write_atomically(dir / "optimizer.pt", [&](const fs::path& t) { torch::save(opt, t.string()); });
  }
  return dir;
}

// Rank 0, once every rank's files are in place: writes meta.json (`meta` plus the format's
// name and version), points root/latest at the new step and removes the older ones.
inline void publish_checkpoint(const std::filesystem::path& root, std::uint64_t global_step,
                               nlohmann::json meta) {
  using namespace ddp_checkpoint_detail;
  meta["format"] = kFormat;
  meta["version"] = kVersion;
  meta["global_step"] = global_step;
  const fs::path dir = root / step_dir_name(global_step);
  write_text(dir / "meta.json", meta.dump(2) + "\n");
  write_text(root / "latest", step_dir_name(global_step) + "\n");
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(root, ec)) {  // keep only the newest
    const auto name = e.path().filename().string();
    if (e.is_directory() && name.rfind("step-", 0) == 0 && name != step_dir_name(global_step)) {
      fs::remove_all(e.path(), ec);
    }
  }
}

}  // namespace imgstore::examples
