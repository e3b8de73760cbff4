// Format-independent parts of readers and writers, and the dispatch by format.
#include "imgstore/store.hpp"


#include <algorithm>

#include <fmt/format.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include "detail/fs_util.hpp"
#include "formats/encoding_table.hpp"
#include "formats/formats.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"

namespace imgstore {

namespace fs = std::filesystem;
using detail::quote;

namespace {
// Records per hashing task: 64 CIFAR-sized images are 192 KiB, far above a task's overhead.
constexpr std::size_t kHashGrain = 64;
}  // namespace

std::string detail::record_key(std::uint64_t index) { return fmt::format("{:08d}", index); }

std::string store_file_name(const std::string& split, Format format) {
  return split + format_info(format).suffix;
}

// ---- StoreReader ----

void StoreReader::read_many(const std::uint64_t* indices, std::size_t n, std::uint8_t* out,
                            std::int64_t* labels) const {
  check_fixed_size();
  const std::size_t bytes = image_bytes();
  for (std::size_t i = 0; i < n; ++i) {
    std::int64_t label = read_one(indices[i], out + i * bytes);
    if (labels) labels[i] = label;
  }
}

std::vector<std::uint8_t> StoreReader::read_one(std::uint64_t index, std::int64_t* label) const {
  std::vector<std::uint8_t> pixels(image_bytes());
  std::int64_t l = read_one(index, pixels.data());
  if (label) *label = l;
  return pixels;
}

Shape StoreReader::record_shape(std::uint64_t index) const {
  check_index(index);
  return shape();
}

void StoreReader::read_record(std::uint64_t index, EncodedRecord& out) const {
  out.shape = record_shape(index);
  out.encoding = Encoding::Raw;
  out.bytes.resize(out.shape.bytes());
  out.label = read_one(index, out.bytes.data());
}

std::uint64_t StoreReader::bytes_on_disk() const { return detail::bytes_on_disk(path_); }

void StoreReader::check_index(std::uint64_t index) const {
  if (index >= manifest_.count) {
    throw UsageError(fmt::format("{}: record {} is out of range (the store has {} records)",
                                 quote(path_), index, manifest_.count));
  }
}

std::string StoreReader::record_name(std::uint64_t index) const {
  return fmt::format("record {}", index);
}

void StoreReader::check_fixed_size() const {
  if (manifest_.variable_size) {
    throw UsageError(fmt::format("{} holds images of different sizes: read them with "
                                 "read_record(), or give the loader a transform that outputs "
                                 "one size", quote(path_)));
  }
}

void StoreReader::check_record(std::uint64_t index, const std::uint8_t* pixels,
                               std::int64_t label) const {
  check_payload_checksum(index, pixels, image_bytes(), label);
}

void StoreReader::check_payload_checksum(std::uint64_t index, const std::uint8_t* data,
                                         std::size_t size, std::int64_t label) const {
  if (!options_.verify_checksums) return;
  std::uint64_t actual = record_checksum(data, size, label);
  std::uint64_t expected = manifest_.checksums[index];
  if (actual != expected) {
    throw DataError(fmt::format("corrupt record in {} {}: checksum {} does not match the manifest's {}",
                                quote(path_), record_name(index), to_hex64(actual),
                                to_hex64(expected)));
  }
}

// ---- StoreWriter ----

StoreWriter::StoreWriter(Format format, fs::path path, StoreSpec spec, WriterOptions options)
    : format_(format),
      encoding_(options.encoding.value_or(format_info(format).encodings.front())),
      path_(std::move(path)),
      spec_(std::move(spec)),
      options_(options) {
  detail::check_writer_encoding(format_, encoding_, quote(path_));
  const bool variable_ok = spec_.variable_size && spec_.shape.height == 0 &&
                           spec_.shape.width == 0 && spec_.shape.channels >= 1;
  if (spec_.variable_size ? !variable_ok || spec_.shape.channels > 4
                          : spec_.shape.bytes() == 0 || spec_.shape.channels > 4) {
    throw UsageError(fmt::format("{}: cannot store images of shape {}", quote(path_),
                                 to_string(spec_.shape)));
  }
  if (options_.png_level < 0 || options_.png_level > 9) {
    throw UsageError(fmt::format("PNG level {} is not in 0..9", options_.png_level));
  }
  if (spec_.variable_size && !format_info(format_).variable_size) {
    throw UsageError(fmt::format("{}: a {} store cannot hold images of different sizes yet; "
                                 "use lmdb, or resize them to one size (--resize HxW)",
                                 quote(path_), format_info(format_).description));
  }
  if (options_.jpeg_quality < 1 || options_.jpeg_quality > 100) {
    throw UsageError(fmt::format("JPEG quality {} is not in 1..100", options_.jpeg_quality));
  }
  checksums_.reserve(static_cast<std::size_t>(spec_.count));
}

void StoreWriter::check_batch(const ImageBatch& batch) const {
  const std::string where = fmt::format("{}: batch at record {}", quote(path_), written_);
  if (spec_.variable_size) {
    if (batch.shape.channels != spec_.shape.channels) {
      throw DataError(fmt::format("{} has {} channels, the store holds {}", where,
                                  batch.shape.channels, spec_.shape.channels));
    }
    for (std::size_t i = 0; i < batch.size(); ++i) {
      const Shape& s = batch.image_shape(i);
      if (s.height == 0 || s.width == 0 || s.height > kMaxImageSide || s.width > kMaxImageSide ||
          s.channels != spec_.shape.channels) {
        throw DataError(fmt::format("{}: record {} has shape {}, not a {}-channel image of "
                                    "1..{} pixels a side", quote(path_), written_ + i,
                                    to_string(s), spec_.shape.channels, kMaxImageSide));
      }
    }
  } else if (batch.variable_size() || batch.shape != spec_.shape) {
    const Shape& s = batch.variable_size() && batch.size() > 0 ? batch.shapes[0] : batch.shape;
    throw DataError(fmt::format("{}: record {} has shape {}, the store holds {}", quote(path_),
                                written_, to_string(s), to_string(spec_.shape)));
  }
  const bool payload_only = batch.payload_encoding == encoding_ && !encoding_info(encoding_).lossless;
  if (!payload_only && batch.size() > 0) {
    // Variable size: offsets must step by each record's bytes from 0 to the end of pixels.
    bool consistent = !batch.variable_size() || (batch.offsets.size() == batch.size() + 1 &&
                                                 batch.offsets[0] == 0);
    std::size_t sum = 0;
    for (std::size_t i = 0; i < batch.size() && consistent; ++i) {
      if (batch.variable_size()) {
        consistent = batch.offsets[i + 1] - batch.offsets[i] == batch.image_bytes(i);
      }
      sum += batch.image_bytes(i);
    }
    if (!consistent || batch.pixels.size() != sum) {
      throw DataError(fmt::format("{} has {} pixel bytes for {} images of {} bytes", where,
                                  batch.pixels.size(), batch.size(), sum));
    }
  }
  if (batch.payload_encoding && batch.payload_offsets.size() != batch.size() + 1) {
    throw DataError(fmt::format("{} has {} payload offsets for {} images", where,
                                batch.payload_offsets.size(), batch.size()));
  }
  if (written_ + batch.size() > spec_.count) {
    throw DataError(fmt::format("{}: more than the {} records announced arrived", quote(path_),
                                spec_.count));
  }
}

void StoreWriter::for_record_blocks(std::size_t n, std::size_t grain,
                                    const std::function<void(std::size_t, std::size_t)>& body) const {
  const int threads = options_.threads == 0 ? tbb::task_arena::automatic
                                            : static_cast<int>(options_.threads);
  tbb::task_arena arena(threads);
  arena.execute([&] {
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, n, std::max<std::size_t>(grain, 1)),
                      [&](const tbb::blocked_range<std::size_t>& r) { body(r.begin(), r.end()); });
  });
}

