// imgstore-bench: the machine, library versions, files on disk and page-cache eviction.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <sstream>
#include <thread>

#include <fmt/format.h>
#include <lmdb.h>
#include <png.h>
#include <oneapi/tbb/version.h>
#include <torch/version.h>
#if __has_include(<hdf5/serial/H5public.h>)
#include <hdf5/serial/H5public.h>
#define IMGSTORE_BENCH_HDF5 H5_VERS_INFO
#else
#define IMGSTORE_BENCH_HDF5 "unknown"
#endif

#include "bench.hpp"
#include "common/floors.hpp"
#include "detail/fs_util.hpp"
#include "imgstore/error.hpp"

namespace imgstore::bench {

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos && colon + 2 <= line.size()) return line.substr(colon + 2);
    }
  }
  return "unknown";
}

std::uint64_t meminfo_total() {
  std::ifstream in("/proc/meminfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("MemTotal:", 0) == 0) return std::strtoull(line.c_str() + 9, nullptr, 10) * 1024;
  }
  return 0;
}

// The mount holding `path` (longest mount point that prefixes it): device and fs type.
std::pair<std::string, std::string> mount_of(const fs::path& path) {
  std::error_code ec;
  const std::string p = fs::weakly_canonical(path, ec).string();
  std::ifstream in("/proc/mounts");
  std::string dev, mnt, type, best_dev = "unknown", best_type = "unknown";
  std::size_t best = 0;
  for (std::string line; std::getline(in, line);) {
    std::istringstream ls(line);
    if (!(ls >> dev >> mnt >> type)) continue;
    const bool prefix = p.compare(0, mnt.size(), mnt) == 0 &&
                        (mnt == "/" || p.size() == mnt.size() || p[mnt.size()] == '/');
    if (prefix && mnt.size() >= best) {
      best = mnt.size();
      best_dev = dev;
      best_type = type;
    }
  }
  return {best_dev, best_type};
}

// "/dev/vda (virtio, rotational 0)" from /sys/block when the device is a block device.
std::string describe_disk(const std::string& dev) {
  std::string out = dev;
  if (dev.rfind("/dev/", 0) != 0) return out;
  std::string name = dev.substr(5);
  // A partition (vda1, nvme0n1p2) belongs to its parent's queue.
  fs::path block = fs::path("/sys/class/block") / name;
  std::error_code ec;
  if (fs::exists(block / "partition", ec)) block = fs::canonical(block, ec).parent_path();
  std::ifstream rot(block / "queue" / "rotational"), model(block / "device" / "model");
  std::string r, m;
  if (std::getline(model, m)) {
    m.erase(m.find_last_not_of(" \n") + 1);
    if (!m.empty()) out += " " + m;
  }
  if (std::getline(rot, r)) out += r == "1" ? " (rotational)" : " (non-rotational)";
  return out;
}

bool fadvise_file(const fs::path& file) {
  const detail::Fd f(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  if (f.get() < 0) return false;
  // Dirty pages cannot be dropped: write them back first. sync_file_range, not fsync: the
  // stores are already durable, and a per-file fsync forces a journal commit for each of
  // 100,000 PNG files on a busy ext4.
  ::sync_file_range(f.get(), 0, 0,
                    SYNC_FILE_RANGE_WAIT_BEFORE | SYNC_FILE_RANGE_WRITE | SYNC_FILE_RANGE_WAIT_AFTER);
  return ::posix_fadvise(f.get(), 0, 0, POSIX_FADV_DONTNEED) == 0;
}

bool drop_caches() {
  ::sync();
  std::FILE* f = std::fopen("/proc/sys/vm/drop_caches", "w");
  if (!f) return false;
  const bool ok = std::fputs("1\n", f) >= 0;
  return (std::fclose(f) == 0) && ok;
}

}  // namespace

std::string to_string(ColdMethod m) {
  switch (m) {
    case ColdMethod::Fadvise: return "fadvise";
    case ColdMethod::DropCaches: return "drop_caches";
    case ColdMethod::None: return "none";
  }
  return "none";
}

Json machine_info(const fs::path& out) {
  utsname u{};
  ::uname(&u);
  double load[3] = {0, 0, 0};
  if (::getloadavg(load, 3) < 0) load[0] = load[1] = load[2] = -1;
  auto [dev, type] = mount_of(out);
  struct statfs sf {};
  std::string fs_detail = type;
  if (::statfs(out.c_str(), &sf) == 0) fs_detail += fmt::format(" (block {} B)", sf.f_bsize);
  return Json{{"cpu", cpu_model()},
              {"cores", std::max(1u, std::thread::hardware_concurrency())},
              {"ram_bytes", meminfo_total()},
              {"kernel", std::string(u.sysname) + " " + u.release},
              {"disk", describe_disk(dev)},
              {"filesystem", fs_detail},
              {"load_avg_start", {load[0], load[1], load[2]}}};
}

