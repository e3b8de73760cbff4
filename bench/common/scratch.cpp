#include "common/scratch.hpp"

#include <unistd.h>

#include <system_error>

#include <fmt/format.h>

namespace imgstore::bench {

namespace fs = std::filesystem;

void remove_tree(const fs::path& path) {
  std::error_code ec;
  fs::remove_all(path, ec);
}

namespace {

// A file, or a directory of a few files (an LMDB store): cheap to delete right away.
bool few_files(const fs::path& path) {
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return true;
  std::size_t entries = 0;
  for (fs::recursive_directory_iterator it(path, ec), end; !ec && it != end; it.increment(ec)) {
    if (++entries > 64) return false;
  }
  return !ec;
}

}  // namespace

void set_aside(const fs::path& path, const fs::path& trash) {
  std::error_code ec;
  if (!fs::exists(path, ec)) {
    // nothing to set aside
  } else if (few_files(path)) {
    remove_tree(path);
  } else {
    static unsigned counter = 0;
    fs::create_directories(trash, ec);
    fs::rename(path, trash / fmt::format("{}-{}", path.filename().string(), counter++), ec);
    if (ec) remove_tree(path);
  }
  ::sync();
}

}  // namespace imgstore::bench
