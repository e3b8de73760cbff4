#include "ingest/cifar_common.hpp"

#include <algorithm>

#if defined(__x86_64__)
#include <tmmintrin.h>
#endif

#include <fmt/format.h>

#include "imgstore/error.hpp"

namespace imgstore::detail::cifar {

LabelChoice label_choice(Dataset dataset, const SourceOptions& options) {
  if (options.label_set != "fine" && options.label_set != "coarse") {
    throw UsageError(fmt::format("unknown CIFAR label set '{}': expected 'fine' or 'coarse'",
                                 options.label_set));
  }
  if (dataset == Dataset::Cifar10) return LabelChoice{false, 10};
  const bool coarse = options.label_set == "coarse";
  return LabelChoice{coarse, coarse ? 20 : 100};
}

Layout binary_layout(Dataset dataset, const LabelChoice& labels) {
  Layout l;
  l.dataset = dataset;
  if (dataset == Dataset::Cifar10) {
    for (int b = 1; b <= 5; ++b) l.train.push_back(fmt::format("data_batch_{}.bin", b));
    l.test = {"test_batch.bin"};
    l.names_file = "batches.meta.txt";
  } else {
    l.train = {"train.bin"};
    l.test = {"test.bin"};
    l.names_file = labels.coarse ? "coarse_label_names.txt" : "fine_label_names.txt";
  }
  return l;
}

Layout python_layout(Dataset dataset, const LabelChoice& labels) {
  Layout l;
  l.dataset = dataset;
  l.python = true;
  if (dataset == Dataset::Cifar10) {
    for (int b = 1; b <= 5; ++b) l.train.push_back(fmt::format("data_batch_{}", b));
    l.test = {"test_batch"};
    l.names_file = "batches.meta";
    l.names_key = "label_names";
    l.label_key = "labels";
  } else {
    l.train = {"train"};
    l.test = {"test"};
    l.names_file = "meta";
    l.names_key = labels.coarse ? "coarse_label_names" : "fine_label_names";
    l.label_key = labels.coarse ? "coarse_labels" : "fine_labels";
  }
  return l;
}

RecordFormat record_format(Dataset dataset, const LabelChoice& labels) {
  if (dataset == Dataset::Cifar10) return RecordFormat{0, 1, 10};
  return RecordFormat{labels.coarse ? std::size_t{0} : std::size_t{1}, 2, labels.classes};
}

namespace {

void chw_to_hwc_plain(const std::uint8_t* chw, std::uint8_t* hwc) {
  const std::uint8_t* r = chw;
  const std::uint8_t* g = chw + kPlaneBytes;
  const std::uint8_t* b = chw + 2 * kPlaneBytes;
  for (std::size_t p = 0; p < kPlaneBytes; ++p) {
    hwc[3 * p] = r[p];
    hwc[3 * p + 1] = g[p];
    hwc[3 * p + 2] = b[p];
  }
}

#if defined(__x86_64__)
// 16 pixels per step: each of the 48 output bytes is one shuffle lane of its plane's 16 bytes
// (-128 zeroes a lane), the three planes OR-ed together. 2.6x the plain loop (and 2x its
// AVX2 clone) on 10,000 images; this interleave was a quarter of a CIFAR-10 to LMDB conversion.
__attribute__((target("ssse3"))) void chw_to_hwc_ssse3(const std::uint8_t* chw,
                                                         std::uint8_t* hwc) {
  static_assert(kPlaneBytes % 16 == 0, "whole 16-pixel steps");
  constexpr char Z = -128;
  const __m128i r0 = _mm_setr_epi8(0, Z, Z, 1, Z, Z, 2, Z, Z, 3, Z, Z, 4, Z, Z, 5);
  const __m128i g0 = _mm_setr_epi8(Z, 0, Z, Z, 1, Z, Z, 2, Z, Z, 3, Z, Z, 4, Z, Z);
  const __m128i b0 = _mm_setr_epi8(Z, Z, 0, Z, Z, 1, Z, Z, 2, Z, Z, 3, Z, Z, 4, Z);
  const __m128i r1 = _mm_setr_epi8(Z, Z, 6, Z, Z, 7, Z, Z, 8, Z, Z, 9, Z, Z, 10, Z);
  const __m128i g1 = _mm_setr_epi8(5, Z, Z, 6, Z, Z, 7, Z, Z, 8, Z, Z, 9, Z, Z, 10);
  const __m128i b1 = _mm_setr_epi8(Z, 5, Z, Z, 6, Z, Z, 7, Z, Z, 8, Z, Z, 9, Z, Z);
  const __m128i r2 = _mm_setr_epi8(Z, 11, Z, Z, 12, Z, Z, 13, Z, Z, 14, Z, Z, 15, Z, Z);
  const __m128i g2 = _mm_setr_epi8(Z, Z, 11, Z, Z, 12, Z, Z, 13, Z, Z, 14, Z, Z, 15, Z);
  const __m128i b2 = _mm_setr_epi8(10, Z, Z, 11, Z, Z, 12, Z, Z, 13, Z, Z, 14, Z, Z, 15);
  const auto load = [](const std::uint8_t* p) {
    return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  };
  for (std::size_t p = 0; p < kPlaneBytes; p += 16) {
    const __m128i r = load(chw + p), g = load(chw + kPlaneBytes + p),
                  b = load(chw + 2 * kPlaneBytes + p);
    const __m128i out[3] = {
        _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(r, r0), _mm_shuffle_epi8(g, g0)),
                     _mm_shuffle_epi8(b, b0)),
        _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(r, r1), _mm_shuffle_epi8(g, g1)),
                     _mm_shuffle_epi8(b, b1)),
        _mm_or_si128(_mm_or_si128(_mm_shuffle_epi8(r, r2), _mm_shuffle_epi8(g, g2)),
                     _mm_shuffle_epi8(b, b2))};
    for (int k = 0; k < 3; ++k) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(hwc + 3 * p + 16 * k), out[k]);
    }
  }
}
#endif

}  // namespace

