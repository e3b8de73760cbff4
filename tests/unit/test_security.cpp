// Hostile input that must never execute anything or write outside the output directory:
// pickles that would run code, and stores whose manifest split name is a path.
// (Archive members with absolute paths, '..' and links: test_cifar_archive.cpp; through the
// CLI with real Python pickles: tests/cli/test_security.sh.)
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "fixtures.hpp"
#include "imgstore/convert.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"
#include "imgstore/store.hpp"
#include "ingest/pickle.hpp"
#include "test_support.hpp"

using namespace imgstore;
using namespace std::string_literals;
namespace fs = std::filesystem;

namespace {

void parse(const std::string& s) {
  detail::pickle::Document doc(reinterpret_cast<const std::uint8_t*>(s.data()), s.size(),
                               "'evil.pkl'");
}

std::string binunicode(const std::string& s) {
  std::string out = "X";
  for (int i = 0; i < 4; ++i) out += static_cast<char>((s.size() >> (8 * i)) & 0xff);
  return out + s;
}

}  // namespace

TEST_CASE("security: pickles that would run a command are refused and run nothing") {
  test::TempDir tmp;
  const fs::path marker = tmp / "pwned";
  const std::string cmd = binunicode("touch " + marker.string());
  // What pickle.dumps of an object whose __reduce__ returns (os.system, (cmd,)) looks like, in
  // each opcode family a pickle can name a callable with.
  const std::vector<std::pair<std::string, std::string>> cases{
      {"GLOBAL posix.system + REDUCE", "\x80\x02" "cposix\nsystem\n"s + cmd + "\x85R."},
      {"GLOBAL os.system + REDUCE", "\x80\x02" "cos\nsystem\n"s + cmd + "\x85R."},
      {"GLOBAL builtins.eval", "\x80\x03" "cbuiltins\neval\n"s + binunicode("1") + "\x85R."},
      {"GLOBAL subprocess.call", "\x80\x02" "csubprocess\ncall\n"s + cmd + "\x85R."},
      {"STACK_GLOBAL posix.system",
       "\x80\x04\x8c\x05posix\x94\x8c\x06system\x94\x93"s + cmd + "\x85R."},
      {"STACK_GLOBAL names from the memo",
       "\x80\x04\x8c\x05posix\x94\x8c\x06system\x94h\x00h\x01\x93"s + cmd + "\x85R."},
      {"allowed module, other name", "\x80\x02" "cnumpy\nload\n"s + cmd + "\x85R."},
      {"allowed name, other module", "\x80\x02" "cos\ndtype\n"s + cmd + "\x85R."},
      {"name with a NUL", "\x80\x02" "cnumpy\x00os\ndtype\n"s + cmd + "\x85R."},
  };
  for (const auto& [what, bytes] : cases) {
    CAPTURE(what);
    CHECK_THROWS_WITH_AS(parse(bytes), doctest::Contains("forbidden"), DataError);
  }
  CHECK_FALSE(fs::exists(marker));
}

TEST_CASE("security: opcodes that call, import or fetch objects are unknown to the reader") {
  // INST and OBJ (protocol 0/1 calls), NEWOBJ/NEWOBJ_EX (cls.__new__), EXT1/2/4 (the copyreg
  // extension registry), PERSID/BINPERSID (persistent_load), and protocol 5's out-of-band
  // buffers: none is needed for CIFAR, so each is refused by name before doing anything.
  const std::vector<std::pair<std::string, std::string>> cases{
      {"INST", "\x80\x02(iposix\nsystem\n"s + binunicode("true") + "."},
      {"OBJ", "\x80\x02(N"s + binunicode("true") + "o."},
      {"NEWOBJ", "\x80\x02N)\x81."s},
      {"NEWOBJ_EX", "\x80\x04N)}\x92."s},
      {"EXT1", "\x80\x02\x82\x01."s},
      {"EXT2", "\x80\x02\x83\x01\x00."s},
      {"EXT4", "\x80\x02\x84\x01\x00\x00\x00."s},
      {"PERSID", "\x80\x02Pfoo\n."s},
      {"BINPERSID", "\x80\x02NQ."s},
      {"BYTEARRAY8", "\x80\x05\x96\x00\x00\x00\x00\x00\x00\x00\x00."s},
      {"NEXT_BUFFER", "\x80\x05\x97."s},
      {"READONLY_BUFFER", "\x80\x05N\x98."s},
      {"protocol 0 STRING", "S'x'\np0\n."s},
  };
  for (const auto& [what, bytes] : cases) {
    CAPTURE(what);
    CHECK_THROWS_WITH_AS(parse(bytes), doctest::Contains("unknown opcode"), DataError);
  }
}

