// Internal: the format table and each format's entry points (format_table.hpp), plus the
// sharded store, which wraps any format. store.cpp dispatches through these.
#pragma once

#include <filesystem>
#include <memory>
#include <string>

#include "formats/format_table.hpp"
#include "imgstore/store.hpp"

namespace imgstore::detail {

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
