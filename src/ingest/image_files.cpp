#include "ingest/image_files.hpp"

#include <dirent.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <map>
#include <optional>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "detail/fs_util.hpp"
#include "imgstore/error.hpp"

namespace imgstore::detail {

namespace {

// Known split folder names, in the order the splits are listed.
constexpr std::array<std::string_view, 5> kSplitNames = {"train", "val", "valid", "validation",
                                                         "test"};
constexpr std::array<std::string_view, 5> kImageExtensions = {".jpg", ".jpeg", ".jpe", ".jfif",
                                                              ".png"};
// Image formats torchvision's ImageFolder takes (and PIL reads) that imgstore does not decode.
constexpr std::array<std::string_view, 9> kUnsupportedExtensions = {
    ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp", ".heic"};
constexpr const char* kExtensionList = ".jpg .jpeg .jpe .jfif .png";
constexpr std::uint64_t kMaxListBytes = std::uint64_t{1} << 30;
constexpr std::size_t kMaxSplitNameBytes = 64;

bool ends_with_ci(std::string_view name, std::string_view suffix) {
  if (name.size() < suffix.size()) return false;
  const std::string_view tail = name.substr(name.size() - suffix.size());
  for (std::size_t i = 0; i < suffix.size(); ++i) {
    char c = tail[i];
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (c != suffix[i]) return false;
  }
  return true;
}

template <std::size_t N>
bool has_extension_in(std::string_view name, const std::array<std::string_view, N>& list) {
  return std::any_of(list.begin(), list.end(),
                     [&](std::string_view ext) { return ends_with_ci(name, ext); });
}

bool is_hidden(std::string_view name) { return !name.empty() && name[0] == '.'; }

std::string join(std::string_view dir, std::string_view name) {
  std::string out;
  out.reserve(dir.size() + 1 + name.size());
  out += dir;
  if (!out.empty()) out += '/';
  out += name;
  return out;
}

// Collects what a scan found wrong: throws at once unless skip_bad.
class BadInputs {
 public:
  BadInputs(bool skip, std::vector<BadInput>& out) : skip_(skip), out_(out) {}
  void report(std::string path, std::string message) {
    if (!skip_) throw DataError(message);
    out_.push_back({std::move(path), std::move(message)});
  }

 private:
  bool skip_;
  std::vector<BadInput>& out_;
};

// ---- image folders ----

enum class EntryKind { Folder, File, Other };

struct Entry {
  std::string name;
  EntryKind kind;
};

struct FolderId {
  dev_t dev;
  ino_t ino;
  bool operator==(const FolderId& o) const { return dev == o.dev && ino == o.ino; }
};

// One folder's entries (not "." and ".."), sorted by name, with symlinks resolved. Broken
// links with an image name and link loops are reported; other broken links count as
// OtherExtension (torchvision filters them by name too). Returns 0, or the errno that stopped
// reading the folder.
int read_folder(const std::string& path, std::vector<Entry>& entries, FolderId* id,
                ImageFileScan& scan, BadInputs& bad) {
  entries.clear();
  DIR* dir = ::opendir(path.c_str());
  if (!dir) return errno;
  struct Closer {
    DIR* d;
    ~Closer() { ::closedir(d); }
  } closer{dir};
  if (id) {
    struct stat st {};
    if (::fstat(::dirfd(dir), &st) != 0) return errno;
    *id = FolderId{st.st_dev, st.st_ino};
  }
  for (;;) {
    errno = 0;
    const dirent* e = ::readdir(dir);
    if (!e) {
      if (errno != 0) return errno;
      break;
    }
    const std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    EntryKind kind = EntryKind::Other;
    if (e->d_type == DT_DIR) {
      kind = EntryKind::Folder;
    } else if (e->d_type == DT_REG) {
      kind = EntryKind::File;
    } else if (e->d_type == DT_LNK || e->d_type == DT_UNKNOWN) {
      // Follow the link (os.walk(followlinks=True) does); hidden names are skipped unread.
      if (!is_hidden(name)) {
        const std::string full = join(path, name);
        struct stat st {};
        if (::stat(full.c_str(), &st) == 0) {
          kind = S_ISDIR(st.st_mode) ? EntryKind::Folder
                 : S_ISREG(st.st_mode) ? EntryKind::File
                                       : EntryKind::Other;
        } else if (errno == ELOOP) {
          bad.report(full, fmt::format("symbolic link loop at {}: {}", quote(full),
                                       std::strerror(ELOOP)));
          continue;
        } else if (has_image_extension(name)) {
          const int err = errno;
          bad.report(full, fmt::format("cannot open image {}: {}{}", quote(full),
                                       std::strerror(err),
                                       err == ENOENT ? " (broken symbolic link)" : ""));
          continue;
        } else {
          ++scan.skipped[static_cast<std::size_t>(SkipReason::OtherExtension)];
          continue;
        }
      }
    }
    entries.push_back({std::string(name), kind});
  }
  std::sort(entries.begin(), entries.end(),
            [](const Entry& a, const Entry& b) { return a.name < b.name; });
  return 0;
}

void count(ImageFileScan& scan, SkipReason reason) {
  ++scan.skipped[static_cast<std::size_t>(reason)];
}

// Image files of one folder (relative path `rel` under the split base).
struct FolderFiles {
  std::string rel;
  std::vector<std::string> files;
};

// Walks a class folder as os.walk(followlinks=True) does, into `out` (unsorted folders,
// sorted files). `ancestors` are the folders on the way down, to find symlink loops.
void walk_class_folder(const std::string& path, const std::string& rel,
                       std::vector<FolderId>& ancestors, std::vector<FolderFiles>& out,
                       ImageFileScan& scan, BadInputs& bad) {
  std::vector<Entry> entries;
  FolderId id{};
  if (const int err = read_folder(path, entries, &id, scan, bad)) {
    bad.report(path, fmt::format("cannot read folder {}: {}", quote(path), std::strerror(err)));
    return;
  }
  if (std::find(ancestors.begin(), ancestors.end(), id) != ancestors.end()) {
    bad.report(path, fmt::format("symbolic link loop: folder {} is one of its own parent "
                                 "folders",
                                 quote(path)));
    return;
  }
  ancestors.push_back(id);
  FolderFiles here{rel, {}};
  std::vector<std::string> subfolders;
  for (Entry& e : entries) {
    if (is_hidden(e.name)) {
      count(scan, SkipReason::Hidden);
    } else if (e.kind == EntryKind::Folder) {
      subfolders.push_back(std::move(e.name));
    } else if (!has_image_extension(e.name)) {
      count(scan, has_extension_in(e.name, kUnsupportedExtensions) ? SkipReason::UnsupportedImage
                                                                   : SkipReason::OtherExtension);
    } else if (e.kind != EntryKind::File) {
      count(scan, SkipReason::NotRegularFile);
    } else {
      here.files.push_back(std::move(e.name));
    }
  }
  entries = {};  // free before descending
  if (!here.files.empty()) out.push_back(std::move(here));
  for (const std::string& sub : subfolders) {
    walk_class_folder(join(path, sub), join(rel, sub), ancestors, out, scan, bad);
  }
  ancestors.pop_back();
}

// Non-hidden subfolder names of a root or split folder, sorted; files there are counted as
// OutsideClass (or Hidden). Throws IoError if the folder cannot be read.
std::vector<std::string> list_subfolders(const std::string& path, ImageFileScan& scan,
                                         BadInputs& bad) {
  std::vector<Entry> entries;
  if (const int err = read_folder(path, entries, nullptr, scan, bad)) {
    throw IoError(fmt::format("cannot read folder {}: {}", quote(path), std::strerror(err)));
  }
  std::vector<std::string> folders;
  for (Entry& e : entries) {
    if (is_hidden(e.name)) {
      count(scan, SkipReason::Hidden);
    } else if (e.kind == EntryKind::Folder) {
      folders.push_back(std::move(e.name));
    } else {
      count(scan, SkipReason::OutsideClass);
    }
  }
  return folders;
}

bool is_split_name(std::string_view name) {
  return std::find(kSplitNames.begin(), kSplitNames.end(), name) != kSplitNames.end();
}

// ---- list files ----

// Splits CSV text into records (RFC 4180). Knows the line number of each record.
class CsvReader {
 public:
  CsvReader(std::string_view text, std::string file) : text_(text), file_(std::move(file)) {
    if (text_.substr(0, 3) == "\xEF\xBB\xBF") text_.remove_prefix(3);
  }
  // Reads the next record into `fields`; false at the end. `line` gets its first line number.
  // An empty line gives one empty field and sets `blank`. Structural errors throw DataError.
  bool next(std::vector<std::string>& fields, std::size_t& line, bool& blank) {
    if (pos_ >= text_.size()) return false;
    fields.assign(1, std::string());
    line = line_;
    blank = true;
    while (pos_ < text_.size()) {
      const char c = text_[pos_];
      if (c == '\n' || (c == '\r' && pos_ + 1 < text_.size() && text_[pos_ + 1] == '\n')) {
        pos_ += c == '\n' ? 1 : 2;
        ++line_;
        return true;
      }
      blank = false;
      if (c == ',') {
        fields.emplace_back();
        ++pos_;
      } else if (c == '"') {
        if (!fields.back().empty()) fail("a quote inside an unquoted field (quote the field)");
        read_quoted(fields.back());
      } else {
        fields.back() += c;
        ++pos_;
      }
    }
    return true;
  }
  std::string where(std::size_t line) const { return fmt::format("{} line {}", file_, line); }

 private:
  [[noreturn]] void fail(const std::string& problem) const {
    throw DataError(fmt::format("{}: {}", where(line_), problem));
  }
  // At the opening quote; leaves pos_ after the closing one, which must end the field.
  void read_quoted(std::string& field) {
    const std::size_t start_line = line_;
    ++pos_;
    for (;;) {
      if (pos_ >= text_.size()) {
        throw DataError(fmt::format("{}: unterminated quoted field", where(start_line)));
      }
      const char c = text_[pos_++];
      if (c == '"') {
        if (pos_ < text_.size() && text_[pos_] == '"') {
          field += '"';
          ++pos_;
          continue;
        }
        break;
      }
      if (c == '\n') ++line_;
      field += c;
    }
    if (pos_ < text_.size()) {
      const char c = text_[pos_];
      const bool end = c == ',' || c == '\n' ||
                       (c == '\r' && pos_ + 1 < text_.size() && text_[pos_ + 1] == '\n');
      if (!end) fail("characters after a closing quote (a quote inside a field is written \"\")");
    }
  }

  std::string_view text_;
  std::string file_;
  std::size_t pos_ = 0;
  std::size_t line_ = 1;
};

// The list's columns, by position.
struct Columns {
  std::size_t count = 0;
  std::size_t path = 0, label = 0;
  std::optional<std::size_t> split, cls;
};

Columns parse_header(const std::vector<std::string>& fields, const std::string& where) {
  Columns c;
  c.count = fields.size();
  std::optional<std::size_t> path, label;
  for (std::size_t i = 0; i < fields.size(); ++i) {
    std::optional<std::size_t>* slot = fields[i] == "path"    ? &path
                                       : fields[i] == "label" ? &label
                                       : fields[i] == "split" ? &c.split
                                       : fields[i] == "class" ? &c.cls
                                                              : nullptr;
    if (!slot) {
      throw DataError(fmt::format("{}: unknown column '{}' in the header (expected path,label "
                                  "and optionally split and class)",
                                  where, fields[i]));
    }
    if (*slot) {
      throw DataError(fmt::format("{}: column '{}' appears twice in the header", where,
                                  fields[i]));
    }
    *slot = i;
  }
  if (!path || !label) {
    throw DataError(fmt::format("{}: the header must name the columns path and label, found "
                                "'{}'",
                                where, fmt::join(fields, ",")));
  }
  c.path = *path;
  c.label = *label;
  return c;
}

// A list path made relative and clean ("a//./b" -> "a/b"); an error message if it cannot be.
std::optional<std::string> clean_list_path(std::string_view path, std::string& problem) {
  if (path.empty()) {
    problem = "empty path";
    return std::nullopt;
  }
  if (path.find('\0') != std::string_view::npos) {
    problem = "the path contains a NUL byte";
    return std::nullopt;
  }
  if (path[0] == '/') {
    problem = fmt::format("absolute path '{}' (paths are relative to the list's folder)", path);
    return std::nullopt;
  }
  std::string out;
  std::size_t start = 0;
  while (start <= path.size()) {
    std::size_t end = path.find('/', start);
    if (end == std::string_view::npos) end = path.size();
    const std::string_view part = path.substr(start, end - start);
    if (part == "..") {
      problem = fmt::format("path '{}' leaves the list's folder ('..')", path);
      return std::nullopt;
    }
    if (!part.empty() && part != ".") {
      if (!out.empty()) out += '/';
      out += part;
    }
    start = end + 1;
  }
  if (out.empty()) {
    problem = fmt::format("path '{}' names the list's folder, not a file", path);
    return std::nullopt;
  }
  return out;
}

bool valid_split_name(std::string_view name) {
  if (name.empty() || name.size() > kMaxSplitNameBytes || name[0] == '.') return false;
  return std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
           c == '_' || c == '-' || c == '.';
  });
}

}  // namespace

