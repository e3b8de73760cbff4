// imgstore-photo-convert-bench: imgstore-convert on real photos (issue #10, "Performance"),
// side by side with its limits, measured in the same run:
//   (a) image folder -> LMDB / HDF5, --encoding jpeg, no resize (the JPEGs are stored
//       untouched): wall time against the cat floor (the same files' bytes streamed into one
//       new file by bench/common's copy_floor), with and without the final flush;
//   (b) --resize-short 256 --encoding jpeg against bench/photo_convert_peer.py (a Pillow loop:
//       open, convert("RGB"), resize BILINEAR, save JPEG q90), per core used;
//   peak RSS of every conversion (ru_maxrss of the child process).
//
//   imgstore-photo-convert-bench [--source DIR] [--out DIR] [--runs 3] [--threads N]
//                                [--copies K] [--quick] [--json FILE] [--csv FILE] [--no-python]
//
// The data set is the pass-through JPEGs of the medium photo fixture (generated in the run by
// tests/fixtures/make_photo_fixtures.py; --quick: the small one) or of --source, linked (or
// copied) into OUT/data as an image folder. Every case runs --runs times, interleaved; medians.
// The page cache is warm (the files are read once before, residency is reported); outputs of
// earlier runs are set aside and sync()ed before each timed run. See bench/README.md.
#include <fcntl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "codecs/image_codec.hpp"
#include "common/floors.hpp"
#include "common/limits.hpp"
#include "common/median.hpp"
#include "common/scratch.hpp"
#include "imgstore/error.hpp"
#include "ingest/image_files.hpp"

namespace {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using json = nlohmann::ordered_json;
using imgstore::bench::beaten_flag;
using imgstore::bench::Flush;
using imgstore::bench::median;
using imgstore::bench::FloorRun;

constexpr double kMiB = 1024.0 * 1024.0;
constexpr std::uint64_t kRssAllowance = std::uint64_t{256} << 20;  // + the largest image

struct Options {
  fs::path source;  // empty: generate the fixture
  fs::path out = fs::temp_directory_path() / "imgstore-photo-convert-bench";
  int runs = 3;
  unsigned copies = 1;  // each file linked this many times: a larger data set of the same photos
  unsigned threads = 0;
  bool quick = false;
  bool no_python = false;
  fs::path json_path, csv_path;
  std::string python = "/usr/bin/python3";
  std::string convert;  // default: imgstore-convert next to this program
};

// The files the pass-through conversion stores untouched, as an image folder.
struct DataSet {
  fs::path root;
  std::vector<fs::path> files;     // in the converter's order (splits, classes, files)
  std::uint64_t bytes = 0;         // sum of their sizes
  std::uint64_t largest_image = 0; // decoded bytes (w*h*3) of the largest
  std::uint64_t left_out = 0;      // images of the source that would be re-encoded
  std::string description;
};

// One timed case: its runs.
struct Case {
  std::string name, experiment, format, variant;
  std::vector<double> seconds, cpu_seconds;
  std::vector<std::uint64_t> rss, bytes;
  unsigned threads = 1;

  // A run of imgstore-convert that writes stores (not a floor, not the process start).
  bool converts() const { return experiment != "floor" && experiment != "startup"; }
};

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string self_dir() {
  std::error_code ec;
  const auto p = fs::read_symlink("/proc/self/exe", ec);
  if (ec) throw imgstore::IoError("cannot resolve /proc/self/exe");
  return p.parent_path().string();
}

// ---- child processes: wall time, CPU time and peak RSS (wait4's rusage) ----

struct ChildRun {
  int status = 0;
  double seconds = 0, cpu_seconds = 0;
  std::uint64_t maxrss = 0;
  std::string out;  // stdout, when captured
};

double tv_seconds(const timeval& tv) { return static_cast<double>(tv.tv_sec) + tv.tv_usec / 1e6; }

ChildRun run_child(const std::vector<std::string>& argv, bool capture) {
  int pipefd[2] = {-1, -1};
  if (capture && pipe2(pipefd, O_CLOEXEC) != 0) throw imgstore::IoError("pipe failed");
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  std::fflush(stdout);
  const auto t0 = Clock::now();
  const pid_t pid = fork();
  if (pid < 0) throw imgstore::IoError("fork failed");
  if (pid == 0) {
    if (capture) dup2(pipefd[1], STDOUT_FILENO);
    execv(args[0], args.data());
    std::fprintf(stderr, "cannot run '%s': %s\n", args[0], std::strerror(errno));
    _exit(127);
  }
  ChildRun r;
  if (capture) {
    ::close(pipefd[1]);
    char buf[65536];
    for (ssize_t n; (n = ::read(pipefd[0], buf, sizeof buf)) != 0;) {
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) break;
      r.out.append(buf, static_cast<std::size_t>(n));
    }
    ::close(pipefd[0]);
  }
  rusage ru{};
  while (wait4(pid, &r.status, 0, &ru) < 0 && errno == EINTR) {
  }
  r.seconds = seconds_since(t0);
  r.cpu_seconds = tv_seconds(ru.ru_utime) + tv_seconds(ru.ru_stime);
  r.maxrss = static_cast<std::uint64_t>(ru.ru_maxrss) * 1024;
  return r;
}

