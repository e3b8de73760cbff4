// File-system helpers shared by the formats and sources: whole-file reads, fsync, and the
// staged (temporary name, then rename) output that makes every store write atomic.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <vector>

namespace imgstore::detail {

namespace fs = std::filesystem;

// Owns a POSIX file descriptor (-1: none). Move-only; closes on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& o) noexcept : fd_(o.fd_) { o.fd_ = -1; }
  Fd& operator=(Fd&& o) noexcept {
    if (this != &o) {
      reset();
      fd_ = o.fd_;
      o.fd_ = -1;
    }
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }
  // Closes now and returns close()'s result: it can report deferred write errors (ENOSPC).
  int close();

 private:
  void reset() noexcept;
  int fd_ = -1;
};

// 'path' in single quotes, for error messages.
std::string quote(const fs::path& path);

// Reads a whole file. Throws IoError naming it. Refuses files larger than max_bytes (DataError).
std::vector<std::uint8_t> read_file(const fs::path& path,
                                    std::uint64_t max_bytes = (std::uint64_t{1} << 32));
// read_file into `out`, reusing its capacity: a converter reading a million photos keeps one
// buffer per slot warm instead of allocating (and page-faulting) a fresh one per file.
void read_file_into(const fs::path& path, std::vector<std::uint8_t>& out,
                    std::uint64_t max_bytes = (std::uint64_t{1} << 32));
// read_file_into in two steps, for a caller that places files before reading them: opens
// `path` and sets `size` from one fstat (refusing more than max_bytes), then reads up to
// `size` bytes into `dest` and returns how many it got (fewer if the file shrank meanwhile).
Fd open_sized(const fs::path& path, std::uint64_t& size,
              std::uint64_t max_bytes = (std::uint64_t{1} << 32));
std::size_t read_up_to(const Fd& fd, std::uint8_t* dest, std::size_t size, const fs::path& path);

// Writes bytes to a new file (truncating), optionally fsyncing it. Throws IoError.
void write_file(const fs::path& path, const void* data, std::size_t size, bool durable);
inline void write_file(const fs::path& path, const std::string& text, bool durable) {
  write_file(path, text.data(), text.size(), durable);
}

// fsync a file or directory (directories make renames and new entries durable).
void fsync_path(const fs::path& path);

// Writes back a file system's dirty data from a thread of its own while a writer is still
// creating files, so the durable commit's final syncfs() finds little left to do: the disk
// works while the writer encodes instead of after it. Each note_written() adds bytes; every
// `period_bytes` the thread runs one syncfs() on `dir`'s file system. Errors are kept and
// thrown by finish(), which also waits for the thread. The destructor stops without throwing.
class BackgroundFlusher {
 public:
  BackgroundFlusher(int dir_fd, fs::path dir_for_errors, std::uint64_t period_bytes);
  ~BackgroundFlusher();
  BackgroundFlusher(const BackgroundFlusher&) = delete;
  BackgroundFlusher& operator=(const BackgroundFlusher&) = delete;

  void note_written(std::uint64_t bytes);
  // Stops the thread; throws IoError if a syncfs() failed.
  void finish();

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// The most a store writer hands the kernel in one write call. A write() of 2 MiB or more into a
// new file lets the kernel (ext4 with large folios, Linux 6.18) fill the page cache with 2 MiB
// folios; in a VM that hands free 2 MiB blocks back to its host, as ours does, those cost up to
// 15x more per byte: 450 MB written by dd took 1.1 s in pieces of 4 MiB, 0.07 s in pieces of
// 1 MiB or 256 KiB.
constexpr std::uint64_t kMaxWriteCall = std::uint64_t{1} << 20;

// The period one-file-per-record writers use: a syncfs() every 16 MiB.
constexpr std::uint64_t kBackgroundFlushBytes = std::uint64_t{16} << 20;

// Sum of the sizes of all regular files under `path` (or of `path` itself).
std::uint64_t bytes_on_disk(const fs::path& path);

// A temporary sibling of `target` that becomes `target` on commit() and is removed otherwise.
// Its name is ".<target name>.tmp-<pid>-<8 hex digits>", so an interrupted run never leaves
// anything that looks like a store. A staged directory is flock()ed while its writer lives.
class StagedOutput {
 public:
  enum class Kind { File, Directory };
  // Throws IoError if the parent directory is not writable, or if `target` exists and
  // overwrite is false. First removes stale staging siblings of `target` left by writers that
  // died (SIGKILL, power loss): their process is gone and nobody holds their lock.
  StagedOutput(fs::path target, Kind kind, bool overwrite);
  ~StagedOutput();
  StagedOutput(const StagedOutput&) = delete;
  StagedOutput& operator=(const StagedOutput&) = delete;

  const fs::path& temp() const { return temp_; }
  const fs::path& target() const { return target_; }
  // Flushes (when durable) everything staged, renames it onto target, fsyncs the parent.
  // An existing target (overwrite) is swapped out atomically where the file system supports
  // renameat2(RENAME_EXCHANGE), so the path never lacks a complete store.
  void commit(bool durable);
  // Removes the temporary now (the destructor does the same).
  void discard() noexcept;

 private:
  fs::path target_;
  fs::path temp_;
  Kind kind_;
  bool overwrite_;
  bool done_ = false;
  int lock_fd_ = -1;  // flock()ed staging directory: tells other runs this writer is alive
};

// Renames `from` onto `to` (same file system). If `to` exists and overwrite is true, the two
// are swapped atomically where renameat2(RENAME_EXCHANGE) works (else the old one is moved
// aside to a hidden sibling first) and the returned path holds the old entry, for the caller
// to remove or to swap back. Returns an empty path if `to` did not exist. Throws IoError if
// `to` exists and overwrite is false, or if a rename fails.
fs::path rename_into_place(const fs::path& from, const fs::path& to, bool overwrite);

// Removes the staging siblings of `target` whose writer is gone (see StagedOutput). Returns how
// many it removed. Best effort: never throws.
std::size_t remove_stale_staging(const fs::path& target) noexcept;

}  // namespace imgstore::detail
