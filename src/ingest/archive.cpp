// CIFAR-10/100 .tar.gz archives (binary or python), read in place with libarchive: nothing is
// ever extracted to disk. Opening scans the archive once (member names, sizes, class names,
// python record counts); each split stream then walks forward through the archive, re-opening
// it only when a member it needs lies behind the current position. Members with unsafe paths
// (absolute, '..') or that are not regular files (symlinks, hardlinks, devices) are ignored.
// gzip is inflated by detail::GzipReader (see GzipFeed), so the scan at open checks the CRC-32.
#include <archive.h>
#include <archive_entry.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <limits>
#include <map>
#include <optional>

#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "detail/gzip_reader.hpp"
#include "imgstore/error.hpp"
#include "ingest/cifar_common.hpp"
#include "ingest/cifar_pickle.hpp"
#include "ingest/sources.hpp"

namespace imgstore::detail {

namespace {

using namespace cifar;

// A python batch member is read whole before parsing; the real ones are at most 155 MB.
constexpr std::uint64_t kMaxPickleBytes = std::uint64_t{200} << 20;
constexpr std::size_t kNoMember = std::numeric_limits<std::size_t>::max();

// Feeds libarchive the decompressed bytes of a .tar.gz through GzipReader. We inflate with zlib
// ourselves because libarchive's gzip filter never checks the CRC-32 / length trailer: flipped
// bytes inside a stored block would pass as good pixels. A file without the gzip magic is passed
// through as plain tar. Errors go through archive_set_error (never an exception across the C
// library); the message and whether the OS refused are kept for ArchiveReader to throw.
class GzipFeed {
 public:
  explicit GzipFeed(const fs::path& path)
      : gz_(path, GzipReader::Trailing::Ignore), out_(std::size_t{1} << 18) {}

  static la_ssize_t read_cb(archive* a, void* self, const void** buffer) {
    return static_cast<GzipFeed*>(self)->read(a, buffer);
  }
  // Inflates whatever libarchive did not ask for (it stops at the tar end marker), so the last
  // member's CRC is checked too. Returns false with the error set on `a`.
  bool drain(archive* a) {
    const void* ignored;
    la_ssize_t n;
    while ((n = read(a, &ignored)) > 0) {
    }
    return n == 0;
  }
  bool os_error() const { return os_error_; }
  // libarchive may replace our message with its own ("Truncated input file"); keep ours.
  const std::string& error() const { return error_; }

 private:
  la_ssize_t read(archive* a, const void** buffer) {
    if (failed_) return ARCHIVE_FATAL;
    try {
      const std::size_t n = gz_.read(out_.data(), out_.size());
      if (n == 0 && gz_.truncated()) {
        return fail(a, "gzip stream is truncated (unexpected end of file)", false);
      }
      *buffer = out_.data();
      return static_cast<la_ssize_t>(n);
    } catch (const IoError& e) {
      return fail(a, e.what(), true);
    } catch (const std::exception& e) {
      return fail(a, e.what(), false);
    }
  }

  la_ssize_t fail(archive* a, const std::string& msg, bool os_error) {
    failed_ = true;
    os_error_ = os_error;
    error_ = msg;
    archive_set_error(a, -1, "%s", msg.c_str());  // -1: ARCHIVE_ERRNO_MISC
    return ARCHIVE_FATAL;
  }

  GzipReader gz_;
  std::vector<std::uint8_t> out_;
  bool failed_ = false;
  bool os_error_ = false;
  std::string error_;
};

// Owns a libarchive read handle over one .tar.gz (or plain .tar) file.
class ArchiveReader {
 public:
  explicit ArchiveReader(fs::path path) : path_(std::move(path)), feed_(path_) {
    a_ = archive_read_new();
    if (a_ == nullptr) throw IoError(fmt::format("cannot open {}: out of memory", quote(path_)));
    archive_read_support_format_tar(a_);
    if (archive_read_open(a_, &feed_, nullptr, &GzipFeed::read_cb, nullptr) != ARCHIVE_OK) {
      // A throwing constructor never runs the destructor: free the handle here.
      try {
        fail("open");
      } catch (...) {
        archive_read_free(a_);
        a_ = nullptr;
        throw;
      }
    }
  }
  ~ArchiveReader() {
    if (a_ != nullptr) archive_read_free(a_);
  }
  ArchiveReader(const ArchiveReader&) = delete;
  ArchiveReader& operator=(const ArchiveReader&) = delete;

