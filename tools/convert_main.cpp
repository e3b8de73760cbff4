// imgstore-convert: ingest data sets into PNG folders, LMDB and HDF5 stores; verify and
// describe stores. Exit status: 0 ok, 1 bad data or I/O failure, 2 usage.
#include <algorithm>
#include <csignal>
#include <cmath>
#include <iostream>
#include <malloc.h>
#include <utility>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <tbb/global_control.h>

#include "cli_common.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/convert.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"
#include "imgstore/store.hpp"

namespace {

using namespace imgstore;
using Json = nlohmann::ordered_json;

constexpr const char* kExamples = R"(
Examples:
  # Fashion-MNIST from Debian's dataset-fashion-mnist into all three formats
  imgstore-convert convert /usr/share/datasets/fashion-mnist --to png,lmdb,hdf5 --out stores/
  # CIFAR-10 straight from the archive, training split only, as LMDB and HDF5
  imgstore-convert convert cifar-10-python.tar.gz --to lmdb,hdf5 --split train --out stores/
  # A folder of photos (photos/<class>/*.jpg, or photos/{train,val}/<class>/...) at 64x64
  imgstore-convert convert photos/ --resize 64x64 --to lmdb,hdf5 --out stores/
  # The tutorial's experiment: 50,000 synthetic CIFAR-sized images, doubled
  imgstore-convert convert synthetic:n=50000 --split train --repeat 2 --out bench/
  # Four LMDB shards per split (a directory of shard stores plus shards.json)
  imgstore-convert convert synthetic:n=50000 --to lmdb --shards 4 --out sharded/
  # Stores convert into each other
  imgstore-convert convert stores/train.lmdb --to hdf5 --out copies/
  # Check every checksum, then compare two formats record by record
  imgstore-convert verify stores/train.h5 --against stores/train.lmdb
  imgstore-convert info stores/train.lmdb --json
)";

// Set by SIGINT/SIGTERM; checked between batches so that staged output is removed on the way
// out and nothing half-written is left behind.
volatile std::sig_atomic_t g_interrupted = 0;
extern "C" void on_signal(int) { g_interrupted = 1; }

class Interrupted : public Error {
 public:
  Interrupted() : Error("interrupted; partial output removed") {}
};

void check_interrupt() {
  if (g_interrupted) throw Interrupted();
}

// "png,lmdb,hdf5": every format of the table, the default of --to.
std::string all_format_names() {
  std::vector<std::string> names;
  for (Format f : all_formats()) names.push_back(to_string(f));
  return fmt::format("{}", fmt::join(names, ","));
}

std::vector<Format> parse_formats(const std::string& list) {
  std::vector<Format> formats;
  std::stringstream ss(list);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) continue;
    Format f = parse_format(item);
    if (std::find(formats.begin(), formats.end(), f) == formats.end()) formats.push_back(f);
  }
  if (formats.empty()) {
    throw UsageError(fmt::format("--to needs at least one of {}", format_names(", ")));
  }
  return formats;
}

Json describe(const StoreReader& reader) {
  const auto& m = reader.manifest();
  Json j;
  j["path"] = reader.path().string();
  j["format"] = to_string(m.format);
  j["split"] = m.split;
  j["count"] = m.count;
  j["shape"] = {m.shape.height, m.shape.width, m.shape.channels};
  j["encoding"] = to_string(m.encoding);
  j["format_version"] = m.format_version;
  j["variable_size"] = m.variable_size;
  if (m.variable_size) {
    j["min_height"] = m.min_height, j["max_height"] = m.max_height;
    j["min_width"] = m.min_width, j["max_width"] = m.max_width;
  }
  j["classes"] = m.class_names;
  j["skipped_inputs"] = Json::array();
  for (const auto& s : m.skipped_inputs) {
    j["skipped_inputs"].push_back({{"path", s.path}, {"reason", s.reason}});
  }
  j["bytes_on_disk"] = reader.bytes_on_disk();
  j["source"] = m.source;
  j["tool_version"] = m.tool_version;
  j["content_digest"] = to_hex64(m.content_digest);
  const auto ranges = reader.shard_ranges();
  j["shard_count"] = ranges.size();
  if (m.shard) {  // the path is one shard of a sharded store
    j["shard"] = {{"index", m.shard->index},
                  {"shards", m.shard->shards},
                  {"first_record", m.shard->first_record},
                  {"conversion_id", m.shard->conversion_id}};
  }
  if (is_sharded_store(reader.path())) {
    const ShardIndex index = read_shard_index(reader.path());
    j["conversion_id"] = index.conversion_id;
    j["shards"] = Json::array();
    for (const auto& s : index.shards) {
      j["shards"].push_back({{"file", s.file},
                             {"first_record", s.first_record},
                             {"count", s.count},
                             {"content_digest", to_hex64(s.content_digest)}});
    }
  }
  return j;
}

