#include "ingest/pickle.hpp"

#include <fmt/format.h>

#include <cstring>
#include <unordered_map>

#include "imgstore/error.hpp"

namespace imgstore::detail::pickle {

namespace {

// Opcodes (Lib/pickletools.py names).
enum Op : std::uint8_t {
  kMark = '(',
  kStop = '.',
  kBinInt = 'J',
  kBinInt1 = 'K',
  kBinInt2 = 'M',
  kNone = 'N',
  kReduce = 'R',
  kBinString = 'T',
  kShortBinString = 'U',
  kBinUnicode = 'X',
  kAppend = 'a',
  kBuild = 'b',
  kGlobal = 'c',
  kAppends = 'e',
  kBinGet = 'h',
  kLongBinGet = 'j',
  kEmptyList = ']',
  kBinPut = 'q',
  kLongBinPut = 'r',
  kSetItem = 's',
  kTuple = 't',
  kSetItems = 'u',
  kEmptyDict = '}',
  kEmptyTuple = ')',
  kBinBytes = 'B',
  kShortBinBytes = 'C',
  kProto = 0x80,
  kTuple1 = 0x85,
  kTuple2 = 0x86,
  kTuple3 = 0x87,
  kNewTrue = 0x88,
  kNewFalse = 0x89,
  kLong1 = 0x8a,
  kShortBinUnicode = 0x8c,
  kBinUnicode8 = 0x8d,
  kBinBytes8 = 0x8e,
  kStackGlobal = 0x93,
  kMemoize = 0x94,
  kFrame = 0x95,
};

constexpr std::size_t kMaxGlobalLine = 256;

struct KnownGlobal {
  const char* module;
  const char* name;
  GlobalId id;
};

constexpr KnownGlobal kKnownGlobals[] = {
    {"numpy.core.multiarray", "_reconstruct", GlobalId::Reconstruct},
    {"numpy._core.multiarray", "_reconstruct", GlobalId::Reconstruct},
    {"numpy", "ndarray", GlobalId::Ndarray},
    {"numpy", "dtype", GlobalId::Dtype},
    {"_codecs", "encode", GlobalId::CodecsEncode},
};

}  // namespace

const char* kind_name(Kind kind) {
  switch (kind) {
    case Kind::None: return "None";
    case Kind::Bool: return "bool";
    case Kind::Int: return "int";
    case Kind::Bytes: return "bytes";
    case Kind::Str: return "str";
    case Kind::List: return "list";
    case Kind::Tuple: return "tuple";
    case Kind::Dict: return "dict";
    case Kind::Global: return "global";
    case Kind::Object: return "object";
  }
  return "?";
}

std::string printable(std::string_view text, std::size_t max_chars) {
  std::string out;
  for (char c : text) {
    if (out.size() >= max_chars) {
      out += "...";
      break;
    }
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f && c != '\\') {
      out += c;
    } else {
      out += fmt::format("\\x{:02x}", u);
    }
  }
  return out;
}

namespace {

// True if `p` is well-formed UTF-8 of code points U+0000..U+00FF only: ASCII, or C2/C3
// followed by one continuation byte. Eight bytes at a time (SWAR), since a pixel payload is
// tens of megabytes.
bool is_latin1_utf8(const unsigned char* p, std::size_t n) {
  if (n == 0) return true;
  // No leading continuation, no trailing lead.
  if ((p[0] & 0xc0u) == 0x80u || p[n - 1] >= 0xc0u) return false;
  constexpr std::uint64_t k80 = 0x8080808080808080ull;
  constexpr std::uint64_t k7f = 0x7f7f7f7f7f7f7f7full;
  constexpr std::uint64_t kFe = 0xfefefefefefefefeull;
  constexpr std::uint64_t kC2 = 0xc2c2c2c2c2c2c2c2ull;
  std::uint64_t bad = 0;
  std::size_t j = 0;
  for (; j + 9 <= n; j += 8) {
    std::uint64_t x, y;  // y is x shifted on by one byte: each byte's successor
    std::memcpy(&x, p + j, 8);
    std::memcpy(&y, p + j + 1, 8);
    const std::uint64_t lead = x & (x << 1) & k80;   // bit 7 set where the byte is >= 0xc0
    const std::uint64_t cont = y & ~(y << 1) & k80;  // where the next byte is 10xxxxxx
    bad |= lead ^ cont;  // a lead must be followed by a continuation, and only a lead may be
    const std::uint64_t t = (x ^ kC2) & kFe;         // zero where the byte is c2 or c3
    bad |= lead & (((t & k7f) + k7f) | t) & k80;      // lead bytes must be c2 or c3
  }
  for (; j + 1 < n; ++j) {
    const unsigned c = p[j];
    const bool lead = c >= 0xc0u;
    const bool next_cont = (p[j + 1] & 0xc0u) == 0x80u;
    if (lead != next_cont || (lead && (c & 0xfeu) != 0xc2u)) return false;
  }
  return bad == 0;
}

}  // namespace

