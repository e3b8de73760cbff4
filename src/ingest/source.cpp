// open_source(): decide what kind of source a path or spec names.
#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "formats/format_table.hpp"
#include "imgstore/error.hpp"
#include "imgstore/store.hpp"
#include "ingest/sources.hpp"

namespace imgstore {

namespace fs = std::filesystem;
using detail::quote;

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool has_any(const fs::path& dir, std::initializer_list<const char*> names) {
  std::error_code ec;
  for (const char* name : names) {
    if (fs::exists(dir / name, ec)) return true;
  }
  return false;
}

bool has_idx_files(const fs::path& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    auto name = it->path().filename().string();
    if (name.find("-images-idx3-ubyte") != std::string::npos) return true;
  }
  return false;
}

// A candidate image folder: it has a non-hidden subfolder (a class or a split folder). What it
// holds is then the scanner's to judge, so its errors name the real problem.
bool has_subfolder(const fs::path& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const auto name = it->path().filename().string();
    if (!name.empty() && name[0] != '.' && it->is_directory(ec)) return true;
  }
  return false;
}

}  // namespace

std::unique_ptr<Source> open_source(const std::string& spec, const SourceOptions& options) {
  const std::string kSynthetic = "synthetic:";
  if (spec == "synthetic") return detail::open_synthetic("");
  if (spec.compare(0, kSynthetic.size(), kSynthetic) == 0) {
    return detail::open_synthetic(spec.substr(kSynthetic.size()));
  }
  fs::path path(spec);
  std::error_code ec;
  auto status = fs::status(path, ec);
  if (!fs::exists(status)) throw IoError(fmt::format("source {} does not exist", quote(path)));
  const auto name = path.filename().string();

  if (fs::is_directory(status)) {
    if (is_sharded_store(path) || detail::detect_unsharded_format(path)) {
      return detail::open_store_source(path);
    }
    if (has_any(path, {"data_batch_1.bin", "test_batch.bin", "train.bin", "test.bin"})) {
      return detail::open_cifar_binary_dir(path, options);
    }
    if (has_any(path, {"data_batch_1", "test_batch", "batches.meta", "meta"})) {
      return detail::open_cifar_pickle_dir(path, options);
    }
    if (has_idx_files(path)) return detail::open_idx(path);
    if (has_subfolder(path)) return detail::open_image_folder(path, options);
    throw DataError(fmt::format(
        "{} is not a source imgstore knows: expected a CIFAR-10/100 folder (binary or python), "
        "an IDX folder, an imgstore store, or an image folder (ROOT/<class>/*.jpg|png)",
        quote(path)));
  }
  if (ends_with(name, ".tar.gz") || ends_with(name, ".tgz")) {
    return detail::open_cifar_archive(path, options);
  }
  if (name.find("-idx3-ubyte") != std::string::npos) return detail::open_idx(path);
  if (detail::has_file_store_suffix(name)) return detail::open_store_source(path);
  if (ends_with(name, ".csv")) return detail::open_image_list(path, options);
  // Last resort: anything open_store can recognise by its signature.
  try {
    detect_store_format(path);
  } catch (const DataError&) {
    throw DataError(fmt::format(
        "{} is not a source imgstore knows: expected a .tar.gz CIFAR archive, an IDX file, "
        "an imgstore store, an image folder or a .csv image list (path,label[,split])",
        quote(path)));
  }
  return detail::open_store_source(path);
}

}  // namespace imgstore
