// Generated images with natural-image statistics, for benchmarks and tests without a download.
//
// Each image is a pure function of (seed, split, index), so any chunking or thread count yields
// the same bytes. Its content mimics small natural photos closely enough that PNG compresses it
// like CIFAR-10 (2-3 KB per 32x32 RGB image): a luminance field summed over octaves of smooth
// value noise (equal-ish energy per octave, as in the 1/f spectra of photos), weaker chroma
// fields, fine sensor-like noise, and a soft-edged object whose colour and shape depend on the
// label, so that a network can learn the classes.
#include <tbb/blocked_range.h>
#include <tbb/parallel_for.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <optional>

#include <fmt/format.h>

#include "detail/random.hpp"
#include "imgstore/error.hpp"
#include "ingest/sources.hpp"

namespace imgstore::detail {

namespace {

constexpr std::uint32_t kMaxSide = 65536;
constexpr std::uint64_t kMaxImageBytes = std::uint64_t{64} << 20;
constexpr std::uint64_t kMaxCount = std::uint64_t{1} << 31;
constexpr std::uint64_t kMaxClasses = 65536;
constexpr float kPi = 3.14159265358979f;

// Tuning of the image statistics (see the header comment).
constexpr float kLumaAmplitude = 40.0f;   // coarsest luminance octave, in grey levels
constexpr float kChromaAmplitude = 14.0f; // coarsest chroma octave
constexpr float kFineLuma = 18.0f;        // per-pixel luminance noise
constexpr float kFineChroma = 5.0f;       // per-pixel, per-channel noise

struct Params {
  std::uint64_t train = 1000;
  std::optional<std::uint64_t> test;
  std::uint32_t height = 32;
  std::uint32_t width = 32;
  std::uint32_t channels = 3;
  std::uint64_t classes = 10;
  std::uint64_t seed = 1;
  std::string split;  // empty: both splits
};

std::uint64_t parse_number(const std::string& key, const std::string& value,
                           const std::string& spec, std::uint64_t lo, std::uint64_t hi) {
  std::uint64_t v = 0;
  const char* end = value.data() + value.size();
  auto [p, ec] = std::from_chars(value.data(), end, v);
  if (value.empty() || ec != std::errc() || p != end || v < lo || v > hi) {
    throw UsageError(fmt::format("bad synthetic source spec 'synthetic:{}': {}={} is not a "
                                 "number in {}..{}",
                                 spec, key, value, lo, hi));
  }
  return v;
}

Params parse_params(const std::string& spec) {
  Params p;
  std::size_t pos = 0;
  while (pos < spec.size()) {
    std::size_t comma = spec.find(',', pos);
    if (comma == std::string::npos) comma = spec.size();
    const std::string item = spec.substr(pos, comma - pos);
    pos = comma + 1;
    const std::size_t eq = item.find('=');
    if (eq == std::string::npos) {
      throw UsageError(fmt::format(
          "bad synthetic source spec 'synthetic:{}': '{}' is not key=value (keys: n, test, h, w, "
          "c, classes, seed, split)",
          spec, item));
    }
    const std::string key = item.substr(0, eq), value = item.substr(eq + 1);
    if (key == "n") {
      p.train = parse_number(key, value, spec, 0, kMaxCount);
    } else if (key == "test") {
      p.test = parse_number(key, value, spec, 0, kMaxCount);
    } else if (key == "h") {
      p.height = static_cast<std::uint32_t>(parse_number(key, value, spec, 1, kMaxSide));
    } else if (key == "w") {
      p.width = static_cast<std::uint32_t>(parse_number(key, value, spec, 1, kMaxSide));
    } else if (key == "c") {
      p.channels = static_cast<std::uint32_t>(parse_number(key, value, spec, 1, 4));
    } else if (key == "classes") {
      p.classes = parse_number(key, value, spec, 1, kMaxClasses);
    } else if (key == "seed") {
      p.seed = parse_number(key, value, spec, 0, UINT64_MAX);
    } else if (key == "split") {
      if (value != "train" && value != "test") {
        throw UsageError(fmt::format(
            "bad synthetic source spec 'synthetic:{}': split={} (expected train or test)", spec,
            value));
      }
      p.split = value;
    } else {
      throw UsageError(fmt::format(
          "bad synthetic source spec 'synthetic:{}': unknown key '{}' (keys: n, test, h, w, c, "
          "classes, seed, split)",
          spec, key));
    }
  }
  if (std::uint64_t{p.height} * p.width * p.channels > kMaxImageBytes) {
    throw UsageError(fmt::format("bad synthetic source spec 'synthetic:{}': {}x{}x{} images are "
                                 "larger than the limit of {} bytes",
                                 spec, p.height, p.width, p.channels, kMaxImageBytes));
  }
  return p;
}

using detail::mix64;

// splitmix64 (detail/random.hpp) with the float draws the generator needs.
class Rng {
 public:
  explicit Rng(std::uint64_t seed) : bits_(seed) {}
  std::uint64_t next() { return bits_.next(); }
  float uniform() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }  // [0,1)
  float symmetric() { return uniform() * 2.0f - 1.0f; }                                 // [-1,1)

