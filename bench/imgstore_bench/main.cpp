// imgstore-bench: the tutorial's experiments, done properly, per format (PNG folder, LMDB, HDF5).
//
//   imgstore-bench [--out DIR] [--source SPEC | --store PATH] [--formats png,lmdb,hdf5]
//                  [--ns 10,100,...] [--max-n N] [--runs R] [--threads 1,2] [--quick] ...
//
// Per format and payload variant (LMDB raw|png, HDF5 contiguous|chunked|deflate): store one
// image, store N, read one, read N sequentially and shuffled, bytes on disk per N, and shuffled
// epochs (batch 256) through imgstore::PrefetchLoader and LibTorch's stock DataLoader over
// threads, with the page cache warm and cold. In the same run, the limits (memcpy gather of the
// same images from RAM in the same order, a sequential read() of the store's files, one-thread
// PNG decode x threads) and the tutorial's Python functions (bench/tutorial_peer.py) on the same
// images. Writes measurements.csv and results.json (schema: bench/README.md), runs
// bench/plot_report.py for plots and report.md, and prints every figure against its limit and
// peer. Exit status: 0 ok, 1 I/O or data failure, 2 usage.
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <set>
#include <sstream>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "bench.hpp"
#include "cli_common.hpp"
#include "common/floors.hpp"
#include "experiments.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"
#include "out_of_memory.hpp"

