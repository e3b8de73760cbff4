// Stress reader: reads one store through imgstore::PrefetchLoader (shuffled, several threads)
// for many epochs or a number of seconds and checks EVERY image of every batch against the
// store's manifest checksums, computed here independently of the reader's own check.
// Prints one JSON line; exits 1 on any mismatch or error, 2 on bad arguments.
//
//   imgstore-test-stress-reader STORE [--seconds S] [--epochs N] [--threads T] [--seed K]
//
// Several copies run at once against the same stores in tests/cli/test_stress.sh.
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"
#include "imgstore/store.hpp"
#include "imgstore/torch/loader.hpp"

namespace {

using namespace imgstore;
using Clock = std::chrono::steady_clock;

// Resident set size in MiB from /proc/self/status (VmRSS is in kB); -1 if unreadable.
double rss_mib() {
  std::ifstream in("/proc/self/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("VmRSS:", 0) == 0) {
      return std::stod(line.substr(6)) / 1024.0;
    }
  }
  return -1;
}

struct Args {
  std::string store;
  double seconds = 0;        // 0: no time limit
  std::uint64_t epochs = 0;  // 0: no epoch limit
  std::uint64_t min_epochs = 2;
  unsigned threads = 2;
  std::uint64_t seed = 1;
  std::size_t batch_size = 64;
  std::size_t prefetch_depth = 4;
  bool reader_verify = true;
  int max_errors_printed = 10;
};

struct Stats {
  std::uint64_t epochs = 0, batches = 0, images = 0, errors = 0;
};

