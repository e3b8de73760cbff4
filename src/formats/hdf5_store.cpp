// STUB: to be implemented.
#include "formats/formats.hpp"
#include "imgstore/error.hpp"
namespace imgstore::detail {
std::unique_ptr<StoreWriter> create_hdf5_store(const std::filesystem::path&, const StoreSpec&, const WriterOptions&) { throw Error("hdf5: not implemented"); }
std::unique_ptr<StoreReader> open_hdf5_store(const std::filesystem::path&, const ReaderOptions&) { throw Error("hdf5: not implemented"); }
}
