// Image folders and list files of photos (JPEG/PNG of any size) as a Source.
//
// The scan (image_files.hpp) lists the files; the stream reads and decodes one batch at a time
// in parallel (TBB), so memory is bounded by the batch, never by the split. Records keep the
// scan's order whatever the thread count. See SourceOptions for what each option does.
#include <tbb/blocked_range.h>
#include <tbb/concurrent_vector.h>
#include <tbb/enumerable_thread_specific.h>
#include <tbb/parallel_for.h>
#include <tbb/task_arena.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <utility>

#include <fmt/format.h>

#include "codecs/image_codec.hpp"
#include "codecs/resample.hpp"
#include "detail/fs_util.hpp"
#include "imgstore/error.hpp"
#include "ingest/image_files.hpp"
#include "ingest/sources.hpp"

namespace imgstore::detail {

namespace {

static_assert(kDefaultMaxPixels == 2 * kPilMaxImagePixels,
              "SourceOptions::max_pixels defaults to the codecs' limit");

// One record being loaded: the decoded (then maybe resized) pixels and/or its JPEG payload.
struct Record {
  DecodedImage decoded;
  DecodedImage resized;
  const DecodedImage* pixels = nullptr;  // decoded or resized; null if not decoded
  Shape shape;                           // what the record holds
  std::vector<std::uint8_t> payload;
  std::string error;  // set if the file is bad
  // In-place loads (PhotoStream::load_in_place): the open file, its size, and whether its
  // bytes stayed where they were read, in the batch (else the record is in `payload`).
  Fd file;
  std::uint64_t file_size = 0;
  bool in_place = false;
};

// How many of the resize options are set (check_photo_options allows at most one).
int resize_options(const SourceOptions& o) {
  return int(o.resize.has_value()) + int(o.resize_short > 0) + int(o.max_side > 0);
}

// Output width x height for a w x h image under the options' resize rules.
std::pair<std::uint32_t, std::uint32_t> target_size(std::uint32_t w, std::uint32_t h,
                                                    const SourceOptions& o) {
  if (o.resize) return {o.resize->second, o.resize->first};
  const std::uint64_t lo = std::min(w, h), hi = std::max(w, h);
  std::uint64_t new_lo = lo, new_hi = hi;
  if (o.resize_short) {
    // torchvision: int(S * long / short), a float division then truncation.
    new_lo = o.resize_short;
    new_hi = static_cast<std::uint64_t>(static_cast<double>(o.resize_short * hi) /
                                        static_cast<double>(lo));
  } else if (o.max_side && hi > o.max_side) {
    new_hi = o.max_side;
    new_lo = std::max<std::uint64_t>(1, lo * o.max_side / hi);
  }
  new_hi = std::max<std::uint64_t>(new_hi, 1);
  const bool wide = w >= h;
  return {static_cast<std::uint32_t>(wide ? new_hi : new_lo),
          static_cast<std::uint32_t>(wide ? new_lo : new_hi)};
}

// A JPEG that does not end in EOI (FF D9, maybe followed by padding zeros) may be truncated.
bool ends_with_eoi(const std::uint8_t* b, std::size_t size) {
  std::size_t n = size;
  while (n > 2 && b[n - 1] == 0) --n;
  return n >= 2 && b[n - 2] == 0xFF && b[n - 1] == 0xD9;
}

// SourceOptions::jpeg_dct_scaling: decodes the JPEG at the smallest DCT scale that still covers
// out_w x out_h and resamples that. False (nothing done) when no scale below 1 qualifies.
bool decode_scaled(const std::vector<std::uint8_t>& bytes, const std::string& what,
                   const SourceOptions& o, const DecodeLimits& limits, std::uint32_t out_w,
                   std::uint32_t out_h, Record& r) {
  const ImageInfo info = read_image_info(bytes.data(), bytes.size(), what, limits);
  if (choose_jpeg_scale(info.width, info.height, out_w, out_h) == 1) return false;
  thread_local ScaledCrop scaled;
  decode_jpeg_crop(bytes.data(), bytes.size(), CropRect{0, 0, info.width, info.height}, out_w,
                   out_h, o.channels, what, scaled, limits);
  const Shape& s = scaled.image.shape;
  r.resized.shape = Shape{out_h, out_w, o.channels};
  r.resized.pixels.resize(r.resized.shape.bytes());
  resize(scaled.image.pixels.data(), s.width, s.height, o.channels,
         ResizeBox{scaled.box[0], scaled.box[1], scaled.box[2], scaled.box[3]}, out_w, out_h,
         r.resized.pixels.data(), ResampleFilter::Bilinear);
  r.pixels = &r.resized;
  r.shape = r.resized.shape;
  return true;
}

// Decodes (and resizes to out_w x out_h) into r; r.pixels points at the result.
void decode_record(const std::vector<std::uint8_t>& bytes, const std::string& what,
                   const SourceOptions& o, const DecodeLimits& limits, std::uint32_t out_w,
                   std::uint32_t out_h, Record& r) {
  if (o.jpeg_dct_scaling && sniff_image(bytes.data(), bytes.size()) == ImageKind::Jpeg &&
      decode_scaled(bytes, what, o, limits, out_w, out_h, r)) {
    return;
  }
  decode_image(bytes.data(), bytes.size(), o.channels, what, r.decoded, limits);
  r.pixels = &r.decoded;
  const Shape& s = r.decoded.shape;
  if (out_w != s.width || out_h != s.height) {
    r.resized.shape = Shape{out_h, out_w, o.channels};
    r.resized.pixels.resize(r.resized.shape.bytes());
    resize(r.decoded.pixels.data(), s.width, s.height, o.channels,
           ResizeBox{0, 0, static_cast<float>(s.width), static_cast<float>(s.height)}, out_w,
           out_h, r.resized.pixels.data(), ResampleFilter::Bilinear);
    r.pixels = &r.resized;
  }
  r.shape = r.pixels->shape;
}

// A slot's buffers above this are freed after use, so one huge image does not pin memory.
constexpr std::size_t kKeepCapacity = std::size_t{16} << 20;

void release_if_large(std::vector<std::uint8_t>& v) {
  if (v.capacity() > kKeepCapacity) std::vector<std::uint8_t>().swap(v);
}

DecodeLimits limits_of(const SourceOptions& o) {
  DecodeLimits limits;
  limits.max_pixels = o.max_pixels;
  return limits;
}

// Whether a file described by `info` goes into the store as it is (nothing resized, and the
// store takes its JPEG as it is).
bool untouched(const ImageInfo& info, const SourceOptions& o) {
  const auto [out_w, out_h] = target_size(info.width, info.height, o);
  return out_w == info.width && out_h == info.height &&
         can_store_untouched(info, ImageKind::Jpeg, o.channels);
}

// A pass-through record: the header has been checked; a body without its end marker is
// decoded to make sure it is not truncated (a truncated JPEG must not be stored).
void check_pass_through(const std::uint8_t* bytes, std::size_t size, const ImageInfo& info,
                        const std::string& what, const SourceOptions& o, Record& r) {
  if (!ends_with_eoi(bytes, size)) {
    decode_image(bytes, size, o.channels, what, r.decoded, limits_of(o));
  }
  r.shape = Shape{info.height, info.width, o.channels};
}

// Turns the file bytes in r.payload into the record the options ask for. `validate`: always
// decode fully (skip_bad's first pass), and keep nothing. Throws on bad input (the caller
// records the message).
void finish_record(const std::string& what, const SourceOptions& o, bool validate, Record& r) {
  const DecodeLimits limits = limits_of(o);
  // The file is in the slot's payload buffer (its capacity reused from file to file): a
  // pass-through payload is then in place, and an encoded one overwrites it after the decode.
  std::vector<std::uint8_t>& bytes = r.payload;
  r.pixels = nullptr;
  const ImageInfo info = read_image_info(bytes.data(), bytes.size(), what, limits);
  const auto [out_w, out_h] = target_size(info.width, info.height, o);
  const bool as_is = untouched(info, o);
  const bool want_payload = !o.need_pixels || o.keep_jpeg_payload;
  if (!validate && !o.need_pixels && as_is) {
    check_pass_through(bytes.data(), bytes.size(), info, what, o, r);
    return;
  }
  // Payload only (need_pixels false): the pixels are decoded, resized and encoded in this
  // thread's scratch, which stays hot in cache, rather than in one of the stream's 64 slots
  // (64 slots of decoded photos did not fit in cache and page-faulted on first use).
  thread_local Record scratch;
  Record& work = !validate && !o.need_pixels ? scratch : r;
  decode_record(bytes, what, o, limits, validate ? info.width : out_w,
                validate ? info.height : out_h, work);
  r.shape = work.shape;
  if (validate || !want_payload) {
    r.payload.clear();
    return;
  }
  if (!as_is) {  // the source bytes are no longer needed
    encode_jpeg(work.pixels->pixels.data(), r.shape.width, r.shape.height, r.shape.channels,
                o.jpeg_quality, r.payload);
  }
  if (&work == &scratch) {  // one huge photo does not pin its buffers in every thread
    release_if_large(scratch.decoded.pixels);
    release_if_large(scratch.resized.pixels);
  }
}

// Loads one file into r as the options ask (see finish_record).
void load_record(const fs::path& path, const SourceOptions& o, bool validate, Record& r) {
  read_file_into(path, r.payload);
  finish_record(path.string(), o, validate, r);
}

// The reason alone: the message without the leading "<path>: " the codecs put there.
std::string reason_of(const std::string& message, const std::string& path) {
  const std::string prefix = path + ": ";
  if (message.compare(0, prefix.size(), prefix) == 0) return message.substr(prefix.size());
  return message;
}

// The threads a loop over chunks of files runs on: an arena of `threads` (0: TBB's default),
// made on first use and kept for the loop's life rather than built for every chunk.
class WorkerArena {
 public:
  explicit WorkerArena(unsigned threads) : threads_(threads) {}

