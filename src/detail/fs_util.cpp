#include "detail/fs_util.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <random>
#include <thread>

#include <fmt/format.h>

#include "imgstore/error.hpp"

namespace imgstore::detail {

std::string quote(const fs::path& path) { return "'" + path.string() + "'"; }

int Fd::close() {
  const int rc = fd_ >= 0 ? ::close(fd_) : 0;
  fd_ = -1;
  return rc;
}

void Fd::reset() noexcept {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

namespace {

[[noreturn]] void throw_errno(const std::string& action, const fs::path& path) {
  throw IoError(fmt::format("cannot {} {}: {}", action, quote(path), std::strerror(errno)));
}

}  // namespace

std::vector<std::uint8_t> read_file(const fs::path& path, std::uint64_t max_bytes) {
  std::vector<std::uint8_t> bytes;
  read_file_into(path, bytes, max_bytes);
  return bytes;
}

void read_file_into(const fs::path& path, std::vector<std::uint8_t>& bytes,
                    std::uint64_t max_bytes) {
  std::uint64_t size = 0;
  const Fd fd = open_sized(path, size, max_bytes);
  bytes.resize(static_cast<std::size_t>(size));
  bytes.resize(read_up_to(fd, bytes.data(), bytes.size(), path));
}

Fd open_sized(const fs::path& path, std::uint64_t& size, std::uint64_t max_bytes) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw_errno("open", path);
  struct stat st {};  // one fstat, not two lseeks: photo folders read a million small files
  if (::fstat(fd.get(), &st) != 0) throw_errno("stat", path);
  size = static_cast<std::uint64_t>(st.st_size);
  if (size > max_bytes) {
    throw DataError(fmt::format("{} is {} bytes, more than the limit of {} bytes", quote(path),
                                size, max_bytes));
  }
  return fd;
}

std::size_t read_up_to(const Fd& fd, std::uint8_t* dest, std::size_t size, const fs::path& path) {
  std::size_t done = 0;
  while (done < size) {
    ssize_t n = ::read(fd.get(), dest + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("read", path);
    if (n == 0) break;  // the file shrank under us
    done += static_cast<std::size_t>(n);
  }
  return done;
}

void write_file(const fs::path& path, const void* data, std::size_t size, bool durable) {
  Fd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644));
  if (fd.get() < 0) throw_errno("create", path);
  const auto* p = static_cast<const std::uint8_t*>(data);
  std::size_t done = 0;
  while (done < size) {
    ssize_t n = ::write(fd.get(), p + done, size - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) throw_errno("write", path);
    done += static_cast<std::size_t>(n);
  }
  if (durable && ::fsync(fd.get()) != 0) throw_errno("fsync", path);
  if (fd.close() != 0) throw_errno("close", path);
}

void fsync_path(const fs::path& path) {
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) throw_errno("open", path);
  if (::fsync(fd.get()) != 0 && errno != EINVAL) throw_errno("fsync", path);
}

struct BackgroundFlusher::State {
  int dir_fd;
  fs::path dir;
  std::uint64_t period;
  std::mutex mutex;
  std::condition_variable wake;
  std::uint64_t unflushed = 0;  // bytes noted since the last syncfs began
  bool stop = false;
  int error = 0;  // errno of the first failed syncfs
  std::thread thread;

  void run() {
    std::unique_lock<std::mutex> lock(mutex);
    for (;;) {
      wake.wait(lock, [&] { return stop || unflushed >= period; });
      // A period that filled up before finish() is still flushed: finish() means "no more".
      if (unflushed < period) return;
      unflushed = 0;
      lock.unlock();
      const int rc = ::syncfs(dir_fd);
      const int err = rc != 0 ? errno : 0;
      lock.lock();
      if (err != 0 && error == 0) error = err;
    }
  }

  // Tells the thread no more is coming and waits for it (a due flush still runs).
  void stop_and_join() {
    if (!thread.joinable()) return;
    {
      std::lock_guard<std::mutex> lock(mutex);
      stop = true;
    }
    wake.notify_one();
    thread.join();
  }
};

