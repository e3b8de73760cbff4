// The median every benchmark reports (of run times or rates): the middle value, or the mean of
// the two middle values of an even count; 0 for no values.
#pragma once

#include <algorithm>
#include <vector>

namespace imgstore::bench {

inline double median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const std::size_t m = v.size() / 2;
  return v.size() % 2 ? v[m] : (v[m - 1] + v[m]) / 2;
}

}  // namespace imgstore::bench