  template <class F>
  void run(F&& f) {
    if (threads_ == 0) {
      f();
      return;
    }
    if (!arena_) arena_ = std::make_unique<tbb::task_arena>(static_cast<int>(threads_));
    arena_->execute(f);
  }

 private:
  unsigned threads_;
  std::unique_ptr<tbb::task_arena> arena_;
};

// Files are decoded kChunk at a time; a batch ends at max_records or once it holds
// kBatchBytes (returning fewer records is allowed), so memory stays bounded even when a
// caller asks for 1024 large photos. A conversion holds two batches (it reads one ahead).
constexpr std::size_t kChunk = 64;
constexpr std::size_t kBatchBytes = std::size_t{48} << 20;
// Batches of JPEG payloads only (--encoding jpeg) end sooner: their buffer is then reused while
// still cached, instead of growing (and page-faulting) through a whole split of pass-through
// files (imgstore-photo-convert-bench; 17 MiB split: 2x fewer page faults). 1 MiB rather than
// 4: the writer copies the batch into its store while the batch is still in cache, and LMDB
// commits it as one transaction of about 1 MiB (10,860 photos, LMDB: 0.203 -> 0.184 s).
constexpr std::size_t kPayloadBatchBytes = std::size_t{1} << 20;
constexpr std::size_t kInPlaceReserve = std::size_t{8} << 20;

class PhotoStream : public BatchStream {
 public:
  PhotoStream(const ImageSplit& split, const SourceOptions& options,
              const std::vector<char>* bad)
      : split_(split), options_(options), bad_(bad) {}
  bool next(ImageBatch& out, std::size_t max_records) override;

