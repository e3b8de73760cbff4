// HDF5 store: one file, DIR/<split>.h5.
//
// Layout (readable from h5py: f["images"][i] is image i, f["labels"][i] its label):
//   /images     (N,H,W,C) H5T_STD_U8LE, pixels HWC. Contiguous by default, or with
//               WriterOptions::hdf5.chunk_records = K chunked (K,H,W,C) along N, optionally
//               deflate-compressed (hdf5.deflate 1..9: the standard filter, h5py's "gzip").
//   /labels     (N,) H5T_STD_I64LE
//   /checksums  (N,) H5T_STD_U64LE, record checksums: xxh3_64(pixels, seed=label)
//   Ragged layout (format version 2: variable-size records, or JPEG payloads of any size):
//   /images     (total_bytes,) H5T_STD_U8LE, contiguous: every record's payload back to back
//               (raw: its H*W*C pixels HWC; jpeg: the JPEG file's bytes)
//   /offsets    (N+1,) H5T_STD_U64LE, record i is images[offsets[i]:offsets[i+1]]
//   /shapes     (N,3) H5T_STD_U32LE, (H, W, C) of record i
//   h5py:  o, s = f["offsets"], f["shapes"]
//          img = f["images"][o[i]:o[i+1]].reshape(s[i])            # raw
//          img = PIL.Image.open(io.BytesIO(f["images"][o[i]:o[i+1]].tobytes()))  # jpeg
//   attributes of the root group:
//     imgstore_format_version  int32: 1, or 2 for the ragged layout
//     class_names              1-D array of variable-length UTF-8 strings (may be empty)
//     imgstore_manifest        fixed-length UTF-8 string (h5py gives bytes; json.loads takes
//                              them): the manifest JSON with its "checksums" array emptied,
//                              since /checksums holds them (an attribute must stay small);
//                              its content_digest covers them.
//   The file uses the HDF5 1.8 format (libver bounds V18..latest): h5py and HDF5 >= 1.8 read
//   it, and a manifest listing very many classes still fits (dense attribute storage).
// Also read: the tutorial's layout, /images (N,H,W,C) and /meta (N,) both H5T_STD_U8BE, no
// attributes. Its manifest is derived on open: source "tutorial layout", no class names, and
// checksums computed by reading every record once.
//
// Speed: datasets are sized to N up front with fill values never written, so every byte is
// written once; contiguous /images gets its file space at creation and each batch is one
// hyperslab write. Chunked /images is assembled in whole chunks here, compressed with zlib
// outside the HDF5 lock (several chunks in parallel) and stored with H5Dwrite_chunk.
// Reading needs neither HDF5 nor its lock once the file is open: open notes where /images (or
// each of its chunks) lies in the file, checks those ranges against the file size and maps the
// file read-only; a read is then a memcpy from the mapping (pread() on the reader's own
// descriptor if mmap failed), plus zlib for compressed chunks. Other layouts (chunks splitting
// images, shuffle or other filters, chunks never written) are read with H5Dread under the lock.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <numeric>

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <tbb/info.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include "detail/fs_util.hpp"
#include "detail/hdf5_handles.hpp"
#include "detail/prefetch.hpp"
#include "detail/testing.hpp"
#include "formats/encoding_table.hpp"
#include "formats/formats.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"

namespace imgstore::detail {

namespace {

constexpr const char* kManifestAttr = "imgstore_manifest";
constexpr const char* kVersionAttr = "imgstore_format_version";
constexpr const char* kClassNamesAttr = "class_names";
// Deflate never shrinks data by more than about 1032:1, so no honest file declares more pixel
// bytes than this many times its own size. Bounds what we allocate for labels and checksums.
constexpr std::uint64_t kMaxExpansion = 1100;
constexpr std::uint64_t kMaxImageBytes = std::uint64_t{1} << 30;
constexpr std::uint64_t kMaxChunkBytes = std::uint64_t{1} << 30;
constexpr std::uint64_t kMaxAttrBytes = std::uint64_t{16} << 20;

// read_many prefetches this many records ahead on the mapped path.
constexpr std::size_t kPrefetchAhead = 4;

// A read-only shared mapping of a whole file; empty if mapping failed (callers fall back to
// pread). Move-only; unmaps on destruction.
class MappedFile {
 public:
  MappedFile() = default;
  // Maps `size` bytes of fd; returns an empty mapping on failure or if the file is now shorter
  // than `size` (a mapping past the end of a file faults on access). random_access (the
  // reader's no_readahead, for stores larger than memory): no mapping, and the kernel is told
  // to read no more than asked. Under memory pressure every page faulted into a mapping
  // must evict a mapped one, which costs far more than pread's unmapped page cache:
  // imgstore-bench --out-of-memory read a shuffled epoch at 0.27x the disk's random-read
  // limit through the mapping and 0.72x through pread (64 MiB cgroup, store 4.5x that).
  static MappedFile map(int fd, std::uint64_t size, bool random_access) {
    if (random_access) ::posix_fadvise(fd, 0, 0, POSIX_FADV_RANDOM);
    if (size == 0 || size > std::numeric_limits<std::size_t>::max() || random_access ||
        testing::hdf5_mmap_disabled()) {
      return {};
    }
    void* p = ::mmap(nullptr, static_cast<std::size_t>(size), PROT_READ, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) return {};
    MappedFile m(static_cast<const std::uint8_t*>(p), static_cast<std::size_t>(size));
    struct stat st {};
    if (::fstat(fd, &st) != 0 || static_cast<std::uint64_t>(st.st_size) < size) return {};
    return m;
  }
  ~MappedFile() { unmap(); }
  MappedFile(MappedFile&& o) noexcept
      : data_(std::exchange(o.data_, nullptr)), size_(std::exchange(o.size_, 0)) {}
  MappedFile& operator=(MappedFile&& o) noexcept {
    if (this != &o) {
      unmap();
      data_ = std::exchange(o.data_, nullptr);
      size_ = std::exchange(o.size_, 0);
    }
    return *this;
  }
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::uint8_t* data() const { return data_; }
  explicit operator bool() const { return data_ != nullptr; }

 private:
  MappedFile(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  void unmap() noexcept {
    if (data_) ::munmap(const_cast<std::uint8_t*>(data_), size_);
    data_ = nullptr;
    size_ = 0;
  }
  const std::uint8_t* data_ = nullptr;
  std::size_t size_ = 0;
};

// An owned variable-length UTF-8 string type.
H5Type vlen_utf8_type() {
  H5Type type(check_h5<IoError>(H5Tcopy(H5T_C_S1), "cannot copy the string type"));
  check_h5<IoError>(H5Tset_size(type.get(), H5T_VARIABLE), "cannot make a string type");
  check_h5<IoError>(H5Tset_cset(type.get(), H5T_CSET_UTF8), "cannot make a string type");
  return type;
}

std::string record_range(std::uint64_t first, std::uint64_t n) {
  return n == 1 ? fmt::format("record {}", first)
                : fmt::format("records {}..{}", first, first + n - 1);
}

// ---------------------------------------------------------------------------------------------
// Writer

class Hdf5Writer final : public StoreWriter {
 public:
  Hdf5Writer(const fs::path& path, const StoreSpec& spec, const WriterOptions& options)
      : StoreWriter(Format::Hdf5, path, spec, options),
        staged_(path, StagedOutput::Kind::File, options.overwrite),
        ragged_(spec_.variable_size || encoding_ == Encoding::Jpeg) {
    image_bytes_ = spec_.shape.bytes();
    const std::uint64_t n = spec_.count;
    if (options_.hdf5.chunk_records > 0) {
      chunk_records_ =
          std::min<std::uint64_t>(options_.hdf5.chunk_records, std::max<std::uint64_t>(n, 1));
      chunk_bytes_ = chunk_records_ * image_bytes_;
      if (options_.hdf5.deflate > 0) {
        // zlib is the bottleneck (~30-100 MB/s a core): compress a group of chunks at once, one
        // per thread, bounded to 256 MiB of staging.
        const unsigned threads = options_.threads
                                     ? options_.threads
                                     : static_cast<unsigned>(tbb::info::default_concurrency());
        group_ = std::clamp<std::uint64_t>((std::uint64_t{256} << 20) / chunk_bytes_, 1,
                                           std::max(1u, threads));
        arena_ = std::make_unique<tbb::task_arena>(static_cast<int>(std::max(1u, threads)));
        packed_.resize(group_);
        packed_sizes_.resize(group_);
        for (auto& p : packed_) p.resize(compressBound(static_cast<uLong>(chunk_bytes_)));
      }
      chunk_buf_.resize(group_ * chunk_bytes_);
    }
    Hdf5Lock lock;
    // HDF5 1.8 file format or later: attributes over 64 KiB (a manifest listing very many
    // classes) go to dense storage instead of failing. h5py and HDF5 >= 1.8 read it.
    H5Plist fapl(check_h5<IoError>(H5Pcreate(H5P_FILE_ACCESS), "cannot create a plist"));
    check_h5<IoError>(H5Pset_libver_bounds(fapl.get(), H5F_LIBVER_V18, H5F_LIBVER_LATEST),
                      "cannot set the HDF5 format version");
    // No data sieving: each write goes straight to the file. With HDF5's 64 KiB sieve buffer,
    // a write smaller than it (the labels, the last records of a batch) first read 64 KiB of
    // the new file, where nothing is yet: a fifth of a CIFAR conversion's time went to the
    // readahead that read allocated and zero-filled.
    check_h5<IoError>(H5Pset_sieve_buf_size(fapl.get(), 0), "cannot turn off data sieving");
    // HDF5 creates the file (EXCL) in place of the empty one that reserved the staging name,
    // rather than truncating it: ext4 writes a file back when it is closed after a truncate to
    // zero bytes (auto_da_alloc, for programs that rewrite files without fsync), which made
    // every --no-fsync conversion flush the whole store (as slow as with fsync).
    if (::unlink(staged_.temp().c_str()) != 0) {
      throw IoError(fmt::format("cannot replace {}: {}", quote(staged_.temp()), std::strerror(errno)));
    }
    file_ = H5File(
        check_h5<IoError>(H5Fcreate(staged_.temp().c_str(), H5F_ACC_EXCL, H5P_DEFAULT, fapl.get()),
                          fmt::format("cannot create HDF5 file {}", quote(staged_.temp()))));

    const hsize_t dims[4] = {n, spec_.shape.height, spec_.shape.width, spec_.shape.channels};
    if (ragged_) {
      // /images, /offsets and /shapes are created by finish(), once their sizes are known.
    } else if (chunk_records_ == 0) {
      images_ = create_dataset("images", H5T_STD_U8LE, 4, dims, contiguous_plist());
    } else {
      H5Plist dcpl(check_h5<IoError>(H5Pcreate(H5P_DATASET_CREATE), "cannot create a plist"));
      const hsize_t chunk[4] = {chunk_records_, dims[1], dims[2], dims[3]};
      check_h5<IoError>(H5Pset_chunk(dcpl.get(), 4, chunk), what("cannot set the chunk size"));
      check_h5<IoError>(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), what("fill time"));
      if (options_.hdf5.deflate > 0) {
        check_h5<IoError>(H5Pset_deflate(dcpl.get(), static_cast<unsigned>(options_.hdf5.deflate)),
                          what("cannot enable deflate"));
      }
      images_ = create_dataset("images", H5T_STD_U8LE, 4, dims, std::move(dcpl));
    }
    labels_ = create_dataset("labels", H5T_STD_I64LE, 1, dims, contiguous_plist());
    checksums_ds_ = create_dataset("checksums", H5T_STD_U64LE, 1, dims, contiguous_plist());
    if (ragged_) open_payloads();
  }

