// imgstore-bench --out-of-memory, parent side: writes a raw LMDB and a contiguous HDF5 store of
// synthetic images at least `factor` x the memory limit, then, interleaved per run, starts each
// measured pass in a new child confined by a memory cgroup (the store's pages evicted first):
// the disk's random-read limit (O_DIRECT), a fully shuffled epoch through PrefetchLoader,
// quasi-random epochs (LoaderOptions::shuffle_window) and a sequential read of the store.
#include "out_of_memory.hpp"

#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "bench.hpp"
#include "cgroup.hpp"
#include "cli_common.hpp"
#include "common/median.hpp"
#include "detail/fs_util.hpp"
#include "imgstore/convert.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"

namespace imgstore::bench {

namespace {

constexpr std::uint64_t kPage = 4096;
constexpr const char* kCache = "out_of_memory";

// One store under test and what a record costs on disk.
struct StoreCase {
  std::string format, variant;
  fs::path store, data_file;
  std::uint64_t bytes = 0;         // apparent size of the store's files
  std::uint64_t request = 0;       // bytes the store reads from disk per record (page-rounded)
  std::uint64_t expected_sum = 0;  // sum of the manifest's record checksums
};

// One kind of measured pass (a column of the comparison).
struct Pass {
  std::string experiment, impl, order, kind;
  std::size_t window = 0;
  bool no_readahead = true;
  unsigned threads = 1;
};

struct ChildRun {
  Json result;
  CgroupUsage usage;
};

std::string self_exe() {
  std::error_code ec;
  const fs::path p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw IoError(fmt::format("cannot read /proc/self/exe: {}", ec.message()));
  return p.string();
}

std::string describe_status(int status) {
  if (WIFSIGNALED(status)) return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  return fmt::format("exited {} (its error is above)", WEXITSTATUS(status));
}

// Runs `imgstore-bench --oom-child SPEC` with a new memory cgroup of `limit` bytes, which the
// child joins once started (LibTorch loaded), before it opens the store: from then on all it
// allocates, maps and reads is charged to the group. What start-up took (about 60 MiB of
// LibTorch's relocations and static data) stays charged to this process's group.
ChildRun run_child(Json spec, std::uint64_t limit) {
  MemoryCgroup group(limit);
  spec["cgroup_procs"] = group.procs_file().string();
  std::string exe = self_exe(), flag = "--oom-child", arg = spec.dump();
  char* argv[] = {exe.data(), flag.data(), arg.data(), nullptr};
  int fds[2];
  if (::pipe2(fds, O_CLOEXEC) != 0) throw IoError(fmt::format("pipe: {}", std::strerror(errno)));
  detail::Fd rd(fds[0]), wr(fds[1]);
  const pid_t pid = ::fork();
  if (pid < 0) throw IoError(fmt::format("fork: {}", std::strerror(errno)));
  if (pid == 0) {  // only async-signal-safe calls until exec
    if (::dup2(wr.get(), STDOUT_FILENO) < 0) ::_exit(121);
    ::execv(exe.c_str(), argv);
    ::_exit(122);
  }
  wr.close();
  std::string out;
  char buf[4096];
  for (;;) {
    const ssize_t n = ::read(rd.get(), buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  ChildRun r;
  r.usage = group.usage();
  const std::string what = fmt::format("the {} pass over '{}' (cgroup '{}', limit {} MiB)",
                                       spec.at("kind").get<std::string>(),
                                       spec.value("store", spec.value("file", std::string("?"))),
                                       group.dir().string(), limit >> 20);
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    throw DataError(fmt::format("{} {}{}", what, describe_status(status),
                                r.usage.oom_kills ? "; the cgroup reports an OOM kill: raise "
                                                    "--oom-limit-mib"
                                                  : ""));
  }
  const auto last = out.find_last_not_of('\n');
  const auto start = out.rfind('\n', last);
  try {
    r.result = Json::parse(out.substr(start == std::string::npos ? 0 : start + 1));
  } catch (const std::exception&) {
    throw DataError(fmt::format("{} printed no result line: '{}'", what, out));
  }
  return r;
}

// "32x32x3" -> Shape.
Shape parse_shape(const std::string& text) {
  unsigned h = 0, w = 0, c = 0;
  char x1 = 0, x2 = 0;
  std::istringstream ss(text);
  if (!(ss >> h >> x1 >> w >> x2 >> c) || x1 != 'x' || x2 != 'x' || !ss.eof() || !h || !w || !c ||
      c > 4 || h > 4096 || w > 4096) {
    throw UsageError(fmt::format("--oom-image '{}': expected HxWxC (e.g. 32x32x3, C 1..4)", text));
  }
  return Shape{h, w, c};
}

// Bytes LMDB reads for one record: a value too large for a leaf node (node header 8 + key 8 +
// value over LMDB's nodemax, 2038 for 4 KiB pages) lives in its own run of overflow pages
// (16-byte page header); a small one shares its leaf page. Either way whole pages.
std::uint64_t lmdb_request(std::size_t image_bytes) {
  const std::uint64_t value = 32 + image_bytes;  // imgstore's record header + raw pixels
  if (8 + 8 + value <= 2038) return kPage;
  return (value + 16 + kPage - 1) / kPage * kPage;
}

class OomBench {
 public:
  explicit OomBench(OomOptions o) : o_(std::move(o)) {}
  int run();

 private:
  void configure();
  void write_stores();
  std::vector<Pass> passes() const;
  void measure(const StoreCase& s, const Pass& p, int run);
  Json spec_for(const StoreCase& s, const Pass& p, int run) const;
  void check_epoch(const StoreCase& s, const Pass& p, const Json& r) const;
  void report(const std::vector<SummaryRow>& summary) const;
  Json results_json(const std::vector<SummaryRow>& summary) const;

  OomOptions o_;
  Shape shape_;
  std::uint64_t limit_ = 0, n_ = 0;
  unsigned threads_ = 1;
  std::vector<std::size_t> windows_;
  std::vector<StoreCase> stores_;
  std::vector<Measurement> rows_;
  Json passes_ = Json::array();
  std::vector<std::string> notes_;
  std::string where_;
  Json machine_;
  double max_resident_ = 0;
};

void OomBench::configure() {
  if (const std::string missing = MemoryCgroup::probe(where_); !missing.empty()) {
    throw UsageError("--out-of-memory: " + missing);
  }
  if (o_.factor < 4) throw UsageError(fmt::format("--oom-factor {}: must be at least 4", o_.factor));
  if (o_.limit_mib < 16) throw UsageError(fmt::format("--oom-limit-mib {}: must be at least 16", o_.limit_mib));
  shape_ = parse_shape(o_.image);
  limit_ = o_.limit_mib << 20;
  threads_ = o_.threads ? o_.threads : std::max(1u, std::thread::hardware_concurrency());
  // The smaller store (HDF5: exactly n x image bytes) holds at least factor x limit.
  n_ = static_cast<std::uint64_t>(std::ceil(o_.factor * static_cast<double>(limit_) / shape_.bytes()));
  const std::uint64_t footprint = lmdb_request(shape_.bytes());
  if (o_.windows.empty()) {
    // A window of limit/16 leaves room for several windows plus the loader's buffers in the
    // cache; limit/4 is as random as still fits comfortably. Both at least one batch.
    for (std::uint64_t share : {16, 4}) {
      windows_.push_back(std::max<std::size_t>(o_.batch, limit_ / share / footprint));
    }
  } else {
    std::stringstream ss(o_.windows);
    for (std::string w; std::getline(ss, w, ',');) {
      char* end = nullptr;
      const unsigned long long v = std::strtoull(w.c_str(), &end, 10);
      if (w.empty() || *end || v == 0) throw UsageError(fmt::format("--oom-windows '{}': '{}' is not a positive record count", o_.windows, w));
      windows_.push_back(static_cast<std::size_t>(v));
    }
  }
}

void OomBench::write_stores() {
  const fs::path dir = o_.out / "oom-stores";
  remove_tree(dir);
  fs::create_directories(dir);
  const std::string spec = fmt::format("synthetic:n={},h={},w={},c={},classes=10,seed={}", n_,
                                       shape_.height, shape_.width, shape_.channels, o_.seed);
  auto source = open_source(spec);
  const std::string split = source->splits().front().name;
  ConvertOptions co;
  co.formats = {Format::Lmdb, Format::Hdf5};  // raw LMDB, contiguous HDF5: the defaults
  if (!o_.quiet) fmt::print(stderr, "imgstore-bench: writing {} images {} as LMDB and HDF5 into {}\n", n_, to_string(shape_), dir.string());
  const ConvertResult written = convert_split(*source, split, dir, co);
  for (const auto& f : written.formats) {
    StoreCase s;
    s.format = to_string(f.format);
    s.store = f.path;
    s.data_file = f.format == Format::Lmdb ? f.path / "data.mdb" : f.path;
    s.variant = f.format == Format::Lmdb ? "raw" : "contiguous";
    s.request = f.format == Format::Lmdb ? lmdb_request(shape_.bytes())
                                         : (shape_.bytes() + kPage - 1) / kPage * kPage;
    s.bytes = apparent_bytes(f.path);
    {
      auto reader = open_store(f.path);  // closed before any pass: nothing stays mapped
      for (auto c : reader->manifest().checksums) s.expected_sum += c;
    }
    if (s.bytes < o_.factor * static_cast<double>(limit_)) {
      throw DataError(fmt::format("'{}' holds {} bytes, less than {} x the {} MiB limit", f.path.string(), s.bytes, o_.factor, o_.limit_mib));
    }
    stores_.push_back(s);
  }
}

std::vector<Pass> OomBench::passes() const {
  std::vector<Pass> v;
  v.push_back({"limit_randread", "limit", "shuffled", "randread", 0, true, threads_});
  // The full shuffle as the docs advise for stores larger than RAM: no readahead (LMDB
  // MDB_NORDAHEAD; HDF5 reads with pread() and POSIX_FADV_RANDOM instead of its mapping), so
  // a record costs its own pages and nothing more.
  v.push_back({"oom_epoch", "prefetch", "shuffled", "epoch", 0, true, threads_});
  // Quasi-random with readahead on: a window's neighbours are wanted soon, so reading ahead
  // turns many small random reads into fewer large ones.
  for (auto w : windows_) {
    v.push_back({"oom_epoch", "prefetch", fmt::format("window_{}", w), "epoch", w, false, threads_});
  }
  v.push_back({"limit_seqread", "limit", "sequential", "seqread", 0, false, 1});
  return v;
}

Json OomBench::spec_for(const StoreCase& s, const Pass& p, int run) const {
  Json spec{{"kind", p.kind}, {"threads", p.threads}, {"seed", o_.seed}};
  if (p.kind == "epoch") {
    spec.update({{"store", s.store.string()}, {"batch", o_.batch}, {"window", p.window},
                 {"no_readahead", p.no_readahead}, {"epoch", run}});
  } else if (p.kind == "randread") {
    spec.update({{"file", s.data_file.string()}, {"request", s.request}, {"count", n_},
                 {"seed", o_.seed * 1000 + static_cast<std::uint64_t>(run)}});
  } else {
    Json files = Json::array();
    for (const auto& f : store_files(s.store)) files.push_back(f.string());
    spec.update({{"files", files}, {"images", n_}, {"store", s.store.string()}});
  }
  return spec;
}

void OomBench::check_epoch(const StoreCase& s, const Pass& p, const Json& r) const {
  const auto images = r.at("images").get<std::uint64_t>();
  if (images != n_ || !r.at("permutation").get<bool>() ||
      r.at("checksum").get<std::uint64_t>() != s.expected_sum) {
    throw DataError(fmt::format(
        "{} epoch ({}) over '{}' delivered {} images (expected {}), order a permutation: {}, "
        "checksum sum {:016x} (manifest {:016x})",
        p.order, s.format, s.store.string(), images, n_, r.at("permutation").get<bool>(),
        r.at("checksum").get<std::uint64_t>(), s.expected_sum));
  }
}

void OomBench::measure(const StoreCase& s, const Pass& p, int run) {
  const double resident = evict(s.store, ColdMethod::Fadvise);  // every pass starts cold
  max_resident_ = std::max(max_resident_, resident);
  const ChildRun c = run_child(spec_for(s, p, run), limit_);
  const Json& r = c.result;
  if (p.kind == "epoch") check_epoch(s, p, r);
  if (c.usage.peak > c.usage.limit || c.usage.oom_kills) {
    throw DataError(fmt::format("the memory limit did not hold for {} {}: cgroup peak {} bytes, "
                                "limit {}, OOM kills {}",
                                s.format, p.order, c.usage.peak, c.usage.limit, c.usage.oom_kills));
  }
  Measurement m{p.experiment, p.impl, s.format, s.variant, n_, p.threads, kCache, p.order, run,
                r.at("seconds").get<double>(), r.at("bytes_read").get<std::uint64_t>()};
  rows_.push_back(m);
  Json pass = measurement_json(m);
  pass.update({{"cgroup_limit", c.usage.limit}, {"cgroup_peak", c.usage.peak},
               {"cgroup_fail_count", c.usage.fail_count}, {"cgroup_oom_kills", c.usage.oom_kills},
               {"child_vm_hwm", r.at("vm_hwm")}, {"resident_after_evict", resident},
               {"window", p.window}, {"no_readahead", p.no_readahead}});
  if (p.kind == "epoch") {
    for (const char* k : {"checksum", "rss_anon_start", "rss_anon_first_batch", "rss_anon_end"}) {
      pass[k] = r.at(k);
    }
    pass["records_once"] = true;  // check_epoch passed
  }
  passes_.push_back(pass);
  if (!o_.quiet) {
    fmt::print(stderr, "imgstore-bench: run {} {} {:<15} {:>9.0f} img/s, {:6.1f} MB/s read, cgroup peak {:.1f} MiB\n",
               run, s.format, p.order, m.images_per_s(), m.bytes / m.seconds / 1e6,
               c.usage.peak / double(1 << 20));
  }
}

// Per (format, order): the largest cgroup peak, child VmHWM and anon growth over the runs,
// and the median disk MB/s.
struct PassMemory {
  std::uint64_t cgroup_peak = 0, vm_hwm = 0, anon_growth = 0;
  std::vector<double> mbps;
};

std::map<std::string, PassMemory> memory_by_pass(const Json& passes) {
  std::map<std::string, PassMemory> m;
  for (const auto& p : passes) {
    auto& e = m[p.at("format").get<std::string>() + " " + p.at("order").get<std::string>() + " " +
                p.at("impl").get<std::string>()];
    e.cgroup_peak = std::max(e.cgroup_peak, p.at("cgroup_peak").get<std::uint64_t>());
    e.vm_hwm = std::max(e.vm_hwm, p.at("child_vm_hwm").get<std::uint64_t>());
    if (p.contains("rss_anon_end")) {
      const auto first = p.at("rss_anon_first_batch").get<std::uint64_t>();
      const auto end = p.at("rss_anon_end").get<std::uint64_t>();
      e.anon_growth = std::max(e.anon_growth, end > first ? end - first : 0);
    }
    e.mbps.push_back(p.at("bytes").get<double>() / p.at("seconds").get<double>() / 1e6);
  }
  return m;
}

std::string mib(std::uint64_t b) { return fmt::format("{:.1f}", b / double(1 << 20)); }

}  // namespace

void OomBench::report(const std::vector<SummaryRow>& summary) const {
  const auto memory = memory_by_pass(passes_);
  fmt::print("\n{:<6} {:<22} {:>10} {:>21} {:>8} {:>9} {:<30} {:>11} {:>9} {:>11}\n", "format",
             "pass", "img/s", "min..max img/s", "MB/s", "KiB/img", "ratio", "cgroup peak",
             "VmHWM", "anon grow");
  fmt::print("{:-<150}\n", "");
  for (const auto& s : stores_) {
    for (const auto& p : passes()) {
      const SummaryRow* row = nullptr;
      for (const auto& r : summary) {
        const auto& k = r.key;
        if (k.impl == p.impl && k.format == s.format && k.order == p.order) row = &r;
      }
      if (!row) continue;
      const auto& mem = memory.at(s.format + " " + p.order + " " + p.impl);
      std::string name = p.experiment == "limit_randread"
                             ? fmt::format("random-read limit {}K", s.request / 1024)
                         : p.experiment == "limit_seqread" ? "sequential read"
                         : p.window ? fmt::format("quasi-random W={}", p.window)
                                    : "full shuffle";
      std::string ratio = "-";
      if (row->ratio_to_peer) {
        ratio = fmt::format("{:.2f}x full shuffle", *row->ratio_to_peer);
      } else if (row->ratio_to_limit) {
        ratio = fmt::format("{:.2f}x random-read limit", *row->ratio_to_limit);
      }
      const double kib_per_img = row->bytes / 1024.0 / static_cast<double>(n_);
      fmt::print("{:<6} {:<22} {:>10.0f} {:>21} {:>8.1f} {:>9.2f} {:<30} {:>11} {:>9} {:>11}\n",
                 s.format, name, row->images_per_s,
                 fmt::format("{:.0f}..{:.0f}", n_ / row->max_s, n_ / row->min_s), median(mem.mbps),
                 kib_per_img, ratio, mib(mem.cgroup_peak) + " MiB", mib(mem.vm_hwm) + " MiB",
                 p.experiment == "oom_epoch" ? mib(mem.anon_growth) + " MiB" : "-");
    }
  }
  fmt::print("{:-<150}\n", "");
  fmt::print("img/s: median of {} runs, each in its own {} MiB memory cgroup, store pages evicted "
             "before each; MB/s and KiB/img: bytes the child made the disk read (/proc/self/io); "
             "cgroup peak: the group's own counter (page cache included); VmHWM: the child's peak "
             "RSS (includes shared library pages charged to the parent's group); anon grow: "
             "anonymous RSS growth from the first batch to the end of the epoch.\n",
             o_.runs, o_.limit_mib);
  for (const auto& r : summary) {
    const auto& k = r.key;
    if (k.experiment != "oom_epoch") continue;
    if (!r.peer && r.ratio_to_limit) {
      fmt::print("target {} full shuffle >= 0.7x random-read limit: {:.2f}x, {}\n", k.format,
                 *r.ratio_to_limit, *r.ratio_to_limit >= 0.7 ? "met" : "MISSED");
    } else if (r.ratio_to_peer) {
      fmt::print("target {} quasi-random {} >= 3x full shuffle: {:.2f}x, {}\n", k.format, k.order,
                 *r.ratio_to_peer, *r.ratio_to_peer >= 3 ? "met" : "MISSED");
    }
  }
}

Json OomBench::results_json(const std::vector<SummaryRow>& summary) const {
  Json stores = Json::array();
  for (const auto& s : stores_) {
    stores.push_back({{"format", s.format}, {"variant", s.variant}, {"path", s.store.string()},
                      {"bytes", s.bytes}, {"bytes_over_limit", s.bytes / double(limit_)},
                      {"request_bytes", s.request}});
  }
  Json j;
  j["schema"] = 1;
  j["machine"] = machine_;
  j["libraries"] = library_versions("");
  j["dataset"] = {{"source", fmt::format("synthetic {} (seed {})", to_string(shape_), o_.seed)},
                  {"shape", {shape_.height, shape_.width, shape_.channels}},
                  {"images", n_}};
  j["config"] = {{"experiment", "out_of_memory"}, {"runs", o_.runs}, {"threads", {threads_}},
                 {"batch_size", o_.batch}, {"seed", o_.seed}, {"cold_method", "fadvise"},
                 {"cache", "every pass starts with the store evicted (posix_fadvise DONTNEED) "
                           "and runs in a memory cgroup smaller than the store"},
                 {"notes", notes_},
                 {"out_of_memory", {{"limit_bytes", limit_}, {"factor", o_.factor},
                                    {"cgroup", where_}, {"windows", windows_},
                                    {"stores", stores}}}};
  Json& m = j["measurements"] = Json::array();
  for (const auto& r : rows_) m.push_back(measurement_json(r));
  Json& sj = j["summary"] = Json::array();
  for (const auto& r : summary) sj.push_back(summary_json(r));
  j["passes"] = passes_;
  return j;
}

int OomBench::run() {
  const auto t0 = Clock::now();
  configure();
  fs::create_directories(o_.out);
  machine_ = machine_info(o_.out);
  write_stores();
  const auto& load = machine_["load_avg_start"];
  fmt::print("imgstore-bench --out-of-memory: {} images {} (synthetic), LMDB {} MiB, HDF5 {} MiB; "
             "limit {} MiB ({}); loader threads {}, batch {}, windows {}; runs {}\n",
             n_, to_string(shape_), mib(stores_[0].bytes), mib(stores_[1].bytes), o_.limit_mib,
             where_, threads_, o_.batch, fmt::join(windows_, ","), o_.runs);
  fmt::print("machine: {}, {} cores, {:.1f} GiB RAM, {}; disk {} ({}); load average {:.2f} at start\n",
             machine_["cpu"].get<std::string>(), machine_["cores"].get<unsigned>(),
             machine_["ram_bytes"].get<double>() / (1ull << 30), machine_["kernel"].get<std::string>(),
             machine_["disk"].get<std::string>(), machine_["filesystem"].get<std::string>(),
             load[0].get<double>());
  std::fflush(stdout);
  // Interleaved: every run measures every pass of every store, so drifting load on a shared
  // machine moves all of them alike.
  for (int run = 1; run <= o_.runs; ++run) {
    for (const auto& s : stores_) {
      for (const auto& p : passes()) measure(s, p, run);
    }
  }
  double end_load[3] = {0, 0, 0};
  ::getloadavg(end_load, 3);
  notes_.push_back(fmt::format("load average {:.2f} at the start, {:.2f} at the end on {} cores",
                               load[0].get<double>(), end_load[0], machine_["cores"].get<unsigned>()));
  if (max_resident_ > 0.05) {
    notes_.push_back(fmt::format("after eviction up to {:.0f}% of the store's sampled pages were "
                                 "still resident", 100 * max_resident_));
  }
  notes_.push_back("epochs sum record_checksum over every delivered image (HWC, as the manifest) "
                   "inside the timed loop, as a training loop consumes its batches");
  const auto summary = summarize(rows_, false);
  write_csv(o_.out / "measurements.csv", rows_);
  {
    std::ofstream f(o_.out / "results.json");
    f << results_json(summary).dump(1) << "\n";
    if (!f.flush()) throw IoError(fmt::format("cannot write '{}'", (o_.out / "results.json").string()));
  }
  report(summary);
  for (const auto& n : notes_) fmt::print("note: {}\n", n);
  if (!o_.keep) remove_tree(o_.out / "oom-stores");
  fmt::print("wrote {} and {} in {:.1f} s\n", (o_.out / "measurements.csv").string(),
             (o_.out / "results.json").string(), seconds_since(t0));
  return cli::kOk;
}

int run_out_of_memory(const OomOptions& options) { return OomBench(options).run(); }

}  // namespace imgstore::bench
