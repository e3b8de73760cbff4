// The floors of bench/common/floors.hpp: plain system calls, counted, nothing else.
#include "floors.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <exception>
#include <limits>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>

#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "imgstore/error.hpp"

namespace imgstore::bench {

namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

[[noreturn]] void throw_io(const char* action, const fs::path& path, int err) {
  throw IoError(fmt::format("cannot {} '{}': {}", action, path.string(), std::strerror(err)));
}

using detail::Fd;

Fd create_file(int dir_fd, const char* name, const fs::path& shown) {
  Fd fd(::openat(dir_fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) throw_io("create", shown, errno);
  return fd;
}

// write() all of [data, data + size), counting the calls.
void write_counted(int fd, const std::uint8_t* data, std::size_t size, const fs::path& path,
                   FloorRun& run) {
  while (size > 0) {
    const ssize_t w = ::write(fd, data, size);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) throw_io("write", path, w < 0 ? errno : EIO);
    ++run.write_calls;
    run.largest_piece = std::max(run.largest_piece, static_cast<std::size_t>(w));
    run.bytes += static_cast<std::uint64_t>(w);
    data += w;
    size -= static_cast<std::size_t>(w);
  }
}

// read() up to size bytes; 0 at the end of the file. Counts the calls that returned bytes.
std::size_t read_counted(int fd, std::uint8_t* data, std::size_t size, const fs::path& path,
                         FloorRun& run) {
  for (;;) {
    const ssize_t r = ::read(fd, data, size);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) throw_io("read", path, errno);
    if (r > 0) {
      ++run.read_calls;
      run.largest_piece = std::max(run.largest_piece, static_cast<std::size_t>(r));
    }
    return static_cast<std::size_t>(r);
  }
}

void fsync_or_throw(int fd, const fs::path& path) {
  if (::fsync(fd) != 0 && errno != EINVAL) throw_io("fsync", path, errno);
}

void fsync_parent(const fs::path& path) {
  fs::path parent = path.parent_path();
  if (parent.empty()) parent = ".";
  Fd dir(::open(parent.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.get() < 0) throw_io("open directory", parent, errno);
  fsync_or_throw(dir.get(), parent);
}

// Ends a single-file floor as a durable store's file ends: fsync the file, then its directory.
void finish_file(Fd& fd, const fs::path& file, Flush flush) {
  if (flush == Flush::Fsync) fsync_or_throw(fd.get(), file);
  if (fd.close() != 0) throw_io("close", file, errno);
  if (flush == Flush::Fsync) fsync_parent(file);
}

std::vector<std::uint8_t> pattern_buffer(std::size_t piece) {
  std::vector<std::uint8_t> buf(std::max<std::size_t>(piece, 1));
  for (std::size_t k = 0; k < buf.size(); ++k) buf[k] = floor_pattern_byte(k);
  return buf;
}

void check_piece(std::size_t piece) {
  if (piece == 0) throw UsageError("a floor's piece size must be at least 1 byte");
}

std::pair<std::uint64_t, std::uint64_t> resident_pages(const fs::path& file) {
  Fd f(::open(file.c_str(), O_RDONLY | O_CLOEXEC));
  struct stat st {};
  if (f.get() < 0 || ::fstat(f.get(), &st) != 0 || st.st_size == 0) return {0, 0};
  const auto size = static_cast<std::size_t>(st.st_size);
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_SHARED, f.get(), 0);
  if (p == MAP_FAILED) return {0, 0};
  const auto page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((size + page - 1) / page);
  std::uint64_t resident = 0;
  if (::mincore(p, size, vec.data()) == 0) {
    for (unsigned char v : vec) resident += v & 1;
  }
  ::munmap(p, size);
  return {resident, vec.size()};
}

}  // namespace

std::uint8_t floor_pattern_byte(std::uint64_t offset) {
  // Period 251 (prime): never aligned with a page or a piece, never all zeros.
  return static_cast<std::uint8_t>(1 + offset % 251);
}

FloorRun write_floor(const fs::path& file, std::uint64_t bytes, std::size_t piece, Flush flush) {
  check_piece(piece);
  // The period of the pattern divides no piece boundary, so each piece starts at its offset.
  const std::size_t period = 251;
  std::vector<std::uint8_t> buf = pattern_buffer(piece + period);
  FloorRun run;
  const auto t0 = Clock::now();
  Fd fd = create_file(AT_FDCWD, file.c_str(), file);
  for (std::uint64_t off = 0; off < bytes;) {
    const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(piece, bytes - off));
    write_counted(fd.get(), buf.data() + off % period, n, file, run);
    off += n;
  }
  finish_file(fd, file, flush);
  run.seconds = seconds_since(t0);
  run.files = 1;
  return run;
}

namespace {

// The reader half of copy_floor: the sources' bytes, in order, handed over in pieces through
// two buffers, so that reading piece k+1 overlaps writing piece k.
class PieceQueue {
 public:
  explicit PieceQueue(std::size_t piece) : buf_{pattern_buffer(piece), pattern_buffer(piece)} {}