  // Abandoned (error, interrupt): closing still makes libhdf5 write what it caches. On a full
  // disk that fails again, and libhdf5 1.10 then keeps a half-freed file that crashes the
  // process at exit (H5F__close_cb). The file is about to be deleted: empty it first, so the
  // last writes land in a sparse file on the space just freed.
  ~Hdf5Writer() override {
    if (committed_ || !file_) return;
    if (::truncate(staged_.temp().c_str(), 0) != 0) {
      // Nothing better to do: the handles below still close, most likely fine.
    }
    images_.reset();
    offsets_ds_.reset();
    shapes_ds_.reset();
    labels_.reset();
    checksums_ds_.reset();
    file_.reset();
  }

  static void check_options(const fs::path& path, const StoreSpec& spec, const WriterOptions& o) {
    if (o.hdf5.deflate < 0 || o.hdf5.deflate > 9) {
      throw UsageError(
          fmt::format("{}: HDF5 deflate level {} is not in 0..9", quote(path), o.hdf5.deflate));
    }
    if ((spec.variable_size || o.encoding == Encoding::Jpeg) && o.hdf5.chunk_records > 0) {
      throw UsageError(fmt::format("{}: the ragged HDF5 layout (variable-size or JPEG records) "
                                   "is contiguous; --hdf5-chunk does not apply", quote(path)));
    }
    if (o.hdf5.deflate > 0 && o.hdf5.chunk_records == 0) {
      throw UsageError(
          fmt::format("{}: HDF5 deflate needs chunking (set hdf5.chunk_records, --hdf5-chunk)", quote(path)));
    }
    const std::uint64_t chunk_bytes =
        std::min<std::uint64_t>(o.hdf5.chunk_records, std::max<std::uint64_t>(spec.count, 1)) *
        spec.shape.bytes();
    if (chunk_bytes > kMaxChunkBytes) {
      throw UsageError(fmt::format(
          "{}: an HDF5 chunk of {} images of {} is {} bytes, more than "
          "the limit of {}",
          quote(path), o.hdf5.chunk_records, to_string(spec.shape), chunk_bytes, kMaxChunkBytes));
    }
  }

 protected:
  void write_records(const ImageBatch& batch, const std::uint64_t* checksums,
                     std::uint64_t first_index) override {
    const std::uint64_t n = batch.size();
    if (n == 0) return;
    {
      Hdf5Lock lock;
      write_rows(labels_, H5T_NATIVE_INT64, first_index, n, batch.labels.data());
      write_rows(checksums_ds_, H5T_NATIVE_UINT64, first_index, n, checksums);
      if (ragged_) {
        append_payloads(batch);
        return;
      }
      if (chunk_records_ == 0) {  // contiguous: HDF5 makes one pwrite() of each call
        const std::uint64_t rows = std::max<std::uint64_t>(1, kMaxWriteCall / image_bytes_);
        for (std::uint64_t done = 0; done < n; done += rows) {
          write_rows(images_, H5T_NATIVE_UINT8, first_index + done, std::min(rows, n - done),
                     batch.pixels.data() + done * image_bytes_);
        }
        return;
      }
    }
    // Chunked: whole uncompressed chunks straight from the batch when aligned, everything else
    // through chunk_buf_ (group_ chunks).
    const std::uint8_t* p = batch.pixels.data();
    std::uint64_t left = n;
    const std::uint64_t capacity = group_ * chunk_records_;
    while (left > 0) {
      if (pending_ == 0 && options_.hdf5.deflate == 0 && left >= chunk_records_) {
        store_chunk(p, chunk_bytes_);
        p += chunk_bytes_;
        left -= chunk_records_;
        continue;
      }
      const std::uint64_t take = std::min(left, capacity - pending_);
      std::memcpy(chunk_buf_.data() + pending_ * image_bytes_, p, take * image_bytes_);
      pending_ += take;
      p += take * image_bytes_;
      left -= take;
      if (pending_ == capacity) {
        flush_chunks(group_);
        pending_ = 0;
      }
    }
  }

  void finish(const Manifest& manifest) override {
    if (pending_ > 0) {
      // The edge chunk is stored full size; the bytes past N are never read.
      const std::uint64_t chunks = (pending_ + chunk_records_ - 1) / chunk_records_;
      std::fill(chunk_buf_.begin() + pending_ * image_bytes_,
                chunk_buf_.begin() + chunks * chunk_bytes_, 0);
      flush_chunks(chunks);
      pending_ = 0;
    }
    Manifest small = manifest;
    small.checksums.clear();  // /checksums holds them
    const std::string json = small.to_json();
    {
      Hdf5Lock lock;
      if (ragged_) write_ragged_datasets();
      const int version = manifest.format_version;
      write_attr(kVersionAttr, H5T_STD_I32LE, H5T_NATIVE_INT, H5Screate(H5S_SCALAR), &version);

      H5Type str = vlen_utf8_type();
      std::vector<const char*> names;
      for (const auto& c : manifest.class_names) names.push_back(c.c_str());
      const hsize_t count = names.size();
      write_attr(kClassNamesAttr, str.get(), str.get(), H5Screate_simple(1, &count, nullptr),
                 names.empty() ? nullptr : names.data());
      // Fixed-length, not variable-length: reading a variable-length string follows a pointer
      // into the global heap, and libhdf5 1.10 crashes on a corrupt one.
      H5Type fixed(check_h5<IoError>(H5Tcopy(H5T_C_S1), "cannot copy the string type"));
      check_h5<IoError>(H5Tset_size(fixed.get(), json.size() + 1), "cannot size a string type");
      check_h5<IoError>(H5Tset_cset(fixed.get(), H5T_CSET_UTF8), "cannot make a string type");
      write_attr(kManifestAttr, fixed.get(), fixed.get(), H5Screate(H5S_SCALAR), json.c_str());

      // libhdf5 1.10 cannot recover from a failed metadata flush: the cache stays "slist
      // enabled", every later flush or close fails, and the process crashes at exit. So the
      // space the flush writes into is reserved first, where a full disk fails cleanly.
      reserve_for_flush();
      check_h5<IoError>(H5Fflush(file_.get(), H5F_SCOPE_LOCAL),
                        fmt::format("cannot flush {}", quote(staged_.temp())));
      images_.close(what("cannot close /images in"));
      if (ragged_) {
        offsets_ds_.close(what("cannot close /offsets in"));
        shapes_ds_.close(what("cannot close /shapes in"));
      }
      labels_.close(what("cannot close /labels in"));
      checksums_ds_.close(what("cannot close /checksums in"));
      file_.close(fmt::format("cannot flush and close {}", quote(staged_.temp())));
    }
    // Frees what the reservation allocated past the end of the file (ext4 and tmpfs free
    // preallocated blocks on a truncate to the same size).
    struct stat st {};
    if (::stat(staged_.temp().c_str(), &st) == 0) {
      if (::truncate(staged_.temp().c_str(), st.st_size) != 0) {
        // Harmless: the blocks stay allocated, the content is complete.
      }
    }
    staged_.commit(options_.durable);
  }

