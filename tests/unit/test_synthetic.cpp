// Synthetic source: deterministic per (seed, split, index) whatever the chunking, labels in
// range, photo-like statistics (smooth but not flat), and strict spec parsing.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <set>

#include "imgstore/error.hpp"
#include "imgstore/source.hpp"
#include "ingest/sources.hpp"
#include "test_support.hpp"

using namespace imgstore;

TEST_CASE("synthetic defaults and splits") {
  auto source = open_source("synthetic");
  auto splits = source->splits();
  REQUIRE(splits.size() == 2);
  CHECK(splits[0].name == "train");
  CHECK(splits[0].count == 1000);
  CHECK(splits[0].shape == Shape{32, 32, 3});
  CHECK(splits[0].class_names.size() == 10);
  CHECK(splits[1].name == "test");
  CHECK(splits[1].count == 200);

  auto custom = open_source("synthetic:n=50,test=7,h=5,w=9,c=1,classes=3,seed=4");
  splits = custom->splits();
  CHECK(splits[0].count == 50);
  CHECK(splits[1].count == 7);
  CHECK(splits[0].shape == Shape{5, 9, 1});
  CHECK(splits[0].class_names.size() == 3);
  auto test = test::read_split(*custom, "test", 100);
  CHECK(test.size() == 7);
  CHECK(test.pixels.size() == 7u * 5 * 9);
  CHECK_THROWS_WITH_AS(custom->open("valid"), doctest::Contains("no split 'valid'"), UsageError);
}

TEST_CASE("synthetic images do not depend on chunking or on the opening") {
  auto a = detail::open_synthetic("n=300,seed=9");
  auto whole = test::read_split(*a, "train", 300);
  REQUIRE(whole.size() == 300);
  for (std::size_t chunk : {1, 7, 64}) {
    CAPTURE(chunk);
    auto got = test::read_split(*a, "train", chunk);
    CHECK(got.pixels == whole.pixels);
    CHECK(got.labels == whole.labels);
  }
  auto b = detail::open_synthetic("n=300,seed=9");
  auto again = test::read_split(*b, "train", 33);
  CHECK(again.pixels == whole.pixels);
  CHECK(again.labels == whole.labels);

  // A shorter n yields a prefix; split=test alone yields the same test images.
  auto prefix = test::read_split(*detail::open_synthetic("n=20,seed=9"), "train", 8);
  CHECK(std::equal(prefix.pixels.begin(), prefix.pixels.end(), whole.pixels.begin()));
  auto test_both = test::read_split(*a, "test", 16);
  auto only_test = detail::open_synthetic("n=300,seed=9,split=test");
  REQUIRE(only_test->splits().size() == 1);
  CHECK(test::read_split(*only_test, "test", 5).pixels == test_both.pixels);
  // Train and test differ.
  CHECK(!std::equal(test_both.pixels.begin(), test_both.pixels.end(), whole.pixels.begin()));
}

TEST_CASE("synthetic seeds differ and labels stay within classes") {
  auto one = test::read_split(*detail::open_synthetic("n=200,seed=1,classes=4"), "train", 50);
  auto two = test::read_split(*detail::open_synthetic("n=200,seed=2,classes=4"), "train", 50);
  CHECK(one.pixels != two.pixels);
  CHECK(one.labels != two.labels);
  std::set<std::int64_t> seen(one.labels.begin(), one.labels.end());
  CHECK(seen == std::set<std::int64_t>{0, 1, 2, 3});
  // Distinct images within one stream.
  CHECK(!std::equal(one.image(0), one.image(1), one.image(1)));
}

TEST_CASE("synthetic images look like photos: smooth, not flat, channels correlated") {
  auto batch = test::read_split(*detail::open_synthetic("n=64,seed=3"), "train", 64);
  const int h = 32, w = 32, c = 3;
  double neighbour = 0, random_pair = 0, var = 0, channel_diff = 0;
  std::size_t pairs = 0;
  for (std::size_t i = 0; i < batch.size(); ++i) {
    const std::uint8_t* p = batch.image(i);
    double mean = 0;
    for (int k = 0; k < h * w * c; ++k) mean += p[k];
    mean /= h * w * c;
    for (int y = 0; y < h; ++y) {
      for (int x = 0; x + 1 < w; ++x) {
        const int at = (y * w + x) * c;
        const int far = (((y + 13) % h) * w + (x + 17) % w) * c;
        neighbour += std::abs(p[at] - p[at + c]);
        random_pair += std::abs(p[at] - p[far]);
        var += (p[at] - mean) * (p[at] - mean);
        channel_diff += std::abs(p[at] - p[at + 1]);
        ++pairs;
      }
    }
  }
  neighbour /= pairs;
  random_pair /= pairs;
  channel_diff /= pairs;
  const double stddev = std::sqrt(var / pairs);
  CHECK(stddev > 15);                      // not flat
  CHECK(neighbour < 0.8 * random_pair);    // spatially correlated, unlike uniform noise
  CHECK(channel_diff < random_pair);       // colour channels move together
}

TEST_CASE("synthetic grey and RGBA images") {
  auto grey = test::read_split(*detail::open_synthetic("n=5,c=1,h=28,w=28"), "train", 5);
  CHECK(grey.shape == Shape{28, 28, 1});
  CHECK(grey.pixels.size() == 5u * 28 * 28);
  auto rgba = test::read_split(*detail::open_synthetic("n=3,c=4,h=6,w=3"), "train", 2);
  CHECK(rgba.shape == Shape{6, 3, 4});
  bool opaque = true;
  for (std::size_t i = 3; i < rgba.pixels.size(); i += 4) opaque = opaque && rgba.pixels[i] == 255;
  CHECK(opaque);
  auto tiny = test::read_split(*detail::open_synthetic("n=2,h=1,w=1"), "train", 2);
  CHECK(tiny.pixels.size() == 6);
}

TEST_CASE("synthetic spec errors are UsageErrors naming the key") {
  CHECK_THROWS_WITH_AS(detail::open_synthetic("n=10,size=3"),
                       doctest::Contains("unknown key 'size'"), UsageError);
  CHECK_THROWS_WITH_AS(detail::open_synthetic("h=abc"), doctest::Contains("h=abc is not a number"),
                       UsageError);
  CHECK_THROWS_WITH_AS(detail::open_synthetic("n=12x"), doctest::Contains("n=12x"), UsageError);
  CHECK_THROWS_WITH_AS(detail::open_synthetic("h=0"), doctest::Contains("h=0"), UsageError);
  CHECK_THROWS_WITH_AS(detail::open_synthetic("c=5"), doctest::Contains("c=5"), UsageError);
  CHECK_THROWS_WITH_AS(detail::open_synthetic("classes=0"), doctest::Contains("classes=0"),
                       UsageError);
  CHECK_THROWS_WITH_AS(detail::open_synthetic("n=-1"), doctest::Contains("n=-1"), UsageError);
  CHECK_THROWS_WITH_AS(detail::open_synthetic("seed"), doctest::Contains("'seed' is not key=value"),
                       UsageError);
  CHECK_THROWS_WITH_AS(detail::open_synthetic("split=valid"), doctest::Contains("split=valid"),
                       UsageError);
  CHECK_THROWS_WITH_AS(detail::open_synthetic("h=65536,w=65536,c=4"),
                       doctest::Contains("larger than the limit"), UsageError);
  CHECK_THROWS_WITH_AS(open_source("synthetic:n=5,,seed=1"),
                       doctest::Contains("synthetic:n=5,,seed=1"), UsageError);
}