struct ConvertArgs {
  std::string source, to = all_format_names(), out, label_set = "fine", lmdb_encoding, encoding;
  // Image folders and list files.
  std::uint32_t channels = 3, resize_short = 0, max_side = 0;
  std::string resize;  // "HxW"
  std::uint64_t max_pixels = SourceOptions{}.max_pixels;
  int jpeg_quality = 90;
  bool skip_bad = false, jpeg_dct_scaling = false;
  std::vector<std::string> splits;
  std::uint64_t limit = 0;
  std::uint32_t repeat = 1;
  std::uint32_t shards = 1;
  unsigned threads = 0;
  int png_level = 6, hdf5_deflate = 0;
  std::size_t hdf5_chunk = 0;
  bool overwrite = false, no_fsync = false, quiet = false, json = false;
};

// "224x224" -> (224, 224); UsageError otherwise.
std::pair<std::uint32_t, std::uint32_t> parse_size(const std::string& text) {
  const auto x = text.find('x');
  unsigned long h = 0, w = 0;
  std::size_t end_h = 0, end_w = 0;
  try {
    if (x != std::string::npos) {
      h = std::stoul(text.substr(0, x), &end_h);
      w = std::stoul(text.substr(x + 1), &end_w);
    }
  } catch (const std::exception&) {
    h = w = 0;
  }
  if (x == std::string::npos || end_h != x || end_w != text.size() - x - 1 || h == 0 ||
      w == 0 || h > 65535 || w > 65535) {
    throw UsageError(fmt::format("--resize {}: expected HxW, e.g. 224x224 (1..65535 each)",
                                 text));
  }
  return {static_cast<std::uint32_t>(h), static_cast<std::uint32_t>(w)};
}

// The store encoding `f` gets in this conversion.
Encoding effective_encoding(const ConvertOptions& options, Format f) {
  auto it = options.encodings.find(f);
  if (it != options.encodings.end()) return it->second;
  return options.writer.encoding ? *options.writer.encoding : format_info(f).encodings.front();
}

SourceOptions source_options_for(const ConvertArgs& a, const ConvertOptions& options) {
  SourceOptions so;
  so.label_set = a.label_set;
  so.channels = a.channels;
  if (!a.resize.empty()) so.resize = parse_size(a.resize);
  so.resize_short = a.resize_short;
  so.max_side = a.max_side;
  so.jpeg_dct_scaling = a.jpeg_dct_scaling;
  so.max_pixels = a.max_pixels;
  so.skip_bad = a.skip_bad;
  so.threads = a.threads;
  so.jpeg_quality = a.jpeg_quality;
  // Pixels are decoded only if some store does not take JPEG payloads as they come.
  so.need_pixels = std::any_of(options.formats.begin(), options.formats.end(), [&](Format f) {
    return effective_encoding(options, f) != Encoding::Jpeg;
  });
  return so;
}

