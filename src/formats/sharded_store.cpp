// Sharded stores: one store split into K stores ("shards") over contiguous record ranges, plus
// an index. Layout (docs/sharding.md):
//   <split>.<ext>/shards.json                     ShardIndex::to_json()
//   <split>.<ext>/shard-00000-of-0000K.<ext> ...  complete stores of one format, each with its
//                                                 own manifest naming its position and the
//                                                 conversion it belongs to
// The writer stages the whole directory and renames it in one step; the reader checks every
// shard against the index before serving a record.
#include <algorithm>
#include <mutex>
#include <random>

#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "formats/formats.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"

namespace imgstore {

namespace fs = std::filesystem;
using detail::quote;

namespace {

// shards.json is a few hundred bytes per shard; refuse anything absurdly larger before reading.
constexpr std::uint64_t kMaxIndexBytes = std::uint64_t{64} << 20;

// 128 random bits as 32 hex digits: tells the shards of one conversion from another's, even
// when both hold the same records.
std::string new_conversion_id() {
  std::random_device rd;
  std::uint64_t words[2] = {};
  for (auto& w : words) w = (std::uint64_t{rd()} << 32) ^ rd();
  return to_hex64(words[0]) + to_hex64(words[1]);
}

// ---- writer ----

class ShardedStoreWriter final : public StoreWriter {
 public:
  ShardedStoreWriter(Format format, const fs::path& path, const StoreSpec& spec,
                     const WriterOptions& options)
      : StoreWriter(format, path, spec, options),
        staged_(path, detail::StagedOutput::Kind::Directory, options.overwrite),
        conversion_id_(new_conversion_id()),
        shards_(options.shards) {}

 private:
  // Records arrive in order, so they fill shard 0, then shard 1, ...: one shard is open at a
  // time and is committed (inside the staged directory) as soon as it is full.
  void write_records(const ImageBatch& batch, const std::uint64_t* /*checksums*/,
                     std::uint64_t /*first_index*/) override {
    std::size_t pos = 0;
    while (pos < batch.size()) {
      if (!shard_) open_next_shard();
      const std::uint64_t room = shard_count_ - shard_->written();
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(room, batch.size() - pos));
      if (pos == 0 && n == batch.size()) {
        shard_->write(batch);
      } else {
        part_.assign_range(batch, pos, n);
        shard_->write(part_);
      }
      pos += n;
      if (shard_->written() == shard_count_) {
        shard_->commit();
        shard_.reset();
        ++next_shard_;
      }
    }
  }

  void open_next_shard() {
    const auto [first, count] = shard_range(spec_.count, shards_, next_shard_);
    StoreSpec spec = spec_;
    spec.count = count;
    spec.shard = ShardPosition{conversion_id_, next_shard_, shards_, first};
    WriterOptions options = options_;
    options.shards = 1;
    options.overwrite = false;
    options.durable = false;  // the whole directory is flushed once, at commit
    shard_ = create_store(format_, staged_.temp() / shard_file_name(format_, next_shard_, shards_),
                          spec, options);
    shard_count_ = count;
  }

  void finish(const Manifest& manifest) override {
    // written == count and no shard is empty, so every shard has been committed by now.
    if (shard_ || next_shard_ != shards_) {
      throw DataError(fmt::format("{}: {} of {} shards written at commit", quote(path_),
                                  next_shard_, shards_));
    }
    ShardIndex index;
    index.format = manifest.format;
    index.tool_version = manifest.tool_version;
    index.split = manifest.split;
    index.source = manifest.source;
    index.count = manifest.count;
    index.shape = manifest.shape;
    index.class_names = manifest.class_names;
    index.encoding = manifest.encoding;
    index.variable_size = manifest.variable_size;
    index.format_version = manifest.format_version;
    index.conversion_id = conversion_id_;
    index.content_digest = manifest.content_digest;
    for (std::uint32_t i = 0; i < shards_; ++i) {
      const auto [first, count] = shard_range(manifest.count, shards_, i);
      ContentDigest digest;
      for (std::uint64_t r = first; r < first + count; ++r) digest.add(manifest.checksums[r]);
      index.shards.push_back(ShardEntry{shard_file_name(format_, i, shards_), first, count,
                                        digest.value()});
    }
    index.validate(quote(path_) + " index");
    detail::write_file(staged_.temp() / ShardIndex::kFileName, index.to_json(), false);
    staged_.commit(options_.durable);
  }

