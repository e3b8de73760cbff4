// CIFAR .tar.gz archives read in place: round trips, member order, hostile members, bad input.
#include <doctest/doctest.h>

#include <algorithm>

#include "cifar100_fixtures.hpp"
#include "cifar100_python_fixtures.hpp"
#include "fixtures.hpp"
#include "imgstore/convert.hpp"
#include "imgstore/error.hpp"
#include "imgstore/store.hpp"
#include "imgstore/source.hpp"
#include "ingest/sources.hpp"
#include "test_support.hpp"

using namespace imgstore;
namespace fs = std::filesystem;
using fixtures::TarMember;

namespace {

using test::drain;
using test::slurp;
using test::spit;

constexpr std::size_t kPerBatch = 50;

// The regular members of a CIFAR-10 binary fixture, as "cifar-10-batches-bin/<name>".
std::vector<TarMember> cifar10_members(const fs::path& dir, std::vector<std::string> order) {
  std::vector<TarMember> members;
  for (const auto& name : order) {
    members.push_back({"cifar-10-batches-bin/" + name, TarMember::Type::File,
                       slurp(dir / name), {}});
  }
  return members;
}

}  // namespace

TEST_CASE("CIFAR-10 binary tar.gz round-trips bit-exact, read in place") {
  test::TempDir tmp;
  fixtures::write_cifar10_binary(tmp / "cifar-10-batches-bin", kPerBatch);
  const auto archive = tmp / "cifar-10-binary.tar.gz";
  fixtures::write_tar_gz(tmp / "cifar-10-batches-bin", "cifar-10-batches-bin", archive);
  fs::remove_all(tmp / "cifar-10-batches-bin");
  auto source = open_source(archive.string());
  CHECK(source->description().find("CIFAR-10 binary archive") != std::string::npos);
  test::check_cifar10_source(*source, kPerBatch, {37});
  CHECK(test::list_dir(tmp.path()) == std::vector<std::string>{"cifar-10-binary.tar.gz"});
}

TEST_CASE("CIFAR-10 binary tar.gz in the authors' shuffled member order") {
  test::TempDir tmp;
  const auto dir = tmp / "bin";
  fixtures::write_cifar10_binary(dir, kPerBatch);
  // The real archive's order: split members out of order, so streams must re-scan.
  auto members = cifar10_members(
      dir, {"data_batch_4.bin", "readme.html", "test_batch.bin", "data_batch_3.bin",
            "batches.meta.txt", "data_batch_2.bin", "data_batch_5.bin", "data_batch_1.bin"});
  members.insert(members.begin(), {"cifar-10-batches-bin/", TarMember::Type::Directory, {}, {}});
  const auto archive = tmp / "c.tgz";
  fixtures::write_tar_gz_members(archive, members);
  auto source = open_source(archive.string());
  test::check_cifar10_source(*source, kPerBatch, {37});

  // Two streams over one archive, interleaved, each stay correct.
  auto train = source->open("train");
  auto test = source->open("test");
  ImageBatch a, b;
  std::vector<std::int64_t> train_labels, test_labels;
  for (bool more_a = true, more_b = true; more_a || more_b;) {
    if (more_a && (more_a = train->next(a, 20))) {
      train_labels.insert(train_labels.end(), a.labels.begin(), a.labels.end());
    }
    if (more_b && (more_b = test->next(b, 7))) {
      test_labels.insert(test_labels.end(), b.labels.begin(), b.labels.end());
    }
  }
  CHECK(train_labels == fixtures::cifar10_expected("train", kPerBatch).labels);
  CHECK(test_labels == fixtures::cifar10_expected("test", kPerBatch).labels);
}

TEST_CASE("CIFAR-100 binary tar.gz gives fine or coarse labels") {
  test::TempDir tmp;
  fixtures::write_cifar100_binary(tmp / "cifar-100-binary", 90, 30);
  const auto archive = tmp / "cifar-100-binary.tar.gz";
  fixtures::write_tar_gz(tmp / "cifar-100-binary", "cifar-100-binary", archive);
  test::check_cifar100_source(archive, "CIFAR-100 binary archive", 90, 30, 64);
}

