// CIFAR-10/100 python folders: the Python 2 cPickle files round-trip bit-exact, Python 3
// re-pickles (protocols 2, 3, 4) read the same, and bad batches are refused by file and key.
#include <doctest/doctest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iterator>

#include "cifar100_fixtures.hpp"
#include "cifar100_python_fixtures.hpp"
#include "fixtures.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"
#include "ingest/cifar_pickle.hpp"
#include "ingest/sources.hpp"
#include "test_support.hpp"

using namespace imgstore;
using namespace std::string_literals;
namespace fs = std::filesystem;

namespace {

using test::slurp;
using test::spit;

const std::uint8_t* bytes_of(const std::string& s) {
  return reinterpret_cast<const std::uint8_t*>(s.data());
}

void check_cifar10_folder(const fs::path& dir, std::size_t records_per_batch,
                          const std::vector<std::string>& names) {
  auto source = open_source(dir.string());
  CHECK(source->description().find("CIFAR-10 python") != std::string::npos);
  test::check_cifar10_source(*source, records_per_batch, {700}, names);
}

struct BadBatch {
  std::vector<std::int64_t> labels = {1, 2};
  std::size_t rows = 2;
  std::size_t cols = 3072;
  std::size_t data_bytes = 2 * 3072;
  std::string dtype = "u1";
  std::string label_key = "labels";
};

std::string make_batch(const BadBatch& b) {
  std::vector<std::uint8_t> data(b.data_bytes, 7);
  fixtures::Py2Pickler p;
  p.empty_dict();
  p.mark();
  p.string(b.label_key);
  p.int_list(b.labels);
  p.string("data");
  p.numpy_array(data.data(), data.size(), b.rows, b.cols, b.dtype);
  p.setitems();
  return p.finish();
}

void parse_batch(const std::string& s, const std::string& key = "labels") {
  detail::parse_cifar_pickle_batch(bytes_of(s), s.size(), key, "'bad_batch'");
}

bool python_with_numpy() {
  return ::access("/usr/bin/python3", X_OK) == 0 &&
         std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") == 0;
}

// Loads the fixture as a Python 3 user would (encoding='bytes'), then re-dumps each file with
// str keys at protocols 2, 3 and 4. Also writes numpy's own HWC view of the training pixels.
const char* const kRepickleScript = R"PY(
import os, pickle, sys
import numpy as np
src, dst = sys.argv[1], sys.argv[2]
files = ['data_batch_%d' % i for i in range(1, 6)] + ['test_batch', 'batches.meta']
for proto in (2, 3, 4):
    out = os.path.join(dst, 'p%d' % proto)
    os.makedirs(out)
    for name in files:
        with open(os.path.join(src, name), 'rb') as f:
            d = pickle.load(f, encoding='bytes')
        d = {k.decode(): v for k, v in d.items()}
        if 'label_names' in d and proto >= 3:
            d['label_names'] = [n.decode() for n in d['label_names']]
        with open(os.path.join(out, name), 'wb') as f:
            pickle.dump(d, f, protocol=proto)
with open(os.path.join(dst, 'train_hwc.bin'), 'wb') as px, \
     open(os.path.join(dst, 'train_labels.bin'), 'wb') as lb:
    for i in range(1, 6):
        with open(os.path.join(src, 'data_batch_%d' % i), 'rb') as f:
            d = pickle.load(f, encoding='bytes')
        a = d[b'data']
        assert a.dtype == np.uint8 and a.ndim == 2 and a.shape[1] == 3072, (a.dtype, a.shape)
        assert len(d[b'labels']) == a.shape[0]
        px.write(a.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).tobytes())
        lb.write(bytes(d[b'labels']))
)PY";

}  // namespace

TEST_CASE("cifar python: fixture folder round-trips bit-exact with class names") {
  test::TempDir tmp;
  const auto dir = tmp / "cifar-10-batches-py";
  // 1001 records: labels go out as a MARK..APPENDS group of 1000 and a lone APPEND, and the
  // memo passes 255 (LONG_BINPUT).
  fixtures::write_cifar10_python(dir, 1001);
  CHECK(test::list_dir(dir) == std::vector<std::string>{"batches.meta", "data_batch_1",
                                                         "data_batch_2", "data_batch_3",
                                                         "data_batch_4", "data_batch_5",
                                                         "readme.html", "test_batch"});
  const std::string raw = slurp(dir / "data_batch_1");
  CHECK(raw.compare(0, 5, "\x80\x02}q\x01"s) == 0);
  CHECK(raw.find("r\x00\x01\x00\x00"s) != std::string::npos);  // LONG_BINPUT 256
  CHECK(raw.find("U\x15training batch 1 of 5"s) != std::string::npos);
  check_cifar10_folder(dir, 1001, fixtures::cifar10_class_names());

  // The same through the parse functions directly.
  auto batch = detail::parse_cifar_pickle_batch(bytes_of(raw), raw.size(), "labels", "'b1'");
  const auto train = fixtures::cifar10_expected("train", 1001);
  REQUIRE(batch.count == 1001);
  CHECK(std::equal(batch.pixels_hwc.begin(), batch.pixels_hwc.end(), train.pixels.begin()));
  CHECK(std::equal(batch.labels.begin(), batch.labels.end(), train.labels.begin()));
  const std::string meta = slurp(dir / "batches.meta");
  CHECK(detail::parse_cifar_pickle_names(bytes_of(meta), meta.size(), "label_names", "'m'") ==
        fixtures::cifar10_class_names());
}

