// Sources: where images come from. Each yields its splits as streams of batches, so a
// conversion never holds a whole data set in memory.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "imgstore/image.hpp"

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
};

struct SourceOptions {
  // CIFAR-100: which label column to use, "fine" or "coarse".
  std::string label_set = "fine";
};

// Opens whatever `spec` names, detecting the kind:
//   a CIFAR-10/100 folder (binary or python) or its .tar.gz archive,
//   an MNIST/Fashion-MNIST IDX folder or *-images-idx3-ubyte[.gz] file,
//   an imgstore store (PNG folder, LMDB, HDF5, or a tutorial-layout HDF5 file),
//   "synthetic:n=1000,h=32,w=32,c=3,classes=10,seed=1[,split=train]" for generated data.
// Throws IoError if it does not exist, DataError if it is not a source we know.
std::unique_ptr<Source> open_source(const std::string& spec, const SourceOptions& options = {});

}  // namespace imgstore
