// imgstore-photo-throughput: ImageNet-style loading from JPEG stores, side by side in one run.
// For each store (LMDB-JPEG, HDF5-JPEG) and each output size S (default 224, 112, 64):
//   prefetch   PrefetchLoader epochs: RandomResizedCrop(S) + flip + normalise, shuffled;
//   stock      the same store through LibTorch's make_data_loader over StoreDataset::get_batch
//              (same transform), workers = loader threads;
//   limit      the decode limit: the faster of libjpeg-turbo decoding only the crop's region (as
//              the loader does) and TurboJPEG decoding the whole image, each record at the DCT
//              scale its crop plan picks, nothing else, on one thread, times the loader
//              threads; the fastest of passes run before every loader epoch of that size (both
//              rates are also reported, as region_decode and full_decode); a prefetch rate
//              above it is flagged LIMIT BEATEN;
//   torchvision  bench/photo_torchvision.py on the original image folder (ImageFolder +
//              RandomResizedCrop + RandomHorizontalFlip + ToTensor + Normalize, DataLoader batch
//              B, shuffled, the better of num_workers 0 and 2), run from here;
// and at S = --train-size: training the example convnet fed by the loader against fed from
// preloaded in-memory crops of the same size, and the loader's RSS over --rss-epochs epochs.
// Prints a table; writes photo_throughput.csv and photo_throughput.json in --out. Page cache
// warm (one untimed pass first); medians of --runs runs. Figures only: nothing is asserted.
//
//   imgstore-photo-throughput --stores out/photos/stores --images out/photos/fixture/train
//                             --out out/photo_throughput
#include <turbojpeg.h>

#include <filesystem>
#include <thread>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "bench/throughput_common.hpp"
#include "codecs/crop_transform.hpp"
#include "codecs/decoders.hpp"
#include "codecs/image_codec.hpp"
#include "imgstore/error.hpp"

