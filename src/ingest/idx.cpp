// STUB: to be implemented.
#include "ingest/sources.hpp"
#include "imgstore/error.hpp"
namespace imgstore::detail {
std::unique_ptr<Source> open_idx(const std::filesystem::path&) { throw Error("idx: not implemented"); }
}