const char* skip_reason_name(SkipReason reason) {
  switch (reason) {
    case SkipReason::Hidden: return "hidden";
    case SkipReason::OtherExtension: return "not an image";
    case SkipReason::UnsupportedImage: return "unsupported image format";
    case SkipReason::OutsideClass: return "outside a class folder";
    case SkipReason::NotRegularFile: return "not a regular file";
  }
  return "?";
}

bool has_image_extension(std::string_view name) {
  return has_extension_in(name, kImageExtensions);
}

void FileList::add(std::string_view path, std::uint32_t label) {
  arena_ += path;
  ends_.push_back(arena_.size());
  labels_.push_back(label);
}

std::size_t FileList::memory_bytes() const {
  return arena_.capacity() + ends_.capacity() * sizeof(std::uint64_t) +
         labels_.capacity() * sizeof(std::uint32_t);
}

void FileList::shrink_to_fit() {
  arena_.shrink_to_fit();
  ends_.shrink_to_fit();
  labels_.shrink_to_fit();
}

std::uint64_t ImageFileScan::file_count() const {
  std::uint64_t n = 0;
  for (const auto& s : splits) n += s.files.size();
  return n;
}

ImageFileScan scan_image_folder(const fs::path& root_path, const ScanOptions& options) {
  ImageFileScan scan;
  BadInputs bad(options.skip_bad, scan.bad);
  const std::string root = root_path.string();
  struct stat st {};
  if (::stat(root.c_str(), &st) != 0) {
    throw IoError(fmt::format("cannot open image folder {}: {}", quote(root), std::strerror(errno)));
  }
  if (!S_ISDIR(st.st_mode)) {
    throw UsageError(fmt::format("{} is not a folder", quote(root)));
  }

  // The root's counts are taken once, whichever layout is chosen.
  const std::vector<std::string> top = list_subfolders(root, scan, bad);
  bool splits = false;
  switch (options.layout) {
    case ScanOptions::Layout::Auto:
      splits = !top.empty() && std::all_of(top.begin(), top.end(), is_split_name);
      break;
    case ScanOptions::Layout::Flat: splits = false; break;
    case ScanOptions::Layout::Splits: splits = true; break;
  }

  // Split name, folder, and its class folders.
  struct SplitFolders {
    std::string name, path;
    std::vector<std::string> classes;
  };
  std::vector<SplitFolders> split_folders;
  if (splits) {
    std::vector<std::string> names = top;
    // Known names in train, val, ..., test order; others (forced layout) after, by name.
    auto rank = [](const std::string& n) {
      return std::find(kSplitNames.begin(), kSplitNames.end(), n) - kSplitNames.begin();
    };
    std::stable_sort(names.begin(), names.end(),
                     [&](const std::string& a, const std::string& b) { return rank(a) < rank(b); });
    for (const std::string& name : names) {
      const std::string path = join(root, name);
      split_folders.push_back({name, path, list_subfolders(path, scan, bad)});
    }
    if (split_folders.empty()) {
      bad.report(root, fmt::format("no split folder in {} (expected train, val or test)",
                                   quote(root)));
    }
  } else {
    split_folders.push_back({"train", root, top});
  }

  // Class names: the sorted union over the splits.
  for (const auto& s : split_folders) {
    scan.class_names.insert(scan.class_names.end(), s.classes.begin(), s.classes.end());
  }
  std::sort(scan.class_names.begin(), scan.class_names.end());
  scan.class_names.erase(std::unique(scan.class_names.begin(), scan.class_names.end()),
                         scan.class_names.end());

  std::vector<FolderId> ancestors;
  std::vector<FolderFiles> folders;
  for (auto& s : split_folders) {
    ImageSplit split{s.name, fs::path(s.path), {}};
    if (s.classes.empty()) {
      bad.report(s.path, fmt::format("no class folder in {}: images go in <class>/<file>",
                                     quote(s.path)));
    }
    for (const std::string& cls : s.classes) {
      const auto label = static_cast<std::uint32_t>(
          std::lower_bound(scan.class_names.begin(), scan.class_names.end(), cls) -
          scan.class_names.begin());
      folders.clear();
      const std::string class_path = join(s.path, cls);
      walk_class_folder(class_path, cls, ancestors, folders, scan, bad);
      // torchvision's sorted(os.walk(...)): folders by path, files by name within each.
      std::sort(folders.begin(), folders.end(),
                [](const FolderFiles& a, const FolderFiles& b) { return a.rel < b.rel; });
      const std::size_t before = split.files.size();
      for (const FolderFiles& f : folders) {
        for (const std::string& file : f.files) split.files.add(join(f.rel, file), label);
      }
      if (split.files.size() == before) {
        bad.report(class_path, fmt::format("class folder {} has no images ({})", quote(class_path),
                                           kExtensionList));
      }
    }
    split.files.shrink_to_fit();
    scan.splits.push_back(std::move(split));
  }
  return scan;
}