 private:
  fs::path path_of(std::size_t i) const {
    return split_.base / std::string(split_.files.path(files_[i]));
  }
  template <class F>
  void for_each_file(F&& load_one);
  void load();
  void load_in_place(ImageBatch& out);
  void read_in_place(std::size_t i, std::uint8_t* at);
  void begin(ImageBatch& out) const;
  void append(ImageBatch& out);

  const ImageSplit& split_;
  const SourceOptions& options_;
  const std::vector<char>* bad_;  // skip_bad: 1 for each file to leave out; else null
  std::size_t cursor_ = 0;        // next file of the split
  std::vector<std::size_t> files_;  // the chunk being loaded
  std::vector<Record> records_;     // reused: one per file of the chunk
  WorkerArena workers_{options_.threads};
  // Pass-through streams (payload only, nothing resized) read files straight into the batch.
  const bool in_place_ = !options_.need_pixels && resize_options(options_) == 0;
  std::vector<std::size_t> places_;    // in-place loads: each file's offset in the batch
  std::vector<std::uint8_t> compact_;  // in-place loads: the chunk's bytes, when re-packed
  std::size_t payload_used_ = 0;       // in-place loads: the batch's bytes so far
};

bool PhotoStream::next(ImageBatch& out, std::size_t max_records) {
  max_records = std::max<std::size_t>(max_records, 1);
  // In-place loads keep the payload's old size across begin(): growing a vector zero-fills
  // the new part, and zeroing each batch before reading into it cost 9% of a pass-through
  // conversion's CPU time. Its first payload_used_ bytes are the batch; the rest is stale.
  std::vector<std::uint8_t> stale;
  if (in_place_) stale.swap(out.payload);
  begin(out);
  if (in_place_) {
    stale.swap(out.payload);
    // Room for a chunk of 64 typical photos at once. Grown by doubling instead, the batches
    // touched 27 MB of fresh memory, 85% of a conversion's page faults, and fresh memory is
    // dear on these VMs: 10,860 photos to HDF5 0.291 -> 0.232 s, to LMDB 0.353 -> 0.280 s.
    out.payload.reserve(kInPlaceReserve);
  }
  payload_used_ = 0;
  const std::size_t total = split_.files.size();
  const std::size_t batch_bytes = options_.need_pixels ? kBatchBytes : kPayloadBatchBytes;
  while (out.size() < max_records && cursor_ < total &&
         out.pixels.size() + (in_place_ ? payload_used_ : out.payload.size()) < batch_bytes) {
    files_.clear();
    const std::size_t want = std::min(kChunk, max_records - out.size());
    while (cursor_ < total && files_.size() < want) {
      if (!bad_ || !(*bad_)[cursor_]) files_.push_back(cursor_);
      ++cursor_;
    }
    if (files_.empty()) break;
    if (in_place_) {
      load_in_place(out);
    } else {
      load();
      append(out);
    }
  }
  if (in_place_) out.payload.resize(payload_used_);
  return out.size() > 0;
}

// Runs load_one(i, record) for every file of the chunk on the stream's threads, keeping each
// file's error in its record; then throws the first bad file's error in order, whichever
// thread met it first.
template <class F>
void PhotoStream::for_each_file(F&& load_one) {
  const std::size_t n = files_.size();
  if (records_.size() < n) records_.resize(n);
  workers_.run([&] {
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, n, 1),
                      [&](const tbb::blocked_range<std::size_t>& range) {
                        for (std::size_t i = range.begin(); i != range.end(); ++i) {
                          Record& r = records_[i];
                          r.error.clear();
                          try {
                            load_one(i, r);
                          } catch (const Error& e) {
                            r.error = e.what();
                          }
                        }
                      });
  });
  for (std::size_t i = 0; i < n; ++i) {
    if (!records_[i].error.empty()) throw DataError(records_[i].error);
  }
}

