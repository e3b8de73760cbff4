// imgstore-codec-bench: speed of the photo codecs (src/codecs/) on python3-skimage's photos:
// full JPEG decode vs the DCT-scaled crop decode the loader uses, and the resampler's time
// per image (Pillow-exact BILINEAR) for a whole-image resize to 224x224.
//   imgstore-codec-bench [--seconds S]   (each figure runs for about S seconds, default 1)
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "codecs/image_codec.hpp"
#include "codecs/resample.hpp"

using namespace imgstore::detail;
using Clock = std::chrono::steady_clock;

namespace {

std::vector<std::uint8_t> read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot open " + path + " (apt-get install python3-skimage)");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// Runs fn repeatedly for about `seconds`; returns microseconds per call.
template <class Fn>
double time_us(double seconds, Fn&& fn) {
  fn();  // warm-up: buffers and handles
  long n = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  do {
    fn();
    ++n;
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds);
  return elapsed * 1e6 / n;
}

}  // namespace

int main(int argc, char** argv) {
  double seconds = 1.0;
  CLI::App app{"Photo codec speed on skimage's photos"};
  app.add_option("--seconds", seconds, "time per figure");
  CLI11_PARSE(app, argc, argv);
  const std::string dir = "/usr/lib/python3/dist-packages/skimage/data/";

  std::printf("%-22s %11s %14s %14s %14s\n", "JPEG (1 thread)", "size", "full img/s",
              "crop->224 img/s", "DCT scale");
  for (const char* name : {"rocket.jpg", "retina.jpg", "hubble_deep_field.jpg"}) {
    const auto bytes = read_file(dir + name);
    const ImageInfo info = read_image_info(bytes.data(), bytes.size(), name);
    DecodedImage img;
    ScaledCrop sc;
    // A RandomResizedCrop-like crop: the central 60% of each side, to 224x224.
    const CropRect crop{info.width / 5, info.height / 5, info.width * 3 / 5, info.height * 3 / 5};
    const double full = time_us(seconds, [&] {
      decode_image(bytes.data(), bytes.size(), 3, name, img);
    });
    const double cropped = time_us(seconds, [&] {
      decode_jpeg_crop(bytes.data(), bytes.size(), crop, 224, 224, 3, name, sc);
    });
    std::printf("%-22s %5ux%-5u %14.0f %14.0f %13s\n", name, info.width, info.height,
                1e6 / full, 1e6 / cropped, ("1/" + std::to_string(sc.scale_denom)).c_str());
  }

  std::printf("\n%-22s %11s %14s %14s\n", "resize -> 224x224", "size", "bilinear us",
              "bicubic us");
  for (const char* name : {"chelsea.png", "rocket.jpg", "astronaut.png", "coffee.png"}) {
    const auto bytes = read_file(dir + name);
    DecodedImage img;
    decode_image(bytes.data(), bytes.size(), 3, name, img);
    std::vector<std::uint8_t> out(224 * 224 * 3);
    const ResizeBox box{0, 0, static_cast<float>(img.shape.width),
                        static_cast<float>(img.shape.height)};
    double us[2];
    int i = 0;
    for (auto f : {ResampleFilter::Bilinear, ResampleFilter::Bicubic}) {
      us[i++] = time_us(seconds, [&] {
        resize(img.pixels.data(), img.shape.width, img.shape.height, 3, box, 224, 224,
               out.data(), f);
      });
    }
    std::printf("%-22s %5ux%-5u %14.0f %14.0f\n", name, img.shape.width, img.shape.height,
                us[0], us[1]);
  }
  return 0;
}
