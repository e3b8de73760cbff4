#include "formats/format_table.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "formats/encoding_table.hpp"
#include "imgstore/error.hpp"

namespace imgstore {

namespace detail {

namespace {

bool accepts(Format format, Encoding encoding) {
  const auto& list = format_entry(format).info.encodings;
  return std::find(list.begin(), list.end(), encoding) != list.end();
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

}  // namespace

// One row per format, in enum order. Each format's code lives in its own file.
const std::vector<FormatEntry>& format_table() {
  // A function-local static: safe to use from other files' static initialisers.
  static const std::vector<FormatEntry> table = {
      {{Format::PngFolder, "png", {}, ".png", "PNG folder", true, {Encoding::Png}, true},
       "manifest.json", detect_png_folder, open_png_folder, create_png_folder},
      {{Format::Lmdb, "lmdb", {}, ".lmdb", "LMDB", true, {Encoding::Raw, Encoding::Png, Encoding::Jpeg},
        true},
       "data.mdb", detect_lmdb_store, open_lmdb_store, create_lmdb_store},
      {{Format::Hdf5, "hdf5", {"h5"}, ".h5", "HDF5", false, {Encoding::Raw, Encoding::Jpeg}, true},
       "HDF5 signature", detect_hdf5_store, open_hdf5_store, create_hdf5_store},
  };
  return table;
}

const FormatEntry& format_entry(Format format) {
  for (const auto& e : format_table()) {
    if (e.info.format == format) return e;
  }
  throw UsageError(fmt::format("format {} is not in the format table", static_cast<int>(format)));
}

std::optional<Format> detect_unsharded_format(const std::filesystem::path& path) {
  for (const auto& e : format_table()) {
    if (e.detect(path)) return e.info.format;
  }
  return std::nullopt;
}

bool has_file_store_suffix(const std::string& file_name) {
  for (const auto& e : format_table()) {
    if (e.info.directory) continue;
    if (ends_with(file_name, e.info.suffix) || ends_with(file_name, "." + e.info.name)) return true;
    for (const auto& alias : e.info.aliases) {
      if (ends_with(file_name, "." + alias)) return true;
    }
  }
  return false;
}

void check_writer_encoding(Format format, Encoding encoding, const std::string& what) {
  if (!accepts(format, encoding)) {
    throw UsageError(fmt::format("{}: {} stores hold {} payloads, not {}", what,
                                 format_entry(format).info.description,
                                 encoding_names(format_entry(format).info.encodings),
                                 to_string(encoding)));
  }
}

void check_manifest_encoding(Format format, Encoding encoding, const std::string& what) {
  if (!accepts(format, encoding)) {
    throw DataError(fmt::format("{}: manifest encoding is '{}', expected {}", what,
                                to_string(encoding),
                                encoding_names(format_entry(format).info.encodings)));
  }
}

}  // namespace detail

std::vector<Format> all_formats() {
  std::vector<Format> out;
  for (const auto& e : detail::format_table()) out.push_back(e.info.format);
  return out;
}

const FormatInfo& format_info(Format format) { return detail::format_entry(format).info; }

std::string to_string(Format format) { return format_info(format).name; }

Format parse_format(const std::string& name) {
  for (const auto& e : detail::format_table()) {
    if (e.info.name == name) return e.info.format;
    for (const auto& alias : e.info.aliases) {
      if (alias == name) return e.info.format;
    }
  }
  throw UsageError(fmt::format("unknown format '{}' (expected {})", name, format_names()));
}

std::string format_names(const std::string& last_separator) {
  std::vector<std::string> names;
  for (const auto& e : detail::format_table()) names.push_back(e.info.name);
  return detail::join_names(names, last_separator);
}

}  // namespace imgstore
