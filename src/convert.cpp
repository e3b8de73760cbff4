#include "imgstore/convert.hpp"

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <exception>
#include <mutex>
#include <numeric>
#include <thread>

#include <fmt/format.h>

#include "detail/fs_util.hpp"
#include "imgstore/checksum.hpp"
#include "imgstore/error.hpp"

namespace imgstore {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Reads one pass of a split on its own thread, one batch ahead of the writers, so that the
// source's work (file reads, CIFAR's plane interleave, photo decoding) overlaps the stores'
// (checksums, LMDB's page copies, the kernel's write copies): on two cores a CIFAR-10 to LMDB
// conversion took the sum of both. Batches change hands by swap, so each side reuses the
// other's buffers. Errors of the source reach the caller at the batch they belong to.
class ReadAhead {
 public:
  ReadAhead(std::unique_ptr<BatchStream> stream, std::uint64_t records, std::size_t batch_records)
      : stream_(std::move(stream)), records_(records), batch_records_(batch_records),
        thread_([this] { run(); }) {}

  ~ReadAhead() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    changed_.notify_all();
    thread_.join();
  }

  ReadAhead(const ReadAhead&) = delete;
  ReadAhead& operator=(const ReadAhead&) = delete;

  // Swaps the next batch into `batch` (as the source handed it over, cut at `records`); false
  // once all are handed over or the source ended early (then ended_early()). Rethrows the
  // source's error.
  bool next(ImageBatch& batch) {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [this] { return state_ != State::Reading; });
    if (error_) std::rethrow_exception(error_);
    if (state_ == State::Ended) return false;
    std::swap(batch, ready_);
    state_ = State::Reading;
    lock.unlock();
    changed_.notify_all();
    return true;
  }

  bool ended_early() const { return ended_early_; }

 private:
  // Reading: the reader thread owns ready_. Ready: next() may take it. Ended: no more batches.
  enum class State { Reading, Ready, Ended };

  void run() {
    std::uint64_t done = 0;
    try {
      for (;;) {
        {
          std::unique_lock<std::mutex> lock(mutex_);
          changed_.wait(lock, [this] { return stop_ || state_ == State::Reading; });
          if (stop_) return;
        }
        bool more = done < records_;
        if (more) {
          const auto want = std::min<std::uint64_t>(batch_records_, records_ - done);
          more = stream_->next(ready_, static_cast<std::size_t>(want));
          // A source may hand over more than asked: keep all of it up to the record count
          // (cutting a batch short of that would skip records).
          if (more) ready_.truncate(static_cast<std::size_t>(records_ - done));
          if (more) done += ready_.size();
          ended_early_ = !more;
        }
        {
          std::lock_guard<std::mutex> lock(mutex_);
          state_ = more ? State::Ready : State::Ended;
        }
        changed_.notify_all();
        if (!more) return;
      }
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        error_ = std::current_exception();
        state_ = State::Ended;
      }
      changed_.notify_all();
    }
  }

  std::unique_ptr<BatchStream> stream_;
  const std::uint64_t records_;
  const std::size_t batch_records_;
  ImageBatch ready_;
  bool ended_early_ = false;  // written by the reader before it publishes Ended
  std::mutex mutex_;
  std::condition_variable changed_;
  State state_ = State::Reading;
  bool stop_ = false;
  std::exception_ptr error_;
  std::thread thread_;  // last: starts once every other member is constructed
};

}  // namespace

// One store of a run: its hidden, locked staging directory beside the target, holding the
// committed store (under the target's own name) until ConversionRun::commit moves it out.
struct ConversionRun::StagedStore {
  StagedStore(const fs::path& target, bool overwrite)
      : stage(target, detail::StagedOutput::Kind::Directory, overwrite), overwrite(overwrite) {}

  const fs::path& target() const { return stage.target(); }
  fs::path staged_path() const { return stage.temp() / target().filename(); }

  // Undoes commit's rename: the old store (if any) back at the target, the new one gone.
  void restore() noexcept {
    std::error_code ec;
    try {
      if (displaced.empty()) {
        fs::remove_all(target(), ec);
      } else {
        fs::remove_all(detail::rename_into_place(displaced, target(), true), ec);
      }
    } catch (...) {
      // Best effort: the error that made us roll back is the one to report.
    }
    displaced.clear();
  }

  detail::StagedOutput stage;  // never committed itself: discarding it removes what it holds
  bool overwrite;
  fs::path displaced;  // after the rename: where the store it replaced now is, if any
};

ConversionRun::ConversionRun(fs::path out_dir) : out_dir_(std::move(out_dir)) {}

ConversionRun::~ConversionRun() = default;

