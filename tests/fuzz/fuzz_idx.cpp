// MNIST-style IDX through open_source(). The input packs two files separated by
// kPartSeparator: the images file, then the labels file (missing if there is no separator).
// Built twice: fuzz_idx writes them as train-{images-idx3,labels-idx1}-ubyte; fuzz_idx_gz
// (IMGSTORE_FUZZ_GZIP) as *.gz, each part gzipped by the target unless it already starts with
// the gzip magic, so the fuzzer explores both the IDX structure and raw gzip streams.
#include <zlib.h>

#include "fuzz_common.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

namespace {

#ifdef IMGSTORE_FUZZ_GZIP
std::string gzip(std::string_view raw) {
  if (raw.size() >= 2 && static_cast<unsigned char>(raw[0]) == 0x1f &&
      static_cast<unsigned char>(raw[1]) == 0x8b) {
    return std::string(raw);
  }
  z_stream z{};
  if (deflateInit2(&z, 1, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) != Z_OK) {
    fuzz::fail("deflateInit2");
  }
  std::string out(deflateBound(&z, raw.size()) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  z.avail_in = static_cast<uInt>(raw.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  if (deflate(&z, Z_FINISH) != Z_STREAM_END) fuzz::fail("deflate");
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}
#endif

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
#ifdef IMGSTORE_FUZZ_GZIP
  const char* dir_name = "idx-gz";
  const std::string suffix = ".gz";
#else
  const char* dir_name = "idx";
  const std::string suffix;
#endif
  const auto parts = fuzz::split_parts(data, size, 2);
  const auto dir = fuzz::fresh_dir(dir_name);
  const std::string names[2] = {"train-images-idx3-ubyte", "train-labels-idx1-ubyte"};
  for (std::size_t i = 0; i < parts.size(); ++i) {
#ifdef IMGSTORE_FUZZ_GZIP
    fuzz::write_file(dir / (names[i] + suffix), gzip(parts[i]));
#else
    fuzz::write_file(dir / (names[i] + suffix), parts[i]);
#endif
  }
  try {
    fuzz::drain_source(*open_source(dir.string()));
  } catch (const Error&) {
  }
  // The single-file form finds its labels beside it.
  try {
    fuzz::drain_source(*open_source((dir / (names[0] + suffix)).string()));
  } catch (const Error&) {
  }
  return 0;
}
