// imgstore-store-bench: how fast each store format is written, against the tutorial's Python
// code and against a plain sequential write() of the same bytes (issue #2, performance part).
//
//   imgstore-store-bench [--count N | --base 50000 --repeat 2] [--out DIR] [--threads N]
//                        [--png-level 6] [--runs 3] [--json FILE] [--no-python]
//
// The data set is generated once into memory (the tutorial doubles its 50,000 images to
// 100,000) and every case writes those same images. Each case runs --runs times, interleaved;
// the median is reported with min..max. Before each timed run the output is removed and sync()
// flushes earlier runs' dirty pages, so no run pays for another's writeback; the page cache is
// otherwise warm (sources in memory, nothing dropped). See bench/README.md.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <tbb/global_control.h>
#include <tbb/task_arena.h>

#include "common/floors.hpp"
#include "common/limits.hpp"
#include "common/median.hpp"
#include "common/scratch.hpp"
#include "detail/png_codec.hpp"
#include "imgstore/convert.hpp"
#include "imgstore/error.hpp"
#include "imgstore/manifest.hpp"
#include "imgstore/source.hpp"
#include "imgstore/store.hpp"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::json;
using imgstore::Format;
using imgstore::bench::beaten_flag;
using imgstore::bench::Flush;
using imgstore::bench::median;
using imgstore::bench::remove_tree;
using imgstore::bench::set_aside;

constexpr std::size_t kBatchRecords = 1024;  // as imgstore-convert's default
constexpr double kMiB = 1024.0 * 1024.0;

struct Options {
  std::uint64_t count = 0;  // 0: base * repeat
  std::uint64_t base = 50000;
  std::uint32_t repeat = 2;
  std::string source;  // empty: synthetic with n = base (or count)
  fs::path out = "/tmp/imgstore-store-bench";
  unsigned threads = 0;
  int png_level = 6;
  int runs = 3;
  std::string json_file;
  bool no_python = false;
  std::vector<std::string> skip;  // case keys not to run, e.g. png_durable
  double case_budget = 300;       // a case whose runs took longer than this is not repeated
  std::string python = "/usr/bin/python3";
  bool no_stream = false;     // skip the streaming-conversion memory measurement
  bool stream_child = false;  // hidden: run the streaming conversion and print JSON
};

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// ---- machine and process facts ----

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown";
}

// A "Key:   123 kB" line of a /proc file, in bytes; 0 if absent.
std::uint64_t proc_kib_field(const char* file, const std::string& key) {
  std::ifstream in(file);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(key, 0) == 0) return std::stoull(line.substr(key.size())) * 1024;
  }
  return 0;
}

// Peak RSS of this process image. VmHWM is reset by exec, unlike ru_maxrss, which a child
// inherits from the mm it replaced.
std::uint64_t peak_rss_hwm() { return proc_kib_field("/proc/self/status", "VmHWM:"); }

std::uint64_t peak_rss_maxrss() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  return static_cast<std::uint64_t>(ru.ru_maxrss) * 1024;
}

std::string fs_type(const fs::path& path) {
  struct statfs st {};
  if (statfs(path.c_str(), &st) != 0) return "unknown";
  switch (static_cast<unsigned long>(st.f_type)) {
    case 0xEF53: return "ext4";
    case 0x58465342: return "xfs";
    case 0x01021994: return "tmpfs";
    case 0x9123683E: return "btrfs";
    case 0x794C7630: return "overlayfs";
    default: return fmt::format("0x{:x}", static_cast<unsigned long>(st.f_type));
  }
}

std::vector<double> load_average() {
  double l[3] = {0, 0, 0};
  if (getloadavg(l, 3) < 0) return {};
  return {l[0], l[1], l[2]};
}

json machine_info(const fs::path& out) {
  utsname u{};
  uname(&u);
  return {{"cpu", cpu_model()},
          {"cores", std::thread::hardware_concurrency()},
          {"ram_bytes", proc_kib_field("/proc/meminfo", "MemTotal:")},
          {"kernel", std::string(u.sysname) + " " + u.release},
          {"out_dir_filesystem", fs_type(out)},
          {"load_average_at_start", load_average()}};
}

// ---- files ----

struct DiskUsage {
  std::uint64_t apparent = 0;   // sum of file sizes
  std::uint64_t allocated = 0;  // blocks actually used (a 2 KiB PNG takes a 4 KiB block)
};

DiskUsage disk_usage(const fs::path& path) {
  DiskUsage u;
  auto add = [&u](const fs::path& p) {
    struct stat st {};
    if (lstat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      u.apparent += static_cast<std::uint64_t>(st.st_size);
      u.allocated += static_cast<std::uint64_t>(st.st_blocks) * 512;
    }
  };
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (fs::recursive_directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
      add(it->path());
    }
  } else {
    add(path);
  }
  return u;
}