  // Declared before shard_: an open shard is discarded before the staged directory is removed.
  detail::StagedOutput staged_;
  std::string conversion_id_;
  std::uint32_t shards_;
  std::uint32_t next_shard_ = 0;
  std::uint64_t shard_count_ = 0;
  std::unique_ptr<StoreWriter> shard_;
  ImageBatch part_;  // a batch's slice when it straddles two shards
};

// ---- reader ----

class ShardedStoreReader final : public StoreReader {
 public:
  ShardedStoreReader(fs::path path, Manifest manifest, ReaderOptions options,
                     std::vector<std::unique_ptr<StoreReader>> shards,
                     std::vector<std::uint64_t> firsts)
      : StoreReader(std::move(path), std::move(manifest), options),
        shards_(std::move(shards)),
        firsts_(std::move(firsts)) {}

  Shape record_shape(std::uint64_t index) const override {
    check_index(index);
    const std::size_t s = shard_of(index);
    try {
      return shards_[s]->record_shape(index - firsts_[s]);
    } catch (const DataError& e) {
      throw in_context(e, index);
    }
  }

  void read_record(std::uint64_t index, EncodedRecord& out) const override {
    check_index(index);
    const std::size_t s = shard_of(index);
    try {
      shards_[s]->read_record(index - firsts_[s], out);
    } catch (const DataError& e) {
      throw in_context(e, index);
    }
  }

  std::int64_t read_one(std::uint64_t index, std::uint8_t* out) const override {
    check_fixed_size();
    check_index(index);
    const std::size_t s = shard_of(index);
    try {
      return shards_[s]->read_one(index - firsts_[s], out);
    } catch (const DataError& e) {
      throw in_context(e, index);
    }
  }

  // Groups the indices by shard and hands each shard one read_many call, so every format keeps
  // its batched I/O. A group whose records sit next to each other in `out` (sequential reads)
  // is read in place; others go through a recycled buffer and are scattered.
  void read_many(const std::uint64_t* indices, std::size_t n, std::uint8_t* out,
                 std::int64_t* labels) const override {
    check_fixed_size();
    for (std::size_t i = 0; i < n; ++i) check_index(indices[i]);
    if (n == 0) return;
    const std::size_t bytes = image_bytes();
    const std::size_t first_shard = shard_of(indices[0]);
    bool one_shard = true;
    for (std::size_t i = 1; i < n && one_shard; ++i) {
      one_shard = indices[i] >= firsts_[first_shard] &&
                  indices[i] - firsts_[first_shard] < shards_[first_shard]->size();
    }
    Scratch scratch = take_scratch();
    auto& local = scratch.local;
    if (one_shard) {
      local.resize(n);
      for (std::size_t i = 0; i < n; ++i) local[i] = indices[i] - firsts_[first_shard];
      read_group(first_shard, local.data(), n, out, labels);
      give_back(std::move(scratch));
      return;
    }
    // Counting sort of the positions by shard (stable: ascending positions within a shard).
    // counts has one slot per shard, kept zeroed between calls; only touched slots are reset.
    auto& which = scratch.which;
    auto& counts = scratch.counts;
    auto& touched = scratch.touched;
    auto& order = scratch.order;
    which.resize(n);
    counts.resize(shards_.size(), 0);
    touched.clear();
    for (std::size_t i = 0; i < n; ++i) {
      const auto s = static_cast<std::uint32_t>(shard_of(indices[i]));
      which[i] = s;
      if (counts[s]++ == 0) touched.push_back(s);
    }
    std::size_t offset = 0;
    for (auto s : touched) {  // counts[s] becomes the start of shard s's group
      const std::size_t c = counts[s];
      counts[s] = offset;
      offset += c;
    }
    order.resize(n);
    for (std::size_t i = 0; i < n; ++i) order[counts[which[i]]++] = i;
    for (auto s : touched) counts[s] = 0;

    local.resize(n);
    std::size_t g = 0;
    for (auto s : touched) {
      std::size_t m = 0;
      while (g + m < n && which[order[g + m]] == s) ++m;
      for (std::size_t k = 0; k < m; ++k) local[k] = indices[order[g + k]] - firsts_[s];
      const std::size_t p0 = order[g];
      if (order[g + m - 1] - p0 == m - 1) {  // positions p0 .. p0+m-1: read in place
        read_group(s, local.data(), m, out + p0 * bytes, labels ? labels + p0 : nullptr);
      } else {
        scratch.pixels.resize(m * bytes);
        scratch.labels.resize(m);
        read_group(s, local.data(), m, scratch.pixels.data(), scratch.labels.data());
        for (std::size_t k = 0; k < m; ++k) {
          const std::size_t p = order[g + k];
          std::copy_n(scratch.pixels.data() + k * bytes, bytes, out + p * bytes);
          if (labels) labels[p] = scratch.labels[k];
        }
      }
      g += m;
    }
    give_back(std::move(scratch));
  }