 private:
  detail::SplitMix bits_;
};

float smoothstep(float t) { return t * t * (3.0f - 2.0f * t); }

// Per-thread buffers reused across the images of one parallel chunk.
struct Scratch {
  std::vector<float> luma, chroma_a, chroma_b, mask, noise, plane;
  std::vector<float> grid, rows;
  std::vector<int> ix, iy;
  std::vector<float> fx, fy;
};

class Generator {
 public:
  explicit Generator(const Params& p) : p_(p), shape_{p.height, p.width, p.channels} {
    const std::uint32_t largest = std::max(p.height, p.width);
    for (std::uint32_t cell = 2; cell <= 2 * largest; cell *= 2) cells_.push_back(cell);
    if (cells_.empty()) cells_.push_back(2);
  }

  const Shape& shape() const { return shape_; }

  // Image `index` of split `split_id` into out (H*W*C bytes); returns its label.
  std::int64_t generate(std::uint64_t split_id, std::uint64_t index, std::uint8_t* out,
                        Scratch& s) const {
    Rng rng(mix64(mix64(p_.seed ^ 0x5EEDull) + split_id * detail::kGoldenGamma) ^
            mix64(index + 0x1234567ull));
    const auto label = static_cast<std::int64_t>(rng.next() % p_.classes);
    const int h = static_cast<int>(p_.height), w = static_cast<int>(p_.width);
    const std::size_t px = std::size_t(h) * w;
    s.luma.assign(px, 0.0f);
    s.chroma_a.assign(px, 0.0f);
    s.chroma_b.assign(px, 0.0f);

    // Roughness varies per image, as photos range from smooth skies to foliage.
    const float beta = 0.9f * rng.uniform();
    const float contrast = 0.5f + rng.uniform();
    const float top = static_cast<float>(cells_.back());
    for (std::uint32_t cell : cells_) {
      const float rel = static_cast<float>(cell) / top;
      add_octave(s.luma, h, w, cell, kLumaAmplitude * contrast * std::pow(rel, beta), rng, s);
      if (cell >= 8 || cell == cells_.back()) {  // colour varies slowly in photos
        add_octave(s.chroma_a, h, w, cell, kChromaAmplitude * rel, rng, s);
        add_octave(s.chroma_b, h, w, cell, kChromaAmplitude * rel, rng, s);
      }
    }
    object_mask(label, h, w, rng, s);

    // Colours: a muted random background, an object tinted by its class.
    float bg[3], fg[3];
    const float bg_level = 70.0f + 110.0f * rng.uniform();
    for (float& v : bg) v = bg_level + 35.0f * rng.symmetric();
    class_colour(label, rng, fg);

    // Fine noise first, in one tight pass (four 16-bit uniforms per draw), so that the
    // per-pixel loops below have no serial dependency and vectorise.
    const int c = static_cast<int>(p_.channels);
    const std::size_t planes = c <= 2 ? 2 : 4;  // shared luma noise + per-channel noise
    s.noise.resize(planes * px);
    for (std::size_t i = 0; i < s.noise.size(); i += 4) {
      std::uint64_t bits = rng.next();
      for (std::size_t k = 0; k < 4 && i + k < s.noise.size(); ++k, bits >>= 16) {
        s.noise[i + k] = static_cast<float>(bits & 0xffff) * (2.0f / 65536.0f) - 1.0f;
      }
    }
    const float fine = kFineLuma * (0.25f + 1.1f * rng.uniform());
    const float* nl = s.noise.data();
    const float* luma = s.luma.data();
    const float* cha = s.chroma_a.data();
    const float* chb = s.chroma_b.data();
    const float* mask = s.mask.data();
    s.plane.resize(3 * px);
    float* pr = s.plane.data();
    float* pg = pr + px;
    float* pb = pg + px;
    // Opponent colour axes: a = red-green, b = blue-yellow.
    for (std::size_t i = 0; i < px; ++i) {
      const float m = mask[i];
      const float l = luma[i] + fine * nl[i];
      pr[i] = bg[0] + m * (fg[0] - bg[0]) + l + cha[i] - 0.5f * chb[i];
      pg[i] = bg[1] + m * (fg[1] - bg[1]) + l - cha[i] - 0.5f * chb[i];
      pb[i] = bg[2] + m * (fg[2] - bg[2]) + l + chb[i];
    }
    const float* n1 = nl + px;
    if (c <= 2) {
      for (std::size_t i = 0; i < px; ++i) {
        const float y = 0.299f * pr[i] + 0.587f * pg[i] + 0.114f * pb[i];
        out[i * c] = to_byte(y + kFineChroma * n1[i]);
      }
    } else {
      const float* n2 = n1 + px;
      const float* n3 = n2 + px;
      for (std::size_t i = 0; i < px; ++i) {
        out[i * c] = to_byte(pr[i] + kFineChroma * n1[i]);
        out[i * c + 1] = to_byte(pg[i] + kFineChroma * n2[i]);
        out[i * c + 2] = to_byte(pb[i] + kFineChroma * n3[i]);
      }
    }
    if (c == 2 || c == 4) {
      for (std::size_t i = 0; i < px; ++i) out[i * c + c - 1] = 255;  // opaque alpha
    }
    return label;
  }