Json library_versions(const std::string& python) {
  Json j{{"imgstore", tool_version()},
         {"libtorch", TORCH_VERSION},
         {"lmdb", fmt::format("{}.{}.{}", MDB_VERSION_MAJOR, MDB_VERSION_MINOR, MDB_VERSION_PATCH)},
         {"hdf5", [] {
            std::string s = IMGSTORE_BENCH_HDF5;
            auto colon = s.rfind(": ");
            return colon == std::string::npos ? s : s.substr(colon + 2);
          }()},
         {"libpng", PNG_LIBPNG_VER_STRING},
         {"tbb", TBB_VERSION_STRING},
         {"python", "unavailable"},
         {"numpy", "unavailable"},
         {"h5py", "unavailable"},
         {"lmdb_py", "unavailable"},
         {"pillow", "unavailable"}};
  if (python.empty()) return j;
  // Each import on its own, so one missing package does not hide the others' versions.
  const std::string script =
      "import json, sys\n"
      "v = {'python': sys.version.split()[0]}\n"
      "for key, mod in (('numpy','numpy'),('h5py','h5py'),('lmdb_py','lmdb'),('pillow','PIL')):\n"
      "    try:\n"
      "        m = __import__(mod); v[key] = getattr(m, '__version__', 'unknown')\n"
      "    except Exception:\n"
      "        pass\n"
      "print(json.dumps(v))\n";
  int status = 0;
  std::string out = run_capture(shell_quote(python) + " -c " + shell_quote(script) + " 2>/dev/null", status);
  if (status == 0) {
    try {
      const Json parsed = Json::parse(out);
      for (auto& [k, v] : parsed.items()) j[k] = v;
    } catch (const std::exception&) {
    }
  }
  return j;
}

std::vector<fs::path> store_files(const fs::path& store) {
  std::vector<fs::path> files;
  std::error_code ec;
  if (fs::is_directory(store, ec)) {
    for (fs::recursive_directory_iterator it(store, ec), end; !ec && it != end; it.increment(ec)) {
      if (it->is_regular_file(ec)) files.push_back(it->path());
    }
  } else if (fs::is_regular_file(store, ec)) {
    files.push_back(store);
  }
  std::sort(files.begin(), files.end());
  return files;
}

std::uint64_t allocated_bytes(const fs::path& store) {
  std::uint64_t total = 0;
  for (const auto& f : store_files(store)) {
    struct stat st {};
    if (::lstat(f.c_str(), &st) == 0) total += static_cast<std::uint64_t>(st.st_blocks) * 512;
  }
  return total;
}

std::uint64_t apparent_bytes(const fs::path& store) {
  std::uint64_t total = 0;
  for (const auto& f : store_files(store)) {
    struct stat st {};
    if (::lstat(f.c_str(), &st) == 0) total += static_cast<std::uint64_t>(st.st_size);
  }
  return total;
}

ColdMethod probe_cold_method(const fs::path& dir, std::string& detail) {
  const fs::path probe = dir / ".imgstore-bench-cache-probe";
  {
    std::ofstream f(probe, std::ios::binary);
    std::vector<char> block(1 << 20, 'x');
    for (int i = 0; i < 8; ++i) f.write(block.data(), static_cast<std::streamsize>(block.size()));
    if (!f) {
      detail = fmt::format("cannot write the probe file '{}'", probe.string());
      return ColdMethod::None;
    }
  }
  auto cached = [&] {
    std::ifstream f(probe, std::ios::binary);
    std::vector<char> block(1 << 20);
    while (f.read(block.data(), static_cast<std::streamsize>(block.size()))) {
    }
    return resident_fraction({probe});
  };
  ColdMethod method = ColdMethod::None;
  const double before = cached();
  double after = before;
  if (fadvise_file(probe)) after = resident_fraction({probe});
  if (after < 0.05) {
    method = ColdMethod::Fadvise;
  } else {
    cached();
    if (drop_caches()) {
      after = resident_fraction({probe});
      if (after < 0.05) method = ColdMethod::DropCaches;
    }
  }
  detail = fmt::format("probe: {:.0f}% of a read 8 MiB file resident, {:.0f}% after eviction ({})",
                       100 * before, 100 * after, to_string(method));
  std::error_code ec;
  fs::remove(probe, ec);
  return method;
}

double evict(const fs::path& store, ColdMethod method) {
  const auto files = store_files(store);
  if (method == ColdMethod::Fadvise) {
    for (const auto& f : files) fadvise_file(f);
  } else if (method == ColdMethod::DropCaches) {
    drop_caches();
  }
  return resident_fraction(files);
}

void write_npy(const fs::path& path, const std::string& descr,
               const std::vector<std::uint64_t>& shape, const void* data, std::size_t bytes) {
  std::string dims;
  for (auto d : shape) dims += std::to_string(d) + ",";
  if (shape.size() > 1) dims.pop_back();
  std::string header =
      fmt::format("{{'descr': '{}', 'fortran_order': False, 'shape': ({}), }}", descr, dims);
  // magic(6) + version(2) + len(2) + header + '\n', padded to a multiple of 64.
  const std::size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header += '\n';
  std::ofstream f(path, std::ios::binary);
  const char magic[8] = {'\x93', 'N', 'U', 'M', 'P', 'Y', 1, 0};
  const std::uint16_t len = static_cast<std::uint16_t>(header.size());
  const char len_le[2] = {static_cast<char>(len & 0xff), static_cast<char>(len >> 8)};
  f.write(magic, 8);
  f.write(len_le, 2);
  f.write(header.data(), static_cast<std::streamsize>(header.size()));
  f.write(static_cast<const char*>(data), static_cast<std::streamsize>(bytes));
  if (!f.flush()) throw IoError(fmt::format("cannot write '{}': {}", path.string(), std::strerror(errno)));
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') out += "'\\''";
    else out += c;
  }
  return out + "'";
}

std::string run_capture(const std::string& command, int& status) {
  std::FILE* pipe = ::popen(command.c_str(), "r");
  if (!pipe) {
    status = -1;
    return {};
  }
  std::string out;
  char buf[4096];
  while (std::size_t n = std::fread(buf, 1, sizeof buf, pipe)) out.append(buf, n);
  status = ::pclose(pipe);
  return out;
}

}  // namespace imgstore::bench
