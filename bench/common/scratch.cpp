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

void set_aside(const fs::path& path, const fs::path& trash) {
  std::error_code ec;
  if (fs::exists(path, ec)) {
    static unsigned counter = 0;
    fs::create_directories(trash, ec);
    fs::rename(path, trash / fmt::format("{}-{}", path.filename().string(), counter++), ec);
    if (ec) remove_tree(path);
  }
  ::sync();
}

}  // namespace imgstore::bench