namespace imgstore::bench {
namespace {

const std::vector<std::uint64_t> kDefaultNs{10, 100, 1000, 10000, 100000};
const std::vector<std::uint64_t> kQuickNs{10, 100, 1000};

struct Options {
  fs::path out = "imgstore-bench-out";
  std::string source = "synthetic";
  std::string store;
  std::string formats;  // empty: every format of the table
  bool formats_given = false;
  std::string ns;
  std::uint64_t max_n = 0;
  std::uint64_t epoch_n = 0;
  int runs = 0;
  std::string threads;
  bool quick = false;
  std::size_t batch = 256;
  std::uint64_t seed = 1;
  std::size_t hdf5_chunk = 16;
  int deflate = 4;
  int png_level = 6;
  bool durable = false;
  bool no_python = false, no_cold = false, no_plots = false, no_variants = false;
  bool keep = false, quiet = false;
  std::string python = "/usr/bin/python3";
  std::uint64_t tutorial_max_n = 0;
};

// Parsed and checked configuration.
struct Config {
  Options opt;
  std::vector<std::uint64_t> ns;
  std::vector<unsigned> threads;
  int runs = 5;
  std::uint64_t epoch_n = 0;
  std::vector<Format> formats;
  std::vector<std::string> notes;
};

template <class T>
std::vector<T> parse_list(const std::string& text, const std::string& flag, T lo, T hi) {
  std::vector<T> out;
  std::stringstream ss(text);
  for (std::string item; std::getline(ss, item, ',');) {
    std::size_t used = 0;
    unsigned long long v = 0;
    try {
      if (item.empty() || item[0] == '-') throw std::invalid_argument("negative");
      v = std::stoull(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != item.size()) {
      throw UsageError(fmt::format("{} '{}': '{}' is not a whole number", flag, text, item));
    }
    if (v < lo || v > hi) {
      throw UsageError(fmt::format("{} '{}': {} is outside {}..{}", flag, text, v, lo, hi));
    }
    out.push_back(static_cast<T>(v));
  }
  if (out.empty()) throw UsageError(fmt::format("{} '{}': empty list", flag, text));
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Config make_config(const Options& o) {
  Config c;
  c.opt = o;
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  if (!o.store.empty() && (!o.ns.empty() || o.max_n || o.epoch_n)) {
    throw UsageError("--store benches the whole store: --ns, --max-n and --epoch-n do not apply");
  }
  c.runs = o.runs ? o.runs : (o.quick ? 3 : 5);
  if (o.ns.empty()) {
    c.ns = o.quick ? kQuickNs : kDefaultNs;
  } else {
    c.ns = parse_list<std::uint64_t>(o.ns, "--ns", 1, std::uint64_t{1} << 31);
  }
  if (o.max_n) {
    std::vector<std::uint64_t> capped;
    for (auto n : c.ns) {
      if (n < o.max_n) capped.push_back(n);
    }
    if (capped.size() < c.ns.size()) capped.push_back(o.max_n);  // --max-n itself is measured
    c.ns = capped;
  }
  if (o.threads.empty()) {
    if (o.quick) {
      c.threads = cores > 1 ? std::vector<unsigned>{1, cores} : std::vector<unsigned>{1};
    } else {
      for (unsigned t = 1; t <= cores; ++t) c.threads.push_back(t);
    }
  } else {
    c.threads = parse_list<unsigned>(o.threads, "--threads", 1, 1024);
  }
  c.epoch_n = o.epoch_n ? o.epoch_n : c.ns.back();
  if (o.max_n && c.epoch_n > o.max_n) {
    throw UsageError(fmt::format("--epoch-n {} exceeds --max-n {}", c.epoch_n, o.max_n));
  }
  if (o.formats.empty() && !o.formats_given) c.formats = all_formats();
  std::stringstream ss(o.formats);
  for (std::string f; std::getline(ss, f, ',');) {
    try {
      const Format fmt_ = parse_format(f);
      if (std::find(c.formats.begin(), c.formats.end(), fmt_) == c.formats.end()) {
        c.formats.push_back(fmt_);
      }
    } catch (const UsageError&) {
      throw UsageError(fmt::format("--formats '{}': unknown format '{}' ({})", o.formats, f,
                                   format_names(", ")));
    }
  }
  if (c.formats.empty()) throw UsageError(fmt::format("--formats '{}': no format", o.formats));
  return c;
}

// Creates --out and proves it writable, or throws IoError naming it.
void prepare_out_dir(const fs::path& out) {
  std::error_code ec;
  fs::create_directories(out, ec);
  if (ec || !fs::is_directory(out)) {
    throw IoError(fmt::format("cannot create output directory '{}': {}", out.string(),
                              ec ? ec.message() : "exists and is not a directory"));
  }
  const fs::path probe = out / ".imgstore-bench-write-probe";
  std::ofstream f(probe);
  f << "x";
  f.close();
  if (!f || !fs::exists(probe, ec)) {
    throw IoError(fmt::format("output directory '{}' is not writable: {}", out.string(),
                              std::strerror(errno)));
  }
  fs::remove(probe, ec);
}

std::string variant_of_store(const StoreReader& r) {
  // Variants are named by payload encoding, as build_variants does; HDF5's are by chunking,
  // which is not in the manifest.
  if (r.format() == Format::Hdf5) return "-";
  return to_string(r.manifest().encoding);
}

class Bench {
 public:
  explicit Bench(Config c) : c_(std::move(c)), out_(c_.opt.out) {}

  int run();

 private:
  void load_data();
  void build_variants();
  void bench_variant(const Variant& v);
  void bench_epochs(const Variant& v, const fs::path& store, std::uint64_t n);
  void bench_seqread(const Variant& v, const fs::path& store, std::uint64_t n);
  void bench_write_floors(const Variant& v, const fs::path& store, std::uint64_t n);
  void bench_limits(int first_run, const std::string& label);
  void run_python_peer();
  void run_plots();
  Json results_json(const std::vector<SummaryRow>& summary) const;

  void add(Measurement m) {
    rows_.push_back(std::move(m));
    tick();
  }
  void tick() {
    ++done_;
    if (bar_) bar_->update(done_, std::max(done_, total_));
  }
  void phase(const std::string& label, std::uint64_t steps) {
    if (bar_) bar_->finish();
    if (!c_.opt.quiet) fmt::print(stderr, "imgstore-bench: {}\n", label);
    bar_ = std::make_unique<cli::ProgressBar>(fmt::format("{:>16}", label.substr(0, 16)),
                                              c_.opt.quiet);
    done_ = 0;
    total_ = steps;
  }
  std::string cold_label() const { return cold_ == ColdMethod::None ? "cold_unavailable" : "cold"; }
  // Evicts the store before a cold run; remembers how much stayed resident.
  void make_cold(const fs::path& store) {
    if (cold_ == ColdMethod::None) return;
    max_resident_ = std::max(max_resident_, evict(store, cold_));
  }
  std::vector<std::string> caches() const {
    std::vector<std::string> v{"warm"};
    if (!c_.opt.no_cold) v.push_back(cold_label());
    return v;
  }
  unsigned max_threads() const { return c_.threads.back(); }

  Config c_;
  fs::path out_, stores_, trash_;
  ImageBatch data_;
  std::vector<std::string> class_names_;
  std::string source_desc_;
  std::vector<Variant> variants_;
  std::vector<std::vector<std::uint8_t>> pngs_;
  std::set<std::string> decoders_;  // the fastest PNG decoders of the decode limit's runs
  ColdMethod cold_ = ColdMethod::None;
  double max_resident_ = 0;
  Json machine_, libraries_;
  std::vector<Measurement> rows_;
  std::unique_ptr<cli::ProgressBar> bar_;
  std::uint64_t done_ = 0, total_ = 0;
};

void Bench::load_data() {
  const std::uint64_t want = std::max(c_.ns.back(), c_.epoch_n);
  if (!c_.opt.store.empty()) {
    const fs::path store = c_.opt.store;
    std::error_code ec;
    if (!fs::exists(store, ec)) {
      throw IoError(fmt::format("store '{}' does not exist", store.string()));
    }
    const Format f = detect_store_format(store);
    if (c_.opt.formats_given &&
        std::find(c_.formats.begin(), c_.formats.end(), f) == c_.formats.end()) {
      throw UsageError(fmt::format("store '{}' is in {} format, but --formats asks for {}",
                                   store.string(), to_string(f), c_.opt.formats));
    }
    auto reader = open_store(store);
    c_.formats = {f};
    data_ = read_all(*reader);
    class_names_ = reader->manifest().class_names;
    source_desc_ = fmt::format("store '{}' ({})", store.string(), reader->manifest().source);
    c_.ns = {reader->size()};
    c_.epoch_n = reader->size();
    Variant v;
    v.format = f;
    v.name = variant_of_store(*reader);
    v.png_payload = v.name == "png";
    v.existing = store;
    variants_.push_back(v);
    return;
  }
  std::string spec = c_.opt.source;
  if (spec == "synthetic" || spec == "synthetic:") {
    spec = fmt::format("synthetic:n={},test=0,h=32,w=32,c=3,classes=10,seed={}", want, c_.opt.seed);
  }
  auto source = open_source(spec);
  const auto splits = source->splits();
  if (splits.empty()) throw DataError(fmt::format("source '{}' has no splits", spec));
  const SplitInfo* split = &splits.front();
  for (const auto& s : splits) {
    if (s.name == "train") split = &s;
  }
  class_names_ = split->class_names;
  source_desc_ = fmt::format("{} (split '{}')", source->description(), split->name);
  auto stream = source->open(split->name);
  ImageBatch chunk;
  data_.resize(split->shape, 0);
  data_.pixels.reserve(want * split->shape.bytes());
  data_.labels.reserve(want);
  while (data_.size() < want && stream->next(chunk, 4096)) {
    const std::size_t take = std::min<std::size_t>(chunk.size(), want - data_.size());
    const std::size_t have = data_.size();
    data_.resize(chunk.shape, have + take);
    std::memcpy(data_.image(have), chunk.image(0), take * chunk.shape.bytes());
    std::copy_n(chunk.labels.begin(), take, data_.labels.begin() + static_cast<std::ptrdiff_t>(have));
  }
  if (data_.size() == 0) throw DataError(fmt::format("source '{}' yielded no images", spec));
  if (data_.size() < want) {
    c_.notes.push_back(fmt::format("the source holds {} images; larger N were capped", data_.size()));
    for (auto& n : c_.ns) n = std::min<std::uint64_t>(n, data_.size());
    c_.ns.erase(std::unique(c_.ns.begin(), c_.ns.end()), c_.ns.end());
    c_.epoch_n = std::min<std::uint64_t>(c_.epoch_n, data_.size());
  }
}

void Bench::build_variants() {
  if (!variants_.empty()) return;  // --store
  WriterOptions base;
  base.png_level = c_.opt.png_level;
  base.durable = c_.opt.durable;
  base.threads = max_threads();
  auto add = [&](Format f, const std::string& name, bool secondary, auto&& tweak) {
    if (std::find(c_.formats.begin(), c_.formats.end(), f) == c_.formats.end()) return;
    if (secondary && c_.opt.no_variants) return;
    Variant v;
    v.format = f;
    v.name = name;
    v.writer = base;
    v.png_payload = name == "png";
    tweak(v.writer);
    variants_.push_back(v);
  };
  const std::size_t chunk = c_.opt.hdf5_chunk;
  const int deflate = c_.opt.deflate;
  add(Format::PngFolder, "png", false, [](WriterOptions&) {});
  add(Format::Lmdb, "raw", false, [](WriterOptions& w) { w.encoding = Encoding::Raw; });
  add(Format::Lmdb, "png", true, [](WriterOptions& w) { w.encoding = Encoding::Png; });
  add(Format::Hdf5, "contiguous", false, [](WriterOptions&) {});
  add(Format::Hdf5, "chunked", true, [&](WriterOptions& w) { w.hdf5.chunk_records = chunk; });
  add(Format::Hdf5, "deflate", true, [&](WriterOptions& w) {
    w.hdf5.chunk_records = chunk;
    w.hdf5.deflate = deflate;
  });
}

void Bench::bench_seqread(const Variant& v, const fs::path& store, std::uint64_t n) {
  // At every thread count the loaders run at: two threads read a cold store faster than one
  // here (the VM's disk is cached by its host), so a one-thread limit was beaten. And at twice
  // the most, for the stock DataLoader, whose workers each read on TBB's threads.
  std::vector<unsigned> thread_counts = c_.threads;
  thread_counts.push_back(2 * max_threads());
  for (const auto& cache : caches()) {
    std::uint64_t bytes = 0;
    if (cache == "warm") time_seqread(store, 1, bytes);  // warm-up
    for (unsigned t : thread_counts) {
      for (int run = 1; run <= c_.runs; ++run) {
        double s = 0;
        if (cache != "warm") {
          make_cold(store);
          s = time_seqread(store, t, bytes);
        } else {
          // A warm read of a small store takes tens of microseconds, within the noise of one
          // run (a 10-record read_many beat it by 5%): repeat for at least 20 ms, as the
          // gather limit does, and count the mean pass.
          int passes = 0;
          double total = 0;
          while (total < 0.02) total += time_seqread(store, t, bytes), ++passes;
          s = total / passes;
        }
        add({"limit_seqread", "limit", to_string(v.format), v.name, n, t, cache, "sequential",
             run, s, bytes});
      }
    }
  }
}

// What the disk can do with the store's bytes, right after the store was written: the same
// byte count in one sequential pass of kFloorPiece writes, without and with fsync, and for a PNG
// folder the same files (sizes, count, one directory) created from one thread.
void Bench::bench_write_floors(const Variant& v, const fs::path& store, std::uint64_t n) {
  const std::string f = to_string(v.format);
  const std::uint64_t bytes = apparent_bytes(store);
  std::vector<std::uint64_t> png_sizes;
  if (v.format == Format::PngFolder) {
    for (const auto& file : store_files(store)) {
      if (file.extension() == ".png") png_sizes.push_back(fs::file_size(file));
    }
  }
  const fs::path scratch = stores_ / "floor";
  fs::create_directories(stores_);  // absent when benching an existing store (--store)
  for (int run = 1; run <= c_.runs; ++run) {
    for (Flush flush : {Flush::None, Flush::Fsync}) {
      const std::string tail = flush == Flush::Fsync ? "_fsync" : "";
      set_aside(scratch, trash_);
      const FloorRun w = write_floor(scratch, bytes, kFloorPiece, flush);
      add({"limit_write" + tail, "limit", f, v.name, n, 1, "warm", "-", run, w.seconds, w.bytes});
      if (v.format != Format::PngFolder) continue;
      set_aside(scratch, trash_);
      const FloorRun c = file_creation_floor(scratch, png_sizes, flush);
      add({"limit_files" + tail, "limit", f, v.name, n, 1, "warm", "-", run, c.seconds, c.bytes});
    }
  }
  set_aside(scratch, trash_);
}

void Bench::bench_epochs(const Variant& v, const fs::path& store, std::uint64_t n) {
  const std::string f = to_string(v.format);
  const std::uint64_t bytes = apparent_bytes(store);
  for (unsigned t : c_.threads) {
    for (const auto& cache : caches()) {
      std::uint64_t images = 0;
      const bool cold = cache != "warm";
      if (!cold) time_epoch_prefetch(store, c_.opt.batch, t, c_.opt.seed, 0, false, images);
      for (int run = 1; run <= c_.runs; ++run) {
        // Alternate the two loaders, so drift on a shared machine hits both alike.
        for (const char* impl : {"prefetch", "stock"}) {
          if (cold) make_cold(store);
          const double s = std::string(impl) == "prefetch"
                               ? time_epoch_prefetch(store, c_.opt.batch, t, c_.opt.seed,
                                                     static_cast<std::uint64_t>(run), cold, images)
                               : time_epoch_stock(store, c_.opt.batch, t, cold, images);
          if (images != n) {
            throw DataError(fmt::format("{} epoch over '{}' delivered {} images, expected {}",
                                        impl, store.string(), images, n));
          }
          add({"epoch", impl, f, v.name, n, t, cache, "shuffled", run, s, bytes});
        }
      }
    }
  }
}

void Bench::bench_variant(const Variant& v) {
  const std::string f = to_string(v.format);
  const int R = c_.runs;
  const std::uint64_t cold_runs = c_.opt.no_cold ? 0 : 1;
  // bench_seqread's runs per R: warm and cold, at each loader thread count and twice the most.
  const std::uint64_t seqread_runs = (1 + cold_runs) * (c_.threads.size() + 1);
  std::uint64_t steps = c_.threads.size() * (1 + cold_runs) * 2 * R;
  if (!v.existing.empty()) {
    steps += R + 2 * R + R * seqread_runs;
    phase(v.key(), steps);
    const fs::path store = v.existing;
    const std::uint64_t n = c_.ns.front();
    time_read_one(store, 0);
    for (int run = 1; run <= R; ++run) {
      add({"read_one", "imgstore", f, v.name, 1, 1, "warm", "-", run, time_read_one(store, 0),
           apparent_bytes(store)});
    }
    bench_write_floors(v, store, n);
    const std::uint64_t bytes = apparent_bytes(store);
    add({"disk_usage", "imgstore", f, v.name, n, 1, "warm", "-", 0, 0, bytes});
    for (const char* order : {"sequential", "shuffled"}) {
      const auto idx = read_order(n, std::string(order) == "shuffled", c_.opt.seed);
      time_read_many(store, idx);
      for (int run = 1; run <= R; ++run) {
        add({"read_many", "imgstore", f, v.name, n, 1, "warm", order, run,
             time_read_many(store, idx), bytes});
      }
    }
    bench_seqread(v, store, n);
    bench_epochs(v, store, n);
    return;
  }

  steps += c_.ns.size() *
           (R * (1 + 2 + seqread_runs + 2 + (v.format == Format::PngFolder ? 2 : 0)) + 1);
  steps += 2 * R;
  phase(v.key(), steps);
  const fs::path dir = stores_ / v.key();
  fs::create_directories(dir);
  const unsigned wt = v.writer.threads;

  // The tutorial's single-image store, then read back from it.
  const fs::path one = dir / store_file_name("one", v.format);
  for (int run = 1; run <= R; ++run) {
    set_aside(one, trash_);
    const double s = time_store_one(v, one, data_);
    add({"store_one", "imgstore", f, v.name, 1, wt, "warm", "-", run, s, apparent_bytes(one)});
  }
  time_read_one(one, 0);
  for (int run = 1; run <= R; ++run) {
    add({"read_one", "imgstore", f, v.name, 1, 1, "warm", "-", run, time_read_one(one, 0),
         apparent_bytes(one)});
  }
  set_aside(one, trash_);

  bool epoch_store_kept = false;
  for (auto n : c_.ns) {
    ImageBatch subset;
    subset.resize(data_.shape, n);
    std::memcpy(subset.pixels.data(), data_.pixels.data(), n * data_.shape.bytes());
    std::copy_n(data_.labels.begin(), n, subset.labels.begin());
    const fs::path store = dir / store_file_name(fmt::format("n{}", n), v.format);
    for (int run = 1; run <= R; ++run) {
      set_aside(store, trash_);
      const double s = time_store_many(v, store, subset, class_names_);
      add({"store_many", "imgstore", f, v.name, n, wt, "warm", "-", run, s, apparent_bytes(store)});
    }
    bench_write_floors(v, store, n);
    const std::uint64_t bytes = apparent_bytes(store);
    add({"disk_usage", "imgstore", f, v.name, n, 1, "warm", "-", 0, 0, bytes});
    const auto seq = read_order(n, false, c_.opt.seed), shuf = read_order(n, true, c_.opt.seed);
    time_read_many(store, seq);  // warm-up
    time_read_many(store, shuf);
    for (int run = 1; run <= R; ++run) {
      add({"read_many", "imgstore", f, v.name, n, 1, "warm", "sequential", run,
           time_read_many(store, seq), bytes});
      add({"read_many", "imgstore", f, v.name, n, 1, "warm", "shuffled", run,
           time_read_many(store, shuf), bytes});
    }
    bench_seqread(v, store, n);
    if (n == c_.epoch_n) {
      bench_epochs(v, store, n);
      epoch_store_kept = true;
    }
    if (!c_.opt.keep) set_aside(store, trash_);
  }
  if (!epoch_store_kept) {
    // --epoch-n not among --ns: write its store untimed.
    ImageBatch subset;
    subset.resize(data_.shape, c_.epoch_n);
    std::memcpy(subset.pixels.data(), data_.pixels.data(), c_.epoch_n * data_.shape.bytes());
    std::copy_n(data_.labels.begin(), c_.epoch_n, subset.labels.begin());
    const fs::path store = dir / store_file_name(fmt::format("n{}", c_.epoch_n), v.format);
    set_aside(store, trash_);
    store_many(v.format, store, subset, class_names_, v.writer);
    bench_epochs(v, store, c_.epoch_n);
    if (!c_.opt.keep) set_aside(store, trash_);
  }
  if (bar_) bar_->finish();
}

// The memory limits run twice, before and after the stores (runs 1..R, then R+1..2R), so that
// load drifting on a shared machine does not bias the ratios one way.
void Bench::bench_limits(int first_run, const std::string& label) {
  const int R = c_.runs;
  const bool decode = std::any_of(variants_.begin(), variants_.end(),
                                  [](const Variant& v) { return v.png_payload; });
  std::uint64_t steps = 0;
  for (auto n : c_.ns) {
    steps += 2 * R + (decode ? R : 0);
    if (n == c_.epoch_n) steps += R * (c_.threads.size() - 1);
  }
  phase(label, steps);
  if (decode && pngs_.empty()) {
    pngs_ = encode_pngs(data_, std::max(c_.ns.back(), c_.epoch_n), c_.opt.png_level);
  }
  auto ns = c_.ns;
  if (std::find(ns.begin(), ns.end(), c_.epoch_n) == ns.end()) ns.push_back(c_.epoch_n);
  for (auto n : ns) {
    for (const char* order : {"sequential", "shuffled"}) {
      const bool shuffled = std::string(order) == "shuffled";
      const auto idx = read_order(n, shuffled, c_.opt.seed);
      std::vector<unsigned> ts{1};
      if (n == c_.epoch_n && shuffled) ts = c_.threads;
      for (unsigned t : ts) {
        time_gather(data_, idx, c_.opt.batch, t);  // warm-up
        for (int run = first_run; run < first_run + R; ++run) {
          add({"limit_gather", "limit", "memory", "-", n, t, "warm", order, run,
               time_gather(data_, idx, c_.opt.batch, t), n * data_.shape.bytes()});
        }
      }
    }
    if (decode) {
      std::uint64_t png_bytes = 0;
      for (std::size_t i = 0; i < n; ++i) png_bytes += pngs_[i].size();
      const auto sample = decode_sample(pngs_, n);
      std::string decoder;
      for (int run = first_run; run < first_run + R; ++run) {
        const double s = time_decode_limit(sample, n, data_.shape, decoder);
        decoders_.insert(decoder);
        // The fastest decoder's one-thread rate times the thread count: the bound for a
        // loader with t threads.
        for (unsigned t : c_.threads) {
          rows_.push_back({"limit_decode", "limit", "memory", "png", n, t, "warm", "-", run,
                           s / t, png_bytes});
        }
        tick();
      }
    }
  }
  if (bar_) bar_->finish();
}

void Bench::run_python_peer() {
  if (c_.opt.no_python || c_.opt.python.empty()) {
    c_.notes.push_back("tutorial peer skipped (--no-python)");
    return;
  }
  const fs::path script = fs::path(IMGSTORE_SOURCE_DIR) / "bench" / "tutorial_peer.py";
  std::error_code ec;
  if (!fs::exists(script, ec)) {
    c_.notes.push_back(fmt::format("tutorial peer skipped: '{}' not found", script.string()));
    return;
  }
  if (::access(c_.opt.python.c_str(), X_OK) != 0) {
    c_.notes.push_back(fmt::format("tutorial peer skipped: no Python at '{}'", c_.opt.python));
    return;
  }
  const auto [lo, hi] = std::minmax_element(data_.labels.begin(), data_.labels.end());
  const auto ch = data_.shape.channels;
  if (*lo < 0 || *hi > 255 || !(ch == 1 || ch == 3 || ch == 4)) {
    c_.notes.push_back("tutorial peer skipped: it needs labels 0..255 and 1, 3 or 4 channels");
    return;
  }
  std::vector<std::uint64_t> ns;
  for (auto n : c_.ns) {
    if (!c_.opt.tutorial_max_n || n <= c_.opt.tutorial_max_n) ns.push_back(n);
  }
  if (ns.empty()) {
    c_.notes.push_back("tutorial peer skipped: no N within --tutorial-max-n");
    return;
  }
  const fs::path dir = out_ / "tutorial";
  fs::create_directories(dir);
  const std::uint64_t count = ns.back();
  const auto& s = data_.shape;
  write_npy(dir / "images.npy", "|u1", {count, s.height, s.width, s.channels},
            data_.pixels.data(), count * s.bytes());
  write_npy(dir / "labels.npy", "<i8", {count}, data_.labels.data(), count * sizeof(std::int64_t));
  std::string ns_text;
  for (auto n : ns) ns_text += (ns_text.empty() ? "" : ",") + std::to_string(n);
  const fs::path log = out_ / "tutorial_peer.log";
  const std::string cmd = fmt::format(
      "{} {} --images {} --labels {} --out {} --ns {} --runs {} --seed {} --png-level {} 2>{}",
      shell_quote(c_.opt.python), shell_quote(script.string()),
      shell_quote((dir / "images.npy").string()), shell_quote((dir / "labels.npy").string()),
      shell_quote((dir / "stores").string()), ns_text, c_.runs, c_.opt.seed, c_.opt.png_level,
      shell_quote(log.string()));
  phase("tutorial (Python)", 0);
  if (!c_.opt.quiet) fmt::print(stderr, "imgstore-bench: {}\n", cmd);
  const auto t0 = Clock::now();
  int status = 0;
  const std::string out = run_capture(cmd, status);
  std::size_t parsed = 0, bad = 0;
  std::stringstream lines(out);
  for (std::string line; std::getline(lines, line);) {
    if (line.empty()) continue;
    try {
      auto m = measurement_from_json(Json::parse(line));
      if (m.impl != "tutorial") throw DataError("impl is not 'tutorial'");
      rows_.push_back(m);
      ++parsed;
    } catch (const std::exception&) {
      ++bad;
    }
  }
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 3) {
    c_.notes.push_back(fmt::format(
        "tutorial peer skipped: Python packages missing (numpy, PIL, h5py, lmdb); see {}",
        log.string()));
  } else if (code != 0) {
    c_.notes.push_back(fmt::format("tutorial peer failed (exit {}); {} rows kept; see {}", code,
                                   parsed, log.string()));
  } else {
    c_.notes.push_back(fmt::format("tutorial peer: {} rows in {:.1f} s (N = {}); its reads are warm "
                                   "page cache only; log {}",
                                   parsed, seconds_since(t0), ns_text, log.string()));
  }
  if (bad) c_.notes.push_back(fmt::format("tutorial peer: {} unparsable stdout lines ignored", bad));
  if (!c_.opt.quiet) fmt::print(stderr, "imgstore-bench: {}\n", c_.notes.back());
  remove_tree(dir);
}

void Bench::run_plots() {
  if (c_.opt.no_plots) {
    c_.notes.push_back("plots skipped (--no-plots)");
    return;
  }
  const fs::path script = fs::path(IMGSTORE_SOURCE_DIR) / "bench" / "plot_report.py";
  std::error_code ec;
  if (!fs::exists(script, ec)) {
    fmt::print("plots: '{}' not found; skipped\n", script.string());
    return;
  }
  const fs::path log = out_ / "plot_report.log";
  const std::string cmd = fmt::format("{} {} --json {} --out {} >{} 2>&1", shell_quote(c_.opt.python),
                                      shell_quote(script.string()),
                                      shell_quote((out_ / "results.json").string()),
                                      shell_quote(out_.string()), shell_quote(log.string()));
  int status = 0;
  run_capture(cmd, status);
  const int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  if (code == 0) {
    fmt::print("plots and report: {} (log {})\n", out_.string(), log.string());
  } else if (code == 3) {
    fmt::print("plots skipped: matplotlib is missing (Debian's python3-matplotlib); see {}\n",
               log.string());
  } else {
    fmt::print("plots: {} exited {}; see {}\n", script.filename().string(), code, log.string());
  }
}

Json Bench::results_json(const std::vector<SummaryRow>& summary) const {
  Json j;
  j["schema"] = 1;
  j["machine"] = machine_;
  j["libraries"] = libraries_;
  j["dataset"] = {{"source", source_desc_},
                  {"shape", {data_.shape.height, data_.shape.width, data_.shape.channels}},
                  {"images", data_.size()}};
  j["config"] = {{"ns", c_.ns},
                 {"runs", c_.runs},
                 {"threads", c_.threads},
                 {"quick", c_.opt.quick},
                 {"cold_method", to_string(c_.opt.no_cold ? ColdMethod::None : cold_)},
                 {"notes", c_.notes},
                 {"batch_size", c_.opt.batch},
                 {"epoch_n", c_.epoch_n},
                 {"seed", c_.opt.seed}};
  Json& m = j["measurements"] = Json::array();
  for (const auto& r : rows_) m.push_back(measurement_json(r));
  Json& s = j["summary"] = Json::array();
  for (const auto& r : summary) s.push_back(summary_json(r));
  return j;
}

int Bench::run() {
  const auto t0 = Clock::now();
  prepare_out_dir(out_);
  stores_ = out_ / "stores";
  trash_ = out_ / ".trash";
  load_data();
  build_variants();
  machine_ = machine_info(out_);
  libraries_ = library_versions(c_.opt.no_python ? "" : c_.opt.python);

  std::string probe;
  cold_ = probe_cold_method(out_, probe);
  c_.notes.push_back("page-cache eviction " + probe);
  if (c_.opt.no_cold) c_.notes.push_back("cold runs skipped (--no-cold)");
  if (cold_ == ColdMethod::None && !c_.opt.no_cold) {
    c_.notes.push_back("neither posix_fadvise(DONTNEED) nor /proc/sys/vm/drop_caches evicts pages "
                       "here: 'cold' runs are labelled cold_unavailable and ran warm");
  }
  c_.notes.push_back(fmt::format(
      "imgstore stores are written {} with {} writer threads (the tutorial's without fsync); "
      "sync() runs before every store run, untimed",
      c_.opt.durable ? "durably (--durable: fsync before rename)" : "without fsync",
      max_threads()));
  if (machine_["disk"].get<std::string>().rfind("/dev/vd", 0) == 0) {
    c_.notes.push_back("the store sits on a virtual disk: 'cold' means evicted from this kernel's "
                       "page cache, but the host may still cache the disk image");
  }
  c_.notes.push_back("read_one/read_many time open + read (as the tutorial's functions), on one "
                     "thread, with record checksums verified; warm epochs exclude opening, cold "
                     "ones include it (opening an LMDB store walks its leaf pages, and the "
                     "disk's read-around of those faults reads most of a cold store)");
  c_.notes.push_back(fmt::format("HDF5 chunked/deflate: {} images per chunk, deflate level {}; "
                                 "PNG level {}",
                                 c_.opt.hdf5_chunk, c_.opt.deflate, c_.opt.png_level));
  c_.notes.push_back("bytes: apparent file sizes (as the tutorial peer reports them); limit_gather "
                     "is a memcpy of the records into batches on the loader's thread count; "
                     "limit_decode is the fastest full PNG decoder's one-thread time (timed on up "
                     "to 2000 of the n PNGs) divided by the thread count; the memory limits run "
                     "before and after the stores (twice the runs); limit_seqread reads the "
                     "store's files in order, cut into one contiguous part per loader thread (and "
                     "at twice the most threads, for the stock DataLoader)");

  fmt::print("imgstore-bench: {} images {} from {}\n", data_.size(), to_string(data_.shape),
             source_desc_);
  fmt::print("machine: {}, {} cores, {:.1f} GiB RAM, {}; out {} on {} ({})\n",
             machine_["cpu"].get<std::string>(), machine_["cores"].get<unsigned>(),
             machine_["ram_bytes"].get<double>() / (1ull << 30), machine_["kernel"].get<std::string>(),
             out_.string(), machine_["disk"].get<std::string>(),
             machine_["filesystem"].get<std::string>());
  std::string ns, ts;
  for (auto n : c_.ns) ns += (ns.empty() ? "" : ",") + std::to_string(n);
  for (auto t : c_.threads) ts += (ts.empty() ? "" : ",") + std::to_string(t);
  fmt::print("N = {}; epoch N = {}; runs {}; threads {}; batch {}; cold: {}\n", ns, c_.epoch_n,
             c_.runs, ts, c_.opt.batch, to_string(cold_));
  std::fflush(stdout);

  bench_limits(1, "limits (before)");
  for (const auto& v : variants_) bench_variant(v);
  bench_limits(c_.runs + 1, "limits (after)");
  std::string decoders;
  for (const auto& d : decoders_) decoders += (decoders.empty() ? "" : ", ") + d;
  if (!decoders.empty()) c_.notes.push_back("limit_decode's fastest full PNG decoder: " + decoders);
  double load[3] = {0, 0, 0};
  if (::getloadavg(load, 3) > 0) {
    const auto& start = machine_["load_avg_start"];
    c_.notes.push_back(fmt::format(
        "load average {:.1f} at the start, {:.1f} at the end on {} cores{}", start[0].get<double>(),
        load[0], machine_["cores"].get<unsigned>(),
        std::max(start[0].get<double>(), load[0]) > machine_["cores"].get<unsigned>()
            ? ": the machine was shared, so absolute figures are noisy; ratios compare runs "
              "interleaved in the same run"
            : ""));
  }
  if (bar_) bar_->finish();
  run_python_peer();
  if (max_resident_ > 0.05) {
    c_.notes.push_back(fmt::format("after eviction up to {:.0f}% of sampled store pages were still "
                                   "resident",
                                   100 * max_resident_));
  }

  const auto summary = summarize(rows_, c_.opt.durable);
  write_csv(out_ / "measurements.csv", rows_);
  {
    std::ofstream f(out_ / "results.json");
    f << results_json(summary).dump(1) << "\n";
    if (!f.flush()) throw IoError(fmt::format("cannot write '{}'", (out_ / "results.json").string()));
  }
  print_table(summary);
  for (const auto& n : c_.notes) fmt::print("note: {}\n", n);
  remove_tree(trash_);
  if (!c_.opt.keep) remove_tree(stores_);
  run_plots();
  fmt::print("wrote {} and {} in {:.1f} s\n", (out_ / "measurements.csv").string(),
             (out_ / "results.json").string(), seconds_since(t0));
  return cli::kOk;
}

}  // namespace
}  // namespace imgstore::bench

int main(int argc, char** argv) {
  using namespace imgstore;
  using namespace imgstore::bench;
  CLI::App app{"imgstore-bench: the tutorial's store/read experiments per format, with limits "
               "and peers (CSV, JSON, plots, report)"};
  // The out-of-memory experiment's children: one measured pass inside a memory cgroup.
  if (argc == 3 && std::string(argv[1]) == "--oom-child") return run_oom_child(argv[2]);
  Options o;
  OomOptions oom;
  bool out_of_memory = false;
  std::string out;
  app.add_option("--out", out, "output directory (default imgstore-bench-out)");
  auto* src = app.add_option("--source", o.source,
                             "images: anything imgstore-convert accepts (default synthetic "
                             "32x32x3, 10 classes)");
  app.add_option("--store", o.store, "bench an existing store instead (read experiments only)")
      ->excludes(src);
  app.add_option("--formats", o.formats, "comma-separated: " + format_names(", ") + " (default: all)");
  app.add_option("--ns", o.ns, "comma-separated store sizes (default 10,...,100000; quick 10,100,1000)");
  app.add_option("--max-n", o.max_n, "cap on N (itself measured)");
  app.add_option("--epoch-n", o.epoch_n, "images in the epoch store (default the largest N)");
  app.add_option("--runs", o.runs, "timed runs per figure (default 5; quick 3)");
  app.add_option("--threads", o.threads, "comma-separated loader threads (default 1..cores; quick 1,cores)");
  app.add_flag("--quick", o.quick, "small N, 3 runs, threads 1 and all cores (under 2 minutes)");
  app.add_option("--batch-size", o.batch, "epoch batch size")->check(CLI::Range(1, 1 << 20));
  app.add_option("--seed", o.seed, "seed of data and shuffles");
  app.add_option("--hdf5-chunk", o.hdf5_chunk, "images per chunk of the chunked/deflate HDF5 variants")
      ->check(CLI::Range(1, 1 << 20));
  app.add_option("--deflate", o.deflate, "deflate level of the HDF5 deflate variant")->check(CLI::Range(1, 9));
  app.add_option("--png-level", o.png_level, "zlib level of PNG files and payloads")->check(CLI::Range(0, 9));
  app.add_flag("--durable", o.durable,
               "fsync stores before their rename, as imgstore-convert does (default off, like the "
               "tutorial's code)");
  app.add_flag("--no-variants", o.no_variants, "only LMDB raw and HDF5 contiguous (no png/chunked/deflate)");
  app.add_flag("--no-cold", o.no_cold, "skip cold-cache runs");
  app.add_flag("--no-python", o.no_python, "skip the tutorial's Python code");
  app.add_option("--python", o.python, "Python with numpy, PIL, h5py, lmdb");
  app.add_option("--tutorial-max-n", o.tutorial_max_n, "largest N for the Python peer (default all)");
  app.add_flag("--no-plots", o.no_plots, "do not run bench/plot_report.py");
  app.add_flag("--keep", o.keep, "keep the stores in OUT/stores");
  app.add_flag("--quiet,-q", o.quiet, "no progress on stderr");
  app.add_flag("--out-of-memory", out_of_memory,
               "only the out-of-memory experiment (needs root and a cgroup memory controller): "
               "shuffled and quasi-random epochs of LMDB and HDF5 stores larger than a memory "
               "cgroup's limit, against the disk's random and sequential reads");
  app.add_option("--oom-limit-mib", oom.limit_mib, "out-of-memory: the children's memory limit (default 64)");
  app.add_option("--oom-factor", oom.factor, "out-of-memory: store size over the limit (default 4.5, at least 4)");
  app.add_option("--oom-windows", oom.windows,
                 "out-of-memory: comma-separated shuffle_window sizes in records (default: "
                 "windows of limit/16 and limit/4 bytes)");
  app.add_option("--oom-threads", oom.threads, "out-of-memory: loader threads (default: cores)");
  app.add_option("--oom-image", oom.image, "out-of-memory: synthetic image HxWxC (default 32x32x3)");
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    const int code = app.exit(e);
    return code == 0 ? cli::kOk : cli::kUsage;
  }
  o.formats_given = app.count("--formats") > 0;
  if (!out.empty()) o.out = out;
  try {
    if (o.runs < 0) throw UsageError(fmt::format("--runs {}: must be at least 1", o.runs));
    if (app.count("--runs") && o.runs == 0) throw UsageError("--runs 0: must be at least 1");
    if (app.count("--max-n") && o.max_n == 0) throw UsageError("--max-n 0: must be at least 1");
    if (app.count("--epoch-n") && o.epoch_n == 0) throw UsageError("--epoch-n 0: must be at least 1");
    if (out_of_memory) {
      oom.out = o.out;
      oom.runs = o.runs ? o.runs : (o.quick ? 3 : 5);
      oom.batch = o.batch;
      oom.seed = o.seed;
      oom.keep = o.keep;
      oom.quiet = o.quiet;
      return run_out_of_memory(oom);
    }
    Bench bench(make_config(o));
    return bench.run();
  } catch (const UsageError& e) {
    std::cerr << "imgstore-bench: " << e.what() << "\n";
    return cli::kUsage;
  } catch (const Error& e) {
    std::cerr << "imgstore-bench: " << e.what() << "\n";
    return cli::kBadData;
  } catch (const std::exception& e) {
    std::cerr << "imgstore-bench: " << e.what() << "\n";
    return cli::kBadData;
  }
}
