// A safe reader for the small subset of Python pickles that data sets such as the CIFAR python
// batches use. It executes nothing: it builds a tree of plain values, and refuses any GLOBAL
// other than the few that rebuild a numpy array. Large byte payloads stay views into the input,
// so a 30 MB batch parses without copying its pixels.
//
// Understood: protocols 2 to 5 as written by Python 2 cPickle and Python 3 (PROTO, FRAME, STOP,
// MARK, EMPTY_DICT/LIST/TUPLE, TUPLE/TUPLE1/2/3, APPEND(S), SETITEM(S), BININT/1/2, LONG1, NONE,
// NEWTRUE/NEWFALSE, [SHORT_]BINSTRING, [SHORT_]BINBYTES[8], [SHORT_]BINUNICODE[8],
// BINPUT/LONG_BINPUT/MEMOIZE, BINGET/LONG_BINGET, GLOBAL/STACK_GLOBAL, REDUCE, BUILD).
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <string_view>
#include <vector>

namespace imgstore::detail::pickle {

enum class Kind : std::uint8_t { None, Bool, Int, Bytes, Str, List, Tuple, Dict, Global, Object };
const char* kind_name(Kind kind);  // "None", "int", "bytes", ...

// The only callables a pickle may name.
enum class GlobalId : std::uint8_t {
  Reconstruct,   // numpy.core.multiarray._reconstruct (numpy._core.multiarray in numpy 2)
  Ndarray,       // numpy.ndarray
  Dtype,         // numpy.dtype
  CodecsEncode,  // _codecs.encode: how Python 3 writes bytes at protocol 2 (evaluated at load)
};

struct Value {
  Kind kind = Kind::None;
  std::int64_t integer = 0;  // Int; Bool as 0/1; Global: its GlobalId
  // Bytes and Str (UTF-8): a view into the input or into the Document's own storage.
  // Global: the module name.
  std::string_view text;
  std::string_view name;              // Global: the attribute name
  std::vector<const Value*> items;    // List, Tuple; Dict as key0, value0, key1, value1, ...
  const Value* callable = nullptr;    // Object: the GLOBAL it was REDUCEd from
  const Value* args = nullptr;        // Object: the argument tuple
  const Value* state = nullptr;       // Object: what BUILD set, or null

  bool is_text() const { return kind == Kind::Bytes || kind == Kind::Str; }
  bool is_global(GlobalId id) const {
    return kind == Kind::Global && integer == static_cast<std::int64_t>(id);
  }
};

// Bounds on what a pickle may make us build, so garbage cannot exhaust memory.
struct Limits {
  // Values pushed on the stack, in total (about 100 bytes each at worst). A CIFAR-100 train
  // file pushes about 150 000.
  std::size_t max_values = std::size_t{1} << 21;
  std::size_t max_mark_depth = 64;                // nested MARKs open at once
  std::size_t max_memo = std::size_t{1} << 21;    // memo entries
};

// A parsed pickle. `data` must outlive it: byte payloads point into it. Not copyable or
// movable, since values point at each other.
class Document {
 public:
  // `what` names the file (and archive member) in error messages, already quoted, e.g.
  // "'dir/data_batch_1'". Throws DataError naming
  // it and the byte offset on anything malformed, truncated, over a limit or forbidden.
  Document(const std::uint8_t* data, std::size_t size, std::string what, const Limits& limits = {});
  Document(const Document&) = delete;
  Document& operator=(const Document&) = delete;

  const Value& root() const { return *root_; }
  const std::string& what() const { return what_; }

 private:
  friend class Parser;
  std::string what_;
  std::deque<Value> values_;        // stable addresses
  std::deque<std::string> owned_;   // decoded payloads (_codecs.encode)
  const Value* root_ = nullptr;
};

// The value stored under `key` (matched against bytes or str keys), or null. Later entries
// win, as in Python.
const Value* dict_find(const Value& dict, std::string_view key);

// A C-order 2-D uint8 numpy array, viewed in place.
struct ByteMatrix {
  const std::uint8_t* data = nullptr;
  std::size_t rows = 0;
  std::size_t cols = 0;
};

// Checks `value` is a numpy array rebuilt by _reconstruct with BUILD state
// (1, (rows, cols), dtype('u1'), False, <rows*cols bytes>) and returns a view of its bytes.
// Throws DataError naming `what` and `key` otherwise.
ByteMatrix as_uint8_matrix(const Value& value, const std::string& what, std::string_view key);

// A short printable rendering of bytes for error messages (non-printables escaped, capped).
std::string printable(std::string_view text, std::size_t max_chars = 60);

}  // namespace imgstore::detail::pickle
