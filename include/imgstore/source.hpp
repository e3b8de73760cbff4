// Sources: where images come from. Each yields its splits as streams of batches, so a
// conversion never holds a whole data set in memory.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "imgstore/image.hpp"
#include "imgstore/manifest.hpp"  // SkippedInput

namespace imgstore {

struct SplitInfo {
  std::string name;     // "train", "test"
  std::uint64_t count = 0;
  Shape shape;  // variable_size: only channels is set (H = W = 0)
  std::vector<std::string> class_names;
  bool variable_size = false;  // records differ in H and W (image folders); see ImageBatch
};

// A forward-only stream of one split's records, in index order.
class BatchStream {
 public:
  virtual ~BatchStream() = default;
  // Fills `out` with the next records (at most about max_records); false at the end.
  virtual bool next(ImageBatch& out, std::size_t max_records) = 0;
};


class Source {
 public:
  virtual ~Source() = default;
  // e.g. "CIFAR-10 binary '/data/cifar-10-batches-bin'"
  virtual std::string description() const = 0;
  virtual std::vector<SplitInfo> splits() const = 0;
  // Throws UsageError if the split does not exist.
  virtual std::unique_ptr<BatchStream> open(const std::string& split) const = 0;
  // Bad inputs left out (skip_bad): the scan's (empty class, broken link...) first, then files
  // that do not decode, in split and file order. Complete once splits() has returned.
  virtual std::vector<SkippedInput> skipped_inputs() const { return {}; }
  // Directory entries that are not images and were never taken, counted per reason
  // ("hidden", "other extension", ...); only reasons with a count > 0.
  virtual std::vector<std::pair<std::string, std::uint64_t>> ignored_entries() const {
    return {};
  }
};

// PIL's decompression-bomb limit (twice Image.MAX_IMAGE_PIXELS), the photos' default.
inline constexpr std::uint64_t kDefaultMaxPixels = 2 * 89'478'485ull;

struct SourceOptions {
  // CIFAR-100: which label column to use, "fine" or "coarse".
  std::string label_set = "fine";

  // ---- Image folders and list files (photos); other sources ignore these. ----
  // Channels of every record: 3 = RGB, 1 = L, converted as PIL's convert("RGB"/"L").
  std::uint32_t channels = 3;
  // Every record resized to height x width (antialiased bilinear, as PIL's resize): the split
  // is fixed-size. Otherwise it is variable-size (SplitInfo::variable_size).
  std::optional<std::pair<std::uint32_t, std::uint32_t>> resize;
  // Short side to S, long side int(S * long / short), as torchvision's Resize(S). Also enlarges.
  std::uint32_t resize_short = 0;
  // Only images whose long side is above S shrink, to long side S and short side
  // floor(short * S / long) (at least 1), as FFCV's max_resolution.
  std::uint32_t max_side = 0;
  // Resizes of JPEGs to half their size or less decode at libjpeg-turbo's DCT scale (1/2,
  // 1/4, 1/8: PIL's Image.draft) that still covers the target, then resample that: several
  // times faster on large photos, but no longer PIL's resize() bit for bit (PSNR in
  // docs/photos.md). Off: full decode, then resize, exactly as PIL.
  bool jpeg_dct_scaling = false;
  // Decoding refuses images of more pixels, from the header, before allocating (PIL's bomb
  // limit: twice Image.MAX_IMAGE_PIXELS).
  std::uint64_t max_pixels = kDefaultMaxPixels;
  // false: the first bad file throws DataError naming it. true: bad files are left out and
  // listed by Source::skipped_inputs(); to keep SplitInfo::count exact before anything is
  // written, splits() first reads and fully decodes every file once (in parallel), so a
  // conversion decodes each image twice.
  bool skip_bad = false;
  // skip_bad: called on the calling thread during that first pass with (split, files checked,
  // files in the split), first with 0 checked; it may throw to stop.
  std::function<void(const std::string&, std::uint64_t, std::uint64_t)> validate_progress;
  // Decoding threads; 0 = TBB's default (all cores, or the process's global_control limit).
  unsigned threads = 0;
  // false (every writer stores JPEG): batches carry only payload_encoding = Jpeg payloads and
  // no pixels. A JPEG whose components already are `channels` and that is not resized is
  // passed through byte for byte without decoding (header check only, plus a full decode if
  // its end-of-image marker is missing); any other file is decoded, converted, resized and
  // encoded at jpeg_quality.
  bool need_pixels = true;
  // With need_pixels, also fill the JPEG payload (pass-through or re-encoded) of every record.
  bool keep_jpeg_payload = false;
  int jpeg_quality = 90;  // 1..100, for payloads that are encoded here
};

// Opens whatever `spec` names, detecting the kind:
//   a CIFAR-10/100 folder (binary or python) or its .tar.gz archive,
//   an MNIST/Fashion-MNIST IDX folder or *-images-idx3-ubyte[.gz] file,
//   an imgstore store (PNG folder, LMDB, HDF5, or a tutorial-layout HDF5 file),
//   an image folder (ROOT/<class>/..., or ROOT/{train,val,test}/<class>/...) or a list file
//   (*.csv: path,label[,split][,class]) of JPEG/PNG photos,
//   "synthetic:n=1000,h=32,w=32,c=3,classes=10,seed=1[,split=train]" for generated data.
// Throws IoError if it does not exist, DataError if it is not a source we know.
std::unique_ptr<Source> open_source(const std::string& spec, const SourceOptions& options = {});

}  // namespace imgstore
