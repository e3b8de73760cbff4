// Record order per epoch and rank (DistributedSampler slices or whole shards), and the
// loader's position for resume.
#include "sampler.hpp"

#include <algorithm>
#include <limits>
#include <numeric>

#include <fmt/format.h>

#include "detail/random.hpp"
#include "imgstore/error.hpp"

namespace imgstore::detail {

void shuffled_order(std::uint64_t first, std::size_t n, std::size_t window, std::uint64_t seed,
                    std::uint64_t* out) {
  if (window == 0 || window >= n) {
    std::iota(out, out + n, first);
    shuffle(out, n, SplitMix(seed));
    return;
  }
  const std::size_t windows = (n + window - 1) / window;
  std::vector<std::size_t> order(windows);
  std::iota(order.begin(), order.end(), std::size_t{0});
  shuffle(order.data(), windows, SplitMix(seed));
  std::uint64_t* next = out;
  for (std::size_t w : order) {
    const std::size_t begin = w * window, size = std::min(window, n - begin);
    std::iota(next, next + size, first + begin);
    // Seeded by the window's number, so its order does not depend on where it lands.
    shuffle(next, size, SplitMix(mix_seed(seed, w + 1)));
    next += size;
  }
}

// ---- SamplingPlan ----

std::size_t SamplingPlan::samples_per_rank() const {
  const std::uint64_t n = count, w = world_size;
  if (drop_last && n % w != 0) return static_cast<std::size_t>(n / w);  // cut the tail
  return static_cast<std::size_t>((n + w - 1) / w);                     // pad to a multiple
}

std::size_t SamplingPlan::batches() const {
  const std::size_t s = samples_per_rank();
  return drop_last ? s / batch_size : (s + batch_size - 1) / batch_size;
}

std::vector<std::uint64_t> SamplingPlan::indices(std::uint64_t epoch) const {
  std::vector<std::uint64_t> order(static_cast<std::size_t>(count));
  if (shuffle) {
    shuffled_order(0, order.size(), shuffle_window, mix_seed(seed, epoch), order.data());
  } else {
    std::iota(order.begin(), order.end(), std::uint64_t{0});
  }
  const std::size_t per_rank = samples_per_rank();
  std::vector<std::uint64_t> mine(per_rank);
  for (std::size_t k = 0; k < per_rank; ++k) {
    // Position in the padded permutation; padding repeats it from the start.
    mine[k] = order[(k * world_size + rank) % order.size()];
  }
  if (drop_last) mine.resize(batches() * batch_size);
  return mine;
}

// ---- Sampler ----

Sampler::Sampler(const StoreReader& reader, const LoaderOptions& o) {
  plan_.count = reader.size();
  plan_.shuffle = o.shuffle;
  plan_.shuffle_window = o.shuffle_window;
  plan_.seed = o.seed;
  plan_.drop_last = o.drop_last;
  plan_.rank = o.rank;
  plan_.world_size = o.world_size;
  plan_.batch_size = o.batch_size;
  whole_shards_ = o.whole_shards;
  if (whole_shards_) plan_shards(reader, o);
}

std::size_t Sampler::batches() const {
  if (!whole_shards_) return plan_.batches();
  const std::size_t b = plan_.batch_size;
  return plan_.drop_last ? per_rank_ / b : (per_rank_ + b - 1) / b;
}

std::size_t Sampler::samples() const {
  if (plan_.drop_last) return batches() * plan_.batch_size;
  return whole_shards_ ? per_rank_ : plan_.samples_per_rank();
}

std::vector<std::uint64_t> Sampler::indices(std::uint64_t epoch) const {
  return whole_shards_ ? shard_indices(epoch) : plan_.indices(epoch);
}

// The rank's shards in a per-epoch order, each shard's records shuffled within it, so a rank
// still reads shard by shard.
std::vector<std::uint64_t> Sampler::shard_indices(std::uint64_t epoch) const {
  std::vector<std::size_t> order(shards_.size());
  std::iota(order.begin(), order.end(), std::size_t{0});
  const std::uint64_t epoch_seed = mix_seed(plan_.seed, epoch);
  if (plan_.shuffle) shuffle(order.data(), order.size(), SplitMix(epoch_seed));
  std::vector<std::uint64_t> seq;
  seq.reserve(own_);
  for (std::size_t i : order) {
    const std::size_t first = seq.size();
    const Shard& shard = shards_[i];
    const auto size = static_cast<std::size_t>(shard.end - shard.begin);
    seq.resize(first + size);
    if (plan_.shuffle) {
      // Seeded by the shard's global number, so its order does not depend on the world size.
      shuffled_order(shard.begin, size, plan_.shuffle_window,
                     mix_seed(epoch_seed, shard.id + 1), seq.data() + first);
    } else {
      std::iota(seq.begin() + static_cast<std::ptrdiff_t>(first), seq.end(), shard.begin);
    }
  }
  const std::size_t n = samples();
  std::vector<std::uint64_t> mine(n);
  // Padding repeats the rank's sequence from its start (own_ > 0 whenever n > 0).
  for (std::size_t k = 0; k < n; ++k) mine[k] = seq[k % seq.size()];
  return mine;
}

void Sampler::plan_shards(const StoreReader& reader, const LoaderOptions& o) {
  const auto ranges = reader.shard_ranges();
  const std::size_t s = ranges.size(), w = o.world_size;
  if (s < w) {
    const char* plural = s == 1 ? "" : "s";
    throw UsageError(fmt::format(
        "PrefetchLoader: store '{}' has {} shard{}, cannot give whole shards to {} ranks (a store "
        "that has {} shard{}, fewer than the {} ranks, needs more: write it with `imgstore-convert "
        "convert ... --shards K`, K a multiple of {}; or use fewer ranks or whole_shards = false)",
        reader.path().string(), s, plural, w, s, plural, w, w));
  }
  // Ranges come from the store's own files; check them before sizing anything by them.
  std::vector<std::uint64_t> per_rank(w, 0);
  std::uint64_t prev_end = 0;
  for (std::size_t i = 0; i < s; ++i) {
    const auto [b, e] = ranges[i];
    if (b < prev_end || b > e || e > reader.size()) {
      throw DataError(fmt::format("store '{}': shard {} has records [{}, {}), which is not "
                                  "within the store's {} records in order",
                                  reader.path().string(), i, b, e, reader.size()));
    }
    prev_end = e;
    per_rank[i % w] += e - b;
    if (i % w == o.rank) shards_.push_back(Shard{i, b, e});
  }
  own_ = static_cast<std::size_t>(per_rank[o.rank]);
  // Equal step counts on every rank: pad to the largest rank, or cut to the smallest.
  per_rank_ = static_cast<std::size_t>(
      o.drop_last ? *std::min_element(per_rank.begin(), per_rank.end())
                  : *std::max_element(per_rank.begin(), per_rank.end()));
  if (own_ == 0 && samples() > 0) {
    throw UsageError(fmt::format("PrefetchLoader: rank {}'s shards of '{}' hold no records, so "
                                 "it cannot pad to the {} samples of the other ranks",
                                 o.rank, reader.path().string(), per_rank_));
  }
}

// ---- Position ----

Position::Pass Position::begin_pass(std::size_t batches) {
  pass_epoch_ = next_epoch_++;
  pass_batches_ = batches;
  consumed_ = std::min(std::exchange(next_offset_, 0), batches);
  from_pass_ = true;
  return Pass{pass_epoch_, consumed_};
}

void Position::set_epoch(std::uint64_t epoch) {
  // A restored position survives set_epoch() of its own epoch (the usual resume loop calls it).
  if (epoch != next_epoch_) next_offset_ = 0;
  next_epoch_ = epoch;
  from_pass_ = false;
}

std::pair<std::uint64_t, std::uint64_t> Position::saved() const {
  if (!from_pass_) return {next_epoch_, next_offset_};
  if (consumed_ >= pass_batches_) return {pass_epoch_ + 1, 0};
  return {pass_epoch_, consumed_};
}

void Position::restore(std::uint64_t epoch, std::uint64_t batches_consumed, std::size_t batches) {
  from_pass_ = false;
  if (batches > 0 && batches_consumed == batches) {
    next_epoch_ = epoch + 1;  // the epoch was complete
    next_offset_ = 0;
  } else {
    next_epoch_ = epoch;
    next_offset_ = static_cast<std::size_t>(batches_consumed);
  }
}

// ---- WindowHints ----

WindowHints::WindowHints(const LoaderOptions& o) {
  if (o.shuffle && o.shuffle_window > 0 && (o.world_size == 1 || o.whole_shards)) {
    window_ = o.shuffle_window;
  }
  reset();
}

void WindowHints::reset() {
  std::lock_guard<std::mutex> lock(mutex_);
  recent_.fill(std::numeric_limits<std::uint64_t>::max());
  next_ = 0;
}

bool WindowHints::first_sight(std::uint64_t window) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (std::find(recent_.begin(), recent_.end(), window) != recent_.end()) return false;
  recent_[next_++ % recent_.size()] = window;
  return true;
}

void WindowHints::before_batch(const StoreReader& reader, const std::vector<std::uint64_t>& indices,
                               std::size_t first, std::size_t n) {
  if (!enabled() || first >= indices.size()) return;
  // This batch's positions and the next batch's: windows are runs of consecutive positions
  // (at least a batch long), so sampling every n/8-th position and the last finds them all.
  const std::size_t end = std::min(indices.size(), first + 2 * n);
  const std::size_t step = std::max<std::size_t>(1, n / 8);
  auto hint = [&](std::size_t position) {
    const std::uint64_t w = indices[position] / window_;
    if (first_sight(w)) reader.will_need(w * window_, window_);
  };
  for (std::size_t p = first; p < end; p += step) hint(p);
  hint(end - 1);
}

}  // namespace imgstore::detail