namespace {

// A list file's label field: a decimal integer below kMaxListLabel. Sets `problem` otherwise.
std::optional<std::uint32_t> parse_list_label(const std::string& text, const std::string& path,
                                              std::string& problem) {
  std::uint64_t label = 0;
  const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), label);
  if (text.empty() || ec == std::errc::invalid_argument || end != text.data() + text.size()) {
    problem = fmt::format("label '{}' of '{}' is not a non-negative integer", text, path);
    return std::nullopt;
  }
  if (ec == std::errc::result_out_of_range || label >= kMaxListLabel) {
    problem = fmt::format("label {} of '{}' is too large (labels must be below {})", text, path,
                          kMaxListLabel);
    return std::nullopt;
  }
  return static_cast<std::uint32_t>(label);
}

// Checks that a listed path names a regular file. Sets `problem` otherwise.
bool is_listed_file(const std::string& full, std::string& problem) {
  struct stat st {};
  if (::stat(full.c_str(), &st) != 0) {
    const int err = errno;
    problem = err == ENOENT
                  ? fmt::format("file {} does not exist", quote(full))
                  : fmt::format("cannot open {}: {}", quote(full), std::strerror(err));
    return false;
  }
  if (!S_ISREG(st.st_mode)) {
    problem = fmt::format("{} is {}, not a file", quote(full),
                          S_ISDIR(st.st_mode) ? "a folder" : "special");
    return false;
  }
  return true;
}

