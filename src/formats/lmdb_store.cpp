// LMDB store: writer and reader.
//
// On-disk layout (readable from py-lmdb: `lmdb.open(dir, readonly=True, lock=False, max_dbs=2)`):
//   <split>.lmdb/data.mdb   one LMDB environment (no lock.mdb: it is written and read with
//                           MDB_NOLOCK, since a committed store is immutable)
//   Main (unnamed) database, one entry per record:
//     key   = record index as 8 ASCII decimal digits, zero-padded ("00012345"), so byte order
//             is numeric order (indices >= 10^8 get more digits and are written without
//             MDB_APPEND; readers look keys up, never rely on order)
//     value = 32-byte little-endian header, then the payload:
//       offset  0  char[4]  magic "IMGS"
//               4  uint16   value version = 1
//               6  uint8    encoding: EncodingEntry::code (0 = raw, 1 = png, 2 = jpeg), see
//                           formats/encoding_table.cpp
//               7  uint8    channels C
//               8  uint32   height H
//              12  uint32   width W
//              16  int32    label
//              20  uint32   payload_length (bytes after the header)
//              24  uint64   xxh3_64(payload), unseeded
//              32  payload  raw: H*W*C pixel bytes in HWC order (the value's last H*W*C bytes);
//                           png: one 8-bit PNG of H x W with C channels
//                           jpeg: one JPEG file's bytes (a source JPEG stored untouched,
//                           or pixels encoded at --jpeg-quality); decodes to H x W x C
//       Variable-size stores (manifest "variable_size": true, format version 2) are the same:
//       H and W are each record's own.
//   Named sub-database "__imgstore__" (it also appears in the main database as the key
//   "__imgstore__", which sorts after every digit key), holding:
//     key "manifest" = Manifest::to_json() (count, shape, class names, per-record checksums).
//   So the main database holds manifest.count + 1 entries.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <atomic>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "detail/lmdb_handles.hpp"
#include "detail/prefetch.hpp"
#include "detail/testing.hpp"
#include "formats/encoding_table.hpp"
#include "formats/formats.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"