// A lossy store keeps the bytes it was given (a source JPEG, no generation loss) or encodes
// the pixels once here, in parallel; the checksums then cover exactly the stored bytes.
const ImageBatch& StoreWriter::with_payloads(const ImageBatch& batch) {
  if (encoding_info(encoding_).lossless || batch.payload_encoding == encoding_) return batch;
  const auto& codec = detail::encoding_entry(encoding_);
  const std::size_t n = batch.size();
  std::vector<std::vector<std::uint8_t>> parts(n);
  for_record_blocks(n, 1, [&](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) {
      codec.encode(batch.image(i), batch.image_shape(i), options_, parts[i]);
    }
  });
  encoded_.shape = batch.shape;
  encoded_.labels = batch.labels;
  encoded_.shapes = batch.shapes;
  encoded_.offsets.clear();
  encoded_.pixels.clear();
  encoded_.payload_encoding = encoding_;
  encoded_.payload.clear();
  encoded_.payload_offsets.assign(1, 0);
  for (const auto& part : parts) {
    encoded_.payload.insert(encoded_.payload.end(), part.begin(), part.end());
    encoded_.payload_offsets.push_back(encoded_.payload.size());
  }
  return encoded_;
}

void StoreWriter::write(const ImageBatch& input) {
  if (committed_) throw UsageError(fmt::format("{}: write after commit", quote(path_)));
  check_batch(input);
  const ImageBatch& batch = with_payloads(input);
  const bool lossy = !encoding_info(encoding_).lossless;
  const auto classes = spec_.class_names.size();
  std::vector<std::uint64_t> sums(batch.size());
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const auto label = batch.labels[i];
    if (label < 0 || (classes > 0 && static_cast<std::uint64_t>(label) >= classes)) {
      throw DataError(fmt::format("{}: record {} has label {}, outside the {} classes",
                                  quote(path_), written_ + i, label, classes));
    }
    const Shape& s = batch.image_shape(i);
    min_shape_.height = std::min(min_shape_.height, s.height);
    min_shape_.width = std::min(min_shape_.width, s.width);
    max_shape_.height = std::max(max_shape_.height, s.height);
    max_shape_.width = std::max(max_shape_.width, s.width);
  }
  // Hashing every byte is a good part of a raw store's write: on all the writer's threads.
  for_record_blocks(batch.size(), kHashGrain, [&](std::size_t begin, std::size_t end) {
    for (std::size_t i = begin; i < end; ++i) {
      if (lossy) {
        const std::size_t from = batch.payload_offsets[i], to = batch.payload_offsets[i + 1];
        sums[i] = record_checksum(batch.payload.data() + from, to - from, batch.labels[i]);
      } else {
        sums[i] = record_checksum(batch.image(i), batch.image_bytes(i), batch.labels[i]);
      }
    }
  });
  write_records(batch, sums.data(), written_);
  checksums_.insert(checksums_.end(), sums.begin(), sums.end());
  written_ += batch.size();
}