// Bad files left out (--skip-bad) and non-image entries never taken, for the summary.
void report_skipped(const Source& source, bool print, Json& summary) {
  summary["skipped"] = Json::array();
  const auto skipped = source.skipped_inputs();
  for (const SkippedInput& s : skipped) {
    summary["skipped"].push_back({{"path", s.path}, {"reason", s.reason}});
  }
  summary["ignored"] = Json::object();
  std::vector<std::string> ignored;
  for (const auto& [reason, n] : source.ignored_entries()) {
    summary["ignored"][reason] = n;
    ignored.push_back(fmt::format("{} {}", n, reason));
  }
  if (!print) return;
  if (!skipped.empty()) fmt::print("skipped {} bad input(s):\n", skipped.size());
  for (const SkippedInput& s : skipped) fmt::print("  {}: {}\n", s.path, s.reason);
  if (!ignored.empty()) {
    fmt::print("not images, ignored: {}\n", fmt::join(ignored, ", "));
  }
}

int run_convert(const ConvertArgs& a) {
  ConvertOptions options;
  options.formats = parse_formats(a.to);
  options.limit = a.limit;
  options.repeat = a.repeat;
  options.writer.png_level = a.png_level;
  // Parsed, not checked: each writer checks the options it is given.
  if (!a.encoding.empty()) options.writer.encoding = parse_encoding(a.encoding);
  if (!a.lmdb_encoding.empty()) options.encodings[Format::Lmdb] = parse_encoding(a.lmdb_encoding);
  options.writer.hdf5.chunk_records = a.hdf5_chunk;
  options.writer.hdf5.deflate = a.hdf5_deflate;
  options.writer.overwrite = a.overwrite;
  options.writer.durable = !a.no_fsync;
  options.writer.threads = a.threads;
  options.writer.shards = a.shards;
  options.writer.jpeg_quality = a.jpeg_quality;

  SourceOptions source_options = source_options_for(a, options);
  // --skip-bad decodes every file once before writing: show it, and let Ctrl-C stop it.
  std::unique_ptr<cli::ProgressBar> check_bar;
  source_options.validate_progress = [&](const std::string& split, std::uint64_t done,
                                         std::uint64_t total) {
    check_interrupt();
    if (!check_bar) check_bar = std::make_unique<cli::ProgressBar>("check " + split, a.quiet);
    check_bar->update(done, total);
    if (done == total && total > 0) check_bar.reset();
  };
  auto source = open_source(a.source, source_options);

  std::vector<std::string> splits = a.splits;
  if (splits.empty()) {
    for (const auto& s : source->splits()) splits.push_back(s.name);
  }
  // Check --shards against every split before writing any, so a bad value leaves no output.
  for (const auto& s : source->splits()) {
    if (std::find(splits.begin(), splits.end(), s.name) == splits.end()) continue;
    const std::uint64_t per_pass = a.limit ? std::min<std::uint64_t>(a.limit, s.count) : s.count;
    const std::uint64_t total = per_pass * a.repeat;
    if (a.shards > 1 && a.shards > total) {
      throw UsageError(fmt::format("--shards {} is more than the {} records of split '{}'",
                                   a.shards, total, s.name));
    }
  }
  Json summary;
  summary["source"] = source->description();
  summary["out"] = a.out;
  summary["splits"] = Json::array();
  if (!a.quiet && !a.json) fmt::print("source: {}\n", source->description());
  // All splits or none: a bad record in the last split leaves no store of this run behind.
  ConversionRun run(a.out);
  std::vector<ConvertResult> results;
  for (const auto& split : splits) {
    cli::ProgressBar bar(fmt::format("{:>6}", split), a.quiet);
    options.progress = [&](std::uint64_t done, std::uint64_t total) {
      check_interrupt();
      bar.update(done, total);
    };
    results.push_back(run.add_split(*source, split, options));
    bar.finish();
  }
  check_interrupt();
  run.commit();
  for (const ConvertResult& r : results) {
    Json js;
    js["split"] = r.split;
    js["count"] = r.count;
    js["shape"] = {r.shape.height, r.shape.width, r.shape.channels};
    js["read_seconds"] = r.read_seconds;
    js["total_seconds"] = r.total_seconds;
    js["stores"] = Json::array();
    if (!a.quiet && !a.json) {
      // A variable-size split's shape holds only its channels (height and width are 0).
      const std::string shape = r.shape.height == 0 ? fmt::format("any size, {} channels", r.shape.channels)
                                                     : to_string(r.shape);
      fmt::print("{}: {} images of {} (waited {:.2f}s for the source)\n", r.split, r.count, shape,
                 r.read_seconds);
    }
    for (const auto& f : r.formats) {
      const double rate = f.seconds > 0 ? r.count / f.seconds : 0;
      js["stores"].push_back({{"format", to_string(f.format)},
                              {"path", f.path.string()},
                              {"shards", f.shards},
                              {"seconds", f.seconds},
                              {"images_per_second", rate},
                              {"bytes_on_disk", f.bytes_on_disk}});
      if (!a.quiet && !a.json) {
        fmt::print("  {:<5} {:<40} {:8.2f}s {:>10.0f} img/s {:>10.1f} MiB\n", to_string(f.format),
                   f.path.string(), f.seconds, rate, f.bytes_on_disk / 1048576.0);
      }
    }
    summary["splits"].push_back(js);
  }
  report_skipped(*source, !a.quiet && !a.json, summary);
  if (a.json) std::cout << summary.dump(2) << "\n";
  return cli::kOk;
}

