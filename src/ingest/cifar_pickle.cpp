// CIFAR-10/100 python batches (cifar-10-batches-py/, cifar-100-python/), read with the safe
// pickle reader. Batch files are memory-mapped: parsing only touches the labels and file
// names, and the pixels are converted CHW -> HWC straight from the mapping into the caller's
// batch, so a split streams with about one file's worth of page cache and no copy of it.
#include "ingest/cifar_pickle.hpp"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "imgstore/error.hpp"
#include "ingest/cifar_common.hpp"
#include "ingest/pickle.hpp"
#include "ingest/sources.hpp"

namespace imgstore::detail {

namespace {

using namespace cifar;

// The real batches are 30 MB (CIFAR-10) and 155 MB (CIFAR-100 train).
constexpr std::uint64_t kMaxPickleBytes = std::uint64_t{1} << 32;

int classes_for(const std::string& label_key) {
  if (label_key == "labels") return 10;
  if (label_key == "fine_labels") return 100;
  if (label_key == "coarse_labels") return 20;
  throw UsageError(fmt::format("unknown CIFAR label key '{}': expected 'labels', 'fine_labels' "
                               "or 'coarse_labels'", label_key));
}

const pickle::Value& root_dict(const pickle::Document& doc, const char* kind) {
  const auto& root = doc.root();
  if (root.kind != pickle::Kind::Dict) {
    throw DataError(fmt::format("bad CIFAR {} in {}: the pickle holds a {}, expected a dict", kind,
                                doc.what(), pickle::kind_name(root.kind)));
  }
  return root;
}

const pickle::Value& require_key(const pickle::Document& doc, const pickle::Value& dict,
                                  const std::string& key, const char* kind) {
  const auto* v = pickle::dict_find(dict, key);
  if (v == nullptr) {
    throw DataError(fmt::format("bad CIFAR {} in {}: no key '{}'", kind, doc.what(), key));
  }
  return *v;
}

// One batch checked in full, its pixels still CHW in the input.
struct BatchView {
  pickle::ByteMatrix data;
  std::vector<std::int64_t> labels;
};

BatchView view_batch(const pickle::Document& doc, const std::string& label_key) {
  const int classes = classes_for(label_key);
  const auto& root = root_dict(doc, "batch");
  BatchView view;
  view.data = pickle::as_uint8_matrix(require_key(doc, root, "data", "batch"), doc.what(), "data");
  if (view.data.cols != kImageBytes) {
    throw DataError(fmt::format("bad CIFAR batch in {} key 'data': array is {}x{}, expected "
                                "N x {} (32x32x3 planes)",
                                doc.what(), view.data.rows, view.data.cols, kImageBytes));
  }
  const auto& labels = require_key(doc, root, label_key, "batch");
  if (labels.kind != pickle::Kind::List && labels.kind != pickle::Kind::Tuple) {
    throw DataError(fmt::format("bad CIFAR batch in {} key '{}': a {}, expected a list of ints",
                                doc.what(), label_key, pickle::kind_name(labels.kind)));
  }
  if (labels.items.size() != view.data.rows) {
    throw DataError(fmt::format("bad CIFAR batch in {} key '{}': {} labels for {} images in 'data'",
                                doc.what(), label_key, labels.items.size(), view.data.rows));
  }
  view.labels.reserve(labels.items.size());
  for (std::size_t i = 0; i < labels.items.size(); ++i) {
    const auto& l = *labels.items[i];
    if (l.kind != pickle::Kind::Int) {
      throw DataError(fmt::format("bad CIFAR batch in {} key '{}': record {} has a {} label, "
                                  "expected an int",
                                  doc.what(), label_key, i, pickle::kind_name(l.kind)));
    }
    if (l.integer < 0 || l.integer >= classes) {
      throw DataError(fmt::format("bad CIFAR batch in {} key '{}': record {} has label {}, "
                                  "expected 0..{}",
                                  doc.what(), label_key, i, l.integer, classes - 1));
    }
    view.labels.push_back(l.integer);
  }
  return view;
}

// A read-only mapping of a whole file. Empty files map to nothing (size 0).
class MappedFile {
 public:
  explicit MappedFile(const fs::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) throw IoError(fmt::format("cannot open {}: {}", quote(path), std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      throw IoError(fmt::format("cannot stat {}: {}", quote(path), std::strerror(err)));
    }
    if (!S_ISREG(st.st_mode)) {
      ::close(fd);
      throw DataError(fmt::format("{} is not a regular file", quote(path)));
    }
    if (static_cast<std::uint64_t>(st.st_size) > kMaxPickleBytes) {
      ::close(fd);
      throw DataError(fmt::format("{} is {} bytes, more than the limit of {} bytes", quote(path),
                                  st.st_size, kMaxPickleBytes));
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* addr = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      const int err = errno;
      ::close(fd);  // the mapping keeps the file alive
      if (addr == MAP_FAILED) {
        throw IoError(fmt::format("cannot map {}: {}", quote(path), std::strerror(err)));
      }
      addr_ = addr;
      ::madvise(addr_, size_, MADV_SEQUENTIAL);
    } else {
      ::close(fd);
    }
  }
  ~MappedFile() {
    if (addr_ != nullptr) ::munmap(addr_, size_);
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return static_cast<const std::uint8_t*>(addr_); }
  std::size_t size() const { return size_; }