 private:
  std::string what(const std::string& action) const {
    return fmt::format("{} {}", action, quote(path_));
  }

  // Allocates every block the final flush can write: holes below the end of the file's
  // address space (metadata placed at creation, written only at flush) and a margin past it.
  void reserve_for_flush() {
    constexpr hsize_t kMargin = hsize_t{64} << 10;
    hsize_t size = 0;
    check_h5<IoError>(H5Fget_filesize(file_.get(), &size),
                      fmt::format("cannot get the size of {}", quote(staged_.temp())));
    Fd fd(::open(staged_.temp().c_str(), O_WRONLY | O_CLOEXEC));
    if (fd.get() < 0) {
      throw IoError(fmt::format("cannot open {}: {}", quote(staged_.temp()), std::strerror(errno)));
    }
    if (::fallocate(fd.get(), FALLOC_FL_KEEP_SIZE, 0, static_cast<off_t>(size + kMargin)) != 0 &&
        errno != EOPNOTSUPP && errno != ENOSYS) {  // unsupported: flush unprotected, as before
      throw IoError(fmt::format("cannot write {} (finishing {}): {}", quote(staged_.temp()),
                                quote(path_), std::strerror(errno)));
    }
  }

  H5Plist contiguous_plist() {
    H5Plist dcpl(check_h5<IoError>(H5Pcreate(H5P_DATASET_CREATE), "cannot create a plist"));
    check_h5<IoError>(H5Pset_layout(dcpl.get(), H5D_CONTIGUOUS), "cannot set the layout");
    // Space now, no fill values ever: the data is written exactly once, by us.
    check_h5<IoError>(H5Pset_alloc_time(dcpl.get(), H5D_ALLOC_TIME_EARLY), "alloc time");
    check_h5<IoError>(H5Pset_fill_time(dcpl.get(), H5D_FILL_TIME_NEVER), "fill time");
    return dcpl;
  }

  H5Dataset create_dataset(const char* name, hid_t type, int rank, const hsize_t* dims,
                           H5Plist dcpl) {
    // An empty chunked dataset needs an extendible N (a chunk may not exceed a fixed extent).
    hsize_t maxdims[4] = {dims[0] == 0 ? H5S_UNLIMITED : dims[0], 0, 0, 0};
    for (int i = 1; i < rank; ++i) maxdims[i] = dims[i];
    const bool chunked = H5Pget_layout(dcpl.get()) == H5D_CHUNKED;
    H5Space space(check_h5<IoError>(H5Screate_simple(rank, dims, chunked ? maxdims : nullptr),
                                    what("cannot create a dataspace for")));
    return H5Dataset(check_h5<IoError>(
        H5Dcreate2(file_.get(), name, type, space.get(), H5P_DEFAULT, dcpl.get(), H5P_DEFAULT),
        fmt::format("cannot create dataset /{} in {}", name, quote(path_))));
  }

  // Writes rows [first, first+n) of `ds` (the first dimension) from `data`. Lock held.
  void write_rows(const H5Dataset& ds, hid_t mem_type, std::uint64_t first, std::uint64_t n,
                  const void* data) {
    H5Space file_space(
        check_h5<IoError>(H5Dget_space(ds.get()), what("cannot get a dataspace in")));
    const int rank = H5Sget_simple_extent_ndims(file_space.get());
    hsize_t start[4] = {first, 0, 0, 0};
    hsize_t count[4] = {n, 0, 0, 0};
    hsize_t dims[4] = {};
    H5Sget_simple_extent_dims(file_space.get(), dims, nullptr);
    for (int i = 1; i < rank; ++i) count[i] = dims[i];
    check_h5<IoError>(
        H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr),
        what("cannot select records in"));
    H5Space mem_space(check_h5<IoError>(H5Screate_simple(rank, count, nullptr),
                                        what("cannot create a dataspace for")));
    check_h5<IoError>(
        H5Dwrite(ds.get(), mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT, data),
        fmt::format("cannot write {} to {}", record_range(first, n), quote(path_)));
  }

  // Stores the first `count` chunks of chunk_buf_, compressing them in parallel first.
  void flush_chunks(std::uint64_t count) {
    if (options_.hdf5.deflate == 0) {
      for (std::uint64_t i = 0; i < count; ++i)
        store_chunk(chunk_buf_.data() + i * chunk_bytes_, chunk_bytes_);
      return;
    }
    std::atomic<int> failed{Z_OK};
    arena_->execute([&] {
      tbb::parallel_for(std::uint64_t{0}, count, [&](std::uint64_t i) {
        uLongf size = static_cast<uLongf>(packed_[i].size());
        const int rc = compress2(packed_[i].data(), &size, chunk_buf_.data() + i * chunk_bytes_,
                                 static_cast<uLong>(chunk_bytes_), options_.hdf5.deflate);
        if (rc != Z_OK) failed = rc;
        packed_sizes_[i] = size;
      });
    });
    if (failed != Z_OK) {
      throw IoError(
          fmt::format("cannot compress chunks of {}: zlib error {}", quote(path_), failed.load()));
    }
    for (std::uint64_t i = 0; i < count; ++i) store_chunk(packed_[i].data(), packed_sizes_[i]);
  }

  // Stores `size` bytes (one chunk, compressed or not) as chunk number next_chunk_.
  void store_chunk(const void* data, std::size_t size) {
    Hdf5Lock lock;
    const hsize_t offset[4] = {next_chunk_ * chunk_records_, 0, 0, 0};
    check_h5<IoError>(H5Dwrite_chunk(images_.get(), H5P_DEFAULT, 0, offset, size, data),
                      fmt::format("cannot write chunk {} ({}) to {}", next_chunk_,
                                  record_range(offset[0], chunk_records_), quote(path_)));
    ++next_chunk_;
  }