int run_verify(const std::string& store, const std::string& against, bool quiet, bool json) {
  auto reader = open_store(store);
  cli::ProgressBar bar("verify", quiet);
  auto progress = [&](std::uint64_t done, std::uint64_t total) {
    check_interrupt();
    bar.update(done, total);
  };
  VerifyResult result = verify_store(*reader, progress);
  bar.finish();
  Json j;
  j["store"] = reader->path().string();
  j["format"] = to_string(reader->format());
  j["records"] = result.records;
  j["shard_count"] = reader->shard_ranges().size();
  j["content_digest"] = to_hex64(result.content_digest);
  if (!against.empty()) {
    auto other = open_store(against);
    cli::ProgressBar bar2("compare", quiet);
    const CompareResult cmp = compare_stores(*reader, *other, [&](std::uint64_t done, std::uint64_t total) {
      check_interrupt();
      bar2.update(done, total);
    });
    bar2.finish();
    j["against"] = other->path().string();
    j["identical"] = cmp.max_abs_diff == 0;
    if (!cmp.exact) {  // a lossy side: measured, not required equal
      j["max_abs_diff"] = cmp.max_abs_diff;
      j["psnr_db"] = std::isfinite(cmp.psnr_db) ? Json(cmp.psnr_db) : Json("inf");
      if (!json && !quiet) {
        fmt::print("compared with a lossy store: max abs difference {}, PSNR {:.2f} dB\n",
                   cmp.max_abs_diff, cmp.psnr_db);
      }
    }
  }
  if (json) {
    std::cout << j.dump(2) << "\n";
  } else if (!quiet) {
    const auto shards = reader->shard_ranges().size();
    fmt::print("ok: {} ({}{}) {} records, checksums and content digest {} verified\n",
               reader->path().string(), to_string(reader->format()),
               shards > 1 ? fmt::format(", {} shards", shards) : "", result.records,
               to_hex64(result.content_digest));
    if (!against.empty() && j["identical"].get<bool>()) {
      fmt::print("ok: identical to {} record by record (pixels and labels)\n", against);
    }
  }
  return cli::kOk;
}