TEST_CASE("security: an allowed global REDUCEd with odd arguments builds nothing callable") {
  // numpy.dtype applied to a tuple holding a global is only recorded, never evaluated; the
  // CIFAR layer then refuses it as a dtype.
  const std::string s = "\x80\x02" "cnumpy\ndtype\n" "cnumpy\nndarray\n\x85R."s;
  detail::pickle::Document doc(reinterpret_cast<const std::uint8_t*>(s.data()), s.size(), "'d'");
  CHECK(doc.root().kind == detail::pickle::Kind::Object);
  CHECK_THROWS_WITH_AS(detail::pickle::as_uint8_matrix(doc.root(), "'d'", "data"),
                       doctest::Contains("expected a numpy array"), DataError);
}

TEST_CASE("security: a store whose manifest split is a path cannot make convert write outside "
          "the output directory") {
  const auto images = fixtures::make_images(6, Shape{4, 4, 1}, 3, 9);
  for (Format format : all_formats()) {
    for (const std::string split : {"../escaped", "/tmp/imgstore-escaped", "a/b", "..", ".",
                                    "back\\slash", "ctl\x01"}) {
      CAPTURE(to_string(format));
      CAPTURE(split);
      test::TempDir tmp;
      fs::create_directories(tmp / "in");
      const fs::path store = tmp / "in" / store_file_name("src", format);
      StoreSpec spec;
      spec.split = split;  // what a hand-edited or hostile manifest may say
      spec.source = "test";
      spec.count = images.size();
      spec.shape = images.shape;
      auto writer = create_store(format, store, spec);
      test::write_in_batches(*writer, images, 0);
      REQUIRE(open_store(store)->manifest().split == split);

      const fs::path out = tmp / "deep" / "out";
      CHECK_THROWS_WITH_AS(open_source(store.string()), doctest::Contains("not a plain name"),
                           DataError);
      CHECK_FALSE(fs::exists(out));
      CHECK(test::list_dir(tmp.path()) == std::vector<std::string>{"in"});
      CHECK_FALSE(fs::exists("/tmp/imgstore-escaped.png"));
      CHECK_FALSE(fs::exists("/tmp/imgstore-escaped.lmdb"));
      CHECK_FALSE(fs::exists("/tmp/imgstore-escaped.h5"));
    }
  }
}

TEST_CASE("security: store splits that are plain names still convert") {
  test::TempDir tmp;
  const auto images = fixtures::make_images(5, Shape{4, 4, 3}, 3, 2);
  StoreSpec spec;
  spec.split = "train-v2.a b";
  spec.source = "test";
  spec.count = images.size();
  spec.shape = images.shape;
  auto writer = create_store(Format::Lmdb, tmp / "x.lmdb", spec);
  test::write_in_batches(*writer, images, 0);
  auto source = open_source((tmp / "x.lmdb").string());
  ConvertOptions options;
  options.formats = {Format::Hdf5};
  auto result = convert_split(*source, "train-v2.a b", tmp / "out", options);
  CHECK(result.formats.at(0).path == tmp / "out" / "train-v2.a b.h5");
  CHECK(test::list_dir(tmp / "out") == std::vector<std::string>{"train-v2.a b.h5"});
}