 private:
  static std::uint8_t to_byte(float v) {
    // min/max rather than clamp: branch-free, so the loops vectorise.
    return static_cast<std::uint8_t>(static_cast<int>(std::min(std::max(v + 0.5f, 0.0f), 255.0f)));
  }

  // field += amp * smooth value noise on a lattice of `cell` pixels, at a random phase.
  static void add_octave(std::vector<float>& field, int h, int w, std::uint32_t cell, float amp,
                         Rng& rng, Scratch& s) {
    const float inv = 1.0f / static_cast<float>(cell);
    const float ox = rng.uniform() * static_cast<float>(cell);
    const float oy = rng.uniform() * static_cast<float>(cell);
    const int gw = static_cast<int>((w - 1 + ox) * inv) + 2;
    const int gh = static_cast<int>((h - 1 + oy) * inv) + 2;
    s.grid.resize(std::size_t(gw) * gh);
    for (float& g : s.grid) g = rng.symmetric() * amp;
    s.ix.resize(w);
    s.fx.resize(w);
    for (int x = 0; x < w; ++x) {
      const float t = (static_cast<float>(x) + ox) * inv;
      const int i = static_cast<int>(t);
      s.ix[x] = i;
      s.fx[x] = smoothstep(t - static_cast<float>(i));
    }
    // Horizontal pass on the lattice rows only, then a vertical pass per pixel row.
    s.rows.resize(std::size_t(gh) * w);
    for (int gy = 0; gy < gh; ++gy) {
      const float* g = s.grid.data() + std::size_t(gy) * gw;
      float* r = s.rows.data() + std::size_t(gy) * w;
      for (int x = 0; x < w; ++x) {
        const int i = s.ix[x];
        r[x] = g[i] + s.fx[x] * (g[i + 1] - g[i]);
      }
    }
    for (int y = 0; y < h; ++y) {
      const float t = (static_cast<float>(y) + oy) * inv;
      const int i = static_cast<int>(t);
      const float f = smoothstep(t - static_cast<float>(i));
      const float* r0 = s.rows.data() + std::size_t(i) * w;
      const float* r1 = r0 + w;
      float* dst = field.data() + std::size_t(y) * w;
      for (int x = 0; x < w; ++x) dst[x] += r0[x] + f * (r1[x] - r0[x]);
    }
  }

  // A soft-edged ellipse; its elongation depends on the label.
  void object_mask(std::int64_t label, int h, int w, Rng& rng, Scratch& s) const {
    const float size = static_cast<float>(std::min(h, w));
    const float cx = static_cast<float>(w) * (0.5f + 0.2f * rng.symmetric());
    const float cy = static_cast<float>(h) * (0.5f + 0.2f * rng.symmetric());
    const float shape_code = static_cast<float>((label * 7) % 10) / 9.0f;  // 0..1 by class
    const float aspect = 0.45f + 0.55f * shape_code;
    const float r_major = size * (0.22f + 0.14f * rng.uniform());
    const float rx = r_major, ry = r_major * aspect;
    const float angle = kPi * rng.uniform();
    const float ca = std::cos(angle), sa = std::sin(angle);
    const float soft = 0.6f + 1.2f * rng.uniform();  // edge width in pixels
    const float ax = ca / rx, ay = sa / rx, bx = -sa / ry, by = ca / ry;
    const float scale = ry / soft;  // distance in radii -> edge widths
    s.mask.resize(std::size_t(h) * w);
    for (int y = 0; y < h; ++y) {
      const float dy = static_cast<float>(y) - cy;
      float* row = s.mask.data() + std::size_t(y) * w;
      for (int x = 0; x < w; ++x) {
        const float dx = static_cast<float>(x) - cx;
        const float u = dx * ax + dy * ay, v = dx * bx + dy * by;
        const float d = (std::sqrt(u * u + v * v) - 1.0f) * scale;  // ~ signed distance
        row[x] = std::min(std::max(0.5f - d, 0.0f), 1.0f);
      }
    }
  }

