// imgstore-bench --out-of-memory, child side: one measured pass inside the memory cgroup the
// parent made, reported as one JSON line on stdout. A pass is a shuffled (or quasi-random)
// epoch through PrefetchLoader, O_DIRECT random preads (the disk's random-read limit) or a
// sequential read of the store's files.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <iostream>
#include <memory>
#include <thread>

#include <fmt/format.h>
#include <torch/torch.h>

#include "bench.hpp"
#include "cgroup.hpp"
#include "common/floors.hpp"
#include "detail/fs_util.hpp"
#include "detail/random.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"
#include "imgstore/torch/loader.hpp"
#include "out_of_memory.hpp"

namespace imgstore::bench {

namespace {

// One epoch; `checksum` is the sum of record_checksum over the delivered images (HWC again, as
// the manifest's), so the parent can prove every record came exactly once, whatever the order.
Json epoch_pass(const Json& s) {
  torch::set_num_threads(1);  // the loader's threads do the work; torch's stay out of the way
  LoaderOptions o;
  o.batch_size = s.at("batch").get<std::size_t>();
  o.threads = s.at("threads").get<unsigned>();
  o.seed = s.at("seed").get<std::uint64_t>();
  o.shuffle = true;
  o.shuffle_window = s.at("window").get<std::size_t>();
  o.reader.no_readahead = s.at("no_readahead").get<bool>();
  PrefetchLoader loader(fs::path(s.at("store").get<std::string>()), o);
  const auto epoch = s.at("epoch").get<std::uint64_t>();
  auto order = loader.epoch_indices(epoch);
  std::sort(order.begin(), order.end());
  bool permutation = order.size() == loader.reader().size();
  for (std::size_t i = 0; permutation && i < order.size(); ++i) permutation = order[i] == i;
  order = {};
  loader.set_epoch(epoch);
  const std::size_t ib = loader.reader().image_bytes();
  std::uint64_t images = 0, sum = 0, anon_first = 0;
  const ProcMemory before = proc_memory();
  const auto t0 = Clock::now();
  for (auto& b : loader) {
    const auto hwc = b.data.permute({0, 2, 3, 1}).contiguous();
    const auto* px = hwc.data_ptr<std::uint8_t>();
    const auto* labels = b.target.data_ptr<std::int64_t>();
    const auto n = static_cast<std::size_t>(b.data.size(0));
    for (std::size_t i = 0; i < n; ++i) sum += record_checksum(px + i * ib, ib, labels[i]);
    images += n;
    if (anon_first == 0) anon_first = proc_memory().rss_anon;
  }
  const double seconds = seconds_since(t0);
  const ProcMemory after = proc_memory();
  return Json{{"seconds", seconds},
              {"images", images},
              {"checksum", sum},
              {"permutation", permutation},
              {"bytes_read", after.read_bytes - before.read_bytes},
              {"rss_anon_start", before.rss_anon},
              {"rss_anon_first_batch", anon_first},
              {"rss_anon_end", after.rss_anon}};
}

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};

// `count` preads of `request` bytes at random request-aligned offsets of `file`, with O_DIRECT
// (no page cache, no readahead), from `threads` threads each with one request in flight: the
// disk's random-read rate at the loader's concurrency.
Json randread_pass(const Json& s) {
  const fs::path file = s.at("file").get<std::string>();
  const auto request = s.at("request").get<std::size_t>();
  const auto count = s.at("count").get<std::uint64_t>();
  const auto threads = std::max(1u, s.at("threads").get<unsigned>());
  const auto seed = s.at("seed").get<std::uint64_t>();
  const detail::Fd fd(::open(file.c_str(), O_RDONLY | O_DIRECT | O_CLOEXEC));
  if (fd.get() < 0) {
    throw IoError(fmt::format("cannot open '{}' with O_DIRECT: {}", file.string(), std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) throw IoError(fmt::format("cannot stat '{}'", file.string()));
  const std::uint64_t slots = static_cast<std::uint64_t>(st.st_size) / request;
  if (slots == 0) throw DataError(fmt::format("'{}' is smaller than one {}-byte request", file.string(), request));
  std::vector<std::exception_ptr> errors(threads);
  std::vector<std::thread> pool;
  const ProcMemory before = proc_memory();
  const auto t0 = Clock::now();
  for (unsigned t = 0; t < threads; ++t) {
    pool.emplace_back([&, t] {
      try {
        std::unique_ptr<void, FreeDeleter> buf(std::aligned_alloc(4096, (request + 4095) / 4096 * 4096));
        if (!buf) throw std::bad_alloc();
        detail::SplitMix rng(seed * detail::kGoldenGamma + t);
        for (std::uint64_t k = t; k < count; k += threads) {
          const auto at = static_cast<off_t>(rng.below(slots) * request);
          const ssize_t got = ::pread(fd.get(), buf.get(), request, at);
          if (got != static_cast<ssize_t>(request)) {
            throw IoError(fmt::format("O_DIRECT pread of {} bytes at {} in '{}': {}", request, at,
                                      file.string(), got < 0 ? std::strerror(errno) : "short read"));
          }
        }
      } catch (...) {
        errors[t] = std::current_exception();
      }
    });
  }
  for (auto& th : pool) th.join();
  const double seconds = seconds_since(t0);
  for (auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  return Json{{"seconds", seconds}, {"images", count},
              {"bytes_read", proc_memory().read_bytes - before.read_bytes}};
}

Json seqread_pass(const Json& s) {
  std::vector<fs::path> files;
  for (const auto& f : s.at("files")) files.emplace_back(f.get<std::string>());
  const ProcMemory before = proc_memory();
  const FloorRun run = read_floor(files, kFloorPiece);
  return Json{{"seconds", run.seconds}, {"images", s.at("images").get<std::uint64_t>()},
              {"bytes_read", proc_memory().read_bytes - before.read_bytes}};
}

// Moves this process into the cgroup whose cgroup.procs is `procs`, and checks it is there.
void join_cgroup(const fs::path& procs) {
  {
    std::ofstream f(procs);
    f << "0\n";
    if (!f.flush()) {
      throw IoError(fmt::format("cannot join the cgroup: writing '{}' failed: {}", procs.string(),
                                std::strerror(errno)));
    }
  }
  std::ifstream self("/proc/self/cgroup");
  const std::string group = procs.parent_path().filename().string();
  for (std::string line; std::getline(self, line);) {
    if (line.size() >= group.size() && line.compare(line.size() - group.size(), group.size(), group) == 0) return;
  }
  throw IoError(fmt::format("wrote '{}' but /proc/self/cgroup does not list the group", procs.string()));
}

}  // namespace

int run_oom_child(const std::string& spec_json) {
  try {
    const Json spec = Json::parse(spec_json);
    const std::string kind = spec.at("kind").get<std::string>();
    const ProcMemory started = proc_memory();
    join_cgroup(spec.at("cgroup_procs").get<std::string>());
    Json result;
    if (kind == "epoch") {
      result = epoch_pass(spec);
    } else if (kind == "randread") {
      result = randread_pass(spec);
    } else if (kind == "seqread") {
      result = seqread_pass(spec);
    } else {
      throw UsageError(fmt::format("--oom-child: unknown pass kind '{}'", kind));
    }
    const ProcMemory end = proc_memory();
    result["vm_hwm"] = end.vm_hwm;
    result["startup_vm_hwm"] = started.vm_hwm;
    result["startup_rss_anon"] = started.rss_anon;
    std::cout << result.dump() << std::endl;
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "imgstore-bench --oom-child: " << e.what() << "\n";
    return 1;
  }
}

}  // namespace imgstore::bench