BackgroundFlusher::BackgroundFlusher(int dir_fd, fs::path dir_for_errors,
                                     std::uint64_t period_bytes)
    : state_(std::make_unique<State>()) {
  state_->dir_fd = dir_fd;
  state_->dir = std::move(dir_for_errors);
  state_->period = std::max<std::uint64_t>(period_bytes, 1);
  state_->thread = std::thread([s = state_.get()] { s->run(); });
}

BackgroundFlusher::~BackgroundFlusher() { state_->stop_and_join(); }

void BackgroundFlusher::note_written(std::uint64_t bytes) {
  bool due;
  {
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->unflushed += bytes;
    due = state_->unflushed >= state_->period;
  }
  if (due) state_->wake.notify_one();
}

void BackgroundFlusher::finish() {
  state_->stop_and_join();
  if (state_->error != 0) {
    throw IoError(fmt::format("cannot flush {}: {}", quote(state_->dir),
                              std::strerror(state_->error)));
  }
}

std::uint64_t bytes_on_disk(const fs::path& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return fs::file_size(path, ec);
  std::uint64_t total = 0;
  for (fs::recursive_directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    if (it->is_regular_file(ec)) total += it->file_size(ec);
  }
  return total;
}

namespace {

fs::path sibling_name(const fs::path& target, const char* tag) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  auto parent = target.parent_path();
  if (parent.empty()) parent = ".";
  return parent / fmt::format(".{}{}{}-{:08x}", target.filename().string(), tag,
                              static_cast<long>(::getpid()),
                              static_cast<std::uint32_t>(rng()));
}

// Makes a staged file or directory durable. A directory gets one syncfs(): it writes back
// every file and entry in it in a single journal commit, where fsyncing thousands of small
// files one by one costs a journal commit each (23 s against 3.5-5 s for 10,000 PNGs here).
void flush_staged(const fs::path& path) {
  if (fs::is_directory(path)) {
    Fd fd(::open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (fd.get() < 0) throw_errno("open", path);
    if (::syncfs(fd.get()) != 0) throw_errno("flush", path);
  }
  fsync_path(path);
}

// The writer's pid if `entry` is a staging sibling ".<name>.tmp-<pid>-<8 hex>" of `name`, else 0.
long staging_pid(const std::string& entry, const std::string& name) {
  const std::string prefix = "." + name + ".tmp-";
  if (entry.size() <= prefix.size() + 9 || entry.compare(0, prefix.size(), prefix) != 0) return 0;
  const std::string rest = entry.substr(prefix.size());
  const auto dash = rest.find('-');
  if (dash == 0 || dash > 10 || rest.size() != dash + 9) return 0;
  long pid = 0;
  for (std::size_t i = 0; i < dash; ++i) {
    if (rest[i] < '0' || rest[i] > '9') return 0;
    pid = pid * 10 + (rest[i] - '0');
  }
  for (std::size_t i = dash + 1; i < rest.size(); ++i) {
    const char c = rest[i];
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return 0;
  }
  return pid;
}

// A staging sibling is stale when its writer's process is gone here AND nobody holds the lock
// live writers keep on their staging data (StagedOutput's flock on a directory, libhdf5's on
// its file). The lock covers writers in other PID namespaces sharing the directory; the pid
// covers writers whose lock cannot be seen (a file between creation and H5Fcreate).
bool staging_is_stale(const fs::path& path, long pid) {
  if (pid <= 0 || pid == static_cast<long>(::getpid())) return false;
  if (::kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) return false;
  Fd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
  if (fd.get() < 0) return false;
  return ::flock(fd.get(), LOCK_EX | LOCK_NB) == 0;  // released when fd closes
}

}  // namespace

std::size_t remove_stale_staging(const fs::path& target) noexcept {
  std::size_t removed = 0;
  try {
    auto parent = target.parent_path();
    if (parent.empty()) parent = ".";
    const std::string name = target.filename().string();
    std::error_code ec;
    std::vector<fs::path> stale;
    for (fs::directory_iterator it(parent, ec), end; !ec && it != end; it.increment(ec)) {
      const long pid = staging_pid(it->path().filename().string(), name);
      if (pid > 0 && staging_is_stale(it->path(), pid)) stale.push_back(it->path());
    }
    for (const auto& p : stale) {
      std::error_code rm;
      if (fs::remove_all(p, rm) > 0 && !rm) ++removed;
    }
  } catch (...) {
    // Best effort: a leftover is harmless (hidden, never opened at the store path).
  }
  return removed;
}