void PhotoStream::load() {
  for_each_file([&](std::size_t i, Record& r) { load_record(path_of(i), options_, false, r); });
}

// Pass-through without the copy from a slot into the batch: every file of the chunk is
// opened and sized, the batch grows by their sizes, and each is read straight into its
// place. A file that must be re-encoded (a PNG, CMYK) or that shrank meanwhile is finished in
// its slot, and the chunk is re-packed. 10,860 photos to HDF5: 0.353 -> 0.308 s.
void PhotoStream::load_in_place(ImageBatch& out) {
  const std::size_t n = files_.size();
  for_each_file([&](std::size_t i, Record& r) { r.file = open_sized(path_of(i), r.file_size); });
  const std::size_t base = payload_used_;
  places_.assign(1, base);
  for (std::size_t i = 0; i < n; ++i) {
    places_.push_back(places_.back() + static_cast<std::size_t>(records_[i].file_size));
  }
  if (out.payload.size() < places_.back()) out.payload.resize(places_.back());
  for_each_file(
      [&](std::size_t i, Record&) { read_in_place(i, out.payload.data() + places_[i]); });

  const auto end = records_.begin() + static_cast<std::ptrdiff_t>(n);
  const bool packed =
      std::all_of(records_.begin(), end, [](const Record& r) { return r.in_place; });
  if (!packed) {
    compact_.assign(out.payload.begin() + static_cast<std::ptrdiff_t>(base),
                    out.payload.begin() + static_cast<std::ptrdiff_t>(places_.back()));
    out.payload.resize(base);
  }
  for (std::size_t i = 0; i < n; ++i) {
    Record& r = records_[i];
    out.labels.push_back(split_.files.label(files_[i]));
    out.shapes.push_back(r.shape);
    if (packed) {
      out.payload_offsets.push_back(places_[i + 1]);
    } else {
      if (r.in_place) {
        const auto from = compact_.begin() + static_cast<std::ptrdiff_t>(places_[i] - base);
        out.payload.insert(out.payload.end(), from,
                           from + static_cast<std::ptrdiff_t>(r.file_size));
      } else {
        out.payload.insert(out.payload.end(), r.payload.begin(), r.payload.end());
      }
      out.payload_offsets.push_back(out.payload.size());
    }
    release_if_large(r.payload);
  }
  payload_used_ = out.payload_offsets.back();
  release_if_large(compact_);
}

