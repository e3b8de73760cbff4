// The loader and the datasets with crop transforms, over an in-memory variable-size JPEG store
// built from skimage's photos (the container formats come with the writer side).
#include <doctest/doctest.h>

#include <cstdlib>

#include <fstream>
#include <iterator>
#include <set>

#include "codecs/image_codec.hpp"
#include "codecs/resample.hpp"
#include "detail/random.hpp"
#include "imgstore/torch/loader.hpp"
#include "torch_test_support.hpp"

using namespace imgstore;

namespace {

// Variable-size records holding JPEG bytes, as the LMDB/HDF5 JPEG stores return them.
class JpegMemoryReader : public StoreReader {
 public:
  struct Record {
    Shape shape;
    std::int64_t label = 0;
    std::vector<std::uint8_t> jpeg;
  };

  explicit JpegMemoryReader(std::vector<Record> records)
      : StoreReader("photos.lmdb", make_manifest(records), ReaderOptions{}),
        records_(std::move(records)) {}

  std::int64_t read_one(std::uint64_t, std::uint8_t*) const override {
    throw UsageError("variable-size store: use read_record");
  }
  Shape record_shape(std::uint64_t index) const override {
    check_index(index);
    return records_[index].shape;
  }
  void read_record(std::uint64_t index, EncodedRecord& out) const override {
    check_index(index);
    const Record& r = records_[index];
    out.shape = r.shape;
    out.label = r.label;
    out.encoding = Encoding::Jpeg;
    out.bytes.assign(r.jpeg.begin(), r.jpeg.end());
    if (index == corrupt_index) out.bytes.resize(out.bytes.size() / 3);  // truncated payload
  }

  std::uint64_t corrupt_index = ~std::uint64_t{0};

 private:
  static Manifest make_manifest(const std::vector<Record>& records) {
    Manifest m;
    m.format = Format::Lmdb;
    m.split = "photos";
    m.count = records.size();
    m.shape = Shape{0, 0, 3};
    m.variable_size = true;
    m.encoding = Encoding::Jpeg;
    m.class_names = {"a", "b", "c", "d"};
    for (const auto& r : records) m.checksums.push_back(record_checksum(r.jpeg.data(), r.jpeg.size(), r.label));
    m.content_digest = 0x1234;
    return m;
  }

  std::vector<Record> records_;
};

// `count` records: regions of four photos at sizes 40..300 px, JPEG quality 90; label = photo.
std::vector<JpegMemoryReader::Record> photo_records(std::size_t count) {
  const char* names[] = {"rocket.jpg", "astronaut.png", "chelsea.png", "coffee.png"};
  std::vector<imgstore::detail::DecodedImage> photos(4);
  for (int p = 0; p < 4; ++p) {
    const std::string path = std::string("/usr/lib/python3/dist-packages/skimage/data/") + names[p];
    std::ifstream in(path, std::ios::binary);
    REQUIRE_MESSAGE(in.good(), "python3-skimage's data is missing: " << path);
    const std::vector<std::uint8_t> bytes{std::istreambuf_iterator<char>(in), {}};
    imgstore::detail::decode_image(bytes.data(), bytes.size(), 3, path, photos[p]);
  }
  std::vector<JpegMemoryReader::Record> out;
  imgstore::detail::SplitMix rng(11);
  for (std::size_t i = 0; i < count; ++i) {
    const auto& ph = photos[i % 4];
    const std::uint32_t h = 40 + static_cast<std::uint32_t>(rng.below(260));
    const std::uint32_t w = 40 + static_cast<std::uint32_t>(rng.below(260));
    std::vector<std::uint8_t> px(std::size_t{h} * w * 3);
    imgstore::detail::resize(ph.pixels.data(), ph.shape.width, ph.shape.height, 3,
                   imgstore::detail::ResizeBox{0, 0, float(ph.shape.width), float(ph.shape.height)}, w, h,
                   px.data());
    JpegMemoryReader::Record r;
    r.shape = Shape{h, w, 3};
    r.label = static_cast<std::int64_t>(i % 4);
    imgstore::detail::encode_jpeg(px.data(), w, h, 3, 90, r.jpeg);
    out.push_back(std::move(r));
  }
  return out;
}

std::shared_ptr<JpegMemoryReader> photo_reader(std::size_t count = 40) {
  static const auto records = photo_records(64);
  return std::make_shared<JpegMemoryReader>(
      std::vector<JpegMemoryReader::Record>(records.begin(), records.begin() + count));
}

LoaderOptions rrc_options(unsigned threads, std::uint32_t size = 32) {
  LoaderOptions o;
  o.batch_size = 8;
  o.seed = 5;
  o.threads = threads;
  o.transform = CropTransform::random_resized_crop(size);
  o.horizontal_flip = true;
  return o;
}

std::vector<torch::Tensor> epoch_batches(PrefetchLoader& loader, std::uint64_t epoch) {
  loader.set_epoch(epoch);
  std::vector<torch::Tensor> out;
  for (auto& b : loader) out.push_back(b.data.clone());
  return out;
}

}  // namespace

