// The list file of an image source (path,label[,split][,class] CSV). Each input is written as
// list.csv into a folder holding a few files, then read strictly and with skip_bad.
// Invariants: every path taken is clean (relative, no '.', '..' or empty parts) and names an
// existing file; every label has a class name; a strict read that succeeds equals the
// skip_bad read, which then reports nothing bad.
#include <optional>

#include "fuzz_common.hpp"
#include "ingest/image_files.hpp"

using namespace imgstore;
using namespace imgstore::detail;
namespace fs = std::filesystem;

namespace {

const fs::path& list_folder() {
  static const fs::path dir = [] {
    const auto d = fuzz::fresh_dir("image-list");
    fs::create_directories(d / "sub" / "deeper");
    fs::create_directories(d / "folder.jpg");
    for (const char* name : {"a.jpg", "b c.png", "sub/d.JPEG", "sub/deeper/e,f.jpg",
                             "caf\xC3\xA9.png", "q\"uote.jpg"}) {
      fuzz::write_file(d / name, "x");
    }
    return d;
  }();
  return dir;
}

void check_scan(const ImageFileScan& scan) {
  for (const ImageSplit& split : scan.splits) {
    if (split.files.empty()) fuzz::fail("a split without files");
    for (std::size_t i = 0; i < split.files.size(); ++i) {
      const std::string_view path = split.files.path(i);
      if (path.empty() || path.front() == '/' || path.back() == '/') fuzz::fail("unclean path");
      std::size_t start = 0;
      while (start <= path.size()) {
        std::size_t end = path.find('/', start);
        if (end == std::string_view::npos) end = path.size();
        const std::string_view part = path.substr(start, end - start);
        if (part.empty() || part == "." || part == "..") fuzz::fail("unclean path part");
        start = end + 1;
      }
      if (!fs::is_regular_file(split.base / std::string(path))) {
        fuzz::fail("a path taken that is not an existing file");
      }
      if (split.files.label(i) >= scan.class_names.size()) fuzz::fail("label without a name");
    }
  }
  if (scan.class_names.size() > kMaxListLabel) fuzz::fail("more classes than the label limit");
}

bool same(const ImageFileScan& a, const ImageFileScan& b) {
  if (a.class_names != b.class_names || a.splits.size() != b.splits.size()) return false;
  for (std::size_t s = 0; s < a.splits.size(); ++s) {
    const FileList& x = a.splits[s].files;
    const FileList& y = b.splits[s].files;
    if (a.splits[s].name != b.splits[s].name || x.size() != y.size()) return false;
    for (std::size_t i = 0; i < x.size(); ++i) {
      if (x.path(i) != y.path(i) || x.label(i) != y.label(i)) return false;
    }
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const fs::path csv = list_folder() / "list.csv";
  fuzz::write_file(csv, data, size);
  std::optional<ImageFileScan> strict;
  try {
    strict = read_image_list(csv);
    check_scan(*strict);
    if (!strict->bad.empty()) fuzz::fail("a strict read listed bad rows");
  } catch (const Error&) {
  }
  try {
    ScanOptions options;
    options.skip_bad = true;
    const ImageFileScan lenient = read_image_list(csv, options);
    check_scan(lenient);
    for (const BadInput& b : lenient.bad) {
      if (b.message.find("list.csv' line ") == std::string::npos) {
        fuzz::fail("a bad row's message does not name the file and line");
      }
    }
    if (strict && (!lenient.bad.empty() || !same(*strict, lenient))) {
      fuzz::fail("skip_bad changed the result of a list without bad rows");
    }
  } catch (const Error&) {
    if (strict) fuzz::fail("skip_bad failed on a list the strict read accepts");
  }
  return 0;
}
