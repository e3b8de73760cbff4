// Internal factory functions, one set per format. store.cpp dispatches to these.
#pragma once

#include <filesystem>
#include <memory>

#include "imgstore/store.hpp"

namespace imgstore::detail {

std::unique_ptr<StoreWriter> create_png_folder(const std::filesystem::path& path,
                                               const StoreSpec& spec, const WriterOptions& options);
std::unique_ptr<StoreReader> open_png_folder(const std::filesystem::path& path,
                                             const ReaderOptions& options);

std::unique_ptr<StoreWriter> create_lmdb_store(const std::filesystem::path& path,
                                               const StoreSpec& spec, const WriterOptions& options);
std::unique_ptr<StoreReader> open_lmdb_store(const std::filesystem::path& path,
                                             const ReaderOptions& options);

std::unique_ptr<StoreWriter> create_hdf5_store(const std::filesystem::path& path,
                                               const StoreSpec& spec, const WriterOptions& options);
// Opens an imgstore HDF5 file, or a file in the tutorial's layout (/images + /meta), for which
// it derives a manifest (checksums computed on open) since the file carries none.
std::unique_ptr<StoreReader> open_hdf5_store(const std::filesystem::path& path,
                                             const ReaderOptions& options);

// Sharded stores (sharded_store.cpp): a directory of shards.json plus options.shards stores
// of `format`. create_store() and open_store() dispatch here.
std::unique_ptr<StoreWriter> create_sharded_store(Format format, const std::filesystem::path& path,
                                                  const StoreSpec& spec,
                                                  const WriterOptions& options);
std::unique_ptr<StoreReader> open_sharded_store(const std::filesystem::path& path,
                                                const ReaderOptions& options);

// Opens a single (unsharded) store of a known format.
std::unique_ptr<StoreReader> open_single_store(Format format, const std::filesystem::path& path,
                                               const ReaderOptions& options);

// Key of record `index` in LMDB, and PNG file name stem: 8 digits (more if ever needed).
std::string record_key(std::uint64_t index);

}  // namespace imgstore::detail
