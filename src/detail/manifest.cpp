#include "imgstore/manifest.hpp"

#include <algorithm>
#include <cstring>
#include <limits>
#include <stdexcept>
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

bool is_conversion_id(const std::string& id) {
  return id.size() == 32 && std::all_of(id.begin(), id.end(), [](char c) {
           return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f');
         });
}

void check_conversion_id(const std::string& id, const std::string& what) {
  if (!is_conversion_id(id)) {
    std::string shown = id.size() > 40 ? id.substr(0, 40) + "..." : id;
    throw DataError(fmt::format("{}: conversion_id '{}' is not 32 lowercase hex digits", what,
                                shown));
  }
}

// The JSON object's string field `key`, or DataError naming it.
std::string get_string(const nlohmann::json& j, const char* key, const std::string& what) {
  const auto& v = j.at(key);
  if (!v.is_string()) {
    throw DataError(fmt::format("{}: field '{}' is not a string", what, key));
  }
  return v.get<std::string>();
}

// Parses `text` as the JSON document `kind` names ("manifest", "shard index") and hands it to
// `read`; a syntax error, a missing or mistyped field and a bad value all become a DataError
// naming `what`.
template <class Read>
void read_json_document(const std::string& text, const std::string& what, const char* kind, Read&& read) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw DataError(fmt::format("{}: {} is not valid JSON: {}", what, kind, e.what()));
  }
  try {
    read(j);
  } catch (const UsageError& e) {
    throw DataError(fmt::format("{}: {}", what, e.what()));
  } catch (const nlohmann::json::exception& e) {
    throw DataError(fmt::format("{}: {} field missing or of the wrong type: {}", what, kind, e.what()));
  }
}

// DataError unless `shape` can be an image's; `label` names the field in the message.
void check_image_shape(const Shape& shape, const std::string& what, const char* label) {
  if (shape.height == 0 || shape.width == 0 || shape.channels == 0 || shape.channels > 4) {
    throw DataError(fmt::format("{}: {} {} is not a valid image shape", what, label,
                                imgstore::to_string(shape)));
  }
}

// The fields a manifest and a shard index share, written in the order both documents list them
// (after the document's format key).
template <class Fields>
void write_store_fields(nlohmann::ordered_json& j, const Fields& f) {
  j["format_version"] = f.format_version;
  j["tool_version"] = f.tool_version;
  j["split"] = f.split;
  j["source"] = f.source;
  j["count"] = f.count;
  j["height"] = f.shape.height;
  j["width"] = f.shape.width;
  j["channels"] = f.shape.channels;
  if (f.variable_size) j["variable_size"] = true;
}

// The fields a manifest and a shard index share, read the same way into either. `kind`
// ("manifest", "shard index") names the document in the version error.
template <class Fields>
void read_store_fields(const nlohmann::json& j, const std::string& what, const char* kind,
                       Fields& x) {
  x.format_version = get_integer<int>(j, "format_version", what);
  if (x.format_version < 1 || x.format_version > Fields::kFormatVersion) {
    throw DataError(fmt::format("{}: {} format_version {} is not supported (expected 1..{})",
                                what, kind, x.format_version, Fields::kFormatVersion));
  }
  x.tool_version = j.value("tool_version", "");
  x.split = j.value("split", "");
  x.source = j.value("source", "");
  x.count = get_integer<std::uint64_t>(j, "count", what);
  x.shape.height = get_integer<std::uint32_t>(j, "height", what);
  x.shape.width = get_integer<std::uint32_t>(j, "width", what);
  x.shape.channels = get_integer<std::uint32_t>(j, "channels", what);
  x.encoding = parse_encoding(j.value("encoding", "raw"));  // UsageError: reported as DataError
  x.class_names = j.value("class_names", std::vector<std::string>{});
  const auto flag = j.find("variable_size");
  if (flag != j.end()) {
    if (!flag->is_boolean()) throw DataError(what + ": 'variable_size' is not true or false");
    x.variable_size = flag->template get<bool>();
  }
  if (x.format_version < format_version_for(x.variable_size, x.encoding)) {
    throw DataError(fmt::format("{}: {} format_version {} cannot hold {} records", what, kind,
                                x.format_version,
                                x.variable_size ? "variable-size" : imgstore::to_string(x.encoding)));
  }
}

// Variable-size stores: channels 1..4 and no fixed H, W; fixed-size: a whole image shape.
void check_store_shape(const Shape& shape, bool variable_size, const std::string& what,
                       const char* label) {
  if (!variable_size) return check_image_shape(shape, what, label);
  if (shape.height != 0 || shape.width != 0 || shape.channels == 0 || shape.channels > 4) {
    throw DataError(fmt::format("{}: {} {} is not a variable-size shape (0x0xC, C 1..4)", what,
                                label, imgstore::to_string(shape)));
  }
}


}  // namespace

// Stands for the checksums array in Manifest::to_json's document until the text is made. It
// is found as the value of the top-level key, which no string field's text can imitate (their
// quotes and newlines are escaped).
constexpr const char* kChecksumsPlaceholder = "@imgstore-checksums@";

