// Format-independent parts of readers and writers, and the dispatch by format.
#include "imgstore/store.hpp"


#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "formats/encoding_table.hpp"
#include "formats/formats.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"

namespace imgstore {

namespace fs = std::filesystem;
using detail::quote;

std::string detail::record_key(std::uint64_t index) { return fmt::format("{:08d}", index); }

std::string store_file_name(const std::string& split, Format format) {
  return split + format_info(format).suffix;
}

// ---- StoreReader ----

void StoreReader::read_many(const std::uint64_t* indices, std::size_t n, std::uint8_t* out,
                            std::int64_t* labels) const {
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

void StoreReader::check_record(std::uint64_t index, const std::uint8_t* pixels,
                               std::int64_t label) const {
  if (!options_.verify_checksums) return;
  std::uint64_t actual = record_checksum(pixels, image_bytes(), label);
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
  if (spec_.shape.bytes() == 0 || spec_.shape.channels > 4) {
    throw UsageError(fmt::format("{}: cannot store images of shape {}", quote(path_),
                                 to_string(spec_.shape)));
  }
  if (options_.png_level < 0 || options_.png_level > 9) {
    throw UsageError(fmt::format("PNG level {} is not in 0..9", options_.png_level));
  }
  checksums_.reserve(static_cast<std::size_t>(spec_.count));
}

void StoreWriter::write(const ImageBatch& batch) {
  if (committed_) throw UsageError(fmt::format("{}: write after commit", quote(path_)));
  if (batch.shape != spec_.shape) {
    throw DataError(fmt::format("{}: record {} has shape {}, the store holds {}", quote(path_),
                                written_, to_string(batch.shape), to_string(spec_.shape)));
  }
  if (batch.pixels.size() != batch.size() * spec_.shape.bytes()) {
    throw DataError(fmt::format("{}: batch at record {} has {} pixel bytes for {} images",
                                quote(path_), written_, batch.pixels.size(), batch.size()));
  }
  if (written_ + batch.size() > spec_.count) {
    throw DataError(fmt::format("{}: more than the {} records announced arrived", quote(path_),
                                spec_.count));
  }
  const auto classes = spec_.class_names.size();
  std::vector<std::uint64_t> sums(batch.size());
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const auto label = batch.labels[i];
    if (label < 0 || (classes > 0 && static_cast<std::uint64_t>(label) >= classes)) {
      throw DataError(fmt::format("{}: record {} has label {}, outside the {} classes",
                                  quote(path_), written_ + i, label, classes));
    }
    sums[i] = record_checksum(batch.image(i), spec_.shape.bytes(), label);
  }
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