TEST_CASE("crop loader: variable-size JPEG records become [B,C,S,S] batches") {
  auto reader = photo_reader();
  PrefetchLoader loader(reader, rrc_options(2));
  std::size_t seen = 0;
  for (auto& b : loader) {
    CHECK(b.data.dtype() == torch::kUInt8);
    CHECK(b.data.size(1) == 3);
    CHECK(b.data.size(2) == 32);
    CHECK(b.data.size(3) == 32);
    seen += static_cast<std::size_t>(b.data.size(0));
  }
  CHECK(seen == 40);
  LoaderOptions eval = rrc_options(1, 48);
  eval.transform = CropTransform::resize_center_crop(48);
  eval.horizontal_flip = false;
  eval.shuffle = false;
  eval.normalize = Normalize::mean_std({0.5f}, {0.25f});
  PrefetchLoader ev(reader, eval);
  auto first = *ev.begin();
  CHECK(first.data.dtype() == torch::kFloat32);
  CHECK(first.data.sizes() == torch::IntArrayRef({8, 3, 48, 48}));
  CHECK(first.target[1].item<std::int64_t>() == 1);
}

TEST_CASE("crop loader: the same batches at 1 and 2 threads, and the dataset agrees") {
  auto reader = photo_reader();
  PrefetchLoader one(reader, rrc_options(1));
  PrefetchLoader two(reader, rrc_options(2));
  for (std::uint64_t epoch : {0, 3}) {
    const auto a = epoch_batches(one, epoch), b = epoch_batches(two, epoch);
    REQUIRE(a.size() == b.size());
    for (std::size_t i = 0; i < a.size(); ++i) CHECK(torch::equal(a[i], b[i]));
  }
  // The dataset's get_batch makes the same crops for the same (seed, epoch, indices).
  CropTransform t = rrc_options(1).transform;
  t.flip_probability = 0.5;
  StoreDataset ds(reader, Normalize{}, t, 5);
  ds.set_epoch(3);
  const auto idx = two.epoch_indices(3);
  const auto batches = epoch_batches(two, 3);
  auto got = ds.read_batch(idx.data(), 8);
  CHECK(torch::equal(got.data, batches[0]));
  // Epochs differ.
  CHECK(!torch::equal(epoch_batches(one, 0)[0], epoch_batches(one, 1)[0]));
}

TEST_CASE("crop loader: exact resume and shards cover the store") {
  auto reader = photo_reader();
  PrefetchLoader full(reader, rrc_options(2));
  const auto want = epoch_batches(full, 2);
  PrefetchLoader first(reader, rrc_options(2));
  first.set_epoch(2);
  LoaderState saved;
  int k = 0;
  for (auto& b : first) {
    (void)b;
    if (++k == 2) {
      saved = first.state();
      break;
    }
  }
  PrefetchLoader resumed(reader, rrc_options(1));
  resumed.restore(saved);
  std::size_t i = 2;
  for (auto& b : resumed) CHECK(torch::equal(b.data, want[i++]));
  CHECK(i == want.size());
  std::set<std::uint64_t> seen;
  for (std::size_t rank = 0; rank < 2; ++rank) {
    LoaderOptions o = rrc_options(1);
    o.rank = rank;
    o.world_size = 2;
    PrefetchLoader shard(reader, o);
    for (auto& b : shard) CHECK(b.data.size(2) == 32);
    for (auto v : shard.epoch_indices(0)) seen.insert(v);
  }
  CHECK(seen.size() == 40);
}

