// Reading and writing stores. One store holds one split, in one of the formats of
// imgstore/format.hpp (all_formats()):
//   PNG folder  DIR/<split>.png/   00000000.png ..., labels.csv, manifest.json
//   LMDB        DIR/<split>.lmdb/  data.mdb (+ lock.mdb), key = 8-digit index
//   HDF5        DIR/<split>.h5     /images (N,H,W,C) uint8, /labels (N,), /checksums (N,)
//   sharded     DIR/<split>.<ext>/ shards.json + shard-00000-of-0000K.<ext> ... (any format)
// Layouts are documented in README.md for readers in other languages.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "imgstore/image.hpp"
#include "imgstore/manifest.hpp"

namespace imgstore {

// One record as a store holds it: see StoreReader::read_record.
struct EncodedRecord {
  Shape shape;
  std::int64_t label = 0;
  Encoding encoding = Encoding::Raw;
  std::vector<std::uint8_t> bytes;  // the payload; for Raw, the HWC pixels
};

struct ReaderOptions {
  // Recompute each record's checksum on read and throw DataError on mismatch.
  bool verify_checksums = true;
  // For shuffled reads of stores larger than RAM: read only the pages asked for. LMDB opens
  // with MDB_NORDAHEAD and skips its cursor walk at open; HDF5 reads with pread() and
  // POSIX_FADV_RANDOM instead of mapping the file (mapped pages are slow to reclaim under
  // memory pressure). PNG folders read whole small files and ignore it.
  bool no_readahead = false;
};

// Reads one store. All const methods are safe to call from many threads at once.
class StoreReader {
 public:
  virtual ~StoreReader() = default;

  const Manifest& manifest() const { return manifest_; }
  const std::filesystem::path& path() const { return path_; }
  Format format() const { return manifest_.format; }
  std::size_t size() const { return static_cast<std::size_t>(manifest_.count); }
  const Shape& shape() const { return manifest_.shape; }
  std::size_t image_bytes() const { return manifest_.shape.bytes(); }

  // Copies image `index` (HWC uint8, image_bytes() bytes) into `out`; returns its label.
  // Throws UsageError if index >= size(), DataError if the record is corrupt.
  virtual std::int64_t read_one(std::uint64_t index, std::uint8_t* out) const = 0;

  // Reads n images into out (n * image_bytes(), in the order given) and their labels into
  // labels (may be null). Formats override this to batch their I/O.
  virtual void read_many(const std::uint64_t* indices, std::size_t n, std::uint8_t* out,
                         std::int64_t* labels) const;

  // Records differ in H and W (format version 2): read_one/read_many refuse such stores
  // (there is no fixed image_bytes()); use record_shape() and read_record().
  bool variable_size() const { return manifest_.variable_size; }
  // Record `index`'s shape (shape() for fixed-size stores).
  virtual Shape record_shape(std::uint64_t index) const;
  // Record `index` as stored, for decoders that work on the payload (the loader's fused JPEG
  // decode and crop): its shape, label, encoding and bytes (`out.bytes` reuses its capacity).
  // Raw and JPEG payloads are checked against the record's checksum when verify_checksums is
  // on. The default (fixed-size stores) decodes through read_one and returns raw pixels.
  virtual void read_record(std::uint64_t index, EncodedRecord& out) const;

  // Convenience: one image as a vector.
  std::vector<std::uint8_t> read_one(std::uint64_t index, std::int64_t* label = nullptr) const;

  // Bytes the store occupies on disk (all its files).
  std::uint64_t bytes_on_disk() const;

  // The record ranges [begin, end) of the store's shards, in order and covering [0, size()).
  // A store of one file or folder is one shard: {{0, size()}}. Sharded stores (written with
  // `--shards K`) return one range per shard file, so a rank can read whole shards.
  virtual std::vector<std::pair<std::uint64_t, std::uint64_t>> shard_ranges() const {
    return {{0, static_cast<std::uint64_t>(size())}};
  }

  // A hint that records [first, first + count) will be read soon: readers that know where they
  // lie on disk start reading them into the page cache in one large request and return at
  // once (LMDB, HDF5 without filters); others ignore it. The loader sends it for each window
  // of a quasi-random order (LoaderOptions::shuffle_window), so a store larger than memory is
  // read window by window in large requests, not one page fault per record.
  virtual void will_need(std::uint64_t /*first*/, std::uint64_t /*count*/) const {}

 protected:
  StoreReader(std::filesystem::path path, Manifest manifest, ReaderOptions options)
      : path_(std::move(path)), manifest_(std::move(manifest)), options_(options) {}

  // Throws UsageError unless index < size().
  void check_index(std::uint64_t index) const;
  // Throws DataError naming the store and record when verify_checksums is on and it mismatches.
  void check_record(std::uint64_t index, const std::uint8_t* pixels, std::int64_t label) const;
  // The same over `size` bytes: a variable-size record's pixels, or a lossy record's payload.
  void check_payload_checksum(std::uint64_t index, const std::uint8_t* data, std::size_t size,
                              std::int64_t label) const;
  // Throws UsageError for variable-size stores, which have no fixed image_bytes() to fill.
  void check_fixed_size() const;
  // "key '00000042'" / "record 42" / "file '00000042.png'" — how this format names a record.
  virtual std::string record_name(std::uint64_t index) const;

