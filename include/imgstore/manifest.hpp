// What every store records about itself. Serialised as JSON (manifest.json in a PNG folder,
// key "manifest" of the LMDB sub-database "__imgstore__", attribute "manifest" on the HDF5 root).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "imgstore/image.hpp"

namespace imgstore {

enum class Format { Png, Lmdb, Hdf5 };

std::string to_string(Format format);            // "png", "lmdb", "hdf5"
Format parse_format(const std::string& name);    // throws UsageError on an unknown name

struct Manifest {
  static constexpr int kFormatVersion = 1;

  Format format = Format::Png;
  int format_version = kFormatVersion;
  std::string tool_version;        // imgstore version that wrote it
  std::string split;               // "train", "test", ...
  std::string source;              // human description of where the data came from
  std::uint64_t count = 0;         // number of records
  Shape shape;                     // every record has this shape
  std::vector<std::string> class_names;  // label i is class_names[i]; may be empty
  std::string encoding = "raw";    // payload encoding (LMDB: raw|png; PNG folder: png; HDF5: raw)
  std::vector<std::uint64_t> checksums;  // record_checksum() of each record, in index order
  std::uint64_t content_digest = 0;      // ContentDigest over checksums

  // Serialise / parse. `what` names the file or key in error messages.
  std::string to_json() const;
  static Manifest from_json(const std::string& text, const std::string& what);

  // Throws DataError naming `what` if the fields disagree with each other
  // (checksum count vs count, digest vs checksums, empty shape).
  void validate(const std::string& what) const;
};

std::string tool_version();

}  // namespace imgstore
