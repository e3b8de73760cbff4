// The CIFAR python batch and meta parsers (src/ingest/cifar_pickle.hpp) on raw bytes, with the
// CIFAR-10 and CIFAR-100 keys.
#include "fuzz_common.hpp"
#include "ingest/cifar_pickle.hpp"

using namespace imgstore;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::uint8_t> bytes(data, data + size);
  const std::string what = "'fuzz/data_batch_1'";
  for (const char* key : {"labels", "coarse_labels"}) {
    try {
      auto batch = detail::parse_cifar_pickle_batch(bytes.data(), bytes.size(), key, what);
      if (batch.pixels_hwc.size() != batch.count * 32 * 32 * 3) fuzz::fail("pixel count");
      if (batch.labels.size() != batch.count) fuzz::fail("label count");
    } catch (const Error&) {
    }
  }
  for (const char* key : {"label_names", "fine_label_names"}) {
    try {
      (void)detail::parse_cifar_pickle_names(bytes.data(), bytes.size(), key, what);
    } catch (const Error&) {
    }
  }
  return 0;
}
