// Writes the seed corpus of every fuzz target from the fixture writers and the store writers:
//   imgstore_fuzz_seeds <tests/fuzz/corpus>
// Seeds are small (< 64 KiB) and deterministic; the committed corpus was made with this tool
// (plus a few hand-made files, see README.md).
#include <lmdb.h>
#include <zlib.h>

#include <array>
#include <cstdio>
#include <fstream>
#include <iterator>

#include "cifar100_fixtures.hpp"
#include "cifar100_python_fixtures.hpp"
#include "detail/png_codec.hpp"
#include "fixtures.hpp"
#include "formats/formats.hpp"
#include "fuzz_common.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

namespace {

fs::path g_corpus;
constexpr std::size_t kMaxSeed = 64 * 1024 - 1;

std::string slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void seed(const std::string& target, const std::string& name, const std::string& bytes) {
  if (bytes.size() > kMaxSeed) {
    std::fprintf(stderr, "skipping %s/%s: %zu bytes\n", target.c_str(), name.c_str(), bytes.size());
    return;
  }
  fs::create_directories(g_corpus / target);
  fuzz::write_file(g_corpus / target / name, bytes);
}

std::string pack(const fs::path& dir, const std::vector<std::string>& names) {
  std::string out;
  for (std::size_t i = 0; i < names.size(); ++i) {
    if (i) out += fuzz::kPartSeparator;
    out += slurp(dir / names[i]);
  }
  return out;
}

std::string gunzip(const std::string& gz) {
  z_stream z{};
  inflateInit2(&z, 15 + 16);
  std::string out;
  char buf[1 << 16];
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(gz.data()));
  z.avail_in = static_cast<uInt>(gz.size());
  int rc;
  do {
    z.next_out = reinterpret_cast<Bytef*>(buf);
    z.avail_out = sizeof buf;
    rc = inflate(&z, Z_NO_FLUSH);
    out.append(buf, sizeof buf - z.avail_out);
  } while (rc == Z_OK);
  inflateEnd(&z);
  return out;
}