namespace imgstore::detail {

namespace {

namespace fs = std::filesystem;

constexpr std::size_t kHeaderBytes = 32;
constexpr char kMagic[4] = {'I', 'M', 'G', 'S'};
constexpr std::uint16_t kValueVersion = 1;
constexpr const char* kMetaDb = "__imgstore__";
constexpr const char* kManifestKey = "manifest";
// Below this index the 8-digit keys sort numerically, so MDB_APPEND applies.
constexpr std::uint64_t kAppendLimit = 100000000;
// Values per write transaction: large enough to amortise commits, small enough that LMDB's
// dirty-page list (malloc'd, reused between transactions) stays warm in cache, and that the
// commit's writev() of the new pages stays near kMaxWriteCall (fs_util.hpp says why).
// 10,860 photos, 3 s after the last run: 0.43-0.49 s with 32 MiB transactions, 0.26-0.29 s
// with 1 MiB; 256 KiB was no faster.
constexpr std::size_t kTxnValueBytes = kMaxWriteCall;
// Idle read transactions kept per environment for reuse (reset/renew is far cheaper than
// begin/abort, which allocate).
constexpr std::size_t kMaxIdleTxns = 64;
// Stores with more records than this get no value-location cache (16 bytes a record).
constexpr std::uint64_t kMaxCachedRecords = std::uint64_t{1} << 27;
// Shuffled reads miss the cache (and the TLB) on every record; read_many overlaps those misses
// by prefetching this many records ahead (and the cache slots twice as far ahead).
constexpr std::size_t kPrefetchAhead = 4;

// ---- little-endian helpers (explicit, so the layout does not depend on the host) ----

void put_u16(std::uint8_t* p, std::uint16_t v) {
  p[0] = static_cast<std::uint8_t>(v);
  p[1] = static_cast<std::uint8_t>(v >> 8);
}
void put_u32(std::uint8_t* p, std::uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
void put_u64(std::uint8_t* p, std::uint64_t v) {
  for (int i = 0; i < 8; ++i) p[i] = static_cast<std::uint8_t>(v >> (8 * i));
}
std::uint16_t get_u16(const std::uint8_t* p) {
  return static_cast<std::uint16_t>(p[0] | (p[1] << 8));
}
std::uint32_t get_u32(const std::uint8_t* p) {
  std::uint32_t v = 0;
  for (int i = 3; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}
std::uint64_t get_u64(const std::uint8_t* p) {
  std::uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

void write_header(std::uint8_t* p, std::uint8_t encoding, const Shape& shape, std::int32_t label,
                  std::uint32_t payload_length, std::uint64_t payload_hash) {
  std::memcpy(p, kMagic, 4);
  put_u16(p + 4, kValueVersion);
  p[6] = encoding;
  p[7] = static_cast<std::uint8_t>(shape.channels);
  put_u32(p + 8, shape.height);
  put_u32(p + 12, shape.width);
  put_u32(p + 16, static_cast<std::uint32_t>(label));
  put_u32(p + 20, payload_length);
  put_u64(p + 24, payload_hash);
}

// record_key() without the allocation, for the hot paths; returns the length. `out` holds 32.
std::size_t format_key(std::uint64_t index, char* out) {
  if (index >= kAppendLimit) return fmt::format_to_n(out, 32, "{:08d}", index).size;
  for (int i = 7; i >= 0; --i) {
    out[i] = static_cast<char>('0' + index % 10);
    index /= 10;
  }
  return 8;
}

std::size_t round_up(std::size_t n, std::size_t to) { return (n + to - 1) / to * to; }

std::size_t page_size() {
  long p = ::sysconf(_SC_PAGESIZE);
  return p > 0 ? static_cast<std::size_t>(p) : 4096;
}

// A first guess at the map size; MDB_MAP_FULL makes the writer double it, so it need not be
// right. Large values live on overflow pages (whole pages each), small ones in leaves that
// may be half full after splits.
std::size_t estimate_map_size(const StoreSpec& spec, bool encoded) {
  if (auto forced = testing::lmdb_initial_map_size()) return forced;
  const std::size_t psize = page_size();
  // Variable size: a guess of a mid-sized photo; growth corrects it.
  const std::size_t bytes = spec.variable_size ? std::size_t{96} << 10 : spec.shape.bytes();
  const std::size_t value = kHeaderBytes + (encoded ? bytes + bytes / 8 + 1024 : bytes);
  const long double per_record = value + 64 > psize / 2
                                     ? static_cast<long double>(round_up(value + 64, psize))
                                     : 2.0L * (value + 64);
  std::size_t names = 0;
  for (const auto& n : spec.class_names) names += n.size() + 8;
  const long double total = spec.count * per_record * 1.1L  // records, branch pages
                            + spec.count * 48.0L + 2.0L * names  // manifest (hex checksums)
                            + (8 << 20);                          // meta pages, slack
  constexpr long double kMaxInitial = 1ULL << 40;  // growth handles anything larger
  return round_up(static_cast<std::size_t>(std::min(total, kMaxInitial)), psize);
}

// ---- writer ----

class LmdbWriter final : public StoreWriter {
 public:
  LmdbWriter(const fs::path& path, const StoreSpec& spec, const WriterOptions& options)
      : StoreWriter(Format::Lmdb, path, spec, options),
        codec_(encoding_entry(encoding_)),
        encoded_payloads_(encoding_ != Encoding::Raw),
        staged_(path, StagedOutput::Kind::Directory, options.overwrite),
        name_(quote(path)) {
    map_size_ = estimate_map_size(spec_, encoded_payloads_);
    env_ = lmdb::Env::create(what("create an LMDB environment"));
    env_.set_maxdbs(2, what("configure"));
    env_.set_mapsize(map_size_, what("set the map size"));
    // NOLOCK: one writer in a private staging directory, and no lock.mdb left behind.
    // NOSYNC: intermediate commits need not reach the disk; the staged commit flushes once if durable.
    env_.open(staged_.temp().string(), MDB_NOLOCK | MDB_NOSYNC, 0644,
              what("open the LMDB environment in " + quote(staged_.temp())));
    auto txn = lmdb::Txn::begin(env_.get(), 0, what("begin a transaction"));
    main_ = lmdb::Dbi::open(txn.get(), nullptr, 0, what("open the main database"));
    txn.commit(what("commit"));
  }

 protected:
  void write_records(const ImageBatch& batch, const std::uint64_t* /*checksums*/,
                     std::uint64_t first_index) override {
    const std::size_t n = batch.size();
    for (std::size_t i = 0; i < n; ++i) {
      if (batch.labels[i] > std::numeric_limits<std::int32_t>::max()) {
        throw DataError(fmt::format("{}: record {} has label {}, more than an LMDB record holds",
                                    name_, first_index + i, batch.labels[i]));
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      if (batch.image_bytes(i) > std::numeric_limits<std::uint32_t>::max() - kHeaderBytes) {
        throw UsageError(fmt::format("{}: record {} of {} bytes is too large for an LMDB record",
                                     name_, first_index + i, batch.image_bytes(i)));
      }
    }
    if (codec_.info.encoding == Encoding::Png) encode_all(batch);
    // The headers' payload hashes, on all the writer's threads before the (serial) puts.
    payload_hashes_.resize(n);
    for_record_blocks(n, 64, [&](std::size_t begin, std::size_t end) {
      for (std::size_t i = begin; i < end; ++i) {
        const auto [payload, payload_len] = payload_of(batch, i);
        payload_hashes_[i] = xxh3_64(payload, payload_len);
      }
    });

    const std::size_t value_guess =
        kHeaderBytes + (n == 0 ? 0 : payload_of(batch, n - 1).second);
    const std::size_t per_txn = std::max<std::size_t>(1, kTxnValueBytes / value_guess);
    for (std::size_t start = 0; start < n; start += per_txn) {
      const std::size_t end = std::min(n, start + per_txn);
      for (;;) {
        auto txn = lmdb::Txn::begin(env_.get(), 0, what("begin a write transaction"));
        int rc = put_range(txn.get(), batch, first_index, start, end);
        if (rc == MDB_SUCCESS) rc = txn.try_commit();
        if (rc == MDB_MAP_FULL) {
          txn.abort();
          grow();
          continue;  // redo this range in a fresh transaction
        }
        lmdb::check(explain_short_write(rc, (end - start) * value_guess),
                    what(fmt::format("write records {}..{} to {}", first_index + start,
                                     first_index + end - 1, data_file())));
        break;
      }
    }
  }

  void finish(const Manifest& manifest) override {
    const std::string json = manifest.to_json();
    for (;;) {
      auto txn = lmdb::Txn::begin(env_.get(), 0, what("begin a write transaction"));
      lmdb::Dbi meta;
      int rc = lmdb::Dbi::try_open(txn.get(), kMetaDb, MDB_CREATE, meta);
      if (rc == MDB_SUCCESS) {
        MDB_val value = lmdb::make_val(json.data(), json.size());
        rc = meta.try_put(txn.get(), lmdb::make_val(kManifestKey, std::strlen(kManifestKey)),
                          value, 0);
      }
      if (rc == MDB_SUCCESS) rc = txn.try_commit();
      if (rc == MDB_MAP_FULL) {
        txn.abort();
        grow();
        continue;
      }
      lmdb::check(explain_short_write(rc, json.size() + 2 * page_size()),
                  what("write the manifest to " + data_file()));
      break;
    }
    env_.close();
    staged_.commit(options_.durable);  // flushes data.mdb once, with the directory
  }

 private:
  std::string what(const std::string& action) const {
    return fmt::format("{}: cannot {}", name_, action);
  }

  std::string data_file() const { return quote(staged_.temp() / "data.mdb"); }

  // LMDB reports a short write, which is what a full disk gives, as EIO ("Input/output
  // error"). Say ENOSPC when the file system has less room left than the commit needed.
  int explain_short_write(int rc, std::size_t bytes) const {
    struct statvfs st {};
    if (rc == EIO && ::statvfs(staged_.temp().c_str(), &st) == 0 &&
        static_cast<std::uint64_t>(st.f_bavail) * st.f_frsize < bytes) {
      return ENOSPC;
    }
    return rc;
  }

  // Encoding (PNG, ...) is the slow part of an encoded store: do it in parallel, before any
  // transaction, so a map-full retry does not redo it.
  void encode_all(const ImageBatch& batch) {
    const std::size_t n = batch.size();
    if (encoded_.size() < n) encoded_.resize(n);
    for_record_blocks(n, 16, [&](std::size_t begin, std::size_t end) {
      for (std::size_t i = begin; i != end; ++i) {
        codec_.encode(batch.image(i), batch.image_shape(i), options_, encoded_[i]);
      }
    });
    for (std::size_t i = 0; i < n; ++i) {
      if (encoded_[i].size() > std::numeric_limits<std::uint32_t>::max() - kHeaderBytes) {
        throw UsageError(fmt::format("{}: record {} encodes to {} bytes, too large", name_, i,
                                     encoded_[i].size()));
      }
    }
  }

  // Record i's payload: the pixels (raw), its PNG from encode_all, or the batch's JPEG bytes
  // (StoreWriter::write fills them for lossy stores).
  std::pair<const std::uint8_t*, std::size_t> payload_of(const ImageBatch& batch,
                                                         std::size_t i) const {
    switch (codec_.info.encoding) {
      case Encoding::Raw: return {batch.image(i), batch.image_bytes(i)};
      case Encoding::Png: return {encoded_[i].data(), encoded_[i].size()};
      default: {
        const std::size_t begin = batch.payload_offsets[i];
        return {batch.payload.data() + begin, batch.payload_offsets[i + 1] - begin};
      }
    }
  }

  // Puts records [start, end) of the batch. Returns LMDB's code (MDB_MAP_FULL is retried).
  int put_range(MDB_txn* txn, const ImageBatch& batch, std::uint64_t first_index,
                std::size_t start, std::size_t end) {
    char key[32];
    for (std::size_t i = start; i < end; ++i) {
      const std::uint64_t index = first_index + i;
      const std::size_t key_len = format_key(index, key);
      const auto [payload, payload_len] = payload_of(batch, i);
      // MDB_RESERVE: LMDB hands out the value's space and we fill it, saving a copy.
      MDB_val value{kHeaderBytes + payload_len, nullptr};
      unsigned flags = MDB_RESERVE | (index < kAppendLimit ? MDB_APPEND : 0u);
      int rc = main_.try_put(txn, lmdb::make_val(key, key_len), value, flags);
      if (rc != MDB_SUCCESS) return rc;
      auto* out = static_cast<std::uint8_t*>(value.mv_data);
      write_header(out, codec_.code, batch.image_shape(i),
                   static_cast<std::int32_t>(batch.labels[i]),
                   static_cast<std::uint32_t>(payload_len), payload_hashes_[i]);
      std::memcpy(out + kHeaderBytes, payload, payload_len);
    }
    return MDB_SUCCESS;
  }

  void grow() {
    if (map_size_ > std::numeric_limits<std::size_t>::max() / 2) {
      throw IoError(fmt::format("{}: the LMDB map cannot grow beyond {} bytes", name_, map_size_));
    }
    map_size_ *= 2;
    env_.set_mapsize(map_size_, what(fmt::format("grow the map to {} bytes", map_size_)));
  }

  const EncodingEntry& codec_;
  bool encoded_payloads_;  // false: raw, the payload is the pixels (no copy, no codec)
  // Declared before env_ so that the environment is closed before the staging directory
  // is removed (members are destroyed in reverse order).
  StagedOutput staged_;
  std::string name_;
  lmdb::Env env_;
  lmdb::Dbi main_;
  std::size_t map_size_ = 0;
  std::vector<std::vector<std::uint8_t>> encoded_;  // encoded payloads, reused between batches
  std::vector<std::uint64_t> payload_hashes_;        // the batch's header hashes, reused
};

// ---- reader: one shared environment per data file per process ----
//
// Small records make per-record fixed costs dominate, so after a record's first lookup (or the
// cursor walk at open) its value's place in the map is cached, and a read is a validated
// memcpy: header, length and (by default) checksum are checked on every read, as before.

// LMDB forbids opening one environment twice in a process, so readers of the same store
// share this. It also pools reset read transactions for reuse.
struct SharedEnv {
  lmdb::Env env;
  lmdb::Dbi main;
  lmdb::Dbi meta;
  std::mutex pool_mutex;
  std::vector<lmdb::Txn> idle;  // declared after env: aborted before the env closes
  // Held open for the environment's whole life (MDB_NOTLS lets a read transaction outlive any
  // one thread's use): LMDB guarantees that value pointers into the map stay valid only while
  // a read transaction is open, and this is what keeps the pointers in `locations` valid.
  // Never used for lookups (a transaction is single-threaded); those lease from `idle`.
  lmdb::Txn pin;  // declared after env: aborted before the env closes
  // Where each record's value lies in the map, filled at open by one cursor walk (unless
  // no_readahead) and otherwise on first lookup; null: not known yet. Only a location is
  // cached, never a verdict: every read still validates the header, length and checksum.
  struct Location {
    std::atomic<const std::uint8_t*> data{nullptr};
    std::atomic<std::uint32_t> size{0};
  };
  std::unique_ptr<Location[]> locations;  // one cache line holds four: one miss per record
  std::uint64_t cached_count = 0;         // entries in `locations`; 0: no cache
  std::once_flag cache_once;
  // Size of data.mdb's used pages. LMDB does not check value sizes against the file, so a
  // damaged node could describe a value larger than the file; never read or allocate that.
  // (LMDB's own page structure is trusted beyond this and the truncation check at open.)
  std::uint64_t file_bytes = 0;

  bool plausible(const MDB_val& v) const {
    return v.mv_size <= file_bytes;
  }

  // Sizes the location cache for `count` records (once per environment) and, if `walk`, fills
  // it with one cursor pass over the main database using `txn`. The walk touches every leaf
  // page (not overflow pages), so callers skip it for stores read with no_readahead.
  void init_cache(std::uint64_t count, bool walk, MDB_txn* txn, const std::string& name) {
    std::call_once(cache_once, [&] {
      if (count == 0 || count > kMaxCachedRecords) return;  // lookups as before
      std::unique_ptr<Location[]> slots;
      try {
        slots = std::make_unique<Location[]>(count);
      } catch (const std::bad_alloc&) {
        return;
      }
      // Published only once complete, so a walk that throws (a damaged tree) leaves no cache;
      // readers exist only after this call_once has finished, so they see it whole.
      if (walk) walk_into(slots.get(), count, txn, name);
      locations = std::move(slots);
      cached_count = count;
    });
  }

  // Fills `slots` with the location of every record key found by one cursor pass.
  void walk_into(Location* slots, std::uint64_t count, MDB_txn* txn, const std::string& name) {
    auto cursor = lmdb::Cursor::open(txn, main, name + ": cannot open a cursor");
    MDB_val key{};
    MDB_val value{};
    char canonical[32];
    const std::string what = name + ": cannot walk the database";
    for (bool more = cursor.get(key, value, MDB_FIRST, what); more;
         more = cursor.get(key, value, MDB_NEXT, what)) {
      // Only canonical record keys; anything else (the "__imgstore__" entry) is skipped,
      // and a record missing here is looked up, and reported, on its first read.
      const auto* k = static_cast<const char*>(key.mv_data);
      if (key.mv_size < 8 || key.mv_size > 20) continue;
      std::uint64_t index = 0;
      bool digits = true;
      for (std::size_t i = 0; i < key.mv_size && digits; ++i) {
        digits = k[i] >= '0' && k[i] <= '9';
        index = index * 10 + static_cast<std::uint64_t>(k[i] - '0');
      }
      if (!digits || index >= count) continue;
      const std::size_t len = format_key(index, canonical);
      if (len != key.mv_size || std::memcmp(canonical, k, len) != 0) continue;
      if (!plausible(value) || value.mv_size > std::numeric_limits<std::uint32_t>::max()) {
        continue;  // left to the lookup on first read, which reports it
      }
      slots[index].size.store(static_cast<std::uint32_t>(value.mv_size),
                              std::memory_order_relaxed);
      slots[index].data.store(static_cast<const std::uint8_t*>(value.mv_data),
                              std::memory_order_relaxed);
    }
  }

  // A cached value location, if known. The size is stored before the pointer (release), so
  // whoever sees the pointer (acquire) sees its size.
  bool recall(std::uint64_t index, const std::uint8_t*& data, std::size_t& size) const noexcept {
    if (index >= cached_count) return false;
    data = locations[index].data.load(std::memory_order_acquire);
    if (data == nullptr) return false;
    size = locations[index].size.load(std::memory_order_relaxed);
    return true;
  }

  // Starts loading a record's cache slot, or (once the slot is cached) its value.
  void prefetch_slot(std::uint64_t index) const noexcept {
    if (index < cached_count) __builtin_prefetch(&locations[index]);
  }
  void prefetch_value(std::uint64_t index) const noexcept {
    const std::uint8_t* data = nullptr;
    std::size_t size = 0;
    if (recall(index, data, size)) prefetch_bytes(data, size);
  }

  // Threads racing on one index store identical values, so the race is harmless.
  void remember(std::uint64_t index, const MDB_val& v) noexcept {
    if (index >= cached_count || v.mv_size > std::numeric_limits<std::uint32_t>::max()) return;
    locations[index].size.store(static_cast<std::uint32_t>(v.mv_size), std::memory_order_relaxed);
    locations[index].data.store(static_cast<const std::uint8_t*>(v.mv_data),
                                std::memory_order_release);
  }

  lmdb::Txn take(const std::string& what) {
    {
      std::lock_guard<std::mutex> lock(pool_mutex);
      if (!idle.empty()) {
        lmdb::Txn txn = std::move(idle.back());
        idle.pop_back();
        txn.renew(what);
        return txn;
      }
    }
    return lmdb::Txn::begin(env.get(), MDB_RDONLY, what);
  }

  void give_back(lmdb::Txn txn) noexcept {
    if (!txn) return;
    txn.reset();
    std::lock_guard<std::mutex> lock(pool_mutex);
    if (idle.size() < kMaxIdleTxns) {
      try {
        idle.push_back(std::move(txn));
      } catch (...) {
        // out of memory: let txn abort
      }
    }
  }
};

// A read transaction borrowed from the pool for one call.
class TxnLease {
 public:
  TxnLease(SharedEnv& env, const std::string& what) : env_(env), txn_(env.take(what)) {}
  ~TxnLease() { env_.give_back(std::move(txn_)); }
  TxnLease(const TxnLease&) = delete;
  TxnLease& operator=(const TxnLease&) = delete;
  MDB_txn* get() const { return txn_.get(); }

 private:
  SharedEnv& env_;
  lmdb::Txn txn_;
};

// Keyed by the data file's identity, not its path: a store replaced under the same name
// (overwrite) gets a fresh environment, while symlinks and relative paths share one.
using FileId = std::pair<dev_t, ino_t>;

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
std::map<FileId, std::weak_ptr<SharedEnv>>& registry() {
  static std::map<FileId, std::weak_ptr<SharedEnv>> r;
  return r;
}

std::shared_ptr<SharedEnv> open_shared_env(const fs::path& path, const struct stat& data_stat,
                                           const ReaderOptions& options) {
  const std::string name = quote(path);
  auto what = [&](const std::string& action) { return fmt::format("{}: cannot {}", name, action); };
  const FileId id{data_stat.st_dev, data_stat.st_ino};

  std::lock_guard<std::mutex> lock(registry_mutex());
  auto& reg = registry();
  for (auto it = reg.begin(); it != reg.end();) {
    it = it->second.expired() ? reg.erase(it) : std::next(it);
  }
  if (auto it = reg.find(id); it != reg.end()) {
    if (auto shared = it->second.lock()) return shared;
  }

  auto shared = std::make_shared<SharedEnv>();
  shared->env = lmdb::Env::create(what("create an LMDB environment"));
  shared->env.set_maxdbs(2, what("configure"));
  // NOLOCK: the committed store is immutable, so readers need no lock file and never write
  // to the store (read-only file systems work). NOTLS: transactions may move between threads.
  unsigned flags = MDB_RDONLY | MDB_NOTLS | MDB_NOLOCK;
  if (options.no_readahead) flags |= MDB_NORDAHEAD;
  shared->env.open(path.string(), flags, 0644, what("open the LMDB environment"));

  // LMDB trusts its page numbers; a truncated data.mdb would fault on access, so refuse it.
  MDB_envinfo info{};
  MDB_stat est{};
  lmdb::check(::mdb_env_info(shared->env.get(), &info), what("query the environment"));
  lmdb::check(::mdb_env_stat(shared->env.get(), &est), what("query the environment"));
  const std::uint64_t needed = (static_cast<std::uint64_t>(info.me_last_pgno) + 1) * est.ms_psize;
  if (needed > static_cast<std::uint64_t>(data_stat.st_size)) {
    throw DataError(fmt::format("{}: data.mdb is truncated ({} bytes, its pages need {})", name,
                                data_stat.st_size, needed));
  }
  shared->file_bytes = needed;

  auto txn = lmdb::Txn::begin(shared->env.get(), MDB_RDONLY, what("begin a read transaction"));
  shared->main = lmdb::Dbi::open(txn.get(), nullptr, 0, what("open the main database"));
  int rc = lmdb::Dbi::try_open(txn.get(), kMetaDb, 0, shared->meta);
  if (rc == MDB_NOTFOUND) {
    throw DataError(fmt::format("{} has no manifest (no sub-database '{}'); it is not an "
                                "imgstore LMDB store", name, kMetaDb));
  }
  if (rc == MDB_INCOMPATIBLE) {
    throw DataError(fmt::format("{}: key '{}' of the main database is not a sub-database; it is "
                                "not an imgstore LMDB store", name, kMetaDb));
  }
  lmdb::check(rc, what(fmt::format("open the sub-database '{}'", kMetaDb)));
  // Committing a read transaction makes its dbi handles usable by later transactions.
  txn.commit(what("commit a read transaction"));
  // The store is immutable and the map read-only, so no update can ever invalidate a value
  // pointer; this transaction, open until the environment closes, makes that hold by LMDB's
  // own rule too (pointers are valid while a read transaction of their snapshot is open).
  shared->pin = lmdb::Txn::begin(shared->env.get(), MDB_RDONLY, what("begin a read transaction"));
  reg[id] = shared;
  return shared;
}

class LmdbReader final : public StoreReader {
 public:
  LmdbReader(fs::path path, Manifest manifest, ReaderOptions options,
             std::shared_ptr<SharedEnv> shared)
      : StoreReader(std::move(path), std::move(manifest), options),
        shared_(std::move(shared)),
        name_(quote(path_)),
        codec_(encoding_entry(manifest_.encoding)) {}

  std::int64_t read_one(std::uint64_t index, std::uint8_t* out) const override {
    check_fixed_size();
    check_index(index);
    const std::uint8_t* data = nullptr;
    std::size_t size = 0;
    if (shared_->recall(index, data, size)) {
      return decode_value(index, parse_value(index, data, size), out);
    }
    TxnLease txn(*shared_, read_what());
    return fetch_into(txn.get(), index, out);
  }

  void read_many(const std::uint64_t* indices, std::size_t n, std::uint8_t* out,
                 std::int64_t* labels) const override {
    check_fixed_size();
    for (std::size_t i = 0; i < n; ++i) check_index(indices[i]);
    if (n == 0) return;
    const std::size_t bytes = image_bytes();
    std::optional<TxnLease> txn;  // leased on the first cache miss only
    const bool verify = options_.verify_checksums;
    for (std::size_t i = 0; i < n; ++i) {
      if (i + 2 * kPrefetchAhead < n) {
        const std::uint64_t later = indices[i + 2 * kPrefetchAhead];
        shared_->prefetch_slot(later);
        if (verify) __builtin_prefetch(&manifest_.checksums[later]);
      }
      if (i + kPrefetchAhead < n) shared_->prefetch_value(indices[i + kPrefetchAhead]);
      const std::uint8_t* data = nullptr;
      std::size_t size = 0;
      std::int64_t label = 0;
      if (shared_->recall(indices[i], data, size)) {
        label = decode_value(indices[i], parse_value(indices[i], data, size), out + i * bytes);
      } else {
        if (!txn) txn.emplace(*shared_, read_what());
        label = fetch_into(txn->get(), indices[i], out + i * bytes);
      }
      if (labels) labels[i] = label;
    }
  }

  Shape record_shape(std::uint64_t index) const override { return locate(index).shape; }

  // Values of consecutive keys lie in key order in data.mdb (written with MDB_APPEND), so
  // the span from the first value to the end of the last holds them all: one WILLNEED on it
  // starts the kernel reading it, even in a map opened with MDB_NORDAHEAD. Skipped if the
  // span is much larger than the values (a store not laid out in key order). A hint: any
  // failure here is left for the reads to report.
  void will_need(std::uint64_t first, std::uint64_t count) const override {
    if (count == 0 || first >= size()) return;
    const std::uint64_t last = std::min<std::uint64_t>(first + count, size()) - 1;
    MDB_val a{}, b{};
    try {
      if (!find_value(first, a) || !find_value(last, b)) return;
    } catch (const std::exception&) {
      return;
    }
    const auto lo = reinterpret_cast<std::uintptr_t>(a.mv_data);
    const auto hi = reinterpret_cast<std::uintptr_t>(b.mv_data) + b.mv_size;
    const std::uint64_t per_value = std::max(a.mv_size, b.mv_size) + 4096;
    if (hi <= lo || hi - lo > 2 * (last - first + 1) * per_value + (std::uint64_t{1} << 20)) return;
    const auto page = static_cast<std::uintptr_t>(page_size());
    const std::uintptr_t start = lo & ~(page - 1);
    ::madvise(reinterpret_cast<void*>(start), hi - start, MADV_WILLNEED);
  }

  // The payload as stored (PNG is decoded: nothing downstream takes PNG bytes).
  void read_record(std::uint64_t index, EncodedRecord& out) const override {
    const Value v = locate(index);
    out.shape = v.shape;
    out.label = v.label;
    if (codec_.info.encoding == Encoding::Png) {
      out.encoding = Encoding::Raw;
      out.bytes.resize(v.shape.bytes());
      if (options_.verify_checksums) check_payload_hash(index, v);
      codec_.decode(v.payload, v.payload_size, v.shape, out.bytes.data(),
                    fmt::format("corrupt record in {} {}", name_, record_name(index)));
      check_payload_checksum(index, out.bytes.data(), out.bytes.size(), v.label);
      return;
    }
    out.encoding = codec_.info.encoding;
    out.bytes.assign(v.payload, v.payload + v.payload_size);
    // Raw: the checksum covers the pixels; JPEG: the payload. Both are out.bytes.
    check_payload_checksum(index, out.bytes.data(), out.bytes.size(), v.label);
  }

 protected:
  std::string record_name(std::uint64_t index) const override {
    return fmt::format("key '{}'", record_key(index));
  }

 private:
  // One value's header fields, validated against the value's real length and the manifest
  // (never trusting a size from the header).
  struct Value {
    Shape shape;
    std::int32_t label = 0;
    const std::uint8_t* payload = nullptr;
    std::size_t payload_size = 0;
    std::uint64_t payload_hash = 0;  // from the header
  };

  std::string read_what() const { return name_ + ": cannot begin a read transaction"; }

  // Looks record `index` up (a cache miss), validates its header and caches its place.
  Value lookup(MDB_txn* txn, std::uint64_t index) const {
    char key[32];
    MDB_val k = lmdb::make_val(key, format_key(index, key));
    MDB_val value{};
    // mdb_get directly: the error text is built only on failure, not on every read.
    const int rc = ::mdb_get(txn, shared_->main.get(), &k, &value);
    if (rc == MDB_NOTFOUND) {
      throw DataError(fmt::format("corrupt store {}: {} is missing", name_, record_name(index)));
    }
    lmdb::check(rc, fmt::format("{}: cannot read {}", name_, record_name(index)));
    if (!shared_->plausible(value)) {
      throw corrupt(index, fmt::format("value is {} bytes, larger than data.mdb", value.mv_size));
    }
    const Value v =
        parse_value(index, static_cast<const std::uint8_t*>(value.mv_data), value.mv_size);
    shared_->remember(index, value);  // only once its header has validated
    return v;
  }

  // Where record `index`'s value lies in the map, without reading it (LMDB computes an
  // overflow value's address from its page number); false if the key is missing.
  bool find_value(std::uint64_t index, MDB_val& value) const {
    const std::uint8_t* data = nullptr;
    std::size_t size = 0;
    if (shared_->recall(index, data, size)) {
      value = MDB_val{size, const_cast<std::uint8_t*>(data)};
      return true;
    }
    char key[32];
    MDB_val k = lmdb::make_val(key, format_key(index, key));
    TxnLease txn(*shared_, read_what());
    return ::mdb_get(txn.get(), shared_->main.get(), &k, &value) == 0 && shared_->plausible(value);
  }

  std::int64_t fetch_into(MDB_txn* txn, std::uint64_t index, std::uint8_t* out) const {
    return decode_value(index, lookup(txn, index), out);
  }

  DataError corrupt(std::uint64_t index, const std::string& problem) const {
    return DataError(fmt::format("corrupt record in {} {}: {}", name_, record_name(index), problem));
  }

  Value parse_value(std::uint64_t index, const std::uint8_t* p, std::size_t size) const {
    if (size < kHeaderBytes) {
      throw corrupt(index, fmt::format("value is {} bytes, shorter than the {}-byte header", size,
                                       kHeaderBytes));
    }
    if (std::memcmp(p, kMagic, 4) != 0) {
      throw corrupt(index, fmt::format("bad magic {:02x} {:02x} {:02x} {:02x}, expected \"IMGS\"",
                                       p[0], p[1], p[2], p[3]));
    }
    if (auto version = get_u16(p + 4); version != kValueVersion) {
      throw corrupt(index, fmt::format("value version {} is not supported (expected {})", version,
                                       kValueVersion));
    }
    const EncodingEntry* codec = encoding_by_code(p[6]);
    if (codec == nullptr) throw corrupt(index, fmt::format("unknown encoding {}", p[6]));
    if (codec != &codec_) {
      throw corrupt(index, fmt::format("encoding is {}, the manifest says {}", codec->info.name,
                                       codec_.info.name));
    }
    Value v;
    v.shape = Shape{get_u32(p + 8), get_u32(p + 12), p[7]};
    check_shape(index, v.shape);
    v.label = static_cast<std::int32_t>(get_u32(p + 16));
    if (v.label < 0) throw corrupt(index, fmt::format("negative label {}", v.label));
    v.payload = p + kHeaderBytes;
    v.payload_size = size - kHeaderBytes;
    if (codec_.info.encoding == Encoding::Raw && v.payload_size != v.shape.bytes()) {
      throw corrupt(index, fmt::format("payload is {} bytes, expected {}", v.payload_size,
                                       v.shape.bytes()));
    }
    if (auto declared = get_u32(p + 20); declared != v.payload_size) {
      throw corrupt(index, fmt::format("header says the payload is {} bytes, but it is {}",
                                       declared, v.payload_size));
    }
    v.payload_hash = get_u64(p + 24);
    return v;
  }

  void check_shape(std::uint64_t index, const Shape& shape) const {
    const Manifest& m = manifest_;
    if (!m.holds(shape)) {
      throw corrupt(index, fmt::format("shape is {}, the store holds {}", to_string(shape),
                                       m.variable_size ? "other sizes" : to_string(m.shape)));
    }
  }

  void check_payload_hash(std::uint64_t index, const Value& v) const {
    const std::uint64_t actual = xxh3_64(v.payload, v.payload_size);
    if (actual != v.payload_hash) {
      throw corrupt(index, fmt::format("payload checksum {} does not match the header's {}",
                                       to_hex64(actual), to_hex64(v.payload_hash)));
    }
  }

  // Checks one value of a fixed-size store and copies (or decodes) its pixels into `out`.
  std::int64_t decode_value(std::uint64_t index, const Value& v, std::uint8_t* out) const {
    const std::size_t bytes = v.shape.bytes();
    if (codec_.info.encoding == Encoding::Raw) {  // the hot path: a copy, no codec
      std::memcpy(out, v.payload, bytes);
      // For raw payloads the manifest checksum covers the same bytes (plus the label), so a
      // match proves the payload too; the header hash is consulted only to explain a mismatch.
      // This halves the hashing per verified read.
      if (options_.verify_checksums &&
          record_checksum(out, bytes, v.label) != manifest_.checksums[index]) {
        check_payload_hash(index, v);
        check_record(index, out, v.label);
      }
      return v.label;
    }
    // Encoded: check the bytes before handing them to the decoder, and the pixels after.
    if (options_.verify_checksums) check_payload_hash(index, v);
    codec_.decode(v.payload, v.payload_size, v.shape, out,
                  fmt::format("corrupt record in {} {}", name_, record_name(index)));
    if (codec_.info.lossless) {
      check_record(index, out, v.label);
    } else {
      check_payload_checksum(index, v.payload, v.payload_size, v.label);
    }
    return v.label;
  }

  // Finds record `index`'s value in the map (cached after its first lookup) and parses it. The
  // pointers stay valid while the store is open (the map is read-only and never remapped).
  Value locate(std::uint64_t index) const {
    check_index(index);
    const std::uint8_t* data = nullptr;
    std::size_t size = 0;
    if (shared_->recall(index, data, size)) return parse_value(index, data, size);
    TxnLease txn(*shared_, read_what());
    return lookup(txn.get(), index);
  }


  std::shared_ptr<SharedEnv> shared_;
  std::string name_;
  const EncodingEntry& codec_;  // the manifest's encoding: every record must have it
};

}  // namespace

bool detect_lmdb_store(const fs::path& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) && fs::exists(path / "data.mdb", ec);
}

std::unique_ptr<StoreWriter> create_lmdb_store(const fs::path& path, const StoreSpec& spec,
                                               const WriterOptions& options) {
  return std::make_unique<LmdbWriter>(path, spec, options);
}

std::unique_ptr<StoreReader> open_lmdb_store(const fs::path& path, const ReaderOptions& options) {
  const std::string name = quote(path);
  std::error_code ec;
  const auto status = fs::status(path, ec);
  if (!fs::exists(status)) throw IoError(fmt::format("{} does not exist", name));
  if (!fs::is_directory(status)) {
    throw DataError(fmt::format("{} is not an LMDB store (not a directory)", name));
  }
  const fs::path data = path / "data.mdb";
  struct stat st {};
  if (::stat(data.c_str(), &st) != 0) {
    if (errno == ENOENT) {
      throw DataError(fmt::format("{} is not an LMDB store (no data.mdb)", name));
    }
    throw IoError(fmt::format("cannot stat {}: {}", quote(data), std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) {
    throw DataError(fmt::format("{} is not an LMDB store (data.mdb is not a file)", name));
  }

  auto shared = open_shared_env(path, st, options);

  Manifest manifest;
  {
    TxnLease txn(*shared, name + ": cannot begin a read transaction");
    MDB_val value{};
    if (!shared->meta.get(txn.get(), lmdb::make_val(kManifestKey, std::strlen(kManifestKey)),
                          value, name + ": cannot read the manifest")) {
      throw DataError(fmt::format("{} has no manifest (key '{}' is missing from sub-database '{}')",
                                  name, kManifestKey, kMetaDb));
    }
    if (!shared->plausible(value)) {
      throw DataError(fmt::format("{}: the manifest is {} bytes, larger than data.mdb", name,
                                  value.mv_size));
    }
    const std::string text(static_cast<const char*>(value.mv_data), value.mv_size);
    manifest = Manifest::from_json(text, name + " manifest");
    if (manifest.format != Format::Lmdb) {
      throw DataError(fmt::format("{}: manifest says format '{}', expected 'lmdb'", name,
                                  to_string(manifest.format)));
    }
    check_manifest_encoding(Format::Lmdb, manifest.encoding, name);
    // The main database also holds the "__imgstore__" sub-database entry.
    const MDB_stat st_main = shared->main.stat(txn.get(), name + ": cannot query the database");
    const std::uint64_t records = st_main.ms_entries > 0 ? st_main.ms_entries - 1 : 0;
    if (records != manifest.count) {
      throw DataError(fmt::format("{}: manifest says {} records, database holds {}", name,
                                  manifest.count, records));
    }
    shared->init_cache(manifest.count, !options.no_readahead, txn.get(), name);
  }
  return std::make_unique<LmdbReader>(path, std::move(manifest), options, std::move(shared));
}

}  // namespace imgstore::detail
