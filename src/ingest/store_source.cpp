// A store read back as a source, so stores convert into each other.
#include <algorithm>
#include <numeric>

#include <fmt/format.h>

#include "imgstore/convert.hpp"
#include "imgstore/error.hpp"
#include "imgstore/format.hpp"
#include "imgstore/store.hpp"
#include "ingest/sources.hpp"

namespace imgstore::detail {

namespace {

class StoreStream : public BatchStream {
 public:
  explicit StoreStream(const StoreReader& reader) : reader_(reader) {}
  bool next(ImageBatch& out, std::size_t max_records) override {
    const std::uint64_t n = std::min<std::uint64_t>(max_records, reader_.size() - next_);
    if (n == 0) return false;
    if (reader_.variable_size() || !encoding_info(reader_.manifest().encoding).lossless) {
      next_records(out, static_cast<std::size_t>(n));
      return true;
    }
    indices_.resize(n);
    std::iota(indices_.begin(), indices_.end(), next_);
    out.resize(reader_.shape(), n);
    reader_.read_many(indices_.data(), n, out.pixels.data(), out.labels.data());
    next_ += n;
    return true;
  }

 private:
  // Stores read record by record (variable-size, JPEG): the pixels, decoded, and for JPEG the
  // stored bytes too, so a JPEG store converts into another without generation loss.
  void next_records(ImageBatch& out, std::size_t n) {
    const bool jpeg = reader_.manifest().encoding == Encoding::Jpeg;
    out.resize(Shape{0, 0, reader_.shape().channels}, n);
    out.shape = reader_.shape();
    out.shapes.resize(n);
    out.offsets.assign(1, 0);
    if (jpeg) {
      out.payload_encoding = Encoding::Jpeg;
      out.payload_offsets.assign(1, 0);
    }
    for (std::size_t i = 0; i < n; ++i) {
      reader_.read_record(next_ + i, record_);
      out.labels[i] = record_.label;
      out.shapes[i] = record_.shape;
      const std::size_t at = out.pixels.size();
      out.pixels.resize(at + record_.shape.bytes());
      decode_record(record_, out.pixels.data() + at,
                    fmt::format("{} record {}", reader_.path().string(), next_ + i));
      out.offsets.push_back(out.pixels.size());
      if (jpeg) {
        out.payload.insert(out.payload.end(), record_.bytes.begin(), record_.bytes.end());
        out.payload_offsets.push_back(out.payload.size());
      }
    }
    if (!reader_.variable_size()) {  // a fixed-size JPEG store: a fixed-size batch
      out.shapes.clear();
      out.offsets.clear();
    }
    next_ += n;
  }

  const StoreReader& reader_;
  std::uint64_t next_ = 0;
  std::vector<std::uint64_t> indices_;
  EncodedRecord record_;
};

// The split name becomes a file name under --out (convert writes OUT/<split>.png etc.), and a
// store's manifest is untrusted input: a name with '/' (or an absolute one) would put the output
// outside --out. Only a plain file-name component is accepted.
std::string checked_split_name(const std::string& name, const std::string& store) {
  bool plain = !name.empty() && name != "." && name != ".." && name.size() <= 255;
  for (char c : name) {
    const auto u = static_cast<unsigned char>(c);
    if (c == '/' || c == '\\' || u < 0x20 || u == 0x7f) plain = false;
  }
  if (!plain) {
    std::string shown;
    for (char c : name.substr(0, 80)) {
      const auto u = static_cast<unsigned char>(c);
      shown += u >= 0x20 && u != 0x7f && c != '\\' ? std::string(1, c)
                                                    : fmt::format("\\x{:02x}", u);
    }
    throw DataError(fmt::format("store '{}': its manifest names the split '{}', which is not a "
                                "plain name (no '/', '\\', control characters, '.' or '..'; at "
                                "most 255 bytes): it would be a file name in the output directory",
                                store, shown));
  }
  return name;
}

class StoreSource : public Source {
 public:
  explicit StoreSource(std::unique_ptr<StoreReader> reader) : reader_(std::move(reader)) {
    const auto& m = reader_->manifest();
    info_.name = checked_split_name(m.split.empty() ? reader_->path().stem().string() : m.split,
                                    reader_->path().string());
    info_.count = m.count;
    info_.shape = m.shape;
    info_.class_names = m.class_names;
    info_.variable_size = m.variable_size;
  }
  std::string description() const override {
    return to_string(reader_->format()) + " store '" + reader_->path().string() + "'";
  }
  std::vector<SplitInfo> splits() const override { return {info_}; }
  std::unique_ptr<BatchStream> open(const std::string& split) const override {
    if (split != info_.name) {
      throw UsageError("store '" + reader_->path().string() + "' holds split '" + info_.name +
                       "', not '" + split + "'");
    }
    return std::make_unique<StoreStream>(*reader_);
  }

 private:
  std::unique_ptr<StoreReader> reader_;
  SplitInfo info_;
};

}  // namespace

std::unique_ptr<Source> open_store_source(const std::filesystem::path& path) {
  return std::make_unique<StoreSource>(open_store(path));
}

}  // namespace imgstore::detail