  std::vector<std::pair<std::uint64_t, std::uint64_t>> shard_ranges() const override {
    std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
    ranges.reserve(shards_.size());
    for (std::size_t s = 0; s < shards_.size(); ++s) {
      ranges.emplace_back(firsts_[s], firsts_[s] + shards_[s]->size());
    }
    return ranges;
  }

  // Forwarded to each shard the range overlaps, in that shard's own numbering.
  void will_need(std::uint64_t first, std::uint64_t count) const override {
    const std::uint64_t end = std::min<std::uint64_t>(first + count, size());
    for (std::size_t s = 0; s < shards_.size() && first < end; ++s) {
      const std::uint64_t lo = firsts_[s], hi = lo + shards_[s]->size();
      if (first >= hi || end <= lo) continue;
      const std::uint64_t from = std::max(first, lo);
      shards_[s]->will_need(from - lo, std::min(end, hi) - from);
    }
  }

 private:
  // Per-call working memory, recycled through a small pool rather than thread-local storage:
  // a format's read_many may wait on TBB, and the waiting thread may then run another read.
  struct Scratch {
    std::vector<std::uint64_t> local;
    std::vector<std::uint32_t> which;     // shard of each position
    std::vector<std::size_t> counts;      // per shard; all zero between calls
    std::vector<std::uint32_t> touched;   // shards this call reads, in first-seen order
    std::vector<std::size_t> order;       // positions grouped by shard
    std::vector<std::uint8_t> pixels;
    std::vector<std::int64_t> labels;
  };

  Scratch take_scratch() const {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    if (pool_.empty()) return {};
    Scratch s = std::move(pool_.back());
    pool_.pop_back();
    return s;
  }

  void give_back(Scratch&& s) const {
    std::lock_guard<std::mutex> lock(pool_mutex_);
    if (pool_.size() < kMaxPooled) pool_.push_back(std::move(s));
  }

  std::size_t shard_of(std::uint64_t index) const {
    return static_cast<std::size_t>(std::upper_bound(firsts_.begin(), firsts_.end(), index) -
                                    firsts_.begin()) - 1;
  }

  void read_group(std::size_t s, const std::uint64_t* local, std::size_t m, std::uint8_t* out,
                  std::int64_t* labels) const {
    try {
      shards_[s]->read_many(local, m, out, labels);
    } catch (const DataError& e) {
      // The shard's message names its file and local record; name the whole store too.
      throw DataError(fmt::format("{} (in sharded store {})", e.what(), quote(path_)));
    }
  }

  DataError in_context(const DataError& e, std::uint64_t index) const {
    return DataError(fmt::format("{} (record {} of sharded store {})", e.what(), index,
                                 quote(path_)));
  }

  static constexpr std::size_t kMaxPooled = 16;

  std::vector<std::unique_ptr<StoreReader>> shards_;
  std::vector<std::uint64_t> firsts_;  // first record of each shard, ascending
  mutable std::mutex pool_mutex_;
  mutable std::vector<Scratch> pool_;
};

}  // namespace

bool is_sharded_store(const fs::path& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) && fs::exists(path / ShardIndex::kFileName, ec);
}

ShardIndex read_shard_index(const fs::path& path) {
  const fs::path file = path / ShardIndex::kFileName;
  const auto bytes = detail::read_file(file, kMaxIndexBytes);
  return ShardIndex::from_json(std::string(bytes.begin(), bytes.end()), quote(file));
}

std::unique_ptr<StoreWriter> detail::create_sharded_store(Format format, const fs::path& path,
                                                          const StoreSpec& spec,
                                                          const WriterOptions& options) {
  return std::make_unique<ShardedStoreWriter>(format, path, spec, options);
}