 private:
  void* addr_ = nullptr;
  std::size_t size_ = 0;
};

struct PicklePart {
  fs::path path;
  std::string what;
  std::uint64_t records = 0;
};

// Streams a split file by file. Holds one mapping and its parsed Document at a time.
class PickleDirStream : public BatchStream {
 public:
  PickleDirStream(std::vector<PicklePart> parts, std::string label_key)
      : parts_(std::move(parts)), label_key_(std::move(label_key)) {}

  bool next(ImageBatch& out, std::size_t max_records) override {
    const std::size_t want = std::clamp<std::size_t>(max_records, 1, kMaxRecordsPerNext);
    // Sized once for the whole batch (and cut back at the end): growing it piece by piece
    // zero-filled every image before it was written.
    out.resize(shape(), want);
    std::size_t filled = 0;
    while (filled < want) {
      if (served_ == view_.labels.size()) {
        if (part_ == parts_.size()) break;
        load(parts_[part_++]);
        continue;
      }
      const std::size_t n = std::min(want - filled, view_.labels.size() - served_);
      for (std::size_t i = 0; i < n; ++i) {
        chw_to_hwc(view_.data.data + (served_ + i) * kImageBytes, out.image(filled + i));
        out.labels[filled + i] = view_.labels[served_ + i];
      }
      filled += n;
      served_ += n;
    }
    if (part_ == parts_.size() && served_ == view_.labels.size()) release();
    out.truncate(filled);
    return filled > 0;
  }

 private:
  void release() {
    view_ = {};
    served_ = 0;
    doc_.reset();
    file_.reset();
  }

  void load(const PicklePart& part) {
    release();
    file_ = std::make_unique<MappedFile>(part.path);
    doc_ = std::make_unique<pickle::Document>(file_->data(), file_->size(), part.what);
    view_ = view_batch(*doc_, label_key_);
    if (view_.labels.size() != part.records) {
      throw DataError(fmt::format("{} holds {} records now, but {} when the folder was opened",
                                  part.what, view_.labels.size(), part.records));
    }
  }