  // Evenly spaced hues per class, jittered per image.
  void class_colour(std::int64_t label, Rng& rng, float* rgb) const {
    float hue = static_cast<float>(label) / static_cast<float>(p_.classes) + 0.03f * rng.symmetric();
    hue -= std::floor(hue);
    const float sat = 0.45f + 0.3f * rng.uniform();
    const float val = 120.0f + 100.0f * rng.uniform();
    for (int k = 0; k < 3; ++k) {
      // Smooth hue wheel: each channel peaks 1/3 of a turn apart.
      const float phase = 2.0f * kPi * (hue - static_cast<float>(k) / 3.0f);
      rgb[k] = val * (1.0f - sat * 0.5f * (1.0f - std::cos(phase)));
    }
  }

  Params p_;
  Shape shape_;
  std::vector<std::uint32_t> cells_;
};

class SyntheticStream : public BatchStream {
 public:
  SyntheticStream(std::shared_ptr<const Generator> gen, std::uint64_t split_id,
                  std::uint64_t count)
      : gen_(std::move(gen)), split_id_(split_id), count_(count) {}

  bool next(ImageBatch& out, std::size_t max_records) override {
    if (next_ >= count_) {
      out.resize(gen_->shape(), 0);
      return false;
    }
    const std::size_t n = static_cast<std::size_t>(
        std::min<std::uint64_t>(std::max<std::size_t>(max_records, 1), count_ - next_));
    out.resize(gen_->shape(), n);
    const std::uint64_t first = next_;
    const Generator& gen = *gen_;
    const std::uint64_t split_id = split_id_;
    tbb::parallel_for(tbb::blocked_range<std::size_t>(0, n, 16),
                      [&](const tbb::blocked_range<std::size_t>& r) {
                        Scratch scratch;
                        for (std::size_t i = r.begin(); i != r.end(); ++i) {
                          out.labels[i] = gen.generate(split_id, first + i, out.image(i), scratch);
                        }
                      });
    next_ += n;
    return true;
  }

 private:
  std::shared_ptr<const Generator> gen_;
  std::uint64_t split_id_;
  std::uint64_t count_;
  std::uint64_t next_ = 0;
};

class SyntheticSource : public Source {
 public:
  SyntheticSource(std::string spec, const Params& p)
      : spec_(std::move(spec)), gen_(std::make_shared<Generator>(p)) {
    std::vector<std::string> names;
    for (std::uint64_t i = 0; i < p.classes; ++i) names.push_back("class" + std::to_string(i));
    for (const char* name : {"train", "test"}) {
      if (!p.split.empty() && p.split != name) continue;
      const std::uint64_t count =
          std::string(name) == "train" ? p.train : p.test.value_or(p.train / 5);
      splits_.push_back(SplitInfo{name, count, gen_->shape(), names});
    }
  }

  std::string description() const override {
    return fmt::format("synthetic '{}'", spec_);
  }
  std::vector<SplitInfo> splits() const override { return splits_; }

  std::unique_ptr<BatchStream> open(const std::string& split) const override {
    for (const auto& s : splits_) {
      if (s.name == split) {
        // Split ids are fixed per name, so split=test alone yields the same test images.
        return std::make_unique<SyntheticStream>(gen_, split == "train" ? 0 : 1, s.count);
      }
    }
    throw UsageError(fmt::format("{} has no split '{}'", description(), split));
  }

 private:
  std::string spec_;
  std::shared_ptr<const Generator> gen_;
  std::vector<SplitInfo> splits_;
};

}  // namespace

std::unique_ptr<Source> open_synthetic(const std::string& params) {
  const Params p = parse_params(params);
  return std::make_unique<SyntheticSource>(params, p);
}

}  // namespace imgstore::detail
