// CIFAR-10/100 binary folders through open_source(). The input packs the folder's files,
// separated by kPartSeparator:
//   7 parts: CIFAR-10  batches.meta.txt, data_batch_1..5.bin, test_batch.bin
//   4 parts: CIFAR-100 fine_label_names.txt, coarse_label_names.txt, train.bin, test.bin
//            (read with both label sets)
//   other counts: a CIFAR-10 folder with the files that are missing left out.
#include "fuzz_common.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::vector<std::string> kCifar10 = {
      "batches.meta.txt", "data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin",
      "data_batch_4.bin", "data_batch_5.bin", "test_batch.bin"};
  static const std::vector<std::string> kCifar100 = {"fine_label_names.txt",
                                                     "coarse_label_names.txt", "train.bin",
                                                     "test.bin"};
  const auto parts = fuzz::split_parts(data, size, kCifar10.size());
  const bool is100 = parts.size() == kCifar100.size();
  const auto& names = is100 ? kCifar100 : kCifar10;
  const auto dir = fuzz::fresh_dir("cifar-binary");
  for (std::size_t i = 0; i < parts.size(); ++i) fuzz::write_file(dir / names[i], parts[i]);

  for (const char* label_set : {"fine", "coarse"}) {
    try {
      SourceOptions options;
      options.label_set = label_set;
      fuzz::drain_source(*open_source(dir.string(), options));
    } catch (const Error&) {
    }
    if (!is100) break;  // CIFAR-10 has one label set
  }
  return 0;
}