// Runs the pickle machine over the input, building values in the Document. Iterative, so
// input cannot drive recursion.
class Parser {
 public:
  Parser(Document& doc, const std::uint8_t* data, std::size_t size, const Limits& limits)
      : doc_(doc), data_(data), size_(size), limits_(limits) {}

  const Value* run() {
    while (true) {
      op_pos_ = pos_;
      if (pos_ >= size_) fail("truncated: input ends before the STOP opcode");
      const std::uint8_t op = data_[pos_++];
      if (op == kStop) {
        if (stack_.empty()) fail("STOP with an empty stack");
        return stack_.back();
      }
      if (!load_scalar(op) && !load_structure(op)) {
        fail(fmt::format("unknown opcode 0x{:02x}", op));
      }
    }
  }

 private:
  // Framing, MARK and the opcodes that push one scalar: None, bools, ints, strings, bytes.
  bool load_scalar(std::uint8_t op) {
    switch (op) {
      case kProto: {
        const auto version = read_uint(1, "PROTO");
        if (version > 5) fail(fmt::format("unsupported pickle protocol {}", version));
        break;
      }
      case kFrame: {
        // Protocol 4 framing only groups opcodes for buffered I/O; we have all the bytes.
        const auto length = read_uint(8, "FRAME");
        if (length > remaining()) {
          fail(fmt::format("truncated: FRAME declares {} bytes but only {} remain", length,
                           remaining()));
        }
        break;
      }
      case kMark:
        if (marks_.size() >= limits_.max_mark_depth) {
          fail(fmt::format("more than {} nested MARKs", limits_.max_mark_depth));
        }
        marks_.push_back(stack_.size());
        break;
      case kNone: push(make(Kind::None)); break;
      case kNewTrue:
      case kNewFalse: {
        Value* v = make(Kind::Bool);
        v->integer = op == kNewTrue ? 1 : 0;
        push(v);
        break;
      }
      case kBinInt1: push_int(static_cast<std::int64_t>(read_uint(1, "BININT1"))); break;
      case kBinInt2: push_int(static_cast<std::int64_t>(read_uint(2, "BININT2"))); break;
      case kBinInt:
        push_int(static_cast<std::int32_t>(static_cast<std::uint32_t>(read_uint(4, "BININT"))));
        break;
      case kLong1: load_long1(); break;
      case kShortBinString: push_text(Kind::Bytes, read_uint(1, "SHORT_BINSTRING"), "SHORT_BINSTRING"); break;
      case kBinString: {
        // A signed 32-bit length in the format; negative is corrupt.
        const auto length = static_cast<std::int32_t>(static_cast<std::uint32_t>(read_uint(4, "BINSTRING")));
        if (length < 0) fail(fmt::format("BINSTRING declares a negative length {}", length));
        push_text(Kind::Bytes, static_cast<std::uint64_t>(length), "BINSTRING");
        break;
      }
      case kShortBinBytes: push_text(Kind::Bytes, read_uint(1, "SHORT_BINBYTES"), "SHORT_BINBYTES"); break;
      case kBinBytes: push_text(Kind::Bytes, read_uint(4, "BINBYTES"), "BINBYTES"); break;
      case kBinBytes8: push_text(Kind::Bytes, read_uint(8, "BINBYTES8"), "BINBYTES8"); break;
      case kShortBinUnicode: push_text(Kind::Str, read_uint(1, "SHORT_BINUNICODE"), "SHORT_BINUNICODE"); break;
      case kBinUnicode: push_text(Kind::Str, read_uint(4, "BINUNICODE"), "BINUNICODE"); break;
      case kBinUnicode8: push_text(Kind::Str, read_uint(8, "BINUNICODE8"), "BINUNICODE8"); break;
      default:
        return false;
    }
    return true;
  }