// Reads file i (opened by load_in_place) into `at` and checks it. If it cannot stay there as
// it is, its record is finished in its slot as load_record would (r.in_place false).
void PhotoStream::read_in_place(std::size_t i, std::uint8_t* at) {
  Record& r = records_[i];
  r.in_place = false;
  r.pixels = nullptr;
  const fs::path path = path_of(i);
  const std::size_t got = read_up_to(r.file, at, static_cast<std::size_t>(r.file_size), path);
  r.file = Fd();
  const std::string what = path.string();
  const ImageInfo info = read_image_info(at, got, what, limits_of(options_));
  if (got == r.file_size && untouched(info, options_)) {
    check_pass_through(at, got, info, what, options_, r);
    r.in_place = true;
    return;
  }
  r.payload.assign(at, at + got);
  finish_record(what, options_, false, r);
}

void PhotoStream::begin(ImageBatch& out) const {
  const std::uint32_t c = options_.channels;
  const bool fixed = options_.resize.has_value();
  out.resize(fixed ? Shape{options_.resize->first, options_.resize->second, c} : Shape{0, 0, c},
             0);
  if (!options_.need_pixels || options_.keep_jpeg_payload) {
    out.payload_encoding = Encoding::Jpeg;
    out.payload_offsets.assign(1, 0);
  }
  if (!fixed && options_.need_pixels) out.offsets.assign(1, 0);
}

