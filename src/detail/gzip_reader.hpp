// Streaming reader for a file that may be gzip-compressed (detected by its 1f 8b magic, not its
// name). Decompresses through a fixed-size window, so a file of any size costs constant memory.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

namespace imgstore::detail {

class GzipReader {
 public:
  // What may follow the last gzip member: an IDX file must end there, while a .tar.gz may carry
  // padding after it, which gzip(1) ignores too.
  enum class Trailing { Reject, Ignore };

  // Opens `path` and sniffs its first bytes. Throws IoError if it cannot be opened or read.
  explicit GzipReader(const std::filesystem::path& path, Trailing trailing = Trailing::Reject);
  ~GzipReader();
  GzipReader(GzipReader&& other) noexcept;
  GzipReader& operator=(GzipReader&& other) noexcept;
  GzipReader(const GzipReader&) = delete;
  GzipReader& operator=(const GzipReader&) = delete;

  const std::filesystem::path& path() const { return path_; }
  bool gzip() const { return gzip_; }
  // Size of the file on disk (compressed size for gzip).
  std::uint64_t file_size() const { return file_size_; }
  // Uncompressed bytes delivered so far.
  std::uint64_t position() const { return position_; }

  // Reads up to n uncompressed bytes; returns fewer only at the end of the data. Throws
  // DataError naming the file on a corrupt gzip stream (zlib's message included, e.g. a CRC
  // error) or, with Trailing::Reject, on non-gzip bytes after the last gzip member; IoError if
  // read() fails.
  std::size_t read(void* dst, std::size_t n);
  // True once read() has returned short because the compressed stream stopped mid-member
  // (the file is truncated), as opposed to a complete stream that simply ended.
  bool truncated() const { return truncated_; }

 private:
  struct Inflater;  // z_stream lives in the .cpp, so zlib.h stays out of this header

  std::size_t read_raw(void* dst, std::size_t n);  // from the fd, EINTR-safe
  bool refill();                                   // more compressed input; false at EOF
  void close() noexcept;

  std::filesystem::path path_;
  int fd_ = -1;
  bool gzip_ = false;
  Trailing trailing_ = Trailing::Reject;
  bool eof_ = false;  // the data stream is over
  bool truncated_ = false;
  std::uint64_t file_size_ = 0;
  std::uint64_t position_ = 0;
  std::vector<std::uint8_t> in_;  // compressed input window (or sniffed plain bytes)
  std::size_t in_pos_ = 0;        // plain files: sniffed bytes not yet delivered
  std::size_t in_len_ = 0;
  std::unique_ptr<Inflater> inflater_;
};

}  // namespace imgstore::detail
