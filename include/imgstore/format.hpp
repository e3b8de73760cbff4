// The store formats (containers) and payload encodings imgstore knows, as data: tools, benches
// and examples list and parse them from here instead of naming them one by one. Both come
// from one table each (src/formats/format_table.cpp, src/formats/encoding_table.cpp); adding
// a format or an encoding is one row there plus its own file (docs/design-notes.md).
#pragma once

#include <string>
#include <vector>

namespace imgstore {

// A container: how records are laid out on disk.
enum class Format { PngFolder, Lmdb, Hdf5 };

// How one record's pixels are stored inside a container, independent of the container.
// Jpeg is lossy: its records' checksums cover the stored bytes, not decoded pixels.
enum class Encoding { Raw, Png, Jpeg };

struct FormatInfo {
  Format format;
  std::string name;                  // CLI and manifest name: "png", "lmdb", "hdf5"
  std::vector<std::string> aliases;  // also accepted by parse_format: "h5"
  std::string suffix;                // path suffix of a store: ".png", ".lmdb", ".h5"
  std::string description;           // for messages: "PNG folder", "LMDB", "HDF5"
  bool directory;                    // a store is a directory (else one file)
  std::vector<Encoding> encodings;   // payload encodings it holds; the first is its default
  bool variable_size;                // holds records of differing H and W (format version 2)
};

struct EncodingInfo {
  Encoding encoding;
  std::string name;  // manifest and CLI name: "raw", "png"
  bool lossless;     // decoding gives back the exact pixels written
};

// Every format, in table order; and one format's row.
std::vector<Format> all_formats();
const FormatInfo& format_info(Format format);
std::string to_string(Format format);          // format_info(format).name
Format parse_format(const std::string& name);  // a name or alias; UsageError if unknown

// Every encoding, in table order; and one encoding's row.
std::vector<Encoding> all_encodings();
const EncodingInfo& encoding_info(Encoding encoding);
std::string to_string(Encoding encoding);          // "raw", "png", "jpeg"
Encoding parse_encoding(const std::string& name);  // UsageError if unknown

// "png, lmdb or hdf5" / "raw or png": the names for help text and error messages.
std::string format_names(const std::string& last_separator = " or ");
std::string encoding_names(const std::vector<Encoding>& encodings,
                           const std::string& last_separator = " or ");

}  // namespace imgstore
