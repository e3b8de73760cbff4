// imgstore-crop-bench: RandomResizedCrop per image on one thread, on JPEG photos (the real-photo
// fixture folder, or any folder), three ways at S = 224, 112, 64:
//   fused   the loader's path: decode_jpeg_crop at the DCT scale the crop needs, then resample
//   full    full decode (Pillow-exact) then crop + resample, as torchvision on PIL does
//   decode  the decode limit: the DCT-scaled decode alone, nothing after it
// and the ratios fused/full and fused/decode. Compare bench/crop_bench_torchvision.py.
//   imgstore-crop-bench [--dir DIR] [--seconds S]
// DIR is searched recursively for files whose bytes are JPEG; default: python3-skimage's photos.
// Figures only: nothing here asserts a speed.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>

#include "codecs/crop_transform.hpp"
#include "codecs/image_codec.hpp"

using namespace imgstore;
using namespace imgstore::detail;
using Clock = std::chrono::steady_clock;

namespace {

// Every JPEG under `dir` (by magic bytes), as a record with its decoded shape.
std::vector<EncodedRecord> load_jpegs(const std::filesystem::path& dir) {
  std::vector<EncodedRecord> out;
  std::vector<std::filesystem::path> files;
  for (const auto& e : std::filesystem::recursive_directory_iterator(dir)) {
    if (e.is_regular_file()) files.push_back(e.path());
  }
  std::sort(files.begin(), files.end());
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::vector<std::uint8_t> bytes{std::istreambuf_iterator<char>(in), {}};
    if (sniff_image(bytes.data(), bytes.size()) != ImageKind::Jpeg) continue;
    try {
      const ImageInfo info = read_image_info(bytes.data(), bytes.size(), f.string());
      EncodedRecord r;
      r.shape = Shape{info.height, info.width, 3};
      r.encoding = Encoding::Jpeg;
      r.bytes = std::move(bytes);
      out.push_back(std::move(r));
    } catch (const std::exception&) {
      // Unreadable flavours (truncated files) are not what this measures.
    }
  }
  return out;
}

// Runs one pass over all records repeatedly for about `seconds`; returns images per second.
template <class Fn>
double images_per_s(const std::vector<EncodedRecord>& recs, double seconds, Fn&& fn) {
  for (std::size_t i = 0; i < recs.size(); ++i) fn(i);  // warm-up: scratch, handles
  std::size_t n = 0;
  const auto start = Clock::now();
  double elapsed = 0;
  do {
    for (std::size_t i = 0; i < recs.size(); ++i) fn(i);
    n += recs.size();
    elapsed = std::chrono::duration<double>(Clock::now() - start).count();
  } while (elapsed < seconds);
  return static_cast<double>(n) / elapsed;
}

void run_size(const std::vector<EncodedRecord>& recs, std::uint32_t size, double seconds) {
  const CropTransform t = CropTransform::random_resized_crop(size);
  std::vector<CropPlan> plans;
  for (std::size_t i = 0; i < recs.size(); ++i) {
    plans.push_back(plan_crop(t, 0, 0, i, recs[i].shape.height, recs[i].shape.width));
  }
  std::vector<std::uint8_t> out(std::size_t{size} * size * 3);
  CropScratch scratch;
  EncodedRecord raw;
  raw.encoding = Encoding::Raw;
  const double fused = images_per_s(recs, seconds, [&](std::size_t i) {
    apply_crop(plans[i], recs[i], out.data(), scratch, "bench");
  });
  const double full = images_per_s(recs, seconds, [&](std::size_t i) {
    decode_image(recs[i].bytes.data(), recs[i].bytes.size(), 3, "bench", scratch.decoded);
    raw.shape = scratch.decoded.shape;
    raw.bytes.swap(scratch.decoded.pixels);  // no copy: lend the pixels to the record
    apply_crop(plans[i], raw, out.data(), scratch, "bench");
    raw.bytes.swap(scratch.decoded.pixels);
  });
  const double decode = images_per_s(recs, seconds, [&](std::size_t i) {
    decode_jpeg_crop(recs[i].bytes.data(), recs[i].bytes.size(), plans[i].window, size, size, 3,
                     "bench", scratch.scaled);
  });
  std::printf("%4u  %10.0f  %10.0f  %10.0f  %12.2f  %14.2f\n", size, fused, full, decode,
              fused / full, fused / decode);
}

}  // namespace

int main(int argc, char** argv) {
  std::string dir = "/usr/lib/python3/dist-packages/skimage/data";
  double seconds = 1.0;
  CLI::App app{"RandomResizedCrop per image: fused JPEG crop decode vs full decode, one thread"};
  app.add_option("--dir", dir, "folder searched recursively for JPEG files");
  app.add_option("--seconds", seconds, "time per figure");
  CLI11_PARSE(app, argc, argv);
  const auto recs = load_jpegs(dir);
  if (recs.empty()) {
    std::fprintf(stderr, "no JPEG files under %s\n", dir.c_str());
    return 1;
  }
  double pixels = 0;
  for (const auto& r : recs) pixels += double(r.shape.height) * r.shape.width;
  std::printf("%zu JPEG images under %s, mean %.0f pixels; images/s on one thread\n", recs.size(),
              dir.c_str(), pixels / double(recs.size()));
  std::printf("   S       fused        full      decode  fused/full  fused/decode\n");
  for (std::uint32_t size : {224u, 112u, 64u}) run_size(recs, size, seconds);
  return 0;
}
