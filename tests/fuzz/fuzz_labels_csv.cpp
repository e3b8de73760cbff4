// The PNG folder's labels.csv. A valid 3-record PNG folder store is made once; each input
// replaces its labels.csv, and the store is opened and read whole with checksum verification
// on and off (off, so labels that parse but disagree with the manifest reach the output).
#include "fixtures.hpp"
#include "fuzz_common.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

namespace {

const fs::path& template_store() {
  static const fs::path path = [] {
    const auto dir = fuzz::fresh_dir("png-template");
    const ImageBatch images = fixtures::make_images(3, Shape{4, 5, 3}, 10, 7);
    WriterOptions options;
    options.durable = false;
    store_many(Format::PngFolder, dir / "train.png", images,
               {"a", "b", "c", "d", "e", "f", "g", "h", "i", "j"}, options);
    return dir / "train.png";
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const fs::path& store = template_store();
  fuzz::write_file(store / "labels.csv", data, size);
  for (bool verify : {true, false}) {
    try {
      ReaderOptions options;
      options.verify_checksums = verify;
      auto reader = open_store(store, options);
      fuzz::drain_store(*reader);
      for (std::size_t i = 0; i < reader->size(); ++i) {
        std::int64_t label = -1;
        reader->read_one(i, &label);
        const auto& names = reader->manifest().class_names;
        if (!names.empty() && (label < 0 || static_cast<std::size_t>(label) >= names.size())) {
          fuzz::fail("a label outside the class names reached the caller");
        }
      }
    } catch (const Error&) {
    }
  }
  return 0;
}
