// imgstore-png-decode-bench: the PNG decode limit, measured honestly (issue #12). Encodes N
// generated CIFAR-sized images once with imgstore's encoder (the files its stores hold), then
// decodes them from memory on one thread with every decoder Debian offers:
//   imgstore (lean path), libpng (classic API as imgstore configures it), libpng's simplified
//   API, libspng, and the inflate step alone through zlib and through libdeflate.
// Each decoder's output is checked against imgstore's before timing. Passes are interleaved;
// the median of --repeats passes is reported.
//
//   imgstore-png-decode-bench [--count 20000] [--shape 32x32x3] [--level 6] [--repeats 5]

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <vector>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "detail/png_codec.hpp"
#include "common/limits.hpp"
#include "detail/png_decode_limit.hpp"
#include "imgstore/error.hpp"
#include "imgstore/source.hpp"

namespace {

using imgstore::Shape;
}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Single-thread, from-memory PNG decode rates of every available decoder"};
  std::uint64_t count = 20000;
  std::string shape_text = "32x32x3";
  int level = 6;
  int repeats = 5;
  std::uint64_t seed = 1;
  app.add_option("--count", count, "number of images")->check(CLI::Range(1, 10000000));
  app.add_option("--shape", shape_text, "HxWxC of each image");
  app.add_option("--level", level, "zlib level of imgstore's encoder")->check(CLI::Range(0, 9));
  app.add_option("--repeats", repeats, "timed passes per decoder (median)")
      ->check(CLI::Range(1, 101));
  app.add_option("--seed", seed, "synthetic source seed");
  CLI11_PARSE(app, argc, argv);

  try {
    unsigned h = 0, w = 0, c = 0;
    if (std::sscanf(shape_text.c_str(), "%ux%ux%u", &h, &w, &c) != 3) {
      throw imgstore::UsageError(fmt::format("--shape '{}' is not HxWxC", shape_text));
    }
    // Generated images with natural-image statistics (they compress like CIFAR-10).
    auto source = imgstore::open_source(fmt::format(
        "synthetic:n={},test=0,h={},w={},c={},classes=10,seed={}", count, h, w, c, seed));
    auto stream = source->open("train");
    imgstore::ImageBatch batch;
    std::vector<std::vector<std::uint8_t>> pngs;
    std::uint64_t png_bytes = 0;
    while (stream->next(batch, 4096)) {
      for (std::size_t i = 0; i < batch.size(); ++i) {
        pngs.emplace_back();
        imgstore::detail::encode_png(batch.image(i), batch.shape, level, pngs.back());
        png_bytes += pngs.back().size();
      }
    }
    const Shape shape = batch.shape;

    // The core's decoders and libspng, each checked against imgstore's output first.
    const auto timings = imgstore::bench::png_decoder_timings(pngs, shape, repeats);

    const auto fastest = imgstore::detail::fastest_png_decoder(timings);
    double libpng_simplified = 0;
    for (const auto& t : timings) {
      if (t.name == "libpng-simplified") libpng_simplified = t.seconds_per_image;
    }
    fmt::print("{} PNGs of {} (imgstore encoder, level {}), {:.0f} bytes each on average; one "
               "thread, from memory, median of {} passes\n\n",
               pngs.size(), to_string(shape), level,
               static_cast<double>(png_bytes) / static_cast<double>(pngs.size()), repeats);
    fmt::print("| decoder | img/s | µs per image | × libpng simplified | what it does |\n");
    fmt::print("|---|---:|---:|---:|---|\n");
    for (const auto& t : timings) {
      fmt::print("| {} | {:.0f} | {:.2f} | {:.2f} | {} |\n", t.name, 1.0 / t.seconds_per_image,
                 t.seconds_per_image * 1e6, libpng_simplified / t.seconds_per_image,
                 t.full_decode ? "full decode" : "inflate only");
    }
    fmt::print("\ndecode limit (fastest full decoder): {} at {:.0f} img/s per thread\n",
               fastest.name, 1.0 / fastest.seconds_per_image);
  } catch (const imgstore::Error& e) {
    fmt::print(stderr, "imgstore-png-decode-bench: {}\n", e.what());
    return 1;
  }
  return 0;
}