  // Reader: the buffer to fill next, once the writer has given it back; null if abandoned.
  std::vector<std::uint8_t>* to_fill() {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] { return abandoned_ || size_[filled_ % 2] == kFree; });
    return abandoned_ ? nullptr : &buf_[filled_ % 2];
  }
  void filled(std::size_t n) { publish([&] { size_[filled_++ % 2] = n; }); }
  void end(std::exception_ptr error) { publish([&] { ended_ = true, error_ = error; }); }

  // Writer: the next piece in order, or null at the end; rethrows the reader's error.
  const std::uint8_t* next(std::size_t& n) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] { return size_[taken_ % 2] != kFree || ended_; });
    if (size_[taken_ % 2] == kFree) {
      if (error_) std::rethrow_exception(error_);
      return nullptr;
    }
    n = size_[taken_ % 2];
    return buf_[taken_ % 2].data();
  }
  void written() { publish([&] { size_[taken_++ % 2] = kFree; }); }
  void abandon() { publish([&] { abandoned_ = true; }); }

 private:
  static constexpr std::size_t kFree = std::numeric_limits<std::size_t>::max();
  template <typename F>
  void publish(F change) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      change();
    }
    changed_.notify_all();
  }

  std::vector<std::uint8_t> buf_[2];
  std::size_t size_[2] = {kFree, kFree};  // bytes a full buffer holds; kFree when empty
  std::uint64_t filled_ = 0, taken_ = 0;  // pieces filled by the reader, written by the writer
  bool ended_ = false, abandoned_ = false;
  std::exception_ptr error_;
  std::mutex mutex_;
  std::condition_variable changed_;
};

// Fills each piece to the brim, across file boundaries, before handing it over: a hand-over per
// file (one futex wake and one short write per 40 KB photo) made the floor 4x slower than the
// two-thread conversions it bounds.
void read_pieces(const std::vector<fs::path>& sources, std::uint64_t total, PieceQueue& queue,
                 FloorRun& run) {
  const bool cycle = total > 0;  // else each source once, to its end
  std::uint64_t left = cycle ? total : std::numeric_limits<std::uint64_t>::max();
  std::uint64_t copied = 0;
  std::vector<std::uint8_t>* buf = nullptr;
  std::size_t used = 0;  // bytes of *buf filled
  do {
    const std::uint64_t before = copied;
    for (const auto& src : sources) {
      if (left == 0) break;
      Fd in(::open(src.c_str(), O_RDONLY | O_CLOEXEC));
      if (in.get() < 0) throw_io("open", src, errno);
      while (left > 0) {
        if (!buf && !(buf = queue.to_fill())) return;
        const std::size_t want =
            static_cast<std::size_t>(std::min<std::uint64_t>(buf->size() - used, left));
        const std::size_t got = read_counted(in.get(), buf->data() + used, want, src, run);
        if (got == 0) break;
        used += got;
        copied += got;
        left -= got;
        if (used == buf->size()) {
          queue.filled(used);
          buf = nullptr, used = 0;
        }
      }
    }
    if (cycle && left > 0 && copied == before) {
      throw std::invalid_argument("copy_floor: the sources are empty, cannot copy " +
                                  std::to_string(total) + " bytes");
    }
  } while (cycle && left > 0);
  if (used > 0) queue.filled(used);
}

}  // namespace

FloorRun copy_floor(const std::vector<fs::path>& sources, const fs::path& file, std::size_t piece,
                    Flush flush, std::uint64_t total) {
  check_piece(piece);
  PieceQueue queue(piece);
  FloorRun run, reader_run;
  const auto t0 = Clock::now();
  Fd out = create_file(AT_FDCWD, file.c_str(), file);
  std::thread reader([&] {
    try {
      read_pieces(sources, total, queue, reader_run);
      queue.end(nullptr);
    } catch (...) {
      queue.end(std::current_exception());
    }
  });
  try {
    std::size_t n = 0;
    while (const std::uint8_t* data = queue.next(n)) {
      write_counted(out.get(), data, n, file, run);
      queue.written();
    }
  } catch (...) {
    queue.abandon();
    reader.join();
    throw;
  }
  reader.join();
  finish_file(out, file, flush);
  run.seconds = seconds_since(t0);
  run.files = 1;
  run.read_calls = reader_run.read_calls;
  run.largest_piece = std::max(run.largest_piece, reader_run.largest_piece);
  return run;
}

namespace {

// Reads bytes [begin, end) of the files taken as one stream (`starts`: each file's offset in
// it) with pread, in pieces of buf.size(); counts into `run`.
void read_stream_part(const std::vector<fs::path>& files, const std::vector<std::uint64_t>& starts,
                      std::uint64_t begin, std::uint64_t end, std::vector<std::uint8_t>& buf,
                      FloorRun& run) {
  for (std::size_t i = 0; i < files.size() && begin < end; ++i) {
    const std::uint64_t file_end = starts[i + 1];
    if (file_end <= begin) continue;
    Fd in(::open(files[i].c_str(), O_RDONLY | O_CLOEXEC));
    if (in.get() < 0) throw_io("open", files[i], errno);
    std::uint64_t off = begin - starts[i];
    const std::uint64_t stop = std::min(end, file_end) - starts[i];
    while (off < stop) {
      const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(buf.size(), stop - off));
      const ssize_t r = ::pread(in.get(), buf.data(), want, static_cast<off_t>(off));
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) throw_io("read", files[i], errno);
      if (r == 0) break;  // the file shrank under us
      ++run.read_calls;
      run.largest_piece = std::max(run.largest_piece, static_cast<std::size_t>(r));
      run.bytes += static_cast<std::uint64_t>(r);
      off += static_cast<std::uint64_t>(r);
    }
    begin = starts[i] + stop;
  }
}

}  // namespace

