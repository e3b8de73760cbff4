// Pieces shared by the command-line tools: exit codes and the progress bar.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace imgstore::cli {

// Exit status: 0 ok, 1 bad data (or I/O failure), 2 usage.
enum ExitCode : int { kOk = 0, kBadData = 1, kUsage = 2 };

// A one-line progress bar on stderr (count, rate, ETA), drawn only when stderr is a TTY and
// not quiet. Redraws at most ten times a second.
class ProgressBar {
 public:
  ProgressBar(std::string label, bool quiet);
  ~ProgressBar();
  void update(std::uint64_t done, std::uint64_t total);
  void finish();

 private:
  std::string label_;
  bool enabled_;
  bool drawn_ = false;
  std::chrono::steady_clock::time_point start_, last_draw_;
};

}  // namespace imgstore::cli
