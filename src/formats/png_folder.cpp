// STUB: to be implemented.
#include "formats/formats.hpp"
#include "imgstore/error.hpp"
namespace imgstore::detail {
std::unique_ptr<StoreWriter> create_png_folder(const std::filesystem::path&, const StoreSpec&, const WriterOptions&) { throw Error("png: not implemented"); }
std::unique_ptr<StoreReader> open_png_folder(const std::filesystem::path&, const ReaderOptions&) { throw Error("png: not implemented"); }
}