  // Containers, the memo, globals and object construction.
  bool load_structure(std::uint8_t op) {
    switch (op) {
      case kEmptyList: push(make(Kind::List)); break;
      case kEmptyDict: push(make(Kind::Dict)); break;
      case kEmptyTuple: push(make(Kind::Tuple)); break;
      case kTuple1:
      case kTuple2:
      case kTuple3: {
        const std::size_t n = op - kTuple1 + 1u;
        if (stack_.size() < fence() + n) fail(fmt::format("TUPLE{} needs {} stack items", n, n));
        Value* t = make(Kind::Tuple);
        t->items.assign(stack_.end() - static_cast<std::ptrdiff_t>(n), stack_.end());
        stack_.resize(stack_.size() - n);
        push(t);
        break;
      }
      case kTuple: {
        Value* t = make(Kind::Tuple);
        t->items = pop_mark("TUPLE");
        push(t);
        break;
      }
      case kAppend: {
        const Value* item = pop("APPEND");
        target(Kind::List, "APPEND")->items.push_back(item);
        break;
      }
      case kAppends: {
        auto items = pop_mark("APPENDS");
        auto& list = target(Kind::List, "APPENDS")->items;
        list.insert(list.end(), items.begin(), items.end());
        break;
      }
      case kSetItem: {
        const Value* value = pop("SETITEM");
        const Value* key = pop("SETITEM");
        auto& dict = target(Kind::Dict, "SETITEM")->items;
        dict.push_back(key);
        dict.push_back(value);
        break;
      }
      case kSetItems: {
        auto items = pop_mark("SETITEMS");
        if (items.size() % 2 != 0) fail("SETITEMS with an odd number of items");
        auto& dict = target(Kind::Dict, "SETITEMS")->items;
        dict.insert(dict.end(), items.begin(), items.end());
        break;
      }
      case kBinPut: memo_put(read_uint(1, "BINPUT")); break;
      case kLongBinPut: memo_put(read_uint(4, "LONG_BINPUT")); break;
      case kMemoize: memo_put(memo_.size()); break;
      case kBinGet: memo_get(read_uint(1, "BINGET")); break;
      case kLongBinGet: memo_get(read_uint(4, "LONG_BINGET")); break;
      case kGlobal: {
        const std::string_view module = read_line("GLOBAL");
        const std::string_view name = read_line("GLOBAL");
        push_global(module, name, "GLOBAL");
        break;
      }
      case kStackGlobal: {
        const Value* name = pop("STACK_GLOBAL");
        const Value* module = pop("STACK_GLOBAL");
        if (module->kind != Kind::Str || name->kind != Kind::Str) {
          fail(fmt::format("STACK_GLOBAL needs two str, got {} and {}", kind_name(module->kind),
                           kind_name(name->kind)));
        }
        push_global(module->text, name->text, "STACK_GLOBAL");
        break;
      }
      case kReduce: load_reduce(); break;
      case kBuild: {
        const Value* state = pop("BUILD");
        Value* obj = target(Kind::Object, "BUILD");
        if (obj->state != nullptr) fail("BUILD applied twice to one object");
        obj->state = state;
        break;
      }
      default:
        return false;
    }
    return true;
  }

  [[noreturn]] void fail(const std::string& message) const {
    throw DataError(fmt::format("corrupt pickle in {} at byte {}: {}", doc_.what_, op_pos_, message));
  }

  std::size_t remaining() const { return size_ - pos_; }

  std::uint64_t read_uint(std::size_t n, const char* opname) {
    if (remaining() < n) {
      fail(fmt::format("truncated: {} needs {} argument bytes but only {} remain", opname, n,
                       remaining()));
    }
    std::uint64_t v = 0;
    for (std::size_t i = 0; i < n; ++i) v |= std::uint64_t{data_[pos_ + i]} << (8 * i);
    pos_ += n;
    return v;
  }

