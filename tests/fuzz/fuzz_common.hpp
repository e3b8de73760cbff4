// Helpers shared by the fuzz targets: a private scratch folder on tmpfs, splitting one input
// into several files, and draining a source or a store so every record is parsed.
//
// Contract of every target: imgstore::Error is the only acceptable failure. Any other
// exception escapes to libFuzzer (reported as a crash), and inconsistent results abort().
#pragma once

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>
#include <vector>

#include "fixtures.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"
#include "imgstore/store.hpp"

namespace imgstore::fuzz {

namespace fs = std::filesystem;

// Separates the files packed into one input (for sources made of several files).
inline constexpr std::string_view kPartSeparator = "|#NEXT#|";

// Stops the fuzz target on a broken invariant (libFuzzer reports the abort as a crash).
[[noreturn]] inline void fail(const char* what) {
  std::fprintf(stderr, "imgstore fuzz invariant broken: %s\n", what);
  std::abort();
}

// This process's scratch folder: $IMGSTORE_FUZZ_TMP (else /dev/shm) / imgstore-fuzz-<pid>.
// Removed at normal exit; a crash leaves it for inspection.
inline const fs::path& scratch_root() {
  static const fs::path root = [] {
    const char* base = std::getenv("IMGSTORE_FUZZ_TMP");
    fs::path p = fs::path(base && *base ? base : "/dev/shm") /
                 ("imgstore-fuzz-" + std::to_string(::getpid()));
    fs::create_directories(p);
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(scratch_root(), ec);
    });
    return p;
  }();
  return root;
}

// An empty folder `name` inside the scratch root (emptied if it exists).
inline fs::path fresh_dir(const std::string& name) {
  fs::path p = scratch_root() / name;
  std::error_code ec;
  fs::remove_all(p, ec);
  fs::create_directories(p);
  return p;
}

inline void write_file(const fs::path& path, const void* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(static_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out.flush()) fail("cannot write a scratch file");
}
inline void write_file(const fs::path& path, std::string_view bytes) {
  write_file(path, bytes.data(), bytes.size());
}

// Splits the input at kPartSeparator into at most max_parts parts (the last takes the rest).
inline std::vector<std::string_view> split_parts(const std::uint8_t* data, std::size_t size,
                                                 std::size_t max_parts) {
  std::vector<std::string_view> parts;
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  while (parts.size() + 1 < max_parts) {
    // memmem, so libFuzzer's interceptor learns the separator.
    const void* hit = ::memmem(rest.data(), rest.size(), kPartSeparator.data(),
                               kPartSeparator.size());
    if (!hit) break;
    const std::size_t at = static_cast<std::size_t>(static_cast<const char*>(hit) - rest.data());
    parts.push_back(rest.substr(0, at));
    rest.remove_prefix(at + kPartSeparator.size());
  }
  parts.push_back(rest);
  return parts;
}

// Reads every record of every split, checking the batches are self-consistent.
inline std::uint64_t drain_source(const Source& source, std::uint64_t max_records = 200000) {
  (void)source.description();
  std::uint64_t total = 0;
  ImageBatch batch;
  for (const SplitInfo& split : source.splits()) {
    auto stream = source.open(split.name);
    std::uint64_t seen = 0;
    while (stream->next(batch, 64)) {
      if (batch.size() == 0) fail("next() returned true with no records");
      if (batch.pixels.size() != batch.size() * batch.shape.bytes()) fail("batch pixel count");
      if (batch.shape != split.shape) fail("batch shape differs from the split's");
      seen += batch.size();
      if (seen > split.count) fail("stream yields more records than the split declares");
      total += batch.size();
      if (total > max_records) return total;
    }
    if (seen != split.count) fail("stream ended early without an error");
  }
  return total;
}

// Reads every record one by one, then again in one read_many in reverse order, and checks
// both give the same pixels and labels.
inline void drain_store(const StoreReader& reader, std::size_t max_records = 4096) {
  const std::size_t n = std::min(reader.size(), max_records);
  (void)reader.manifest().to_json();
  if (n == 0) return;
  if (reader.variable_size()) {  // record by record, as the loader reads them
    EncodedRecord r;
    for (std::size_t i = 0; i < n; ++i) {
      reader.read_record(i, r);
      if (reader.record_shape(i) != r.shape) fail("record_shape differs from read_record's");
      if (r.encoding == Encoding::Raw && r.bytes.size() != r.shape.bytes()) {
        fail("raw record bytes differ from its shape");
      }
    }
    return;
  }
  const std::size_t bytes = reader.image_bytes();
  if (bytes == 0) fail("store with records of zero bytes");
  std::vector<std::uint8_t> one(n * bytes);
  std::vector<std::int64_t> one_labels(n);
  for (std::size_t i = 0; i < n; ++i) one_labels[i] = reader.read_one(i, one.data() + i * bytes);
  std::vector<std::uint64_t> indices(n);
  for (std::size_t i = 0; i < n; ++i) indices[i] = n - 1 - i;
  std::vector<std::uint8_t> many(n * bytes);
  std::vector<std::int64_t> many_labels(n);
  reader.read_many(indices.data(), n, many.data(), many_labels.data());
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t j = n - 1 - i;
    if (many_labels[i] != one_labels[j]) fail("read_many label differs from read_one");
    if (std::memcmp(many.data() + i * bytes, one.data() + j * bytes, bytes) != 0) {
      fail("read_many pixels differ from read_one");
    }
  }
}

// The LMDB template of format version 2 (fuzz_lmdb_value's mode bit 4, and its seeds): three
// records of differing sizes, JPEG-encoded by the writer from fixture pixels. Returns its path.
inline std::filesystem::path write_lmdb_v2_template(const std::filesystem::path& dir) {
  ImageBatch b;
  b.shape = Shape{0, 0, 3};
  b.offsets.push_back(0);
  for (const Shape& s : {Shape{8, 5, 3}, Shape{3, 9, 3}, Shape{16, 16, 3}}) {
    const ImageBatch one = fixtures::make_images(1, s, 10, 7 + s.height);
    b.shapes.push_back(s);
    b.pixels.insert(b.pixels.end(), one.pixels.begin(), one.pixels.end());
    b.offsets.push_back(b.pixels.size());
    b.labels.push_back(static_cast<std::int64_t>(b.labels.size()));
  }
  StoreSpec spec;
  spec.split = "v2";
  spec.count = b.size();
  spec.shape = b.shape;
  spec.variable_size = true;
  WriterOptions options;
  options.durable = false;
  options.encoding = Encoding::Jpeg;
  const std::filesystem::path path = dir / "v2.lmdb";
  auto writer = create_store(Format::Lmdb, path, spec, options);
  writer->write(b);
  writer->commit();
  return path;
}

}  // namespace imgstore::fuzz