int run_info(const std::string& store, bool json) {
  auto reader = open_store(store);
  Json j = describe(*reader);
  if (json) {
    std::cout << j.dump(2) << "\n";
    return cli::kOk;
  }
  const auto& m = reader->manifest();
  fmt::print("path:      {}\n", reader->path().string());
  fmt::print("format:    {} (encoding {}, format version {})\n", to_string(m.format),
             to_string(m.encoding), m.format_version);
  if (m.variable_size) {
    fmt::print("sizes:     variable, height {}..{}, width {}..{}\n", m.min_height, m.max_height,
               m.min_width, m.max_width);
  }
  fmt::print("split:     {}\n", m.split);
  fmt::print("records:   {}\n", m.count);
  fmt::print("shape:     {} (H x W x C, uint8)\n", to_string(m.shape));
  fmt::print("classes:   {}{}\n", m.class_names.size(),
             m.class_names.empty() ? "" : " (" + fmt::format("{}", fmt::join(m.class_names, ", ")) + ")");
  fmt::print("on disk:   {:.2f} MiB ({} bytes)\n", reader->bytes_on_disk() / 1048576.0,
             reader->bytes_on_disk());
  fmt::print("source:    {}\n", m.source);
  fmt::print("written by imgstore {}\n", m.tool_version);
  fmt::print("digest:    {}\n", to_hex64(m.content_digest));
  if (j.contains("shards")) {
    std::vector<std::uint64_t> counts;
    for (const auto& s : j["shards"]) counts.push_back(s["count"].get<std::uint64_t>());
    fmt::print("shards:    {} ({} records), conversion {}\n", counts.size(),
               fmt::join(counts, ", "), j["conversion_id"].get<std::string>());
  }
  if (m.shard) {
    fmt::print("shard:     {} of {}, records {}.. of the whole store, conversion {}\n",
               m.shard->index, m.shard->shards, m.shard->first_record, m.shard->conversion_id);
  }
  return cli::kOk;
}

// Options of image folders and list files.
void add_photo_options(CLI::App& convert, ConvertArgs& ca) {
  convert.add_option("--channels", ca.channels, "photos: 3 (RGB) or 1 (L), as PIL's convert")
      ->check(CLI::IsMember({1, 3}))->capture_default_str();
  auto* resize = convert.add_option("--resize", ca.resize,
                                    "photos: resize every image to HxW (a fixed-size store)");
  auto* rshort = convert.add_option("--resize-short", ca.resize_short,
                                    "photos: short side to S, as torchvision's Resize(S)")
                     ->check(CLI::Range(1u, 65535u));
  auto* max_side = convert.add_option("--max-side", ca.max_side,
                                      "photos: shrink images whose long side is above S")
                       ->check(CLI::Range(1u, 65535u));
  resize->excludes(rshort)->excludes(max_side);
  rshort->excludes(max_side);
  convert.add_option("--max-pixels", ca.max_pixels,
                     "photos: refuse images of more pixels (default: PIL's bomb limit)")
      ->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1} << 40))->capture_default_str();
  convert.add_option("--jpeg-quality", ca.jpeg_quality, "quality of JPEGs encoded here, 1..100")
      ->check(CLI::Range(1, 100))->capture_default_str();
  convert.add_flag("--jpeg-dct-scaling", ca.jpeg_dct_scaling,
                   "photos: shrink JPEGs by decoding at a DCT scale first (faster, not PIL-exact)");
  convert.add_flag("--skip-bad", ca.skip_bad,
                   "photos: skip bad files and list them (decodes every file twice)");
}

}  // namespace