  // Creates and writes an attribute of the root group. Takes ownership of `space_id`.
  void write_attr(const char* name, hid_t file_type, hid_t mem_type, hid_t space_id,
                  const void* data) {
    H5Space space(check_h5<IoError>(space_id, what("cannot create a dataspace for")));
    H5Attr attr(check_h5<IoError>(
        H5Acreate2(file_.get(), name, file_type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
        fmt::format("cannot create attribute '{}' in {}", name, quote(path_))));
    if (data) {
      check_h5<IoError>(H5Awrite(attr.get(), mem_type, data),
                        fmt::format("cannot write attribute '{}' in {}", name, quote(path_)));
    }
  }

  // Ragged layout: /images' size is known only at the end. The payloads are written as they
  // arrive into the store file itself, at payload_start_, past everything libhdf5 has
  // allocated (a margin of kPayloadMargin above its end of address space, EOA). finish() then
  // moves libhdf5's EOA up to payload_start_ and creates /images there, contiguous: the
  // payloads are written once and never copied. libhdf5 does not know of bytes past its EOA,
  // and it neither reads nor truncates the file before finish().
  void open_payloads() {
    haddr_t eoa = 0;
    check_h5<IoError>(H5Fget_eoa(file_.get(), &eoa), what("cannot get the end of"));
    payload_start_ = (static_cast<std::uint64_t>(eoa) + kPayloadMargin + kPayloadPage - 1) /
                     kPayloadPage * kPayloadPage;
    payload_fd_ = Fd(::open(staged_.temp().c_str(), O_RDWR | O_CLOEXEC));  // RDWR: move_payloads
    if (payload_fd_.get() < 0) {
      throw IoError(fmt::format("cannot open {}: {}", quote(staged_.temp()), std::strerror(errno)));
    }
    offsets_.reserve(static_cast<std::size_t>(spec_.count) + 1);
    offsets_.push_back(0);
    shapes_.reserve(static_cast<std::size_t>(spec_.count) * 3);
  }

  void append_payloads(const ImageBatch& batch) {
    const bool jpeg = encoding_ == Encoding::Jpeg;
    const std::uint8_t* data = jpeg ? batch.payload.data() : batch.pixels.data();
    const std::size_t size = jpeg ? batch.payload_offsets.back() : batch.pixels.size();
    for (std::size_t i = 0; i < batch.size(); ++i) {
      offsets_.push_back(offsets_.back() + (jpeg ? batch.payload_offsets[i + 1] -
                                                       batch.payload_offsets[i]
                                                 : batch.image_bytes(i)));
      const Shape& s = batch.image_shape(i);
      shapes_.insert(shapes_.end(), {s.height, s.width, s.channels});
    }
    write_page_aligned(data, size);
  }

  // Appends to the payloads in whole 4 KiB pages at page-aligned offsets, keeping the last
  // partial page in carry_ for the next batch: a write() that starts or ends inside a page
  // the previous one left half full took 1.4-4x as long per byte on ext4 here (Linux 6.18;
  // 5.6 MB writes, 5 runs each) as page-aligned ones.
  void write_page_aligned(const std::uint8_t* data, std::size_t size) {
    std::uint64_t at = payload_start_ + payload_size_ - carry_.size();  // payload_start_: aligned
    payload_size_ += size;
    if (!carry_.empty()) {
      const std::size_t take = std::min(kPayloadPage - carry_.size(), size);
      carry_.insert(carry_.end(), data, data + take);
      data += take;
      size -= take;
      if (carry_.size() < kPayloadPage) return;
      write_exact(payload_fd_.get(), carry_.data(), kPayloadPage, at);
      at += kPayloadPage;
      carry_.clear();
    }
    const std::size_t whole = size / kPayloadPage * kPayloadPage;
    if (whole > 0) write_exact(payload_fd_.get(), data, whole, at);
    carry_.assign(data + whole, data + size);
  }

  // The last partial page of the payloads (write_page_aligned).
  void flush_carry() {
    if (carry_.empty()) return;
    write_exact(payload_fd_.get(), carry_.data(), carry_.size(),
                payload_start_ + payload_size_ - carry_.size());
    carry_.clear();
  }

  // Creates /images (contiguous, over the payloads written), /offsets and /shapes. Lock held.
  void write_ragged_datasets() {
    flush_carry();
    const hsize_t total = payload_size_;
    if (total > 0 && !testing::hdf5_payloads_in_place_disabled()) raise_eoa_to(payload_start_);
    images_ = create_dataset("images", H5T_STD_U8LE, 1, &total, contiguous_plist());
    if (total > 0) {
      const haddr_t addr = H5Dget_offset(images_.get());
      if (addr == HADDR_UNDEF) throw IoError(what("cannot locate /images in"));
      // Only if libhdf5 placed /images elsewhere (never seen, but its allocator decides).
      if (addr != payload_start_) move_payloads(static_cast<std::uint64_t>(addr));
    }
    if (payload_fd_.close() != 0) {
      throw IoError(fmt::format("cannot write {}: {}", quote(staged_.temp()), std::strerror(errno)));
    }
    const hsize_t offsets_dims[1] = {offsets_.size()};
    offsets_ds_ = create_dataset("offsets", H5T_STD_U64LE, 1, offsets_dims, contiguous_plist());
    write_rows(offsets_ds_, H5T_NATIVE_UINT64, 0, offsets_.size(), offsets_.data());
    const hsize_t shapes_dims[2] = {spec_.count, 3};
    shapes_ds_ = create_dataset("shapes", H5T_STD_U32LE, 2, shapes_dims, contiguous_plist());
    if (spec_.count > 0) {
      write_rows(shapes_ds_, H5T_NATIVE_UINT32, 0, spec_.count, shapes_.data());
    }
  }

  // Sets libhdf5's end of address space to `addr`, where its next large allocation goes.
  void raise_eoa_to(std::uint64_t addr) {
    haddr_t eoa = 0;
    check_h5<IoError>(H5Fget_eoa(file_.get(), &eoa), what("cannot get the end of"));
    if (eoa < addr) {
      check_h5<IoError>(H5Fincrement_filesize(file_.get(), static_cast<hsize_t>(addr - eoa)),
                        what("cannot extend"));
    }
  }

  // Moves the payloads from payload_start_ to `to`, overlapping or not (memmove order).
  void move_payloads(std::uint64_t to) {
    const std::uint64_t from = payload_start_, total = payload_size_;
    std::vector<std::uint8_t> block(std::min<std::uint64_t>(total, std::uint64_t{16} << 20));
    for (std::uint64_t done = 0; done < total;) {
      const std::uint64_t n = std::min<std::uint64_t>(block.size(), total - done);
      // Forward when moving down, backward when moving up: no source byte is overwritten
      // before it is read.
      const std::uint64_t at = to < from ? done : total - done - n;
      read_exact(payload_fd_.get(), block.data(), n, from + at);
      write_exact(payload_fd_.get(), block.data(), n, to + at);
      done += n;
    }
  }

  void read_exact(int fd, std::uint8_t* out, std::uint64_t n, std::uint64_t at) {
    for (std::uint64_t got = 0; got < n;) {
      const ssize_t r = ::pread(fd, out + got, n - got, static_cast<off_t>(at + got));
      if (r < 0 && errno == EINTR) continue;
      if (r <= 0) {
        throw IoError(fmt::format("cannot read back the payloads of {}: {}", quote(staged_.temp()),
                                  r < 0 ? std::strerror(errno) : "short file"));
      }
      got += static_cast<std::uint64_t>(r);
    }
  }

  // In calls of at most kMaxWriteCall bytes (fs_util.hpp says why).
  void write_exact(int fd, const std::uint8_t* data, std::uint64_t n, std::uint64_t at) {
    for (std::uint64_t put = 0; put < n;) {
      const auto call = static_cast<std::size_t>(std::min<std::uint64_t>(n - put, kMaxWriteCall));
      const ssize_t w = ::pwrite(fd, data + put, call, static_cast<off_t>(at + put));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) {
        throw IoError(fmt::format("cannot write {}: {}", quote(staged_.temp()),
                                  std::strerror(w < 0 ? errno : ENOSPC)));
      }
      put += static_cast<std::uint64_t>(w);
    }
  }

  // Declared first so that it is destroyed last: the HDF5 handles close before the temporary
  // file is removed.
  StagedOutput staged_;
  const bool ragged_;
  // The payloads of a ragged store: written at payload_start_ in the store file (see
  // open_payloads), payload_size_ bytes so far.
  static constexpr std::uint64_t kPayloadMargin = 64 << 10;
  // The payloads start on a page and are written in whole pages (write_page_aligned).
  static constexpr std::uint64_t kPayloadPage = 4096;
  Fd payload_fd_;
  std::uint64_t payload_start_ = 0;
  std::uint64_t payload_size_ = 0;  // carry_ included
  std::vector<std::uint8_t> carry_;  // the payloads' last partial page, not yet written
  std::vector<std::uint64_t> offsets_;  // N + 1 when done
  std::vector<std::uint32_t> shapes_;   // (H, W, C) per record
  H5File file_;
  H5Dataset images_, labels_, checksums_ds_, offsets_ds_, shapes_ds_;
  std::uint64_t image_bytes_ = 0;
  std::uint64_t chunk_records_ = 0;  // 0: contiguous
  std::uint64_t chunk_bytes_ = 0;
  std::uint64_t group_ = 1;    // chunks staged (and compressed) together
  std::uint64_t pending_ = 0;  // records waiting in chunk_buf_
  std::uint64_t next_chunk_ = 0;
  std::vector<std::uint8_t> chunk_buf_;
  std::vector<std::vector<std::uint8_t>> packed_;
  std::vector<std::size_t> packed_sizes_;
  std::unique_ptr<tbb::task_arena> arena_;
};

// ---------------------------------------------------------------------------------------------
// Reader

enum class Access {
  Direct,    // contiguous, or chunked (K,H,W,C) with no filter or deflate only: the data's file
             // locations are taken at open; reads are pread() (+ zlib), no HDF5, no lock
  Hdf5Read,  // anything else: H5Dread of hyperslabs under the lock
};

// Where one chunk of /images is stored. Contiguous data is one chunk of N records.
struct ChunkLoc {
  std::uint64_t addr = 0;
  std::uint64_t size = 0;
  bool compressed = false;
};

// What open_hdf5_store learns about a file before the reader exists.
struct Inspection {
  Manifest manifest;
  bool tutorial = false;
  std::vector<std::int64_t> labels;
  Fd fd;
  std::uint64_t file_size = 0;  // at open; every ChunkLoc lies within it
  H5File file;
  H5Dataset images;
  Access access = Access::Hdf5Read;
  std::uint64_t chunk_records = 0;  // Direct: records per chunk
  std::vector<ChunkLoc> chunks;     // Direct; ragged: chunks[0] is the whole of /images
  // Ragged layout (format version 2).
  bool ragged = false;
  std::vector<std::uint64_t> offsets;  // N + 1
  std::vector<Shape> shapes;           // N
};

std::atomic<std::uint64_t> g_next_reader_serial{1};

// One thread's most recently inflated chunk, so sequential reads inflate each chunk once.
struct ChunkCache {
  std::uint64_t reader = 0;  // serial of the reader that filled it; 0: empty
  std::uint64_t chunk = 0;
  std::vector<std::uint8_t> data;
  std::vector<std::uint8_t> packed;
};

class Hdf5Reader final : public StoreReader {
 public:
  Hdf5Reader(fs::path path, ReaderOptions options, Inspection&& in)
      : StoreReader(std::move(path), std::move(in.manifest), options),
        serial_(g_next_reader_serial.fetch_add(1)),
        labels_(std::move(in.labels)),
        fd_(std::move(in.fd)),
        file_(std::move(in.file)),
        images_(std::move(in.images)),
        access_(in.access),
        chunk_records_(in.chunk_records),
        chunks_(std::move(in.chunks)) {
    chunk_bytes_ = chunk_records_ * image_bytes();
    compressed_ =
        std::any_of(chunks_.begin(), chunks_.end(), [](const ChunkLoc& c) { return c.compressed; });
    if (access_ == Access::Direct) {
      // Everything needed is known: HDF5 (and its lock) is not needed any more.
      images_.reset();
      file_.reset();
      // Reads become a memcpy from the page cache instead of a pread() each. Every chunk's
      // range was checked against the file size at open, so no read leaves the mapping.
      map_ = MappedFile::map(fd_.get(), in.file_size, options.no_readahead);
    }
  }

  bool mapped() const { return static_cast<bool>(map_); }

  // The records' bytes are at known file offsets: one WILLNEED over their span starts the
  // kernel reading it (asynchronously, in large requests). Skipped when the span is much
  // larger than the records (chunks not stored in record order).
  void will_need(std::uint64_t first, std::uint64_t count) const override {
    if (access_ != Access::Direct || count == 0 || first >= size()) return;
    const std::uint64_t last = std::min<std::uint64_t>(first + count, size()) - 1;
    const std::uint64_t begin = record_span(first).first, end = record_span(last).second;
    const std::uint64_t records = (last - first + 1) * image_bytes();
    if (end <= begin || end - begin > 2 * records + (std::uint64_t{1} << 20)) return;
    ::posix_fadvise(fd_.get(), static_cast<off_t>(begin), static_cast<off_t>(end - begin),
                    POSIX_FADV_WILLNEED);
  }