  std::filesystem::path path_;
  Manifest manifest_;
  ReaderOptions options_;
};

// Detects the format from the path (directory with manifest.json, LMDB directory or file,
// HDF5 signature) and opens it. Throws IoError if missing, DataError if not a valid store.
std::unique_ptr<StoreReader> open_store(const std::filesystem::path& path,
                                        const ReaderOptions& options = {});
// Detects the format without opening the store fully; throws DataError if unknown.
Format detect_store_format(const std::filesystem::path& path);

// HDF5-only knobs, checked by the HDF5 writer.
struct Hdf5WriterOptions {
  std::size_t chunk_records = 0;  // 0: contiguous /images; else chunk of this many images
  int deflate = 0;                // 0: none; 1..9 deflate level (needs chunking)
};

// Checked once, by the writer they are given to (UsageError naming the store).
struct WriterOptions {
  // Payload encoding; unset: the format's default (format_info(f).encodings.front()). A
  // format that cannot hold it refuses it (PNG folders hold png, HDF5 raw, LMDB either).
  std::optional<Encoding> encoding;
  int png_level = 6;                   // zlib level for PNG files and PNG-encoded payloads, 0..9
  int jpeg_quality = 90;               // 1..100, for records encoded to JPEG (not passed through)
  Hdf5WriterOptions hdf5;
  bool overwrite = false;              // replace an existing store at the path
  bool durable = true;                 // fsync data and directory before the final rename
  unsigned threads = 0;                // 0: all cores (TBB default)
  // 1: one store. K > 1: a sharded store, a directory at the path holding shards.json and K
  // stores of `format` over contiguous record ranges (docs/sharding.md). 1..min(count, 99999).
  std::uint32_t shards = 1;
};

// What a writer must know before the first record.
struct StoreSpec {
  std::string split;
  std::string source;
  std::uint64_t count = 0;
  Shape shape;  // variable_size: only channels is set
  std::vector<std::string> class_names;
  // Records differ in height and width (format version 2); batches carry shapes/offsets.
  bool variable_size = false;
  std::vector<SkippedInput> skipped_inputs;  // recorded in the manifest
  // Set by the sharded writer on each shard it writes: recorded in that shard's manifest.
  std::optional<ShardPosition> shard;
};

// Writes one store atomically: everything goes to a temporary name beside the target, and
// commit() flushes and renames it into place. Destroying a writer without commit() removes
// the temporary data, so a failed or interrupted conversion leaves nothing that looks valid.
class StoreWriter {
 public:
  virtual ~StoreWriter() = default;
  StoreWriter(const StoreWriter&) = delete;
  StoreWriter& operator=(const StoreWriter&) = delete;

  // Appends the batch's records, in order. Throws DataError if shapes or labels are wrong or
  // more than spec.count records arrive.
  void write(const ImageBatch& batch);
  // Finishes the store. Throws DataError if fewer than spec.count records were written.
  void commit();

  const std::filesystem::path& path() const { return path_; }
  const StoreSpec& spec() const { return spec_; }
  std::uint64_t written() const { return written_; }

 protected:
  StoreWriter(Format format, std::filesystem::path path, StoreSpec spec, WriterOptions options);

  // Gets batches write() has checked. For a store of a lossy encoding (JPEG) the batch carries
  // every record's payload in that encoding (write() encodes pixels when the source did not).
  virtual void write_records(const ImageBatch& batch, const std::uint64_t* checksums,
                             std::uint64_t first_index) = 0;
  // Writes the manifest, flushes, renames into place.
  virtual void finish(const Manifest& manifest) = 0;
  // body(begin, end) over blocks of [0, n) of about `grain` records, on the writer's threads
  // (options.threads): per-record work such as hashing and encoding.
  void for_record_blocks(std::size_t n, std::size_t grain,
                         const std::function<void(std::size_t, std::size_t)>& body) const;

  Format format_;
  Encoding encoding_;  // options.encoding or the format's default, checked against the table
  std::filesystem::path path_;
  StoreSpec spec_;
  WriterOptions options_;
  std::uint64_t written_ = 0;
  std::vector<std::uint64_t> checksums_;
  bool committed_ = false;

 private:
  void check_batch(const ImageBatch& batch) const;
  const ImageBatch& with_payloads(const ImageBatch& batch);
  ImageBatch encoded_;  // with_payloads' output, reused between batches
  Shape min_shape_{~0u, ~0u, 0}, max_shape_{0, 0, 0};  // bounds of variable-size records
};

// Starts a store of the given format at `path`. Throws IoError if it cannot be written, or
// if a store already exists there and options.overwrite is false.
std::unique_ptr<StoreWriter> create_store(Format format, const std::filesystem::path& path,
                                          const StoreSpec& spec, const WriterOptions& options = {});

// The tutorial's four operations, for every format.
// Store one image as a one-record store.
void store_one(Format format, const std::filesystem::path& path, const Shape& shape,
               const std::uint8_t* pixels, std::int64_t label,
               const WriterOptions& options = {});
// Store many images (batch) as one store.
void store_many(Format format, const std::filesystem::path& path, const ImageBatch& images,
                const std::vector<std::string>& class_names = {},
                const WriterOptions& options = {});
// Read many: every record of a store into one batch (use StoreReader::read_many for subsets).
ImageBatch read_all(const StoreReader& reader);

// The file name a store of `format` gets for `split` inside an output directory.
std::string store_file_name(const std::string& split, Format format);

// Sharded stores (docs/sharding.md). open_store() and every reader open them transparently;
// these are for tools that want to show or check the shards themselves.
// True if `path` is a directory holding a shard index (shards.json).
bool is_sharded_store(const std::filesystem::path& path);
// Reads and validates `path`/shards.json (not the shards). Throws IoError or DataError.
ShardIndex read_shard_index(const std::filesystem::path& path);

}  // namespace imgstore