int format_version_for(bool variable_size, Encoding encoding) {
  return variable_size || encoding == Encoding::Jpeg ? 2 : 1;
}

std::string to_string(const Shape& shape) {
  return fmt::format("{}x{}x{}", shape.height, shape.width, shape.channels);
}

std::string Manifest::to_json() const {
  nlohmann::ordered_json j;
  j["imgstore_format"] = imgstore::to_string(format);
  write_store_fields(j, *this);
  j["dtype"] = "uint8";
  j["layout"] = "HWC";
  j["encoding"] = imgstore::to_string(encoding);
  j["class_names"] = class_names;
  j["checksum_algorithm"] = encoding_info(encoding).lossless ? "xxh3_64(pixels, seed=label)"
                                                              : "xxh3_64(payload, seed=label)";
  if (variable_size) {
    j["min_height"] = min_height;
    j["max_height"] = max_height;
    j["min_width"] = min_width;
    j["max_width"] = max_width;
  }
  j["content_digest"] = to_hex64(content_digest);
  // The checksums are spliced into the text below: as a JSON array of strings they took about
  // 150 bytes each in memory (a 1.3M-photo store's manifest peaked at 200 MiB).
  j["checksums"] = kChecksumsPlaceholder;
  if (!skipped_inputs.empty()) {  // optional, after the checksums: old readers ignore it
    auto& list = j["skipped_inputs"] = nlohmann::ordered_json::array();
    for (const auto& s : skipped_inputs) list.push_back({{"path", s.path}, {"reason", s.reason}});
  }
  if (shard) {
    // After the checksums in the text, but an optional field: old readers ignore it.
    j["shard"] = {{"conversion_id", shard->conversion_id},
                  {"index", shard->index},
                  {"shards", shard->shards},
                  {"first_record", shard->first_record}};
  }
  std::string text = j.dump(1);
  // dump(1)'s layout for an array at depth 1: one element per line, indented by 2.
  std::string sums = "[";
  sums.reserve(checksums.size() * 22 + 4);
  for (std::size_t i = 0; i < checksums.size(); ++i) {
    sums += i ? ",\n  \"" : "\n  \"";
    sums += to_hex64(checksums[i]);
    sums += '"';
  }
  sums += checksums.empty() ? "]" : "\n ]";
  const std::string key = fmt::format("\n \"checksums\": \"{}\"", kChecksumsPlaceholder);
  const std::size_t at = text.find(key);
  if (at == std::string::npos) throw std::logic_error("Manifest::to_json: no checksums key");
  text.replace(at + key.size() - std::strlen(kChecksumsPlaceholder) - 2,
               std::strlen(kChecksumsPlaceholder) + 2, sums);
  return text;
}

Manifest Manifest::from_json(const std::string& text, const std::string& what) {
  Manifest m;
  read_json_document(text, what, "manifest", [&](const nlohmann::json& j) {
    m.format = parse_format(j.at("imgstore_format").get<std::string>());
    read_store_fields(j, what, "manifest", m);
    m.content_digest = parse_hex64(j.at("content_digest").get<std::string>(),
                                   what + " content_digest");
    if (m.variable_size) {
      m.min_height = get_integer<std::uint32_t>(j, "min_height", what);
      m.max_height = get_integer<std::uint32_t>(j, "max_height", what);
      m.min_width = get_integer<std::uint32_t>(j, "min_width", what);
      m.max_width = get_integer<std::uint32_t>(j, "max_width", what);
    }
    const auto& sums = j.at("checksums");
    if (!sums.is_array()) throw DataError(what + ": manifest 'checksums' is not an array");
    m.checksums.reserve(sums.size());
    for (std::size_t i = 0; i < sums.size(); ++i) {
      m.checksums.push_back(
          parse_hex64(sums[i].get<std::string>(), fmt::format("{} checksum of record {}", what, i)));
    }
    if (j.contains("skipped_inputs")) {
      const auto& list = j.at("skipped_inputs");
      if (!list.is_array()) throw DataError(what + ": manifest 'skipped_inputs' is not an array");
      for (const auto& e : list) {
        if (!e.is_object()) throw DataError(what + ": a skipped input is not an object");
        m.skipped_inputs.push_back({get_string(e, "path", what), get_string(e, "reason", what)});
      }
    }
    if (j.contains("shard")) {
      const auto& s = j.at("shard");
      if (!s.is_object()) throw DataError(what + ": manifest 'shard' is not an object");
      ShardPosition p;
      p.conversion_id = get_string(s, "conversion_id", what + " shard");
      p.index = get_integer<std::uint32_t>(s, "index", what);
      p.shards = get_integer<std::uint32_t>(s, "shards", what);
      p.first_record = get_integer<std::uint64_t>(s, "first_record", what);
      m.shard = std::move(p);
    }
  });
  m.validate(what);
  return m;
}

