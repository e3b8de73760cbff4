// Stores one image in each format and reads it back through the installed imgstore::core.
#include <imgstore/store.hpp>

#include <cstdio>
#include <string>

int main(int argc, char** argv) {
  if (argc != 2) return 2;
  const std::string dir = argv[1];
  const imgstore::Shape shape{2, 3, 1};
  const std::uint8_t pixels[6] = {1, 2, 3, 4, 5, 6};
  for (auto format : imgstore::all_formats()) {
    const std::string path = dir + "/one." + imgstore::to_string(format);
    imgstore::store_one(format, path, shape, pixels, 7);
    std::int64_t label = -1;
    auto back = imgstore::open_store(path)->read_one(0, &label);
    if (label != 7 || back != std::vector<std::uint8_t>(pixels, pixels + 6)) return 1;
    std::printf("ok: %s\n", path.c_str());
  }
  return 0;
}