TEST_CASE("crop loader: refusals and errors name the store and the record") {
  auto reader = photo_reader();
  LoaderOptions plain;
  CHECK_THROWS_WITH_AS(PrefetchLoader(reader, plain), doctest::Contains("'photos.lmdb' holds"),
                       UsageError);
  CHECK_THROWS_WITH_AS(PrefetchLoader(reader, plain), doctest::Contains("set a crop transform"),
                       UsageError);
  CHECK_THROWS_WITH_AS((void)StoreDataset{reader}, doctest::Contains("photos.lmdb"), UsageError);
  LoaderOptions padded = rrc_options(1);
  padded.crop_padding = 4;
  CHECK_THROWS_WITH_AS(PrefetchLoader(reader, padded), doctest::Contains("crop_padding"),
                       UsageError);
  reader->corrupt_index = 13;
  LoaderOptions o = rrc_options(2);
  o.shuffle = false;
  PrefetchLoader loader(reader, o);
  int batches = 0;
  try {
    for (auto& b : loader) {
      (void)b;
      ++batches;
    }
    FAIL("no error");
  } catch (const DataError& e) {
    CHECK(std::string(e.what()).find("record 13") != std::string::npos);
    CHECK(std::string(e.what()).find("photos.lmdb") != std::string::npos);
  }
  CHECK(batches == 1);  // batch 0 arrives, batch 1 holds record 13
}

TEST_CASE("crop loader: fixed-size raw stores crop too (RRC 16 of 32x32)") {
  auto reader = imgstore::test::memory_reader(20, 32, 32, 3);
  LoaderOptions o = rrc_options(2, 16);
  PrefetchLoader loader(reader, o);
  auto b = *loader.begin();
  CHECK(b.data.sizes() == torch::IntArrayRef({8, 3, 16, 16}));
  DatasetOptions dopts;
  dopts.transform = CropTransform::resize_center_crop(16, 32);  // whole image halved
  StoreDataset ds(reader, dopts.normalize, dopts.transform);
  auto stock = torch::data::make_data_loader(ds, torch::data::DataLoaderOptions().batch_size(5));
  std::size_t n = 0;
  for (auto& batch : *stock) {
    CHECK(batch.data.sizes() == torch::IntArrayRef({5, 3, 16, 16}));
    n += static_cast<std::size_t>(batch.data.size(0));
  }
  CHECK(n == 20);
}

TEST_CASE("crop loader: memory stays flat over many epochs") {
  auto reader = photo_reader(64);
  LoaderOptions o = rrc_options(2, 64);
  o.batch_size = 16;
  PrefetchLoader loader(reader, o);
  std::size_t baseline = 0;
  for (int epoch = 0; epoch < 30; ++epoch) {
    for (auto& b : loader) (void)b;
    if (epoch == 4) baseline = imgstore::test::rss_bytes();
  }
  const std::size_t after = imgstore::test::rss_bytes();
  MESSAGE("RSS after 5 epochs " << baseline / 1024 << " KiB, after 30 " << after / 1024 << " KiB");
  // Under ASan (scripts/sanitize.sh sets IMGSTORE_STRESS_RSS_MIB) its quarantine holds up to
  // 256 MiB of freed memory on purpose, libjpeg's per-decode allocations included, so RSS
  // grows by design there; LSan checks for leaks instead.
  const char* bound_mib = std::getenv("IMGSTORE_STRESS_RSS_MIB");
  const std::size_t bound = (bound_mib ? std::strtoull(bound_mib, nullptr, 10) : 2) << 20;
  CHECK(after <= baseline + bound);
}
