// The benchmarks' scratch space: outputs of earlier runs are set aside rather than deleted on
// the spot, so that no timed run pays for another's deletion or writeback.
#pragma once

#include <filesystem>

namespace imgstore::bench {

// Removes `path` and everything below it, ignoring errors (scratch output only).
void remove_tree(const std::filesystem::path& path);

// Moves `path`, when it exists, into `trash` (deleting 100,000 files takes a minute on some
// disks, so the trash is removed once at the end; if the move fails, `path` is removed now),
// then sync()s, so that a run neither finds its output nor pays for another run's writeback.
void set_aside(const std::filesystem::path& path, const std::filesystem::path& trash);

}  // namespace imgstore::bench