bool exited_ok(const ChildRun& r) { return WIFEXITED(r.status) && WEXITSTATUS(r.status) == 0; }

// ---- the data set ----

fs::path make_fixture(const Options& o) {
  const fs::path dir = o.out / (o.quick ? "fixture-small" : "fixture-medium");
  if (fs::exists(dir / ".imgstore-photo-fixtures")) return dir;  // deterministic: reuse
  imgstore::bench::remove_tree(dir);
  const std::string script = std::string(IMGSTORE_SOURCE_DIR) + "/tests/fixtures/make_photo_fixtures.py";
  fmt::print("generating the {} photo fixture into {} ...\n", o.quick ? "small" : "medium", dir.string());
  const auto r = run_child({o.python, script, "--size", o.quick ? "small" : "medium", "--out", dir.string()},
                           true);
  if (!exited_ok(r)) throw imgstore::IoError("make_photo_fixtures.py failed (needs python3-skimage, Pillow)");
  return dir;
}

std::vector<std::uint8_t> slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<std::uint8_t>(std::istreambuf_iterator<char>(in), {});
}

// Links (or copies) `from` to `to`, creating its folder.
void place(const fs::path& from, const fs::path& to) {
  fs::create_directories(to.parent_path());
  std::error_code ec;
  fs::create_hard_link(from, to, ec);
  if (ec) fs::copy_file(from, to, fs::copy_options::overwrite_existing);
}

DataSet build_data(const fs::path& source, const fs::path& root, unsigned copies) {
  namespace d = imgstore::detail;
  imgstore::bench::remove_tree(root);
  const d::ImageFileScan scan = d::scan_image_folder(source);
  DataSet ds;
  ds.root = root;
  for (const auto& split : scan.splits) {
    for (std::size_t i = 0; i < split.files.size(); ++i) {
      const fs::path rel(std::string(split.files.path(i)));
      const auto bytes = slurp(split.base / rel);
      d::ImageInfo info;
      try {
        info = d::read_image_info(bytes.data(), bytes.size(), rel.string());
      } catch (const std::exception&) {
        ++ds.left_out;
        continue;
      }
      if (info.kind != d::ImageKind::Jpeg || !d::can_store_untouched(info, d::ImageKind::Jpeg, 3)) {
        ++ds.left_out;  // a PNG, CMYK or gray JPEG: decoded and re-encoded, not pass-through
        continue;
      }
      const std::uint64_t lo = std::min(info.width, info.height), hi = std::max(info.width, info.height);
      if (hi * 256 / lo > 65535) {
        ++ds.left_out;  // resized to short side 256 it exceeds JPEG's 65535 (Pillow fails too)
        continue;
      }
      for (unsigned c = 0; c < copies; ++c) {
        const fs::path name = c == 0 ? rel : rel.parent_path() / fmt::format("copy{}_{}", c, rel.filename().string());
        const fs::path dest = root / split.name / name;
        place(split.base / rel, dest);
        ds.files.push_back(dest);
        ds.bytes += bytes.size();
      }
      ds.largest_image = std::max<std::uint64_t>(ds.largest_image, std::uint64_t{info.width} * info.height * 3);
    }
  }
  if (ds.files.empty()) throw imgstore::UsageError("no pass-through JPEG in " + source.string());
  return ds;
}

// ---- the timed cases ----

class Bench {
 public:
  explicit Bench(Options o) : o_(std::move(o)) {}
  int run();