  // Tutorial layout: computes the checksums the file does not carry, reading it in blocks.
  void derive_checksums() {
    const std::size_t bytes = image_bytes();
    const std::uint64_t block = std::max<std::uint64_t>(1, (std::uint64_t{4} << 20) / bytes);
    std::vector<std::uint8_t> buf(
        static_cast<std::size_t>(std::min(block, manifest_.count) * bytes));
    manifest_.checksums.resize(manifest_.count);
    ContentDigest digest;
    for (std::uint64_t first = 0; first < manifest_.count; first += block) {
      const std::uint64_t n = std::min(block, manifest_.count - first);
      read_raw(first, n, buf.data());
      for (std::uint64_t i = 0; i < n; ++i) {
        const auto sum = record_checksum(buf.data() + i * bytes, bytes, labels_[first + i]);
        manifest_.checksums[first + i] = sum;
        digest.add(sum);
      }
    }
    manifest_.content_digest = digest.value();
    manifest_.validate(quote(path_));
  }

  std::int64_t read_one(std::uint64_t index, std::uint8_t* out) const override {
    check_index(index);
    read_raw(index, 1, out);
    const std::int64_t label = labels_[index];
    check_record(index, out, label);
    return label;
  }

  void read_many(const std::uint64_t* indices, std::size_t n, std::uint8_t* out,
                 std::int64_t* labels) const override {
    for (std::size_t i = 0; i < n; ++i) check_index(indices[i]);
    const std::size_t bytes = image_bytes();
    if (map_ && access_ == Access::Direct && !compressed_) {
      // Copy and check each record while it is in cache. Shuffled reads miss the cache and
      // the TLB on every record: prefetching a few records ahead overlaps those misses.
      const bool verify = options_.verify_checksums;
      for (std::size_t i = 0; i < n; ++i) {
        if (i + kPrefetchAhead < n) {
          const std::uint64_t later = indices[i + kPrefetchAhead];
          prefetch_bytes(mapped_record(later), bytes);
          __builtin_prefetch(&labels_[later]);
          if (verify) __builtin_prefetch(&manifest_.checksums[later]);
        }
        const std::uint64_t index = indices[i];
        std::memcpy(out + i * bytes, mapped_record(index), bytes);
        const std::int64_t label = labels_[index];
        if (labels) labels[i] = label;
        check_record(index, out + i * bytes, label);
      }
      return;
    }
    if (access_ == Access::Direct && !compressed_) {
      // Runs of consecutive indices become one pread each (per chunk).
      for (std::size_t i = 0; i < n;) {
        std::size_t j = i + 1;
        while (j < n && indices[j] == indices[j - 1] + 1) ++j;
        read_raw(indices[i], j - i, out + i * bytes);
        i = j;
      }
    } else {
      // In index order, so that each compressed chunk (or HDF5 run) is fetched once per call.
      std::vector<std::size_t> order(n);
      std::iota(order.begin(), order.end(), std::size_t{0});
      std::sort(order.begin(), order.end(),
                [&](std::size_t a, std::size_t b) { return indices[a] < indices[b]; });
      if (access_ == Access::Direct) {
        for (std::size_t k : order) read_raw(indices[k], 1, out + k * bytes);
      } else {
        std::vector<std::uint8_t> run_buf;
        for (std::size_t i = 0; i < n;) {
          std::size_t j = i + 1;
          while (j < n && indices[order[j]] <= indices[order[j - 1]] + 1) ++j;
          const std::uint64_t first = indices[order[i]];
          const std::uint64_t count = indices[order[j - 1]] - first + 1;
          run_buf.resize(static_cast<std::size_t>(count * bytes));
          read_raw(first, count, run_buf.data());
          for (std::size_t k = i; k < j; ++k) {
            std::memcpy(out + order[k] * bytes,
                        run_buf.data() + (indices[order[k]] - first) * bytes, bytes);
          }
          i = j;
        }
      }
    }
    for (std::size_t i = 0; i < n; ++i) {
      const std::int64_t label = labels_[indices[i]];
      if (labels) labels[i] = label;
      check_record(indices[i], out + i * bytes, label);
    }
  }

 private:
  // Where uncompressed record `index` starts in the file (Direct access).
  std::uint64_t record_offset(std::uint64_t index) const {
    const std::uint64_t c = index / chunk_records_;
    return chunks_[c].addr + (index - c * chunk_records_) * image_bytes();
  }

  // The file bytes [begin, end) holding record `index` (its whole chunk when compressed).
  std::pair<std::uint64_t, std::uint64_t> record_span(std::uint64_t index) const {
    const ChunkLoc& loc = chunks_[index / chunk_records_];
    if (loc.compressed) return {loc.addr, loc.addr + loc.size};
    return {record_offset(index), record_offset(index) + image_bytes()};
  }

  // Where uncompressed record `index` lies in the mapping (Direct access, mapped).
  const std::uint8_t* mapped_record(std::uint64_t index) const {
    return map_.data() + record_offset(index);
  }

  // Reads records [first, first+n) into out, unchecked.
  void read_raw(std::uint64_t first, std::uint64_t n, std::uint8_t* out) const {
    const std::size_t bytes = image_bytes();
    if (access_ == Access::Direct) {
      for (std::uint64_t i = first; i < first + n;) {
        const std::uint64_t c = i / chunk_records_;
        const std::uint64_t within = i - c * chunk_records_;
        const std::uint64_t piece = std::min(first + n, (c + 1) * chunk_records_) - i;
        if (chunks_[c].compressed) {
          std::memcpy(out, load_chunk(c) + within * bytes, piece * bytes);
        } else if (map_) {
          std::memcpy(out, mapped_record(i), piece * bytes);
        } else {
          pread_full(record_offset(i), piece * bytes, out,
                     [&] { return record_range(i, piece); });
        }
        out += piece * bytes;
        i += piece;
      }
      return;
    }
    Hdf5Lock lock;
    const Shape& s = shape();
    hsize_t start[4] = {first, 0, 0, 0};
    hsize_t count[4] = {n, s.height, s.width, s.channels};
    H5Space file_space(check_h5(H5Dget_space(images_.get()), what("cannot get the dataspace of")));
    check_h5(H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, start, nullptr, count, nullptr),
             what("cannot select records in"));
    H5Space mem_space(check_h5(H5Screate_simple(4, count, nullptr), what("dataspace for")));
    check_h5(H5Dread(images_.get(), H5T_NATIVE_UINT8, mem_space.get(), file_space.get(),
                     H5P_DEFAULT, out),
             fmt::format("cannot read {} from {} dataset /images", record_range(first, n),
                         quote(path_)));
  }

  template <class Name>
  void pread_full(std::uint64_t pos, std::uint64_t size, std::uint8_t* out, Name name) const {
    std::size_t left = static_cast<std::size_t>(size);
    while (left > 0) {
      ssize_t got = ::pread(fd_.get(), out, left, static_cast<off_t>(pos));
      if (got < 0 && errno == EINTR) continue;
      if (got < 0) {
        throw IoError(
            fmt::format("cannot read {} from {}: {}", name(), quote(path_), std::strerror(errno)));
      }
      if (got == 0) {
        throw DataError(fmt::format("truncated file {}: {} end past its end (byte {})",
                                    quote(path_), name(), pos));
      }
      out += got;
      pos += static_cast<std::uint64_t>(got);
      left -= static_cast<std::size_t>(got);
    }
  }

  // Returns compressed chunk c inflated (chunk_bytes_), from this thread's cache or read now.
  const std::uint8_t* load_chunk(std::uint64_t c) const {
    thread_local ChunkCache cache;
    if (cache.reader == serial_ && cache.chunk == c) return cache.data.data();
    cache.reader = 0;
    auto name = [&] {
      const std::uint64_t first = c * chunk_records_;
      return fmt::format(
          "chunk {} ({}) of dataset /images", c,
          record_range(first, std::min<std::uint64_t>(chunk_records_, size() - first)));
    };
    const ChunkLoc& loc = chunks_[c];
    const std::uint8_t* packed = nullptr;
    if (map_) {
      packed = map_.data() + loc.addr;  // inflate straight from the mapping
    } else {
      cache.packed.resize(static_cast<std::size_t>(loc.size));
      pread_full(loc.addr, loc.size, cache.packed.data(), name);
      packed = cache.packed.data();
    }
    cache.data.resize(chunk_bytes_);
    uLongf out_size = static_cast<uLongf>(chunk_bytes_);
    int rc = uncompress(cache.data.data(), &out_size, packed, static_cast<uLong>(loc.size));
    if (rc != Z_OK || out_size != chunk_bytes_) {
      throw DataError(fmt::format("corrupt {} in {}: it does not inflate to {} bytes (zlib: {})",
                                  name(), quote(path_), chunk_bytes_,
                                  rc == Z_OK ? "short output" : zError(rc)));
    }
    cache.reader = serial_;
    cache.chunk = c;
    return cache.data.data();
  }

  std::string what(const std::string& action) const {
    return fmt::format("{} {}", action, quote(path_));
  }

