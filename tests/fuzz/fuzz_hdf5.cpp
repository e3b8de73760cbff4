// HDF5 stores (imgstore layout and the tutorial's /images + /meta layout) through
// open_store(): the input is the whole .h5 file. Reads run with checksum verification on
// and off. Afterwards no HDF5 object may remain open: a leaked hid_t on an error path would
// keep the file open for the life of the process.
#include <hdf5.h>

#include "fuzz_common.hpp"

using namespace imgstore;
namespace fs = std::filesystem;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const auto file = fuzz::fresh_dir("hdf5") / "train.h5";
  fuzz::write_file(file, data, size);
  for (bool verify : {true, false}) {
    try {
      ReaderOptions options;
      options.verify_checksums = verify;
      fuzz::drain_store(*open_store(file, options));
    } catch (const Error&) {
    }
  }
  if (H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL) != 0) {
    fuzz::fail("HDF5 objects left open after the reader was destroyed");
  }
  return 0;
}