  std::string_view read_line(const char* opname) {
    const std::size_t limit = std::min(remaining(), kMaxGlobalLine);
    const void* nl = std::memchr(data_ + pos_, '\n', limit);
    if (nl == nullptr) {
      if (limit == remaining()) fail(fmt::format("truncated: {} name has no end of line", opname));
      fail(fmt::format("{} name longer than {} bytes", opname, kMaxGlobalLine));
    }
    const auto length = static_cast<std::size_t>(static_cast<const std::uint8_t*>(nl) - (data_ + pos_));
    std::string_view line(reinterpret_cast<const char*>(data_ + pos_), length);
    pos_ += length + 1;
    return line;
  }

  Value* make(Kind kind) {
    // Every value is pushed right away, so the push limit bounds these too.
    Value& v = doc_.values_.emplace_back();
    v.kind = kind;
    return &v;
  }

  void push(const Value* v) {
    if (++pushes_ > limits_.max_values) {
      fail(fmt::format("more than {} values", limits_.max_values));
    }
    stack_.push_back(v);
  }

  void push_int(std::int64_t i) {
    Value* v = make(Kind::Int);
    v->integer = i;
    push(v);
  }

  void load_long1() {
    const auto n = read_uint(1, "LONG1");
    if (n > 8) fail(fmt::format("LONG1 of {} bytes does not fit in 64 bits", n));
    std::uint64_t raw = read_uint(static_cast<std::size_t>(n), "LONG1");
    // Two's complement, little-endian, n bytes: sign-extend.
    if (n > 0 && n < 8 && (raw >> (8 * n - 1)) & 1u) raw |= ~std::uint64_t{0} << (8 * n);
    push_int(static_cast<std::int64_t>(raw));
  }

  // Length checked against the input before anything is made; the payload stays a view.
  void push_text(Kind kind, std::uint64_t length, const char* opname) {
    if (length > remaining()) {
      fail(fmt::format("truncated: {} declares {} bytes but only {} remain", opname, length,
                       remaining()));
    }
    Value* v = make(kind);
    v->text = std::string_view(reinterpret_cast<const char*>(data_ + pos_), static_cast<std::size_t>(length));
    pos_ += static_cast<std::size_t>(length);
    push(v);
  }

  void push_global(std::string_view module, std::string_view name, const char* opname) {
    for (const auto& known : kKnownGlobals) {
      if (module == known.module && name == known.name) {
        Value* v = make(Kind::Global);
        v->integer = static_cast<std::int64_t>(known.id);
        v->text = module;
        v->name = name;
        push(v);
        return;
      }
    }
    fail(fmt::format("forbidden {} '{}.{}': only numpy array reconstruction is allowed", opname,
                     printable(module), printable(name)));
  }

  std::size_t fence() const { return marks_.empty() ? 0 : marks_.back(); }

  const Value* pop(const char* opname) {
    if (stack_.size() <= fence()) fail(fmt::format("stack underflow in {}", opname));
    const Value* v = stack_.back();
    stack_.pop_back();
    return v;
  }

  std::vector<const Value*> pop_mark(const char* opname) {
    if (marks_.empty()) fail(fmt::format("{} without a MARK", opname));
    const std::size_t start = marks_.back();
    marks_.pop_back();
    std::vector<const Value*> items(stack_.begin() + static_cast<std::ptrdiff_t>(start), stack_.end());
    stack_.resize(start);
    return items;
  }

  // The value on top of the stack, which `opname` mutates; it must be of `kind`. Values are
  // built by this parser, so casting away the stack's const is sound.
  Value* target(Kind kind, const char* opname) {
    if (stack_.size() <= fence()) fail(fmt::format("stack underflow in {}", opname));
    const Value* v = stack_.back();
    if (v->kind != kind) {
      fail(fmt::format("{} applied to a {}, expected a {}", opname, kind_name(v->kind), kind_name(kind)));
    }
    return const_cast<Value*>(v);
  }

  void memo_put(std::uint64_t index) {
    if (stack_.empty()) fail("memo PUT with an empty stack");
    auto it = memo_.find(index);
    if (it != memo_.end()) {
      it->second = stack_.back();
      return;
    }
    if (memo_.size() >= limits_.max_memo) fail(fmt::format("more than {} memo entries", limits_.max_memo));
    memo_.emplace(index, stack_.back());
  }

