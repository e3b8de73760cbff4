// imgstore-bench: shared types of the program (see main.cpp for what it measures).
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/scratch.hpp"
#include "imgstore/image.hpp"
#include "imgstore/manifest.hpp"
#include "imgstore/store.hpp"

namespace imgstore::bench {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using Json = nlohmann::ordered_json;

inline double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// One timed run: a row of measurements.csv (columns as in the shared schema).
struct Measurement {
  std::string experiment, impl, format, variant;
  std::uint64_t n = 0;
  unsigned threads = 1;
  std::string cache = "warm", order = "-";
  int run = 1;
  double seconds = 0;
  std::uint64_t bytes = 0;

  double images_per_s() const { return seconds > 0 ? static_cast<double>(n) / seconds : 0; }
};

inline const char* kCsvHeader =
    "experiment,impl,format,variant,n,threads,cache,order,run,seconds,images_per_s,bytes";

// One row of the summary: the runs of one configuration, with its comparisons.
struct SummaryRow {
  Measurement key;  // run/seconds unused
  int runs = 0;
  double median_s = 0, min_s = 0, max_s = 0, images_per_s = 0;
  std::uint64_t bytes = 0;
  std::optional<std::string> limit, peer;
  std::optional<double> ratio_to_limit, ratio_to_peer;
  bool limit_beaten = false;  // ratio_to_limit > 1: faster than its limit, so the limit is wrong
};

// A store layout under test: the container plus what is inside it.
struct Variant {
  Format format = Format::PngFolder;
  std::string name;           // png | raw | png | contiguous | chunked | deflate | "-"
  WriterOptions writer;
  bool png_payload = false;   // records are PNG-compressed (decode bound)
  fs::path existing;          // --store: bench this store instead of writing ones
  std::string key() const { return to_string(format) + "-" + name; }
};

// How the store's pages are evicted before a cold run.
enum class ColdMethod { Fadvise, DropCaches, None };
std::string to_string(ColdMethod m);

// ---- system.cpp ----
Json machine_info(const fs::path& out);
Json library_versions(const std::string& python);  // python: empty to skip its packages
std::vector<fs::path> store_files(const fs::path& store);  // regular files, sorted
std::uint64_t allocated_bytes(const fs::path& store);      // du: blocks actually used
std::uint64_t apparent_bytes(const fs::path& store);
// Finds a way to evict pages (probing with a scratch file in `dir`).
ColdMethod probe_cold_method(const fs::path& dir, std::string& detail);
// Evicts the store's pages; returns the fraction of sampled pages still resident afterwards.
double evict(const fs::path& store, ColdMethod method);
// Writes a .npy file (version 1.0, C order).
void write_npy(const fs::path& path, const std::string& descr, const std::vector<std::uint64_t>& shape,
               const void* data, std::size_t bytes);
// Runs a shell command, returns its stdout; status receives the wait status.
std::string run_capture(const std::string& command, int& status);
std::string shell_quote(const std::string& s);

// ---- results.cpp ----
void write_csv(const fs::path& path, const std::vector<Measurement>& rows);
// durable_stores: the stores were fsynced (--durable), so their write floors are the fsync ones.
std::vector<SummaryRow> summarize(const std::vector<Measurement>& rows, bool durable_stores);
Json measurement_json(const Measurement& m);
Json summary_json(const SummaryRow& s);
void print_table(const std::vector<SummaryRow>& summary);
// Parses one JSON line of the Python peer into a measurement; throws on a malformed row.
Measurement measurement_from_json(const Json& j);

}  // namespace imgstore::bench