int main(int argc, char** argv) {
  // Keep freed memory up to 64 MiB for reuse. With glibc's defaults every LMDB transaction's
  // overflow pages and every photo batch went back to the kernel when freed and were faulted
  // in again (24,600 page faults converting 10,860 JPEGs to LMDB; 16,300 with this; wall median
  // 0.61 -> 0.52 s, peak RSS +11 MiB). Blocks over 32 MiB (a huge photo's pixels) are still
  // mapped and unmapped on their own, so one large image does not pin its memory.
  ::mallopt(M_MMAP_THRESHOLD, 32 << 20);
  ::mallopt(M_TRIM_THRESHOLD, 64 << 20);
  std::vector<std::string> kinds;
  for (Format f : all_formats()) kinds.push_back(format_info(f).description);
  CLI::App app{fmt::format("imgstore-convert: store image data sets as {} stores, and check them",
                           fmt::join(kinds, ", "))};
  app.footer(kExamples);
  app.require_subcommand(1);

  ConvertArgs ca;
  auto* convert = app.add_subcommand("convert", "convert a source into stores, one per split and format");
  convert->add_option("source", ca.source,
                      "CIFAR-10/100 folder or .tar.gz, IDX folder or file, a store, an image folder "
                      "(ROOT/<class>/*.jpg), a .csv image list, or synthetic:k=v,...")
      ->required();
  convert->add_option("--to", ca.to, "formats, comma-separated: " + all_format_names())
      ->capture_default_str();
  convert->add_option("--out", ca.out, "output directory (created if missing)")->required();
  convert->add_option("--split", ca.splits, "split(s) to convert (default: all the source has)");
  convert->add_option("--limit", ca.limit, "only the first N records of each split");
  convert->add_option("--repeat", ca.repeat, "write each split K times over (the tutorial doubled CIFAR-10)")
      ->check(CLI::Range(1u, 1000u));
  convert->add_option("--threads", ca.threads, "worker threads (default: all cores)");
  convert->add_option("--shards", ca.shards,
                      "write each store as K shards plus an index (shards.json), 1..99999 and at "
                      "most the record count")
      ->check(CLI::Range(1u, ShardIndex::kMaxShards))->capture_default_str();
  convert->add_option("--png-level", ca.png_level, "zlib level for PNG, 0..9")
      ->check(CLI::Range(0, 9))->capture_default_str();
  convert->add_option("--encoding", ca.encoding,
                      "payload encoding of every store: " + encoding_names(all_encodings()) +
                          " (default: each format's own; jpeg alone passes source JPEGs "
                          "through untouched)");
  convert->add_option("--lmdb-encoding", ca.lmdb_encoding,
                      "LMDB payload: " + encoding_names(format_info(Format::Lmdb).encodings) +
                          " (default: " + to_string(format_info(Format::Lmdb).encodings.front()) +
                          ")");
  convert->add_option("--hdf5-chunk", ca.hdf5_chunk, "HDF5 chunk size in images (default: contiguous)");
  convert->add_option("--hdf5-deflate", ca.hdf5_deflate, "HDF5 deflate level 1..9 (needs --hdf5-chunk)");
  convert->add_option("--label-set", ca.label_set, "CIFAR-100 labels: fine or coarse")->capture_default_str();
  add_photo_options(*convert, ca);
  convert->add_flag("--overwrite", ca.overwrite, "replace existing stores");
  convert->add_flag("--no-fsync", ca.no_fsync, "skip the final flush to disk (faster, not crash-safe)");
  convert->add_flag("--quiet,-q", ca.quiet, "no progress bar or summary");
  convert->add_flag("--json", ca.json, "print the summary as JSON");

  std::string store, against;
  bool quiet = false, json = false;
  auto* verify = app.add_subcommand("verify", "re-read every record and check checksums and count");
  verify->add_option("store", store, "store path")->required();
  verify->add_option("--against", against, "also compare record by record with this store");
  verify->add_flag("--quiet,-q", quiet, "no progress bar or summary");
  verify->add_flag("--json", json, "print the result as JSON");
  unsigned verify_threads = 0;
  verify->add_option("--threads", verify_threads, "worker threads (default: all cores)");

  auto* info = app.add_subcommand("info", "print format, count, shape, classes and size on disk");
  info->add_option("store", store, "store path")->required();
  info->add_flag("--json", json, "print as JSON");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? cli::kOk : cli::kUsage;
  }

  std::signal(SIGINT, on_signal);
  std::signal(SIGTERM, on_signal);
  const unsigned limit_threads = *convert ? ca.threads : verify_threads;
  std::unique_ptr<tbb::global_control> thread_limit;
  if (limit_threads > 0) {
    thread_limit = std::make_unique<tbb::global_control>(
        tbb::global_control::max_allowed_parallelism, limit_threads);
  }

  try {
    if (*convert) return run_convert(ca);
    if (*verify) return run_verify(store, against, quiet, json);
    if (*info) return run_info(store, json);
  } catch (const Interrupted& e) {
    std::cerr << "imgstore-convert: " << e.what() << "\n";
    return 130;
  } catch (const UsageError& e) {
    std::cerr << "imgstore-convert: " << e.what() << "\n";
    return cli::kUsage;
  } catch (const Error& e) {
    std::cerr << "imgstore-convert: " << e.what() << "\n";
    return cli::kBadData;
  } catch (const std::exception& e) {
    std::cerr << "imgstore-convert: unexpected error: " << e.what() << "\n";
    return cli::kBadData;
  }
  return cli::kUsage;
}