  void memo_get(std::uint64_t index) {
    auto it = memo_.find(index);
    if (it == memo_.end()) fail(fmt::format("memo GET of index {}, which was never PUT", index));
    push(it->second);
  }

  void load_reduce() {
    const Value* args = pop("REDUCE");
    const Value* callable = pop("REDUCE");
    if (callable->kind != Kind::Global) {
      fail(fmt::format("REDUCE calls a {}, expected an allowed GLOBAL", kind_name(callable->kind)));
    }
    if (args->kind != Kind::Tuple) {
      fail(fmt::format("REDUCE arguments are a {}, expected a tuple", kind_name(args->kind)));
    }
    if (callable->is_global(GlobalId::CodecsEncode)) {
      push(codecs_encode(*args));
      return;
    }
    Value* obj = make(Kind::Object);
    obj->callable = callable;
    obj->args = args;
    push(obj);
  }

  // _codecs.encode(text, 'latin1'): Python 3's protocol-2 spelling of a bytes object. The text
  // arrives as UTF-8 of code points below 256; decode it back to those bytes.
  const Value* codecs_encode(const Value& args) {
    if (args.items.size() != 2 || args.items[0]->kind != Kind::Str || !args.items[1]->is_text()) {
      fail("_codecs.encode expects (str, encoding)");
    }
    const auto encoding = args.items[1]->text;
    if (encoding != "latin1" && encoding != "latin-1" && encoding != "iso-8859-1") {
      fail(fmt::format("_codecs.encode with encoding '{}', expected 'latin1'", printable(encoding)));
    }
    const std::string_view in = args.items[0]->text;
    const auto* src = reinterpret_cast<const unsigned char*>(in.data());
    const std::size_t size = in.size();
    if (!is_latin1_utf8(src, size)) {
      fail("_codecs.encode text is not latin-1 (a character above U+00FF or bad UTF-8)");
    }
    std::string& out = doc_.owned_.emplace_back();
    out.resize(size);  // never more bytes than the UTF-8 input, which is in bounds
    auto* dst = reinterpret_cast<unsigned char*>(out.data());
    // Pixel bytes are random, so half of them take the two-byte form and a branchy decoder
    // mispredicts constantly. Branch-free instead: every input byte writes its decoded value
    // at dst[n], and only non-continuation bytes advance n.
    std::size_t n = 0;
    for (std::size_t j = 0; j + 1 < size; ++j) {
      const unsigned c = src[j];
      const unsigned mask = 0u - (c >> 7);  // all ones for a lead or continuation byte
      const unsigned wide = ((c & 0x03u) << 6) | (src[j + 1] & 0x3fu);
      dst[n] = static_cast<unsigned char>((c & ~mask) | (wide & mask));
      n += 1u - ((c & 0xc0u) == 0x80u);
    }
    if (size > 0 && src[size - 1] < 0x80) dst[n++] = src[size - 1];  // else a continuation
    out.resize(n);
    Value* v = make(Kind::Bytes);
    v->text = out;
    return v;
  }

  Document& doc_;
  const std::uint8_t* data_;
  std::size_t size_;
  Limits limits_;
  std::size_t pos_ = 0;
  std::size_t op_pos_ = 0;
  std::size_t pushes_ = 0;
  std::vector<const Value*> stack_;
  std::vector<std::size_t> marks_;
  std::unordered_map<std::uint64_t, const Value*> memo_;
};

Document::Document(const std::uint8_t* data, std::size_t size, std::string what, const Limits& limits)
    : what_(std::move(what)) {
  Parser parser(*this, data, size, limits);
  root_ = parser.run();
}

const Value* dict_find(const Value& dict, std::string_view key) {
  if (dict.kind != Kind::Dict) return nullptr;
  for (std::size_t i = dict.items.size(); i >= 2; i -= 2) {
    const Value* k = dict.items[i - 2];
    if (k->is_text() && k->text == key) return dict.items[i - 1];
  }
  return nullptr;
}

namespace {

std::string describe(const Value& v) {
  if (v.kind == Kind::Global) return fmt::format("global {}.{}", printable(v.text), printable(v.name));
  if (v.kind == Kind::Object && v.callable != nullptr) {
    return fmt::format("object from {}.{}", printable(v.callable->text), printable(v.callable->name));
  }
  if (v.is_text()) return fmt::format("{} '{}'", kind_name(v.kind), printable(v.text));
  return kind_name(v.kind);
}

const Value& item(const Value& tuple, std::size_t i) { return *tuple.items[i]; }

}  // namespace

