// The safe pickle reader: what it accepts, and that hostile or broken input only ever gives a
// DataError naming the file and byte offset.
#include <doctest/doctest.h>

#include <random>
#include <string>

#include "cifar100_python_fixtures.hpp"
#include "fixtures.hpp"
#include "imgstore/error.hpp"
#include "ingest/cifar_pickle.hpp"
#include "ingest/pickle.hpp"

using namespace imgstore;
using namespace imgstore::detail::pickle;
using namespace std::string_literals;

namespace {

const std::uint8_t* bytes_of(const std::string& s) {
  return reinterpret_cast<const std::uint8_t*>(s.data());
}

// Parses and returns nothing: for CHECK_THROWS.
void parse(const std::string& s, const Limits& limits = {}) {
  Document doc(bytes_of(s), s.size(), "'t.pkl'", limits);
}

std::string le32(std::uint32_t v) {
  std::string out;
  for (int i = 0; i < 4; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

std::string le64(std::uint64_t v) {
  std::string out;
  for (int i = 0; i < 8; ++i) out += static_cast<char>((v >> (8 * i)) & 0xff);
  return out;
}

// A small but complete CIFAR-10-style batch (3 records), as the fixture writes it.
std::string small_batch() {
  auto images = fixtures::make_images(3, Shape{32, 32, 3}, 10, 7);
  auto chw = fixtures::hwc_to_chw(images.pixels.data(), images.size());
  fixtures::Py2Pickler p;
  p.empty_dict();
  p.mark();
  p.string("batch_label");
  p.string("training batch 1 of 5");
  p.string("labels");
  p.int_list(images.labels);
  p.string("data");
  p.numpy_array(chw.data(), chw.size(), 3, 3072);
  p.string("filenames");
  p.string_list({"a_s_000001.png", "b_s_000002.png", "c_s_000003.png"});
  p.setitems();
  return p.finish();
}

}  // namespace

TEST_CASE("pickle: protocol 2 dict with memo, ints, strings, lists and tuples") {
  fixtures::Py2Pickler q;
  q.empty_dict();
  q.mark();
  q.string("ints");
  q.int_list({0, 255, 256, 65535, 65536, -1, 2147483647});
  q.string("again");
  q.raw("h\x03"s);  // BINGET of the "ints" list (memo: dict 1, "ints" 2, list 3)
  q.string("t");
  q.raw("K\x01N\x88\x87"s);  // (1, None, True)
  q.setitems();
  const std::string good = q.finish();
  Document doc(bytes_of(good), good.size(), "'t.pkl'");
  const Value& root = doc.root();
  REQUIRE(root.kind == Kind::Dict);
  const Value* ints = dict_find(root, "ints");
  REQUIRE(ints != nullptr);
  REQUIRE(ints->kind == Kind::List);
  std::vector<std::int64_t> got;
  for (const Value* v : ints->items) got.push_back(v->integer);
  CHECK(got == std::vector<std::int64_t>{0, 255, 256, 65535, 65536, -1, 2147483647});
  CHECK(dict_find(root, "again") == ints);  // the memo shares one value
  const Value* t = dict_find(root, "t");
  REQUIRE(t != nullptr);
  REQUIRE(t->kind == Kind::Tuple);
  REQUIRE(t->items.size() == 3);
  CHECK(t->items[0]->integer == 1);
  CHECK(t->items[1]->kind == Kind::None);
  CHECK(t->items[2]->kind == Kind::Bool);
  CHECK(dict_find(root, "missing") == nullptr);
}

TEST_CASE("pickle: protocol 4 FRAME, MEMOIZE, unicode and bytes, LONG1") {
  const std::string body = "}\x94(\x8c\x01k\x94"s + "C\x03" "abc\x94" "\x8c\x01n\x94" "\x8a\x02\x18\xfc" +
                           "\x8c\x01u\x94X\x02\x00\x00\x00\xc3\xa9" "\x8c\x01g\x94h\x02" "u."s;
  const std::string s = "\x80\x04\x95"s + le64(body.size()) + body;
  Document doc(bytes_of(s), s.size(), "'t.pkl'");
  const Value& root = doc.root();
  REQUIRE(root.kind == Kind::Dict);
  const Value* k = dict_find(root, "k");
  REQUIRE(k != nullptr);
  CHECK(k->kind == Kind::Bytes);
  CHECK(k->text == "abc");
  CHECK(dict_find(root, "n")->integer == -1000);
  CHECK(dict_find(root, "u")->kind == Kind::Str);
  CHECK(dict_find(root, "u")->text == "\xc3\xa9");
  CHECK(dict_find(root, "g") == k);  // memo: dict 0, "k" 1, b"abc" 2
}

TEST_CASE("pickle: _codecs.encode(str, 'latin1') becomes the latin-1 bytes") {
  const std::string s = "\x80\x02" "c_codecs\nencode\nq\x00" "X\x04\x00\x00\x00\xc3\xbf" "A\x00"s +
                        "X\x06\x00\x00\x00latin1\x86R."s;
  Document doc(bytes_of(s), s.size(), "'t.pkl'");
  CHECK(doc.root().kind == Kind::Bytes);
  CHECK(doc.root().text == "\xff" "A\x00"s);

  const std::string wide = "\x80\x02" "c_codecs\nencode\n" "X\x02\x00\x00\x00\xc4\x80"s +
                           "X\x06\x00\x00\x00latin1\x86R."s;
  CHECK_THROWS_WITH_AS(parse(wide), doctest::Contains("not latin-1"), DataError);
  // Every latin-1 text of mixed lengths decodes exactly, and each kind of bad UTF-8, placed at
  // every position (the decoder validates 8 bytes at a time), is refused.
  auto encode_pickle = [](const std::string& utf8) {
    return "\x80\x02" "c_codecs\nencode\nX"s + le32(static_cast<std::uint32_t>(utf8.size())) +
           utf8 + "X\x06\x00\x00\x00latin1\x86R."s;
  };
  std::mt19937_64 rng(99);
  for (std::size_t len = 0; len < 40; ++len) {
    std::string latin1, utf8;
    for (std::size_t i = 0; i < len; ++i) {
      const auto c = static_cast<unsigned char>(rng() % 3 == 0 ? rng() % 128 : rng() % 256);
      latin1 += static_cast<char>(c);
      if (c < 0x80) {
        utf8 += static_cast<char>(c);
      } else {
        utf8 += static_cast<char>(0xc0 | (c >> 6));
        utf8 += static_cast<char>(0x80 | (c & 0x3f));
      }
    }
    const std::string ok = encode_pickle(utf8);
    Document d(bytes_of(ok), ok.size(), "'t.pkl'");
    CHECK(d.root().text == latin1);
    for (std::size_t pos = 0; pos <= utf8.size(); ++pos) {
      for (const std::string& evil : {"\xc4\x80"s, "\x80"s, "\xc3"s, "\xc3" "A"s, "\xe2\x82\xac"s}) {
        const std::string broken = encode_pickle(utf8.substr(0, pos) + evil + utf8.substr(pos));
        // Inserting inside a two-byte sequence breaks it too; either way it must be refused.
        CHECK_THROWS_WITH_AS(parse(broken), doctest::Contains("not latin-1"), DataError);
      }
    }
  }

  const std::string utf8 = "\x80\x02" "c_codecs\nencode\n" "X\x01\x00\x00\x00" "a"s +
                           "X\x05\x00\x00\x00utf-8\x86R."s;
  CHECK_THROWS_WITH_AS(parse(utf8), doctest::Contains("encoding 'utf-8'"), DataError);
}

TEST_CASE("pickle: unknown opcode is named with its offset and the file") {
  CHECK_THROWS_WITH_AS(parse("\x80\x02\xff."s), doctest::Contains("'t.pkl' at byte 2: unknown opcode 0xff"),
                       DataError);
  // Protocol 0 text opcodes are not part of what CIFAR files use.
  CHECK_THROWS_WITH_AS(parse("\x80\x02I1\n."s), doctest::Contains("unknown opcode 0x49"), DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x07N."s), doctest::Contains("unsupported pickle protocol 7"),
                       DataError);
}

TEST_CASE("pickle: forbidden GLOBAL and STACK_GLOBAL name module.name, file and offset") {
  const std::string os_system = "\x80\x02N" "cos\nsystem\nX\x02\x00\x00\x00ls\x85R."s;
  CHECK_THROWS_WITH_AS(parse(os_system),
                       doctest::Contains("corrupt pickle in 't.pkl' at byte 3: forbidden GLOBAL 'os.system'"),
                       DataError);
  const std::string builtins = "\x80\x02" "c__builtin__\neval\n."s;
  CHECK_THROWS_WITH_AS(parse(builtins), doctest::Contains("'__builtin__.eval'"), DataError);
  const std::string stack_global = "\x80\x04\x8c\x02os\x94\x8c\x06system\x94\x93."s;
  CHECK_THROWS_WITH_AS(parse(stack_global),
                       doctest::Contains("at byte 16: forbidden STACK_GLOBAL 'os.system'"), DataError);
  // Allowed names are matched exactly, not by prefix.
  CHECK_THROWS_WITH_AS(parse("\x80\x02" "cnumpy\ndtypes\n."s), doctest::Contains("'numpy.dtypes'"),
                       DataError);
  // Non-printable names are escaped in the message.
  CHECK_THROWS_WITH_AS(parse("\x80\x02" "cx\x01y\nz\n."s), doctest::Contains("'x\\x01y.z'"), DataError);
  // An allowed GLOBAL still may not be REDUCEd into anything but an object.
  CHECK_THROWS_WITH_AS(parse("\x80\x02N)R."s), doctest::Contains("REDUCE calls a None"), DataError);
}

TEST_CASE("pickle: absurd declared lengths are refused before any allocation") {
  CHECK_THROWS_WITH_AS(parse("\x80\x02T"s + le32(0x7fffffff) + "abc."),
                       doctest::Contains("BINSTRING declares 2147483647 bytes but only 4 remain"),
                       DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x02T"s + le32(0x80000000u) + "abc."),
                       doctest::Contains("negative length"), DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x03" "B"s + le32(0xffffffffu) + "."),
                       doctest::Contains("BINBYTES declares 4294967295 bytes"), DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x04\x8e"s + le64(~std::uint64_t{0} >> 1) + "."),
                       doctest::Contains("BINBYTES8 declares 9223372036854775807 bytes"), DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x04\x8d"s + le64(~std::uint64_t{0}) + "."),
                       doctest::Contains("BINUNICODE8 declares"), DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x02X"s + le32(1u << 31) + "."),
                       doctest::Contains("BINUNICODE declares 2147483648 bytes"), DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x04\x95"s + le64(std::uint64_t{1} << 40) + "N."),
                       doctest::Contains("FRAME declares 1099511627776 bytes"), DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x04\x8a\x09" "123456789."s),
                       doctest::Contains("does not fit in 64 bits"), DataError);
}

TEST_CASE("pickle: stack, mark, memo and size limits") {
  CHECK_THROWS_WITH_AS(parse("\x80\x02" + std::string(100, '(') + "N."),
                       doctest::Contains("more than 64 nested MARKs"), DataError);
  Limits small;
  small.max_values = 10;
  CHECK_THROWS_WITH_AS(parse("\x80\x02" + std::string(11, 'N') + "."s, small),
                       doctest::Contains("more than 10 values"), DataError);
  small = Limits{};
  small.max_memo = 2;
  CHECK_THROWS_WITH_AS(parse("\x80\x02Nq\x01q\x02q\x03."s, small),
                       doctest::Contains("more than 2 memo entries"), DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x02h\x05."s), doctest::Contains("memo GET of index 5"), DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x02j\x05\x00\x00\x01."s),
                       doctest::Contains("memo GET of index 16777221"), DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x02" "Na."s), doctest::Contains("stack underflow in APPEND"),
                       DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x02" "NNa."s), doctest::Contains("APPEND applied to a None"),
                       DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x02}(Nu."s), doctest::Contains("odd number"), DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x02]N(e."s), doctest::Contains("APPENDS applied to a None"),
                       DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x02N(\x85."s), doctest::Contains("TUPLE1 needs 1 stack items"),
                       DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x02Ne."s), doctest::Contains("APPENDS without a MARK"), DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x02."s), doctest::Contains("STOP with an empty stack"), DataError);
  CHECK_THROWS_WITH_AS(parse(""), doctest::Contains("truncated"), DataError);
  // BUILD on a plain value, twice on one object.
  CHECK_THROWS_WITH_AS(parse("\x80\x02]Nb."s), doctest::Contains("BUILD applied to a list"), DataError);
  CHECK_THROWS_WITH_AS(parse("\x80\x02" "cnumpy\ndtype\nX\x02\x00\x00\x00u1\x85RNbNb."s),
                       doctest::Contains("BUILD applied twice"), DataError);
}