void chw_to_hwc(const std::uint8_t* chw, std::uint8_t* hwc) {
#if defined(__x86_64__)
  static const bool ssse3 = __builtin_cpu_supports("ssse3");
  if (ssse3) return chw_to_hwc_ssse3(chw, hwc);
#endif
  chw_to_hwc_plain(chw, hwc);
}

std::vector<std::string> parse_names_text(const std::uint8_t* data, std::size_t size,
                                          std::size_t expected, const std::string& what) {
  std::vector<std::string> names;
  std::string text(reinterpret_cast<const char*>(data), size);
  std::size_t pos = 0;
  std::size_t line_no = 0;
  bool seen_blank = false;
  while (pos < text.size()) {
    std::size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string line = text.substr(pos, end - pos);
    pos = end + 1;
    ++line_no;
    while (!line.empty() && (line.back() == '\r' || line.back() == ' ' || line.back() == '\t')) {
      line.pop_back();
    }
    if (line.empty()) {
      seen_blank = true;
      continue;
    }
    // A blank line in the middle would silently shift every later class.
    if (seen_blank) {
      throw DataError(fmt::format("bad class names in {}: line {} follows a blank line", what,
                                  line_no));
    }
    names.push_back(std::move(line));
  }
  if (names.size() != expected) {
    throw DataError(fmt::format("bad class names in {}: found {} names, expected {}", what,
                                names.size(), expected));
  }
  return names;
}

void check_label(std::int64_t label, int classes, const std::string& what,
                 std::uint64_t record_in_file, std::uint64_t split_index) {
  if (label < 0 || label >= classes) {
    throw DataError(fmt::format("bad label in {} record {} (split index {}): label {}, expected "
                                "0..{}",
                                what, record_in_file, split_index, label, classes - 1));
  }
}

std::uint64_t records_in(std::uint64_t bytes, const RecordFormat& format, const std::string& what) {
  const std::uint64_t rb = format.record_bytes();
  if (bytes == 0) throw DataError(fmt::format("{} is empty: it holds no records", what));
  if (bytes % rb != 0) {
    throw DataError(fmt::format(
        "{} is truncated or has the wrong record size: {} bytes is not a whole number of "
        "{}-byte records ({} records and {} bytes left over)",
        what, bytes, rb, bytes / rb, bytes % rb));
  }
  return bytes / rb;
}

void check_sibling_counts(const std::vector<Part>& parts) {
  if (parts.empty()) return;
  for (const auto& p : parts) {
    if (p.records != parts.front().records) {
      throw DataError(fmt::format("{} holds {} records, but its sibling {} holds {}: the batch "
                                  "files must all hold the same number of records",
                                  p.what, p.records, parts.front().what, parts.front().records));
    }
  }
}