// The optional class-name column: each label keeps the first name given to it, and each name
// belongs to one label. Remembers the line that named each label for the error messages.
class ListClassNames {
 public:
  // Empty when consistent with the rows so far, else the problem.
  std::string add(const std::string& name, std::uint32_t label, std::size_t line) {
    if (name.empty()) return fmt::format("empty class name for label {}", label);
    if (names_.size() <= label) {
      names_.resize(label + 1);
      named_on_.resize(label + 1);
    }
    if (names_[label].empty()) {
      auto [it, inserted] = label_of_name_.emplace(name, label);
      if (!inserted) {
        return fmt::format("class '{}' is label {} here but label {} on line {}", name, label,
                           it->second, named_on_[it->second]);
      }
      names_[label] = name;
      named_on_[label] = line;
    } else if (names_[label] != name) {
      return fmt::format("label {} is class '{}' here but '{}' on line {}", label, name,
                         names_[label], named_on_[label]);
    }
    return {};
  }

  // Names for labels 0..classes-1: the given name, or the label's number.
  std::vector<std::string> names(std::uint32_t classes) const {
    std::vector<std::string> out(classes);
    for (std::uint32_t i = 0; i < classes; ++i) {
      out[i] = i < names_.size() && !names_[i].empty() ? names_[i] : std::to_string(i);
    }
    return out;
  }

