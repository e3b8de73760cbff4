// The one table of store formats. Everything that depends on the format (dispatch, detection,
// file names, names, accepted encodings) reads a row of this table; no other code switches on
// Format. To add a format: write its reader and writer in their own file, declare its three
// functions below, and add one row to kFormats in format_table.cpp.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "imgstore/format.hpp"
#include "imgstore/store.hpp"

namespace imgstore::detail {

struct FormatEntry {
  FormatInfo info;
  // What detection looks for, named in "not a store" messages: "manifest.json", "data.mdb".
  const char* marker;
  // True if `path` (which exists) looks like an unsharded store of this format. Cheap: checks
  // a file name or a signature, never parses.
  bool (*detect)(const std::filesystem::path& path);
  std::unique_ptr<StoreReader> (*open)(const std::filesystem::path& path,
                                       const ReaderOptions& options);
  std::unique_ptr<StoreWriter> (*create)(const std::filesystem::path& path,
                                         const StoreSpec& spec, const WriterOptions& options);
};

// Every format's row, in the order of the Format enum.
const std::vector<FormatEntry>& format_table();
const FormatEntry& format_entry(Format format);

// The format whose detect() accepts `path` (which exists), if any. Sharded stores are not
// detected here (see is_sharded_store).
std::optional<Format> detect_unsharded_format(const std::filesystem::path& path);

// True if the name ends like a single-file store (".h5", ".hdf5"): the name is enough to treat
// a file as a store rather than a source.
bool has_file_store_suffix(const std::string& file_name);

// The checks every writer and reader applies to a payload encoding against the table:
// UsageError from a writer asked for an encoding its format cannot hold, DataError from a
// reader whose manifest names one. `what` names the store.
void check_writer_encoding(Format format, Encoding encoding, const std::string& what);
void check_manifest_encoding(Format format, Encoding encoding, const std::string& what);

// ---- the formats' own entry points (one file each) ----

bool detect_png_folder(const std::filesystem::path& path);
std::unique_ptr<StoreWriter> create_png_folder(const std::filesystem::path& path,
                                               const StoreSpec& spec, const WriterOptions& options);
std::unique_ptr<StoreReader> open_png_folder(const std::filesystem::path& path,
                                             const ReaderOptions& options);

bool detect_lmdb_store(const std::filesystem::path& path);
std::unique_ptr<StoreWriter> create_lmdb_store(const std::filesystem::path& path,
                                               const StoreSpec& spec, const WriterOptions& options);
std::unique_ptr<StoreReader> open_lmdb_store(const std::filesystem::path& path,
                                             const ReaderOptions& options);

bool detect_hdf5_store(const std::filesystem::path& path);
std::unique_ptr<StoreWriter> create_hdf5_store(const std::filesystem::path& path,
                                               const StoreSpec& spec, const WriterOptions& options);
// Opens an imgstore HDF5 file, or a file in the tutorial's layout (/images + /meta), for which
// it derives a manifest (checksums computed on open) since the file carries none.
std::unique_ptr<StoreReader> open_hdf5_store(const std::filesystem::path& path,
                                             const ReaderOptions& options);

}  // namespace imgstore::detail
