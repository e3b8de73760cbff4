// STUB: to be implemented.
#include "ingest/sources.hpp"
#include "imgstore/error.hpp"
namespace imgstore::detail {
std::unique_ptr<Source> open_synthetic(const std::string&) { throw Error("synthetic: not implemented"); }
}