 private:
  Options o_;
  DataSet ds_;
  std::vector<Case> cases_;
  std::optional<Case> python_;
  std::uint64_t python_rss_ = 0;
  double resident_ = 0;
  std::vector<FloorRun> floor_runs_;
  fs::path trash() const { return o_.out / "trash"; }

  Case& get(const std::string& name) {
    for (auto& c : cases_) if (c.name == name) return c;
    throw std::logic_error("no case " + name);
  }
  void add_cases();
  void one_round(int round);
  void time_floor(Case& c, Flush flush);
  fs::path output_of(const Case& c) const;
  void time_convert(Case& c, bool resize, bool fsync);
  void time_startup(Case& c);
  void write_peer_list() const;
  void run_python_once();
  bool python_failed_ = false;
  json summarize();
  void print_summary(const json& summary) const;
  void write_outputs(const json& summary) const;
};

void Bench::add_cases() {
  const unsigned t = o_.threads;
  cases_.push_back({"cat floor, no flush", "floor", "file", "cat", {}, {}, {}, {}, 1});
  cases_.push_back({"cat floor, fsync", "floor", "file", "cat+fsync", {}, {}, {}, {}, 1});
  // Not a limit: what starting imgstore-convert costs (exec, loading HDF5, LMDB, TBB,
  // libjpeg-turbo...), which every conversion pays and the in-process floor does not.
  cases_.push_back({"process start (convert --help)", "startup", "-", "help", {}, {}, {}, {}, 1});
  for (const char* f : {"lmdb", "hdf5"}) {
    cases_.push_back({fmt::format("{} pass-through, --no-fsync", f), "passthrough", f, "no-fsync", {}, {}, {}, {}, t});
    cases_.push_back({fmt::format("{} pass-through, fsync", f), "passthrough", f, "fsync", {}, {}, {}, {}, t});
    cases_.push_back({fmt::format("{} --resize-short 256", f), "resize256", f, "no-fsync", {}, {}, {}, {}, t});
  }
}

// Each case writes to a folder of its own, which its next run deletes just before it starts, as
// each floor run deletes the floor file of the same size: so every timed run writes into memory
// freed a moment ago. Memory freed long before costs more here (this VM hands free memory back
// to its host, which faults it in again), and which a run got used to depend on the case before.
fs::path Bench::output_of(const Case& c) const {
  return o_.out / fmt::format("stores-{}-{}-{}", c.format, c.experiment, c.variant);
}

void Bench::time_floor(Case& c, Flush flush) {
  const fs::path file = o_.out / "floor.bin";
  imgstore::bench::set_aside(file, trash());
  const FloorRun r = imgstore::bench::copy_floor(ds_.files, file, imgstore::bench::kFloorPiece, flush);
  c.seconds.push_back(r.seconds);
  c.cpu_seconds.push_back(0);
  c.rss.push_back(0);
  c.bytes.push_back(r.bytes);
  floor_runs_.push_back(r);
}

void Bench::time_convert(Case& c, bool resize, bool fsync) {
  const fs::path dir = output_of(c);
  imgstore::bench::set_aside(dir, trash());
  std::vector<std::string> argv = {o_.convert, "convert", ds_.root.string(), "--to", c.format,
                                   "--encoding", "jpeg", "--out", dir.string(), "--quiet",
                                   "--threads", std::to_string(o_.threads)};
  if (resize) argv.insert(argv.end(), {"--resize-short", "256", "--jpeg-quality", "90"});
  if (!fsync) argv.push_back("--no-fsync");
  const ChildRun r = run_child(argv, false);
  if (!exited_ok(r)) throw imgstore::IoError(fmt::format("imgstore-convert failed ({})", c.name));
  c.seconds.push_back(r.seconds);
  c.cpu_seconds.push_back(r.cpu_seconds);
  c.rss.push_back(r.maxrss);
  std::uint64_t bytes = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) bytes += e.file_size();
  }
  c.bytes.push_back(bytes);
}

void Bench::time_startup(Case& c) {
  const ChildRun r = run_child({o_.convert, "--help"}, true);
  if (!exited_ok(r)) throw imgstore::IoError("imgstore-convert --help failed");
  c.seconds.push_back(r.seconds);
  c.cpu_seconds.push_back(r.cpu_seconds);
  c.rss.push_back(r.maxrss);
  c.bytes.push_back(0);
}