  const std::uint64_t serial_;
  const std::vector<std::int64_t> labels_;
  Fd fd_;
  H5File file_;
  H5Dataset images_;
  MappedFile map_;  // Direct access only, when mmap succeeded; else reads use pread on fd_
  const Access access_;
  const std::uint64_t chunk_records_;
  const std::vector<ChunkLoc> chunks_;
  std::size_t chunk_bytes_ = 0;
  bool compressed_ = false;
};

// Reads the ragged layout: record i is /images[offsets[i], offsets[i+1]), shape shapes[i]. As
// the fixed layout, /images is mapped (or pread) without HDF5 once the file has been inspected.
class Hdf5RaggedReader final : public StoreReader {
 public:
  Hdf5RaggedReader(fs::path path, ReaderOptions options, Inspection&& in)
      : StoreReader(std::move(path), std::move(in.manifest), options),
        labels_(std::move(in.labels)),
        offsets_(std::move(in.offsets)),
        shapes_(std::move(in.shapes)),
        fd_(std::move(in.fd)),
        images_addr_(in.chunks.empty() ? 0 : in.chunks[0].addr) {
    in.images.reset();
    in.file.reset();
    map_ = MappedFile::map(fd_.get(), in.file_size, options.no_readahead);
  }

  Shape record_shape(std::uint64_t index) const override {
    check_index(index);
    return shapes_[index];
  }

  void read_record(std::uint64_t index, EncodedRecord& out) const override {
    check_index(index);
    const std::uint64_t begin = offsets_[index], size = offsets_[index + 1] - begin;
    out.shape = shapes_[index];
    out.label = labels_[index];
    out.encoding = manifest_.encoding;
    out.bytes.resize(static_cast<std::size_t>(size));
    if (map_) {
      std::memcpy(out.bytes.data(), map_.data() + images_addr_ + begin, out.bytes.size());
    } else {
      pread_record(index, images_addr_ + begin, out.bytes);
    }
    // Raw: the checksum covers the pixels; JPEG: the payload. Both are out.bytes.
    check_payload_checksum(index, out.bytes.data(), out.bytes.size(), out.label);
  }

  // Fixed-size stores of JPEG payloads only (variable-size ones have no image_bytes()).
  std::int64_t read_one(std::uint64_t index, std::uint8_t* out) const override {
    check_fixed_size();
    thread_local EncodedRecord record;
    read_record(index, record);
    if (record.encoding == Encoding::Raw) {
      std::memcpy(out, record.bytes.data(), record.bytes.size());
    } else {
      encoding_entry(record.encoding)
          .decode(record.bytes.data(), record.bytes.size(), record.shape, out,
                  fmt::format("corrupt record in {} {}", quote(path_), record_name(index)));
    }
    return record.label;
  }

 private:
  void pread_record(std::uint64_t index, std::uint64_t pos, std::vector<std::uint8_t>& out) const {
    for (std::size_t done = 0; done < out.size();) {
      const ssize_t got = ::pread(fd_.get(), out.data() + done, out.size() - done,
                                  static_cast<off_t>(pos + done));
      if (got < 0 && errno == EINTR) continue;
      if (got <= 0) {
        throw IoError(fmt::format("cannot read {} from {}: {}", record_name(index), quote(path_),
                                  got < 0 ? std::strerror(errno) : "the file is shorter"));
      }
      done += static_cast<std::size_t>(got);
    }
  }

  const std::vector<std::int64_t> labels_;
  const std::vector<std::uint64_t> offsets_;
  const std::vector<Shape> shapes_;
  Fd fd_;
  MappedFile map_;
  const std::uint64_t images_addr_;
};

// ---- open-time inspection (all with the lock held) ----

bool has_link(hid_t file, const char* name) { return H5Lexists(file, name, H5P_DEFAULT) > 0; }

// Opens dataset /name and checks it is 1-D with n entries of an integer type of at most 8 bytes;
// reads it converted to `mem_type` (a native 64-bit integer).
template <class T>
std::vector<T> read_column(const fs::path& path, hid_t file, const char* name, std::uint64_t n,
                           hid_t mem_type, std::uint64_t max_entries) {
  const std::string ds_name = fmt::format("{} dataset /{}", quote(path), name);
  if (!has_link(file, name)) throw DataError(fmt::format("{}: no dataset /{}", quote(path), name));
  H5Dataset ds(check_h5(H5Dopen2(file, name, H5P_DEFAULT), "cannot open " + ds_name));
  H5Type type(check_h5(H5Dget_type(ds.get()), "cannot get the type of " + ds_name));
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_size(type.get()) > 8) {
    throw DataError(fmt::format("{}: wrong dtype {}, expected an integer type", ds_name,
                                describe_h5_type(type.get())));
  }
  H5Space space(check_h5(H5Dget_space(ds.get()), "cannot get the dataspace of " + ds_name));
  const int rank = H5Sget_simple_extent_ndims(space.get());
  hsize_t dims[H5S_MAX_RANK] = {};
  if (rank != 1) {
    throw DataError(fmt::format("{}: wrong shape: rank {}, expected 1", ds_name, rank));
  }
  H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  if (dims[0] != n) {
    throw DataError(fmt::format("{}: wrong shape: {} entries for {} images", ds_name, dims[0], n));
  }
  if (n > max_entries) {
    throw DataError(
        fmt::format("{}: {} entries is more than a file of its size can hold", ds_name, n));
  }
  std::vector<T> values(static_cast<std::size_t>(n));
  if (n > 0) {
    check_h5(H5Dread(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, values.data()),
             "cannot read " + ds_name);
  }
  return values;
}

// Reads a scalar string attribute of the root group (variable or fixed length).
std::string read_string_attr(const fs::path& path, hid_t file, const char* name) {
  const std::string what = fmt::format("{} attribute '{}'", quote(path), name);
  H5Attr attr(check_h5(H5Aopen(file, name, H5P_DEFAULT), "cannot open " + what));
  H5Type type(check_h5(H5Aget_type(attr.get()), "cannot get the type of " + what));
  if (H5Tget_class(type.get()) != H5T_STRING) {
    throw DataError(
        fmt::format("{}: wrong type {}, expected a string", what, describe_h5_type(type.get())));
  }
  H5Space space(check_h5(H5Aget_space(attr.get()), "cannot get the dataspace of " + what));
  if (H5Sget_simple_extent_npoints(space.get()) != 1) {
    throw DataError(what + ": expected a single string");
  }
  H5Type mem(check_h5(H5Tcopy(H5T_C_S1), "cannot copy the string type"));
  if (H5Tis_variable_str(type.get()) > 0) {
    H5Tset_size(mem.get(), H5T_VARIABLE);
    H5Tset_cset(mem.get(), H5Tget_cset(type.get()));
    char* text = nullptr;
    check_h5(H5Aread(attr.get(), mem.get(), &text), "cannot read " + what);
    std::string result = text ? text : "";
    H5free_memory(text);
    return result;
  }
  const std::size_t size = H5Tget_size(type.get());
  if (size == 0 || size > kMaxAttrBytes) throw DataError(fmt::format("{}: {} bytes", what, size));
  H5Tset_size(mem.get(), size);
  H5Tset_cset(mem.get(), H5Tget_cset(type.get()));
  H5Tset_strpad(mem.get(), H5T_STR_NULLPAD);
  std::string result(size, '\0');
  check_h5(H5Aread(attr.get(), mem.get(), result.data()), "cannot read " + what);
  result.resize(std::strlen(result.c_str()));
  return result;
}

int read_int_attr(const fs::path& path, hid_t file, const char* name) {
  const std::string what = fmt::format("{} attribute '{}'", quote(path), name);
  H5Attr attr(check_h5(H5Aopen(file, name, H5P_DEFAULT), "cannot open " + what));
  H5Type type(check_h5(H5Aget_type(attr.get()), "cannot get the type of " + what));
  H5Space space(check_h5(H5Aget_space(attr.get()), "cannot get the dataspace of " + what));
  if (H5Tget_class(type.get()) != H5T_INTEGER || H5Sget_simple_extent_npoints(space.get()) != 1) {
    throw DataError(what + ": expected one integer");
  }
  long long value = 0;
  check_h5(H5Aread(attr.get(), H5T_NATIVE_LLONG, &value), "cannot read " + what);
  return static_cast<int>(std::clamp<long long>(value, -1, 1 << 30));
}

// Rebuilds the manifest from the attribute JSON (checksums emptied) and /checksums.
Manifest parse_manifest(const fs::path& path, const std::string& json,
                        std::vector<std::uint64_t> checksums) {
  const std::string what = fmt::format("{} attribute '{}'", quote(path), kManifestAttr);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(json);
  } catch (const nlohmann::json::exception& e) {
    throw DataError(fmt::format("{}: manifest is not valid JSON: {}", what, e.what()));
  }
  if (!j.is_object()) throw DataError(what + ": manifest is not a JSON object");
  std::uint64_t count = 0;
  std::string digest_text;
  try {
    // get<uint64_t>() would cast a float (UB out of range) or a negative number unchecked.
    if (!j.at("count").is_number_unsigned()) {
      throw DataError(fmt::format("{}: manifest field 'count' is not a non-negative integer: {}",
                                  what, j.at("count").dump().substr(0, 40)));
    }
    count = j.at("count").get<std::uint64_t>();
    digest_text = j.at("content_digest").get<std::string>();
  } catch (const nlohmann::json::exception& e) {
    throw DataError(
        fmt::format("{}: manifest field missing or of the wrong type: {}", what, e.what()));
  }
  // Manifest::from_json insists on one checksum per record: parse it as an empty store, then
  // put the real count, checksums and digest back and validate the whole.
  j["count"] = 0;
  j["checksums"] = nlohmann::json::array();
  j["content_digest"] = to_hex64(ContentDigest().value());
  Manifest m = Manifest::from_json(j.dump(), what);
  m.count = count;
  m.checksums = std::move(checksums);
  m.content_digest = parse_hex64(digest_text, what + " content_digest");
  m.validate(what);
  if (m.format != Format::Hdf5) {
    throw DataError(
        fmt::format("{}: manifest says format '{}', expected 'hdf5'", what, to_string(m.format)));
  }
  check_manifest_encoding(m.format, m.encoding, what);
  return m;
}