  // Moves to the next member; false at the end of the archive.
  bool next() {
    int rc = archive_read_next_header(a_, &entry_);
    if (rc == ARCHIVE_EOF) {
      entry_ = nullptr;
      return false;
    }
    if (rc < ARCHIVE_WARN) fail("read a member header of");
    ordinal_ = ordinal_ == kNoMember ? 0 : ordinal_ + 1;
    return true;
  }
  // After next() returned false: reads to the end of the compressed stream, checking its CRC.
  void verify_end() {
    if (!feed_.drain(a_)) fail("read the end of");
  }
  archive_entry* entry() const { return entry_; }
  std::size_t ordinal() const { return ordinal_; }
  const fs::path& path() const { return path_; }

  // Reads exactly n bytes of the current member's data.
  void read_exact(std::uint8_t* dst, std::size_t n, const std::string& what) {
    std::size_t done = 0;
    while (done < n) {
      la_ssize_t got = archive_read_data(a_, dst + done, n - done);
      if (got < 0) fail(fmt::format("read {} from", what));
      if (got == 0) {
        throw DataError(fmt::format("{} ended after {} bytes, expected at least {}", what,
                                    done, n));
      }
      done += static_cast<std::size_t>(got);
    }
  }

 private:
  [[noreturn]] void fail(const std::string& doing) {
    const char* msg = archive_error_string(a_);
    std::string text = fmt::format("cannot {} archive {}: {}", doing, quote(path_),
                                   !feed_.error().empty() ? feed_.error()
                                   : msg != nullptr       ? msg
                                                          : "unknown libarchive error");
    if (feed_.os_error()) throw IoError(text);
    throw DataError(text);
  }

  fs::path path_;
  GzipFeed feed_;  // outlives a_: the destructor body frees a_ before members are destroyed
  archive* a_ = nullptr;
  archive_entry* entry_ = nullptr;
  std::size_t ordinal_ = kNoMember;
};

// The member's path split into components, or nothing if it must be ignored: absolute paths,
// '..' anywhere, and empty names never name a CIFAR file.
std::optional<std::vector<std::string>> safe_components(const char* pathname) {
  if (pathname == nullptr || *pathname == '\0' || *pathname == '/') return std::nullopt;
  std::vector<std::string> parts;
  std::string s(pathname);
  std::size_t pos = 0;
  while (pos <= s.size()) {
    std::size_t end = s.find('/', pos);
    if (end == std::string::npos) end = s.size();
    std::string c = s.substr(pos, end - pos);
    pos = end + 1;
    if (c.empty() || c == ".") continue;
    if (c == ".." || c.find('\\') != std::string::npos) return std::nullopt;
    parts.push_back(std::move(c));
  }
  if (parts.empty()) return std::nullopt;
  return parts;
}

// A regular member that may be one of the CIFAR files.
struct Member {
  std::size_t ordinal = 0;
  std::string path;  // as stored in the archive
  std::uint64_t size = 0;
};

std::string member_what(const fs::path& archive, const std::string& member) {
  return fmt::format("{} member '{}'", quote(archive), member);
}

// Positions a reader on a given member, continuing forward when it can and re-opening the
// archive when the member lies behind.
class Cursor {
 public:
  explicit Cursor(fs::path path) : path_(std::move(path)) {}
  ArchiveReader& seek(const Member& m) {
    if (!reader_ || (reader_->ordinal() != kNoMember && reader_->ordinal() >= m.ordinal)) {
      reader_ = std::make_unique<ArchiveReader>(path_);
    }
    while (reader_->ordinal() == kNoMember || reader_->ordinal() < m.ordinal) {
      if (!reader_->next()) break;
    }
    archive_entry* e = reader_->entry();
    if (e == nullptr || reader_->ordinal() != m.ordinal || archive_entry_pathname(e) == nullptr ||
        m.path != archive_entry_pathname(e) ||
        static_cast<std::uint64_t>(archive_entry_size(e)) != m.size) {
      throw DataError(fmt::format("archive {} changed while it was being read: member '{}' is "
                                  "no longer where it was",
                                  quote(path_), m.path));
    }
    return *reader_;
  }