std::unique_ptr<StoreReader> detail::open_sharded_store(const fs::path& path,
                                                        const ReaderOptions& options) {
  const ShardIndex index = read_shard_index(path);
  const std::string where = fmt::format("sharded store {}", quote(path));
  const auto k = static_cast<std::uint32_t>(index.shards.size());

  // Every shard must be there before any is opened: a missing file is the likeliest mistake
  // (a partial copy to local disk), and it gets its own error.
  for (std::uint32_t i = 0; i < k; ++i) {
    const fs::path p = path / index.shards[i].file;
    std::error_code ec;
    if (!fs::exists(fs::symlink_status(p, ec))) {
      throw IoError(fmt::format("{}: shard file '{}' (shard {} of {}, listed in {}) is missing",
                                where, index.shards[i].file, i, k, ShardIndex::kFileName));
    }
  }

  Manifest combined;
  combined.format = index.format;
  combined.tool_version = index.tool_version;
  combined.split = index.split;
  combined.source = index.source;
  combined.count = index.count;
  combined.shape = index.shape;
  combined.class_names = index.class_names;
  combined.encoding = index.encoding;
  combined.variable_size = index.variable_size;
  combined.format_version = index.format_version;
  combined.content_digest = index.content_digest;
  // No reserve from index.count: it comes from the file. The shards' checksum lists were
  // checked against their own data when they opened.

  std::vector<std::unique_ptr<StoreReader>> shards;
  std::vector<std::uint64_t> firsts;
  shards.reserve(k);
  firsts.reserve(k);
  for (std::uint32_t i = 0; i < k; ++i) {
    const ShardEntry& e = index.shards[i];
    const fs::path p = path / e.file;
    if (is_sharded_store(p)) {
      throw DataError(fmt::format("{}: shard '{}' is itself a sharded store", where, e.file));
    }
    auto reader = detail::open_single_store(index.format, p, options);
    const Manifest& m = reader->manifest();
    const auto name = fmt::format("{}: shard '{}'", where, e.file);
    if (!m.shard) {
      throw DataError(fmt::format("{} is not part of a sharded store (its manifest has no shard "
                                  "position)", name));
    }
    const ShardPosition& pos = *m.shard;
    if (pos.conversion_id != index.conversion_id) {
      throw DataError(fmt::format("{} comes from another conversion (id {}, expected {})", name,
                                  pos.conversion_id, index.conversion_id));
    }
    if (pos.index != i || pos.shards != k || pos.first_record != e.first_record) {
      throw DataError(fmt::format("{} says it is shard {} of {} from record {}; {} lists it as "
                                  "shard {} of {} from record {}", name, pos.index, pos.shards,
                                  pos.first_record, ShardIndex::kFileName, i, k, e.first_record));
    }
    if (m.format != index.format) {
      throw DataError(fmt::format("{} is {}, the index says {}", name, to_string(m.format),
                                  to_string(index.format)));
    }
    if (m.count != e.count) {
      throw DataError(fmt::format("{} holds {} records, {} says {}", name, m.count,
                                  ShardIndex::kFileName, e.count));
    }
    if (m.shape != index.shape) {
      throw DataError(fmt::format("{} holds {} images, {} says {}", name, to_string(m.shape),
                                  ShardIndex::kFileName, to_string(index.shape)));
    }
    if (m.variable_size != index.variable_size) {
      throw DataError(fmt::format("{} is {}-size, {} says otherwise", name,
                                  m.variable_size ? "variable" : "fixed", ShardIndex::kFileName));
    }
    if (m.variable_size) {  // the combined bounds are the union of the shards'
      const bool first = shards.empty();
      combined.min_height = first ? m.min_height : std::min(combined.min_height, m.min_height);
      combined.min_width = first ? m.min_width : std::min(combined.min_width, m.min_width);
      combined.max_height = std::max(combined.max_height, m.max_height);
      combined.max_width = std::max(combined.max_width, m.max_width);
    }
    if (m.class_names != index.class_names || m.encoding != index.encoding) {
      throw DataError(fmt::format("{} has other class names or encoding than {}", name,
                                  ShardIndex::kFileName));
    }
    if (m.content_digest != e.content_digest) {
      throw DataError(fmt::format("{} has content digest {}, {} says {}", name,
                                  to_hex64(m.content_digest), ShardIndex::kFileName,
                                  to_hex64(e.content_digest)));
    }
    combined.checksums.insert(combined.checksums.end(), m.checksums.begin(), m.checksums.end());
    firsts.push_back(e.first_record);
    shards.push_back(std::move(reader));
  }
  // The shards agree with the index one by one; the index's own digest must cover them all.
  combined.validate(fmt::format("{} {}", where, ShardIndex::kFileName));
  return std::make_unique<ShardedStoreReader>(path, std::move(combined), options,
                                              std::move(shards), std::move(firsts));
}

}  // namespace imgstore