FloorRun read_floor(const std::vector<fs::path>& files, std::size_t piece, unsigned threads) {
  check_piece(piece);
  threads = std::max(threads, 1u);
  // The files as one stream of bytes, cut into `threads` contiguous parts, each read
  // sequentially by a thread of its own (part 0 by this one), as a loader's threads read a
  // store at once. Sizes are taken before the clock starts.
  std::vector<std::uint64_t> starts{0};
  for (const auto& f : files) {
    std::error_code ec;
    const auto size = fs::file_size(f, ec);
    if (ec) throw_io("open", f, ec.value());
    starts.push_back(starts.back() + size);
  }
  const std::uint64_t total = starts.back();
  // Reads overwrite the buffers: no pattern needed (filling 4 MiB byte by byte took longer
  // than a warm read of a small store, and the limits repeat such reads).
  std::vector<std::vector<std::uint8_t>> bufs;
  for (unsigned t = 0; t < threads; ++t) bufs.emplace_back(piece);
  std::vector<FloorRun> parts(threads);
  std::vector<std::exception_ptr> errors(threads);
  auto read_part = [&](unsigned t) {
    try {
      read_stream_part(files, starts, total * t / threads, total * (t + 1) / threads, bufs[t],
                       parts[t]);
    } catch (...) {
      errors[t] = std::current_exception();
    }
  };
  const auto t0 = Clock::now();
  {
    std::vector<std::thread> others;
    for (unsigned t = 1; t < threads; ++t) others.emplace_back(read_part, t);
    read_part(0);
    for (auto& th : others) th.join();
  }
  FloorRun run;
  run.seconds = seconds_since(t0);
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  for (const auto& p : parts) {
    run.bytes += p.bytes;
    run.read_calls += p.read_calls;
    run.largest_piece = std::max(run.largest_piece, p.largest_piece);
  }
  run.files = files.size();
  return run;
}

FloorRun file_creation_floor(const fs::path& dir, const std::vector<std::uint64_t>& sizes,
                             Flush flush) {
  const std::uint64_t largest = sizes.empty() ? 0 : *std::max_element(sizes.begin(), sizes.end());
  std::vector<std::uint8_t> buf = pattern_buffer(static_cast<std::size_t>(largest));
  FloorRun run;
  const auto t0 = Clock::now();
  if (::mkdir(dir.c_str(), 0755) != 0) throw_io("create directory", dir, errno);
  Fd dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir_fd.get() < 0) throw_io("open directory", dir, errno);
  // Durable: written back in the background while files are created, then one syncfs() for
  // the whole directory, then the directory and its parent: what a durable PNG folder does
  // (src/formats/png_folder.cpp; flush_staged in src/detail/fs_util.cpp).
  std::optional<imgstore::detail::BackgroundFlusher> flusher;
  if (flush == Flush::Fsync) {
    flusher.emplace(dir_fd.get(), dir, imgstore::detail::kBackgroundFlushBytes);
  }
  char name[32];
  for (std::size_t i = 0; i < sizes.size(); ++i) {
    // As a PNG folder names its files: zero-padded index (8 digits), ".png".
    std::snprintf(name, sizeof name, "%08zu.png", i);
    Fd fd = create_file(dir_fd.get(), name, dir / name);
    write_counted(fd.get(), buf.data(), static_cast<std::size_t>(sizes[i]), dir / name, run);
    if (fd.close() != 0) throw_io("close", dir / name, errno);
    if (flusher) flusher->note_written(sizes[i]);
    ++run.files;
  }
  if (flush == Flush::Fsync) {
    flusher->finish();
    if (::syncfs(dir_fd.get()) != 0) throw_io("flush", dir, errno);
    fsync_or_throw(dir_fd.get(), dir);
    fsync_parent(dir);
  }
  run.seconds = seconds_since(t0);
  return run;
}

double resident_fraction(const std::vector<fs::path>& files) {
  // Sample up to 256 files evenly: mincore over 100,000 PNG files would take a while.
  const std::size_t step = std::max<std::size_t>(1, files.size() / 256);
  std::uint64_t resident = 0, total = 0;
  for (std::size_t i = 0; i < files.size(); i += step) {
    auto [r, t] = resident_pages(files[i]);
    resident += r;
    total += t;
  }
  return total ? static_cast<double>(resident) / static_cast<double>(total) : 0;
}

}  // namespace imgstore::bench