void StoreWriter::commit() {
  if (committed_) return;
  if (written_ != spec_.count) {
    throw DataError(fmt::format("{}: {} records written, {} announced", quote(path_), written_,
                                spec_.count));
  }
  Manifest m;
  m.format = format_;
  m.tool_version = tool_version();
  m.split = spec_.split;
  m.source = spec_.source;
  m.count = spec_.count;
  m.shape = spec_.shape;
  m.class_names = spec_.class_names;
  m.encoding = encoding_;
  m.variable_size = spec_.variable_size;
  m.skipped_inputs = spec_.skipped_inputs;
  m.format_version = format_version_for(m.variable_size, m.encoding);
  if (m.variable_size && m.count > 0) {
    m.min_height = min_shape_.height;
    m.min_width = min_shape_.width;
    m.max_height = max_shape_.height;
    m.max_width = max_shape_.width;
  }
  m.checksums = checksums_;
  ContentDigest digest;
  for (auto c : checksums_) digest.add(c);
  m.content_digest = digest.value();
  m.shard = spec_.shard;
  finish(m);
  committed_ = true;
}

// ---- dispatch ----

Format detect_store_format(const fs::path& path) {
  std::error_code ec;
  auto status = fs::status(path, ec);
  if (!fs::exists(status)) throw IoError(fmt::format("{} does not exist", quote(path)));
  if (is_sharded_store(path)) return read_shard_index(path).format;
  if (auto format = detail::detect_unsharded_format(path)) return *format;
  // Name what was looked for, from the table: "(no manifest.json, no data.mdb)".
  std::vector<std::string> looked_for;
  for (const auto& e : detail::format_table()) {
    if (e.info.directory == fs::is_directory(status)) looked_for.push_back(e.marker);
  }
  if (fs::is_directory(status)) {
    std::string missing;
    for (const auto& m : looked_for) missing += (missing.empty() ? "no " : ", no ") + m;
    throw DataError(fmt::format("{} is a directory but not an imgstore store ({})", quote(path),
                                missing));
  }
  std::vector<std::string> kinds;
  for (const auto& e : detail::format_table()) kinds.push_back(e.info.description);
  throw DataError(fmt::format("{} is not an imgstore store (not a {})", quote(path),
                              detail::join_names(kinds, " or ")));
}