TEST_CASE("CIFAR archive ignores absolute, '..', symlink and hardlink members") {
  test::TempDir tmp;
  const auto dir = tmp / "bin";
  fixtures::write_cifar10_binary(dir, kPerBatch);
  const std::string garbage(kPerBatch * 3073, '\x7f');  // labels 127: would fail if read
  std::vector<TarMember> members{
      {"../evil", TarMember::Type::File, "pwned", {}},
      {"cifar-10-batches-bin/../../data_batch_1.bin", TarMember::Type::File, garbage, {}},
      {"/tmp/cifar-10-batches-bin/data_batch_2.bin", TarMember::Type::File, garbage, {}},
      {"cifar-10-batches-bin/test_batch.bin", TarMember::Type::Symlink, {}, "/etc/passwd"},
      {"cifar-10-batches-bin/data_batch_3.bin", TarMember::Type::Hardlink, {},
       "/etc/shadow"},
      {"cifar-10-batches-bin/evil-link", TarMember::Type::Symlink, {}, "../../evil"},
  };
  auto good = cifar10_members(dir, {"batches.meta.txt", "data_batch_1.bin", "data_batch_2.bin",
                                    "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin",
                                    "test_batch.bin"});
  members.insert(members.end(), good.begin(), good.end());
  const auto archive = tmp / "sub" / "evil.tar.gz";
  fs::create_directories(archive.parent_path());
  fixtures::write_tar_gz_members(archive, members);

  auto source = open_source(archive.string());
  test::check_cifar10_source(*source, kPerBatch, {37});
  CHECK_FALSE(fs::exists(tmp / "evil"));
  CHECK_FALSE(fs::exists(tmp / "sub" / "evil"));
  CHECK(test::list_dir(tmp / "sub") == std::vector<std::string>{"evil.tar.gz"});

  // A required member present only as a symlink counts as missing: it is never followed.
  std::vector<TarMember> linked = cifar10_members(
      dir, {"batches.meta.txt", "data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
            "data_batch_4.bin", "data_batch_5.bin"});
  linked.push_back({"cifar-10-batches-bin/test_batch.bin", TarMember::Type::Symlink, {},
                    "data_batch_1.bin"});
  fixtures::write_tar_gz_members(archive, linked);
  CHECK_THROWS_WITH_AS(open_source(archive.string()),
                       doctest::Contains("lacks the member 'cifar-10-batches-bin/test_batch.bin'"),
                       DataError);
}

TEST_CASE("CIFAR archive rejects missing, duplicate, truncated members and bad labels") {
  test::TempDir tmp;
  const auto dir = tmp / "bin";
  fixtures::write_cifar10_binary(dir, kPerBatch);
  const auto archive = tmp / "bad.tar.gz";
  const std::vector<std::string> all{"batches.meta.txt", "data_batch_1.bin", "data_batch_2.bin",
                                     "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin",
                                     "test_batch.bin"};

  SUBCASE("missing batch member") {
    auto names = all;
    names.erase(names.begin() + 3);
    fixtures::write_tar_gz_members(archive, cifar10_members(dir, names));
    CHECK_THROWS_WITH_AS(open_source(archive.string()),
                         doctest::Contains("bad.tar.gz' lacks the member "
                                           "'cifar-10-batches-bin/data_batch_3.bin'"),
                         DataError);
  }
  SUBCASE("missing class names member") {
    fixtures::write_tar_gz_members(
        archive, cifar10_members(dir, {all.begin() + 1, all.end()}));
    CHECK_THROWS_WITH_AS(open_source(archive.string()),
                         doctest::Contains("lacks the member "
                                           "'cifar-10-batches-bin/batches.meta.txt'"),
                         DataError);
  }
  SUBCASE("no CIFAR members at all") {
    fixtures::write_tar_gz_members(archive,
                                   {{"stuff/readme.txt", TarMember::Type::File, "hi", {}}});
    CHECK_THROWS_WITH_AS(open_source(archive.string()),
                         doctest::Contains("bad.tar.gz' holds no CIFAR members"), DataError);
  }
  SUBCASE("duplicate member") {
    auto members = cifar10_members(dir, all);
    members.push_back({"other/data_batch_1.bin", TarMember::Type::File, slurp(dir / all[1]), {}});
    fixtures::write_tar_gz_members(archive, members);
    CHECK_THROWS_WITH_AS(open_source(archive.string()),
                         doctest::Contains("two members named 'data_batch_1.bin'"), DataError);
  }
  SUBCASE("truncated member") {
    auto members = cifar10_members(dir, all);
    members[2].data.resize(members[2].data.size() - 10);
    fixtures::write_tar_gz_members(archive, members);
    CHECK_THROWS_WITH_AS(open_source(archive.string()),
                         doctest::Contains("bad.tar.gz' member 'cifar-10-batches-bin/"
                                           "data_batch_2.bin' is truncated or has the wrong "
                                           "record size: 153640 bytes"),
                         DataError);
  }
  SUBCASE("over-long member") {
    auto members = cifar10_members(dir, all);
    members[6].data += members[6].data.substr(0, 3073);
    fixtures::write_tar_gz_members(archive, members);
    CHECK_THROWS_WITH_AS(open_source(archive.string()),
                         doctest::Contains("member 'cifar-10-batches-bin/test_batch.bin' holds "
                                           "51 records, but its sibling"),
                         DataError);
  }
  SUBCASE("label past the class count") {
    auto members = cifar10_members(dir, all);
    members[5].data[12 * 3073] = static_cast<char>(200);  // data_batch_5.bin record 12
    fixtures::write_tar_gz_members(archive, members);
    auto source = open_source(archive.string());
    CHECK_THROWS_WITH_AS(drain(*source, "train"),
                         doctest::Contains("member 'cifar-10-batches-bin/data_batch_5.bin' record "
                                           "12 (split index 212): label 200, expected 0..9"),
                         DataError);
  }
}

