// verify_store and compare_stores: fixed-size lossless stores in chunks of read_many (the fast
// path), every other store (variable-size, JPEG) record by record through read_record, in
// parallel since JPEG decoding dominates.
#include <algorithm>
#include <cmath>
#include <mutex>
#include <numeric>

#include <fmt/format.h>
#include <tbb/parallel_for.h>

#include "codecs/image_codec.hpp"
#include "detail/fs_util.hpp"
#include "formats/encoding_table.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/convert.hpp"
#include "imgstore/error.hpp"

namespace imgstore {

namespace {

using Progress = std::function<void(std::uint64_t, std::uint64_t)>;
constexpr std::size_t kChunk = 1024;

bool record_wise(const StoreReader& r) {
  return r.variable_size() || !encoding_info(r.manifest().encoding).lossless;
}

// Fixed-size stores of lossless payloads: read_many in chunks, every checksum recomputed.
VerifyResult verify_fixed(const StoreReader& reader, const Progress& progress) {
  const auto& m = reader.manifest();
  const std::size_t n = reader.size();
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
  return VerifyResult{n, digest.value()};
}

// Runs body(index, record) over every record in chunks, in parallel within a chunk, and
// reports progress after each chunk. Records arrive through read_record (checksums off: the
// callers check what they need and name the record themselves).
template <class Body>
void for_each_record(const StoreReader& reader, const Progress& progress, Body body) {
  const std::size_t n = reader.size();
  for (std::size_t first = 0; first < n; first += kChunk) {
    const std::size_t count = std::min(kChunk, n - first);
    tbb::parallel_for(first, first + count, [&](std::size_t i) {
      thread_local EncodedRecord record;
      reader.read_record(i, record);
      body(i, record);
    });
    if (progress) progress(first + count, n);
  }
}

std::string record_what(const StoreReader& reader, std::uint64_t index) {
  return fmt::format("corrupt record in {} record {}", detail::quote(reader.path()), index);
}

// Decodes an encoded record in full (bounded by the decoder's own limits, never by the shape
// the store claims) and checks it has that shape.
void check_decodes(const EncodedRecord& r, const std::string& what) {
  thread_local detail::DecodedImage image;
  detail::decode_image(r.bytes.data(), r.bytes.size(), r.shape.channels, what, image);
  if (image.shape != r.shape) {
    throw DataError(fmt::format("{}: payload decodes to {}, the store says {}", what,
                                to_string(image.shape), to_string(r.shape)));
  }
}

// Every record's checksum (over its pixels, or over a JPEG's bytes), and every JPEG decoded in
// full to the shape its record names.
VerifyResult verify_records(const StoreReader& reader, const Progress& progress) {
  const auto& m = reader.manifest();
  std::vector<std::uint64_t> sums(reader.size());
  for_each_record(reader, progress, [&](std::size_t i, const EncodedRecord& r) {
    sums[i] = record_checksum(r.bytes.data(), r.bytes.size(), r.label);
    if (sums[i] != m.checksums[i]) {
      throw DataError(fmt::format("{}: checksum {} does not match the manifest's {}",
                                  record_what(reader, i), to_hex64(sums[i]),
                                  to_hex64(m.checksums[i])));
    }
    if (r.encoding != Encoding::Raw) check_decodes(r, record_what(reader, i));
  });
  ContentDigest digest;
  for (auto sum : sums) digest.add(sum);
  return VerifyResult{reader.size(), digest.value()};
}

}  // namespace

void decode_record(const EncodedRecord& record, std::uint8_t* out, const std::string& what) {
  detail::encoding_entry(record.encoding)
      .decode(record.bytes.data(), record.bytes.size(), record.shape, out, what);
}

VerifyResult verify_store(const StoreReader& reader, const Progress& progress) {
  VerifyResult result = record_wise(reader) ? verify_records(reader, progress)
                                            : verify_fixed(reader, progress);
  if (result.content_digest != reader.manifest().content_digest) {
    throw DataError(fmt::format("{}: content digest {} does not match the manifest's {}",
                                detail::quote(reader.path()), to_hex64(result.content_digest),
                                to_hex64(reader.manifest().content_digest)));
  }
  return result;
}

namespace {

// Two fixed-size lossless stores of one shape: read_many in chunks, pixels must be equal.
void compare_fixed(const StoreReader& a, const StoreReader& b, const Progress& progress) {
  const auto qa = detail::quote(a.path()), qb = detail::quote(b.path());
  const std::size_t n = a.size(), bytes = a.image_bytes();
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

// Record by record: shapes and labels must match; pixels are compared after decoding, exactly
// unless a side is lossy, where the difference is measured instead.
CompareResult compare_records(const StoreReader& a, const StoreReader& b,
                              const Progress& progress) {
  const auto qa = detail::quote(a.path()), qb = detail::quote(b.path());
  const bool exact = !record_wise(a) || encoding_info(a.manifest().encoding).lossless;
  const bool exact_b = encoding_info(b.manifest().encoding).lossless;
  CompareResult result;
  result.exact = exact && exact_b;
  std::mutex mutex;
  double squared = 0;
  std::uint64_t samples = 0;
  for_each_record(a, progress, [&](std::size_t i, const EncodedRecord& ra) {
    thread_local EncodedRecord rb;
    thread_local std::vector<std::uint8_t> pa, pb;
    b.read_record(i, rb);
    if (ra.label != rb.label || ra.shape != rb.shape) {
      throw DataError(fmt::format("record {} differs: label {} shape {} in {}, label {} shape {} "
                                  "in {}", i, ra.label, to_string(ra.shape), qa, rb.label,
                                  to_string(rb.shape), qb));
    }
    pa.resize(ra.shape.bytes());
    pb.resize(rb.shape.bytes());
    decode_record(ra, pa.data(), record_what(a, i));
    decode_record(rb, pb.data(), record_what(b, i));
    double sq = 0;
    int worst = 0;
    for (std::size_t k = 0; k < pa.size(); ++k) {
      const int d = std::abs(int{pa[k]} - int{pb[k]});
      if (d != 0 && result.exact) {
        throw DataError(fmt::format("record {} differs: pixel byte {} is {} in {}, {} in {}", i,
                                    k, pa[k], qa, pb[k], qb));
      }
      worst = std::max(worst, d);
      sq += double(d) * d;
    }
    std::lock_guard<std::mutex> lock(mutex);
    squared += sq;
    samples += pa.size();
    result.max_abs_diff = std::max(result.max_abs_diff, worst);
  });
  const double mse = samples ? squared / samples : 0;
  result.psnr_db = mse == 0 ? INFINITY : 10 * std::log10(255.0 * 255.0 / mse);
  return result;
}

}  // namespace

CompareResult compare_stores(const StoreReader& a, const StoreReader& b,
                             const Progress& progress) {
  const auto qa = detail::quote(a.path()), qb = detail::quote(b.path());
  if (a.size() != b.size()) {
    throw DataError(fmt::format("{} has {} records, {} has {}", qa, a.size(), qb, b.size()));
  }
  if (a.variable_size() != b.variable_size() || a.shape() != b.shape()) {
    throw DataError(fmt::format("{} holds {} images, {} holds {}", qa,
                                a.variable_size() ? "variable-size" : to_string(a.shape()), qb,
                                b.variable_size() ? "variable-size" : to_string(b.shape())));
  }
  if (record_wise(a) || record_wise(b)) return compare_records(a, b, progress);
  compare_fixed(a, b, progress);
  return CompareResult{};
}

}  // namespace imgstore