  std::vector<PicklePart> parts_;
  std::string label_key_;
  std::size_t part_ = 0;
  std::unique_ptr<MappedFile> file_;       // declared before doc_: outlives the views into it
  std::unique_ptr<pickle::Document> doc_;
  BatchView view_;
  std::size_t served_ = 0;
};

bool path_exists(const fs::path& p) {
  std::error_code ec;
  return fs::exists(p, ec);
}

}  // namespace

CifarPickleBatch parse_cifar_pickle_batch(const std::uint8_t* data, std::size_t size,
                                          const std::string& label_key, const std::string& what) {
  pickle::Document doc(data, size, what);
  BatchView view = view_batch(doc, label_key);
  CifarPickleBatch batch;
  batch.count = view.labels.size();
  batch.pixels_hwc.resize(batch.count * kImageBytes);
  for (std::size_t i = 0; i < batch.count; ++i) {
    chw_to_hwc(view.data.data + i * kImageBytes, batch.pixels_hwc.data() + i * kImageBytes);
  }
  batch.labels = std::move(view.labels);
  return batch;
}

std::vector<std::string> parse_cifar_pickle_names(const std::uint8_t* data, std::size_t size,
                                                  const std::string& names_key,
                                                  const std::string& what) {
  pickle::Document doc(data, size, what);
  const auto& root = root_dict(doc, "meta");
  const auto& list = require_key(doc, root, names_key, "meta");
  if (list.kind != pickle::Kind::List && list.kind != pickle::Kind::Tuple) {
    throw DataError(fmt::format("bad CIFAR meta in {} key '{}': a {}, expected a list of names",
                                what, names_key, pickle::kind_name(list.kind)));
  }
  std::vector<std::string> names;
  for (std::size_t i = 0; i < list.items.size(); ++i) {
    const auto& v = *list.items[i];
    if (!v.is_text() || v.text.empty()) {
      throw DataError(fmt::format("bad CIFAR meta in {} key '{}': name {} is {}, expected a "
                                  "non-empty string",
                                  what, names_key, i,
                                  v.is_text() ? "empty" : pickle::kind_name(v.kind)));
    }
    names.emplace_back(v.text);
  }
  return names;
}

std::unique_ptr<Source> open_cifar_pickle_dir(const std::filesystem::path& dir,
                                              const SourceOptions& options) {
  Dataset dataset;
  if (path_exists(dir / "batches.meta") || path_exists(dir / "data_batch_1") || path_exists(dir / "test_batch")) {
    dataset = Dataset::Cifar10;
  } else if (path_exists(dir / "meta") || path_exists(dir / "train") || path_exists(dir / "test")) {
    dataset = Dataset::Cifar100;
  } else {
    throw DataError(fmt::format("{} is not a CIFAR python folder: expected data_batch_1..5, "
                                "test_batch and batches.meta, or train, test and meta",
                                quote(dir)));
  }
  const LabelChoice labels = label_choice(dataset, options);
  const Layout layout = python_layout(dataset, labels);

  const fs::path names_path = dir / layout.names_file;
  if (!path_exists(names_path)) {
    throw DataError(fmt::format("CIFAR python folder {} has no {} (class names)", quote(dir),
                                layout.names_file));
  }
  std::vector<std::string> class_names;
  {
    MappedFile names_file(names_path);
    class_names = parse_cifar_pickle_names(names_file.data(), names_file.size(),
                                           layout.names_key, quote(names_path));
  }
  if (class_names.size() != static_cast<std::size_t>(labels.classes)) {
    throw DataError(fmt::format("bad CIFAR meta in {} key '{}': {} names, expected {}",
                                quote(names_path), layout.names_key, class_names.size(),
                                labels.classes));
  }

  // Each file is parsed once here (labels only: the pixel pages are never touched) to know
  // the split sizes and to refuse a bad folder before any conversion starts.
  std::vector<SplitInfo> splits;
  std::vector<std::vector<PicklePart>> split_parts;
  const std::pair<const char*, const std::vector<std::string>*> wanted[] = {
      {"train", &layout.train}, {"test", &layout.test}};
  for (const auto& [name, files] : wanted) {
    std::vector<std::string> missing;
    std::vector<PicklePart> parts;
    for (const auto& file : *files) {
      const fs::path path = dir / file;
      if (!path_exists(path)) {
        missing.push_back(file);
        continue;
      }
      PicklePart part{path, quote(path), 0};
      MappedFile mapped(path);
      pickle::Document doc(mapped.data(), mapped.size(), part.what);
      part.records = view_batch(doc, layout.label_key).labels.size();
      parts.push_back(std::move(part));
    }
    if (parts.empty()) continue;  // a folder may hold only one split
    if (!missing.empty()) {
      throw DataError(fmt::format("CIFAR python folder {} is incomplete: split '{}' lacks {}",
                                  quote(dir), name, fmt::join(missing, ", ")));
    }
    SplitInfo info;
    info.name = name;
    info.shape = shape();
    info.class_names = class_names;
    for (const auto& p : parts) info.count += p.records;
    splits.push_back(std::move(info));
    split_parts.push_back(std::move(parts));
  }
  if (splits.empty()) {
    throw DataError(fmt::format("CIFAR python folder {} holds no batch files", quote(dir)));
  }

  std::string description = describe(
      fmt::format("CIFAR-{} python {}", dataset == Dataset::Cifar10 ? 10 : 100, quote(dir)),
      dataset, labels);
  auto opener = [split_parts, label_key = layout.label_key](std::size_t split) {
    return std::unique_ptr<BatchStream>(
        std::make_unique<PickleDirStream>(split_parts.at(split), label_key));
  };
  return std::make_unique<CifarSource>(std::move(description), std::move(splits),
                                       std::move(opener));
}

}  // namespace imgstore::detail