TEST_CASE("CIFAR archive: corrupt or truncated gzip gives a DataError naming the archive") {
  test::TempDir tmp;
  fixtures::write_cifar10_binary(tmp / "bin", kPerBatch);
  const auto archive = tmp / "cifar-10-binary.tar.gz";
  fixtures::write_tar_gz(tmp / "bin", "cifar-10-batches-bin", archive);
  const auto good = slurp(archive);

  std::string why;
  SUBCASE("bytes flipped mid-stream") {
    // libarchive's own gzip filter would pass these (it skips the CRC); ours must not.
    auto bad = good;
    for (std::size_t i = bad.size() / 2; i < bad.size() / 2 + 64; ++i) bad[i] = ~bad[i];
    spit(archive, bad);
    why = "corrupt gzip stream";
  }
  SUBCASE("one byte flipped in the last block") {
    auto bad = good;
    bad[bad.size() - 100] ^= 0x01;
    spit(archive, bad);
    why = "corrupt gzip stream";
  }
  SUBCASE("truncated") {
    spit(archive, good.substr(0, good.size() / 3));
    why = "gzip stream is truncated";
  }
  SUBCASE("not an archive at all") {
    spit(archive, std::string(4096, 'x'));
    why = "Unrecognized archive format";  // libarchive's text
  }
  const std::string named = "archive '" + archive.string() + "': " + why;
  CHECK_THROWS_WITH_AS(open_source(archive.string()), doctest::Contains(named.c_str()), DataError);
  CHECK_THROWS_AS(open_source((tmp / "missing.tar.gz").string()), IoError);
}

TEST_CASE("CIFAR-10 python tar.gz round-trips bit-exact") {
  test::TempDir tmp;
  fixtures::write_cifar10_python(tmp / "py", kPerBatch);
  const auto archive = tmp / "cifar-10-python.tar.gz";
  fixtures::write_tar_gz(tmp / "py", "cifar-10-batches-py", archive);
  auto source = open_source(archive.string());
  CHECK(source->description().find("CIFAR-10 python archive") != std::string::npos);
  test::check_cifar10_source(*source, kPerBatch, {37});

  // A python archive lacking a batch is refused by member name.
  fs::remove(tmp / "py" / "data_batch_5");
  fixtures::write_tar_gz(tmp / "py", "cifar-10-batches-py", archive);
  CHECK_THROWS_WITH_AS(open_source(archive.string()),
                       doctest::Contains("lacks the member 'cifar-10-batches-py/data_batch_5'"),
                       DataError);
}

TEST_CASE("CIFAR-100 python tar.gz gives fine or coarse labels") {
  test::TempDir tmp;
  fixtures::write_cifar100_python(tmp / "py", 70, 20);
  const auto archive = tmp / "cifar-100-python.tar.gz";
  fixtures::write_tar_gz(tmp / "py", "cifar-100-python", archive);
  test::check_cifar100_source(archive, "CIFAR-100 python archive", 70, 20, 16);
}

TEST_CASE("CIFAR-10 binary tar.gz converts to PNG, LMDB and HDF5 stores bit-exact") {
  test::TempDir tmp;
  fixtures::write_cifar10_binary(tmp / "bin", 12);
  const auto archive = tmp / "cifar-10-binary.tar.gz";
  fixtures::write_tar_gz(tmp / "bin", "cifar-10-batches-bin", archive);
  auto source = open_source(archive.string());
  ConvertOptions options;
  options.batch_records = 33;
  options.writer.durable = false;  // fsync is not what this test is about, and it is slow
  for (const char* split : {"train", "test"}) {
    CAPTURE(split);
    const auto expected = fixtures::cifar10_expected(split, 12);
    const auto result = convert_split(*source, split, tmp / "out", options);
    CHECK(result.count == expected.size());
    REQUIRE(result.formats.size() == 3);
    for (const auto& f : result.formats) {
      CAPTURE(f.path.string());
      auto reader = open_store(f.path);
      REQUIRE(reader->size() == expected.size());
      CHECK(reader->manifest().class_names == fixtures::cifar10_class_names());
      CHECK(reader->shape() == (Shape{32, 32, 3}));
      std::vector<std::uint64_t> indices(expected.size());
      for (std::size_t i = 0; i < indices.size(); ++i) indices[i] = i;
      std::vector<std::uint8_t> pixels(expected.pixels.size());
      std::vector<std::int64_t> labels(expected.size());
      reader->read_many(indices.data(), indices.size(), pixels.data(), labels.data());
      CHECK(pixels == expected.pixels);
      CHECK(labels == expected.labels);
    }
  }
}