 private:
  fs::path path_;
  std::unique_ptr<ArchiveReader> reader_;
};

class ArchivePartReader : public PartReader {
 public:
  ArchivePartReader(fs::path path, std::vector<Member> members)
      : cursor_(path), path_(std::move(path)), members_(std::move(members)) {}
  void open(std::size_t part) override {
    current_ = &cursor_.seek(members_.at(part));
    what_ = member_what(path_, members_[part].path);
  }
  void read_exact(std::uint8_t* dst, std::size_t n) override { current_->read_exact(dst, n, what_); }

 private:
  Cursor cursor_;
  fs::path path_;
  std::vector<Member> members_;
  ArchiveReader* current_ = nullptr;
  std::string what_;
};

std::vector<std::uint8_t> read_member(ArchiveReader& reader, const Member& m,
                                      std::uint64_t limit) {
  const std::string what = member_what(reader.path(), m.path);
  if (m.size > limit) {
    throw DataError(fmt::format("{} is {} bytes, more than the limit of {} bytes", what, m.size,
                                limit));
  }
  std::vector<std::uint8_t> bytes(static_cast<std::size_t>(m.size));
  reader.read_exact(bytes.data(), bytes.size(), what);
  return bytes;
}

struct PythonPart {
  Member member;
  std::uint64_t records = 0;
};

// Streams python batch members: each is read whole, parsed, then served in chunks.
class PythonArchiveStream : public BatchStream {
 public:
  PythonArchiveStream(fs::path path, std::vector<PythonPart> parts, std::string label_key,
                      int classes)
      : cursor_(path), path_(std::move(path)), parts_(std::move(parts)),
        label_key_(std::move(label_key)), classes_(classes) {}

  bool next(ImageBatch& out, std::size_t max_records) override {
    const std::size_t want = std::clamp<std::size_t>(max_records, 1, kMaxRecordsPerNext);
    // Sized once for the whole batch (and cut back at the end): growing it piece by piece
    // zero-filled every image before it was written.
    out.resize(shape(), want);
    std::size_t filled = 0;
    while (filled < want) {
      if (served_ == batch_.count) {
        if (part_ == parts_.size()) break;
        load(parts_[part_++]);
        continue;
      }
      const std::size_t n = std::min(want - filled, batch_.count - served_);
      std::memcpy(out.image(filled), batch_.pixels_hwc.data() + served_ * kImageBytes,
                  n * kImageBytes);
      for (std::size_t i = 0; i < n; ++i) {
        const std::int64_t label = batch_.labels[served_ + i];
        check_label(label, classes_, what_, served_ + i, index_ + i);
        out.labels[filled + i] = label;
      }
      filled += n;
      served_ += n;
      index_ += n;
    }
    out.truncate(filled);
    return filled > 0;
  }

 private:
  void load(const PythonPart& part) {
    batch_ = {};
    served_ = 0;
    what_ = member_what(path_, part.member.path);
    CifarPickleBatch parsed;
    {
      auto bytes = read_member(cursor_.seek(part.member), part.member, kMaxPickleBytes);
      parsed = parse_cifar_pickle_batch(bytes.data(), bytes.size(), label_key_, what_);
    }  // the raw member is freed before its records are served
    if (parsed.count != part.records || parsed.labels.size() != parsed.count ||
        parsed.pixels_hwc.size() != parsed.count * kImageBytes) {
      throw DataError(fmt::format("{} holds {} records now, but {} when the archive was opened",
                                  what_, parsed.count, part.records));
    }
    batch_ = std::move(parsed);
  }