void Bench::one_round(int round) {
  fmt::print("round {}/{} ...\n", round, o_.runs);
  time_floor(get("cat floor, no flush"), Flush::None);
  time_floor(get("cat floor, fsync"), Flush::Fsync);
  time_startup(get("process start (convert --help)"));
  for (const char* f : {"lmdb", "hdf5"}) {
    time_convert(get(fmt::format("{} pass-through, --no-fsync", f)), false, false);
    time_convert(get(fmt::format("{} pass-through, fsync", f)), false, true);
    time_convert(get(fmt::format("{} --resize-short 256", f)), true, false);
  }
  run_python_once();
}

void Bench::write_peer_list() const {
  std::ofstream out(o_.out / "peer_files.txt");
  for (const auto& f : ds_.files) out << f.string() << '\n';
}

// One run of the Python peer, in the same round as ours (so both see the same machine load).
void Bench::run_python_once() {
  if (o_.no_python || python_failed_) return;
  const std::string script = std::string(IMGSTORE_SOURCE_DIR) + "/bench/photo_convert_peer.py";
  const ChildRun r = run_child({o_.python, script, "--list", (o_.out / "peer_files.txt").string(),
                                "--out", (o_.out / "peer_out").string(), "--runs", "1"},
                               true);
  if (!exited_ok(r)) {
    fmt::print("Python peer ({}) failed (status {}): its rows are missing\n", o_.python, r.status);
    python_failed_ = true;
    python_.reset();
    return;
  }
  if (!python_) python_ = Case{"Python PIL loop, resize 256", "resize256", "jpeg-files", "pil", {}, {}, {}, {}, 1};
  std::istringstream lines(r.out);
  for (std::string line; std::getline(lines, line);) {
    const json j = json::parse(line);
    if (j.contains("peak_rss_bytes")) {
      python_rss_ = std::max(python_rss_, j["peak_rss_bytes"].get<std::uint64_t>());
      continue;
    }
    python_->seconds.push_back(j["seconds"].get<double>());
    python_->cpu_seconds.push_back(j["cpu_seconds"].get<double>());
    python_->bytes.push_back(j["bytes"].get<std::uint64_t>());
    python_->rss.push_back(python_rss_);
  }
}

}  // namespace