TEST_CASE("pickle: every truncation of a batch is a DataError saying so") {
  const std::string s = small_batch();
  REQUIRE_NOTHROW(detail::parse_cifar_pickle_batch(bytes_of(s), s.size(), "labels", "'b'"));
  std::size_t checked = 0;
  for (std::size_t cut = 0; cut < s.size(); cut += (cut < 400 || cut + 400 > s.size()) ? 1 : 97) {
    const std::string part = s.substr(0, cut);
    CHECK_THROWS_WITH_AS(detail::parse_cifar_pickle_batch(bytes_of(part), part.size(), "labels", "'b'"),
                         doctest::Contains("truncated"), DataError);
    ++checked;
  }
  CHECK(checked > 800);
}

TEST_CASE("pickle: random garbage and corrupted batches never crash") {
  std::mt19937_64 rng(12345);
  // Opcode-heavy garbage: random picks from the bytes the reader knows, plus random bytes.
  const std::string known = "(.JKMNRTUXabcehjq]rstu})BC\x80\x85\x86\x87\x88\x89\x8a\x8c\x8d\x8e\x93\x94\x95"s;
  std::size_t errors = 0, parsed = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    std::string s = "\x80\x02"s;
    const int n = 1 + static_cast<int>(rng() % 48);
    for (int i = 0; i < n; ++i) {
      s += (rng() % 3 != 0) ? known[rng() % known.size()] : static_cast<char>(rng());
    }
    try {
      parse(s);
      ++parsed;
    } catch (const DataError&) {
      ++errors;
    }
  }
  CHECK(errors + parsed == 4000);
  CHECK(errors > 0);

  const std::string base = small_batch();
  std::size_t ok = 0, bad = 0;
  for (int iter = 0; iter < 1500; ++iter) {
    std::string s = base;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int f = 0; f < flips; ++f) {
      // Hit the structure (outside the pixel payload) more often than not.
      const std::size_t pos = (rng() % 2 != 0) ? rng() % 400 : rng() % s.size();
      s[pos] = static_cast<char>(rng());
    }
    try {
      auto batch = detail::parse_cifar_pickle_batch(bytes_of(s), s.size(), "labels", "'b'");
      CHECK(batch.pixels_hwc.size() == batch.count * 3072);
      ++ok;
    } catch (const DataError&) {
      ++bad;
    }
  }
  CHECK(ok + bad == 1500);
  CHECK(bad > 0);
}
