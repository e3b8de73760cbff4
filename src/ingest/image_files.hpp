// Finding the image files of an image folder or a list file, without opening them.
//
// Image folder (torchvision's ImageFolder convention): ROOT/<class>/<...>/<file>.
//   - Classes are ROOT's non-hidden subfolders (symlinks to folders count), sorted by name
//     (byte order of their UTF-8 names, which is Python's sorted() on str): labels 0..K-1.
//   - Split layout: if every non-hidden subfolder of ROOT is a split name (train, val, valid,
//     validation, test), each is a split holding its own class folders, as ImageNet ships.
//     The class names are the sorted union over the splits, so a label means the same class
//     in every split. Otherwise ROOT is one split named "train". ScanOptions::layout forces
//     either reading.
//   - A class folder is walked recursively following symlinks (os.walk(followlinks=True));
//     a symlink back to one of its own ancestors is a loop, reported with its path.
//   - Files are taken by extension, ASCII case-insensitive: .jpg .jpeg .jpe .jfif .png.
//     Content is told by the bytes later, so a PNG named .JPEG is taken here.
//   - Order: torchvision's sorted(os.walk(class_dir)): folders by their path, then the files
//     of each folder by name; classes in label order. The same tree gives the same list.
//   - Skipped and counted (SkipReason): hidden entries (leading '.'; a hidden folder counts
//     once, its content is not walked; torchvision would walk it), other extensions, images
//     of formats we do not decode (.bmp .gif .tif ...), files outside any class folder, and
//     entries that are not regular files (FIFOs, sockets, devices).
//   - Bad input (BadInput, an error unless skip_bad): a class folder with no images (as
//     torchvision's FileNotFoundError), no class folder at all, a broken symlink, a symlink
//     loop, a folder that cannot be read.
//
// List file: a CSV (RFC 4180: comma separated, "quoted" fields may hold commas, "" and line
// breaks; LF or CRLF; UTF-8, a leading BOM is ignored) whose header names the columns:
//   path,label[,split][,class]       (any order; other column names are an error)
//   - path: relative to the CSV's folder, '/'-separated; "." parts are dropped; an empty path,
//     an absolute path or a ".." part is an error (a list never reaches outside its folder).
//     The file must exist (not a folder). Its extension is not checked.
//   - label: a non-negative decimal integer < kMaxListLabel. Class names are "0".."K-1"
//     (K = largest label + 1) unless a class column names them; one label, one name.
//   - split: a name of [A-Za-z0-9_.-] (not starting with '.'); splits in order of first
//     appearance. Without the column every row is in split "train".
//   - Rows keep the file's order. Empty lines are ignored.
//   - Row errors (wrong column count, empty or escaping path, missing file, bad label, class
//     name conflict) are BadInput naming the CSV, the line and the problem; the header, an
//     unterminated quote or a stray quote are always errors.
#pragma once

#include <array>
#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

namespace imgstore::detail {

namespace fs = std::filesystem;

// Why a directory entry was not taken (counted per reason in ImageFileScan::skipped).
enum class SkipReason : std::uint8_t {
  Hidden,            // name starts with '.'
  OtherExtension,    // not an image extension
  UnsupportedImage,  // an image format imgstore does not decode (.bmp .gif .tif .webp ...)
  OutsideClass,      // a file directly in ROOT or in a split folder
  NotRegularFile,    // FIFO, socket, device
};
inline constexpr std::size_t kSkipReasons = 5;
// "hidden", "other extension", ... for summaries.
const char* skip_reason_name(SkipReason reason);

// Labels of a list file must be below this (the class names are made up to the largest).
inline constexpr std::uint32_t kMaxListLabel = 1'000'000;

// Paths (relative to the split's base folder) and labels, all paths in one string arena:
// about 12 bytes per file plus the path's characters.
class FileList {
 public:
  std::size_t size() const { return labels_.size(); }
  bool empty() const { return labels_.empty(); }
  std::string_view path(std::size_t i) const {
    const std::uint64_t begin = i == 0 ? 0 : ends_[i - 1];
    return std::string_view(arena_).substr(begin, ends_[i] - begin);
  }
  std::uint32_t label(std::size_t i) const { return labels_[i]; }
  void add(std::string_view path, std::uint32_t label);
  // Heap bytes held (capacity), to report memory use.
  std::size_t memory_bytes() const;
  void shrink_to_fit();

 private:
  std::string arena_;
  std::vector<std::uint64_t> ends_;
  std::vector<std::uint32_t> labels_;
};

struct ImageSplit {
  std::string name;  // "train", "val", ... (store names derive from it)
  fs::path base;     // FileList paths are relative to this folder
  FileList files;
};

// A file or folder that is wrong, with the full message (it names the path and the problem).
struct BadInput {
  std::string path;
  std::string message;
};

struct ImageFileScan {
  std::vector<std::string> class_names;  // label i is class_names[i]
  std::vector<ImageSplit> splits;
  std::array<std::uint64_t, kSkipReasons> skipped{};  // indexed by SkipReason
  std::vector<BadInput> bad;  // what was skipped as bad (only with ScanOptions::skip_bad)

  std::uint64_t skipped_count(SkipReason reason) const {
    return skipped[static_cast<std::size_t>(reason)];
  }
  std::uint64_t file_count() const;
};

struct ScanOptions {
  enum class Layout { Auto, Flat, Splits };
  Layout layout = Layout::Auto;  // image folders only
  // false: the first bad input throws DataError with its message. true: it is skipped and
  // listed in ImageFileScan::bad (an empty class keeps its label).
  bool skip_bad = false;
};

// Scans an image folder. Throws IoError if root cannot be read, DataError on bad input.
ImageFileScan scan_image_folder(const fs::path& root, const ScanOptions& options = {});

// Reads a list file. Throws IoError if it cannot be read, DataError on bad input.
ImageFileScan read_image_list(const fs::path& csv, const ScanOptions& options = {});

// True if the name ends with an image extension taken by scan_image_folder.
bool has_image_extension(std::string_view name);

}  // namespace imgstore::detail
