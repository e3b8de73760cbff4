// STUB: to be implemented.
#include "formats/formats.hpp"
#include "imgstore/error.hpp"
namespace imgstore::detail {
std::unique_ptr<StoreWriter> create_lmdb_store(const std::filesystem::path&, const StoreSpec&, const WriterOptions&) { throw Error("lmdb: not implemented"); }
std::unique_ptr<StoreReader> open_lmdb_store(const std::filesystem::path&, const ReaderOptions&) { throw Error("lmdb: not implemented"); }
}
