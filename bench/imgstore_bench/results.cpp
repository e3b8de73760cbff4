// imgstore-bench: measurements to CSV, the summary (medians and ratios) and the stdout table.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <map>
#include <tuple>

#include <fmt/format.h>

#include "bench.hpp"
#include "common/limits.hpp"
#include "common/median.hpp"
#include "imgstore/error.hpp"

namespace imgstore::bench {

namespace {

using Key = std::tuple<std::string, std::string, std::string, std::string, std::uint64_t,
                       unsigned, std::string, std::string>;

Key key_of(const Measurement& m) {
  return {m.experiment, m.impl, m.format, m.variant, m.n, m.threads, m.cache, m.order};
}

// "limit_gather memory", "limit_decode memory png", "stock lmdb raw", "tutorial lmdb pickle".
std::string name_of(const Measurement& k) {
  const std::string head = k.impl == "limit" ? k.experiment : k.impl;
  return k.variant == "-" ? fmt::format("{} {}", head, k.format)
                          : fmt::format("{} {} {}", head, k.format, k.variant);
}

bool png_payload(const Measurement& k) { return k.variant == "png"; }

}  // namespace

void write_csv(const fs::path& path, const std::vector<Measurement>& rows) {
  std::ofstream f(path);
  f << kCsvHeader << "\n";
  for (const auto& m : rows) {
    f << fmt::format("{},{},{},{},{},{},{},{},{},{:.9g},{:.9g},{}\n", m.experiment, m.impl,
                     m.format, m.variant, m.n, m.threads, m.cache, m.order, m.run, m.seconds,
                     m.images_per_s(), m.bytes);
  }
  if (!f.flush()) {
    throw IoError(fmt::format("cannot write '{}': {}", path.string(), std::strerror(errno)));
  }
}

namespace {

// One row per configuration, in first-seen order, with its runs' statistics; `index` maps each
// configuration to its row.
std::vector<SummaryRow> group_runs(const std::vector<Measurement>& rows,
                                   std::map<Key, std::size_t>& index) {
  std::vector<SummaryRow> out;
  std::vector<std::vector<double>> secs;
  for (const auto& m : rows) {
    auto [it, fresh] = index.try_emplace(key_of(m), out.size());
    if (fresh) {
      SummaryRow s;
      s.key = m;
      out.push_back(s);
      secs.emplace_back();
    }
    auto& s = out[it->second];
    secs[it->second].push_back(m.seconds);
    s.bytes = std::max(s.bytes, m.bytes);
  }
  for (std::size_t i = 0; i < out.size(); ++i) {
    auto& s = out[i];
    const auto& v = secs[i];
    s.runs = static_cast<int>(v.size());
    s.median_s = median(v);
    s.min_s = *std::min_element(v.begin(), v.end());
    s.max_s = *std::max_element(v.begin(), v.end());
    // A limit stands for what the machine can do: its fastest run. Everything else: median.
    const double typical = s.key.impl == "limit" ? s.min_s : s.median_s;
    s.images_per_s = typical > 0 ? static_cast<double>(s.key.n) / typical : 0;
  }
  return out;
}

}  // namespace

std::vector<SummaryRow> summarize(const std::vector<Measurement>& rows, bool durable_stores) {
  std::map<Key, std::size_t> index;
  std::vector<SummaryRow> out = group_runs(rows, index);
  // LibTorch's stock DataLoader calls our get_batch, whose read_many runs on TBB's default
  // arena, i.e. on every core whatever its worker count, and its workers read at once: its
  // limits are each limit's run at the most threads measured (for the sequential read, that
  // is twice the cores: as many reads as stock workers times TBB threads can have in flight).
  std::map<std::string, unsigned> most_threads;
  for (const auto& s : out) {
    if (s.key.impl != "limit") continue;
    auto& t = most_threads[s.key.experiment];
    t = std::max(t, s.key.threads);
  }

  auto find = [&](const std::string& experiment, const std::string& impl,
                  const std::string& format, const std::string& variant, std::uint64_t n,
                  unsigned threads, const std::string& cache,
                  const std::string& order) -> const SummaryRow* {
    auto it = index.find(Key{experiment, impl, format, variant, n, threads, cache, order});
    return it == index.end() ? nullptr : &out[it->second];
  };
  // The Python peer: same experiment, format, n and order, whatever its variant and threads.
  auto find_tutorial = [&](const Measurement& k) -> const SummaryRow* {
    for (const auto& s : out) {
      if (s.key.impl == "tutorial" && s.key.experiment == k.experiment &&
          s.key.format == k.format && s.key.n == k.n && s.key.order == k.order) {
        return &s;
      }
    }
    return nullptr;
  };
  // The tightest applicable bound: decode for PNG payloads, else the RAM gather; and the
  // sequential read of the same store's files in the same cache state when there is one.
  auto find_limit = [&](const Measurement& k, const std::string& gather_order) {
    const auto threads_for = [&](const char* limit) {
      return k.impl == "stock" ? most_threads[limit] : k.threads;
    };
    std::vector<const SummaryRow*> candidates;
    if (png_payload(k)) {
      candidates.push_back(find("limit_decode", "limit", "memory", "png", k.n,
                                threads_for("limit_decode"), "warm", "-"));
    } else {
      candidates.push_back(find("limit_gather", "limit", "memory", "-", k.n,
                                threads_for("limit_gather"), "warm", gather_order));
    }
    candidates.push_back(find("limit_seqread", "limit", k.format, k.variant, k.n,
                              threads_for("limit_seqread"), k.cache, "sequential"));
    const SummaryRow* best = nullptr;
    for (const auto* c : candidates) {
      if (c && c->images_per_s > 0 && (!best || c->images_per_s < best->images_per_s)) best = c;
    }
    return best;
  };

  for (auto& s : out) {
    const auto& k = s.key;
    if (k.impl == "limit" || k.impl == "tutorial") continue;
    const SummaryRow* limit = nullptr;
    const SummaryRow* peer = nullptr;
    if (k.experiment == "read_many") {
      limit = find_limit(k, k.order);
      peer = find_tutorial(k);
    } else if (k.experiment == "epoch") {
      limit = find_limit(k, "shuffled");
      if (k.impl == "prefetch") {
        peer = find("epoch", "stock", k.format, k.variant, k.n, k.threads, k.cache, k.order);
      }
    } else if (k.experiment == "oom_epoch") {
      // --out-of-memory: the disk's random reads at the same concurrency bound the full
      // shuffle; a quasi-random order is compared with the full shuffle of the same store.
      limit = find("limit_randread", "limit", k.format, k.variant, k.n, k.threads, k.cache,
                   "shuffled");
      if (k.order != "shuffled") {
        peer = find("oom_epoch", "prefetch", k.format, k.variant, k.n, k.threads, k.cache,
                    "shuffled");
      }
    } else if (k.experiment == "store_many") {
      // The same bytes written sequentially, and for a PNG folder the same files created from
      // one thread, with the stores' flush; the slower of the two is the tighter bound.
      const std::string tail = durable_stores ? "_fsync" : "";
      for (const char* floor : {"limit_write", "limit_files"}) {
        const SummaryRow* c =
            find(floor + tail, "limit", k.format, k.variant, k.n, 1, "warm", "-");
        if (c && c->images_per_s > 0 && (!limit || c->images_per_s < limit->images_per_s)) limit = c;
      }
      peer = find_tutorial(k);
    } else if (k.experiment == "store_one" || k.experiment == "read_one" ||
               k.experiment == "disk_usage") {
      peer = find_tutorial(k);
    }
    if (limit) {
      s.limit = name_of(limit->key);
      const LimitRatio r = compare_to_limit(s.images_per_s, limit->images_per_s);
      s.ratio_to_limit = r.ratio;
      s.limit_beaten = r.beaten;
    }
    if (peer) {
      s.peer = name_of(peer->key);
      if (k.experiment == "disk_usage") {
        // Smaller is better for bytes: > 1 means imgstore's store is smaller than the peer's.
        if (s.bytes > 0) s.ratio_to_peer = static_cast<double>(peer->bytes) / s.bytes;
      } else if (peer->images_per_s > 0) {
        s.ratio_to_peer = s.images_per_s / peer->images_per_s;
      }
    }
  }
  return out;
}

Json measurement_json(const Measurement& m) {
  return Json{{"experiment", m.experiment}, {"impl", m.impl},       {"format", m.format},
              {"variant", m.variant},       {"n", m.n},             {"threads", m.threads},
              {"cache", m.cache},           {"order", m.order},     {"run", m.run},
              {"seconds", m.seconds},       {"images_per_s", m.images_per_s()},
              {"bytes", m.bytes}};
}

Json summary_json(const SummaryRow& s) {
  const auto& k = s.key;
  auto opt_str = [](const std::optional<std::string>& v) { return v ? Json(*v) : Json(nullptr); };
  auto opt_num = [](const std::optional<double>& v) { return v ? Json(*v) : Json(nullptr); };
  return Json{{"experiment", k.experiment}, {"impl", k.impl},
              {"format", k.format},         {"variant", k.variant},
              {"n", k.n},                   {"threads", k.threads},
              {"cache", k.cache},           {"order", k.order},
              {"runs", s.runs},             {"median_s", s.median_s},
              {"min_s", s.min_s},           {"max_s", s.max_s},
              {"images_per_s", s.images_per_s}, {"bytes", s.bytes},
              {"limit", opt_str(s.limit)},  {"ratio_to_limit", opt_num(s.ratio_to_limit)},
              {"limit_beaten", s.limit_beaten},
              {"peer", opt_str(s.peer)},    {"ratio_to_peer", opt_num(s.ratio_to_peer)}};
}

Measurement measurement_from_json(const Json& j) {
  Measurement m;
  m.experiment = j.at("experiment").get<std::string>();
  m.impl = j.at("impl").get<std::string>();
  m.format = j.at("format").get<std::string>();
  m.variant = j.at("variant").get<std::string>();
  m.n = j.at("n").get<std::uint64_t>();
  m.threads = j.at("threads").get<unsigned>();
  m.cache = j.at("cache").get<std::string>();
  m.order = j.at("order").get<std::string>();
  m.run = j.at("run").get<int>();
  m.seconds = j.at("seconds").get<double>();
  m.bytes = j.at("bytes").get<std::uint64_t>();
  for (const auto* s : {&m.experiment, &m.impl, &m.format, &m.variant, &m.cache, &m.order}) {
    if (s->empty() || s->find_first_of(",\n\"") != std::string::npos) {
      throw DataError(fmt::format("bad field value '{}'", *s));
    }
  }
  return m;
}

namespace {

std::string human_rate(double v) {
  if (v <= 0) return "-";
  if (v >= 1e6) return fmt::format("{:.2f}M", v / 1e6);
  if (v >= 1e3) return fmt::format("{:.1f}k", v / 1e3);
  return fmt::format("{:.1f}", v);
}

std::string human_bytes(std::uint64_t b) {
  if (b >= (1ull << 30)) return fmt::format("{:.2f} GiB", b / double(1ull << 30));
  if (b >= (1ull << 20)) return fmt::format("{:.1f} MiB", b / double(1ull << 20));
  if (b >= (1ull << 10)) return fmt::format("{:.1f} KiB", b / double(1ull << 10));
  return fmt::format("{} B", b);
}

std::string ratio(const std::optional<double>& r, const std::optional<std::string>& name) {
  if (!r) return "-";
  return fmt::format("{:.3g}x {}", *r, name ? *name : "");
}

// Every figure that beat its limit, named: each means that limit is wrong.
void print_beaten(const std::vector<SummaryRow>& summary) {
  for (const auto& s : summary) {
    if (!s.limit_beaten) continue;
    const auto& k = s.key;
    fmt::print("{}: {} {} {} {} n={} threads={} {} {} is {:.3g}x {}\n", beaten_flag(),
               k.experiment, k.impl, k.format, k.variant, k.n, k.threads, k.cache, k.order,
               *s.ratio_to_limit, *s.limit);
  }
}

}  // namespace

void print_table(const std::vector<SummaryRow>& summary) {
  fmt::print("\n{:<14} {:<8} {:<6} {:<10} {:>7} {:>3} {:<16} {:<10} {:>11} {:>21} {:>9} "
             "{:<34} {}\n",
             "experiment", "impl", "format", "variant", "n", "thr", "cache", "order", "median",
             "min..max", "img/s", "vs limit", "vs peer");
  std::string last;
  for (const auto& s : summary) {
    const auto& k = s.key;
    if (k.experiment != last) {
      fmt::print("{:-<150}\n", "");
      last = k.experiment;
    }
    const bool du = k.experiment == "disk_usage";
    fmt::print("{:<14} {:<8} {:<6} {:<10} {:>7} {:>3} {:<16} {:<10} {:>11} {:>21} {:>9} {:<34} {}{}\n",
               k.experiment, k.impl, k.format, k.variant, k.n, k.threads, k.cache, k.order,
               du ? human_bytes(s.bytes) : fmt::format("{:.4g} s", s.median_s),
               du ? "" : fmt::format("{:.3g}..{:.3g}", s.min_s, s.max_s),
               du ? "" : human_rate(s.images_per_s), ratio(s.ratio_to_limit, s.limit),
               ratio(s.ratio_to_peer, s.peer), s.limit_beaten ? "  " + beaten_flag() : "");
  }
  fmt::print("{:-<150}\n", "");
  print_beaten(summary);
  fmt::print("img/s: from the median run, except for limits: from their fastest run. "
             "vs limit: images/s over the tightest bound's (<= 1: slower than the bound; above 1 "
             "is flagged LIMIT BEATEN: the bound is wrong); stock rows against the limits at "
             "the most threads measured (their get_batch decodes on every core). "
             "vs peer: images/s over the peer's (> 1: imgstore faster); disk_usage: peer bytes "
             "over ours (> 1: ours smaller).\n");
}

}  // namespace imgstore::bench
