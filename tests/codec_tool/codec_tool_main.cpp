// imgstore-codec-tool: the photo codecs (src/codecs/) from the command line, so that
// tests/python/test_codecs_pil.py can compare them with Pillow on the same files.
//   info FILE                                   -> one line: key=value ...
//   decode FILE CHANNELS OUT.raw                -> "H W C", raw HWC pixels in OUT.raw
//   crop FILE X Y W H OUT_W OUT_H CHANNELS OUT.raw -> "H W C DENOM X0 Y0 X1 Y1"
//   resize IN.raw H W C X0 Y0 X1 Y1 OUT_W OUT_H bilinear|bicubic OUT.raw
//   encode IN.raw H W C QUALITY OUT.jpg
//   rrc-plan H W SIZE SEED EPOCH COUNT          -> COUNT lines "x y w h fallback" (records 0..)
//   transform FILE fused|raw SIZE OUT.raw eval  -> Resize(SIZE*256/224) + CenterCrop(SIZE), RGB
//   transform FILE fused|raw SIZE OUT.raw X Y W H -> that crop resized to SIZE x SIZE, RGB
//     (fused: the JPEG payload as the loader reads it; raw: decoded first, the PIL-exact path)
// Errors: the message on stderr, exit status 1.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <iterator>
#include <string>
#include <vector>

#include "codecs/crop_transform.hpp"
#include "codecs/image_codec.hpp"
#include "codecs/resample.hpp"
#include "detail/random.hpp"
#include "imgstore/error.hpp"

using namespace imgstore;
using namespace imgstore::detail;

