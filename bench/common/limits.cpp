// The CPU limits of bench/common/limits.hpp: plain copies and the core's own decoder timings.
#include "limits.hpp"

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cstring>
#include <fstream>
#include <iterator>
#include <memory>
#include <numeric>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <spng.h>

#include "detail/png_codec.hpp"
#include "detail/png_decode_limit.hpp"
#include "imgstore/error.hpp"
#include "median.hpp"

namespace imgstore::bench {

namespace {

using Clock = std::chrono::steady_clock;

// What one gather thread moved.
struct GatherTally {
  std::uint64_t records = 0, bytes = 0, batches = 0, landed_sum = 0;
  std::vector<std::uint64_t> delivered;
};

// The work shared by the gather threads: batches are handed out in turn through `next`.
struct GatherJob {
  const std::uint8_t* records;
  std::size_t record_bytes;
  const std::vector<std::uint64_t>& order;
  std::size_t batch;
  bool keep_delivered;
  std::atomic<std::size_t> next{0};
  std::atomic<unsigned> ready{0};
  std::atomic<bool> go{false};
};

void gather_thread(GatherJob& job, GatherTally& tally) {
  const std::size_t rb = job.record_bytes, n = job.order.size();
  // Allocated and touched before the clock starts, as a loader's reused batch buffer is.
  std::vector<std::uint8_t> buf(job.batch * rb, 1);
  if (job.keep_delivered) tally.delivered.reserve(n);
  job.ready.fetch_add(1);
  while (!job.go.load(std::memory_order_acquire)) std::this_thread::yield();
  for (;;) {
    const std::size_t first = job.next.fetch_add(1) * job.batch;
    if (first >= n) break;
    const std::size_t last = std::min(n, first + job.batch);
    for (std::size_t i = first; i < last; ++i) {
      std::uint8_t* dst = buf.data() + (i - first) * rb;
      std::memcpy(dst, job.records + job.order[i] * rb, rb);
      tally.landed_sum += dst[0];  // reads the copy back: the copies cannot be optimised away
      if (job.keep_delivered) tally.delivered.push_back(job.order[i]);
    }
    tally.records += last - first;
    tally.bytes += (last - first) * rb;
    ++tally.batches;
  }
}

}  // namespace

GatherRun gather_run(const std::uint8_t* records, std::size_t record_bytes,
                     const std::vector<std::uint64_t>& order, std::size_t batch, unsigned threads,
                     bool keep_delivered) {
  if (batch == 0 || threads == 0 || record_bytes == 0) {
    throw UsageError("a gather needs a batch, a thread and a record of at least 1");
  }
  GatherJob job{records, record_bytes, order, batch, keep_delivered};
  std::vector<GatherTally> tallies(threads);
  std::vector<std::thread> pool;
  pool.reserve(threads);
  for (unsigned t = 0; t < threads; ++t) pool.emplace_back(gather_thread, std::ref(job), std::ref(tallies[t]));
  // The clock runs from the moment every thread is ready until the last one is done.
  while (job.ready.load() < threads) std::this_thread::yield();
  const auto t0 = Clock::now();
  job.go.store(true, std::memory_order_release);
  for (auto& th : pool) th.join();
  GatherRun run;
  run.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  run.threads = threads;
  for (auto& t : tallies) {
    run.records += t.records, run.bytes += t.bytes, run.batches += t.batches;
    run.landed_sum += t.landed_sum;
    run.delivered.insert(run.delivered.end(), t.delivered.begin(), t.delivered.end());
  }
  return run;
}

double gather_limit(const std::uint8_t* records, std::size_t count, std::size_t record_bytes,
                    std::size_t batch, unsigned threads, int runs, std::uint64_t seed,
                    double min_run_seconds) {
  if (count == 0 || runs < 1) throw UsageError("a gather limit needs a record and a run");
  std::vector<std::uint64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::mt19937_64 rng(seed);
  std::shuffle(order.begin(), order.end(), rng);
  gather_run(records, record_bytes, order, batch, threads);  // warm-up: pages, caches
  std::vector<double> rates;
  for (int r = 0; r < runs; ++r) {
    std::shuffle(order.begin(), order.end(), rng);  // outside the clock
    // An epoch of a small store takes a few ms, less than a scheduler's time slice on a
    // shared machine: a run repeats it until min_run_seconds have passed.
    double seconds = 0, images = 0;
    while (seconds < min_run_seconds || images == 0) {
      const GatherRun run = gather_run(records, record_bytes, order, batch, threads);
      seconds += run.seconds, images += static_cast<double>(run.records);
    }
    rates.push_back(images / seconds);
  }
  return *std::max_element(rates.begin(), rates.end());  // a limit is its fastest run
}

namespace {

struct SpngDeleter {
  void operator()(spng_ctx* ctx) const noexcept { spng_ctx_free(ctx); }
};

// libspng with its defaults (CRCs and adler32 checked), native format: the file's own bytes.
bool spng_decode(const std::vector<std::uint8_t>& png, std::uint8_t* out, std::size_t n) {
  std::unique_ptr<spng_ctx, SpngDeleter> ctx(spng_ctx_new(0));
  if (!ctx || spng_set_png_buffer(ctx.get(), png.data(), png.size()) != 0) return false;
  return spng_decode_image(ctx.get(), out, n, SPNG_FMT_PNG, 0) == 0;
}

}  // namespace

std::vector<detail::PngDecoderTiming> png_decoder_timings(
    const std::vector<std::vector<std::uint8_t>>& pngs, const Shape& shape, int repeats) {
  auto timings = detail::time_png_decoders(pngs, shape, repeats);
  // libspng: checked against imgstore's output, then timed the same way.
  std::vector<std::uint8_t> reference(shape.bytes()), out(shape.bytes());
  for (std::size_t i = 0; i < pngs.size(); ++i) {
    detail::decode_png(pngs[i].data(), pngs[i].size(), shape, reference.data(), "PNG");
    if (!spng_decode(pngs[i], out.data(), out.size()) || out != reference) {
      throw DataError(fmt::format("PNG {} of the decode limit's sample: libspng disagrees with "
                                  "imgstore's decoder",
                                  i));
    }
  }
  std::vector<double> passes;
  for (int r = 0; r < repeats; ++r) {
    const auto start = std::chrono::steady_clock::now();
    for (const auto& png : pngs) spng_decode(png, out.data(), out.size());
    passes.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  timings.push_back({"libspng", true, median(passes) / static_cast<double>(pngs.size())});
  return timings;
}

DecodeLimit png_decode_limit(const std::vector<std::vector<std::uint8_t>>& pngs, const Shape& shape,
                             unsigned threads, int repeats) {
  const auto timings = png_decoder_timings(pngs, shape, repeats);
  const detail::PngDecoderTiming fastest = detail::fastest_png_decoder(timings);
  DecodeLimit limit;
  limit.decoder = fastest.name;
  limit.single_thread_ips = 1.0 / fastest.seconds_per_image;
  limit.threads = threads;
  limit.ips = limit.single_thread_ips * threads;
  limit.images = pngs.size();
  return limit;
}

std::vector<std::vector<std::uint8_t>> png_folder_sample(const std::filesystem::path& dir,
                                                         std::size_t count, std::size_t sample,
                                                         std::uint64_t seed) {
  std::vector<std::uint64_t> order(count);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), std::mt19937_64(seed));
  order.resize(std::min(count, sample));
  std::vector<std::vector<std::uint8_t>> pngs;
  pngs.reserve(order.size());
  for (std::uint64_t i : order) {
    const auto file = dir / fmt::format("{:08}.png", i);  // a PNG folder's record name
    std::ifstream in(file, std::ios::binary);
    if (!in) throw IoError(fmt::format("cannot read '{}'", file.string()));
    pngs.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  return pngs;
}

LimitRatio compare_to_limit(double measured_ips, double limit_ips) {
  LimitRatio r;
  r.ratio = limit_ips > 0 ? measured_ips / limit_ips : 0;
  r.beaten = r.ratio > 1.0;
  return r;
}

std::string beaten_flag(const std::string& what) {
  std::string upper = what;
  std::transform(upper.begin(), upper.end(), upper.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  return fmt::format("{} BEATEN: the {} is wrong", upper, what);
}

std::string format_ratio(const LimitRatio& r) {
  return r.beaten ? fmt::format("{:.2f}x  {}", r.ratio, beaten_flag()) : fmt::format("{:.2f}x", r.ratio);
}

}  // namespace imgstore::bench
