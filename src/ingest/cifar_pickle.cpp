// STUB: to be implemented.
#include "ingest/cifar_pickle.hpp"
#include "ingest/sources.hpp"
#include "imgstore/error.hpp"
namespace imgstore::detail {
CifarPickleBatch parse_cifar_pickle_batch(const std::uint8_t*, std::size_t, const std::string&, const std::string&) { throw Error("pickle: not implemented"); }
std::vector<std::string> parse_cifar_pickle_names(const std::uint8_t*, std::size_t, const std::string&, const std::string&) { throw Error("pickle: not implemented"); }
std::unique_ptr<Source> open_cifar_pickle_dir(const std::filesystem::path&, const SourceOptions&) { throw Error("cifar pickle: not implemented"); }
}
