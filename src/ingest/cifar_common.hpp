// Shared pieces of the CIFAR-10/100 readers (binary folder, python folder, archives): the
// layouts' file names, record formats, class-name files, CHW->HWC conversion, and a binary
// record stream that works over any sequence of files or archive members.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "imgstore/image.hpp"
#include "imgstore/source.hpp"

namespace imgstore::detail::cifar {

inline constexpr std::uint32_t kSide = 32;
inline constexpr std::uint32_t kChannels = 3;
inline constexpr std::size_t kPlaneBytes = std::size_t{kSide} * kSide;    // 1024
inline constexpr std::size_t kImageBytes = kPlaneBytes * kChannels;      // 3072
// One next() call never returns more than this many records (about one batch file, 30 MB),
// whatever max_records the caller asks for: it bounds the memory a conversion holds.
inline constexpr std::size_t kMaxRecordsPerNext = 10000;
// Largest class-name file we read (the real ones are under 1 KiB).
inline constexpr std::size_t kMaxNamesBytes = std::size_t{1} << 20;

inline Shape shape() { return Shape{kSide, kSide, kChannels}; }

enum class Dataset { Cifar10, Cifar100 };

// Which label column and how many classes; throws UsageError for an unknown label_set.
struct LabelChoice {
  bool coarse = false;  // CIFAR-100 only
  int classes = 10;
};
LabelChoice label_choice(Dataset dataset, const SourceOptions& options);

// File names of one layout (relative to the folder or archive top directory).
struct Layout {
  Dataset dataset = Dataset::Cifar10;
  bool python = false;
  std::vector<std::string> train;  // in split order
  std::vector<std::string> test;
  std::string names_file;          // batches.meta.txt, fine_label_names.txt, batches.meta, meta
  std::string names_key;           // python only: key in the names pickle
  std::string label_key;           // python only: key in the batch pickles
};
Layout binary_layout(Dataset dataset, const LabelChoice& labels);
Layout python_layout(Dataset dataset, const LabelChoice& labels);

// Binary record layout: [coarse label] label, then 1024 R, 1024 G, 1024 B bytes.
struct RecordFormat {
  std::size_t label_offset = 0;  // CIFAR-10: 0; CIFAR-100: 0 coarse, 1 fine
  std::size_t header_bytes = 1;  // CIFAR-10: 1; CIFAR-100: 2
  int classes = 10;
  std::size_t record_bytes() const { return header_bytes + kImageBytes; }
};
RecordFormat record_format(Dataset dataset, const LabelChoice& labels);

// Converts one image from CHW planes to HWC.
void chw_to_hwc(const std::uint8_t* chw, std::uint8_t* hwc);

// Parses a text file of class names, one per line (trailing blank lines and '\r' ignored).
// Throws DataError naming `what` unless exactly `expected` non-empty names are found.
std::vector<std::string> parse_names_text(const std::uint8_t* data, std::size_t size,
                                          std::size_t expected, const std::string& what);

// Throws DataError unless `label` is in [0, classes).
void check_label(std::int64_t label, int classes, const std::string& what,
                 std::uint64_t record_in_file, std::uint64_t split_index);

// One file or archive member of a split, and how many records it holds.
struct Part {
  std::string what;  // for messages: "'dir/data_batch_1.bin'" or "'x.tar.gz' member '...'"
  std::uint64_t records = 0;
};

// Number of records in a binary part of `bytes` bytes; DataError if not a whole number.
std::uint64_t records_in(std::uint64_t bytes, const RecordFormat& format, const std::string& what);

// CIFAR-10's six batch files all hold the same number of records (10000 in the real data);
// throws DataError naming the first that differs from the first one.
void check_sibling_counts(const std::vector<Part>& parts);

// The parts of the "train" and "test" splits (in that order) of a layout whose files are all
// required: part_of(split, name) locates and measures one file or archive member. For CIFAR-10,
// also checks that the batches hold the same number of records.
using PartOf = std::function<Part(std::size_t split, const std::string& name)>;
std::vector<std::vector<Part>> layout_parts(const Layout& layout, const PartOf& part_of);

// The SplitInfo of the "train" and "test" splits made of these parts.
std::vector<SplitInfo> split_infos(const std::vector<std::vector<Part>>& parts,
                                   const std::vector<std::string>& class_names);

// A source's description: `head`, then the label set for CIFAR-100 (CIFAR-10 has only one).
std::string describe(std::string head, Dataset dataset, const LabelChoice& labels);

// Reads the bytes of one part after another. open(i) is called with i = 0, 1, 2... in order.
class PartReader {
 public:
  virtual ~PartReader() = default;
  virtual void open(std::size_t part) = 0;
  // Reads exactly n bytes of the current part; DataError/IoError naming it if it ends early.
  virtual void read_exact(std::uint8_t* dst, std::size_t n) = 0;
};

// A BatchStream over binary parts: validates labels and converts CHW to HWC, holding at most
// kMaxRecordsPerNext raw records at a time.
std::unique_ptr<BatchStream> make_binary_stream(std::vector<Part> parts, RecordFormat format,
                                                std::unique_ptr<PartReader> reader);

// A Source whose splits are fixed at open time and whose streams come from a factory.
class CifarSource : public Source {
 public:
  using Opener = std::function<std::unique_ptr<BatchStream>(std::size_t split)>;
  CifarSource(std::string description, std::vector<SplitInfo> splits, Opener opener)
      : description_(std::move(description)), splits_(std::move(splits)),
        opener_(std::move(opener)) {}
  std::string description() const override { return description_; }
  std::vector<SplitInfo> splits() const override { return splits_; }
  std::unique_ptr<BatchStream> open(const std::string& split) const override;

 private:
  std::string description_;
  std::vector<SplitInfo> splits_;
  Opener opener_;
};

}  // namespace imgstore::detail::cifar
