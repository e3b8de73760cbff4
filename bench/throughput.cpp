// imgstore-throughput: which store format feeds training best, measured side by side in one run.
// For each format (PNG folder, LMDB, HDF5) over the same images:
//   (a) shuffled epoch read throughput of the prefetching loader;
//   (b) the same through LibTorch's stock DataLoader (workers 0 and 2) over the same Dataset's
//       get_batch, and over its per-sample view with Stack<> (LibTorch's usual pattern);
//   (c) the limit, measured in this run on the same bytes (bench/common/limits.hpp): LMDB and
//       HDF5, a RAM gather of the records into batches on the loader's thread count; PNG, the
//       fastest full PNG decoder on one thread x the loader's thread count. A loader that beats
//       its limit is flagged (LIMIT BEATEN): the limit would be wrong. Also LibTorch's
//       index_select from one RAM tensor, one thread (the memory figure training uses);
//   (d) training images/s fed by the prefetching loader, against training fed from memory.
// With --checksums both, (a) is measured with record checksum checking on and off, in
// alternating runs, and the cost of checking is printed as their ratio.
// Prints a table of figures and ratios; writes CSV and JSON. Medians of --runs runs after one
// warm-up pass (page cache warm).
//
//   imgstore-throughput --stores out/stores --split train --out out/throughput
//   imgstore-throughput --stores out/stores --checksums both --skip-stock --skip-train --python ''

#include <sys/utsname.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <thread>
#include <tuple>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "bench/throughput_common.hpp"
#include "common/limits.hpp"
#include "imgstore/error.hpp"
#include "imgstore/torch/dataset.hpp"
#include "imgstore/torch/loader.hpp"

