// LoaderState <-> JSON, and <-> a file. The digest is written as 16 hex digits (as in the
// manifest) so readers whose JSON numbers are doubles do not round it; counts and the seed are
// plain integers.
#include <nlohmann/json.hpp>

#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"
#include "imgstore/torch/loader.hpp"

namespace imgstore {

namespace {

constexpr int kStateVersion = 1;
constexpr const char* kKind = "imgstore_loader_state";
// A state file is a few hundred bytes; anything much larger is not one.
constexpr std::uint64_t kMaxFileBytes = 1 << 20;

using Json = nlohmann::json;

const Json& field(const Json& j, const char* name, const std::string& what) {
  auto it = j.find(name);
  if (it == j.end()) throw DataError(fmt::format("{}: missing field '{}'", what, name));
  return *it;
}

std::uint64_t unsigned_field(const Json& j, const char* name, const std::string& what) {
  const Json& v = field(j, name, what);
  if (!v.is_number_unsigned()) {
    throw DataError(fmt::format("{}: field '{}' must be a non-negative integer, got {}", what,
                                name, v.dump()));
  }
  return v.get<std::uint64_t>();
}

bool bool_field(const Json& j, const char* name, const std::string& what) {
  const Json& v = field(j, name, what);
  if (!v.is_boolean()) {
    throw DataError(
        fmt::format("{}: field '{}' must be true or false, got {}", what, name, v.dump()));
  }
  return v.get<bool>();
}

// size_t fields: refuse values that do not fit rather than truncating them.
std::size_t size_field(const Json& j, const char* name, const std::string& what) {
  const std::uint64_t v = unsigned_field(j, name, what);
  if (v > static_cast<std::uint64_t>(SIZE_MAX)) {
    throw DataError(fmt::format("{}: field '{}' = {} is too large", what, name, v));
  }
  return static_cast<std::size_t>(v);
}

}  // namespace

std::string LoaderState::to_json() const {
  Json j;
  j[kKind] = kStateVersion;
  j["epoch"] = epoch;
  j["batches_consumed"] = batches_consumed;
  j["seed"] = seed;
  j["shuffle"] = shuffle;
  j["shuffle_window"] = shuffle_window;
  j["drop_last"] = drop_last;
  j["whole_shards"] = whole_shards;
  j["batch_size"] = static_cast<std::uint64_t>(batch_size);
  j["rank"] = static_cast<std::uint64_t>(rank);
  j["world_size"] = static_cast<std::uint64_t>(world_size);
  j["store_count"] = store_count;
  j["content_digest"] = to_hex64(content_digest);
  return j.dump(2) + "\n";
}

LoaderState LoaderState::from_json(const std::string& text, const std::string& what) {
  Json j;
  try {
    j = Json::parse(text);
  } catch (const Json::parse_error& e) {
    throw DataError(fmt::format("{}: not valid JSON ({})", what, e.what()));
  }
  if (!j.is_object()) throw DataError(fmt::format("{}: expected a JSON object", what));
  const std::uint64_t version = unsigned_field(j, kKind, what);
  if (version != kStateVersion) {
    throw DataError(fmt::format("{}: {} version {} is not supported (expected {})", what, kKind,
                                version, kStateVersion));
  }
  LoaderState s;
  s.epoch = unsigned_field(j, "epoch", what);
  s.batches_consumed = unsigned_field(j, "batches_consumed", what);
  s.seed = unsigned_field(j, "seed", what);
  s.shuffle = bool_field(j, "shuffle", what);
  // Optional: states saved before quasi-random order existed used the full shuffle.
  if (j.contains("shuffle_window")) s.shuffle_window = unsigned_field(j, "shuffle_window", what);
  s.drop_last = bool_field(j, "drop_last", what);
  s.whole_shards = bool_field(j, "whole_shards", what);
  s.batch_size = size_field(j, "batch_size", what);
  s.rank = size_field(j, "rank", what);
  s.world_size = size_field(j, "world_size", what);
  s.store_count = unsigned_field(j, "store_count", what);
  const Json& digest = field(j, "content_digest", what);
  if (!digest.is_string()) {
    throw DataError(fmt::format("{}: field 'content_digest' must be a string of 16 hex digits, "
                                "got {}",
                                what, digest.dump()));
  }
  s.content_digest = parse_hex64(digest.get<std::string>(), what + ": field 'content_digest'");
  if (s.batch_size == 0) throw DataError(fmt::format("{}: batch_size is 0", what));
  if (s.world_size == 0 || s.rank >= s.world_size) {
    throw DataError(
        fmt::format("{}: rank {} is not below world_size {}", what, s.rank, s.world_size));
  }
  return s;
}

void LoaderState::save(const std::filesystem::path& path, bool durable) const {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    // The staged write would swap the directory out and delete it.
    throw IoError(fmt::format("cannot save the loader state to {}: it is a directory",
                              detail::quote(path)));
  }
  try {
    // The core's staged write: a temporary sibling, fsynced, renamed over `path`, then the
    // directory fsynced. Any failure removes the temporary and leaves `path` as it was.
    detail::StagedOutput staged(path, detail::StagedOutput::Kind::File, /*overwrite=*/true);
    detail::write_file(staged.temp(), to_json(), durable);
    staged.commit(durable);
  } catch (const IoError& e) {
    throw IoError(fmt::format("cannot save the loader state to {}: {}", detail::quote(path),
                              e.what()));
  }
}

LoaderState LoaderState::load(const std::filesystem::path& path) {
  const std::vector<std::uint8_t> bytes = detail::read_file(path, kMaxFileBytes);
  return from_json(std::string(bytes.begin(), bytes.end()), detail::quote(path));
}

}  // namespace imgstore
