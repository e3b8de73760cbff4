// CIFAR-10 / CIFAR-100 binary folders (cifar-10-batches-bin/, cifar-100-binary/). Counts come
// from file sizes; records are streamed one chunk at a time, labels checked as they go.
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "imgstore/error.hpp"
#include "ingest/cifar_common.hpp"
#include "ingest/sources.hpp"

namespace imgstore::detail {

namespace {

using namespace cifar;

// Owns a read-only file descriptor.
class ReadFd {
 public:
  ReadFd() = default;
  ~ReadFd() { reset(); }
  ReadFd(const ReadFd&) = delete;
  ReadFd& operator=(const ReadFd&) = delete;
  void open(const fs::path& path) {
    reset();
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) {
      throw IoError(fmt::format("cannot open {}: {}", quote(path), std::strerror(errno)));
    }
  }
  void reset() noexcept {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
  }
  int get() const { return fd_; }

 private:
  int fd_ = -1;
};

class FileReader : public PartReader {
 public:
  explicit FileReader(std::vector<fs::path> files) : files_(std::move(files)) {}
  void open(std::size_t part) override {
    path_ = files_.at(part);
    fd_.open(path_);
    offset_ = 0;
  }
  void read_exact(std::uint8_t* dst, std::size_t n) override {
    std::size_t done = 0;
    while (done < n) {
      ssize_t got = ::read(fd_.get(), dst + done, n - done);
      if (got < 0) {
        if (errno == EINTR) continue;
        throw IoError(fmt::format("cannot read {}: {}", quote(path_), std::strerror(errno)));
      }
      if (got == 0) {
        // The file shrank after it was measured.
        throw DataError(fmt::format("{} ended after {} bytes, expected at least {}",
                                    quote(path_), offset_ + done, offset_ + n));
      }
      done += static_cast<std::size_t>(got);
    }
    offset_ += n;
  }

 private:
  std::vector<fs::path> files_;
  fs::path path_;
  ReadFd fd_;
  std::uint64_t offset_ = 0;
};

std::uint64_t file_size_of(const fs::path& path) {
  std::error_code ec;
  auto size = fs::file_size(path, ec);
  if (ec) throw IoError(fmt::format("cannot stat {}: {}", quote(path), ec.message()));
  return size;
}

}  // namespace

std::unique_ptr<Source> open_cifar_binary_dir(const fs::path& dir, const SourceOptions& options) {
  std::error_code ec;
  const bool is100 = fs::exists(dir / "train.bin", ec) || fs::exists(dir / "test.bin", ec);
  const Dataset dataset = is100 ? Dataset::Cifar100 : Dataset::Cifar10;
  const LabelChoice labels = label_choice(dataset, options);
  const Layout layout = binary_layout(dataset, labels);
  const RecordFormat format = record_format(dataset, labels);
  const std::string kind = is100 ? "CIFAR-100 binary" : "CIFAR-10 binary";

  auto require = [&](const std::string& name) {
    fs::path p = dir / name;
    if (!fs::is_regular_file(p, ec)) {
      throw DataError(fmt::format("{} folder {} lacks the file '{}'", kind, quote(dir), name));
    }
    return p;
  };

  // Class names.
  const fs::path names_path = require(layout.names_file);
  const auto names_bytes = read_file(names_path, kMaxNamesBytes);
  auto class_names = parse_names_text(names_bytes.data(), names_bytes.size(),
                                      static_cast<std::size_t>(labels.classes), quote(names_path));

  // Sizes and counts of every batch file, checked before any record is read.
  std::vector<std::vector<fs::path>> files(2);
  const auto parts = layout_parts(layout, [&](std::size_t split, const std::string& name) {
    fs::path p = require(name);
    files[split].push_back(p);
    return Part{quote(p), records_in(file_size_of(p), format, quote(p))};
  });

  return std::make_unique<CifarSource>(
      describe(fmt::format("{} {}", kind, quote(dir)), dataset, labels),
      split_infos(parts, class_names), [parts, files, format](std::size_t i) {
        return make_binary_stream(parts[i], format, std::make_unique<FileReader>(files[i]));
      });
}

}  // namespace imgstore::detail