// Checks a batch whose first image is position `first` of the epoch's visiting order `indices`
// against the manifest checksums; returns the mismatches found.
std::uint64_t verify_batch(const torch::data::Example<>& batch, std::size_t first,
                           const std::vector<std::uint64_t>& indices, const Manifest& manifest,
                           std::uint64_t epoch, std::uint64_t batch_no, int& printed,
                           int max_printed) {
  std::uint64_t errors = 0;
  auto report = [&](const std::string& msg) {
    ++errors;
    if (printed++ < max_printed) std::cerr << "stress-reader: " << msg << "\n";
  };
  const auto& s = manifest.shape;
  const std::int64_t n = batch.data.size(0);
  if (batch.data.scalar_type() != torch::kUInt8 || batch.data.dim() != 4 ||
      batch.data.size(1) != s.channels || batch.data.size(2) != s.height ||
      batch.data.size(3) != s.width || batch.target.dim() != 1 || batch.target.size(0) != n) {
    report(fmt::format("epoch {} batch {}: unexpected batch shape", epoch, batch_no));
    return errors;
  }
  if (first + static_cast<std::size_t>(n) > indices.size()) {
    report(fmt::format("epoch {} batch {}: more images than epoch_indices() lists", epoch,
                       batch_no));
    return errors;
  }
  // [B,C,H,W] back to HWC per image, as the checksum is defined over.
  const torch::Tensor hwc = batch.data.permute({0, 2, 3, 1}).contiguous();
  const torch::Tensor labels = batch.target.to(torch::kInt64).contiguous();
  const std::uint8_t* px = hwc.data_ptr<std::uint8_t>();
  const std::int64_t* lab = labels.data_ptr<std::int64_t>();
  const std::size_t bytes = s.bytes();
  for (std::int64_t i = 0; i < n; ++i) {
    const std::uint64_t record = indices[first + static_cast<std::size_t>(i)];
    if (record >= manifest.checksums.size()) {
      report(fmt::format("epoch {} batch {}: index {} out of range", epoch, batch_no, record));
      continue;
    }
    const std::uint8_t* image = px + static_cast<std::size_t>(i) * bytes;
    const std::uint64_t got = record_checksum(image, bytes, lab[i]);
    if (got != manifest.checksums[record]) {
      report(fmt::format("epoch {} batch {} image {}: record {} (label {}) checksum {} != "
                         "manifest {}", epoch, batch_no, i, record, lab[i], to_hex64(got),
                         to_hex64(manifest.checksums[record])));
    }
  }
  return errors;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"read a store with PrefetchLoader and verify every image against its manifest"};
  Args a;
  app.add_option("store", a.store, "store path (any format)")->required();
  app.add_option("--seconds", a.seconds, "stop after this long (at a batch boundary, once "
                                         "--min-epochs are done); 0: no limit");
  app.add_option("--epochs", a.epochs, "stop after this many epochs; 0: no limit");
  app.add_option("--min-epochs", a.min_epochs, "epochs to finish before --seconds may stop us")
      ->capture_default_str();
  app.add_option("--threads", a.threads, "loader threads")->check(CLI::Range(1u, 64u))
      ->capture_default_str();
  app.add_option("--seed", a.seed, "shuffle seed")->capture_default_str();
  app.add_option("--batch-size", a.batch_size, "batch size")->check(CLI::Range(1u, 65536u))
      ->capture_default_str();
  app.add_option("--prefetch-depth", a.prefetch_depth, "loader buffers")
      ->check(CLI::Range(1u, 64u))->capture_default_str();
  bool no_reader_verify = false;
  app.add_flag("--no-reader-verify", no_reader_verify,
               "turn off the reader's own checksum check (ours still runs)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? 0 : 2;
  }
  if (a.seconds <= 0 && a.epochs == 0) a.epochs = 1;
  a.reader_verify = !no_reader_verify;

  nlohmann::ordered_json out;
  Stats st;
  // Sampled while the loader is alive: after the first epoch, then after every later one (and
  // where a timed run stops), so the comparison sees the loader's steady state.
  double rss_first = -1, rss_last = -1, rss_max = -1;
  std::string format = "?";
  std::string failure;
  const auto t0 = Clock::now();
  try {
    // The manifest from a reader of our own, so the check does not rely on the loader's reader.
    ReaderOptions manifest_opts;
    manifest_opts.verify_checksums = false;
    const Manifest manifest = open_store(a.store, manifest_opts)->manifest();
    format = to_string(manifest.format);

    LoaderOptions lo;
    lo.batch_size = a.batch_size;
    lo.shuffle = true;
    lo.seed = a.seed;
    lo.threads = a.threads;
    lo.prefetch_depth = a.prefetch_depth;
    lo.reader.verify_checksums = a.reader_verify;
    PrefetchLoader loader(a.store, lo);
    if (loader.reader().size() != manifest.count) {
      throw DataError(fmt::format("loader sees {} records, manifest says {}",
                                  loader.reader().size(), manifest.count));
    }
    const auto deadline = t0 + std::chrono::duration<double>(a.seconds);
    int printed = 0;
    bool stop = false;
    for (std::uint64_t epoch = 0; !stop && (a.epochs == 0 || epoch < a.epochs); ++epoch) {
      loader.set_epoch(epoch);
      const std::vector<std::uint64_t> indices = loader.epoch_indices(epoch);
      std::size_t pos = 0;
      std::uint64_t batch_no = 0;
      for (auto& batch : loader) {
        st.errors += verify_batch(batch, pos, indices, manifest, epoch, batch_no, printed,
                                  a.max_errors_printed);
        pos += static_cast<std::size_t>(batch.data.size(0));
        ++batch_no;
        ++st.batches;
        st.images += static_cast<std::uint64_t>(batch.data.size(0));
        if (a.seconds > 0 && st.epochs >= a.min_epochs && Clock::now() >= deadline) {
          stop = true;  // leaving mid-epoch: the loader cancels its pipeline
          rss_last = rss_mib();
          rss_max = std::max(rss_max, rss_last);
          break;
        }
      }
      if (stop) break;
      if (pos != indices.size() || batch_no != loader.batches_per_epoch()) {
        ++st.errors;
        std::cerr << fmt::format("stress-reader: epoch {}: {} images in {} batches, expected {} "
                                 "in {}\n", epoch, pos, batch_no, indices.size(),
                                 loader.batches_per_epoch());
      }
      ++st.epochs;
      rss_last = rss_mib();
      rss_max = std::max(rss_max, rss_last);
      if (st.epochs == 1) rss_first = rss_last;
      if (a.seconds > 0 && st.epochs >= a.min_epochs && Clock::now() >= deadline) stop = true;
    }
  } catch (const std::exception& e) {
    ++st.errors;
    failure = e.what();
    std::cerr << "stress-reader: " << a.store << ": " << e.what() << "\n";
  }
  const double secs = std::chrono::duration<double>(Clock::now() - t0).count();
  out["store"] = a.store;
  out["format"] = format;
  out["seed"] = a.seed;
  out["threads"] = a.threads;
  out["epochs"] = st.epochs;
  out["batches_verified"] = st.batches;
  out["images_verified"] = st.images;
  out["seconds"] = secs;
  out["images_per_s"] = secs > 0 ? static_cast<double>(st.images) / secs : 0.0;
  out["rss_first_mib"] = rss_first;
  out["rss_last_mib"] = rss_last;
  out["rss_max_mib"] = rss_max;
  out["errors"] = st.errors;
  if (!failure.empty()) out["failure"] = failure;
  std::cout << out.dump() << std::endl;
  return st.errors == 0 ? 0 : 1;
}