ConvertResult convert_split(const Source& source, const std::string& split,
                            const fs::path& out_dir, const ConvertOptions& options) {
  ConversionRun run(out_dir);
  ConvertResult result = run.add_split(source, split, options);
  run.commit();
  return result;
}

ConvertResult ConversionRun::add_split(const Source& source, const std::string& split,
                                       const ConvertOptions& options) {
  const auto start = Clock::now();
  if (committed_) throw UsageError("this conversion run is already committed");
  if (options.formats.empty()) throw UsageError("no output format requested");
  if (options.repeat == 0) throw UsageError("--repeat must be at least 1");
  SplitInfo info;
  bool found = false;
  for (auto& s : source.splits()) {
    if (s.name == split) info = s, found = true;
  }
  if (!found) throw UsageError(fmt::format("{} has no split '{}'", source.description(), split));

  const std::uint64_t per_pass =
      options.limit ? std::min<std::uint64_t>(options.limit, info.count) : info.count;
  const std::uint64_t total = per_pass * options.repeat;

  std::error_code ec;
  fs::create_directories(out_dir_, ec);
  if (ec) {
    throw IoError(fmt::format("cannot create output directory {}: {}", detail::quote(out_dir_),
                              ec.message()));
  }

  StoreSpec spec;
  spec.split = split;
  spec.source = source.description();
  if (options.limit) spec.source += fmt::format(", first {}", per_pass);
  if (options.repeat > 1) spec.source += fmt::format(", repeated {}x", options.repeat);
  spec.count = total;
  spec.shape = info.shape;
  spec.class_names = info.class_names;
  spec.variable_size = info.variable_size;
  spec.skipped_inputs = source.skipped_inputs();

  ConvertResult result;
  result.split = split;
  result.count = total;
  result.shape = info.shape;
  // The writers stage and commit inside our staging directories, which hold nothing else.
  WriterOptions staged_options = options.writer;
  staged_options.overwrite = false;
  durable_ = durable_ || options.writer.durable;
  std::vector<std::unique_ptr<StoreWriter>> writers;
  for (Format f : options.formats) {
    auto path = out_dir_ / store_file_name(split, f);
    for (const auto& s : staged_) {
      if (s->target() == path) {
        throw UsageError(fmt::format("{} would be written twice in one conversion",
                                     detail::quote(path)));
      }
    }
    WriterOptions writer = staged_options;
    if (auto it = options.encodings.find(f); it != options.encodings.end()) {
      writer.encoding = it->second;
    }
    // Refuses an existing store without overwrite, before anything is written.
    staged_.push_back(std::make_unique<StagedStore>(path, options.writer.overwrite));
    writers.push_back(create_store(f, staged_.back()->staged_path(), spec, writer));
    result.formats.push_back(FormatResult{f, path, options.writer.shards, 0, 0});
  }

  ImageBatch batch;
  std::uint64_t done = 0;
  for (std::uint32_t pass = 0; pass < options.repeat; ++pass) {
    ReadAhead reader(source.open(split), per_pass, options.batch_records);
    std::uint64_t pass_done = 0;
    for (;;) {
      auto t0 = Clock::now();
      const bool more = reader.next(batch);
      result.read_seconds += seconds_since(t0);
      if (!more) break;
      for (std::size_t i = 0; i < writers.size(); ++i) {
        auto t1 = Clock::now();
        writers[i]->write(batch);
        result.formats[i].seconds += seconds_since(t1);
      }
      pass_done += batch.size();
      done += batch.size();
      if (options.progress) options.progress(done, total);
    }
    if (reader.ended_early()) {
      throw DataError(fmt::format("{}: split '{}' ended after {} records, {} announced",
                                  source.description(), split, pass_done, per_pass));
    }
  }
  for (std::size_t i = 0; i < writers.size(); ++i) {
    auto t1 = Clock::now();
    writers[i]->commit();
    result.formats[i].seconds += seconds_since(t1);
    result.formats[i].bytes_on_disk = detail::bytes_on_disk(writers[i]->path());
  }
  result.total_seconds = seconds_since(start);
  return result;
}

void ConversionRun::commit() {
  if (committed_) throw UsageError("this conversion run is already committed");
  std::size_t placed = 0;
  try {
    for (; placed < staged_.size(); ++placed) {
      StagedStore& s = *staged_[placed];
      s.displaced = detail::rename_into_place(s.staged_path(), s.target(), s.overwrite);
    }
  } catch (...) {
    // All or none: put back what was moved, newest first.
    while (placed > 0) staged_[--placed]->restore();
    throw;
  }
  committed_ = true;
  std::error_code ec;
  for (const auto& s : staged_) {
    if (!s->displaced.empty()) fs::remove_all(s->displaced, ec);
  }
  staged_.clear();  // removes the (now empty) staging directories
  if (durable_) detail::fsync_path(out_dir_);
}

}  // namespace imgstore