TEST_CASE("cifar python: Python 3 re-pickles at protocols 2, 3 and 4 read the same") {
  if (!python_with_numpy()) {
    MESSAGE("skipped: /usr/bin/python3 with numpy is not available");
    return;
  }
  test::TempDir tmp;
  const std::size_t n = 40;
  const auto src = tmp / "cifar-10-batches-py";
  fixtures::write_cifar10_python(src, n);
  spit(tmp / "repickle.py", kRepickleScript);
  const std::string cmd = "/usr/bin/python3 '" + (tmp / "repickle.py").string() + "' '" +
                          src.string() + "' '" + tmp.path().string() + "'";
  REQUIRE(std::system(cmd.c_str()) == 0);

  // numpy's reading of our fixture is what we meant to write.
  const auto train = fixtures::cifar10_expected("train", n);
  const std::string hwc = slurp(tmp / "train_hwc.bin");
  const std::string labels = slurp(tmp / "train_labels.bin");
  REQUIRE(hwc.size() == train.pixels.size());
  CHECK(std::equal(train.pixels.begin(), train.pixels.end(), bytes_of(hwc)));
  REQUIRE(labels.size() == train.labels.size());
  for (std::size_t i = 0; i < labels.size(); ++i) {
    CHECK(static_cast<std::int64_t>(static_cast<unsigned char>(labels[i])) == train.labels[i]);
  }

  const auto names = fixtures::cifar10_class_names();
  for (int proto : {2, 3, 4}) {
    CAPTURE(proto);
    const auto dir = tmp / ("p" + std::to_string(proto));
    const std::string raw = slurp(dir / "data_batch_1");
    REQUIRE(raw.size() > 3);
    CHECK(static_cast<unsigned char>(raw[1]) == proto);
    if (proto == 2) CHECK(raw.find("c_codecs\nencode\n") != std::string::npos);
    if (proto == 3) CHECK(raw.find("C\x01" "b") != std::string::npos);  // SHORT_BINBYTES b'b'
    if (proto == 4) {
      CHECK(static_cast<unsigned char>(raw[2]) == 0x95);  // FRAME
      CHECK(raw.find('\x93') != std::string::npos);       // STACK_GLOBAL
    }
    check_cifar10_folder(dir, n, names);
  }
}

TEST_CASE("cifar python: CIFAR-100 folder with fine and coarse labels") {
  test::TempDir tmp;
  const auto dir = tmp / "cifar-100-python";
  fixtures::write_cifar100_python(dir, 60, 25);
  test::check_cifar100_source(dir, "CIFAR-100 python", 60, 25, 16);
  SourceOptions bad;
  bad.label_set = "medium";
  CHECK_THROWS_AS(open_source(dir.string(), bad), UsageError);
}

TEST_CASE("cifar python: wrong dtype, shape and payload size are refused by file and key") {
  BadBatch wrong_dtype;
  wrong_dtype.dtype = "i1";
  CHECK_THROWS_WITH_AS(parse_batch(make_batch(wrong_dtype)),
                       doctest::Contains("'bad_batch' key 'data': dtype is 'i1', expected uint8"),
                       DataError);
  BadBatch floats;
  floats.dtype = "<f8";
  floats.data_bytes = 2 * 3072 * 8;
  CHECK_THROWS_WITH_AS(parse_batch(make_batch(floats)), doctest::Contains("dtype is '<f8'"),
                       DataError);
  BadBatch narrow;
  narrow.cols = 1024;
  narrow.data_bytes = 2 * 1024;
  CHECK_THROWS_WITH_AS(parse_batch(make_batch(narrow)),
                       doctest::Contains("'bad_batch' key 'data': array is 2x1024, expected N x 3072"),
                       DataError);
  BadBatch short_data;
  short_data.data_bytes = 2 * 3072 - 1;
  CHECK_THROWS_WITH_AS(parse_batch(make_batch(short_data)),
                       doctest::Contains("needs 6144 bytes, data holds 6143"), DataError);
  BadBatch huge_shape;
  huge_shape.rows = std::size_t{1} << 30;
  CHECK_THROWS_WITH_AS(parse_batch(make_batch(huge_shape)), doctest::Contains("key 'data'"),
                       DataError);

  // Fortran order: NEWTRUE where the fixture writes NEWFALSE before the pixels.
  std::string fortran = make_batch(BadBatch{});
  const auto at = fortran.find("tb\x89T"s);
  REQUIRE(at != std::string::npos);
  fortran[at + 2] = '\x88';
  CHECK_THROWS_WITH_AS(parse_batch(fortran), doctest::Contains("Fortran order"), DataError);

  // 'data' holding something other than an array.
  fixtures::Py2Pickler p;
  p.empty_dict();
  p.mark();
  p.string("labels");
  p.int_list({1});
  p.string("data");
  p.int_list({1, 2});
  p.setitems();
  CHECK_THROWS_WITH_AS(parse_batch(p.finish()),
                       doctest::Contains("key 'data': expected a numpy array, found list"), DataError);
  CHECK_THROWS_WITH_AS(parse_batch("\x80\x02N."s), doctest::Contains("holds a None, expected a dict"),
                       DataError);
}

