// CIFAR python batches: a safe pickle reader that understands exactly what the CIFAR-10/100
// python files contain (dicts of bytes/str keys, int lists, a numpy uint8 array, str lists).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace imgstore::detail {

// One data batch (data_batch_N, test_batch, CIFAR-100 train/test). Pixels are converted from
// the file's CHW planes to HWC.
struct CifarPickleBatch {
  std::size_t count = 0;
  std::vector<std::uint8_t> pixels_hwc;  // count * 32*32*3
  std::vector<std::int64_t> labels;      // from label_key
};

// `label_key`: "labels" (CIFAR-10), "fine_labels" or "coarse_labels" (CIFAR-100).
// `what` names the file (and archive member) for error messages.
CifarPickleBatch parse_cifar_pickle_batch(const std::uint8_t* data, std::size_t size,
                                          const std::string& label_key, const std::string& what);

// batches.meta ("label_names") or CIFAR-100 meta ("fine_label_names"/"coarse_label_names").
std::vector<std::string> parse_cifar_pickle_names(const std::uint8_t* data, std::size_t size,
                                                  const std::string& names_key,
                                                  const std::string& what);

}  // namespace imgstore::detail
