// LMDB store values. A valid 3-record store (raw or PNG payloads) is copied, one value in it
// is replaced by the fuzz bytes, and the store is opened and read whole.
// Input: byte 0 chooses  bit 0: template (0 raw, 1 png payloads)
//                        bit 4: template of format version 2 instead (variable-size records,
//                               JPEG payloads); bit 0 is then ignored
//                        bits 1-2: value replaced (0..2: record key, 3: the manifest)
//                        bit 3: fix up the payload xxh3 in the header (so the fuzzer gets
//                               past the hash check into payload decoding)
// then the new value. Reads run with checksum verification on and off.
#include <lmdb.h>

#include <array>
#include <iterator>

#include "fixtures.hpp"
#include "formats/formats.hpp"
#include "fuzz_common.hpp"
#include "imgstore/checksum.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

namespace {

constexpr std::size_t kRecords = 3;

// Format version 2: the shared template of fuzz_common.hpp, made once.
const fs::path& variable_jpeg_template() {
  static const fs::path path = fuzz::write_lmdb_v2_template(fuzz::fresh_dir("lmdb-v2-template"));
  return path;
}

const fs::path& template_store(bool png) {
  static const std::array<fs::path, 2> paths = [] {
    const auto dir = fuzz::fresh_dir("lmdb-templates");
    const ImageBatch images = fixtures::make_images(kRecords, Shape{4, 5, 3}, 10, 7);
    std::array<fs::path, 2> out = {dir / "raw.lmdb", dir / "png.lmdb"};
    for (int i = 0; i < 2; ++i) {
      WriterOptions options;
      options.durable = false;
      options.encoding = i ? Encoding::Png : Encoding::Raw;
      store_many(Format::Lmdb, out[i], images, {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"},
                 options);
    }
    return out;
  }();
  return paths[png ? 1 : 0];
}

std::string read_all(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (!in.good() && !in.eof()) fuzz::fail("cannot read the template store");
  return bytes;
}

void check(int rc, const char* what) {
  if (rc != MDB_SUCCESS) {
    std::fprintf(stderr, "%s: %s\n", what, mdb_strerror(rc));
    fuzz::fail("lmdb call on the scratch copy failed");
  }
}

// Replaces one value in the LMDB environment at `dir` with the raw LMDB C API.
void put_value(const fs::path& dir, unsigned which, std::string value) {
  MDB_env* env = nullptr;
  check(mdb_env_create(&env), "mdb_env_create");
  check(mdb_env_set_maxdbs(env, 4), "mdb_env_set_maxdbs");
  check(mdb_env_set_mapsize(env, std::size_t{64} << 20), "mdb_env_set_mapsize");
  check(mdb_env_open(env, dir.c_str(), 0, 0644), "mdb_env_open");
  MDB_txn* txn = nullptr;
  check(mdb_txn_begin(env, nullptr, 0, &txn), "mdb_txn_begin");
  MDB_dbi dbi;
  std::string key;
  if (which == 3) {
    check(mdb_dbi_open(txn, "__imgstore__", 0, &dbi), "mdb_dbi_open meta");
    key = "manifest";
  } else {
    check(mdb_dbi_open(txn, nullptr, 0, &dbi), "mdb_dbi_open main");
    key = detail::record_key(which);
  }
  MDB_val k{key.size(), key.data()};
  MDB_val v{value.size(), value.data()};
  check(mdb_put(txn, dbi, &k, &v, 0), "mdb_put");
  check(mdb_txn_commit(txn), "mdb_txn_commit");
  mdb_env_close(env);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  const unsigned mode = data[0];
  std::string value(reinterpret_cast<const char*>(data + 1), size - 1);
  const unsigned which = (mode >> 1) & 3;
  if ((mode & 8) && which != 3 && value.size() >= 32) {
    const std::uint64_t h = xxh3_64(value.data() + 32, value.size() - 32);
    for (int i = 0; i < 8; ++i) value[24 + i] = static_cast<char>(h >> (8 * i));
  }
  // The template's data.mdb, read once. Copied through streams: std::filesystem::copy gives
  // up on EINTR, which libFuzzer's timer signals cause.
  static const std::string templates[3] = {read_all(template_store(false) / "data.mdb"),
                                           read_all(template_store(true) / "data.mdb"),
                                           read_all(variable_jpeg_template() / "data.mdb")};
  const auto store = fuzz::fresh_dir("lmdb") / "train.lmdb";
  fs::create_directories(store);
  fuzz::write_file(store / "data.mdb", templates[(mode & 16) ? 2 : (mode & 1)]);
  put_value(store, which, std::move(value));

  for (bool verify : {true, false}) {
    try {
      ReaderOptions options;
      options.verify_checksums = verify;
      fuzz::drain_store(*open_store(store, options));
    } catch (const Error&) {
    }
  }
  return 0;
}