std::unique_ptr<StoreReader> detail::open_single_store(Format format, const fs::path& path,
                                                       const ReaderOptions& options) {
  return detail::format_entry(format).open(path, options);
}

std::unique_ptr<StoreReader> open_store(const fs::path& path, const ReaderOptions& options) {
  if (is_sharded_store(path)) return detail::open_sharded_store(path, options);
  return detail::open_single_store(detect_store_format(path), path, options);
}

std::unique_ptr<StoreWriter> create_store(Format format, const fs::path& path,
                                          const StoreSpec& spec, const WriterOptions& options) {
  if (options.shards == 0 || options.shards > ShardIndex::kMaxShards) {
    throw UsageError(fmt::format("{}: --shards {} is not in 1..{}", quote(path), options.shards,
                                 ShardIndex::kMaxShards));
  }
  if (options.shards > 1) {
    if (spec.shard) throw UsageError(fmt::format("{}: a shard cannot be sharded", quote(path)));
    if (options.shards > spec.count) {
      throw UsageError(fmt::format("{}: cannot split {} records into {} shards (--shards must "
                                   "not exceed the record count)", quote(path), spec.count,
                                   options.shards));
    }
    return detail::create_sharded_store(format, path, spec, options);
  }
  return detail::format_entry(format).create(path, spec, options);
}

void store_one(Format format, const fs::path& path, const Shape& shape,
               const std::uint8_t* pixels, std::int64_t label, const WriterOptions& options) {
  ImageBatch batch;
  batch.resize(shape, 1);
  std::copy(pixels, pixels + shape.bytes(), batch.pixels.begin());
  batch.labels[0] = label;
  store_many(format, path, batch, {}, options);
}

void store_many(Format format, const fs::path& path, const ImageBatch& images,
                const std::vector<std::string>& class_names, const WriterOptions& options) {
  StoreSpec spec;
  spec.split = path.stem().string();
  spec.source = "imgstore::store_many";
  spec.count = images.size();
  spec.shape = images.shape;
  spec.class_names = class_names;
  auto writer = create_store(format, path, spec, options);
  writer->write(images);
  writer->commit();
}

ImageBatch read_all(const StoreReader& reader) {
  ImageBatch batch;
  batch.resize(reader.shape(), reader.size());
  std::vector<std::uint64_t> indices(reader.size());
  for (std::size_t i = 0; i < indices.size(); ++i) indices[i] = i;
  reader.read_many(indices.data(), indices.size(), batch.pixels.data(), batch.labels.data());
  return batch;
}

}  // namespace imgstore