// /images' element count and shape: (N,H,W,C), C in 1..4, and no more pixels than the file
// could hold (HDF5 would otherwise allocate whatever a corrupt header declares).
struct ImagesExtent {
  std::uint64_t count = 0;
  Shape shape;
  std::string text;  // "(N,H,W,C)" for messages
};

ImagesExtent read_images_extent(hid_t images, const std::string& images_name,
                                std::uint64_t file_size) {
  {
    H5Type type(check_h5(H5Dget_type(images), "cannot get the type of " + images_name));
    if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_size(type.get()) != 1 ||
        H5Tget_sign(type.get()) != H5T_SGN_NONE) {
      throw DataError(fmt::format("{}: wrong dtype {}, expected uint8", images_name,
                                  describe_h5_type(type.get())));
    }
  }
  hsize_t dims[H5S_MAX_RANK] = {};
  {
    H5Space space(check_h5(H5Dget_space(images), "cannot get the dataspace of " + images_name));
    const int rank = H5Sget_simple_extent_ndims(space.get());
    if (rank != 4) {
      throw DataError(
          fmt::format("{}: wrong shape: rank {}, expected 4 (N,H,W,C)", images_name, rank));
    }
    H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  }
  ImagesExtent ext;
  ext.count = dims[0];
  ext.text = fmt::format("({},{},{},{})", dims[0], dims[1], dims[2], dims[3]);
  if (dims[1] == 0 || dims[2] == 0 || dims[3] < 1 || dims[3] > 4 || dims[1] > UINT32_MAX ||
      dims[2] > UINT32_MAX || dims[1] * dims[2] * dims[3] > kMaxImageBytes) {
    throw DataError(fmt::format("{}: wrong shape {}: expected (N,H,W,C) with C in 1..4",
                                images_name, ext.text));
  }
  ext.shape = Shape{static_cast<std::uint32_t>(dims[1]), static_cast<std::uint32_t>(dims[2]),
                    static_cast<std::uint32_t>(dims[3])};
  if (ext.count > kMaxExpansion * std::max<std::uint64_t>(file_size, 1) / ext.shape.bytes()) {
    throw DataError(
        fmt::format("{}: shape {} declares far more pixels than the file's {} bytes "
                    "can hold",
                    images_name, ext.text, file_size));
  }
  return ext;
}

// Every chunk of a chunked /images whose chunks are whole records and either unfiltered or
// deflated: in.access becomes Direct. Any other chunking is left to HDF5.
void locate_chunks(Inspection& in, const fs::path& path, const std::string& images_name,
                   const ImagesExtent& ext, hid_t dcpl) {
  const hid_t images = in.images.get();
  const std::uint64_t n = ext.count;
  const std::uint64_t bytes = ext.shape.bytes();
  hsize_t chunk[H5S_MAX_RANK] = {};
  const int chunk_rank = H5Pget_chunk(dcpl, H5S_MAX_RANK, chunk);
  const int nfilters = H5Pget_nfilters(dcpl);
  bool only_deflate = nfilters == 0;
  if (nfilters == 1) {
    unsigned flags = 0;
    std::size_t nelmts = 0;
    unsigned filter_config = 0;
    only_deflate = H5Pget_filter2(dcpl, 0, &flags, &nelmts, nullptr, 0, nullptr,
                                  &filter_config) == H5Z_FILTER_DEFLATE;
  }
  if (chunk_rank != 4 || chunk[1] != ext.shape.height || chunk[2] != ext.shape.width ||
      chunk[3] != ext.shape.channels || chunk[0] < 1 || !only_deflate) {
    return;
  }
  const std::uint64_t k = chunk[0];
  const std::uint64_t chunk_bytes = k * bytes;
  if (chunk_bytes > kMaxChunkBytes) {
    throw DataError(fmt::format("{}: chunks of {} bytes exceed the limit of {}", images_name,
                                chunk_bytes, kMaxChunkBytes));
  }
  // Where every chunk is, so that reads need neither HDF5 nor its lock.
  const std::uint64_t max_packed = compressBound(static_cast<uLong>(chunk_bytes)) + 1024;
  in.chunks.resize(static_cast<std::size_t>((n + k - 1) / k));
  for (std::uint64_t c = 0; c < in.chunks.size(); ++c) {
    const hsize_t offset[4] = {c * k, 0, 0, 0};
    unsigned mask = 0;
    haddr_t addr = HADDR_UNDEF;
    hsize_t stored = 0;
    const auto name = [&] {
      return fmt::format("{} chunk {} ({})", images_name, c,
                         record_range(c * k, std::min(k, n - c * k)));
    };
    check_h5(H5Dget_chunk_info_by_coord(images, offset, &mask, &addr, &stored),
             "cannot locate " + name());
    if (addr == HADDR_UNDEF || stored == 0) break;  // fill values: leave it to HDF5
    ChunkLoc& loc = in.chunks[c];
    loc.addr = addr;
    loc.size = stored;
    loc.compressed = nfilters == 1 && (mask & 1u) == 0;
    if (loc.compressed ? stored > max_packed : stored != chunk_bytes) {
      throw DataError(fmt::format("{} is stored as {} bytes, expected {}{}", name(), stored,
                                  loc.compressed ? "at most " : "",
                                  loc.compressed ? max_packed : chunk_bytes));
    }
    if (addr > in.file_size || stored > in.file_size - addr) {
      throw DataError(fmt::format("truncated file {}: {} ends at byte {}, the file has {}",
                                  quote(path), name(), addr + stored, in.file_size));
    }
  }
  if (in.chunks.back().size != 0) {
    in.access = Access::Direct;
    in.chunk_records = k;
  } else {
    in.chunks.clear();
  }
}

// How to read /images: straight from the file where its bytes lie plainly in it.
void locate_images(Inspection& in, const fs::path& path, const std::string& images_name,
                   const ImagesExtent& ext) {
  const hid_t images = in.images.get();
  const std::uint64_t n = ext.count;
  const std::uint64_t bytes = ext.shape.bytes();
  H5Plist dcpl(check_h5(H5Dget_create_plist(images), "cannot get the layout of " + images_name));
  const H5D_layout_t layout = H5Pget_layout(dcpl.get());
  if (layout == H5D_CONTIGUOUS && n > 0 && H5Pget_external_count(dcpl.get()) == 0) {
    const haddr_t addr = H5Dget_offset(images);
    if (addr != HADDR_UNDEF) {
      if (addr > in.file_size || n * bytes > in.file_size - addr) {
        throw DataError(fmt::format("truncated file {}: /images ends at byte {}, the file has {}",
                                    quote(path), addr + n * bytes, in.file_size));
      }
      in.access = Access::Direct;
      in.chunk_records = n;
      in.chunks.push_back({addr, n * bytes, false});
    }
  } else if (layout == H5D_CHUNKED && n > 0) {
    locate_chunks(in, path, images_name, ext, dcpl.get());
  }
}

// Labels, and the manifest with its checksums (or one made up for the tutorial's layout).
void read_labels_and_manifest(Inspection& in, const fs::path& path, const ImagesExtent& ext) {
  const hid_t file = in.file.get();
  const std::uint64_t n = ext.count;
  const std::uint64_t max_entries = kMaxExpansion * std::max<std::uint64_t>(in.file_size, 1);
  if (in.tutorial) {
    in.labels = read_column<std::int64_t>(path, file, "meta", n, H5T_NATIVE_INT64, max_entries);
    Manifest& m = in.manifest;
    m.format = Format::Hdf5;
    m.split = path.stem().string();
    m.source = "tutorial layout";
    m.count = n;
    m.shape = ext.shape;
    m.encoding = Encoding::Raw;
    // checksums: derived once the reader exists (derive_checksums).
    return;
  }
  const int version = read_int_attr(path, file, kVersionAttr);
  if (version != 1) {  // version 2 stores have the ragged layout (/offsets)
    throw DataError(fmt::format("{}: imgstore format version {} is not supported here (expected "
                                "1, or 2 with /offsets and /shapes)", quote(path), version));
  }
  in.labels = read_column<std::int64_t>(path, file, "labels", n, H5T_NATIVE_INT64, max_entries);
  auto sums =
      read_column<std::uint64_t>(path, file, "checksums", n, H5T_NATIVE_UINT64, max_entries);
  in.manifest = parse_manifest(path, read_string_attr(path, file, kManifestAttr), std::move(sums));
  if (in.manifest.count != n || in.manifest.shape != ext.shape) {
    throw DataError(fmt::format("{}: manifest says {} images of {}, /images holds {}", quote(path),
                                in.manifest.count, to_string(in.manifest.shape), ext.text));
  }
}

