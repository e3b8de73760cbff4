#include "detail/gzip_reader.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <new>
#include <utility>

#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "imgstore/error.hpp"

namespace imgstore::detail {

namespace {

constexpr std::size_t kInputWindow = std::size_t{1} << 16;

[[noreturn]] void throw_errno(const char* action, const fs::path& path) {
  throw IoError(fmt::format("cannot {} {}: {}", action, quote(path), std::strerror(errno)));
}

}  // namespace

// Heap-allocated because zlib's internal state points back at the z_stream: it must not move.
struct GzipReader::Inflater {
  z_stream strm{};
  bool live = false;
  ~Inflater() {
    if (live) inflateEnd(&strm);
  }
};

GzipReader::GzipReader(const fs::path& path, Trailing trailing)
    : path_(path), trailing_(trailing) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) throw_errno("open", path);
  try {
    struct stat st {};
    if (::fstat(fd_, &st) != 0) throw_errno("stat", path);
    if (S_ISDIR(st.st_mode)) throw IoError(fmt::format("cannot read {}: it is a directory", quote(path)));
    file_size_ = static_cast<std::uint64_t>(st.st_size);
    in_.resize(kInputWindow);
    // Sniff the magic; for plain files these bytes are simply delivered first.
    in_len_ = read_raw(in_.data(), 2);
    gzip_ = in_len_ == 2 && in_[0] == 0x1f && in_[1] == 0x8b;
    if (gzip_) {
      inflater_ = std::make_unique<Inflater>();
      // 16 + MAX_WBITS: gzip wrapper only, so the trailer CRC-32 and length are checked.
      int rc = inflateInit2(&inflater_->strm, 16 + MAX_WBITS);
      if (rc == Z_MEM_ERROR) throw std::bad_alloc();
      if (rc != Z_OK) throw DataError(fmt::format("cannot start inflating {}: zlib error {}", quote(path), rc));
      inflater_->live = true;
      inflater_->strm.next_in = in_.data();
      inflater_->strm.avail_in = static_cast<uInt>(in_len_);
    }
  } catch (...) {
    close();
    throw;
  }
}

GzipReader::~GzipReader() { close(); }

GzipReader::GzipReader(GzipReader&& o) noexcept
    : path_(std::move(o.path_)),
      fd_(std::exchange(o.fd_, -1)),
      gzip_(o.gzip_),
      trailing_(o.trailing_),
      eof_(o.eof_),
      truncated_(o.truncated_),
      file_size_(o.file_size_),
      position_(o.position_),
      in_(std::move(o.in_)),
      in_pos_(o.in_pos_),
      in_len_(o.in_len_),
      inflater_(std::move(o.inflater_)) {}

GzipReader& GzipReader::operator=(GzipReader&& o) noexcept {
  if (this != &o) {
    close();
    path_ = std::move(o.path_);
    fd_ = std::exchange(o.fd_, -1);
    gzip_ = o.gzip_;
    trailing_ = o.trailing_;
    eof_ = o.eof_;
    truncated_ = o.truncated_;
    file_size_ = o.file_size_;
    position_ = o.position_;
    in_ = std::move(o.in_);
    in_pos_ = o.in_pos_;
    in_len_ = o.in_len_;
    inflater_ = std::move(o.inflater_);
  }
  return *this;
}

void GzipReader::close() noexcept {
  inflater_.reset();
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
}

std::size_t GzipReader::read_raw(void* dst, std::size_t n) {
  auto* p = static_cast<std::uint8_t*>(dst);
  std::size_t done = 0;
  while (done < n) {
    ssize_t got = ::read(fd_, p + done, n - done);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) throw_errno("read", path_);
    if (got == 0) break;
    done += static_cast<std::size_t>(got);
  }
  return done;
}

bool GzipReader::refill() {
  in_len_ = read_raw(in_.data(), in_.size());
  inflater_->strm.next_in = in_.data();
  inflater_->strm.avail_in = static_cast<uInt>(in_len_);
  return in_len_ > 0;
}

std::size_t GzipReader::read(void* dst, std::size_t n) {
  auto* out = static_cast<std::uint8_t*>(dst);
  if (eof_ || n == 0) return 0;
  if (!gzip_) {
    std::size_t done = 0;
    if (in_pos_ < in_len_) {  // the sniffed bytes
      done = std::min(n, in_len_ - in_pos_);
      std::memcpy(out, in_.data() + in_pos_, done);
      in_pos_ += done;
    }
    if (done < n) done += read_raw(out + done, n - done);
    if (done < n) eof_ = true;
    position_ += done;
    return done;
  }

  z_stream& s = inflater_->strm;
  std::size_t done = 0;
  while (done < n) {
    if (s.avail_in == 0 && !refill()) {
      // Input is exhausted before the member's trailer: the file was cut short.
      truncated_ = true;
      eof_ = true;
      break;
    }
    // avail_out is a uInt: feed large requests in slices.
    const std::size_t slice = std::min<std::size_t>(n - done, 1u << 30);
    s.next_out = out + done;
    s.avail_out = static_cast<uInt>(slice);
    int rc = inflate(&s, Z_NO_FLUSH);
    done += slice - s.avail_out;
    if (rc == Z_STREAM_END) {
      // Another member may follow (concatenated gzip); anything else after it is garbage.
      if (s.avail_in == 0 && !refill()) {
        eof_ = true;
        break;
      }
      if (trailing_ == Trailing::Ignore &&
          !(s.avail_in >= 2 && s.next_in[0] == 0x1f && s.next_in[1] == 0x8b)) {
        eof_ = true;
        break;
      }
      if (s.next_in[0] != 0x1f || (s.avail_in >= 2 && s.next_in[1] != 0x8b)) {
        throw DataError(fmt::format(
            "corrupt gzip file {}: non-gzip bytes follow the compressed stream at offset {}",
            quote(path_),
            static_cast<std::int64_t>(::lseek(fd_, 0, SEEK_CUR)) - static_cast<std::int64_t>(s.avail_in)));
      }
      if (inflateReset(&s) != Z_OK) {
        throw DataError(fmt::format("corrupt gzip file {}: cannot restart inflate", quote(path_)));
      }
      continue;
    }
    if (rc == Z_BUF_ERROR) continue;  // needs more input; the loop refills
    if (rc == Z_MEM_ERROR) throw std::bad_alloc();
    if (rc != Z_OK) {
      throw DataError(fmt::format("corrupt gzip stream in {} after {} uncompressed bytes: {}",
                                  quote(path_), position_ + done,
                                  s.msg ? s.msg : "zlib error " + std::to_string(rc)));
    }
  }
  position_ += done;
  return done;
}

}  // namespace imgstore::detail