namespace {

json case_row(const Case& c, std::uint64_t images) {
  const double m = median(c.seconds);
  return {{"case", c.name}, {"experiment", c.experiment}, {"format", c.format},
          {"variant", c.variant}, {"threads", c.threads}, {"runs", c.seconds.size()},
          {"images", images}, {"median_seconds", m},
          {"min_seconds", *std::min_element(c.seconds.begin(), c.seconds.end())},
          {"max_seconds", *std::max_element(c.seconds.begin(), c.seconds.end())},
          {"median_cpu_seconds", median(c.cpu_seconds)},
          {"images_per_second", m > 0 ? static_cast<double>(images) / m : 0.0},
          {"peak_rss_bytes", *std::max_element(c.rss.begin(), c.rss.end())},
          {"bytes", c.bytes.back()}};
}

// Adds the comparison of `row` with its limit or peer: ratio (higher is better), target, met.
void compare(json& row, const std::string& against, double ratio, double target, const std::string& how) {
  row["against"] = against;
  row["ratio"] = ratio;
  row["ratio_means"] = how;
  row["target"] = target;
  row["met"] = ratio >= target;
}

json Bench::summarize() {
  const std::uint64_t n = ds_.files.size();
  json rows = json::array();
  const double rss_limit = static_cast<double>(kRssAllowance + ds_.largest_image);
  for (const auto& c : cases_) {
    json row = case_row(c, n);
    if (c.experiment == "passthrough") {
      // The floor is its fastest run, as every limit: a copy cannot go faster than it did once.
      const Case& floor = get(c.variant == "fsync" ? "cat floor, fsync" : "cat floor, no flush");
      const double floor_s = *std::min_element(floor.seconds.begin(), floor.seconds.end());
      compare(row, floor.name, floor_s / median(c.seconds), 0.5, "fastest floor time / median conversion time");
      row["floor_beaten"] = median(c.seconds) < floor_s;
      // Informational, not the target: the floor plus the converter's own process start.
      row["ratio_floor_plus_start"] =
          (floor_s + median(get("process start (convert --help)").seconds)) / median(c.seconds);
    } else if (c.experiment == "resize256" && python_) {
      const double py = median(python_->seconds), ours = median(c.seconds) * c.threads;
      compare(row, python_->name, py / ours, 3.0, fmt::format("Python s x 1 core / (our s x {} threads)", c.threads));
      row["cpu_ratio"] = median(python_->cpu_seconds) / median(c.cpu_seconds);
    }
    if (c.converts()) {
      row["rss_limit_bytes"] = rss_limit;
      row["rss_met"] = static_cast<double>(row["peak_rss_bytes"].get<std::uint64_t>()) <= rss_limit;
    }
    rows.push_back(row);
  }
  if (python_) rows.push_back(case_row(*python_, n));
  return rows;
}

std::string verdict(const json& row) {
  if (!row.contains("ratio")) return "";
  std::string s = fmt::format("{:.2f}x (>= {:.1f}x: {})", row["ratio"].get<double>(),
                              row["target"].get<double>(), row["met"].get<bool>() ? "met" : "MISSED");
  if (row.value("floor_beaten", false)) s += " " + beaten_flag("floor");
  return s;
}

void Bench::print_summary(const json& summary) const {
  fmt::print("\n{} pass-through JPEGs ({:.1f} MiB, largest {:.1f} MiB decoded; {} other images of the "
             "source left out), {}, median of {} runs, warm page cache ({:.0f}% resident)\n",
             ds_.files.size(), ds_.bytes / kMiB, ds_.largest_image / kMiB, ds_.left_out,
             ds_.description, o_.runs, resident_ * 100);
  fmt::print("{:<34} {:>3} {:>9} {:>17} {:>9} {:>8} {:>9}  {}\n", "case", "thr", "median s",
             "min..max s", "cpu s", "img/s", "RSS MiB", "vs limit / peer (target)");
  for (const auto& r : summary) {
    std::string rss = r["peak_rss_bytes"].get<std::uint64_t>() ? fmt::format("{:.1f}", r["peak_rss_bytes"].get<std::uint64_t>() / kMiB) : "-";
    if (r.contains("rss_met") && !r["rss_met"].get<bool>()) rss += "!";
    fmt::print("{:<34} {:>3} {:>9.3f} {:>8.3f}..{:<8.3f} {:>9.3f} {:>8.0f} {:>9}  {}\n",
               r["case"].get<std::string>(), r["threads"].get<unsigned>(), r["median_seconds"].get<double>(),
               r["min_seconds"].get<double>(), r["max_seconds"].get<double>(),
               r["median_cpu_seconds"].get<double>(), r["images_per_second"].get<double>(), rss, verdict(r));
  }
  fmt::print("RSS target: <= 256 MiB + largest image = {:.1f} MiB ('!' marks a miss). Per core: Python "
             "runs on 1 core; ours on --threads {}.\n",
             (kRssAllowance + ds_.largest_image) / kMiB, o_.threads);
  for (const auto& r : summary) {
    if (r.contains("ratio_floor_plus_start")) {
      fmt::print("{}: (floor + process start) / conversion = {:.2f}x\n", r["case"].get<std::string>(),
                 r["ratio_floor_plus_start"].get<double>());
    }
    if (r.contains("cpu_ratio")) {
      fmt::print("{}: CPU time ratio (Python cpu s / ours) {:.2f}x\n", r["case"].get<std::string>(),
                 r["cpu_ratio"].get<double>());
    }
  }
  for (const auto& r : summary) {
    if (r.contains("met") && !r["met"].get<bool>()) fmt::print("TARGET MISSED: {}\n", r["case"].get<std::string>());
    if (r.contains("rss_met") && !r["rss_met"].get<bool>()) fmt::print("RSS TARGET MISSED: {}\n", r["case"].get<std::string>());
  }
}

void append_csv(std::ostream& out, const Case& c, std::uint64_t n) {
  for (std::size_t i = 0; i < c.seconds.size(); ++i) {
    out << fmt::format("photo_convert,{},{},{},{},{},warm,-,{},{:.6f},{:.1f},{}\n",
                       c.experiment == "floor" ? "floor" : (c.variant == "pil" ? "python" : "imgstore"),
                       c.format, c.variant, n, c.threads, i + 1, c.seconds[i],
                       c.seconds[i] > 0 ? static_cast<double>(n) / c.seconds[i] : 0.0, c.bytes[i]);
  }
}

void Bench::write_outputs(const json& summary) const {
  const std::uint64_t n = ds_.files.size();
  if (!o_.csv_path.empty()) {
    std::ofstream out(o_.csv_path);
    out << "experiment,impl,format,variant,n,threads,cache,order,run,seconds,images_per_s,bytes\n";
    for (const auto& c : cases_) append_csv(out, c, n);
    if (python_) append_csv(out, *python_, n);
  }
  if (o_.json_path.empty()) return;
  json floors = json::array();
  for (const auto& f : floor_runs_) {
    floors.push_back({{"seconds", f.seconds}, {"bytes", f.bytes}, {"files", f.files},
                      {"read_calls", f.read_calls}, {"write_calls", f.write_calls},
                      {"largest_piece", f.largest_piece}});
  }
  json doc = {{"program", "imgstore-photo-convert-bench"},
              {"conditions", {{"threads", o_.threads}, {"runs", o_.runs}, {"cache", "warm"},
                              {"resident_fraction", resident_}, {"cores", std::thread::hardware_concurrency()},
                              {"quick", o_.quick}, {"copies", o_.copies}, {"out", o_.out.string()}}},
              {"data", {{"description", ds_.description}, {"root", ds_.root.string()},
                        {"images", n}, {"bytes", ds_.bytes}, {"largest_image_bytes", ds_.largest_image},
                        {"left_out", ds_.left_out}}},
              {"floor_runs", floors},
              {"python_peak_rss_bytes", python_rss_},
              {"summary", summary}};
  std::ofstream(o_.json_path) << doc.dump(2) << '\n';
}

int Bench::run() {
  fs::create_directories(o_.out);
  const bool generated = o_.source.empty();
  const fs::path source = generated ? make_fixture(o_) : o_.source;
  ds_ = build_data(source, o_.out / "data", o_.copies);
  ds_.description = generated ? fmt::format("{} photo fixture (make_photo_fixtures.py)", o_.quick ? "small" : "medium")
                              : "folder " + source.string();
  if (o_.copies > 1) ds_.description += fmt::format(", each file linked {} times", o_.copies);
  imgstore::bench::read_floor(ds_.files, imgstore::bench::kFloorPiece);  // warm the page cache
  resident_ = imgstore::bench::resident_fraction(ds_.files);
  add_cases();
  write_peer_list();
  for (int r = 1; r <= o_.runs; ++r) one_round(r);
  for (const auto& f : floor_runs_) {
    if (f.bytes != ds_.bytes) throw std::logic_error("the cat floor did not copy the data set's bytes");
  }
  const json summary = summarize();
  print_summary(summary);
  write_outputs(summary);
  for (const Case& c : cases_) {
    if (c.converts()) imgstore::bench::set_aside(output_of(c), trash());
  }
  imgstore::bench::set_aside(o_.out / "floor.bin", trash());
  imgstore::bench::remove_tree(trash());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  CLI::App app{"imgstore-convert on photos against a same-run cat floor and a Pillow loop"};
  app.add_option("--source", o.source, "image folder to use instead of the generated medium fixture")->check(CLI::ExistingDirectory);
  app.add_option("--out", o.out, "scratch folder (the data set stays in OUT/data)");
  app.add_option("--runs", o.runs, "runs per case; medians are reported (default 3)")->check(CLI::Range(1, 100));
  app.add_option("--threads", o.threads, "imgstore-convert --threads (default: all cores)");
  app.add_option("--copies", o.copies, "link each file K times under new names: the same photos as a "
                 "larger data set, where fixed costs (process start, store creation) weigh less")
      ->check(CLI::Range(1, 1000));
  app.add_flag("--quick", o.quick, "small fixture, 1 run: checks the program, not the figures");
  app.add_flag("--no-python", o.no_python, "skip the Python peer");
  app.add_option("--python", o.python, "interpreter with Pillow (and python3-skimage for the fixture)");
  app.add_option("--convert", o.convert, "imgstore-convert to time (default: next to this program)");
  app.add_option("--json", o.json_path, "write the summary as JSON");
  app.add_option("--csv", o.csv_path, "write every run as CSV (imgstore-bench's measurements.csv columns)");
  CLI11_PARSE(app, argc, argv);
  try {
    if (o.quick && app.count("--runs") == 0) o.runs = 1;
    if (o.threads == 0) o.threads = std::max(1u, std::thread::hardware_concurrency());
    if (o.convert.empty()) o.convert = self_dir() + "/imgstore-convert";
    return Bench(std::move(o)).run();
  } catch (const std::exception& e) {
    std::cerr << "imgstore-photo-convert-bench: error: " << e.what() << '\n';
    return 1;
  }
}
