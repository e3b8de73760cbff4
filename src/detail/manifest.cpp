#include "imgstore/manifest.hpp"

#include <limits>
#include <type_traits>

#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"

#ifndef IMGSTORE_VERSION
#define IMGSTORE_VERSION "0.0.0"
#endif

namespace imgstore {

std::string tool_version() { return IMGSTORE_VERSION; }

namespace {

// nlohmann's get<T>() casts floats and negative numbers unchecked (undefined behaviour when out
// of range, silent wrap-around otherwise): accept only JSON integers that fit in T.
template <typename T>
T get_integer(const nlohmann::json& j, const char* key, const std::string& what) {
  const auto& v = j.at(key);
  bool fits = false;
  if (v.is_number_unsigned()) {
    fits = v.get<std::uint64_t>() <= static_cast<std::uint64_t>(std::numeric_limits<T>::max());
  } else if (v.is_number_integer()) {
    fits = std::is_signed_v<T> &&
           v.get<std::int64_t>() >= static_cast<std::int64_t>(std::numeric_limits<T>::min());
  }
  if (!fits) {
    std::string shown = v.dump();
    if (shown.size() > 40) shown = shown.substr(0, 40) + "...";
    throw DataError(fmt::format("{}: manifest field '{}' is not an integer in range: {}", what,
                                key, shown));
  }
  return v.get<T>();
}

}  // namespace

std::string to_string(const Shape& shape) {
  return fmt::format("{}x{}x{}", shape.height, shape.width, shape.channels);
}

std::string to_string(Format format) {
  switch (format) {
    case Format::Png: return "png";
    case Format::Lmdb: return "lmdb";
    case Format::Hdf5: return "hdf5";
  }
  return "unknown";
}

Format parse_format(const std::string& name) {
  if (name == "png") return Format::Png;
  if (name == "lmdb") return Format::Lmdb;
  if (name == "hdf5" || name == "h5") return Format::Hdf5;
  throw UsageError(fmt::format("unknown format '{}' (expected png, lmdb or hdf5)", name));
}

std::string Manifest::to_json() const {
  nlohmann::ordered_json j;
  j["imgstore_format"] = imgstore::to_string(format);
  j["format_version"] = format_version;
  j["tool_version"] = tool_version;
  j["split"] = split;
  j["source"] = source;
  j["count"] = count;
  j["height"] = shape.height;
  j["width"] = shape.width;
  j["channels"] = shape.channels;
  j["dtype"] = "uint8";
  j["layout"] = "HWC";
  j["encoding"] = encoding;
  j["class_names"] = class_names;
  j["checksum_algorithm"] = "xxh3_64(pixels, seed=label)";
  j["content_digest"] = to_hex64(content_digest);
  auto& sums = j["checksums"] = nlohmann::ordered_json::array();
  for (auto c : checksums) sums.push_back(to_hex64(c));
  return j.dump(1);
}

Manifest Manifest::from_json(const std::string& text, const std::string& what) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw DataError(fmt::format("{}: manifest is not valid JSON: {}", what, e.what()));
  }
  Manifest m;
  try {
    m.format = parse_format(j.at("imgstore_format").get<std::string>());
    m.format_version = get_integer<int>(j, "format_version", what);
    if (m.format_version != kFormatVersion) {
      throw DataError(fmt::format("{}: manifest format_version {} is not supported (expected {})",
                                  what, m.format_version, kFormatVersion));
    }
    m.tool_version = j.value("tool_version", "");
    m.split = j.value("split", "");
    m.source = j.value("source", "");
    m.count = get_integer<std::uint64_t>(j, "count", what);
    m.shape.height = get_integer<std::uint32_t>(j, "height", what);
    m.shape.width = get_integer<std::uint32_t>(j, "width", what);
    m.shape.channels = get_integer<std::uint32_t>(j, "channels", what);
    m.encoding = j.value("encoding", "raw");
    m.class_names = j.value("class_names", std::vector<std::string>{});
    m.content_digest = parse_hex64(j.at("content_digest").get<std::string>(),
                                   what + " content_digest");
    const auto& sums = j.at("checksums");
    if (!sums.is_array()) throw DataError(what + ": manifest 'checksums' is not an array");
    m.checksums.reserve(sums.size());
    for (std::size_t i = 0; i < sums.size(); ++i) {
      m.checksums.push_back(
          parse_hex64(sums[i].get<std::string>(), fmt::format("{} checksum of record {}", what, i)));
    }
  } catch (const UsageError& e) {
    throw DataError(fmt::format("{}: {}", what, e.what()));
  } catch (const nlohmann::json::exception& e) {
    throw DataError(fmt::format("{}: manifest field missing or of the wrong type: {}", what,
                                e.what()));
  }
  m.validate(what);
  return m;
}

void Manifest::validate(const std::string& what) const {
  if (shape.height == 0 || shape.width == 0 || shape.channels == 0 || shape.channels > 4) {
    throw DataError(fmt::format("{}: manifest shape {} is not a valid image shape", what,
                                imgstore::to_string(shape)));
  }
  if (checksums.size() != count) {
    throw DataError(fmt::format("{}: manifest lists {} checksums for {} records", what,
                                checksums.size(), count));
  }
  ContentDigest digest;
  for (auto c : checksums) digest.add(c);
  if (digest.value() != content_digest) {
    throw DataError(fmt::format("{}: manifest content_digest {} does not match its checksums ({})",
                                what, to_hex64(content_digest), to_hex64(digest.value())));
  }
}

}  // namespace imgstore
