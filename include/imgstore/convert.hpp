// One pass over a source split, writing every requested format at once.
#pragma once

#include <cmath>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "imgstore/format.hpp"
#include "imgstore/manifest.hpp"
#include "imgstore/source.hpp"
#include "imgstore/store.hpp"

namespace imgstore {

struct ConvertOptions {
  std::vector<Format> formats = all_formats();
  std::uint64_t limit = 0;     // 0: all records; else the first `limit` (before repeating)
  std::uint32_t repeat = 1;    // write the split this many times over (the tutorial doubled it)
  std::size_t batch_records = 1024;
  WriterOptions writer;
  // Payload encoding per format; a format not listed gets writer.encoding (unset: its default).
  // Lets one pass write, say, PNG-encoded LMDB beside raw HDF5.
  std::map<Format, Encoding> encodings;
  // Called after each batch with (records done, records total).
  std::function<void(std::uint64_t, std::uint64_t)> progress;
};

struct FormatResult {
  Format format;
  std::filesystem::path path;
  std::uint32_t shards = 1;     // > 1: a sharded store (a directory of shards + shards.json)
  double seconds = 0;           // time spent inside this format's writer, commit included
  std::uint64_t bytes_on_disk = 0;
};

struct ConvertResult {
  std::string split;
  std::uint64_t count = 0;
  Shape shape;
  double read_seconds = 0;      // time the writers waited for the source (it reads ahead)
  double total_seconds = 0;
  std::vector<FormatResult> formats;
};

// Converts one split into DIR/<split>.<ext> for each format. On any error every store of this
// call is left absent (temporaries removed) and the exception propagates. The same as one
// ConversionRun with a single split.
ConvertResult convert_split(const Source& source, const std::string& split,
                            const std::filesystem::path& out_dir, const ConvertOptions& options);

// Several splits into one output directory, all or none. Each store is written and committed
// inside a hidden staging directory beside its final path (".<name>.tmp-<pid>-<hex8>", removed
// by a later run if this process dies); commit() then moves every store into place. If the run
// is destroyed without commit() (an error in any split, Ctrl-C), everything it staged is
// removed, and stores that already existed (WriterOptions::overwrite) are left untouched.
class ConversionRun {
 public:
  explicit ConversionRun(std::filesystem::path out_dir);
  ~ConversionRun();
  ConversionRun(const ConversionRun&) = delete;
  ConversionRun& operator=(const ConversionRun&) = delete;

  // Converts one split into staging. Throws as convert_split does (also UsageError if a store
  // of this run would be written twice); the run then can only be abandoned.
  ConvertResult add_split(const Source& source, const std::string& split,
                          const ConvertOptions& options);
  // Moves every staged store into place and flushes the directory (if durable). If one cannot
  // be moved, those moved before it are put back (the old stores restored) and the error
  // propagates.
  void commit();

 private:
  struct StagedStore;
  std::filesystem::path out_dir_;
  std::vector<std::unique_ptr<StagedStore>> staged_;
  bool durable_ = false;  // some split asked for durable stores: flush the directory at commit
  bool committed_ = false;
};

struct VerifyResult {
  std::uint64_t records = 0;
  std::uint64_t content_digest = 0;
};

// Re-reads every record, checks each checksum and the count and content digest against the
// manifest; JPEG records are also decoded in full. Throws DataError naming the first bad record.
VerifyResult verify_store(const StoreReader& reader,
                          const std::function<void(std::uint64_t, std::uint64_t)>& progress = {});

struct CompareResult {
  bool exact = true;      // both sides lossless: every pixel was required to be equal
  int max_abs_diff = 0;   // largest pixel difference (0 when exact)
  double psnr_db = INFINITY;  // over all pixels; infinite when identical
};

// Compares two stores record by record (labels, shapes, decoded pixels; any formats and
// encodings). Throws DataError naming the first record that differs, except in pixels when a
// side is lossy (JPEG): then the difference is measured and returned.
CompareResult compare_stores(const StoreReader& a, const StoreReader& b,
                             const std::function<void(std::uint64_t, std::uint64_t)>& progress = {});

// Decodes a record read_record() gave into record.shape.bytes() of HWC pixels. Throws
// DataError "<what>: <problem>" on a corrupt payload.
void decode_record(const EncodedRecord& record, std::uint8_t* out, const std::string& what);

}  // namespace imgstore
