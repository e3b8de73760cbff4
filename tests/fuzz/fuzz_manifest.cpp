// Manifest::from_json on raw text, then validate(). A manifest that parses must survive a
// to_json/from_json round trip unchanged.
#include "fuzz_common.hpp"
#include "imgstore/manifest.hpp"

using namespace imgstore;

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  Manifest m;
  try {
    m = Manifest::from_json(text, "'manifest.json'");
  } catch (const Error&) {
    return 0;
  }
  try {
    m.validate("'manifest.json'");
  } catch (const Error&) {
  }
  const Manifest back = Manifest::from_json(m.to_json(), "'roundtrip'");
  if (back.format != m.format || back.count != m.count || back.shape != m.shape ||
      back.split != m.split || back.source != m.source || back.class_names != m.class_names ||
      back.encoding != m.encoding || back.checksums != m.checksums ||
      back.content_digest != m.content_digest || back.format_version != m.format_version ||
      back.tool_version != m.tool_version) {
    fuzz::fail("manifest changed in a to_json/from_json round trip");
  }
  return 0;
}