namespace {

using namespace imgstore;
using namespace imgstore::examples;
using namespace imgstore::bench;
namespace fs = std::filesystem;

struct Args {
  std::string stores, split = "train", out = "throughput";
  std::size_t batch_size = 256;
  int runs = 3, train_steps = 60, torch_threads = 0;
  unsigned threads = 0, train_loader_threads = 1;
  bool skip_stock = false, skip_train = false;
  std::string checksums = "on";  // on | off | both (record checksum checking while reading)
  std::string python = "/usr/bin/python3";  // empty: skip the Python peer
};

// Python's PyTorch DataLoader over the same stores (bench/python_dataloader.py), run as a
// subprocess. Returns its JSON, or null with a note if Python or torch is unavailable.
Json run_python_peer(const Args& a) {
  if (a.python.empty()) return nullptr;
  const std::string script = std::string(IMGSTORE_SOURCE_DIR) + "/bench/python_dataloader.py";
  const std::string cmd = fmt::format(
      "'{}' '{}' --stores '{}' --split '{}' --batch-size {} --runs {} --workers 0,2",
      a.python, script, a.stores, a.split, a.batch_size, a.runs);
  fmt::print("\n== Python peer: {}\n", cmd);
  std::fflush(stdout);
  return run_json_command(cmd, "Python peer");
}

// Best Python DataLoader rate for a format over its worker counts (0 if absent).
double python_best(const Json& peer, const std::string& format) {
  double best = 0;
  if (peer.is_null()) return best;
  for (const auto& r : peer.at("results")) {
    if (r.at("format") == format) best = std::max(best, r.at("median").get<double>());
  }
  return best;
}

// LibTorch's usual pattern: a per-sample Dataset (get(i) -> one [C,H,W] Example) batched by
// the stock loader's Stack<> collation. Same reader and records as StoreDataset::get_batch.
double stock_per_sample_epoch(const StoreDataset& ds, std::size_t batch, std::size_t workers) {
  auto loader = torch::data::make_data_loader(
      ds.samples().map(torch::data::transforms::Stack<>()),
      torch::data::DataLoaderOptions().batch_size(batch).workers(workers));
  std::size_t images = 0;
  auto t = Clock::now();
  for (auto& b : *loader) images += static_cast<std::size_t>(b.data.size(0));
  return images / seconds_since(t);
}

double memory_epoch(const MemoryStore& mem, std::size_t batch, std::uint64_t seed) {
  const auto n = mem.images.size(0);
  auto perm = permutation(n, seed);
  auto out = torch::empty({static_cast<std::int64_t>(batch), mem.images.size(1), mem.images.size(2),
                           mem.images.size(3)}, torch::kUInt8);
  auto out_labels = torch::empty({static_cast<std::int64_t>(batch)}, torch::kInt64);
  auto t = Clock::now();
  for (std::int64_t first = 0; first < n; first += static_cast<std::int64_t>(batch)) {
    auto index = perm.slice(0, first, std::min<std::int64_t>(n, first + batch));
    if (index.size(0) != out.size(0)) {
      out.resize_({index.size(0), out.size(1), out.size(2), out.size(3)});
      out_labels.resize_({index.size(0)});
    }
    mem.gather(index, out, out_labels);
  }
  return n / seconds_since(t);
}

struct Row {
  std::string format;
  std::size_t images = 0;
  Rate prefetch, prefetch_unchecked, stock0, stock2, sample0, sample2, memory, train,
      train_memory;
  double limit = 0, wait_share = 0, single_decode = 0, rss_growth = 0, rss_bound = 0;
  std::string limit_kind, png_decoder;  // "gather" or "decode"; the fastest PNG decoder
  unsigned limit_threads = 0;
};

// PNGs sampled for the decode limit: enough for a stable median, few enough to time every
// decoder on them in a few seconds.
constexpr std::size_t kDecodeLimitSample = 2000;

// (a) The prefetch loader's rate (checked against unchecked records when --checksums both),
// then its memory: RSS growth over 10 more epochs, against the bound of prefetch_depth batches.
void measure_prefetch(const Args& a, const fs::path& path, const ReaderOptions& reader_options,
                      const std::shared_ptr<const StoreReader>& reader, const LoaderOptions& lo, Row& row) {
  PrefetchLoader loader(reader, lo);
  if (a.checksums == "both") {
    ReaderOptions unchecked = reader_options;
    unchecked.verify_checksums = false;
    PrefetchLoader loader_unchecked(
        std::shared_ptr<const StoreReader>(open_store(path, unchecked)), lo);
    std::tie(row.prefetch, row.prefetch_unchecked) =
        measure_pair(a.runs, [&] { return prefetch_epoch(loader); },
                     [&] { return prefetch_epoch(loader_unchecked); });
    fmt::print("  (a) prefetch loader      {:>10.0f} img/s checksums on (min {:.0f}, max {:.0f})\n"
               "                           {:>10.0f} img/s checksums off (min {:.0f}, max {:.0f})\n"
               "                           on/off = {:.3f}\n",
               row.prefetch.median, row.prefetch.min, row.prefetch.max,
               row.prefetch_unchecked.median, row.prefetch_unchecked.min,
               row.prefetch_unchecked.max, row.prefetch.median / row.prefetch_unchecked.median);
  } else {
    row.prefetch = measure(a.runs, [&] { return prefetch_epoch(loader); });
    fmt::print("  (a) prefetch loader      {:>10.0f} img/s (checksums {})\n", row.prefetch.median,
               a.checksums);
  }
  // Memory stays flat across epochs: RSS growth over 10 more epochs, against the bound of
  // prefetch_depth batch buffers.
  const double rss_before = rss_bytes();
  for (int e = 0; e < 10; ++e) prefetch_epoch(loader);
  row.rss_growth = rss_bytes() - rss_before;
  row.rss_bound = static_cast<double>(lo.prefetch_depth * a.batch_size * (reader->image_bytes() + 8));
  fmt::print("      RSS growth over 10 more epochs: {:.2f} MiB (prefetch depth x batch bytes = "
             "{:.2f} MiB)\n", row.rss_growth / 1048576, row.rss_bound / 1048576);
  std::fflush(stdout);
}

// (b) LibTorch's DataLoader over get_batch, and over samples() + Stack<>.
void measure_stock(const Args& a, const std::shared_ptr<const StoreReader>& reader, Row& row) {
  if (a.skip_stock) return;
  StoreDataset ds(reader);
  row.stock0 = measure(a.runs, [&] { return stock_epoch(ds, a.batch_size, 0); });
  row.stock2 = measure(a.runs, [&] { return stock_epoch(ds, a.batch_size, 2); });
  fmt::print("  (b) stock DataLoader     {:>10.0f} img/s (workers 0), {:.0f} img/s (workers 2) "
             "over our get_batch\n", row.stock0.median, row.stock2.median);
  row.sample0 = measure(a.runs, [&] { return stock_per_sample_epoch(ds, a.batch_size, 0); });
  row.sample2 = measure(a.runs, [&] { return stock_per_sample_epoch(ds, a.batch_size, 2); });
  fmt::print("      stock, per-sample    {:>10.0f} img/s (workers 0), {:.0f} img/s (workers 2) "
             "with samples() + Stack<>\n", row.sample0.median, row.sample2.median);
  std::fflush(stdout);
}

// (c) The limit the prefetch loader is compared with, at its thread count: for a PNG folder
// the fastest decoder x threads, else a RAM gather of the same records (the bytes the loader
// moves, without reading, decoding or checking them). Also LibTorch's one-thread gather from
// memory. Returns the in-memory copy for (d).
MemoryStore measure_memory(const Args& a, Format f, const StoreReader& reader, unsigned threads, Row& row) {
  auto mem = MemoryStore::load(reader);
  std::uint64_t seed = 1;
  row.memory = measure(a.runs, [&] { return memory_epoch(mem, a.batch_size, seed++); });
  row.limit_threads = threads;
  if (f == Format::PngFolder) {
    const auto pngs = png_folder_sample(reader.path(), reader.size(), kDecodeLimitSample, 7);
    const DecodeLimit d = png_decode_limit(pngs, reader.shape(), threads, std::max(a.runs, 3));
    row.limit_kind = "decode", row.png_decoder = d.decoder;
    row.single_decode = d.single_thread_ips, row.limit = d.ips;
    fmt::print("  (c) limit: PNG decode    {:>10.0f} img/s = fastest decoder ({}, {} PNGs) {:.0f} "
               "img/s x {} threads\n", row.limit, d.decoder, d.images, d.single_thread_ips, threads);
  } else {
    row.limit_kind = "gather";
    row.limit = gather_limit(mem.images.data_ptr<std::uint8_t>(), reader.size(),
                             reader.image_bytes(), a.batch_size, threads, a.runs, 11);
    fmt::print("  (c) limit: RAM gather    {:>10.0f} img/s (memcpy of the records into batches, "
               "{} threads)\n", row.limit, threads);
  }
  fmt::print("      index_select, 1 thread {:>8.0f} img/s (LibTorch, from one RAM tensor)\n"
             "      prefetch / limit = {}\n",
             row.memory.median, format_ratio(compare_to_limit(row.prefetch.median, row.limit)));
  std::fflush(stdout);
  return mem;
}

// (d) Training fed by the prefetch loader (float, normalised) vs from memory.
void measure_training(const Args& a, const std::shared_ptr<const StoreReader>& reader,
                      const MemoryStore& mem, const LoaderOptions& lo, Row& row) {
  auto [mean, stdev] = channel_stats(*reader, 5000);
  LoaderOptions tlo = lo;
  tlo.threads = a.train_loader_threads;
  tlo.normalize = Normalize::mean_std(mean, stdev);
  PrefetchLoader tloader(reader, tlo);
  std::optional<PrefetchLoader::Iterator> it;
  auto from_loader = [&](torch::Tensor& x, torch::Tensor& y) {
    if (!it || *it == tloader.end()) it = tloader.begin();
    else ++*it;
    if (*it == tloader.end()) it = tloader.begin();
    x = (*it)->data;
    y = (*it)->target;
  };
  auto perm = permutation(mem.images.size(0), 3);
  std::int64_t pos = 0;
  auto from_memory = [&](torch::Tensor& x, torch::Tensor& y) {
    if (pos + static_cast<std::int64_t>(a.batch_size) > mem.images.size(0)) pos = 0;
    auto index = perm.slice(0, pos, pos + static_cast<std::int64_t>(a.batch_size));
    pos += static_cast<std::int64_t>(a.batch_size);
    x = normalise(mem.images.index_select(0, index), mean, stdev);
    y = mem.labels.index_select(0, index);
  };
  // The two feeds alternate run by run (train_rate warms up itself).
  std::vector<double> wait;
  std::tie(row.train, row.train_memory) = alternate(
      a.runs,
      [&] {
        auto [rate, w] = train_rate(reader->shape(), 10, a.train_steps, from_loader);
        wait.push_back(w);
        return rate;
      },
      [&] { return train_rate(reader->shape(), 10, a.train_steps, from_memory).first; });
  it.reset();
  tloader.cancel();
  row.wait_share = median(wait);
  fmt::print("  (d) training fed by loader {:>8.0f} img/s (data wait {:.1f}%), fed from memory {:.0f} img/s\n",
             row.train.median, 100 * row.wait_share, row.train_memory.median);
  std::fflush(stdout);
}

// The table on stdout, throughput.csv in --out, and the rows of the JSON report.
Json write_results(const Args& a, const std::vector<Row>& rows, const Json& peer) {
  fmt::print("\n{:<5} {:>11} {:>11} {:>11} {:>11} {:>9} {:>9} {:>10} {:>10} {:>9} {:>9} {:>10} {:>9}\n",
             "fmt", "prefetch/s", "stock/s", "per-samp/s", "limit/s", "vs limit", "vs stock",
             "vs sample", "python/s", "vs python", "train/s", "train mem/s", "train/mem");
  Json jrows = Json::array();
  std::ofstream csv(fs::path(a.out) / "throughput.csv");
  csv << "format,images,prefetch_ips,stock_w0_ips,stock_w2_ips,stock_per_sample_w0_ips,"
         "stock_per_sample_w2_ips,memory_ips,limit_ips,png_single_thread_decode_ips,"
         "prefetch_vs_limit,prefetch_vs_best_stock,prefetch_vs_best_per_sample,train_ips,"
         "train_memory_ips,train_vs_memory,train_data_wait_share,python_dataloader_ips,"
         "prefetch_vs_python,checksums,prefetch_checksums_off_ips,prefetch_checksums_on_vs_off,"
         "limit_kind,limit_threads,png_decoder,limit_beaten\n";
  for (const auto& r : rows) {
    const double best_stock = std::max(r.stock0.median, r.stock2.median);
    const double best_sample = std::max(r.sample0.median, r.sample2.median);
    const LimitRatio lr = compare_to_limit(r.prefetch.median, r.limit);
    const double vs_limit = lr.ratio;
    const double vs_stock = best_stock > 0 ? r.prefetch.median / best_stock : 0;
    const double vs_sample = best_sample > 0 ? r.prefetch.median / best_sample : 0;
    const double train_ratio = r.train_memory.median > 0 ? r.train.median / r.train_memory.median : 0;
    const double on_vs_off =
        r.prefetch_unchecked.median > 0 ? r.prefetch.median / r.prefetch_unchecked.median : 0;
    const double py = python_best(peer, r.format);
    const double vs_python = py > 0 ? r.prefetch.median / py : 0;
    fmt::print("{:<5} {:>11.0f} {:>11.0f} {:>11.0f} {:>11.0f} {:>8.2f}x {:>8.1f}x {:>9.1f}x {:>10.0f} {:>8.1f}x {:>9.0f} {:>10.0f} {:>8.2f}x{}\n",
               r.format, r.prefetch.median, best_stock, best_sample, r.limit, vs_limit, vs_stock,
               vs_sample, py, vs_python, r.train.median, r.train_memory.median, train_ratio,
               lr.beaten ? "  " + beaten_flag() : "");
    csv << fmt::format("{},{},{:.0f},{:.0f},{:.0f},{:.0f},{:.0f},{:.0f},{:.0f},{:.0f},{:.3f},{:.3f},{:.3f},{:.0f},{:.0f},{:.3f},{:.3f},{:.0f},{:.3f},{},{:.0f},{:.3f},{},{},{},{}\n",
                       r.format, r.images, r.prefetch.median, r.stock0.median, r.stock2.median,
                       r.sample0.median, r.sample2.median, r.memory.median, r.limit,
                       r.single_decode, vs_limit, vs_stock, vs_sample, r.train.median,
                       r.train_memory.median, train_ratio, r.wait_share, py, vs_python,
                       a.checksums, r.prefetch_unchecked.median, on_vs_off, r.limit_kind,
                       r.limit_threads, r.png_decoder.empty() ? "-" : r.png_decoder,
                       lr.beaten ? 1 : 0);
    jrows.push_back({{"format", r.format}, {"images", r.images}, {"prefetch", r.prefetch.json()},
                     {"stock_workers0", r.stock0.json()}, {"stock_workers2", r.stock2.json()},
                     {"stock_per_sample_workers0", r.sample0.json()},
                     {"stock_per_sample_workers2", r.sample2.json()},
                     {"prefetch_vs_best_per_sample", vs_sample},
                     {"python_dataloader_best", py}, {"prefetch_vs_python", vs_python},
                     {"memory_gather", r.memory.json()}, {"limit", r.limit},
                     {"limit_kind", r.limit_kind}, {"limit_threads", r.limit_threads},
                     {"png_single_thread_decode", r.single_decode},
                     {"png_decoder", r.png_decoder.empty() ? Json(nullptr) : Json(r.png_decoder)},
                     {"prefetch_vs_limit", vs_limit}, {"limit_beaten", lr.beaten},
                     {"prefetch_vs_best_stock", vs_stock},
                     {"train_fed_by_loader", r.train.json()}, {"train_fed_from_memory", r.train_memory.json()},
                     {"train_vs_memory", train_ratio}, {"train_data_wait_share", r.wait_share},
                     {"rss_growth_10_epochs_bytes", r.rss_growth},
                     {"prefetch_depth_x_batch_bytes", r.rss_bound},
                     {"checksums", a.checksums},
                     {"prefetch_checksums_off", r.prefetch_unchecked.json()},
                     {"prefetch_checksums_on_vs_off", on_vs_off}});
  }
  return jrows;
}

int run(const Args& a) {
  if (a.torch_threads > 0) torch::set_num_threads(a.torch_threads);
  const unsigned cores = std::max(1u, std::thread::hardware_concurrency());
  const unsigned threads = a.threads ? a.threads : cores;
  fs::create_directories(a.out);
  struct utsname uts {};
  ::uname(&uts);
  Json report;
  report["machine"] = {{"cpu", cpu_model()}, {"cores", cores},
                       {"memory_gib", sysconf(_SC_PHYS_PAGES) * double(sysconf(_SC_PAGE_SIZE)) / (1 << 30)},
                       {"kernel", std::string(uts.release)}};
  if (a.checksums != "on" && a.checksums != "off" && a.checksums != "both") {
    throw UsageError("--checksums must be on, off or both");
  }
  ReaderOptions reader_options;
  reader_options.verify_checksums = a.checksums != "off";
  report["settings"] = {{"batch_size", a.batch_size}, {"loader_threads", threads},
                        {"checksums", a.checksums},
                        {"runs", a.runs}, {"page_cache", "warm (one untimed pass first)"},
                        {"train_steps", a.train_steps},
                        {"train_loader_threads", a.train_loader_threads},
                        {"torch_threads", torch::get_num_threads()}};
  fmt::print("machine: {}, {} cores; batch {}, loader threads {}, torch intra-op threads {}; "
             "page cache warm; medians of {} runs; record checksums {}\n", cpu_model(), cores,
             a.batch_size, threads, torch::get_num_threads(), a.runs, a.checksums);

  std::vector<Row> rows;
  for (Format f : all_formats()) {
    const fs::path path = fs::path(a.stores) / store_file_name(a.split, f);
    if (!fs::exists(path)) {
      fmt::print("skip {}: {} not found\n", to_string(f), path.string());
      continue;
    }
    auto reader = std::shared_ptr<const StoreReader>(open_store(path, reader_options));
    Row row;
    row.format = to_string(f);
    row.images = reader->size();
    fmt::print("\n== {} ({} images of {})\n", path.string(), reader->size(), to_string(reader->shape()));
    std::fflush(stdout);
    LoaderOptions lo;
    lo.batch_size = a.batch_size;
    lo.threads = threads;
    lo.seed = 1;
    measure_prefetch(a, path, reader_options, reader, lo, row);
    measure_stock(a, reader, row);
    const MemoryStore mem = measure_memory(a, f, *reader, threads, row);
    if (!a.skip_train) measure_training(a, reader, mem, lo, row);
    rows.push_back(row);
  }
  const Json peer = run_python_peer(a);
  report["python_peer"] = peer;
  const Json jrows = write_results(a, rows, peer);
  if (a.checksums == "both") {
    fmt::print("\nprefetch loader, record checksums checked vs not (medians of {} alternating "
               "runs, {} loader threads, page cache warm):\n", a.runs, threads);
    for (const auto& r : rows) {
      fmt::print("  {:<5} on {:>10.0f} img/s   off {:>10.0f} img/s   on/off {:.3f}\n", r.format,
                 r.prefetch.median, r.prefetch_unchecked.median,
                 r.prefetch.median / r.prefetch_unchecked.median);
    }
  }
  fmt::print("limit, measured in this run at the loader's thread count: a RAM gather of the "
             "records into batches (LMDB, HDF5), or the fastest full PNG decoder on one thread x "
             "threads (PNG); LIMIT BEATEN flags a loader faster than its limit. stock: "
             "LibTorch's DataLoader over our Dataset's get_batch; per-sample: the same Dataset's "
             "samples() + Stack<>; python: PyTorch's DataLoader in Python over the same store; all the "
             "better of workers 0 and 2\n");
  if (!peer.is_null()) {
    for (const auto& r : peer.at("results")) {
      if (r.at("format") == "memory") {
        fmt::print("python in-memory TensorDataset + DataLoader: {:.0f} img/s\n",
                   r.at("median").get<double>());
      }
    }
  }
  report["results"] = jrows;
  std::ofstream(fs::path(a.out) / "throughput.json") << report.dump(2) << "\n";
  fmt::print("wrote {}/throughput.csv and throughput.json\n", a.out);
  return rows.empty() ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  imgstore::examples::keep_freed_memory_for_reuse();
  Args a;
  CLI::App app{"imgstore-throughput: shuffled-epoch read and training throughput per store format",
               "imgstore-throughput"};
  app.add_option("--stores", a.stores, "directory holding <split>.png, <split>.lmdb, <split>.h5")->required();
  app.add_option("--split", a.split)->capture_default_str();
  app.add_option("--out", a.out, "directory for throughput.csv and throughput.json")->capture_default_str();
  app.add_option("--batch-size", a.batch_size)->capture_default_str();
  app.add_option("--runs", a.runs, "timed runs per figure (median reported)")->capture_default_str();
  app.add_option("--threads", a.threads, "prefetch loader threads for (a) (0: all cores)");
  app.add_option("--train-steps", a.train_steps, "timed training steps per run for (d)")->capture_default_str();
  app.add_option("--train-loader-threads", a.train_loader_threads,
                 "loader threads while training (the rest of the cores go to torch)")->capture_default_str();
  app.add_option("--torch-threads", a.torch_threads, "torch intra-op threads (0: LibTorch default)");
  app.add_flag("--skip-stock", a.skip_stock, "skip the stock DataLoader figures");
  app.add_flag("--skip-train", a.skip_train, "skip the training figures (d)");
  app.add_option("--checksums", a.checksums,
                 "record checksum checking while reading: on, off, or both (measures (a) both ways "
                 "and prints the ratio)")->capture_default_str();
  app.add_option("--python", a.python, "python3 with torch for the Python DataLoader peer "
                 "('' to skip)")->capture_default_str();

  return run_main(app, argc, argv, [&] { return run(a); });
}