namespace {

using namespace imgstore;
using namespace imgstore::bench;
namespace fs = std::filesystem;

struct Args {
  std::string stores, split = "train", images, out = "photo_throughput";
  std::string sizes = "224,112,64", formats = "lmdb,hdf5";
  std::size_t batch_size = 64;
  int runs = 3, torch_threads = 1, train_steps = 20, rss_epochs = 10, peer_limit = 0;
  unsigned threads = 2, train_loader_threads = 1;
  std::uint32_t train_size = 64;
  std::string python = "/usr/bin/python3";  // empty: skip the torchvision peer
};

const std::vector<float> kMean{0.485f, 0.456f, 0.406f}, kStd{0.229f, 0.224f, 0.225f};

std::vector<std::string> split_list(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  for (std::string item; std::getline(in, item, ',');) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

struct Row {
  std::string format;
  std::uint32_t size = 0;
  std::size_t images = 0;
  Rate prefetch, stock, train, train_memory;
  double first_epoch = 0;  // a new loader's first epoch (the warm-up epoch of `prefetch`)
  // The decode limit (the faster way, times the loader threads) and its two ways; set from the
  // size's DecodeLimit once every row has run (set_limit, in run()).
  double limit = 0, region_decode = 0, full_decode = 0;
  int limit_passes = 0;
  double wait_share = 0, rss_growth = 0, rss_bound = 0;
  std::vector<double> rss_mib;  // after each epoch of the RSS run
};

CropTransform train_crop(std::uint32_t size) {
  CropTransform t = CropTransform::random_resized_crop(size);
  t.flip_probability = 0.5;
  return t;
}

// Every record of the store as stored (the JPEG bytes), read once into memory.
std::vector<EncodedRecord> load_records(const StoreReader& reader) {
  std::vector<EncodedRecord> recs(reader.size());
  for (std::size_t i = 0; i < recs.size(); ++i) reader.read_record(i, recs[i]);
  return recs;
}

// The decode limit at one output size: the decode work of one loader epoch on one thread, in
// img/s, two ways (seed 1, epoch 0, as the loader's epochs here; each record at the DCT scale
// its crop plan picks):
//   region  libjpeg-turbo decoding only the crop's region (decode_jpeg_crop: jpeg_crop_scanline
//           + jpeg_skip_scanlines, stopping below the crop), as the loader does;
//   full    TurboJPEG's tjDecompress2 of the whole scaled image, with the same flags.
// A pass of each runs before every loader epoch (measure_row), so the limit sees the same
// moments of this noisy VM as the loader; a limit measured once, at the start, was slower than
// the loader's later epochs (prefetch/limit 1.02-1.04 at S=64). The limit is the fastest pass:
// noise only ever slows a pass down.
class DecodeLimit {
 public:
  DecodeLimit(const std::vector<EncodedRecord>& recs, std::uint32_t size)
      : recs_(recs), size_(size), windows_(recs.size()), denom_(recs.size()) {
    const CropTransform t = train_crop(size);
    for (std::size_t i = 0; i < recs.size(); ++i) {
      if (recs[i].encoding != Encoding::Jpeg) throw UsageError("the photo stores must hold JPEG records");
      const auto plan = imgstore::detail::plan_crop(t, 1, 0, i, recs[i].shape.height, recs[i].shape.width);
      windows_[i] = plan.window;
      denom_[i] = imgstore::detail::choose_jpeg_scale(plan.window.width, plan.window.height, size, size);
    }
    if (!tj_) throw IoError(fmt::format("decode limit: {}", tjGetErrorStr2(nullptr)));
  }

  // One pass of each decode; keeps the fastest of each.
  void pass() {
    region_ = std::max(region_, region_once());
    full_ = std::max(full_, full_once());
    ++passes_;
  }
  double region() const { return region_; }
  double full() const { return full_; }
  int passes() const { return passes_; }

 private:
  double region_once() {
    const auto start = Clock::now();
    for (std::size_t i = 0; i < recs_.size(); ++i) {
      imgstore::detail::decode_jpeg_crop(recs_[i].bytes.data(), recs_[i].bytes.size(), windows_[i],
                                         size_, size_, 3, "decode limit", crop_);
    }
    return static_cast<double>(recs_.size()) / seconds_since(start);
  }

  double full_once() {
    const auto start = Clock::now();
    for (std::size_t i = 0; i < recs_.size(); ++i) {
      const int w = static_cast<int>(imgstore::detail::jpeg_scaled(recs_[i].shape.width, denom_[i]));
      const int h = static_cast<int>(imgstore::detail::jpeg_scaled(recs_[i].shape.height, denom_[i]));
      pixels_.resize(std::size_t(w) * std::size_t(h) * 3);
      if (tjDecompress2(tj_.get(), recs_[i].bytes.data(), static_cast<unsigned long>(recs_[i].bytes.size()),
                        pixels_.data(), w, 0, h, TJPF_RGB, TJFLAG_STOPONWARNING | TJFLAG_LIMITSCANS) != 0) {
        throw DataError(fmt::format("decode limit: record {} does not decode: {}", i, tjGetErrorStr2(tj_.get())));
      }
    }
    return static_cast<double>(recs_.size()) / seconds_since(start);
  }

  struct TjDestroy {
    void operator()(void* h) const { tjDestroy(h); }
  };

  const std::vector<EncodedRecord>& recs_;
  const std::uint32_t size_;
  std::vector<imgstore::detail::CropRect> windows_;
  std::vector<int> denom_;
  std::unique_ptr<void, TjDestroy> tj_{tjInitDecompress()};
  imgstore::detail::ScaledCrop crop_;
  std::vector<std::uint8_t> pixels_;
  double region_ = 0, full_ = 0;
  int passes_ = 0;
};

// Every crop of one loader epoch (uint8, no normalisation) in memory, with the labels.
MemoryStore preload_crops(const std::shared_ptr<const StoreReader>& reader, LoaderOptions lo) {
  lo.normalize = {};
  lo.shuffle = false;
  PrefetchLoader loader(reader, lo);
  std::vector<torch::Tensor> xs, ys;
  for (auto& b : loader) xs.push_back(b.data.clone()), ys.push_back(b.target.clone());
  return {torch::cat(xs), torch::cat(ys)};
}

// Training fed by the loader (--train-loader-threads) vs from preloaded crops of the same size.
void measure_training(const Args& a, const std::shared_ptr<const StoreReader>& reader,
                      LoaderOptions lo, Row& row) {
  const int classes = static_cast<int>(std::max<std::size_t>(1, reader->manifest().class_names.size()));
  const Shape shape{row.size, row.size, 3};
  lo.threads = a.train_loader_threads;
  PrefetchLoader loader(reader, lo);
  std::optional<PrefetchLoader::Iterator> it;
  auto from_loader = [&](torch::Tensor& x, torch::Tensor& y) {
    if (it) ++*it;
    if (!it || *it == loader.end()) it = loader.begin();
    x = (*it)->data;
    y = (*it)->target;
  };
  const MemoryStore mem = preload_crops(reader, lo);
  const auto n = mem.images.size(0), b = static_cast<std::int64_t>(a.batch_size);
  auto perm = permutation(n, 3);
  std::int64_t pos = 0;
  auto from_memory = [&](torch::Tensor& x, torch::Tensor& y) {
    if (pos + b > n) pos = 0;
    auto index = perm.slice(0, pos, std::min(n, pos + b));
    pos += b;
    x = normalise(mem.images.index_select(0, index), kMean, kStd);
    y = mem.labels.index_select(0, index);
  };
  // The two feeds alternate run by run (train_rate warms up itself): run one after the other,
  // the same code gave 0.5x-1.4x.
  std::vector<double> wait;
  std::tie(row.train, row.train_memory) = alternate(
      a.runs,
      [&] {
        auto [rate, w] = train_rate(shape, classes, a.train_steps, from_loader);
        wait.push_back(w);
        return rate;
      },
      [&] { return train_rate(shape, classes, a.train_steps, from_memory).first; });
  it.reset();
  loader.cancel();
  row.wait_share = median(wait);
  fmt::print("    training fed by loader {:.0f} img/s (data wait {:.1f}%), from preloaded crops "
             "{:.0f} img/s: {:.3f}x\n", row.train.median, 100 * row.wait_share,
             row.train_memory.median, row.train.median / row.train_memory.median);
}

// RSS after each of --rss-epochs more epochs of `loader`, and its growth over them.
void measure_rss(const Args& a, PrefetchLoader& loader, const LoaderOptions& lo, Row& row) {
  const double before = rss_bytes();
  for (int e = 0; e < a.rss_epochs; ++e) {
    loader.set_epoch(static_cast<std::uint64_t>(100 + e));
    prefetch_epoch(loader);
    row.rss_mib.push_back(rss_bytes() / 1048576);
  }
  row.rss_growth = rss_bytes() - before;
  row.rss_bound = static_cast<double>(lo.prefetch_depth * a.batch_size * (std::size_t{3} * row.size * row.size * 4 + 8));
  fmt::print("    RSS over {} epochs: {:.1f} -> {:.1f} MiB, growth {:.2f} MiB (prefetch depth x "
             "batch bytes = {:.2f} MiB)\n", a.rss_epochs, before / 1048576,
             row.rss_mib.empty() ? before / 1048576 : row.rss_mib.back(), row.rss_growth / 1048576,
             row.rss_bound / 1048576);
}

// The limit is the fastest way to do the decode work, on every loader thread: the faster of
// the size's two decodes, each its fastest pass over the whole run.
void set_limit(Row& row, const DecodeLimit& limit, unsigned threads) {
  row.region_decode = limit.region() * threads;
  row.full_decode = limit.full() * threads;
  row.limit = std::max(row.region_decode, row.full_decode);
  row.limit_passes = limit.passes();
}

Row measure_row(const Args& a, const std::string& format, const std::shared_ptr<const StoreReader>& reader,
                std::uint32_t size, DecodeLimit& decode) {
  Row row;
  row.format = format, row.size = size, row.images = reader->size();
  LoaderOptions lo;
  lo.batch_size = a.batch_size;
  lo.threads = a.threads;
  lo.seed = 1;
  lo.transform = train_crop(size);
  lo.normalize = Normalize::mean_std(kMean, kStd);
  PrefetchLoader loader(reader, lo);
  // A limit pass (untimed by the epoch) before every epoch, warm-up included. The warm-up is
  // this new loader's first epoch, which first touches its batch memory: users see it.
  row.prefetch = measure(a.runs, [&] {
    decode.pass();
    const double rate = prefetch_epoch(loader);
    if (row.first_epoch == 0) row.first_epoch = rate;
    return rate;
  });
  set_limit(row, decode, a.threads);
  const double limit = row.limit;  // so far: later rows' passes may raise it
  StoreDataset ds(reader, lo.normalize, lo.transform, lo.seed);
  row.stock = measure(a.runs, [&] { return stock_epoch(ds, a.batch_size, a.threads); });
  fmt::print("  {:<5} S={:<3}  prefetch {:>7.0f} img/s (first epoch {:.0f})   stock {:>7.0f} img/s   "
             "decode limit so far {:>7.0f} img/s   prefetch/limit {:.2f}\n", format, size,
             row.prefetch.median, row.first_epoch, row.stock.median, limit, row.prefetch.median / limit);
  std::fflush(stdout);
  if (size == a.train_size) {
    if (a.rss_epochs > 0) measure_rss(a, loader, lo, row);
    if (a.train_steps > 0) measure_training(a, reader, lo, row);
    std::fflush(stdout);
  }
  return row;
}

// torchvision's best rate at `size` over its worker counts, and that worker count.
std::pair<double, int> torchvision_best(const Json& peer, std::uint32_t size) {
  std::pair<double, int> best{0, 0};
  if (peer.is_null()) return best;
  for (const auto& r : peer.at("results")) {
    if (r.at("size") == size && r.at("median").get<double>() > best.first) {
      best = {r.at("median").get<double>(), r.at("workers").get<int>()};
    }
  }
  return best;
}

Json write_results(const Args& a, const std::vector<Row>& rows, const Json& peer) {
  fmt::print("\n{:<5} {:>4} {:>10} {:>9} {:>9} {:>11} {:>8} {:>9} {:>10} {:>9} {:>10}\n", "store", "S",
             "prefetch/s", "stock/s", "limit/s", "torchvis/s", "vs limit", "vs tv/core", "train/mem",
             "data wait", "RSS growth");
  std::ofstream csv(fs::path(a.out) / "photo_throughput.csv");
  csv << "format,size,images,prefetch_ips,first_epoch_ips,stock_ips,decode_limit_ips,full_decode_ips,torchvision_ips,"
         "torchvision_workers,prefetch_vs_limit,prefetch_vs_torchvision_per_core,train_ips,"
         "train_memory_ips,train_vs_memory,train_data_wait_share,rss_growth_mib\n";
  Json jrows = Json::array();
  int beaten = 0;
  for (const auto& r : rows) {
    const auto [tv, tv_workers] = torchvision_best(peer, r.size);
    const double per_core = tv > 0 ? (r.prefetch.median / a.threads) / (tv / std::max(1, tv_workers)) : 0;
    const double vs_limit = r.prefetch.median / r.limit;
    beaten += vs_limit > 1;
    const double train_ratio = r.train_memory.median > 0 ? r.train.median / r.train_memory.median : 0;
    const bool trained = r.train.median > 0, rss = !r.rss_mib.empty();
    fmt::print("{:<5} {:>4} {:>10.0f} {:>9.0f} {:>9.0f} {:>11.0f} {:>7.2f}x {:>9.2f}x {:>10} {:>9} {:>10}{}\n",
               r.format, r.size, r.prefetch.median, r.stock.median, r.limit, tv, vs_limit, per_core,
               trained ? fmt::format("{:.3f}x", train_ratio) : "-",
               trained ? fmt::format("{:.1f}%", 100 * r.wait_share) : "-",
               rss ? fmt::format("{:.2f} MiB", r.rss_growth / 1048576) : "-",
               vs_limit > 1 ? "  LIMIT BEATEN" : "");
    csv << fmt::format("{},{},{},{:.0f},{:.0f},{:.0f},{:.0f},{:.0f},{:.0f},{},{:.3f},{:.3f},{:.0f},{:.0f},{:.3f},{:.3f},{:.2f}\n",
                       r.format, r.size, r.images, r.prefetch.median, r.first_epoch, r.stock.median, r.limit,
                       r.full_decode, tv,
                       tv_workers, vs_limit, per_core, r.train.median, r.train_memory.median,
                       train_ratio, r.wait_share, r.rss_growth / 1048576);
    jrows.push_back({{"format", r.format}, {"size", r.size}, {"images", r.images},
                     {"prefetch", r.prefetch.json()}, {"first_epoch", r.first_epoch},
                     {"stock", r.stock.json()},
                     {"decode_limit", r.limit}, {"region_decode", r.region_decode},
                     {"full_decode", r.full_decode}, {"decode_limit_passes", r.limit_passes},
                     {"limit_beaten", vs_limit > 1},
                     {"torchvision_best", tv},
                     {"torchvision_best_workers", tv_workers}, {"prefetch_vs_limit", vs_limit},
                     {"prefetch_vs_torchvision_per_core", per_core},
                     {"train_fed_by_loader", r.train.json()},
                     {"train_fed_from_preloaded_crops", r.train_memory.json()},
                     {"train_vs_memory", train_ratio}, {"train_data_wait_share", r.wait_share},
                     {"rss_mib_per_epoch", r.rss_mib}, {"rss_growth_bytes", r.rss_growth},
                     {"prefetch_depth_x_batch_bytes", r.rss_bound}});
  }
  if (beaten > 0) {
    fmt::print("{} row(s) LIMIT BEATEN: a loader faster than its decode limit means the limit is "
               "wrong; do not quote those ratios\n", beaten);
  }
  return jrows;
}

Json run_torchvision(const Args& a) {
  if (a.python.empty() || a.images.empty()) return nullptr;
  const std::string cmd = fmt::format(
      "'{}' '{}/bench/photo_torchvision.py' --root '{}' --sizes '{}' --workers 0,2 --runs {} "
      "--batch-size {} --limit {}", a.python, IMGSTORE_SOURCE_DIR, a.images, a.sizes, a.runs,
      a.batch_size, a.peer_limit);
  fmt::print("\n== torchvision peer: {}\n", cmd);
  std::fflush(stdout);
  return run_json_command(cmd, "torchvision peer");
}

int run(const Args& a) {
  torch::set_num_threads(a.torch_threads);
  fs::create_directories(a.out);
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  fmt::print("machine: {}, {} cores; batch {}, loader threads {}, torch threads {}; page cache "
             "warm; medians of {} runs\n", cpu_model(), cores, a.batch_size, a.threads,
             torch::get_num_threads(), a.runs);
  std::vector<std::uint32_t> sizes;
  for (const auto& s : split_list(a.sizes)) sizes.push_back(static_cast<std::uint32_t>(std::stoul(s)));
  std::vector<Row> rows;
  std::vector<EncodedRecord> recs;  // for the decode limit: the first store's records
  std::vector<std::unique_ptr<DecodeLimit>> decode;  // per size, shared by the formats' rows
  for (const auto& name : split_list(a.formats)) {
    const Format f = parse_format(name);
    const fs::path path = fs::path(a.stores) / store_file_name(a.split, f);
    if (!fs::exists(path)) throw UsageError(fmt::format("{} not found", path.string()));
    auto reader = std::shared_ptr<const StoreReader>(open_store(path));
    fmt::print("\n== {} ({} records)\n", path.string(), reader->size());
    if (recs.empty()) {
      recs = load_records(*reader);
      for (auto s : sizes) decode.push_back(std::make_unique<DecodeLimit>(recs, s));
    }
    for (std::size_t k = 0; k < sizes.size(); ++k) rows.push_back(measure_row(a, name, reader, sizes[k], *decode[k]));
  }
  // Every row of a size gets the same limit: the fastest passes of the whole run.
  for (auto& row : rows) {
    const auto k = std::find(sizes.begin(), sizes.end(), row.size) - sizes.begin();
    set_limit(row, *decode[static_cast<std::size_t>(k)], a.threads);
  }
  const Json peer = run_torchvision(a);
  Json report;
  report["machine"] = {{"cpu", cpu_model()}, {"cores", cores}};
  report["settings"] = {{"batch_size", a.batch_size}, {"loader_threads", a.threads},
                        {"torch_threads", torch::get_num_threads()}, {"runs", a.runs},
                        {"page_cache", "warm (one untimed pass first)"}, {"stores", a.stores},
                        {"images", a.images}, {"train_size", a.train_size},
                        {"train_steps", a.train_steps}, {"train_loader_threads", a.train_loader_threads},
                        {"rss_epochs", a.rss_epochs}, {"torchvision_limit", a.peer_limit}};
  report["torchvision"] = peer;
  report["results"] = write_results(a, rows, peer);
  fmt::print("limit: the faster of libjpeg-turbo decoding only each crop's region and TurboJPEG "
             "decoding the whole image, at the crop plan's DCT scale, on 1 thread x {} threads: the fastest "
             "of the passes run before every loader epoch of that S ({} per row). vs tv/core: (prefetch / {} threads) / (torchvision / max(1, its "
             "workers)). train/mem: training fed by the loader / fed from preloaded crops (S = {})\n",
             a.threads, a.runs + 1, a.threads, a.train_size);
  std::ofstream(fs::path(a.out) / "photo_throughput.json") << report.dump(2) << "\n";
  fmt::print("wrote {}/photo_throughput.csv and photo_throughput.json\n", a.out);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  imgstore::examples::keep_freed_memory_for_reuse();
  Args a;
  CLI::App app{"imgstore-photo-throughput: RandomResizedCrop loading from JPEG stores vs "
               "torchvision and the decode limit", "imgstore-photo-throughput"};
  app.add_option("--stores", a.stores, "directory holding <split>.lmdb and <split>.h5 (JPEG)")->required();
  app.add_option("--images", a.images, "the original image folder of the split, for torchvision");
  app.add_option("--split", a.split)->capture_default_str();
  app.add_option("--formats", a.formats)->capture_default_str();
  app.add_option("--sizes", a.sizes, "output sizes S")->capture_default_str();
  app.add_option("--out", a.out)->capture_default_str();
  app.add_option("--batch-size", a.batch_size)->capture_default_str();
  app.add_option("--runs", a.runs, "timed runs per figure (median)")->capture_default_str();
  app.add_option("--threads", a.threads, "loader threads")->capture_default_str();
  app.add_option("--torch-threads", a.torch_threads)->capture_default_str();
  app.add_option("--train-size", a.train_size, "S of the training and RSS figures (0: none)")->capture_default_str();
  app.add_option("--train-steps", a.train_steps)->capture_default_str();
  app.add_option("--train-loader-threads", a.train_loader_threads)->capture_default_str();
  app.add_option("--rss-epochs", a.rss_epochs)->capture_default_str();
  app.add_option("--torchvision-limit", a.peer_limit, "torchvision on the first N images only (0: all)");
  app.add_option("--python", a.python, "python3 with torchvision ('' to skip)")->capture_default_str();
  return run_main(app, argc, argv, [&] { return run(a); });
}
