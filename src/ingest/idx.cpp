// MNIST / Fashion-MNIST IDX files, plain or gzipped, streamed without loading them whole.
//   images: magic 0x00000803, N, rows, cols (big-endian uint32), then N*rows*cols bytes
//           (or 0x00000804 with a fourth dimension, channels 1..4, pixels HWC)
//   labels: magic 0x00000801, N, then N bytes
#include <algorithm>
#include <cctype>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "detail/gzip_reader.hpp"
#include "imgstore/error.hpp"
#include "ingest/sources.hpp"

namespace imgstore::detail {

namespace {

constexpr std::uint32_t kImagesMagic3 = 0x00000803;
constexpr std::uint32_t kImagesMagic4 = 0x00000804;
constexpr std::uint32_t kLabelsMagic = 0x00000801;
constexpr std::uint32_t kMaxSide = 65536;
constexpr std::uint64_t kMaxImageBytes = std::uint64_t{64} << 20;
constexpr std::uint64_t kMaxRecords = std::uint64_t{1} << 31;
constexpr int kClasses = 10;
// Buffers grow at most this far ahead of the bytes actually read, so a gzip file that lies
// about its record count cannot make us allocate for records that are not there.
constexpr std::size_t kReadStep = std::size_t{4} << 20;

const std::vector<std::string> kFashionClasses = {"T-shirt/top", "Trouser", "Pullover", "Dress",
                                                  "Coat",        "Sandal",  "Shirt",    "Sneaker",
                                                  "Bag",         "Ankle boot"};

std::uint32_t be32(const std::uint8_t* p) {
  return (std::uint32_t{p[0]} << 24) | (std::uint32_t{p[1]} << 16) | (std::uint32_t{p[2]} << 8) |
         std::uint32_t{p[3]};
}

std::string lower(std::string s) {
  for (auto& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The files of one split.
struct IdxSplit {
  std::string name;
  fs::path images;
  fs::path labels;
  std::uint64_t count = 0;
  Shape shape;
};

struct ImagesHeader {
  std::uint64_t count = 0;
  Shape shape;
  std::uint32_t header_bytes = 0;
};

// Reads exactly n header bytes or throws DataError naming the file.
void read_header_bytes(GzipReader& r, std::uint8_t* dst, std::size_t n, const char* what) {
  std::size_t got = r.read(dst, n);
  if (got < n) {
    throw DataError(fmt::format("{} is truncated: its IDX {} header needs {} bytes, the data holds {}",
                                quote(r.path()), what, n, got));
  }
}

ImagesHeader read_images_header(GzipReader& r) {
  std::uint8_t h[20];
  read_header_bytes(r, h, 4, "images");
  const std::uint32_t magic = be32(h);
  if (magic != kImagesMagic3 && magic != kImagesMagic4) {
    throw DataError(fmt::format(
        "{} is not an IDX images file: magic 0x{:08x}, expected 0x{:08x} (or 0x{:08x})",
        quote(r.path()), magic, kImagesMagic3, kImagesMagic4));
  }
  const std::size_t dims = magic == kImagesMagic3 ? 3 : 4;
  read_header_bytes(r, h + 4, 4 * dims, "images");
  ImagesHeader out;
  out.header_bytes = static_cast<std::uint32_t>(4 + 4 * dims);
  out.count = be32(h + 4);
  const std::uint32_t rows = be32(h + 8), cols = be32(h + 12);
  const std::uint32_t channels = dims == 4 ? be32(h + 16) : 1;
  // Refuse absurd sizes before anything is allocated from them.
  if (rows == 0 || cols == 0 || rows > kMaxSide || cols > kMaxSide || channels == 0 ||
      channels > 4 || std::uint64_t{rows} * cols * channels > kMaxImageBytes) {
    throw DataError(fmt::format(
        "{} declares image dimensions {}x{}x{}: refused (each side 1..{}, channels 1..4, at most "
        "{} bytes per image)",
        quote(r.path()), rows, cols, channels, kMaxSide, kMaxImageBytes));
  }
  if (out.count > kMaxRecords) {
    throw DataError(fmt::format("{} declares {} records: refused (limit {})", quote(r.path()),
                                out.count, kMaxRecords));
  }
  out.shape = Shape{rows, cols, channels};
  return out;
}

std::uint64_t read_labels_header(GzipReader& r) {
  std::uint8_t h[8];
  read_header_bytes(r, h, 4, "labels");
  const std::uint32_t magic = be32(h);
  if (magic != kLabelsMagic) {
    throw DataError(fmt::format("{} is not an IDX labels file: magic 0x{:08x}, expected 0x{:08x}",
                                quote(r.path()), magic, kLabelsMagic));
  }
  read_header_bytes(r, h + 4, 4, "labels");
  const std::uint64_t count = be32(h + 4);
  if (count > kMaxRecords) {
    throw DataError(fmt::format("{} declares {} records: refused (limit {})", quote(r.path()),
                                count, kMaxRecords));
  }
  return count;
}

// A plain file's length is known up front: check it against the header at once.
void check_plain_size(const GzipReader& r, std::uint64_t header_bytes, std::uint64_t count,
                      std::uint64_t record_bytes) {
  if (r.gzip()) return;
  const std::uint64_t expected = header_bytes + count * record_bytes;
  const std::uint64_t size = r.file_size();
  if (size < expected) {
    throw DataError(fmt::format(
        "{} is truncated: it is {} bytes but its header declares {} records of {} bytes ({} "
        "bytes); data runs out at record {}",
        quote(r.path()), size, count, record_bytes, expected,
        (size - header_bytes) / record_bytes));
  }
  if (size > expected) {
    throw DataError(fmt::format(
        "{} has {} trailing bytes: it is {} bytes but its header declares {} records of {} bytes "
        "({} bytes)",
        quote(r.path()), size - expected, size, count, record_bytes, expected));
  }
}

struct OpenedSplit {
  GzipReader images;
  GzipReader labels;
  ImagesHeader header;
};

// Opens both files of a split, validates headers, counts and (plain files) lengths.
OpenedSplit open_split_files(const fs::path& images_path, const fs::path& labels_path) {
  GzipReader images(images_path);
  GzipReader labels(labels_path);
  ImagesHeader header = read_images_header(images);
  const std::uint64_t label_count = read_labels_header(labels);
  if (label_count != header.count) {
    throw DataError(fmt::format("IDX files disagree: {} holds {} images but {} holds {} labels",
                                quote(images_path), header.count, quote(labels_path),
                                label_count));
  }
  check_plain_size(images, header.header_bytes, header.count, header.shape.bytes());
  check_plain_size(labels, 8, label_count, 1);
  return OpenedSplit{std::move(images), std::move(labels), header};
}

class IdxStream : public BatchStream {
 public:
  explicit IdxStream(const IdxSplit& split)
      : opened_(open_split_files(split.images, split.labels)) {
    if (opened_.header.count != split.count || opened_.header.shape != split.shape) {
      throw DataError(fmt::format("{} changed since it was opened: it now declares {} records of {}",
                                  quote(split.images), opened_.header.count,
                                  to_string(opened_.header.shape)));
    }
  }

  bool next(ImageBatch& out, std::size_t max_records) override {
    const std::uint64_t count = opened_.header.count;
    if (next_ >= count) {
      finish();  // an empty split still has to end where its header says
      out.resize(opened_.header.shape, 0);
      return false;
    }
    const std::size_t n =
        static_cast<std::size_t>(std::min<std::uint64_t>(std::max<std::size_t>(max_records, 1),
                                                         count - next_));
    const Shape shape = opened_.header.shape;
    const std::size_t rec = shape.bytes();
    out.shape = shape;
    // Grow in steps of whole records, never far beyond the bytes read so far.
    const std::size_t step = std::max<std::size_t>(1, kReadStep / rec);
    if (out.pixels.size() > n * rec) out.pixels.resize(n * rec);
    if (out.labels.size() > n) out.labels.resize(n);
    std::size_t done = 0;
    while (done < n) {
      const std::size_t k = std::min(step, n - done);
      label_bytes_.resize(k);
      read_records(opened_.labels, label_bytes_.data(), k, 1, next_ + done);
      if (out.labels.size() < done + k) out.labels.resize(done + k);
      for (std::size_t i = 0; i < k; ++i) {
        if (label_bytes_[i] >= kClasses) {
          throw DataError(fmt::format("bad label in {} record {}: {}, expected 0..{}",
                                      quote(opened_.labels.path()), next_ + done + i,
                                      label_bytes_[i], kClasses - 1));
        }
        out.labels[done + i] = label_bytes_[i];
      }
      if (out.pixels.size() < (done + k) * rec) out.pixels.resize((done + k) * rec);
      read_records(opened_.images, out.pixels.data() + done * rec, k, rec, next_ + done);
      done += k;
    }
    next_ += n;
    if (next_ == count) finish();
    return true;
  }

 private:
  // Reads k records of rec bytes, the first being record `first`; names the record where the
  // data runs out.
  static void read_records(GzipReader& r, std::uint8_t* dst, std::size_t k, std::size_t rec,
                           std::uint64_t first) {
    const std::size_t want = k * rec;
    const std::size_t got = r.read(dst, want);
    if (got < want) {
      throw DataError(fmt::format("{} ends early{}: data runs out at record {} ({} of its {} bytes "
                                  "present)",
                                  quote(r.path()),
                                  r.truncated() ? " (gzip stream truncated)" : "",
                                  first + got / rec, got % rec, rec));
    }
  }

  void finish() {
    if (finished_) return;
    finished_ = true;
    check_end(opened_.images);
    check_end(opened_.labels);
  }

  // After the last record the data must end; reading on also makes zlib verify the CRC.
  void check_end(GzipReader& r) {
    std::uint8_t extra[256];
    std::size_t got = r.read(extra, sizeof extra);
    if (r.truncated()) {
      throw DataError(fmt::format(
          "{} is truncated: the gzip stream stops after the last record {} without its trailer",
          quote(r.path()), static_cast<std::int64_t>(opened_.header.count) - 1));
    }
    if (got > 0) {
      std::uint64_t total = got;
      while ((got = r.read(extra, sizeof extra)) > 0) total += got;
      throw DataError(fmt::format(
          "{} has {} trailing bytes after the last record {} declared by its header",
          quote(r.path()), total, static_cast<std::int64_t>(opened_.header.count) - 1));
    }
  }

  OpenedSplit opened_;
  std::uint64_t next_ = 0;
  bool finished_ = false;
  std::vector<std::uint8_t> label_bytes_;
};

class IdxSource : public Source {
 public:
  IdxSource(fs::path path, std::vector<IdxSplit> splits, bool fashion)
      : path_(std::move(path)), splits_(std::move(splits)), fashion_(fashion) {}

  std::string description() const override {
    return fmt::format("{} IDX {}", fashion_ ? "Fashion-MNIST" : "MNIST", quote(path_));
  }

  std::vector<SplitInfo> splits() const override {
    std::vector<SplitInfo> out;
    for (const auto& s : splits_) out.push_back(SplitInfo{s.name, s.count, s.shape, class_names()});
    return out;
  }

  std::unique_ptr<BatchStream> open(const std::string& split) const override {
    for (const auto& s : splits_) {
      if (s.name == split) return std::make_unique<IdxStream>(s);
    }
    std::string names;
    for (const auto& s : splits_) names += (names.empty() ? "" : ", ") + s.name;
    throw UsageError(fmt::format("{} has no split '{}' (it has: {})", description(), split, names));
  }

 private:
  std::vector<std::string> class_names() const {
    if (fashion_) return kFashionClasses;
    std::vector<std::string> digits;
    for (int i = 0; i < kClasses; ++i) digits.push_back(std::to_string(i));
    return digits;
  }

  fs::path path_;
  std::vector<IdxSplit> splits_;
  bool fashion_;
};

// "<prefix>-images-idx3-ubyte[.gz]" -> prefix; nullopt for other names.
std::optional<std::string> images_prefix(const std::string& name) {
  std::string stem = name;
  if (ends_with(stem, ".gz")) stem.resize(stem.size() - 3);
  for (const char* tail : {"-images-idx3-ubyte", "-images-idx4-ubyte"}) {
    const std::string t(tail);
    if (ends_with(stem, t) && stem.size() > t.size()) return stem.substr(0, stem.size() - t.size());
  }
  return std::nullopt;
}

// "train" and "t10k" are MNIST's names; prefixed variants (EMNIST's "emnist-digits-train") too.
std::string split_name(const std::string& prefix) {
  if (prefix == "train" || ends_with(prefix, "-train")) return "train";
  if (prefix == "t10k" || prefix == "test" || ends_with(prefix, "-t10k") ||
      ends_with(prefix, "-test")) {
    return "test";
  }
  return prefix;
}

IdxSplit describe_split(const fs::path& images) {
  const std::string name = images.filename().string();
  const std::string prefix = *images_prefix(name);
  const fs::path dir = images.parent_path();
  const std::string labels_name = prefix + "-labels-idx1-ubyte";
  // Prefer the labels file compressed the same way as the images.
  const bool gz = ends_with(name, ".gz");
  fs::path labels;
  std::error_code ec;
  for (const std::string& candidate :
       {gz ? labels_name + ".gz" : labels_name, gz ? labels_name : labels_name + ".gz"}) {
    if (fs::is_regular_file(dir / candidate, ec)) {
      labels = dir / candidate;
      break;
    }
  }
  if (labels.empty()) {
    throw DataError(fmt::format("IDX images file {} has no labels file beside it: expected {}",
                                quote(images), quote(dir / (labels_name + "[.gz]"))));
  }
  IdxSplit split;
  split.name = split_name(prefix);
  split.images = images;
  split.labels = labels;
  // Validate now, so a bad file fails at open rather than mid-conversion.
  OpenedSplit opened = open_split_files(images, labels);
  split.count = opened.header.count;
  split.shape = opened.header.shape;
  return split;
}

}  // namespace

std::unique_ptr<Source> open_idx(const std::filesystem::path& path) {
  std::error_code ec;
  auto status = fs::status(path, ec);
  if (!fs::exists(status)) throw IoError(fmt::format("IDX source {} does not exist", quote(path)));

  std::vector<fs::path> images_files;
  if (fs::is_directory(status)) {
    // One images file per prefix; the uncompressed one wins when both are present.
    std::map<std::string, fs::path> by_prefix;
    for (fs::directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
      const std::string name = it->path().filename().string();
      auto prefix = images_prefix(name);
      if (!prefix) continue;
      auto found = by_prefix.find(*prefix);
      if (found == by_prefix.end() || ends_with(found->second.filename().string(), ".gz")) {
        by_prefix[*prefix] = it->path();
      }
    }
    if (ec) throw IoError(fmt::format("cannot list {}: {}", quote(path), ec.message()));
    for (auto& [prefix, file] : by_prefix) images_files.push_back(file);
    if (images_files.empty()) {
      throw DataError(fmt::format(
          "{} holds no IDX images file (expected train-images-idx3-ubyte[.gz] or "
          "t10k-images-idx3-ubyte[.gz])",
          quote(path)));
    }
  } else {
    if (!images_prefix(path.filename().string())) {
      throw DataError(fmt::format(
          "{} is not named like an IDX images file (<prefix>-images-idx3-ubyte[.gz])", quote(path)));
    }
    images_files.push_back(path);
  }

  std::vector<IdxSplit> splits;
  for (const auto& file : images_files) {
    IdxSplit split = describe_split(file);
    for (const auto& other : splits) {
      if (other.name == split.name) {
        throw DataError(fmt::format("IDX files {} and {} both provide split '{}'",
                                    quote(other.images), quote(split.images), split.name));
      }
    }
    splits.push_back(std::move(split));
  }
  // train first, then test, then any others by name.
  auto rank = [](const IdxSplit& s) { return s.name == "train" ? 0 : s.name == "test" ? 1 : 2; };
  std::stable_sort(splits.begin(), splits.end(), [&](const IdxSplit& a, const IdxSplit& b) {
    return rank(a) != rank(b) ? rank(a) < rank(b) : a.name < b.name;
  });

  const bool fashion = lower(fs::absolute(path, ec).string()).find("fashion") != std::string::npos ||
                       lower(path.string()).find("fashion") != std::string::npos;
  return std::make_unique<IdxSource>(path, std::move(splits), fashion);
}

}  // namespace imgstore::detail