// Regular files under `spec` when it names a file or directory (sorted), else none (synthetic).
std::vector<fs::path> regular_files_under(const std::string& spec) {
  std::vector<fs::path> files;
  std::error_code ec;
  if (spec.empty() || !fs::exists(spec, ec)) return files;
  if (fs::is_regular_file(spec, ec)) return {fs::path(spec)};
  for (fs::recursive_directory_iterator it(spec, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec)) files.push_back(it->path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// ---- the data set, in memory ----

struct DataSet {
  std::string description;
  std::string split;
  imgstore::SplitInfo info;
  std::uint64_t count = 0;
  std::vector<imgstore::ImageBatch> batches;  // consecutive, kBatchRecords each (the last less)
};

std::string synthetic_spec(std::uint64_t n) {
  return fmt::format("synthetic:n={},h=32,w=32,c=3,classes=10,seed=1", n);
}

std::string pick_split(const imgstore::Source& source, imgstore::SplitInfo* info) {
  auto splits = source.splits();
  if (splits.empty()) throw imgstore::DataError(source.description() + " has no splits");
  auto it = std::find_if(splits.begin(), splits.end(), [](auto& s) { return s.name == "train"; });
  *info = it != splits.end() ? *it : splits.front();
  return info->name;
}

// Reads the split once and repeats it in memory, as the tutorial concatenates its array.
DataSet load(const std::string& spec, std::uint32_t repeat) {
  DataSet ds;
  auto source = imgstore::open_source(spec);
  ds.description = source->description();
  ds.split = pick_split(*source, &ds.info);
  auto stream = source->open(ds.split);
  imgstore::ImageBatch batch;
  while (stream->next(batch, kBatchRecords)) {
    if (batch.size() == 0) continue;
    ds.batches.push_back(batch);
  }
  const std::size_t per_pass = ds.batches.size();
  for (std::uint32_t r = 1; r < repeat; ++r) {
    for (std::size_t i = 0; i < per_pass; ++i) ds.batches.push_back(ds.batches[i]);
  }
  for (auto& b : ds.batches) ds.count += b.size();
  return ds;
}

// N×H×W×C uint8 and N int64 labels as .npy files (format 1.0), for the Python side.
void write_npy(const fs::path& path, const std::string& descr, const std::vector<std::uint64_t>& shape,
               const std::function<void(std::FILE*)>& body) {
  std::string dims;
  for (auto d : shape) dims += fmt::format("{}, ", d);
  if (shape.size() > 1) dims.resize(dims.size() - 2);  // "(N,)" keeps its comma
  else dims.pop_back();
  std::string header =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, dims);
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) throw imgstore::IoError(fmt::format("cannot create '{}': {}", path.string(), std::strerror(errno)));
  const std::uint16_t len = static_cast<std::uint16_t>(header.size());
  std::fwrite("\x93NUMPY\x01\x00", 1, 8, f);
  const unsigned char len_le[2] = {static_cast<unsigned char>(len & 0xff),
                                   static_cast<unsigned char>(len >> 8)};
  std::fwrite(len_le, 1, 2, f);
  std::fwrite(header.data(), 1, header.size(), f);
  body(f);
  if (std::fclose(f) != 0) {
    throw imgstore::IoError(fmt::format("cannot write '{}'", path.string()));
  }
}

// ---- child processes ----

struct ChildResult {
  std::string out;
  int status = 0;
  double seconds = 0;
};