// /shapes (N,3) of a ragged store: N from the file, bounded by what the file could hold.
std::vector<Shape> read_shapes(const fs::path& path, hid_t file, std::uint64_t max_entries) {
  const std::string name = fmt::format("{} dataset /shapes", quote(path));
  if (!has_link(file, "shapes")) throw DataError(fmt::format("{}: no dataset /shapes", quote(path)));
  H5Dataset ds(check_h5(H5Dopen2(file, "shapes", H5P_DEFAULT), "cannot open " + name));
  H5Space space(check_h5(H5Dget_space(ds.get()), "cannot get the dataspace of " + name));
  hsize_t dims[H5S_MAX_RANK] = {};
  if (H5Sget_simple_extent_ndims(space.get()) != 2) {
    throw DataError(name + ": wrong shape: expected (N,3)");
  }
  H5Sget_simple_extent_dims(space.get(), dims, nullptr);
  if (dims[1] != 3 || dims[0] > max_entries) {
    throw DataError(fmt::format("{}: wrong shape ({},{}): expected (N,3), N at most {}", name,
                                dims[0], dims[1], max_entries));
  }
  std::vector<std::uint32_t> flat(static_cast<std::size_t>(dims[0] * 3));
  if (!flat.empty()) {
    check_h5(H5Dread(ds.get(), H5T_NATIVE_UINT32, H5S_ALL, H5S_ALL, H5P_DEFAULT, flat.data()),
             "cannot read " + name);
  }
  std::vector<Shape> shapes(static_cast<std::size_t>(dims[0]));
  for (std::size_t i = 0; i < shapes.size(); ++i) {
    shapes[i] = Shape{flat[3 * i], flat[3 * i + 1], flat[3 * i + 2]};
  }
  return shapes;
}

// Every record's range and shape agree with each other and with the manifest.
void check_ragged_index(const Inspection& in, const fs::path& path, std::uint64_t total) {
  const Manifest& m = in.manifest;
  const bool raw = m.encoding == Encoding::Raw;
  if (in.offsets.front() != 0 || in.offsets.back() != total) {
    throw DataError(fmt::format("{}: /offsets run from {} to {}, /images holds {} bytes",
                                quote(path), in.offsets.front(), in.offsets.back(), total));
  }
  for (std::size_t i = 0; i < in.shapes.size(); ++i) {
    const Shape& s = in.shapes[i];
    const bool shape_ok = m.holds(s);
    const bool range_ok = in.offsets[i + 1] >= in.offsets[i] &&
                          (!raw || in.offsets[i + 1] - in.offsets[i] == s.bytes());
    if (!shape_ok || !range_ok) {
      throw DataError(fmt::format("corrupt record in {} record {}: shape {} and bytes {}..{} do "
                                  "not fit the store", quote(path), i, to_string(s),
                                  in.offsets[i], in.offsets[i + 1]));
    }
  }
}

// The ragged layout (format version 2): /images (total,) uint8 contiguous, /offsets, /shapes.
void inspect_ragged(Inspection& in, const fs::path& path) {
  const hid_t file = in.file.get();
  const std::uint64_t max_entries = kMaxExpansion * std::max<std::uint64_t>(in.file_size, 1);
  const std::string images_name = fmt::format("{} dataset /images", quote(path));
  in.images = H5Dataset(check_h5(H5Dopen2(file, "images", H5P_DEFAULT), "cannot open " + images_name));
  hsize_t total = 0;
  {
    H5Type type(check_h5(H5Dget_type(in.images.get()), "cannot get the type of " + images_name));
    H5Space space(check_h5(H5Dget_space(in.images.get()), "cannot get the dataspace of " + images_name));
    if (H5Tget_class(type.get()) != H5T_INTEGER || H5Tget_size(type.get()) != 1 ||
        H5Sget_simple_extent_ndims(space.get()) != 1) {
      throw DataError(images_name + ": expected a 1-D uint8 dataset (the ragged layout)");
    }
    H5Sget_simple_extent_dims(space.get(), &total, nullptr);
  }
  const haddr_t addr = H5Dget_offset(in.images.get());
  if (total > 0 && (addr == HADDR_UNDEF || addr > in.file_size || total > in.file_size - addr)) {
    throw DataError(fmt::format("{}: not stored contiguously within the file's {} bytes",
                                images_name, in.file_size));
  }
  in.chunks.push_back({total > 0 ? addr : 0, total, false});
  const int version = read_int_attr(path, file, kVersionAttr);
  if (version != 2) {
    throw DataError(fmt::format("{}: imgstore format version {} does not have the ragged layout "
                                "(version 2)", quote(path), version));
  }
  in.shapes = read_shapes(path, file, max_entries);
  const std::uint64_t n = in.shapes.size();
  in.offsets = read_column<std::uint64_t>(path, file, "offsets", n + 1, H5T_NATIVE_UINT64,
                                          max_entries);
  in.labels = read_column<std::int64_t>(path, file, "labels", n, H5T_NATIVE_INT64, max_entries);
  auto sums = read_column<std::uint64_t>(path, file, "checksums", n, H5T_NATIVE_UINT64, max_entries);
  in.manifest = parse_manifest(path, read_string_attr(path, file, kManifestAttr), std::move(sums));
  if (in.manifest.count != n ||
      !(in.manifest.variable_size || in.manifest.encoding == Encoding::Jpeg)) {
    throw DataError(fmt::format("{}: manifest says {} {} records, the ragged layout holds {}",
                                quote(path), in.manifest.count,
                                in.manifest.variable_size ? "variable-size" : "fixed-size raw", n));
  }
  check_ragged_index(in, path, total);
  in.ragged = true;
}

Inspection inspect(const fs::path& path) {
  Inspection in;
  in.fd = Fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (in.fd.get() < 0) {
    throw IoError(fmt::format("cannot open {}: {}", quote(path), std::strerror(errno)));
  }
  struct stat st {};
  if (::fstat(in.fd.get(), &st) != 0) {
    throw IoError(fmt::format("cannot stat {}: {}", quote(path), std::strerror(errno)));
  }
  if (!S_ISREG(st.st_mode)) throw DataError(fmt::format("{} is not a regular file", quote(path)));
  in.file_size = static_cast<std::uint64_t>(st.st_size);

  Hdf5Lock lock;
  H5Plist fapl(check_h5<IoError>(H5Pcreate(H5P_FILE_ACCESS), "cannot create a plist"));
  // Lock the file where the file system can, but do not fail where it cannot (e.g. NFS).
  H5Pset_file_locking(fapl.get(), true, true);
  in.file = H5File(check_h5(H5Fopen(path.c_str(), H5F_ACC_RDONLY, fapl.get()),
                            fmt::format("{} is not a readable HDF5 file", quote(path))));
  const hid_t file = in.file.get();

  const htri_t has_manifest = H5Aexists(file, kManifestAttr);
  check_h5(has_manifest, fmt::format("cannot read the attributes of {}", quote(path)));
  in.tutorial = has_manifest == 0;
  if (!has_link(file, "images") || (in.tutorial && !has_link(file, "meta"))) {
    throw DataError(fmt::format(
        "{} is neither an imgstore HDF5 store (/images, /labels, attribute '{}') nor the "
        "tutorial's layout (/images, /meta)",
        quote(path), kManifestAttr));
  }

  if (!in.tutorial && has_link(file, "offsets")) {
    inspect_ragged(in, path);
    return in;
  }
  const std::string images_name = fmt::format("{} dataset /images", quote(path));
  in.images =
      H5Dataset(check_h5(H5Dopen2(file, "images", H5P_DEFAULT), "cannot open " + images_name));
  const ImagesExtent ext = read_images_extent(in.images.get(), images_name, in.file_size);
  locate_images(in, path, images_name, ext);
  read_labels_and_manifest(in, path, ext);
  return in;
}

}  // namespace

bool detect_hdf5_store(const fs::path& path) {
  static const char kSignature[8] = {'\x89', 'H', 'D', 'F', '\r', '\n', '\x1a', '\n'};
  std::error_code ec;
  if (fs::is_directory(path, ec)) return false;
  std::ifstream in(path, std::ios::binary);
  char sig[8] = {};
  in.read(sig, sizeof sig);
  return in.gcount() == 8 && std::equal(sig, sig + 8, kSignature);
}

std::unique_ptr<StoreWriter> create_hdf5_store(const fs::path& path, const StoreSpec& spec,
                                               const WriterOptions& options) {
  Hdf5Writer::check_options(path, spec, options);
  return std::make_unique<Hdf5Writer>(path, spec, options);
}

bool testing::hdf5_reader_uses_mmap(const StoreReader& reader) {
  const auto* h5 = dynamic_cast<const Hdf5Reader*>(&reader);
  return h5 != nullptr && h5->mapped();
}

std::unique_ptr<StoreReader> open_hdf5_store(const fs::path& path, const ReaderOptions& options) {
  Inspection in = inspect(path);
  if (in.ragged) return std::make_unique<Hdf5RaggedReader>(path, options, std::move(in));
  const bool tutorial = in.tutorial;
  auto reader = std::make_unique<Hdf5Reader>(path, options, std::move(in));
  if (tutorial) reader->derive_checksums();
  return reader;
}

}  // namespace imgstore::detail