StagedOutput::StagedOutput(fs::path target, Kind kind, bool overwrite)
    : target_(std::move(target)), kind_(kind), overwrite_(overwrite) {
  std::error_code ec;
  if (fs::exists(fs::symlink_status(target_, ec)) && !overwrite_) {
    throw IoError(fmt::format("{} already exists (pass --overwrite to replace it)",
                              quote(target_)));
  }
  // Runs killed mid-write (SIGKILL, power loss) could not remove their staging data; without
  // this, it would pile up beside the store forever.
  remove_stale_staging(target_);
  temp_ = sibling_name(target_, ".tmp-");
  if (kind_ == Kind::Directory) {
    if (::mkdir(temp_.c_str(), 0755) != 0) throw_errno("create a directory in", temp_.parent_path());
    // Held until commit or discard; where flock is unsupported, the pid alone marks us alive.
    lock_fd_ = ::open(temp_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (lock_fd_ >= 0 && ::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
      ::close(lock_fd_);
      lock_fd_ = -1;
    }
  } else {
    Fd fd(::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
    if (fd.get() < 0) throw_errno("create a file in", temp_.parent_path());
  }
}

StagedOutput::~StagedOutput() { discard(); }

void StagedOutput::discard() noexcept {
  if (done_) return;
  done_ = true;
  std::error_code ec;
  fs::remove_all(temp_, ec);
  if (lock_fd_ >= 0) ::close(lock_fd_);
  lock_fd_ = -1;
}

fs::path rename_into_place(const fs::path& from, const fs::path& to, bool overwrite) {
  std::error_code ec;
  fs::path old;
  if (fs::exists(fs::symlink_status(to, ec))) {
    if (!overwrite) {
      throw IoError(fmt::format("{} appeared while writing; not replacing it", quote(to)));
    }
    // Swap the new store in and the old one out in one step: the path always holds a complete
    // store, and if we die before removing the old one it is a stale staging sibling.
    if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_EXCHANGE) == 0) {
      old = from;
    } else if (errno != EINVAL && errno != ENOSYS) {
      throw_errno("rename into place", to);
    } else {
      // Not supported here: directories cannot be renamed over a non-empty directory, so move
      // the old one aside first (a moment with no store at the path, never a partial one).
      old = sibling_name(to, ".old-");
      if (::rename(to.c_str(), old.c_str()) != 0) throw_errno("move aside", to);
      if (::rename(from.c_str(), to.c_str()) != 0) {
        const int error = errno;
        ::rename(old.c_str(), to.c_str());  // the old store back, as if nothing happened
        errno = error;
        throw_errno("rename into place", to);
      }
    }
  } else if (::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), RENAME_NOREPLACE) != 0) {
    // RENAME_NOREPLACE: a store that appeared meanwhile is never clobbered without --overwrite.
    if (errno == EEXIST) {
      throw IoError(fmt::format("{} appeared while writing; not replacing it", quote(to)));
    }
    if (errno != EINVAL && errno != ENOSYS) throw_errno("rename into place", to);
    if (::rename(from.c_str(), to.c_str()) != 0) throw_errno("rename into place", to);
  }
  return old;
}

void StagedOutput::commit(bool durable) {
  if (done_) throw UsageError(fmt::format("{} was already committed or discarded", quote(target_)));
  if (durable) flush_staged(temp_);
  const fs::path old = rename_into_place(temp_, target_, overwrite_);
  done_ = true;
  if (lock_fd_ >= 0) ::close(lock_fd_);
  lock_fd_ = -1;
  std::error_code ec;
  if (!old.empty()) fs::remove_all(old, ec);
  if (durable) {
    auto parent = target_.parent_path();
    fsync_path(parent.empty() ? fs::path(".") : parent);
  }
}

}  // namespace imgstore::detail