 private:
  std::vector<std::string> names_;     // by label; empty: not named yet
  std::vector<std::size_t> named_on_;  // line that named each label
  std::unordered_map<std::string, std::uint32_t> label_of_name_;
};

}  // namespace

ImageFileScan read_image_list(const fs::path& csv_path, const ScanOptions& options) {
  ImageFileScan scan;
  BadInputs bad(options.skip_bad, scan.bad);
  const std::vector<std::uint8_t> bytes = read_file(csv_path, kMaxListBytes);
  const std::string_view text(reinterpret_cast<const char*>(bytes.data()), bytes.size());
  CsvReader csv(text, quote(csv_path));
  const fs::path base = csv_path.parent_path().empty() ? fs::path(".") : csv_path.parent_path();
  const std::string base_str = base.string();

  std::vector<std::string> fields;
  std::size_t line = 0;
  bool blank = false;
  while (csv.next(fields, line, blank) && blank) {
  }
  if (line == 0 || blank) {
    throw DataError(fmt::format("{} is empty: expected a header such as 'path,label'",
                                quote(csv_path)));
  }
  const Columns columns = parse_header(fields, csv.where(line));

  std::map<std::string, std::size_t> split_index;
  ListClassNames class_names;
  std::uint32_t classes = 0;
  std::size_t rows = 0;
  while (csv.next(fields, line, blank)) {
    if (blank) continue;
    ++rows;
    auto row_error = [&](const std::string& path, const std::string& problem) {
      bad.report(path, fmt::format("{}: {}", csv.where(line), problem));
    };
    if (fields.size() != columns.count) {
      row_error({}, fmt::format("expected {} fields, found {}", columns.count, fields.size()));
      continue;
    }
    std::string problem;
    const std::optional<std::string> path = clean_list_path(fields[columns.path], problem);
    if (!path) {
      row_error(fields[columns.path], problem);
      continue;
    }
    const std::string full = join(base_str, *path);
    if (!is_listed_file(full, problem)) {
      row_error(full, problem);
      continue;
    }
    const std::optional<std::uint32_t> label =
        parse_list_label(fields[columns.label], *path, problem);
    if (!label) {
      row_error(full, problem);
      continue;
    }
    if (columns.cls) {
      problem = class_names.add(fields[*columns.cls], *label, line);
      if (!problem.empty()) {
        row_error(full, problem);
        continue;
      }
    }
    std::string split_name = "train";
    if (columns.split) {
      split_name = fields[*columns.split];
      if (!valid_split_name(split_name)) {
        row_error(full, fmt::format("split name '{}' is not made of letters, digits, '_', '-' "
                                    "and '.' (at most {} bytes, not starting with '.')",
                                    split_name, kMaxSplitNameBytes));
        continue;
      }
    }
    auto [it, inserted] = split_index.emplace(split_name, scan.splits.size());
    if (inserted) scan.splits.push_back({split_name, base, {}});
    scan.splits[it->second].files.add(*path, *label);
    classes = std::max(classes, *label + 1);
  }
  if (rows == 0) {
    throw DataError(fmt::format("{} lists no files (only a header)", quote(csv_path)));
  }
  scan.class_names = class_names.names(classes);
  for (auto& s : scan.splits) s.files.shrink_to_fit();
  return scan;
}

}  // namespace imgstore::detail