// Runs argv, capturing its stdout (stderr passes through).
ChildResult run_child(const std::vector<std::string>& argv) {
  int pipefd[2];
  if (pipe2(pipefd, O_CLOEXEC) != 0) throw imgstore::IoError("pipe failed");
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(stdout);
  auto t0 = Clock::now();
  pid_t pid = fork();
  if (pid < 0) throw imgstore::IoError("fork failed");
  if (pid == 0) {
    dup2(pipefd[1], STDOUT_FILENO);
    execv(args[0], args.data());
    std::fprintf(stderr, "cannot run '%s': %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  ::close(pipefd[1]);
  ChildResult r;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(pipefd[0], buf, sizeof buf);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    r.out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(pipefd[0]);
  while (waitpid(pid, &r.status, 0) < 0 && errno == EINTR) {
  }
  r.seconds = seconds_since(t0);
  return r;
}

std::string self_exe() {
  std::error_code ec;
  auto p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw imgstore::IoError("cannot resolve /proc/self/exe");
  return p.string();
}

imgstore::WriterOptions writer_options(const Options& o, bool durable) {
  imgstore::WriterOptions w;
  w.png_level = o.png_level;
  w.durable = durable;
  w.overwrite = true;
  w.threads = o.threads;
  return w;
}

// Hidden mode: the streaming conversion imgstore-convert does, all formats in one pass, in a
// fresh process so that its peak RSS is its own. Durable off: fsync changes the time, not the
// memory, and the PNG folder's per-file fsync would cost minutes here.
int stream_child_main(const Options& o, const std::string& spec) {
  auto source = imgstore::open_source(spec);
  imgstore::SplitInfo info;
  const std::string split = pick_split(*source, &info);
  const fs::path dir = o.out / "stream";
  set_aside(dir, o.out / "trash");
  imgstore::ConvertOptions co;
  co.repeat = o.repeat;
  co.writer = writer_options(o, false);
  auto t0 = Clock::now();
  auto r = imgstore::convert_split(*source, split, dir, co);
  const double seconds = seconds_since(t0);
  json j{{"count", r.count},
         {"seconds", seconds},
         {"read_seconds", r.read_seconds},
         {"durable", false},
         {"peak_rss_bytes", peak_rss_hwm()},
         {"ru_maxrss_bytes", peak_rss_maxrss()},
         {"formats", json::array()}};
  for (auto& f : r.formats) {
    j["formats"].push_back({{"format", imgstore::to_string(f.format)},
                            {"seconds", f.seconds},
                            {"bytes_on_disk", f.bytes_on_disk}});
  }
  set_aside(dir, o.out / "trash");
  std::cout << j.dump() << std::endl;
  return 0;
}

// ---- measurement bookkeeping ----

struct Case {
  std::string key;    // JSON key, e.g. "lmdb_durable"
  std::string label;  // table row
  std::string sync;   // what is flushed before "done"
  std::vector<double> seconds;
  DiskUsage usage;
  std::vector<double> user, sys;  // CPU seconds of the writing process (all its threads)
};

// (user, system) CPU seconds this process has used so far, all threads.
std::pair<double, double> cpu_seconds() {
  rusage ru{};
  getrusage(RUSAGE_SELF, &ru);
  auto sec = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec / 1e6; };
  return {sec(ru.ru_utime), sec(ru.ru_stime)};
}

json case_json(const Case& c, std::uint64_t count) {
  const double m = median(c.seconds);
  return {{"label", c.label},
          {"flush", c.sync},
          {"seconds", c.seconds},
          {"median_seconds", m},
          {"min_seconds", c.seconds.empty() ? 0 : *std::min_element(c.seconds.begin(), c.seconds.end())},
          {"max_seconds", c.seconds.empty() ? 0 : *std::max_element(c.seconds.begin(), c.seconds.end())},
          {"images_per_second", m > 0 ? count / m : 0},
          {"bytes_on_disk", c.usage.apparent},
          {"bytes_allocated", c.usage.allocated},
          {"cpu_user_seconds", c.user},
          {"cpu_system_seconds", c.sys}};
}

// One run of the benchmark, in the order bench_main calls its steps.
class StoreBench {
 public:
  explicit StoreBench(const Options& o)
      : o_(o),
        repeat_(o.count ? 1 : o.repeat),
        spec_(o.source.empty() ? synthetic_spec(o.count ? o.count : o.base) : o.source) {}

  // Machine facts, then the streaming conversion, in a child, before this process holds the
  // data set.
  void start() {
    std::error_code ec;
    fs::create_directories(o_.out, ec);
    if (ec) throw imgstore::IoError(fmt::format("cannot create '{}': {}", o_.out.string(), ec.message()));
    report_["machine"] = machine_info(o_.out);
    tbb_threads_ = static_cast<unsigned>(tbb::this_task_arena::max_concurrency());
    fmt::print("machine: {}, {} cores, {:.1f} GiB RAM; output on {} ({})\n",
               report_["machine"]["cpu"].get<std::string>(), std::thread::hardware_concurrency(),
               report_["machine"]["ram_bytes"].get<double>() / (kMiB * 1024), o_.out.string(),
               report_["machine"]["out_dir_filesystem"].get<std::string>());
    if (!o_.no_stream) stream_ = run_stream_child();
  }

  // The data set in memory, and what the floors need, prepared untimed.
  void load_data() {
    auto t_load = Clock::now();
    ds_ = load(spec_, repeat_);
    const double load_seconds = seconds_since(t_load);
    shape_ = ds_.info.shape;
    pixel_bytes_ = ds_.count * shape_.bytes();
    fmt::print("data set: {} ({} split), {} images of {} repeated {}x = {} images, {:.1f} MiB of "
               "pixels, generated in {:.2f} s\n",
               ds_.description, ds_.split, ds_.count / repeat_, imgstore::to_string(shape_), repeat_,
               ds_.count, pixel_bytes_ / kMiB, load_seconds);
    fmt::print("threads: imgstore/TBB {} (hardware {}), Python 1; runs: {}; PNG zlib level {}\n",
               tbb_threads_, std::thread::hardware_concurrency(), o_.runs, o_.png_level);
    fmt::print("page cache warm (nothing dropped); sync() before each timed run; output in {}\n\n",
               o_.out.string());
    sspec_.split = ds_.split;
    sspec_.source = ds_.description;
    sspec_.count = ds_.count;
    sspec_.shape = shape_;
    sspec_.class_names = ds_.info.class_names;
    std::error_code ec;
    fs::create_directories(cxx_dir_, ec);
    prepare_floor_inputs();
  }

  void add_cases() {
    for (bool durable : {true, false}) add_floor_cases(durable);
    // PNG encoding of every image on one thread, into one reused buffer: its time over the
    // writer's thread count is what the PNG folder's encoding costs at best.
    cases_.push_back({"png_encode_1thread", "PNG encode, 1 thread, no I/O", "-", {}, {}, {}, {}});
    runners_.push_back({cases_.size() - 1, cxx_dir_ / "png_encode_1thread", [this] {
                          std::vector<std::uint8_t> buf;
                          for (const auto& b : ds_.batches) {
                            for (std::size_t i = 0; i < b.size(); ++i) {
                              imgstore::detail::encode_png(b.image(i), shape_, o_.png_level, buf);
                            }
                          }
                        }});
    for (Format f : imgstore::all_formats()) {
      const std::string name = imgstore::format_info(f).description + " (imgstore)";
      add_store_case(f, true, name);
      add_store_case(f, false, name);
    }
    if (!source_files_.empty()) {
      for (Format f : {Format::Lmdb, Format::Hdf5}) {
        add_convert_case(f, true);
        add_convert_case(f, false);
      }
    }
  }

  // Interleaved runs: a slow moment of the machine spreads over all cases.
  void run_cases() {
    for (int run = 0; run < o_.runs; ++run) {
      for (auto& r : runners_) run_case(r, run);
    }
  }

  // The tutorial's Python code on the same images.
  void run_tutorial() {
    if (o_.no_python) return;
    py_ = run_python_child();
    if (!py_) return;
    const std::pair<const char*, const char*> methods[] = {
        {"disk", "PNG + CSV (tutorial, Pillow)"}, {"lmdb", "LMDB (tutorial, py-lmdb)"},
        {"hdf5", "HDF5 (tutorial, h5py)"}};
    for (auto& [m, label] : methods) {
      if (!(*py_)["methods"].contains(m)) continue;
      auto& pm = (*py_)["methods"][m];
      Case c{std::string("tutorial_") + m, label,
             std::string(m) == "lmdb" ? "LMDB commit (sync)" : "none (page cache)",
             pm["seconds"].get<std::vector<double>>(),
             {pm["bytes_on_disk"].get<std::uint64_t>(), pm["bytes_allocated"].get<std::uint64_t>()},
             pm.value("user_seconds", std::vector<double>{}),
             pm.value("sys_seconds", std::vector<double>{})};
      cases_.push_back(c);
    }
  }

  void print_table() const {
    fmt::print("\n{} images of {}, median of {} runs (min..max)\n", ds_.count, imgstore::to_string(shape_), o_.runs);
    fmt::print("{:<30} {:<19} {:>9} {:>19} {:>10} {:>9} {:>9} {:>12}\n", "case",
               "flushed before done", "median s", "min..max s", "images/s", "MiB", "MiB alloc",
               "CPU usr+sys");
    const char* order[] = {"png_durable", "png_nosync", "tutorial_disk", "lmdb_durable", "lmdb_nosync",
                           "lmdb_convert_durable", "lmdb_convert_nosync", "tutorial_lmdb",
                           "hdf5_durable", "hdf5_nosync", "hdf5_convert_durable",
                           "hdf5_convert_nosync", "tutorial_hdf5",
                           "plain_durable", "plain_nosync", "cat_durable", "cat_nosync",
                           "files_durable", "files_nosync", "png_encode_1thread"};
    for (const char* key : order) {
      const Case* c = find(key);
      if (!c) continue;
      const double m = median(c->seconds);
      fmt::print("{:<30} {:<19} {:>9.3f} {:>19} {:>10.0f} {:>9.1f} {:>9.1f} {:>12}\n", c->label,
                 c->sync, m,
                 fmt::format("{:.3f}..{:.3f}", *std::min_element(c->seconds.begin(), c->seconds.end()),
                             *std::max_element(c->seconds.begin(), c->seconds.end())),
                 ds_.count / m, c->usage.apparent / kMiB, c->usage.allocated / kMiB,
                 c->user.empty() ? std::string("-")
                                 : fmt::format("{:.2f}+{:.2f}", median(c->user), median(c->sys)));
    }
  }

  // Ratios against the targets.
  void print_ratios() {
    fmt::print("\nratios (target in brackets)\n");
    ratio("LMDB speed-up vs tutorial (imgstore fsync)", "tutorial_lmdb", "lmdb_durable", true, 10,
          "both sync on commit");
    ratio("LMDB speed-up vs tutorial (imgstore no fsync)", "tutorial_lmdb", "lmdb_nosync", true, 10,
          "imgstore without sync");
    ratio("PNG speed-up vs tutorial (imgstore fsync)", "tutorial_disk", "png_durable", true, 3,
          "tutorial does not fsync");
    ratio("PNG speed-up vs tutorial (imgstore no fsync)", "tutorial_disk", "png_nosync", true, 3,
          "like for like");
  }

  // The floors: a store is compared with the floor of the same flush, measured in this run.
  // Raw stores: the write floor. They write the data set from memory, so the cat floor, which
  // also reads the source's files, is no floor for them (with --source CIFAR-10 they beat it);
  // it is printed for what it is, the least a conversion from those files costs.
  void print_floors() {
    fmt::print("\nx floor (median / the fastest run of the floor measured in this run; target in "
               "brackets)\n");
    if (const Case* cat = find("cat_nosync")) {
      fmt::print("  (cat of the source files: {:.3f} s no flush; the least a conversion reading "
                 "them costs, not a floor for stores written from memory)\n",
                 *std::min_element(cat->seconds.begin(), cat->seconds.end()));
    }
    for (const char* f : {"lmdb", "hdf5"}) {
      for (const char* d : {"_nosync", "_durable"}) {
        floor_ratio(fmt::format("{} / plain floor ({})", f, d + 1), std::string(f) + d,
                    {std::string("plain") + d}, 1.0, 2.0);
      }
    }
    // The issue's own measure: converting the source's files against copying them.
    for (const char* f : {"lmdb", "hdf5"}) {
      for (const char* d : {"_nosync", "_durable"}) {
        floor_ratio(fmt::format("{} from the files / cat floor ({})", f, d + 1),
                    std::string(f) + "_convert" + d, {std::string("cat") + d}, 1.0, 2.0);
      }
    }
    for (const char* d : {"_nosync", "_durable"}) {
      floor_ratio(fmt::format("png / max(encode/{} threads, file floor) ({})", tbb_threads_, d + 1),
                  std::string("png") + d, {"png_encode_1thread", std::string("files") + d},
                  static_cast<double>(tbb_threads_), 1.3);
    }
  }

  void print_memory() {
    const std::uint64_t self_peak = peak_rss_maxrss();
    fmt::print("\npeak RSS\n");
    fmt::print("  {:<58} {:8.1f} MiB\n",
               fmt::format("this process (holds the {:.0f} MiB data set)", pixel_bytes_ / kMiB),
               self_peak / kMiB);
    memory_ = json{{"bench_process_peak_rss_bytes", self_peak}};
    if (stream_) print_stream_memory();
    if (py_ && py_->contains("peak_rss_bytes")) {
      fmt::print("  {:<58} {:8.1f} MiB\n", "tutorial Python process (holds the data set)",
                 (*py_)["peak_rss_bytes"].get<double>() / kMiB);
      memory_["tutorial_python_peak_rss_bytes"] = (*py_)["peak_rss_bytes"];
    }
    if (!failures_.empty()) {
      fmt::print("\nfailed cases: {}\n", fmt::join(failures_, ", "));
    }
  }

  void finish() {
    const auto load_end = load_average();
    if (load_end.size() == 3) {
      fmt::print("\nload average at start {:.2f}, at end {:.2f} {:.2f} {:.2f} (1/5/15 min)\n",
                 report_["machine"]["load_average_at_start"][0].get<double>(), load_end[0],
                 load_end[1], load_end[2]);
    }
    report_["machine"]["load_average_at_end"] = load_end;
    if (!o_.json_file.empty()) write_report();
    // Scratch output goes last: its deletion is slow and measures nothing.
    fmt::print("removing the scratch output in {} ...\n", o_.out.string());
    std::fflush(stdout);
    for (const char* sub : {"trash", "imgstore", "tutorial", "stream"}) remove_tree(o_.out / sub);
    std::error_code ec;
    fs::remove(o_.out, ec);  // only if nothing else was in it
  }

  bool failed() const { return !failures_.empty(); }

 private:
  struct Runner {
    std::size_t index;
    fs::path path;
    std::function<void()> run;
  };

  std::optional<json> run_stream_child() const {
    std::vector<std::string> argv{self_exe(), "--stream-child", "--out", o_.out.string(),
                                  "--threads", std::to_string(o_.threads),
                                  "--png-level", std::to_string(o_.png_level)};
    if (o_.count) {
      argv.insert(argv.end(), {"--count", std::to_string(o_.count)});
    } else {
      argv.insert(argv.end(), {"--base", std::to_string(o_.base), "--repeat", std::to_string(o_.repeat)});
    }
    if (!o_.source.empty()) argv.insert(argv.end(), {"--source", o_.source});
    fmt::print("streaming conversion (all formats, durable off) in a child process...\n");
    auto r = run_child(argv);
    if (WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0 && json::accept(r.out)) return json::parse(r.out);
    fmt::print(stderr, "warning: the streaming conversion child failed (status {})\n", r.status);
    return std::nullopt;
  }

  // The source's files (when it is files on disk) and the size of every image's PNG file.
  void prepare_floor_inputs() {
    source_files_ = regular_files_under(o_.source);
    png_sizes_.reserve(ds_.count);
    std::vector<std::uint8_t> buf;
    for (const auto& b : ds_.batches) {
      for (std::size_t i = 0; i < b.size(); ++i) {
        imgstore::detail::encode_png(b.image(i), shape_, o_.png_level, buf);
        png_sizes_.push_back(buf.size());
      }
    }
    std::error_code ec;
    for (const auto& f : source_files_) source_bytes_ += fs::file_size(f, ec);
    if (!source_files_.empty()) {
      fmt::print("source files: {} ({:.1f} MiB); the cat floor copies them, from the first again "
                 "as needed, up to the stores' {:.1f} MiB of pixels\n",
                 source_files_.size(), source_bytes_ / kMiB, pixel_bytes_ / kMiB);
    }
  }

  void add_store_case(Format f, bool durable, const std::string& name) {
    const auto key = imgstore::to_string(f) + (durable ? "_durable" : "_nosync");
    cases_.push_back({key, name, durable ? "fsync files+dir" : "none (page cache)", {}, {}, {}, {}});
    auto path = cxx_dir_ / imgstore::store_file_name(key, f);
    auto opts = writer_options(o_, durable);
    runners_.push_back({cases_.size() - 1, path, [this, f, path, opts] {
                          auto w = imgstore::create_store(f, path, sspec_, opts);
                          for (const auto& b : ds_.batches) w->write(b);
                          w->commit();
                        }});
  }

  // A conversion from the source's files, as imgstore-convert does it (convert_split: the
  // source read one batch ahead of the writer, on its own thread), compared with the cat
  // floor, which reads the same files.
  void add_convert_case(Format f, bool durable) {
    const auto key = imgstore::to_string(f) + (durable ? "_convert_durable" : "_convert_nosync");
    const std::string name = imgstore::format_info(f).description + " from the files";
    cases_.push_back({key, name, durable ? "fsync files+dir" : "none (page cache)", {}, {}, {}, {}});
    imgstore::ConvertOptions co;
    co.formats = {f};
    co.repeat = repeat_;
    co.writer = writer_options(o_, durable);
    const fs::path dir = cxx_dir_ / key;
    runners_.push_back({cases_.size() - 1, dir, [this, co, dir] {
                          const auto source = imgstore::open_source(spec_);
                          const auto r = imgstore::convert_split(*source, ds_.split, dir, co);
                          if (r.count != ds_.count) {
                            throw imgstore::DataError(fmt::format(
                                "the conversion wrote {} records, the data set holds {}", r.count,
                                ds_.count));
                          }
                        }});
  }

  // The floors, measured in the same run, interleaved with the stores
  // (bench/common/floors.hpp; tests/unit/test_bench_floors.cpp proves what they write).
  void add_floor_case(const std::string& key, const std::string& label, bool durable,
                      const fs::path& path, std::function<void(const fs::path&, Flush)> body) {
    cases_.push_back({key, label, durable ? "fsync file+dir" : "none (page cache)", {}, {}, {}, {}});
    runners_.push_back({cases_.size() - 1, path,
                        [body, path, flush = durable ? Flush::Fsync : Flush::None] { body(path, flush); }});
  }

  void add_floor_cases(bool durable) {
    const std::string tail = durable ? "_durable" : "_nosync";
    // The pixel bytes in one sequential pass of large writes from one reused buffer.
    const std::string floor_label =
        fmt::format("write floor ({} KiB writes)", imgstore::bench::kFloorPiece >> 10);
    add_floor_case("plain" + tail, floor_label, durable, cxx_dir_ / ("plain" + tail + ".raw"),
                   [this](const fs::path& path, Flush flush) {
                     imgstore::bench::write_floor(path, pixel_bytes_, imgstore::bench::kFloorPiece, flush);
                   });
    // `cat` of the source's files into one new file, as many bytes as the stores' pixels (the
    // files may hold other splits, and the stores a repeated split): what converting cannot beat.
    if (!source_files_.empty()) {
      add_floor_case("cat" + tail, "cat of the source files", durable, cxx_dir_ / ("cat" + tail + ".raw"),
                     [this](const fs::path& path, Flush flush) {
                       imgstore::bench::copy_floor(source_files_, path, imgstore::bench::kFloorPiece, flush,
                                                   pixel_bytes_);
                     });
    }
    // A PNG folder's files, same sizes, created and written from one thread.
    add_floor_case("files" + tail, "file-creation floor (PNG sizes)", durable, cxx_dir_ / ("files" + tail),
                   [this](const fs::path& path, Flush flush) {
                     imgstore::bench::file_creation_floor(path, png_sizes_, flush);
                   });
  }

  void run_case(Runner& r, int run) {
    Case& c = cases_[r.index];
    if (std::find(failures_.begin(), failures_.end(), c.key) != failures_.end()) return;
    if (std::find(o_.skip.begin(), o_.skip.end(), c.key) != o_.skip.end()) return;
    double spent = 0;
    for (double t : c.seconds) spent += t;
    if (spent > o_.case_budget) {
      if (run + 1 == o_.runs) {
        fmt::print("  {}: {} run(s) only, they took {:.0f} s (> --case-budget {:.0f} s)\n", c.key,
                   c.seconds.size(), spent, o_.case_budget);
      }
      return;
    }
    const auto t_prep = Clock::now();
    set_aside(r.path, o_.out / "trash");
    const double prep_seconds = seconds_since(t_prep);
    if (prep_seconds > 2) {
      fmt::print("  (removing the previous output and sync() took {:.1f} s)\n", prep_seconds);
    }
    try {
      const auto cpu0 = cpu_seconds();
      auto t0 = Clock::now();
      r.run();
      c.seconds.push_back(seconds_since(t0));
      const auto cpu1 = cpu_seconds();
      c.user.push_back(cpu1.first - cpu0.first);
      c.sys.push_back(cpu1.second - cpu0.second);
      c.usage = disk_usage(r.path);
      fmt::print("  run {}/{}  {:<28} {:<18} {:8.3f} s\n", run + 1, o_.runs, c.label, c.sync,
                 c.seconds.back());
    } catch (const std::exception& e) {
      fmt::print(stderr, "  {} failed: {}\n", c.key, e.what());
      failures_.push_back(c.key);
    }
    std::fflush(stdout);
  }

  // Writes the images and labels as .npy and runs bench/tutorial_store.py on them.
  std::optional<json> run_python_child() const {
    const fs::path py_dir = o_.out / "tutorial";
    std::error_code ec;
    fs::create_directories(py_dir, ec);
    const fs::path img_npy = py_dir / "images.npy", lab_npy = py_dir / "labels.npy";
    write_npy(img_npy, "|u1", {ds_.count, shape_.height, shape_.width, shape_.channels},
              [&](std::FILE* f) {
                for (auto& b : ds_.batches) std::fwrite(b.pixels.data(), 1, b.pixels.size(), f);
              });
    write_npy(lab_npy, "<i8", {ds_.count}, [&](std::FILE* f) {
      for (auto& b : ds_.batches) std::fwrite(b.labels.data(), sizeof(std::int64_t), b.labels.size(), f);
    });
    const std::string script = std::string(IMGSTORE_SOURCE_DIR) + "/bench/tutorial_store.py";
    fmt::print("tutorial (Python, {}): {} runs of store_many_disk/lmdb/hdf5...\n", o_.python, o_.runs);
    std::fflush(stdout);
    auto r = run_child({o_.python, script, "--images", img_npy.string(), "--labels", lab_npy.string(),
                        "--out", (py_dir / "out").string(), "--png-level", std::to_string(o_.png_level),
                        "--runs", std::to_string(o_.runs), "--budget", fmt::format("{}", o_.case_budget)});
    if (WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0 && json::accept(r.out)) return json::parse(r.out);
    fmt::print(stderr, "warning: the tutorial script failed (status {}); no Python figures\n", r.status);
    return std::nullopt;
  }

  const Case* find(const std::string& key) const {
    for (auto& c : cases_) {
      if (c.key == key && !c.seconds.empty()) return &c;
    }
    return nullptr;
  }

  void ratio(const std::string& name, const char* num, const char* den, bool higher_better,
             double target, const std::string& note) {
    const Case* a = find(num);
    const Case* b = find(den);
    if (!a || !b) return;
    const double v = median(a->seconds) / median(b->seconds);
    const bool ok = higher_better ? v >= target : v <= target;
    fmt::print("  {:<52} {:7.2f}  [{} {:.1f}] {}  ({})\n", name, v, higher_better ? ">=" : "<=",
               target, ok ? "met" : "MISSED", note);
    ratios_.push_back({{"name", name}, {"numerator", num}, {"denominator", den}, {"value", v},
                       {"target", target}, {"target_is_minimum", higher_better}, {"met", ok},
                       {"note", note}});
  }

  // A figure below 1 would mean the store beat its floor, i.e. the floor is wrong: flagged.
  // A floor is the fastest of its runs, not their median: it stands for what the machine can
  // do, and on this VM a run that writes into pages the host took back (free page reporting)
  // is 5-10x slower at random (see set_aside), which the median of 5 did not always hide.
  void floor_ratio(const std::string& name, const std::string& num, const std::vector<std::string>& dens,
                   double divide_first, double target) {
    const Case* a = find(num);
    if (!a) return;
    double floor_s = 0;
    std::vector<json> parts;
    for (std::size_t i = 0; i < dens.size(); ++i) {
      const Case* b = find(dens[i]);
      if (!b) return;
      const double fastest = *std::min_element(b->seconds.begin(), b->seconds.end());
      const double s = fastest / (i == 0 ? divide_first : 1.0);
      parts.push_back({{"case", dens[i]}, {"fastest_seconds", fastest},
                       {"divided_by", i == 0 ? divide_first : 1.0}});
      floor_s = std::max(floor_s, s);
    }
    const double v = median(a->seconds) / floor_s;
    const bool ok = v <= target;
    fmt::print("  {:<52} {:7.2f}  [<= {:.1f}] {}{}\n", name, v, target, ok ? "met" : "MISSED",
               v < 1 ? "  " + beaten_flag("floor") : "");
    floors_.push_back({{"name", name}, {"case", num}, {"median_seconds", median(a->seconds)},
                       {"floor_seconds", floor_s}, {"floor_of", parts}, {"value", v},
                       {"target", target}, {"met", ok}, {"floor_beaten", v < 1}});
  }

  void print_stream_memory() {
    const json& stream = *stream_;
    const double peak = stream["peak_rss_bytes"].get<double>();
    fmt::print("  {:<58} {:8.1f} MiB  [<= 256] {}  ({:.2f} s)\n",
               fmt::format("streaming convert_split, 3 formats, {} images (child)",
                           stream["count"].get<std::uint64_t>()),
               peak / kMiB, peak <= 256 * kMiB ? "met" : "MISSED", stream["seconds"].get<double>());
    std::string per_format;
    for (auto& f : stream["formats"]) {
      per_format += fmt::format("{} {:.2f} s, ", f["format"].get<std::string>(),
                                f["seconds"].get<double>());
    }
    fmt::print("    (time inside each writer, durable off: {}source {:.2f} s)\n", per_format,
               stream["read_seconds"].get<double>());
    memory_["streaming_convert"] = stream;
    memory_["streaming_convert_target_bytes"] = 256 * 1024 * 1024;
    memory_["streaming_convert_target_met"] = peak <= 256 * kMiB;
  }

  void write_report() {
    report_["config"] = {{"source", spec_}, {"source_description", ds_.description},
                         {"source_files", source_files_.size()}, {"source_bytes", source_bytes_},
                         {"floor_piece_bytes", imgstore::bench::kFloorPiece},
                         {"split", ds_.split}, {"repeat", repeat_}, {"count", ds_.count},
                         {"shape", {shape_.height, shape_.width, shape_.channels}},
                         {"pixel_bytes", pixel_bytes_}, {"batch_records", kBatchRecords},
                         {"runs", o_.runs}, {"png_level", o_.png_level},
                         {"threads_requested", o_.threads}, {"threads_tbb", tbb_threads_},
                         {"threads_python", 1}, {"out", o_.out.string()},
                         {"skipped_cases", o_.skip}, {"case_budget_seconds", o_.case_budget},
                         {"page_cache", "warm; sync() before each timed run, nothing dropped"},
                         {"imgstore_version", imgstore::tool_version()}};
    json jc = json::object();
    for (auto& c : cases_) jc[c.key] = case_json(c, ds_.count);
    report_["cases"] = jc;
    report_["ratios"] = ratios_;
    report_["floors"] = floors_;
    report_["memory"] = memory_;
    if (py_) report_["tutorial_versions"] = (*py_)["versions"];
    report_["failed_cases"] = failures_;
    std::ofstream out(o_.json_file);
    out << report_.dump(2) << '\n';
    if (!out) throw imgstore::IoError("cannot write '" + o_.json_file + "'");
    fmt::print("\nwrote {}\n", o_.json_file);
  }

  const Options& o_;
  const std::uint32_t repeat_;
  const std::string spec_;
  const fs::path cxx_dir_ = o_.out / "imgstore";
  unsigned tbb_threads_ = 0;
  json report_, ratios_ = json::array(), floors_ = json::array(), memory_;
  std::optional<json> stream_, py_;
  DataSet ds_;
  imgstore::Shape shape_{};
  std::uint64_t pixel_bytes_ = 0, source_bytes_ = 0;
  imgstore::StoreSpec sspec_;
  std::vector<fs::path> source_files_;
  std::vector<std::uint64_t> png_sizes_;
  std::vector<Case> cases_;
  std::vector<Runner> runners_;
  std::vector<std::string> failures_;
};

int bench_main(const Options& o) {
  std::optional<tbb::global_control> limit;
  if (o.threads) limit.emplace(tbb::global_control::max_allowed_parallelism, o.threads);
  StoreBench bench(o);
  bench.start();
  bench.load_data();
  bench.add_cases();
  bench.run_cases();
  bench.run_tutorial();
  bench.print_table();
  bench.print_ratios();
  bench.print_floors();
  bench.print_memory();
  bench.finish();
  return bench.failed() ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"Write speed of PNG folder, LMDB and HDF5 stores vs the tutorial's Python code"};
  auto* count = app.add_option("--count", o.count, "Images in total (no repetition)");
  auto* base = app.add_option("--base", o.base, "Images generated (default 50000)");
  auto* repeat = app.add_option("--repeat", o.repeat, "Times the data set is repeated (default 2)");
  count->excludes(base)->excludes(repeat);
  app.add_option("--source", o.source, "Source spec instead of the synthetic one (its train split)");
  app.add_option("--out", o.out, "Scratch directory (default /tmp/imgstore-store-bench)");
  app.add_option("--threads", o.threads, "Writer threads (0: all cores)");
  app.add_option("--png-level", o.png_level, "zlib level for both sides (default 6)")
      ->check(CLI::Range(0, 9));
  app.add_option("--runs", o.runs, "Runs per case; the median is reported (default 3)")
      ->check(CLI::Range(1, 100));
  app.add_option("--json", o.json_file, "Write all figures to this JSON file");
  app.add_flag("--no-python", o.no_python, "Skip the tutorial's Python code");
  app.add_option("--skip", o.skip, "Cases not to run (png_durable, lmdb_nosync, plain_durable, ...)")
      ->delimiter(',');
  app.add_option("--case-budget", o.case_budget,
                 "Seconds after which a case is not run again (default 300)");
  app.add_option("--python", o.python, "Interpreter with numpy, Pillow, h5py, lmdb");
  app.add_flag("--no-stream", o.no_stream, "Skip the streaming conversion's peak RSS");
  app.add_flag("--stream-child", o.stream_child)->group("");
  CLI11_PARSE(app, argc, argv);
  if (o.count == 0 && (o.base == 0 || o.repeat == 0)) {
    std::cerr << "--base and --repeat must be at least 1\n";
    return 2;
  }
  try {
    if (o.stream_child) {
      std::optional<tbb::global_control> limit;
      if (o.threads) limit.emplace(tbb::global_control::max_allowed_parallelism, o.threads);
      if (o.count) o.base = o.count, o.repeat = 1;
      return stream_child_main(o, o.source.empty() ? synthetic_spec(o.base) : o.source);
    }
    return bench_main(o);
  } catch (const imgstore::UsageError& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << '\n';
    return 1;
  }
}
