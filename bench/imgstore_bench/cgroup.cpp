// imgstore-bench: memory cgroups (v1, else v2) for the out-of-memory experiment's children.
#include "cgroup.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <thread>
#include <vector>

#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "imgstore/error.hpp"

namespace imgstore::bench {

namespace fs = std::filesystem;

namespace {

std::string read_text(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::uint64_t read_number(const fs::path& path) {
  const std::string s = read_text(path);
  if (s.rfind("max", 0) == 0) return UINT64_MAX;
  return std::strtoull(s.c_str(), nullptr, 10);
}

// The value of `key` in a "key value" per line file (memory.events, memory.oom_control).
std::uint64_t keyed_number(const fs::path& path, const std::string& key) {
  std::ifstream in(path);
  std::string k;
  std::uint64_t v = 0;
  while (in >> k >> v) {
    if (k == key) return v;
  }
  return 0;
}

// Writes `text` in one write(); returns 0 or the errno.
int write_text(const fs::path& path, const std::string& text) {
  const detail::Fd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC));
  if (fd.get() < 0) return errno;
  if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size())) return errno;
  return 0;
}

// Whether the space-separated list `text` holds `word`.
bool has_word(const std::string& text, const std::string& word) {
  std::istringstream ss(text);
  for (std::string w; ss >> w;) {
    if (w == word) return true;
  }
  return false;
}

struct Mount {
  fs::path dir;
  int version = 0;
};

// The memory hierarchy's mount and this process's group in it: v1 "cgroup" mounted with the
// memory option, else v2 "cgroup2" whose group lists memory in cgroup.controllers.
std::pair<Mount, std::string> find_hierarchy() {
  std::ifstream mounts("/proc/mounts");
  Mount v1, v2;
  for (std::string line; std::getline(mounts, line);) {
    std::istringstream ls(line);
    std::string dev, dir, type, opts;
    if (!(ls >> dev >> dir >> type >> opts)) continue;
    if (type == "cgroup" && ("," + opts + ",").find(",memory,") != std::string::npos) v1 = {dir, 1};
    if (type == "cgroup2" && v2.dir.empty()) v2 = {dir, 2};
  }
  std::ifstream self("/proc/self/cgroup");
  std::string own_v1, own_v2;
  for (std::string line; std::getline(self, line);) {
    const auto a = line.find(':'), b = line.find(':', a + 1);
    if (a == std::string::npos || b == std::string::npos) continue;
    const std::string controllers = "," + line.substr(a + 1, b - a - 1) + ",";
    if (controllers.find(",memory,") != std::string::npos) own_v1 = line.substr(b + 1);
    if (line.compare(0, 3, "0::") == 0) own_v2 = line.substr(b + 1);
  }
  if (!v1.dir.empty() && !own_v1.empty()) return {v1, own_v1};
  if (!v2.dir.empty() && !own_v2.empty()) {
    if (has_word(read_text(v2.dir / fs::path(own_v2).relative_path() / "cgroup.controllers"),
                 "memory")) {
      return {v2, own_v2};
    }
  }
  return {{}, {}};
}

std::atomic<unsigned> g_serial{0};

}  // namespace

std::string MemoryCgroup::probe(std::string& where) {
  if (::geteuid() != 0) {
    return fmt::format("it needs root to create a memory cgroup (running as uid {})", ::geteuid());
  }
  const auto [mount, own] = find_hierarchy();
  if (mount.version == 0) {
    return "no cgroup memory controller: neither a cgroup v1 hierarchy mounted with 'memory' "
           "(/sys/fs/cgroup/memory) nor a cgroup v2 group with 'memory' in cgroup.controllers "
           "is listed in /proc/mounts and /proc/self/cgroup";
  }
  where = fmt::format("cgroup v{} memory controller, new groups under {}", mount.version,
                      (mount.dir / fs::path(own).relative_path()).string());
  return {};
}

MemoryCgroup::MemoryCgroup(std::uint64_t limit_bytes) {
  std::string where;
  if (const std::string missing = probe(where); !missing.empty()) {
    throw UsageError("--out-of-memory: " + missing);
  }
  const auto [mount, own] = find_hierarchy();
  version_ = mount.version;
  const fs::path parent = mount.dir / fs::path(own).relative_path();
  if (version_ == 2) {
    // A v2 child group gets the memory controller only if its parent delegates it.
    if (!has_word(read_text(parent / "cgroup.subtree_control"), "memory")) {
      if (const int err = write_text(parent / "cgroup.subtree_control", "+memory")) {
        throw UsageError(fmt::format(
            "--out-of-memory: cannot enable the memory controller for child groups of '{}' "
            "(cgroup.subtree_control: {}); a cgroup v2 group holding processes cannot delegate "
            "it: run from a group that does, or with cgroup v1",
            parent.string(), std::strerror(err)));
      }
    }
  }
  for (int attempt = 0;; ++attempt) {
    dir_ = parent / fmt::format("imgstore-bench-oom-{}-{}", ::getpid(), g_serial++);
    if (::mkdir(dir_.c_str(), 0755) == 0) break;
    if (errno != EEXIST || attempt > 100) {
      throw UsageError(fmt::format("--out-of-memory: cannot create the cgroup '{}': {}",
                                   dir_.string(), std::strerror(errno)));
    }
  }
  procs_ = dir_ / "cgroup.procs";
  const fs::path limit_file = dir_ / (version_ == 1 ? "memory.limit_in_bytes" : "memory.max");
  if (const int err = write_text(limit_file, std::to_string(limit_bytes))) {
    ::rmdir(dir_.c_str());
    throw UsageError(fmt::format("--out-of-memory: cannot set the memory limit in '{}': {}",
                                 limit_file.string(), std::strerror(err)));
  }
  if (version_ == 2) write_text(dir_ / "memory.swap.max", "0");  // absent without swap: fine
}

MemoryCgroup::~MemoryCgroup() {
  if (dir_.empty()) return;
  // The child has been reaped, but the kernel may take a moment to let go of the group.
  for (int attempt = 0; attempt < 50; ++attempt) {
    if (::rmdir(dir_.c_str()) == 0 || errno == ENOENT) return;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::fprintf(stderr, "imgstore-bench: warning: cannot remove the cgroup '%s': %s\n",
               dir_.c_str(), std::strerror(errno));
}

CgroupUsage MemoryCgroup::usage() const {
  CgroupUsage u;
  if (version_ == 1) {
    u.limit = read_number(dir_ / "memory.limit_in_bytes");
    u.peak = read_number(dir_ / "memory.max_usage_in_bytes");
    u.fail_count = read_number(dir_ / "memory.failcnt");
    u.oom_kills = keyed_number(dir_ / "memory.oom_control", "oom_kill");
  } else {
    u.limit = read_number(dir_ / "memory.max");
    std::error_code ec;
    u.peak = fs::exists(dir_ / "memory.peak", ec) ? read_number(dir_ / "memory.peak") : 0;
    u.fail_count = keyed_number(dir_ / "memory.events", "max");
    u.oom_kills = keyed_number(dir_ / "memory.events", "oom_kill");
  }
  return u;
}

ProcMemory proc_memory() {
  ProcMemory m;
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    const auto kib = [&](std::size_t at) { return std::strtoull(line.c_str() + at, nullptr, 10) * 1024; };
    if (line.rfind("VmHWM:", 0) == 0) m.vm_hwm = kib(6);
    if (line.rfind("RssAnon:", 0) == 0) m.rss_anon = kib(8);
  }
  m.read_bytes = keyed_number("/proc/self/io", "read_bytes:");
  return m;
}

}  // namespace imgstore::bench