void Manifest::validate(const std::string& what) const {
  check_store_shape(shape, variable_size, what, "manifest shape");
  if (variable_size && count > 0 &&
      (min_height == 0 || min_width == 0 || min_height > max_height || min_width > max_width ||
       max_height > kMaxImageSide || max_width > kMaxImageSide)) {
    throw DataError(fmt::format("{}: manifest size bounds {}..{} x {}..{} are not valid", what,
                                min_height, max_height, min_width, max_width));
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
  if (shard) {
    check_conversion_id(shard->conversion_id, what + " shard");
    if (shard->shards == 0 || shard->shards > ShardIndex::kMaxShards ||
        shard->index >= shard->shards) {
      throw DataError(fmt::format("{}: manifest says shard {} of {}, not a valid position", what,
                                  shard->index, shard->shards));
    }
  }
}

// ---- sharded stores ----

std::string shard_file_name(Format format, std::uint32_t index, std::uint32_t shards) {
  return fmt::format("shard-{:05d}-of-{:05d}{}", index, shards, format_info(format).suffix);
}

std::pair<std::uint64_t, std::uint64_t> shard_range(std::uint64_t records, std::uint32_t shards,
                                                    std::uint32_t index) {
  if (shards == 0 || index >= shards) {
    throw UsageError(fmt::format("shard {} of {} does not exist", index, shards));
  }
  const std::uint64_t base = records / shards, extra = records % shards;
  const std::uint64_t first = index * base + std::min<std::uint64_t>(index, extra);
  return {first, base + (index < extra ? 1 : 0)};
}

std::string ShardIndex::to_json() const {
  nlohmann::ordered_json j;
  j["imgstore_sharded"] = imgstore::to_string(format);
  write_store_fields(j, *this);
  j["encoding"] = imgstore::to_string(encoding);
  j["class_names"] = class_names;
  j["conversion_id"] = conversion_id;
  j["content_digest"] = to_hex64(content_digest);
  auto& list = j["shards"] = nlohmann::ordered_json::array();
  for (const auto& s : shards) {
    list.push_back({{"file", s.file},
                    {"first_record", s.first_record},
                    {"count", s.count},
                    {"content_digest", to_hex64(s.content_digest)}});
  }
  return j.dump(1);
}

ShardIndex ShardIndex::from_json(const std::string& text, const std::string& what) {
  ShardIndex x;
  read_json_document(text, what, "shard index", [&](const nlohmann::json& j) {
    if (!j.is_object()) throw DataError(what + ": shard index is not a JSON object");
    x.format = parse_format(get_string(j, "imgstore_sharded", what));
    read_store_fields(j, what, "shard index", x);
    x.conversion_id = get_string(j, "conversion_id", what);
    x.content_digest = parse_hex64(get_string(j, "content_digest", what), what + " content_digest");
    const auto& list = j.at("shards");
    if (!list.is_array()) throw DataError(what + ": 'shards' is not an array");
    // Checked before reserving: the list's length comes from the file.
    if (list.empty() || list.size() > kMaxShards) {
      throw DataError(fmt::format("{}: lists {} shards, expected 1..{}", what, list.size(),
                                  kMaxShards));
    }
    x.shards.reserve(list.size());
    for (std::size_t i = 0; i < list.size(); ++i) {
      const auto& e = list[i];
      const std::string ewhat = fmt::format("{} shard {}", what, i);
      if (!e.is_object()) throw DataError(ewhat + ": entry is not an object");
      ShardEntry s;
      s.file = get_string(e, "file", ewhat);
      s.first_record = get_integer<std::uint64_t>(e, "first_record", ewhat);
      s.count = get_integer<std::uint64_t>(e, "count", ewhat);
      s.content_digest = parse_hex64(get_string(e, "content_digest", ewhat),
                                     ewhat + " content_digest");
      x.shards.push_back(std::move(s));
    }
  });
  x.validate(what);
  return x;
}

void ShardIndex::validate(const std::string& what) const {
  check_store_shape(shape, variable_size, what, "shape");
  check_conversion_id(conversion_id, what);
  if (shards.empty() || shards.size() > kMaxShards) {
    throw DataError(fmt::format("{}: lists {} shards, expected 1..{}", what, shards.size(),
                                kMaxShards));
  }
  const auto k = static_cast<std::uint32_t>(shards.size());
  std::uint64_t next = 0;
  for (std::uint32_t i = 0; i < k; ++i) {
    const auto& s = shards[i];
    const auto expected = shard_file_name(format, i, k);
    if (s.file != expected) {
      std::string shown = s.file.size() > 60 ? s.file.substr(0, 60) + "..." : s.file;
      throw DataError(fmt::format("{}: shard {} is named '{}', expected '{}'", what, i, shown,
                                  expected));
    }
    if (s.first_record != next) {
      throw DataError(fmt::format("{}: shard '{}' starts at record {}, expected {} (the shards "
                                  "must follow each other)", what, s.file, s.first_record, next));
    }
    if (s.count == 0 || s.count > count - next) {
      throw DataError(fmt::format("{}: shard '{}' holds {} records, but {} of the store's {} "
                                  "remain", what, s.file, s.count, count - next, count));
    }
    next += s.count;
  }
  if (next != count) {
    throw DataError(fmt::format("{}: the shards hold {} records, the store says {}", what, next,
                                count));
  }
}

}  // namespace imgstore
