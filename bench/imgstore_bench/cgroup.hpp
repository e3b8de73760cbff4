// imgstore-bench: a memory cgroup for one child process (the out-of-memory experiment).
//
// A MemoryCgroup is a new, uniquely named group below the cgroup this process is in (so any
// limit the caller already runs under still applies), with a memory limit. Page cache the
// group's processes read is charged to it too, so a limit smaller than a store keeps the store
// out of memory. cgroup v1 (memory controller: memory.limit_in_bytes) first, else cgroup v2
// (memory.max). The directory is removed by the destructor, also after an error.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace imgstore::bench {

// What the group's own counters say about the peak.
struct CgroupUsage {
  std::uint64_t limit = 0;       // bytes, as the kernel rounded it
  std::uint64_t peak = 0;        // max_usage_in_bytes (v1) / memory.peak (v2); 0 if unknown
  std::uint64_t fail_count = 0;  // times usage hit the limit (v1 failcnt / v2 events "max")
  std::uint64_t oom_kills = 0;   // OOM kills inside the group (v1 oom_control / v2 events)
};

class MemoryCgroup {
 public:
  // Creates the group with a limit of `limit_bytes`. Throws UsageError naming what is missing
  // (not root, no memory controller, a group that cannot be created or limited).
  explicit MemoryCgroup(std::uint64_t limit_bytes);
  ~MemoryCgroup();
  MemoryCgroup(const MemoryCgroup&) = delete;
  MemoryCgroup& operator=(const MemoryCgroup&) = delete;

  // The file a process writes "0" (itself) to in order to join the group.
  const std::filesystem::path& procs_file() const { return procs_; }
  const std::filesystem::path& dir() const { return dir_; }
  int version() const { return version_; }
  CgroupUsage usage() const;

  // "cgroup v1 memory at /sys/fs/cgroup/memory/..." or why none is usable (empty: usable).
  static std::string probe(std::string& where);

 private:
  std::filesystem::path dir_, procs_;
  int version_ = 0;
};

// Peak and current figures of this process from /proc/self/status and /proc/self/io.
struct ProcMemory {
  std::uint64_t vm_hwm = 0;      // peak resident set (VmHWM), bytes
  std::uint64_t rss_anon = 0;    // resident anonymous memory now (RssAnon), bytes
  std::uint64_t read_bytes = 0;  // bytes this process made the block layer read (/proc/self/io)
};
ProcMemory proc_memory();

}  // namespace imgstore::bench