const std::vector<std::string> kNames10 = {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"};

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: %s <corpus dir>\n", argv[0]);
    return 2;
  }
  g_corpus = argv[1];
  const fs::path tmp = fuzz::fresh_dir("seeds");

  // ---- CIFAR binary folders ----
  const std::vector<std::string> c10bin = {"batches.meta.txt", "data_batch_1.bin",
                                           "data_batch_2.bin", "data_batch_3.bin",
                                           "data_batch_4.bin", "data_batch_5.bin",
                                           "test_batch.bin"};
  const std::vector<std::string> c100bin = {"fine_label_names.txt", "coarse_label_names.txt",
                                            "train.bin", "test.bin"};
  fixtures::write_cifar10_binary(tmp / "c10bin1", 1);
  fixtures::write_cifar10_binary(tmp / "c10bin2", 2);
  fixtures::write_cifar100_binary(tmp / "c100bin", 3, 2);
  seed("cifar_binary", "cifar10_1_per_batch", pack(tmp / "c10bin1", c10bin));
  seed("cifar_binary", "cifar10_2_per_batch", pack(tmp / "c10bin2", c10bin));
  seed("cifar_binary", "cifar100_3_2", pack(tmp / "c100bin", c100bin));
  seed("cifar_binary", "cifar10_names_only", slurp(tmp / "c10bin1" / "batches.meta.txt"));

  // ---- CIFAR python pickles ----
  fixtures::write_cifar10_python(tmp / "c10py", 2);
  fixtures::write_cifar100_python(tmp / "c100py", 2, 1);
  for (const char* t : {"pickle", "cifar_pickle"}) {
    seed(t, "cifar10_data_batch_1", slurp(tmp / "c10py" / "data_batch_1"));
    seed(t, "cifar10_batches_meta", slurp(tmp / "c10py" / "batches.meta"));
    seed(t, "cifar100_train", slurp(tmp / "c100py" / "train"));
    seed(t, "cifar100_meta", slurp(tmp / "c100py" / "meta"));
  }

  // ---- IDX ----
  fixtures::write_idx(tmp / "idx", "train", fixtures::make_images(3, Shape{28, 28, 1}, 10, 1),
                      false);
  fixtures::write_idx(tmp / "idx4", "train", fixtures::make_images(2, Shape{5, 6, 3}, 10, 2),
                      false);
  fixtures::write_idx(tmp / "idxgz", "train", fixtures::make_images(3, Shape{28, 28, 1}, 10, 1),
                      true);
  const std::vector<std::string> idx = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte"};
  const std::vector<std::string> idxgz = {"train-images-idx3-ubyte.gz",
                                          "train-labels-idx1-ubyte.gz"};
  for (const char* t : {"idx", "idx_gz"}) {
    seed(t, "mnist_3", pack(tmp / "idx", idx));
    seed(t, "idx4_rgb_2", pack(tmp / "idx4", idx));
    seed(t, "images_only", slurp(tmp / "idx" / idx[0]));
  }
  seed("idx_gz", "mnist_3_gzipped", pack(tmp / "idxgz", idxgz));

  // ---- tar.gz archives ----
  fixtures::write_tar_gz(tmp / "c10bin1", "cifar-10-batches-bin", tmp / "c10bin.tar.gz");
  fixtures::write_cifar10_python(tmp / "c10py1", 1);
  fixtures::write_tar_gz(tmp / "c10py1", "cifar-10-batches-py", tmp / "c10py.tar.gz");
  fixtures::write_cifar100_binary(tmp / "c100bin1", 1, 1);
  fixtures::write_tar_gz(tmp / "c100bin1", "cifar-100-binary", tmp / "c100bin.tar.gz");
  for (const char* a : {"c10bin", "c10py", "c100bin"}) {
    const std::string gz = slurp(tmp / (std::string(a) + ".tar.gz"));
    seed("archive", std::string(a) + ".tar.gz", gz);
    seed("archive", std::string(a) + ".tar", gunzip(gz));
  }

  // ---- PNG ----
  {
    int k = 0;
    for (const Shape s : {Shape{8, 8, 1}, Shape{8, 8, 2}, Shape{8, 8, 3}, Shape{8, 8, 4},
                          Shape{3, 17, 3}, Shape{32, 32, 3}}) {
      const auto img = fixtures::make_images(1, s, 10, 3 + k);
      std::vector<std::uint8_t> png;
      detail::encode_png(img.pixels.data(), s, k % 2 ? 0 : 6, png);
      seed("png_decode", "encoded_" + to_string(s), std::string(png.begin(), png.end()));
      ++k;
    }
  }

  // ---- stores ----
  const ImageBatch images = fixtures::make_images(3, Shape{4, 5, 3}, 10, 7);
  WriterOptions quick;
  quick.durable = false;
  {
    // PNG folder: labels.csv and manifest.json.
    store_many(Format::PngFolder, tmp / "train.png", images, kNames10, quick);
    seed("labels_csv", "labels.csv", slurp(tmp / "train.png" / "labels.csv"));
    std::string crlf;
    for (char ch : slurp(tmp / "train.png" / "labels.csv")) {
      if (ch == '\n') crlf += '\r';
      crlf += ch;
    }
    seed("labels_csv", "labels_crlf.csv", crlf);
    seed("manifest", "png_manifest.json", slurp(tmp / "train.png" / "manifest.json"));
  }
  {
    // LMDB: every value of the same template the fuzz target builds, with its mode byte.
    // Template 2 is format version 2 (mode bit 4): variable-size JPEG records.
    for (int variant = 0; variant < 3; ++variant) {  // 0 raw, 1 png, 2 v2 jpeg
      const bool png = variant == 1;
      WriterOptions o = quick;
      o.encoding = png ? Encoding::Png : Encoding::Raw;
      const bool v2 = variant == 2;
      const fs::path path = v2 ? fuzz::write_lmdb_v2_template(tmp)
                               : tmp / (png ? "png.lmdb" : "raw.lmdb");
      if (!v2) store_many(Format::Lmdb, path, images, kNames10, o);
      MDB_env* env = nullptr;
      mdb_env_create(&env);
      mdb_env_set_maxdbs(env, 4);
      mdb_env_open(env, path.c_str(), MDB_RDONLY, 0644);
      MDB_txn* txn = nullptr;
      mdb_txn_begin(env, nullptr, MDB_RDONLY, &txn);
      MDB_dbi main_db, meta_db;
      mdb_dbi_open(txn, nullptr, 0, &main_db);
      mdb_dbi_open(txn, "__imgstore__", 0, &meta_db);
      for (unsigned which = 0; which < 4; ++which) {
        std::string key = which == 3 ? std::string("manifest") : detail::record_key(which);
        MDB_val k{key.size(), key.data()};
        MDB_val v;
        if (mdb_get(txn, which == 3 ? meta_db : main_db, &k, &v) != MDB_SUCCESS) {
          std::fprintf(stderr, "lmdb seed: no key %s\n", key.c_str());
          return 1;
        }
        const std::string value(static_cast<const char*>(v.mv_data), v.mv_size);
        const unsigned mode = (v2 ? 16u : static_cast<unsigned>(png)) | (which << 1);
        const std::string name = std::string(v2 ? "v2jpeg_" : png ? "png_" : "raw_") + key;
        seed("lmdb_value", name, std::string(1, static_cast<char>(mode)) + value);
        if (which != 3) {
          seed("lmdb_value", name + "_fixhash", std::string(1, static_cast<char>(mode | 8)) + value);
        } else if (v2) {
          seed("manifest", "lmdb_v2_manifest.json", value);
        } else if (!png) {
          seed("manifest", "lmdb_manifest.json", value);
        }
      }
      mdb_txn_abort(txn);
      mdb_env_close(env);
    }
  }
  {
    // HDF5: contiguous, chunked, chunked + deflate.
    WriterOptions chunked = quick;
    chunked.hdf5.chunk_records = 2;
    WriterOptions deflate = chunked;
    deflate.hdf5.deflate = 6;
    const std::array<std::pair<const char*, WriterOptions>, 3> variants = {
        {{"contiguous.h5", quick}, {"chunked.h5", chunked}, {"deflate.h5", deflate}}};
    for (const auto& [name, o] : variants) {
      store_many(Format::Hdf5, tmp / name, images, kNames10, o);
      seed("hdf5", name, slurp(tmp / name));
    }
    // Format version 2, the ragged layout: fixed-size JPEG records, and variable-size raw ones.
    WriterOptions jpeg = quick;
    jpeg.encoding = Encoding::Jpeg;
    store_many(Format::Hdf5, tmp / "ragged_jpeg.h5", images, kNames10, jpeg);
    seed("hdf5", "ragged_jpeg.h5", slurp(tmp / "ragged_jpeg.h5"));
    ImageBatch sizes;
    sizes.shape = Shape{0, 0, 3};
    sizes.offsets.push_back(0);
    for (const Shape& s : {Shape{4, 5, 3}, Shape{2, 3, 3}, Shape{6, 1, 3}}) {
      sizes.shapes.push_back(s);
      for (std::size_t k = 0; k < s.bytes(); ++k) sizes.pixels.push_back(static_cast<std::uint8_t>(k * 7));
      sizes.offsets.push_back(sizes.pixels.size());
      sizes.labels.push_back(static_cast<std::int64_t>(sizes.labels.size()));
    }
    StoreSpec spec;
    spec.split = "ragged";
    spec.count = sizes.size();
    spec.shape = sizes.shape;
    spec.class_names = kNames10;
    spec.variable_size = true;
    auto writer = create_store(Format::Hdf5, tmp / "ragged_raw.h5", spec, quick);
    writer->write(sizes);
    writer->commit();
    seed("hdf5", "ragged_raw.h5", slurp(tmp / "ragged_raw.h5"));
  }
  std::error_code ec;
  fs::remove_all(tmp, ec);
  return 0;
}