std::vector<std::vector<Part>> layout_parts(const Layout& layout, const PartOf& part_of) {
  std::vector<std::vector<Part>> parts(2);
  std::vector<Part> all_parts;
  for (std::size_t split = 0; split < 2; ++split) {
    for (const auto& name : split == 0 ? layout.train : layout.test) {
      parts[split].push_back(part_of(split, name));
      all_parts.push_back(parts[split].back());
    }
  }
  if (layout.dataset == Dataset::Cifar10) check_sibling_counts(all_parts);
  return parts;
}

std::vector<SplitInfo> split_infos(const std::vector<std::vector<Part>>& parts,
                                   const std::vector<std::string>& class_names) {
  std::vector<SplitInfo> infos;
  for (std::size_t split = 0; split < parts.size(); ++split) {
    SplitInfo info;
    info.name = split == 0 ? "train" : "test";
    for (const auto& p : parts[split]) info.count += p.records;
    info.shape = shape();
    info.class_names = class_names;
    infos.push_back(std::move(info));
  }
  return infos;
}

std::string describe(std::string head, Dataset dataset, const LabelChoice& labels) {
  if (dataset == Dataset::Cifar100) {
    head += fmt::format(" ({} labels)", labels.coarse ? "coarse" : "fine");
  }
  return head;
}

namespace {

class BinaryStream : public BatchStream {
 public:
  BinaryStream(std::vector<Part> parts, RecordFormat format, std::unique_ptr<PartReader> reader)
      : parts_(std::move(parts)), format_(format), reader_(std::move(reader)) {}

  bool next(ImageBatch& out, std::size_t max_records) override {
    const std::size_t want = std::clamp<std::size_t>(max_records, 1, kMaxRecordsPerNext);
    // Sized once for the whole batch (and cut back at the end): growing it piece by piece
    // zero-filled every image before it was written.
    out.resize(shape(), want);
    std::size_t filled = 0;
    while (filled < want) {
      if (part_ == parts_.size()) break;
      if (!opened_) {
        reader_->open(part_);
        opened_ = true;
        in_part_ = 0;
      }
      const Part& p = parts_[part_];
      const std::size_t n =
          static_cast<std::size_t>(std::min<std::uint64_t>(want - filled, p.records - in_part_));
      const std::size_t rb = format_.record_bytes();
      // Grown, never shrunk: a short read at the end of a part would otherwise make the next
      // full one zero-fill 3 MB before reading over it.
      if (raw_.size() < n * rb) raw_.resize(n * rb);
      reader_->read_exact(raw_.data(), n * rb);
      for (std::size_t i = 0; i < n; ++i) {
        const std::uint8_t* rec = raw_.data() + i * rb;
        const std::int64_t label = rec[format_.label_offset];
        check_label(label, format_.classes, p.what, in_part_ + i, index_ + i);
        out.labels[filled + i] = label;
        chw_to_hwc(rec + format_.header_bytes, out.image(filled + i));
      }
      filled += n;
      in_part_ += n;
      index_ += n;
      if (in_part_ == p.records) {
        ++part_;
        opened_ = false;
      }
    }
    out.truncate(filled);
    return filled > 0;
  }

 private:
  std::vector<Part> parts_;
  RecordFormat format_;
  std::unique_ptr<PartReader> reader_;
  std::vector<std::uint8_t> raw_;  // reused between calls
  std::size_t part_ = 0;
  bool opened_ = false;
  std::uint64_t in_part_ = 0;
  std::uint64_t index_ = 0;
};

}  // namespace

std::unique_ptr<BatchStream> make_binary_stream(std::vector<Part> parts, RecordFormat format,
                                                std::unique_ptr<PartReader> reader) {
  return std::make_unique<BinaryStream>(std::move(parts), format, std::move(reader));
}

std::unique_ptr<BatchStream> CifarSource::open(const std::string& split) const {
  std::string known;
  for (std::size_t i = 0; i < splits_.size(); ++i) {
    if (splits_[i].name == split) return opener_(i);
    known += (known.empty() ? "'" : ", '") + splits_[i].name + "'";
  }
  throw UsageError(
      fmt::format("{} has no split '{}' (it has {})", description_, split, known));
}

}  // namespace imgstore::detail::cifar
