#include "detail/hdf5_handles.hpp"

#include <fmt/format.h>

#include <vector>

namespace imgstore::detail {

std::recursive_mutex& hdf5_mutex() {
  // Leaked on purpose: readers held in statics may still lock it during static destruction.
  static std::recursive_mutex* mutex = new std::recursive_mutex;
  return *mutex;
}

void hdf5_quiet_this_thread() { H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr); }

namespace {

herr_t collect_error(unsigned n, const H5E_error2_t* err, void* data) {
  auto* lines = static_cast<std::vector<std::string>*>(data);
  if (err->desc && *err->desc) {
    lines->push_back(fmt::format("{}{}{}", err->desc, err->func_name ? " in " : "",
                                 err->func_name ? err->func_name : ""));
  }
  return 0;
}

}  // namespace

std::string hdf5_error_stack() {
  std::vector<std::string> lines;
  H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, collect_error, &lines);
  H5Eclear2(H5E_DEFAULT);
  // The most specific few entries say what went wrong; the rest repeat "unable to ...".
  constexpr std::size_t kMaxEntries = 4;
  if (lines.size() > kMaxEntries) lines.resize(kMaxEntries);
  return fmt::format("{}", fmt::join(lines, "; "));
}

std::string describe_h5_type(hid_t type) {
  Hdf5Lock lock;
  const H5T_class_t cls = H5Tget_class(type);
  const std::size_t bits = H5Tget_size(type) * 8;
  const bool big = H5Tget_order(type) == H5T_ORDER_BE && bits > 8;
  const char* order = big ? " big-endian" : "";
  switch (cls) {
    case H5T_INTEGER:
      return fmt::format("{}int{}{}", H5Tget_sign(type) == H5T_SGN_NONE ? "u" : "", bits, order);
    case H5T_FLOAT:
      return fmt::format("float{}{}", bits, order);
    case H5T_STRING:
      return "string";
    case H5T_COMPOUND:
      return "compound";
    case H5T_ENUM:
      return "enum";
    case H5T_ARRAY:
      return "array";
    case H5T_VLEN:
      return "variable-length";
    case H5T_OPAQUE:
      return "opaque";
    case H5T_BITFIELD:
      return fmt::format("bitfield{}", bits);
    case H5T_REFERENCE:
      return "reference";
    default:
      return "unknown type";
  }
}

}  // namespace imgstore::detail