// Appends the loaded chunk to `out` (see docs/photos.md for what is filled when).
void PhotoStream::append(ImageBatch& out) {
  const bool fixed = options_.resize.has_value();
  for (std::size_t i = 0; i < files_.size(); ++i) {
    Record& r = records_[i];
    out.labels.push_back(split_.files.label(files_[i]));
    if (!fixed) out.shapes.push_back(r.shape);
    if (options_.need_pixels) {
      out.pixels.insert(out.pixels.end(), r.pixels->pixels.begin(), r.pixels->pixels.end());
      if (!fixed) out.offsets.push_back(out.pixels.size());
    }
    if (out.payload_encoding) {
      out.payload.insert(out.payload.end(), r.payload.begin(), r.payload.end());
      out.payload_offsets.push_back(out.payload.size());
    }
    release_if_large(r.decoded.pixels);
    release_if_large(r.resized.pixels);
    release_if_large(r.payload);
  }
}

class PhotoSource : public Source {
 public:
  PhotoSource(std::string description, ImageFileScan scan, const SourceOptions& options)
      : description_(std::move(description)), scan_(std::move(scan)), options_(options) {
    bad_.resize(scan_.splits.size());
  }
  std::string description() const override { return description_; }
  std::vector<SplitInfo> splits() const override;
  std::unique_ptr<BatchStream> open(const std::string& split) const override;
  std::vector<SkippedInput> skipped_inputs() const override;
  std::vector<std::pair<std::string, std::uint64_t>> ignored_entries() const override;

 private:
  void validate() const;
  std::vector<char> validate_split(const ImageSplit& split,
                                   std::vector<SkippedInput>& skipped) const;

  std::string description_;
  ImageFileScan scan_;
  SourceOptions options_;
  mutable std::mutex mutex_;
  mutable bool validated_ = false;
  mutable std::vector<std::vector<char>> bad_;  // per split, per file (skip_bad)
  mutable std::vector<SkippedInput> skipped_;   // decode failures found by validate()
};

std::vector<char> PhotoSource::validate_split(const ImageSplit& split,
                                              std::vector<SkippedInput>& skipped) const {
  const std::size_t n = split.files.size();
  std::vector<char> bad(n, 0);
  // Only the bad files' messages are kept (a split may hold millions of good ones).
  tbb::concurrent_vector<std::pair<std::size_t, std::string>> errors;
  tbb::enumerable_thread_specific<Record> scratch;
  // In chunks, so that progress (and an interrupt it may throw) runs on this thread.
  constexpr std::size_t kValidateChunk = 1024;
  if (options_.validate_progress) options_.validate_progress(split.name, 0, n);
  WorkerArena workers(options_.threads);
  for (std::size_t first = 0; first < n; first += kValidateChunk) {
    const std::size_t last = std::min(n, first + kValidateChunk);
    workers.run([&] {
      tbb::parallel_for(tbb::blocked_range<std::size_t>(first, last, 1),
                        [&](const tbb::blocked_range<std::size_t>& range) {
                          Record& r = scratch.local();
                          for (std::size_t i = range.begin(); i != range.end(); ++i) {
                            try {
                              load_record(split.base / std::string(split.files.path(i)),
                                          options_, true, r);
                            } catch (const Error& e) {
                              bad[i] = 1;
                              errors.emplace_back(i, e.what());
                            }
                          }
                        });
    });
    if (options_.validate_progress) options_.validate_progress(split.name, last, n);
  }
  std::vector<std::pair<std::size_t, std::string>> sorted(errors.begin(), errors.end());
  std::sort(sorted.begin(), sorted.end());
  for (const auto& [i, message] : sorted) {
    const std::string path = (split.base / std::string(split.files.path(i))).string();
    skipped.push_back(SkippedInput{path, reason_of(message, path)});
  }
  return bad;
}

// skip_bad: decodes every file once, so that counts are exact before anything is written.
void PhotoSource::validate() const {
  std::lock_guard<std::mutex> lock(mutex_);
  if (validated_ || !options_.skip_bad) return;
  for (std::size_t s = 0; s < scan_.splits.size(); ++s) {
    bad_[s] = validate_split(scan_.splits[s], skipped_);
  }
  validated_ = true;
}

