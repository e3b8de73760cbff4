// CIFAR .tar.gz archives through open_source(). An input starting with the gzip magic is
// written as it is; anything else is taken as a tar stream and gzipped by the target, so the
// fuzzer can work on tar headers and member contents rather than on deflate bits.
#include <zlib.h>

#include "fuzz_common.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

namespace {

std::string gzip(const std::uint8_t* data, std::size_t size) {
  z_stream z{};
  if (deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    fuzz::fail("deflateInit2");
  }
  std::string out(deflateBound(&z, size) + 32, '\0');
  z.next_in = const_cast<Bytef*>(data);
  z.avail_in = static_cast<uInt>(size);
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) fuzz::fail("deflate");
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto dir = fuzz::fresh_dir("archive");
  const auto file = dir / "cifar-10-binary.tar.gz";
  if (size >= 2 && data[0] == 0x1f && data[1] == 0x8b) {
    fuzz::write_file(file, data, size);
  } else {
    fuzz::write_file(file, gzip(data, size));
  }
  for (const char* label_set : {"fine", "coarse"}) {
    try {
      SourceOptions options;
      options.label_set = label_set;
      fuzz::drain_source(*open_source(file.string(), options));
    } catch (const Error&) {
    }
  }
  // Nothing may be extracted next to the archive (members are read in place).
  std::size_t entries = 0;
  for (auto it = fs::directory_iterator(dir); it != fs::directory_iterator(); ++it) ++entries;
  if (entries != 1) fuzz::fail("the archive reader wrote files beside the archive");
  return 0;
}