ByteMatrix as_uint8_matrix(const Value& value, const std::string& what, std::string_view key) {
  auto fail = [&](const std::string& message) -> void {
    throw DataError(fmt::format("bad array in {} key '{}': {}", what, printable(key), message));
  };
  if (value.kind != Kind::Object || !value.callable->is_global(GlobalId::Reconstruct) ||
      value.args->items.size() != 3 || !item(*value.args, 0).is_global(GlobalId::Ndarray)) {
    fail(fmt::format("expected a numpy array, found {}", describe(value)));
  }
  const Value* state = value.state;
  if (state == nullptr || state->kind != Kind::Tuple) {
    fail("numpy array without a BUILD state tuple");
  }
  // numpy writes (version, shape, dtype, is_fortran, data); very old numpy drops the version.
  std::size_t base = 0;
  if (state->items.size() == 5) {
    if (item(*state, 0).kind != Kind::Int || item(*state, 0).integer != 1) {
      fail(fmt::format("numpy array state version is {}, expected 1", describe(item(*state, 0))));
    }
    base = 1;
  } else if (state->items.size() != 4) {
    fail(fmt::format("numpy array state has {} items, expected 5", state->items.size()));
  }
  const Value& shape = item(*state, base);
  const Value& dtype = item(*state, base + 1);
  const Value& fortran = item(*state, base + 2);
  const Value& data = item(*state, base + 3);

  if (shape.kind != Kind::Tuple) fail(fmt::format("array shape is a {}, expected a tuple", kind_name(shape.kind)));
  if (shape.items.size() != 2) fail(fmt::format("array is {}-D, expected 2-D", shape.items.size()));
  for (const Value* d : shape.items) {
    if (d->kind != Kind::Int || d->integer < 0) fail(fmt::format("bad array dimension {}", describe(*d)));
  }

  if (dtype.kind != Kind::Object || !dtype.callable->is_global(GlobalId::Dtype) ||
      dtype.args->items.empty() || !item(*dtype.args, 0).is_text()) {
    fail(fmt::format("array dtype is {}, expected numpy.dtype", describe(dtype)));
  }
  const auto type = item(*dtype.args, 0).text;
  if (type != "u1" && type != "|u1") {
    fail(fmt::format("dtype is '{}', expected uint8 ('u1')", printable(type)));
  }
  // dtype state (version, byteorder, subarray, names, fields, elsize, alignment, flags):
  // a plain u1 has no subarray or fields.
  if (dtype.state != nullptr) {
    const Value* s = dtype.state;
    if (s->kind != Kind::Tuple || s->items.size() < 5 || !item(*s, 1).is_text() ||
        item(*s, 2).kind != Kind::None || item(*s, 3).kind != Kind::None ||
        item(*s, 4).kind != Kind::None) {
      fail("dtype 'u1' has an unexpected state (subarray or fields): not a plain uint8 array");
    }
  }

  if ((fortran.kind != Kind::Bool && fortran.kind != Kind::Int) || fortran.integer != 0) {
    fail("array is in Fortran order, expected C order");
  }
  if (!data.is_text()) fail(fmt::format("array data is a {}, expected bytes", kind_name(data.kind)));

  const auto rows = static_cast<std::uint64_t>(item(shape, 0).integer);
  const auto cols = static_cast<std::uint64_t>(item(shape, 1).integer);
  if (cols != 0 && rows > data.text.size() / cols + 1) {
    fail(fmt::format("array shape {}x{} needs more than the {} data bytes", rows, cols, data.text.size()));
  }
  if (rows * cols != data.text.size()) {
    fail(fmt::format("array shape {}x{} needs {} bytes, data holds {}", rows, cols, rows * cols,
                     data.text.size()));
  }
  ByteMatrix m;
  m.data = reinterpret_cast<const std::uint8_t*>(data.text.data());
  m.rows = static_cast<std::size_t>(rows);
  m.cols = static_cast<std::size_t>(cols);
  return m;
}

}  // namespace imgstore::detail::pickle
