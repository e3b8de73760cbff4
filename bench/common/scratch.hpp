// The benchmarks' scratch space: outputs of earlier runs are set aside rather than deleted on
// the spot, so that no timed run pays for another's deletion or writeback.
#pragma once

#include <filesystem>

namespace imgstore::bench {

// Removes `path` and everything below it, ignoring errors (scratch output only).
void remove_tree(const std::filesystem::path& path);

// Removes `path`, when it exists, then sync()s, so that a run neither finds its output nor
// pays for another run's writeback. A folder of many files is moved into `trash` instead
// (deleting 100,000 files takes a minute on some disks, so the trash is removed once at the
// end; if the move fails, it is removed now). Files are deleted at once so that their page
// cache is freed for the next run: on a VM that reports free memory to its host (Firecracker's
// free page reporting, as here), writing 176 MB into pages the host took back costs 0.3-0.5 s
// against 0.04 s into pages just freed, and which one a run got was chance.
void set_aside(const std::filesystem::path& path, const std::filesystem::path& trash);

}  // namespace imgstore::bench
