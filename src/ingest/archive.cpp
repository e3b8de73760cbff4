// STUB: to be implemented.
#include "ingest/sources.hpp"
#include "imgstore/error.hpp"
namespace imgstore::detail {
std::unique_ptr<Source> open_cifar_archive(const std::filesystem::path&, const SourceOptions&) { throw Error("cifar archive: not implemented"); }
}