std::vector<SplitInfo> PhotoSource::splits() const {
  validate();
  std::vector<SplitInfo> out;
  for (std::size_t s = 0; s < scan_.splits.size(); ++s) {
    const ImageSplit& split = scan_.splits[s];
    SplitInfo info;
    info.name = split.name;
    info.count = split.files.size();
    if (!bad_[s].empty()) {
      info.count -= static_cast<std::uint64_t>(std::count(bad_[s].begin(), bad_[s].end(), 1));
    }
    info.class_names = scan_.class_names;
    info.variable_size = !options_.resize.has_value();
    info.shape = options_.resize ? Shape{options_.resize->first, options_.resize->second,
                                         options_.channels}
                                 : Shape{0, 0, options_.channels};
    out.push_back(std::move(info));
  }
  return out;
}

std::unique_ptr<BatchStream> PhotoSource::open(const std::string& split) const {
  validate();
  for (std::size_t s = 0; s < scan_.splits.size(); ++s) {
    if (scan_.splits[s].name != split) continue;
    const std::vector<char>* bad = bad_[s].empty() ? nullptr : &bad_[s];
    return std::make_unique<PhotoStream>(scan_.splits[s], options_, bad);
  }
  std::vector<std::string> names;
  for (const auto& s : scan_.splits) names.push_back(s.name);
  throw UsageError(fmt::format("{} has no split '{}' (it has: {})", description_, split,
                               fmt::join(names, ", ")));
}

std::vector<SkippedInput> PhotoSource::skipped_inputs() const {
  validate();
  std::vector<SkippedInput> out;
  for (const BadInput& b : scan_.bad) out.push_back(SkippedInput{b.path, reason_of(b.message, b.path)});
  std::lock_guard<std::mutex> lock(mutex_);
  out.insert(out.end(), skipped_.begin(), skipped_.end());
  return out;
}

std::vector<std::pair<std::string, std::uint64_t>> PhotoSource::ignored_entries() const {
  std::vector<std::pair<std::string, std::uint64_t>> out;
  for (std::size_t i = 0; i < kSkipReasons; ++i) {
    if (scan_.skipped[i] == 0) continue;
    out.emplace_back(skip_reason_name(static_cast<SkipReason>(i)), scan_.skipped[i]);
  }
  return out;
}

// Checks the photo options once, for every photo source.
void check_photo_options(const SourceOptions& o) {
  if (o.channels != 1 && o.channels != 3) {
    throw UsageError(fmt::format("photos convert to 1 (L) or 3 (RGB) channels, not {}",
                                 o.channels));
  }
  if (resize_options(o) > 1) {
    throw UsageError("choose one of resize, resize-short and max-side");
  }
  if (o.resize && (o.resize->first == 0 || o.resize->second == 0)) {
    throw UsageError("resize needs a height and a width of at least 1");
  }
  if (o.jpeg_quality < 1 || o.jpeg_quality > 100) {
    throw UsageError(fmt::format("JPEG quality {} is not in 1..100", o.jpeg_quality));
  }
  if (o.max_pixels == 0) throw UsageError("max-pixels must be at least 1");
}

ScanOptions scan_options(const SourceOptions& o) {
  ScanOptions s;
  s.skip_bad = o.skip_bad;
  return s;
}

}  // namespace

std::unique_ptr<Source> open_image_folder(const fs::path& root, const SourceOptions& options) {
  check_photo_options(options);
  return std::make_unique<PhotoSource>(fmt::format("image folder {}", quote(root)),
                                       scan_image_folder(root, scan_options(options)), options);
}

std::unique_ptr<Source> open_image_list(const fs::path& csv, const SourceOptions& options) {
  check_photo_options(options);
  return std::make_unique<PhotoSource>(fmt::format("image list {}", quote(csv)),
                                       read_image_list(csv, scan_options(options)), options);
}

}  // namespace imgstore::detail
