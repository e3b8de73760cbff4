// imgstore-bench --out-of-memory: shuffled epochs of stores at least 4x larger than the memory
// they may use (issue 12, "Stores larger than memory"); see bench/README.md.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>

namespace imgstore::bench {

struct OomOptions {
  std::filesystem::path out;
  std::uint64_t limit_mib = 64;    // the children's cgroup memory limit
  double factor = 4.5;             // each store holds at least factor x limit bytes of images
  std::string windows;             // shuffle_window sizes (records); empty: limit/16 and limit/4
  unsigned threads = 0;            // loader threads = concurrent random reads; 0: cores
  std::string image = "32x32x3";   // synthetic image shape HxWxC
  int runs = 5;
  std::size_t batch = 256;
  std::uint64_t seed = 1;
  bool keep = false, quiet = false;
};

// The experiment (parent side): writes the stores, runs every pass in a memory-limited child,
// prints the table, writes measurements.csv and results.json. Returns the exit status.
int run_out_of_memory(const OomOptions& options);

// The child side: `imgstore-bench --oom-child SPEC_JSON` runs one measured pass and prints one
// JSON line. Started only by run_out_of_memory, inside its cgroup.
int run_oom_child(const std::string& spec_json);

}  // namespace imgstore::bench