  Cursor cursor_;
  fs::path path_;
  std::vector<PythonPart> parts_;
  std::string label_key_;
  int classes_;
  std::size_t part_ = 0;
  CifarPickleBatch batch_;
  std::size_t served_ = 0;
  std::uint64_t index_ = 0;
  std::string what_;
};

enum class Kind { Binary10, Binary100, Python10, Python100 };

bool is_one_of(const std::string& name, std::initializer_list<const char*> names) {
  return std::any_of(names.begin(), names.end(), [&](const char* n) { return name == n; });
}

bool is_cifar10_py_batch(const std::string& name) {
  return is_one_of(name, {"data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                          "data_batch_5", "test_batch"});
}
bool is_cifar100_py_batch(const std::string& name) { return is_one_of(name, {"train", "test"}); }
bool is_names_file(const std::string& name) {
  return is_one_of(name, {"batches.meta.txt", "fine_label_names.txt", "coarse_label_names.txt",
                          "batches.meta", "meta"});
}
// Only the files a CIFAR layout uses are remembered, so a hostile archive with millions of
// members costs no memory.
bool is_cifar_file(const std::string& name) {
  return is_names_file(name) || is_cifar10_py_batch(name) || is_cifar100_py_batch(name) ||
         is_one_of(name, {"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
                          "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin", "train.bin",
                          "test.bin"});
}

// What one pass over the archive learns: every safe regular CIFAR member by file name, the
// small name files' bytes, and the record counts of python batches (only known by parsing).
struct ArchiveIndex {
  std::map<std::string, Member> members;
  std::map<std::string, std::vector<std::uint8_t>> small;  // names files' bytes
  std::map<std::string, std::uint64_t> py_counts;
  std::map<std::string, std::string> too_big;  // names files over the limit -> message
};

ArchiveIndex index_cifar_archive(const fs::path& file, const LabelChoice& labels10,
                                 const LabelChoice& labels100) {
  ArchiveIndex index;
  ArchiveReader reader(file);
  for (;;) {
    if (!reader.next()) {
      reader.verify_end();  // the whole file's CRC is checked once, here
      return index;
    }
    archive_entry* e = reader.entry();
    // Symlinks, hardlinks, directories and devices are never followed or read.
    if (archive_entry_filetype(e) != AE_IFREG || archive_entry_hardlink(e) != nullptr ||
        archive_entry_symlink(e) != nullptr || !archive_entry_size_is_set(e)) {
      continue;
    }
    auto parts = safe_components(archive_entry_pathname(e));
    if (!parts || parts->size() > 2) continue;
    const std::string& name = parts->back();
    if (!is_cifar_file(name)) continue;
    Member m{reader.ordinal(), archive_entry_pathname(e),
             static_cast<std::uint64_t>(std::max<la_int64_t>(0, archive_entry_size(e)))};
    if (auto it = index.members.find(name); it != index.members.end()) {
      throw DataError(fmt::format("archive {} holds two members named '{}': '{}' and '{}'",
                                  quote(file), name, it->second.path, m.path));
    }
    const std::string what = member_what(file, m.path);
    if (is_names_file(name)) {
      if (m.size > kMaxNamesBytes) {
        index.too_big[name] = fmt::format("{} is {} bytes, more than the limit of {} bytes for a "
                                          "class-name file",
                                          what, m.size, kMaxNamesBytes);
      } else {
        index.small[name] = read_member(reader, m, kMaxNamesBytes);
      }
    } else if (is_cifar10_py_batch(name) || is_cifar100_py_batch(name)) {
      const bool c10 = is_cifar10_py_batch(name);
      auto bytes = read_member(reader, m, kMaxPickleBytes);
      const Layout py = python_layout(c10 ? Dataset::Cifar10 : Dataset::Cifar100,
                                      c10 ? labels10 : labels100);
      const std::uint64_t count =
          parse_cifar_pickle_batch(bytes.data(), bytes.size(), py.label_key, what).count;
      if (count == 0) throw DataError(fmt::format("{} holds no records", what));
      index.py_counts[name] = count;
    }
    index.members.emplace(name, std::move(m));
  }
}

// Which of the four shipped layouts the members belong to.
Kind archive_kind(const std::map<std::string, Member>& members, const fs::path& file) {
  auto has = [&](std::initializer_list<const char*> names) {
    return std::any_of(names.begin(), names.end(),
                       [&](const char* n) { return members.count(n) != 0; });
  };
  if (has({"data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
           "data_batch_5.bin", "test_batch.bin", "batches.meta.txt"})) {
    return Kind::Binary10;
  }
  if (has({"train.bin", "test.bin", "fine_label_names.txt", "coarse_label_names.txt"})) {
    return Kind::Binary100;
  }
  if (has({"data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5",
           "test_batch", "batches.meta"})) {
    return Kind::Python10;
  }
  if (has({"train", "test", "meta"})) return Kind::Python100;
  throw DataError(fmt::format(
      "archive {} holds no CIFAR members: expected cifar-10-batches-bin/, cifar-10-batches-py/, "
      "cifar-100-binary/ or cifar-100-python/ files",
      quote(file)));
}

}  // namespace

std::unique_ptr<Source> open_cifar_archive(const fs::path& file, const SourceOptions& options) {
  const LabelChoice labels10 = label_choice(Dataset::Cifar10, options);
  const LabelChoice labels100 = label_choice(Dataset::Cifar100, options);
  const ArchiveIndex index = index_cifar_archive(file, labels10, labels100);
  const auto& members = index.members;
  const Kind kind = archive_kind(members, file);
  const bool python = kind == Kind::Python10 || kind == Kind::Python100;
  const Dataset dataset =
      kind == Kind::Binary10 || kind == Kind::Python10 ? Dataset::Cifar10 : Dataset::Cifar100;
  const LabelChoice labels = dataset == Dataset::Cifar10 ? labels10 : labels100;
  const Layout layout = python ? python_layout(dataset, labels) : binary_layout(dataset, labels);
  static const char* const kTops[] = {"cifar-10-batches-bin", "cifar-100-binary",
                                      "cifar-10-batches-py", "cifar-100-python"};
  const char* kind_name[] = {"CIFAR-10 binary", "CIFAR-100 binary", "CIFAR-10 python",
                             "CIFAR-100 python"};
  const int k = static_cast<int>(kind);

  auto require = [&](const std::string& name) -> const Member& {
    auto it = members.find(name);
    if (it == members.end()) {
      throw DataError(fmt::format("{} archive {} lacks the member '{}/{}'", kind_name[k],
                                  quote(file), kTops[k], name));
    }
    return it->second;
  };

  // Class names.
  const Member& names_member = require(layout.names_file);
  if (auto it = index.too_big.find(layout.names_file); it != index.too_big.end()) {
    throw DataError(it->second);
  }
  const auto& names_bytes = index.small.at(layout.names_file);
  const std::string names_what = member_what(file, names_member.path);
  std::vector<std::string> class_names =
      python ? parse_cifar_pickle_names(names_bytes.data(), names_bytes.size(), layout.names_key,
                                        names_what)
             : parse_names_text(names_bytes.data(), names_bytes.size(),
                                static_cast<std::size_t>(labels.classes), names_what);
  if (class_names.size() != static_cast<std::size_t>(labels.classes)) {
    throw DataError(fmt::format("bad class names in {}: found {} names, expected {}", names_what,
                                class_names.size(), labels.classes));
  }

  // Members and counts of each split.
  const RecordFormat format = record_format(dataset, labels);
  std::vector<std::vector<Member>> split_members(2);
  const auto parts = layout_parts(layout, [&](std::size_t split, const std::string& name) {
    const Member& m = require(name);
    const std::string what = member_what(file, m.path);
    split_members[split].push_back(m);
    return Part{what, python ? index.py_counts.at(name) : records_in(m.size, format, what)};
  });

  CifarSource::Opener opener;
  if (python) {
    opener = [file, split_members, parts, layout, classes = labels.classes](std::size_t i) {
      std::vector<PythonPart> py_parts;
      for (std::size_t j = 0; j < split_members[i].size(); ++j) {
        py_parts.push_back({split_members[i][j], parts[i][j].records});
      }
      return std::unique_ptr<BatchStream>(std::make_unique<PythonArchiveStream>(
          file, std::move(py_parts), layout.label_key, classes));
    };
  } else {
    opener = [file, split_members, parts, format](std::size_t i) {
      return make_binary_stream(parts[i], format,
                                std::make_unique<ArchivePartReader>(file, split_members[i]));
    };
  }
  return std::make_unique<CifarSource>(
      describe(fmt::format("{} archive {}", kind_name[k], quote(file)), dataset, labels),
      split_infos(parts, class_names), std::move(opener));
}

}  // namespace imgstore::detail
