#include "imgstore/convert.hpp"

#include <algorithm>
#include <chrono>
#include <numeric>

#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"

namespace imgstore {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

}  // namespace

ConvertResult convert_split(const Source& source, const std::string& split,
                            const fs::path& out_dir, const ConvertOptions& options) {
  const auto start = Clock::now();
  if (options.formats.empty()) throw UsageError("no output format requested");
  if (options.repeat == 0) throw UsageError("--repeat must be at least 1");
  SplitInfo info;
  bool found = false;
  for (auto& s : source.splits()) {
    if (s.name == split) info = s, found = true;
  }
  if (!found) throw UsageError(fmt::format("{} has no split '{}'", source.description(), split));

  const std::uint64_t per_pass =
      options.limit ? std::min<std::uint64_t>(options.limit, info.count) : info.count;
  const std::uint64_t total = per_pass * options.repeat;

  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) {
    throw IoError(fmt::format("cannot create output directory {}: {}", detail::quote(out_dir),
                              ec.message()));
  }

  StoreSpec spec;
  spec.split = split;
  spec.source = source.description();
  if (options.limit) spec.source += fmt::format(", first {}", per_pass);
  if (options.repeat > 1) spec.source += fmt::format(", repeated {}x", options.repeat);
  spec.count = total;
  spec.shape = info.shape;
  spec.class_names = info.class_names;

  ConvertResult result;
  result.split = split;
  result.count = total;
  result.shape = info.shape;
  std::vector<std::unique_ptr<StoreWriter>> writers;
  for (Format f : options.formats) {
    auto path = out_dir / store_file_name(split, f);
    WriterOptions writer = options.writer;
    if (auto it = options.encodings.find(f); it != options.encodings.end()) {
      writer.encoding = it->second;
    }
    writers.push_back(create_store(f, path, spec, writer));
    result.formats.push_back(FormatResult{f, path, options.writer.shards, 0, 0});
  }

  ImageBatch batch;
  std::uint64_t done = 0;
  for (std::uint32_t pass = 0; pass < options.repeat; ++pass) {
    auto stream = source.open(split);
    std::uint64_t pass_done = 0;
    while (pass_done < per_pass) {
      auto t0 = Clock::now();
      const auto want = std::min<std::uint64_t>(options.batch_records, per_pass - pass_done);
      if (!stream->next(batch, static_cast<std::size_t>(want))) {
        throw DataError(fmt::format("{}: split '{}' ended after {} records, {} announced",
                                    source.description(), split, pass_done, per_pass));
      }
      if (batch.size() > want) {  // a source may hand over more; keep what the limit allows
        batch.resize(batch.shape, static_cast<std::size_t>(want));
      }
      result.read_seconds += seconds_since(t0);
      for (std::size_t i = 0; i < writers.size(); ++i) {
        auto t1 = Clock::now();
        writers[i]->write(batch);
        result.formats[i].seconds += seconds_since(t1);
      }
      pass_done += batch.size();
      done += batch.size();
      if (options.progress) options.progress(done, total);
    }
  }
  for (std::size_t i = 0; i < writers.size(); ++i) {
    auto t1 = Clock::now();
    writers[i]->commit();
    result.formats[i].seconds += seconds_since(t1);
    result.formats[i].bytes_on_disk = detail::bytes_on_disk(result.formats[i].path);
  }
  result.total_seconds = seconds_since(start);
  return result;
}

VerifyResult verify_store(const StoreReader& reader,
                          const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  const auto& m = reader.manifest();
  const std::size_t n = reader.size();
  const std::size_t kChunk = 1024;
  std::vector<std::uint64_t> indices;
  std::vector<std::uint8_t> pixels;
  std::vector<std::int64_t> labels;
  ContentDigest digest;
  for (std::size_t first = 0; first < n; first += kChunk) {
    const std::size_t count = std::min(kChunk, n - first);
    indices.resize(count);
    std::iota(indices.begin(), indices.end(), first);
    pixels.resize(count * reader.image_bytes());
    labels.resize(count);
    reader.read_many(indices.data(), count, pixels.data(), labels.data());
    for (std::size_t i = 0; i < count; ++i) {
      auto sum = record_checksum(pixels.data() + i * reader.image_bytes(), reader.image_bytes(),
                                 labels[i]);
      if (sum != m.checksums[first + i]) {
        throw DataError(fmt::format("corrupt record in {} record {}: checksum {} does not match "
                                    "the manifest's {}", detail::quote(reader.path()), first + i,
                                    to_hex64(sum), to_hex64(m.checksums[first + i])));
      }
      digest.add(sum);
    }
    if (progress) progress(first + count, n);
  }
  if (digest.value() != m.content_digest) {
    throw DataError(fmt::format("{}: content digest {} does not match the manifest's {}",
                                detail::quote(reader.path()), to_hex64(digest.value()),
                                to_hex64(m.content_digest)));
  }
  return VerifyResult{n, digest.value()};
}

void compare_stores(const StoreReader& a, const StoreReader& b,
                    const std::function<void(std::uint64_t, std::uint64_t)>& progress) {
  const auto qa = detail::quote(a.path()), qb = detail::quote(b.path());
  if (a.size() != b.size()) {
    throw DataError(fmt::format("{} has {} records, {} has {}", qa, a.size(), qb, b.size()));
  }
  if (a.shape() != b.shape()) {
    throw DataError(fmt::format("{} holds {} images, {} holds {}", qa, to_string(a.shape()), qb,
                                to_string(b.shape())));
  }
  const std::size_t n = a.size(), bytes = a.image_bytes(), kChunk = 1024;
  std::vector<std::uint64_t> indices;
  std::vector<std::uint8_t> pa, pb;
  std::vector<std::int64_t> la, lb;
  for (std::size_t first = 0; first < n; first += kChunk) {
    const std::size_t count = std::min(kChunk, n - first);
    indices.resize(count);
    std::iota(indices.begin(), indices.end(), first);
    pa.resize(count * bytes), pb.resize(count * bytes), la.resize(count), lb.resize(count);
    a.read_many(indices.data(), count, pa.data(), la.data());
    b.read_many(indices.data(), count, pb.data(), lb.data());
    for (std::size_t i = 0; i < count; ++i) {
      if (la[i] != lb[i]) {
        throw DataError(fmt::format("record {} differs: label {} in {}, {} in {}", first + i,
                                    la[i], qa, lb[i], qb));
      }
      const auto* x = pa.data() + i * bytes;
      const auto* y = pb.data() + i * bytes;
      auto mismatch = std::mismatch(x, x + bytes, y);
      if (mismatch.first != x + bytes) {
        throw DataError(fmt::format("record {} differs: pixel byte {} is {} in {}, {} in {}",
                                    first + i, mismatch.first - x, *mismatch.first, qa,
                                    *mismatch.second, qb));
      }
    }
    if (progress) progress(first + count, n);
  }
}

}  // namespace imgstore
