// The safe pickle reader (src/ingest/pickle.hpp) on raw bytes: parse, walk the whole value
// graph (it may share nodes or even hold cycles through the memo), and try the numpy view.
#include <unordered_set>

#include "fuzz_common.hpp"
#include "ingest/pickle.hpp"

using namespace imgstore;
namespace pk = imgstore::detail::pickle;

namespace {

// Touches every field of every value reachable from `v`, each value once.
void walk(const pk::Value* v, std::unordered_set<const pk::Value*>& seen, std::size_t depth) {
  if (!v || depth > 200 || !seen.insert(v).second) return;
  (void)pk::kind_name(v->kind);
  (void)pk::printable(v->text);
  (void)pk::printable(v->name);
  volatile std::size_t sink = v->text.size() + v->name.size() + static_cast<std::size_t>(v->integer);
  (void)sink;
  for (const pk::Value* item : v->items) walk(item, seen, depth + 1);
  walk(v->callable, seen, depth + 1);
  walk(v->args, seen, depth + 1);
  walk(v->state, seen, depth + 1);
  if (v->kind == pk::Kind::Dict) {
    if (v->items.size() % 2 != 0) fuzz::fail("dict with an odd number of items");
    (void)pk::dict_find(*v, "data");
  }
  if (v->kind == pk::Kind::Object) {
    try {
      auto m = pk::as_uint8_matrix(*v, "'fuzz'", "data");
      // The view must lie inside memory we may read.
      volatile std::uint8_t first = m.rows * m.cols ? m.data[0] : 0;
      volatile std::uint8_t last = m.rows * m.cols ? m.data[m.rows * m.cols - 1] : 0;
      (void)first;
      (void)last;
    } catch (const Error&) {
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  // A copy of exactly `size` bytes, so ASan sees any read past the end of the input.
  std::vector<std::uint8_t> bytes(data, data + size);
  try {
    pk::Limits limits;
    limits.max_values = 100000;  // keep each run fast; the limit logic is what is under test
    pk::Document doc(bytes.data(), bytes.size(), "'fuzz'", limits);
    std::unordered_set<const pk::Value*> seen;
    walk(&doc.root(), seen, 0);
  } catch (const Error&) {
  }
  return 0;
}