TEST_CASE("cifar python: labels must match rows and the class count") {
  BadBatch extra;
  extra.labels = {1, 2, 3};
  CHECK_THROWS_WITH_AS(parse_batch(make_batch(extra)),
                       doctest::Contains("'bad_batch' key 'labels': 3 labels for 2 images in 'data'"),
                       DataError);
  BadBatch past;
  past.labels = {3, 10};
  CHECK_THROWS_WITH_AS(parse_batch(make_batch(past)),
                       doctest::Contains("key 'labels': record 1 has label 10, expected 0..9"),
                       DataError);
  BadBatch negative;
  negative.labels = {-1, 0};
  CHECK_THROWS_WITH_AS(parse_batch(make_batch(negative)), doctest::Contains("label -1"), DataError);
  BadBatch fine;
  fine.label_key = "fine_labels";
  fine.labels = {99, 100};
  CHECK_THROWS_WITH_AS(parse_batch(make_batch(fine), "fine_labels"),
                       doctest::Contains("key 'fine_labels': record 1 has label 100, expected 0..99"),
                       DataError);
  BadBatch coarse;
  coarse.label_key = "coarse_labels";
  coarse.labels = {20, 0};
  CHECK_THROWS_WITH_AS(parse_batch(make_batch(coarse), "coarse_labels"),
                       doctest::Contains("record 0 has label 20, expected 0..19"), DataError);
  CHECK_THROWS_WITH_AS(parse_batch(make_batch(BadBatch{}), "fine_labels"),
                       doctest::Contains("'bad_batch': no key 'fine_labels'"), DataError);
}

TEST_CASE("cifar python: broken folders are refused naming the file") {
  test::TempDir tmp;
  const auto dir = tmp / "cifar-10-batches-py";
  fixtures::write_cifar10_python(dir, 30);

  {  // truncated batch, several cut points
    const std::string good = slurp(dir / "data_batch_2");
    for (std::size_t cut : {std::size_t{0}, std::size_t{1}, std::size_t{40}, good.size() / 2,
                            good.size() - 1}) {
      CAPTURE(cut);
      spit(dir / "data_batch_2", good.substr(0, cut));
      CHECK_THROWS_WITH_AS(open_source(dir.string()),
                           doctest::Contains(((dir / "data_batch_2").string() + "' at byte").c_str()),
                           DataError);
    }
    spit(dir / "data_batch_2", good);
  }
  {  // a forbidden GLOBAL in a batch file
    const std::string good = slurp(dir / "test_batch");
    spit(dir / "test_batch", "\x80\x02" "cos\nsystem\nU\x02lsq\x01\x85R."s);
    CHECK_THROWS_WITH_AS(open_source(dir.string()),
                         doctest::Contains("test_batch' at byte 2: forbidden GLOBAL 'os.system'"),
                         DataError);
    spit(dir / "test_batch", good);
  }
  {  // wrong number of class names
    const std::string good = slurp(dir / "batches.meta");
    fixtures::Py2Pickler p;
    p.empty_dict();
    p.mark();
    p.string("label_names");
    auto names = fixtures::cifar10_class_names();
    names.pop_back();
    p.string_list(names);
    p.setitems();
    spit(dir / "batches.meta", p.finish());
    CHECK_THROWS_WITH_AS(open_source(dir.string()),
                         doctest::Contains("batches.meta' key 'label_names': 9 names, expected 10"),
                         DataError);
    spit(dir / "batches.meta", good);
  }
  {
    auto source = open_source(dir.string());
    CHECK_THROWS_AS(source->open("validation"), UsageError);
  }
  fs::remove(dir / "data_batch_3");
  CHECK_THROWS_WITH_AS(open_source(dir.string()),
                       doctest::Contains("split 'train' lacks data_batch_3"), DataError);
  // A folder holding only the test split is fine.
  for (int b : {1, 2, 4, 5}) fs::remove(dir / ("data_batch_" + std::to_string(b)));
  auto source = open_source(dir.string());
  REQUIRE(source->splits().size() == 1);
  CHECK(source->splits()[0].name == "test");
  fs::remove(dir / "batches.meta");
  CHECK_THROWS_WITH_AS(open_source(dir.string()), doctest::Contains("has no batches.meta"),
                       DataError);
}