namespace {

std::vector<std::uint8_t> read_all(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError("cannot open '" + path + "'");
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_all(const std::string& path, const std::uint8_t* data, std::size_t size) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  if (!out.flush()) throw IoError("cannot write '" + path + "'");
}

std::uint32_t u32(const char* s) { return static_cast<std::uint32_t>(std::stoul(s)); }

int rrc_plan(char** argv) {
  const std::uint32_t h = u32(argv[2]), w = u32(argv[3]);
  const CropTransform t = CropTransform::random_resized_crop(u32(argv[4]));
  const std::uint64_t seed = std::stoull(argv[5]), epoch = std::stoull(argv[6]);
  const std::uint64_t count = std::stoull(argv[7]);
  for (std::uint64_t i = 0; i < count; ++i) {
    SplitMix rng(crop_seed(seed, epoch, i));  // the loader's stream for record i
    auto u = [&rng] { return static_cast<double>(rng.next() >> 11) * 0x1.0p-53; };
    const RrcParams p = rrc_params(h, w, t, u);
    std::printf("%u %u %u %u %d\n", p.j, p.i, p.w, p.h, p.fallback ? 1 : 0);
  }
  return 0;
}

int transform(int argc, char** argv) {
  const auto bytes = read_all(argv[2]);
  const bool fused = std::string(argv[3]) == "fused";
  const std::uint32_t size = u32(argv[4]);
  EncodedRecord rec;
  DecodedImage img;
  decode_image(bytes.data(), bytes.size(), 3, argv[2], img);
  rec.shape = img.shape;
  const bool jpeg = sniff_image(bytes.data(), bytes.size()) == ImageKind::Jpeg;
  rec.encoding = !fused ? Encoding::Raw : jpeg ? Encoding::Jpeg : Encoding::Png;
  rec.bytes = fused ? bytes : img.pixels;
  CropPlan plan;
  if (argc == 7) {
    plan = plan_crop(CropTransform::resize_center_crop(size), 0, 0, 0, img.shape.height,
                     img.shape.width);
  } else {
    const CropRect r{u32(argv[6]), u32(argv[7]), u32(argv[8]), u32(argv[9])};
    plan.window = r;
    plan.box = ResizeBox{float(r.x), float(r.y), float(r.x + r.width), float(r.y + r.height)};
    plan.out_h = plan.out_w = size;
  }
  std::vector<std::uint8_t> out(std::size_t{size} * size * 3);
  CropScratch scratch;
  apply_crop(plan, rec, out.data(), scratch, argv[2]);
  write_all(argv[5], out.data(), out.size());
  return 0;
}

int run(int argc, char** argv) {
  const std::string cmd = argc > 1 ? argv[1] : "";
  if (cmd == "info" && argc == 3) {
    const auto bytes = read_all(argv[2]);
    const ImageInfo i = read_image_info(bytes.data(), bytes.size(), argv[2]);
    std::printf("kind=%s width=%u height=%u channels=%u bit_depth=%d palette=%d trns=%d "
                "interlaced=%d colorspace=%s subsampling=%s progressive=%d\n",
                image_kind_name(i.kind), i.width, i.height, i.channels, i.bit_depth, i.palette,
                i.has_transparency, i.interlaced, jpeg_colorspace_name(i.colorspace),
                i.subsampling.c_str(), i.progressive);
    return 0;
  }
  if (cmd == "decode" && argc == 5) {
    const auto bytes = read_all(argv[2]);
    DecodedImage img;
    decode_image(bytes.data(), bytes.size(), u32(argv[3]), argv[2], img);
    write_all(argv[4], img.pixels.data(), img.pixels.size());
    std::printf("%u %u %u\n", img.shape.height, img.shape.width, img.shape.channels);
    return 0;
  }
  if (cmd == "crop" && argc == 11) {
    const auto bytes = read_all(argv[2]);
    const CropRect crop{u32(argv[3]), u32(argv[4]), u32(argv[5]), u32(argv[6])};
    ScaledCrop sc;
    decode_jpeg_crop(bytes.data(), bytes.size(), crop, u32(argv[7]), u32(argv[8]), u32(argv[9]),
                     argv[2], sc);
    write_all(argv[10], sc.image.pixels.data(), sc.image.pixels.size());
    std::printf("%u %u %u %d %.9g %.9g %.9g %.9g\n", sc.image.shape.height,
                sc.image.shape.width, sc.image.shape.channels, sc.scale_denom, sc.box[0],
                sc.box[1], sc.box[2], sc.box[3]);
    return 0;
  }
  if (cmd == "resize" && argc == 14) {
    const auto src = read_all(argv[2]);
    const std::uint32_t h = u32(argv[3]), w = u32(argv[4]), c = u32(argv[5]);
    if (src.size() != std::size_t{h} * w * c) throw UsageError("raw size does not match H W C");
    const ResizeBox box{std::stof(argv[6]), std::stof(argv[7]), std::stof(argv[8]),
                        std::stof(argv[9])};
    const std::uint32_t ow = u32(argv[10]), oh = u32(argv[11]);
    const std::string f = argv[12];
    std::vector<std::uint8_t> dst(std::size_t{ow} * oh * c);
    resize(src.data(), w, h, c, box, ow, oh, dst.data(),
           f == "bicubic" ? ResampleFilter::Bicubic : ResampleFilter::Bilinear);
    write_all(argv[13], dst.data(), dst.size());
    return 0;
  }
  if (cmd == "encode" && argc == 8) {
    const auto src = read_all(argv[2]);
    const std::uint32_t h = u32(argv[3]), w = u32(argv[4]), c = u32(argv[5]);
    if (src.size() != std::size_t{h} * w * c) throw UsageError("raw size does not match H W C");
    std::vector<std::uint8_t> jpeg;
    encode_jpeg(src.data(), w, h, c, std::stoi(argv[6]), jpeg);
    write_all(argv[7], jpeg.data(), jpeg.size());
    return 0;
  }
  if (cmd == "rrc-plan" && argc == 8) return rrc_plan(argv);
  if (cmd == "transform" && (argc == 7 || argc == 10)) return transform(argc, argv);
  std::fprintf(stderr, "usage: see the comment at the top of codec_tool_main.cpp\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
}
