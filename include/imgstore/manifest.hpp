// What every store records about itself. Serialised as JSON (manifest.json in a PNG folder,
// key "manifest" of the LMDB sub-database "__imgstore__", attribute "manifest" on the HDF5 root).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "imgstore/format.hpp"
#include "imgstore/image.hpp"

namespace imgstore {

// Where one shard of a sharded store sits (docs/sharding.md). Only shards carry it; a
// manifest without it (every store written before sharding existed) parses as before.
struct ShardPosition {
  std::string conversion_id;       // 32 hex digits, the same in every shard of one conversion
  std::uint32_t index = 0;         // this shard's position, 0-based
  std::uint32_t shards = 0;        // how many shards the store has
  std::uint64_t first_record = 0;  // index in the whole store of this shard's record 0

  bool operator==(const ShardPosition& o) const {
    return conversion_id == o.conversion_id && index == o.index && shards == o.shards &&
           first_record == o.first_record;
  }
  bool operator!=(const ShardPosition& o) const { return !(*this == o); }
};

// Format version 1: fixed-size records, raw or png payloads. Version 2 adds variable-size
// records and JPEG payloads; a store that uses neither is still written as version 1, so
// older readers keep opening it. Readers accept 1..kFormatVersion.
int format_version_for(bool variable_size, Encoding encoding);

// An input file a source left out because it is bad (SourceOptions::skip_bad).
struct SkippedInput {
  std::string path;
  std::string reason;  // "truncated JPEG ...", "empty file, not an image", ...
};

struct Manifest {
  static constexpr int kFormatVersion = 2;  // the newest this build reads and writes

  Format format = Format::PngFolder;
  int format_version = 1;          // format_version_for(variable_size, encoding) when written
  std::string tool_version;        // imgstore version that wrote it
  std::string split;               // "train", "test", ...
  std::string source;              // human description of where the data came from
  std::uint64_t count = 0;         // number of records
  Shape shape;                     // every record has this shape (variable_size: only channels)
  // Format version 2: records differ in height and width, within these bounds (inclusive).
  bool variable_size = false;
  std::uint32_t min_height = 0, max_height = 0, min_width = 0, max_width = 0;
  std::vector<std::string> class_names;  // label i is class_names[i]; may be empty
  // Payload encoding, one the format accepts (format_info(format).encodings); on disk its name.
  Encoding encoding = Encoding::Raw;
  std::vector<std::uint64_t> checksums;  // record_checksum() of each record, in index order
  std::uint64_t content_digest = 0;      // ContentDigest over checksums
  std::optional<ShardPosition> shard;    // set in each shard of a sharded store, else empty
  // Inputs of the source that --skip-bad left out (every split's), with the reason.
  std::vector<SkippedInput> skipped_inputs;

  // Serialise / parse. `what` names the file or key in error messages.
  std::string to_json() const;
  static Manifest from_json(const std::string& text, const std::string& what);

  // Whether a record of `s` belongs in this store: exactly `shape` when fixed-size; else the
  // store's channels with H and W within the bounds. Readers check every record with it.
  bool holds(const Shape& s) const {
    if (!variable_size) return s == shape;
    return s.channels == shape.channels && s.height >= min_height && s.height <= max_height &&
           s.width >= min_width && s.width <= max_width;
  }

  // Throws DataError naming `what` if the fields disagree with each other
  // (checksum count vs count, digest vs checksums, empty shape).
  void validate(const std::string& what) const;
};

std::string tool_version();

// One entry of a sharded store's index.
struct ShardEntry {
  std::string file;                 // shard store's name inside the store directory
  std::uint64_t first_record = 0;   // its records are [first_record, first_record + count)
  std::uint64_t count = 0;
  std::uint64_t content_digest = 0; // the shard's own content digest
};

// The index of a sharded store, `<store>/shards.json` (docs/sharding.md): what the combined
// store holds, and its shards in record order.
struct ShardIndex {
  static constexpr int kFormatVersion = 2;  // as Manifest's
  static constexpr std::uint32_t kMaxShards = 99999;  // shard names carry 5 digits
  static constexpr const char* kFileName = "shards.json";

  Format format = Format::PngFolder;  // format of every shard
  int format_version = 1;
  std::string tool_version;
  std::string split;
  std::string source;
  std::uint64_t count = 0;          // records in the whole store
  Shape shape;
  bool variable_size = false;  // as Manifest (bounds are in each shard's manifest)
  std::vector<std::string> class_names;
  Encoding encoding = Encoding::Raw;
  std::string conversion_id;        // 32 hex digits, random per conversion
  std::uint64_t content_digest = 0; // ContentDigest over every record, as an unsharded store's
  std::vector<ShardEntry> shards;

  std::string to_json() const;
  // Parses and validates; throws DataError naming `what`.
  static ShardIndex from_json(const std::string& text, const std::string& what);
  // Throws DataError naming `what` unless: 1..kMaxShards shards, contiguous ranges from 0 that
  // add up to count, none empty, canonical file names, a 32-hex-digit conversion id.
  void validate(const std::string& what) const;
};

// "shard-00002-of-00004.lmdb": the file name of shard `index` of `shards` in `format`.
std::string shard_file_name(Format format, std::uint32_t index, std::uint32_t shards);

// Record range [first, first + count) of shard `index` when `records` are split into `shards`
// contiguous ranges as equal as possible (the first records % shards ranges get one more).
std::pair<std::uint64_t, std::uint64_t> shard_range(std::uint64_t records, std::uint32_t shards,
                                                    std::uint32_t index);

}  // namespace imgstore
